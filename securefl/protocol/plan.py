"""The public plan of one aggregation round, whatever the mode and transport: :class:`RoundSpec`
(what every party agrees on and binds into its signatures) and its client-level noise plan
:class:`NoisePlan` (how each bank's noise share is sized so the honest shares of any sum the
protocol can reveal carry the planned noise; DESIGN.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefl.errors import AggregationAbortedError, ConfigError

__all__ = ["NoisePlan", "RoundSpec", "check_release", "min_survivors"]


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
