"""``secagg`` aggregation mode: SecAgg / SecAgg+ masking (Bonawitz et al. CCS 2017; Bell et al. CCS
2020) driven in-process. The server learns only the sum of the survivors' quantized (noised) inputs.

Encoding (see :meth:`SecAggAggregator.encoding_for` and protocols/secagg/spec.md):
  gamma = clip_norm / 2^precision_bits (or given), stochastic rounding with uniforms from
  ``random(client, "rounding")``, integer DP noise from ``random(client, "noise")``, field Z_{2^b}
  with b chosen so the sum of all participants cannot wrap.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from securefl.aggregation import (
    AggregateOutcome,
    Aggregator,
    RandomFactory,
    RoundSpec,
    check_inputs,
    participant_identities,
)
from securefl.crypto.signing import SigningKey
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    OverflowRiskError,
)
from securefl.protocol import quantize
from securefl.protocol.quantize import Encoding
from securefl.protocol.secagg import (
    STAGES,
    Assumptions,
    Federation,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from securefl.transport.inprocess import InProcessDriver, Tamper

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.transport.policy import Deadlines

__all__ = ["SecAggAggregator", "SecAggOutcome", "encode_input"]


@dataclass
class SecAggOutcome(AggregateOutcome):
    """An :class:`AggregateOutcome` plus the encoding the DP accountant needs (gamma, bits,
    L2 sensitivity in integer units) and per-party CPU seconds."""

    encoding: Encoding | None = None
    integer_total: NDArray[np.int64] | None = None
    cpu_seconds: dict[str, float] = field(default_factory=dict)


NoiseSampler = Callable[[int, float, "RandomSource"], "NDArray[np.int64]"]


def _noise_sampler() -> NoiseSampler:
    try:
        from securefl.dp.discrete import discrete_gaussian
    except ImportError as exc:
        raise ConfigError(
            "DP noise with secagg needs securefl.dp.discrete.discrete_gaussian, "
            "which is not available in this build"
        ) from exc
    return discrete_gaussian


def encode_input(x: NDArray[np.float64], *, clip_norm: float, encoding: Encoding,
                 rounding: RandomSource, noise: RandomSource, who: str = "client"
                 ) -> NDArray[np.uint32]:
    """One client's field input (protocols/secagg/spec.md, "Quantization"): check the clip,
    stochastic rounding to multiples of gamma, this client's discrete Gaussian noise share (when the
    encoding carries noise), then Z_2^b. OverflowRiskError if the input breaks the field bound."""
    x = np.asarray(x, dtype=np.float64)
    # NaN or +-inf anywhere makes the norm NaN or inf, which fails this test too
    if not float(np.linalg.norm(x)) <= clip_norm * (1 + 1e-9):
        raise OverflowRiskError(f"input of {who} is not finite or exceeds the clip norm")
    q_noise = None
    if encoding.noise_sigma2_int > 0:
        q_noise = _noise_sampler()(x.size, encoding.noise_sigma2_int, noise)
    try:  # one blocked pass: round, check |q| <= ceil(C / gamma), add the noise, reduce
        return quantize.round_to_field(x, encoding.gamma, encoding.bits,
                                       math.ceil(clip_norm / encoding.gamma), rounding, q_noise)
    except OverflowRiskError as exc:
        raise OverflowRiskError(f"input of {who} exceeds the per-coordinate bound") from exc


class SecAggAggregator(Aggregator):
    """Thresholds and graph degree derived from ``assumptions`` (protocol.secagg.bounds): classic
    SecAgg where a graph would not save much, SecAgg+ on G(n, p) otherwise; explicit ``degree`` and
    ``neighbour_threshold`` are checked against the bounds."""

    name = "secagg"
    secure = True
    stages = STAGES

    def __init__(
        self,
        *,
        degree: int | None = None,
        neighbour_threshold: int | None = None,
        precision_bits: int = 16,
        gamma: float | None = None,
        tail_log2: int = 40,
        tamper: Tamper | None = None,
        identities: Mapping[int, SigningKey] | None = None,
        assumptions: Assumptions | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        if not 1 <= precision_bits <= 30:
            raise ConfigError("precision_bits must be in [1, 30]")
        if gamma is not None and not (gamma > 0 and math.isfinite(gamma)):
            raise ConfigError("gamma must be a positive finite number")
        self.degree = degree
        self.neighbour_threshold = neighbour_threshold
        self.precision_bits = precision_bits
        self.gamma = gamma
        self.tail_log2 = tail_log2
        self.tamper = tamper
        self.identities = dict(identities) if identities is not None else None
        #: the federation's stated assumptions (colluders, dropouts): thresholds follow from them
        self.assumptions = assumptions if assumptions is not None else Assumptions()
        #: per-stage deadlines of the in-process transport (securefl.transport.policy); None: none
        self.deadlines = deadlines

    def noise_variance_int(self, spec: RoundSpec, gamma: float) -> float:
        """Per-client integer noise variance (z C / gamma)^2 / h, h the honest floor of the noise
        plan (min_survivors - colluders, or SecAgg+'s isolatable honest set); 0 without noise."""
        if spec.noise is None or spec.noise.noise_multiplier == 0:
            return 0.0
        return (
            spec.noise.noise_multiplier * spec.clip_norm / gamma
        ) ** 2 / spec.noise.honest_floor

    def isolatable_honest(self, n: int, threshold: int) -> int | None:
        """The fewest honest inputs a released sum can hold under this aggregator's assumptions
        when that is fewer than all honest survivors (SecAgg+ on a sparse graph: the bounds'
        ``min_honest_sum``); None for classic SecAgg, which releases one sum."""
        from securefl.protocol.secagg import derive

        d = derive(n, self.assumptions, threshold=threshold, degree=self.degree,
                   neighbour_threshold=self.neighbour_threshold)
        return None if d.classic else d.min_honest_sum

    def check_noise_plan(self, spec: RoundSpec) -> None:
        """Refuse (ConfigError) a noise plan sized for fewer colluders, or a larger honest set, than
        this aggregator's assumptions guarantee: its honest shares would carry less than the
        planned noise."""
        if spec.noise is None or spec.noise.noise_multiplier == 0:
            return
        n, c = len(spec.participants), self.assumptions.colluders
        isolatable = self.isolatable_honest(n, self.min_survivors(spec))
        guaranteed = isolatable if isolatable is not None else spec.noise.min_survivors - c
        if spec.noise.colluders < c or spec.noise.honest_floor > guaranteed:
            raise ConfigError(
                f"the noise plan splits the noise over {spec.noise.honest_floor} honest shares "
                f"(colluders {spec.noise.colluders}), but with c = {c} colluding banks a released "
                f"sum may hold only {guaranteed} honest inputs",
                hint="size the noise plan with the aggregator's assumptions (NoisePlan colluders, "
                     "isolatable_honest)")

    @staticmethod
    def min_survivors(spec: RoundSpec) -> int:
        """The protocol threshold: ``spec.threshold``, raised to ``noise.min_survivors`` so that a
        round with less than the planned noise aborts before anything is unmasked."""
        if spec.noise is not None and spec.noise.noise_multiplier > 0:
            return min(len(spec.participants), max(spec.threshold, spec.noise.min_survivors))
        return spec.threshold

    def encoding_for(self, spec: RoundSpec, dim: int) -> Encoding:
        """gamma (input units per integer step), field bits b, and the L2 sensitivity of one client
        in integer units including stochastic-rounding inflation, C / gamma + sqrt(dim)."""
        gamma = self.gamma if self.gamma is not None else spec.clip_norm / 2**self.precision_bits
        return quantize.choose_encoding(
            len(spec.participants),
            dim,
            spec.clip_norm,
            gamma,
            self.noise_variance_int(spec, gamma),
            self.tail_log2,
        )

    def _identities(self, spec: RoundSpec, random: RandomFactory) -> dict[int, SigningKey]:
        return participant_identities(spec, random, self.identities)

    def aggregate(
        self,
        spec: RoundSpec,
        inputs: Mapping[int, NDArray[np.float64]],
        *,
        random: RandomFactory,
        dropouts: Mapping[int, str] | None = None,
    ) -> SecAggOutcome:
        dropouts = dict(dropouts or {})
        dim = check_inputs(spec, inputs)
        self.check_noise_plan(spec)
        enc = self.encoding_for(spec, dim)
        cfg = SecAggConfig.build(
            session_id=spec.session_id,
            round=spec.round,
            participants=spec.participants,
            threshold=self.min_survivors(spec),
            dim=dim,
            bits=enc.bits,
            degree=self.degree,
            neighbour_threshold=self.neighbour_threshold,
            assumptions=self.assumptions,
            plan_digest=spec.plan_digest(),
        )
        identities = self._identities(spec, random)
        federation = Federation(spec.session_id, {c: k.verify_key for c, k in identities.items()})
        clients = {}
        for c in spec.participants:
            field_input = encode_input(inputs[c], clip_norm=spec.clip_norm, encoding=enc,
                                       rounding=random(c, "rounding"), noise=random(c, "noise"),
                                       who=f"client {c}")
            clients[c] = SecAggClient(
                cfg, federation, c, identities[c], field_input, random(c, "keys")
            )
        server = SecAggServer(cfg, federation)
        driver = InProcessDriver(server, clients, dropouts=dropouts, tamper=self.tamper,
                                 deadlines=self.deadlines)
        result = driver.run()
        survivors = result.survivors
        if (
            spec.noise is not None
            and spec.noise.noise_multiplier > 0
            and len(survivors) < spec.noise.min_survivors
        ):
            raise AggregationAbortedError(
                f"{len(survivors)} survivors carry less than the planned noise (min_survivors = "
                f"{spec.noise.min_survivors}); nothing is released"
            )
        integer_total = quantize.from_field(result.field_sum, enc.bits)
        total = integer_total.astype(np.float64) * enc.gamma
        noise_std = math.sqrt(len(survivors) * enc.noise_sigma2_int) * enc.gamma
        # audit: sha256 of each summed client's masked input vector (MaskedInput.data, packed
        # Z_2^b words) exactly as the server received it; reveals nothing beyond the masked input
        digests = {
            f"input/{c}": hashlib.sha256(driver.masked_inputs[c]).hexdigest() for c in survivors
        }
        digests["aggregate"] = hashlib.sha256(total.tobytes()).hexdigest()
        return SecAggOutcome(
            total=total,
            survivors=survivors,
            dropouts=dict(result.dropped_at),
            noise_std=noise_std,
            digests=digests,
            bytes_sent=dict(driver.stats.bytes_sent),
            encoding=enc,
            integer_total=integer_total,
            cpu_seconds=dict(driver.stats.cpu_seconds),
        )
