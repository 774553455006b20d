"""The in-process ``secagg`` driver: SecAgg / SecAgg+ masking (Bonawitz et al. CCS 2017; Bell et
al. CCS 2020), every party in this process. The server learns only the sum of the survivors'
quantized (noised) inputs.

The encoding (quantisation, noise share, field; protocols/secagg/spec.md, "Quantization") is the
protocol's own, :class:`securefl.protocol.secagg.SecAggEncoder` and
:func:`securefl.protocol.secagg.encode_input`, which a deployment's banks and the Flower mod use too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from securefl.aggregators.base import (
    AggregateOutcome,
    Aggregator,
    Inputs,
    RandomFactory,
    participant_identities,
)
from securefl.crypto.signing import SigningKey
from securefl.protocol import quantize
from securefl.protocol.quantize import Encoding
from securefl.protocol.secagg import (
    STAGES,
    Assumptions,
    IdentityRoster,
    SecAggClient,
    SecAggConfig,
    SecAggEncoder,
    SecAggServer,
    check_release,
    decode_sum,
    encode_input,
)
from securefl.transport.inprocess import InProcessDriver, Tamper

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.protocol.plan import RoundSpec
    from securefl.transport.policy import Deadlines

__all__ = ["SecAggAggregator", "SecAggOutcome"]


@dataclass
class SecAggOutcome(AggregateOutcome):
    """An :class:`AggregateOutcome` plus the encoding the DP accountant needs (gamma, bits,
    L2 sensitivity in integer units) and per-party CPU seconds."""

    encoding: Encoding | None = None
    integer_total: NDArray[np.int64] | None = None
    cpu_seconds: dict[str, float] = field(default_factory=dict)


class SecAggAggregator(SecAggEncoder, Aggregator):
    """SecAgg's clients and server in this process, over :class:`InProcessDriver`, with the
    protocol's encoding rules (:class:`SecAggEncoder`: thresholds and graph degree derived from
    ``assumptions``, explicit ``degree`` and ``neighbour_threshold`` checked against the bounds).
    ``tamper`` lets tests play a malicious server; ``identities`` are enrolled Ed25519 keys
    (default: drawn from ``random(client, "identity")``)."""

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
        super().__init__(degree=degree, neighbour_threshold=neighbour_threshold,
                         precision_bits=precision_bits, gamma=gamma, tail_log2=tail_log2,
                         assumptions=assumptions)
        self.tamper = tamper
        self.identities = dict(identities) if identities is not None else None
        #: per-stage deadlines of the in-process transport (securefl.transport.policy); None: none
        self.deadlines = deadlines

    def _identities(self, spec: RoundSpec, random: RandomFactory) -> dict[int, SigningKey]:
        return participant_identities(spec, random, self.identities)

    def run_round(self, spec: RoundSpec, inputs: Inputs, dim: int, *, random: RandomFactory,
                  dropouts: dict[int, str]) -> SecAggOutcome:
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
        federation = IdentityRoster(spec.session_id, {c: k.verify_key for c, k in identities.items()})
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
        check_release(spec, len(survivors))
        total = decode_sum(result.field_sum, enc)
        integer_total = quantize.from_field(result.field_sum, enc.bits)
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
