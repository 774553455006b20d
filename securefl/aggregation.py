"""The aggregation interface every mode implements: ``plain`` (insecure, for comparison), ``secagg``
(SecAgg/SecAgg+ masking) and ``ckks`` (homomorphic encryption).

The federated loop hands each mode the participants' clipped float updates (L2 norm <= ``clip_norm``,
already multiplied by the client's public weight in (0, 1]) and gets back only the SUM of the
survivors' inputs, plus the transcript facts the audit log and privacy ledger need. Client-level DP
noise is the mode's job, because where it is added differs: in the integer domain after scaling for
masking (distributed discrete Gaussian), as a Gaussian share before encryption for CKKS and plain.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from securefl.errors import ConfigError, LocalProtocolError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.crypto.signing import SigningKey

__all__ = ["AggregateOutcome", "Aggregator", "NoisePlan", "RandomFactory", "RoundSpec",
           "check_inputs", "participant_identities"]

#: returns the randomness source for (client id, purpose), e.g. (2, "noise") or (2, "rounding").
RandomFactory = Callable[[int, str], "RandomSource"]


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
    SecAgg plan's own (signed) n, T, k and c, and :class:`~securefl.secagg.SecAggAggregator`
    refuses a NoisePlan weaker than its assumptions.
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


@dataclass
class AggregateOutcome:
    """The only thing a round releases: the sum of the survivors' (noised) inputs."""

    total: NDArray[np.float64]
    survivors: tuple[int, ...]
    #: client id -> name of the stage at which it dropped
    dropouts: dict[int, str] = field(default_factory=dict)
    #: per-coordinate std of the DP noise actually present in ``total`` (input units); 0 if none
    noise_std: float = 0.0
    #: sha256 hex digests for the audit log: "input/<id>", "aggregate", ...; never raw values
    digests: dict[str, str] = field(default_factory=dict)
    #: bytes each party sent ("server", "client/<id>", ...)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    #: the released sum of the survivors' FedAvg weights, when the aggregation carries it beside
    #: the update (ckks: encrypted in the last slot); None: the public weights are summed
    weight_total: float | None = None


def check_inputs(spec: RoundSpec, inputs: Mapping[int, NDArray[np.float64]]) -> int:
    """The common dimension of the round's inputs; LocalProtocolError unless there is exactly one
    1-D input per participant, all of the same length."""
    if set(inputs) != set(spec.participants):
        raise LocalProtocolError("inputs must be given for exactly the round's participants")
    dims = {np.asarray(v).shape for v in inputs.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise LocalProtocolError("all inputs must be 1-D vectors of the same dimension")
    return int(next(iter(dims))[0])


def participant_identities(spec: RoundSpec, random: RandomFactory,
                           enrolled: Mapping[int, SigningKey] | None) -> dict[int, SigningKey]:
    """The participants' Ed25519 identity keys: the enrolled ones (a deployment's manifest), or for
    simulations keys drawn from ``random(client, "identity")``."""
    from securefl.crypto.secret import Secret
    from securefl.crypto.signing import SigningKey

    if enrolled is not None:
        missing = set(spec.participants) - set(enrolled)
        if missing:
            raise ConfigError(f"no identity key for participants {sorted(missing)[:5]}")
        return {c: enrolled[c] for c in spec.participants}
    return {c: SigningKey.from_seed(Secret(random(c, "identity").random_bytes(32)))
            for c in spec.participants}


class Aggregator(ABC):
    """A way to compute the sum of the survivors' inputs."""

    name: ClassVar[str]
    #: False only for ``plain``, which the server sees in the clear
    secure: ClassVar[bool]
    #: protocol stages at which a client can drop out (for dropout simulation), in order
    stages: ClassVar[tuple[str, ...]] = ("upload",)

    def isolatable_honest(self, n: int, threshold: int) -> int | None:
        """The fewest honest inputs a released sum can hold when that is fewer than all honest
        survivors (SecAgg+ overrides it); None: one sum of every survivor is released."""
        return None

    @abstractmethod
    def aggregate(
        self,
        spec: RoundSpec,
        inputs: Mapping[int, NDArray[np.float64]],
        *,
        random: RandomFactory,
        dropouts: Mapping[int, str] | None = None,
    ) -> AggregateOutcome:
        """Run one round. ``dropouts`` maps client id -> stage name at which it disappears.

        Raises :class:`~securefl.errors.AggregationAbortedError` if too few survive; nothing is
        released then.
        """
