"""Shared helpers for the SecAgg tests: build N clients + a server with deterministic keys."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.protocol.secagg import (
    Assumptions,
    IdentityRoster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)


@dataclass
class Round:
    config: SecAggConfig
    federation: IdentityRoster
    identities: dict[int, SigningKey]
    inputs: dict[int, NDArray[np.uint32]]
    clients: dict[int, SecAggClient]
    server: SecAggServer


def make_round(
    n: int,
    dim: int = 8,
    bits: int = 20,
    threshold: int | None = None,
    degree: int | None = None,
    neighbour_threshold: int | None = None,
    assumptions: Assumptions | None = None,
    plan: bytes = bytes(32),
    session: bytes = b"S" * 16,
    round_: int = 1,
    seed: bytes = b"seed",
) -> Round:
    master = Secret(seed.ljust(32, b"\x00"))
    ids = list(range(n))
    identities = {
        c: SigningKey.from_seed(Secret(SeededRandomSource(master, f"id/{c}").random_bytes(32)))
        for c in ids
    }
    federation = IdentityRoster(session, {c: k.verify_key for c, k in identities.items()})
    cfg = SecAggConfig.build(
        session_id=session,
        round=round_,
        participants=ids,
        threshold=threshold,
        dim=dim,
        bits=bits,
        degree=degree,
        neighbour_threshold=neighbour_threshold,
        assumptions=assumptions,
        plan_digest=plan,
    )
    words = SeededRandomSource(master, f"inputs/{round_}").uint64(n * dim)
    inputs = {
        c: (words[c * dim : (c + 1) * dim] % np.uint64(1 << bits)).astype(np.uint32) for c in ids
    }
    clients = {
        c: SecAggClient(
            cfg,
            federation,
            c,
            identities[c],
            inputs[c],
            SeededRandomSource(master, f"keys/{round_}/{c}"),
        )
        for c in ids
    }
    return Round(cfg, federation, identities, inputs, clients, SecAggServer(cfg, federation))


def expected_sum(r: Round, survivors: tuple[int, ...]) -> NDArray[np.uint32]:
    """Sum of the survivors' inputs mod 2^bits with Python ints (independent of the package)."""
    mod = 1 << r.config.bits
    return np.array(
        [sum(int(r.inputs[c][k]) for c in survivors) % mod for k in range(r.config.dim)],
        dtype=np.uint32,
    )
