"""Pieces both deployment sides share: the federation manifest as the PKI, bank ids, the per-round
:class:`RoundSpec` and the SecAgg encoding, and the simulation's randomness derivation.
The encoding and the simulation's randomness are the ones the in-process driver uses
(:func:`securefl.secagg.encode_input`, :class:`securefl.crypto.random.SimulationRandomness`), so a
deployment and ``securefl run`` with the same seed compute the same model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from securefl.aggregation import NoisePlan, RoundSpec
from securefl.crypto.random import SeededRandomSource, SimulationRandomness, SystemRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import ConfigError, SignatureError
from securefl.federation import Federation
from securefl.protocol.quantize import Encoding
from securefl.protocol.secagg import Federation as ProtocolFederation
from securefl.protocol.secagg import SecAggConfig

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.deploy.messages import RoundStart

__all__ = [
    "bank_ids",
    "encode_input",
    "encoding_for",
    "protocol_federation",
    "randomness",
    "round_spec",
    "secagg_config",
]


def bank_ids(fed: Federation) -> dict[str, int]:
    """Manifest client name -> SecAgg client id (its index in the manifest's client list)."""
    return {name: i for i, name in enumerate(fed.clients)}


def protocol_federation(fed: Federation, session: bytes) -> ProtocolFederation:
    """The SecAgg machines' PKI: client id -> the Ed25519 identity key listed in the manifest."""
    return ProtocolFederation(session, {i: fed.verify_key(n) for n, i in bank_ids(fed).items()})


def round_spec(start: RoundStart, ids: dict[str, int]) -> RoundSpec:
    unknown = [p for p in start.participants if p not in ids]
    if unknown:
        raise SignatureError(f"round {start.round} names participants outside the manifest: "
                             f"{unknown[:5]}")
    noise = (NoisePlan(start.noise_multiplier, start.min_survivors)
             if start.noise_multiplier > 0 else None)
    return RoundSpec(session_id=start.session, round=start.round,
                     participants=tuple(sorted(ids[p] for p in start.participants)),
                     clip_norm=start.clip_norm, threshold=start.threshold, noise=noise)


def encoding_for(start: RoundStart, spec: RoundSpec) -> tuple[Encoding, int]:
    """The SecAgg encoding of this round and the protocol threshold (both sides compute them
    from the signed public plan; securefl.secagg.SecAggAggregator is the single definition)."""
    from securefl.secagg import SecAggAggregator

    agg = SecAggAggregator(degree=start.degree, precision_bits=start.precision_bits)
    return agg.encoding_for(spec, start.dim), agg.min_survivors(spec)


def secagg_config(start: RoundStart, spec: RoundSpec, enc: Encoding, threshold: int
                  ) -> SecAggConfig:
    return SecAggConfig.build(session_id=start.session, round=start.round,
                              participants=spec.participants, threshold=threshold,
                              dim=start.dim, bits=enc.bits, degree=start.degree)


def encode_input(x: NDArray[np.float64], spec: RoundSpec, enc: Encoding,
                 rounding: RandomSource, noise: RandomSource) -> NDArray[np.uint32]:
    """This bank's field input, encoded exactly as :func:`securefl.secagg.encode_input` does it
    for each client of the in-process aggregator (protocols/secagg)."""
    from securefl.secagg import encode_input as encode

    return encode(x, clip_norm=spec.clip_norm, encoding=enc, rounding=rounding, noise=noise,
                  who="this bank")


def randomness(sim_seed: int | None, session: bytes, round_: int, party: int, purpose: str,
               stored_seed: bytes | None = None) -> RandomSource:
    """A bank's randomness for one purpose. Deployment: the OS CSPRNG, except for the SecAgg key
    machine, whose stream must be replayable across ClientApp processes and so comes from a
    32-byte seed drawn once per round from the OS CSPRNG and kept in the node's ``context.state``.
    ``sim_seed`` (INSECURE, tests only): the same streams as ``securefl run --seed``."""
    if sim_seed is not None:
        return SimulationRandomness(sim_seed, session).source(round_, party, purpose)
    if stored_seed is not None:
        return SeededRandomSource(Secret(stored_seed, label="round-seed"),
                                  f"{session.hex()}/{round_}/{party}/{purpose}")
    if purpose == "keys":
        raise ConfigError("the key machine needs a stored seed")
    return SystemRandomSource()
