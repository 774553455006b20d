"""Round 0's DP release: the banks' moment vectors (federated standardisation and imputation,
docs/data.md) summed with record-level Gaussian noise, the same rule for ``securefl run`` (the
in-process engine) and a deployment (each bank's node), so both compute the same thing.

Each bank maps its rows into public ranges (:func:`securefl.data.standardize.scaled_moments`: one
row then adds at most ``sensitivity = sqrt(1 + 2 * groups)`` in L2 norm) and adds its share of
the noise, sized with :class:`~securefl.protocol.plan.NoisePlan` for the round's survivor
threshold and the assumed colluders, so any sum the protocol can release carries std
``z * sensitivity`` from the honest shares alone (the Gaussian mechanism, Dwork & Roth 2014,
Thm A.1; its RDP curve, Mironov 2017). The release is a ledger event per bank (record level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.dp.ledger import Draft

__all__ = ["MIN_NOISED_Z", "NORM_TAIL", "check_groups", "check_round0_noise", "noised_moments",
           "norm_log2_bound", "share_std", "stats_drafts", "with_target"]

#: the noise's L2 norm exceeds std * (sqrt(D) + NORM_TAIL) with probability <= exp(-NORM_TAIL^2 / 2)
#: (Gaussian concentration of a 1-Lipschitz function, E||g|| <= std sqrt(D)): e^-50 here
NORM_TAIL = 10.0

#: the smallest round-0 noise multiplier that makes a DP release (red-team finding S7b-1): below it
#: the release is treated as what it nearly is, exact. At z = 0.5 one Gaussian release already costs
#: epsilon about 10 at delta 1e-5 (sqrt(2 ln(1.25 / delta)) / z, Dwork & Roth 2014, Thm A.1); a
#: smaller z (1e-9, say) would let a server label a near-exact round 0 "noised" and so escape the
#: noiseless round-0 rule (securefl.deploy.common.Round0Survivors, S7-1)
MIN_NOISED_Z = 0.5


def check_round0_noise(z: float, dp: bool) -> None:
    """ConfigError unless round 0's multiplier ``z`` is 0 without DP and at least
    :data:`MIN_NOISED_Z` with DP: a round 0 is then noiseless exactly when the plan has no DP,
    and a noised one is a DP release every bank's accounting charges (a bank without DP charges
    nothing, so its noise would be unaccounted and a server could use it to pass off a near-exact
    release as noised)."""
    if not dp and z != 0:
        raise ConfigError(f"round 0's noise multiplier is {z:g} in a plan without DP: without DP "
                          "round 0 is exact (stats_noise_multiplier 0) and held to one set of "
                          "banks (spec 12.1, S7-1, S7b-1)")
    if dp and z <= 0:
        raise ConfigError("the plan trains with DP but releases round 0's statistics without "
                          "noise (stats_noise_multiplier 0): nothing leaves this bank outside "
                          "the privacy accounting")
    if dp and z < MIN_NOISED_Z:
        raise ConfigError(f"the plan trains with DP but round 0's noise multiplier is {z:g}, "
                          f"below {MIN_NOISED_Z}: a smaller multiplier is no DP release, only a "
                          "near-exact one (spec 12.1, S7b-1)")


def share_std(z: float, sensitivity: float, threshold: int, colluders: int) -> float:
    """One bank's noise std: NoisePlan(z, threshold, colluders).share_std(sensitivity), i.e.
    z * sensitivity / sqrt(threshold - colluders) (``threshold``: the fewest survivors a
    released round-0 sum holds)."""
    from securefl.protocol.plan import NoisePlan

    return NoisePlan(z, threshold, colluders=colluders).share_std(sensitivity)


def norm_log2_bound(n_rows: int, dim: int, z: float) -> int:
    """The power of two above the L2 norm of a bank's noised round-0 vector, from public facts
    only (its row count, the vector's length D, the noise multiplier): the scaled moments of
    n rows (|u| <= 1) have norm <= n sqrt(D), and the noise <= z sqrt(D) (sqrt(D) + NORM_TAIL)
    (one share is at most z times the sensitivity, which is <= sqrt(D)) except with probability
    e^-50. No bit of the bank's values enters the SecAgg bound."""
    root = math.sqrt(dim)
    bound = n_rows * root + z * root * (root + NORM_TAIL)
    return math.ceil(math.log2(max(bound, 1.0)))


def with_target(ranges: NDArray[np.float64], groups: Sequence[Sequence[int]]
                ) -> tuple[NDArray[np.float64], tuple[tuple[int, ...], ...]]:
    """Ranges and groups of a regression round 0, whose last input is the target divided by the
    public power of two above every bank's |target| (range [-1, 1], a group of its own)."""
    r = np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
    d = r.shape[0]
    return (np.vstack([r, [[-1.0, 1.0]]]),
            (*(tuple(int(j) for j in g) for g in groups), (d,)))


def check_groups(X: NDArray[np.floating], ranges: NDArray[np.float64],
                 groups: Sequence[Sequence[int]]) -> float:
    """The sensitivity of one row's scaled moments (securefl.data.standardize.moments_sensitivity)
    for these public ``groups``, after checking that they partition the inputs and that every
    group of several inputs is a 0/1 block with at most one non-zero in each of this bank's rows
    (ConfigError otherwise: a plan claiming a one-hot block that is not would under-size the
    noise)."""
    from securefl.data.standardize import moments_sensitivity

    r = np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
    d = X.shape[1]
    if r.shape[0] != d or not np.all(np.isfinite(r)) or np.any(r[:, 1] < r[:, 0]):
        raise ConfigError(f"round 0's public ranges cover {r.shape[0]} inputs with finite "
                          f"low <= high; this bank has {d}")
    seen = sorted(int(j) for g in groups for j in g)
    if seen != list(range(d)):
        raise ConfigError("round 0's input groups do not partition the inputs")
    for g in groups:
        if len(g) < 2:
            continue
        cols = list(g)
        if not np.all((r[cols, 0] == 0.0) & (r[cols, 1] == 1.0)):
            raise ConfigError(f"round 0 groups inputs {cols[:5]} that are not 0/1 inputs")
        if np.any(np.count_nonzero(np.asarray(X)[:, cols], axis=1) > 1):
            raise ConfigError(f"round 0 groups inputs {cols[:5]} as one-hot, but a row of this "
                              "bank has several non-zeros there")
    return moments_sensitivity(tuple(tuple(g) for g in groups))


def noised_moments(X: NDArray[np.floating], ranges: NDArray[np.float64], std: float,
                   random: RandomSource) -> NDArray[np.float64]:
    """A bank's round-0 input: the scaled moments of its rows plus its Gaussian share."""
    from securefl.data.standardize import scaled_moments
    from securefl.dp.noise import gaussian

    m = scaled_moments(X, ranges)
    out: NDArray[np.float64] = m + gaussian(m.size, std, random)
    return out


def stats_drafts(banks: Sequence[str], z: float, sensitivity: float, noise_source: str
                 ) -> list[Draft]:
    """The ledger drafts of one round-0 release: per bank, a Gaussian event of multiplier ``z``
    at record level (add/remove one row; the bank's own share and the others' all count for it
    only as far as the noise plan guarantees, which is z times the sensitivity)."""
    from securefl.dp.events import GaussianEvent
    from securefl.dp.ledger import Draft

    return [Draft(round=0, level="record", party=f"bank:{b}",
                  event=GaussianEvent(noise_multiplier=z), clip_norm=sensitivity,
                  participants=1, survivors=1, neighbouring="add_remove", sampling="all",
                  steps=1, noise_source=noise_source)  # type: ignore[arg-type]
            for b in banks]
