"""The public plan of one aggregation round, whatever the mode and transport: :class:`RoundSpec`
(what every party agrees on and binds into its signatures) and its client-level noise plan
:class:`NoisePlan` (how each bank's noise share is sized so the honest shares of any sum the
protocol can reveal carry the planned noise; DESIGN.md section 6). :class:`RoundPlanner` is the
one place that turns a run's public parameters and a round's participants into both, for every
driver: ``securefl run`` / :func:`securefl.train` (securefl.runtime), a deployment's server and
banks (securefl.deploy) and the Flower workflow and mod (securefl.flower)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import AggregationAbortedError, ConfigError

if TYPE_CHECKING:
    from securefl.protocol.secagg.bounds import Assumptions

__all__ = ["NoisePlan", "RoundPlanner", "RoundSpec", "check_release", "min_survivors",
           "round_threshold"]


@dataclass(frozen=True)
class NoisePlan:
    """Client-level DP noise of the sum (DP-FedAvg, McMahan et al., ICLR 2018), sized for collusion.

    The released sum must carry Gaussian(-like) noise of std ``noise_multiplier * clip_norm`` per
    coordinate even after the colluding banks subtract their own shares (DESIGN.md section 6). The
    smallest set of honest inputs whose sum can be revealed, :attr:`honest_floor` h, is
    ``min_survivors - colluders`` (every completed round has >= min_survivors survivors, at most
    ``colluders`` of them colluding: classic SecAgg's T - c, and plain or ckks, where the whole sum
    is released), or ``isolatable_honest`` where a sparse SecAgg+ graph lets the server learn sums of
    as few honest inputs (protocol.secagg.bounds, bound 4: ``Derived.min_honest_sum``). Each client
    adds a share of variance (z C)^2 / h, so any h honest shares carry the planned noise and more
    survivors only add noise.

    Not in :meth:`RoundSpec.plan_digest`: ``colluders`` and ``isolatable_honest`` follow from the
    SecAgg plan's own (signed) n, T, k and c, and
    :meth:`securefl.protocol.secagg.SecAggEncoder.check_noise_plan` refuses a NoisePlan weaker
    than its assumptions.
    """

    noise_multiplier: float
    min_survivors: int
    #: banks assumed to collude with the server (their shares do not count)
    colluders: int = 0
    #: SecAgg+ on a sparse graph: the bounds' minimum isolatable honest set; None: a whole sum
    isolatable_honest: int | None = None

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and np.isfinite(self.noise_multiplier)):
            raise ConfigError("noise_multiplier must be a finite number >= 0")
        if self.min_survivors < 1:
            raise ConfigError("min_survivors must be >= 1")
        if not 0 <= self.colluders < self.min_survivors:
            raise ConfigError(
                f"colluders ({self.colluders}) must be in [0, min_survivors = "
                f"{self.min_survivors}): a round's noise needs at least one honest share")
        if self.isolatable_honest is not None and not (
                1 <= self.isolatable_honest <= self.min_survivors - self.colluders):
            raise ConfigError(
                f"isolatable_honest ({self.isolatable_honest}) must be in [1, min_survivors - "
                f"colluders = {self.min_survivors - self.colluders}]")

    @property
    def honest_floor(self) -> int:
        """h: the fewest honest shares any revealed sum of a completed round holds."""
        if self.isolatable_honest is not None:
            return self.isolatable_honest
        return self.min_survivors - self.colluders

    def honest_shares(self, survivors: int) -> int:
        """Honest shares the adversary cannot remove from a round with ``survivors`` survivors:
        ``survivors - colluders`` for a whole sum, the isolatable set for SecAgg+ (the server may
        have cut the honest survivors into components of that size)."""
        if survivors < self.min_survivors:
            raise ConfigError(f"{survivors} survivors are below min_survivors "
                              f"{self.min_survivors}: the round must abort")
        if self.isolatable_honest is not None:
            return self.isolatable_honest
        return survivors - self.colluders

    def seen_by(self, colluders: int) -> NoisePlan:
        """The same shares as ``colluders`` colluding banks see them: a plan sized for fewer
        colluders re-expressed with the shares unchanged (z' = z sqrt((m - c') / h)), so
        :func:`securefl.dp.fedavg.client_round_event` gives the noise the honest shares carry."""
        if colluders <= self.colluders:
            return self
        if self.isolatable_honest is not None:
            raise ConfigError("a SecAgg+ noise plan is re-sized by its own assumptions")
        h = self.min_survivors - colluders
        z = self.noise_multiplier * float(np.sqrt(h / self.honest_floor))
        return NoisePlan(z, self.min_survivors, colluders=colluders)

    def share_std(self, sensitivity: float) -> float:
        """Std of one client's share: z * sensitivity / sqrt(h) (same units as ``sensitivity``)."""
        return float(self.noise_multiplier * sensitivity / np.sqrt(self.honest_floor))


@dataclass(frozen=True)
class RoundSpec:
    """What every party agrees on before a round starts (part of the signed RoundConfig)."""

    session_id: bytes
    round: int
    participants: tuple[int, ...]
    clip_norm: float
    threshold: int
    noise: NoisePlan | None = None
    #: FedAvg rounds: each participant's public weight w_i = n_i / max_j n_j, in participants'
    #: order (inputs are already multiplied by it); ckks also encrypts it beside the update
    weights: tuple[float, ...] | None = None
    #: SHA-256 of the global model this round starts from, as this party received it
    model_digest: bytes = bytes(32)
    #: SHA-256 of the signed training plan this party follows (a deployment's Hello: learning
    #: rate, epochs, DP-SGD parameters), so a server cannot give the other banks a plan that zeroes
    #: their updates while one bank trains normally
    context_digest: bytes = bytes(32)

    def __post_init__(self) -> None:
        if len(self.model_digest) != 32 or len(self.context_digest) != 32:
            raise ConfigError("model_digest and context_digest must be 32 bytes")
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        if self.round < 0:
            raise ConfigError("round must be >= 0")
        if len(set(self.participants)) != len(self.participants) or not self.participants:
            raise ConfigError("participants must be a non-empty list of distinct ids")
        if not (self.clip_norm > 0 and np.isfinite(self.clip_norm)):
            raise ConfigError("clip_norm must be a positive finite number")
        if not 1 <= self.threshold <= len(self.participants):
            raise ConfigError(
                f"threshold {self.threshold} must be between 1 and the number of participants "
                f"({len(self.participants)})"
            )
        if self.weights is not None and (
            len(self.weights) != len(self.participants)
            or not all(0 <= w <= 1 for w in self.weights)
        ):
            # 0: a participant that contributes nothing (a deployment's drawn bank without a
            # signed size stays in the graph as a dropout; protocols/secagg/spec.md 12.1)
            raise ConfigError("weights must give each participant a weight in [0, 1]")

    def plan_digest(self) -> bytes:
        """SHA-256 of what every participant must agree on beyond the protocol's own parameters:
        ``"securefl/round-plan/v2" 0x00 | model digest | context digest | f64 clip_norm |
        u32 threshold |
        f64 noise_multiplier | u32 min_survivors | u32 len | f64 weights..`` (big-endian; 0 and an
        empty list where absent). SecAgg signs it with the advertised keys and the survivor set, so
        a tailored model or FedAvg weight is caught before anything is unmasked."""
        import hashlib
        import struct

        z, m = (self.noise.noise_multiplier, self.noise.min_survivors) if self.noise else (0.0, 0)
        w = self.weights or ()
        return hashlib.sha256(
            b"securefl/round-plan/v2\x00" + self.model_digest + self.context_digest
            + struct.pack(f">dIdII{len(w)}d", self.clip_norm, self.threshold, z, m, len(w), *w)
        ).digest()

    def weight_of(self, client: int) -> float:
        """The public FedAvg weight of ``client`` (ConfigError without weights)."""
        if self.weights is None:
            raise ConfigError("this round carries no FedAvg weights")
        return self.weights[self.participants.index(client)]


def min_survivors(spec: RoundSpec) -> int:
    """The fewest survivors a round of ``spec`` may release, in every mode (SecAgg's threshold, the
    CKKS server's and key holder's ``min_clients``): ``spec.threshold``, raised to
    ``noise.min_survivors`` so that a round with less than the planned noise aborts before
    anything is unmasked or decrypted."""
    if spec.noise is not None and spec.noise.noise_multiplier > 0:
        return min(len(spec.participants), max(spec.threshold, spec.noise.min_survivors))
    return spec.threshold


def check_release(spec: RoundSpec, survivors: int) -> None:
    """Refuse (AggregationAbortedError) to release a sum of fewer survivors than the noise plan's
    ``min_survivors``: it would carry less than the planned noise."""
    noise = spec.noise
    if noise is not None and noise.noise_multiplier > 0 and survivors < noise.min_survivors:
        raise AggregationAbortedError(
            f"{survivors} survivors carry less than the planned noise (min_survivors = "
            f"{noise.min_survivors}); nothing is released")


#: a fixed threshold above any participant count: T = n (every input in the sum)
MAX_THRESHOLD = 1 << 30


def round_threshold(n: int, assumptions: Assumptions | None = None, *, floor: int = 0,
                    fixed: int | None = None) -> int:
    """The threshold T of a round over ``n`` participants: ``fixed`` (a run's explicit
    threshold) capped at n, or else the stated assumptions' rule for n
    (protocol.secagg.bounds.threshold_for: the smallest T of the active-security bounds 2T > n + c
    and T - c >= 2, or n - floor(f n) with a stated dropout fraction f), never below ``floor`` (a
    manifest's threshold), at most n. A deployment's banks check the signed T against it
    (securefl.federation.ProtocolParams.round_threshold, spec section 12.1)."""
    if n < 1:
        raise ConfigError("a round needs at least one participant")
    if fixed is not None:
        return min(fixed, n)
    from securefl.protocol.secagg.bounds import Assumptions as _Assumptions
    from securefl.protocol.secagg.bounds import threshold_for

    return min(n, max(floor, threshold_for(n, assumptions or _Assumptions())))


@dataclass(frozen=True)
class RoundPlanner:
    """A run's public parameters, from which every round's :class:`RoundSpec` and
    :class:`NoisePlan` follow (issue 15: one planner behind every transport). The participants,
    their FedAvg weights and the digests are the round's; everything else is the run's:

    - ``session_id``, ``clip_norm`` C, ``noise_multiplier`` z (0: no client-level noise);
    - the threshold rule (:func:`round_threshold`): ``threshold`` (a fixed T, capped at n), or
      else the ``assumptions``' rule (colluders c, dropout fraction) never below ``floor``;
    - ``aggregation`` and SecAgg+'s ``degree`` (None: derived from the bounds): with "secagg"
      the noise shares are sized for the minimum honest set a sparse graph can isolate
      (SecAggEncoder.isolatable_honest), otherwise for min_survivors - c.

    A deployment's banks derive the same spec from the signed plan (its T, min_survivors and z
    as signed, each checked against the manifest's rule), so both sides call :meth:`spec`."""

    session_id: bytes
    clip_norm: float
    noise_multiplier: float = 0.0
    aggregation: str | None = None
    assumptions: Assumptions | None = None
    degree: int | None = None
    threshold: int | None = None
    floor: int = 0

    @property
    def colluders(self) -> int:
        """The banks assumed to collude with the server (the assumptions', else 0)."""
        return self.assumptions.colluders if self.assumptions is not None else 0

    def threshold_for(self, n: int) -> int:
        """T for a round over ``n`` participants (:func:`round_threshold`)."""
        return round_threshold(n, self.assumptions, floor=self.floor, fixed=self.threshold)

    def noise(self, n: int, min_survivors: int | None = None) -> NoisePlan | None:
        """The client-level noise plan of a round over ``n`` participants that releases only
        with at least ``min_survivors`` survivors (default: T): each share sized so that the
        smallest honest set whose sum can be revealed (T - c, or SecAgg+'s isolatable honest set)
        still carries z C; None without client-level noise."""
        if not self.noise_multiplier > 0:
            return None
        m = self.threshold_for(n) if min_survivors is None else min_survivors
        isolatable = None
        if self.aggregation == "secagg":
            from securefl.protocol.secagg.encoding import SecAggEncoder

            isolatable = SecAggEncoder(degree=self.degree, assumptions=self.assumptions
                                       ).isolatable_honest(n, m)
        return NoisePlan(self.noise_multiplier, m, colluders=self.colluders,
                         isolatable_honest=isolatable)

    def spec(self, round_: int, participants: tuple[int, ...], *,
             weights: tuple[float, ...] | None = None, model_digest: bytes = bytes(32),
             context_digest: bytes = bytes(32), threshold: int | None = None,
             min_survivors: int | None = None) -> RoundSpec:
        """Round ``round_``'s public plan over ``participants`` (SecAgg client ids): T from the
        threshold rule unless a signed ``threshold`` is given, the noise plan for
        ``min_survivors`` (default T), the participants' public FedAvg ``weights`` (in their
        order), the digests of the global model and of the training plan."""
        t = self.threshold_for(len(participants)) if threshold is None else threshold
        return RoundSpec(session_id=self.session_id, round=round_, participants=participants,
                         clip_norm=self.clip_norm, threshold=t,
                         noise=self.noise(len(participants),
                                          t if min_survivors is None else min_survivors),
                         weights=weights, model_digest=model_digest,
                         context_digest=context_digest)

    def exact(self, clip_norm: float) -> RoundPlanner:
        """The same session's planner for an exact sum of every input (round 0's moments: clip
        ``clip_norm``, no client-level noise, T = the participants unless given)."""
        return replace(self, clip_norm=clip_norm, noise_multiplier=0.0,
                       threshold=MAX_THRESHOLD)

