"""One-call secure sum for notebooks and tests: ``simulate_secure_sum(updates, mode="secagg")``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from securefl.aggregators import MODES, RandomFactory, make_aggregator
from securefl.crypto.random import RandomSource, SeededRandomSource, SystemRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import ConfigError
from securefl.protocol.plan import RoundPlanner

__all__ = ["SecureSumResult", "simulate_secure_sum"]


@dataclass(frozen=True)
class SecureSumResult:
    total: NDArray[np.float64]
    survivors: tuple[int, ...]
    dropouts: dict[int, str]
    bytes_sent: dict[str, int]


def _random_factory(seed: int | bytes | None) -> tuple[RandomFactory, bytes]:
    if seed is None:
        system = SystemRandomSource()
        return (lambda _c, _p: system), system.random_bytes(16)
    raw = seed if isinstance(seed, bytes) else str(int(seed)).encode()
    master = Secret(hashlib.sha256(b"securefl/simulate/v1\x00" + raw).digest(), label="sim-seed")

    def factory(client: int, purpose: str) -> RandomSource:
        return SeededRandomSource(master, f"client/{client}/{purpose}")

    return factory, hashlib.sha256(b"session" + master.expose()).digest()[:16]


def simulate_secure_sum(
    updates: Mapping[int, NDArray[np.float64]] | Sequence[NDArray[np.float64]],
    *,
    mode: str = "secagg",
    threshold: int | None = None,
    neighbours: int | None = None,
    dropouts: Mapping[int, str] | None = None,
    seed: int | bytes | None = None,
    clip_norm: float | None = None,
) -> SecureSumResult:
    """Sum ``updates`` (client id -> vector, or a list indexed 0..n-1) under ``mode`` ("secagg",
    "ckks" or "plain"). ``threshold`` defaults to a majority (the active-security bound 2T > n with
    no colluder assumed), ``neighbours`` (SecAgg+ expected degree k, only for "secagg") to the
    degree securefl.protocol.secagg.bounds derives (classic SecAgg where a graph saves little); a
    threshold or degree below the bounds is refused. ``clip_norm`` defaults to the largest input
    norm; ``seed``
    makes the masks, noise and identities reproducible (with "ckks" the key holder's CKKS key and
    its flooding noise are fresh each call, so totals differ within the release error bound).
    Dropout stages are the mode's ``stages`` (ckks: "contribution", "reveal", "verification").
    ckks needs at least 2 clients that contribute and verify (two verifier co-signatures)."""
    inputs = dict(updates) if isinstance(updates, Mapping) else dict(enumerate(updates))
    if not inputs:
        raise ConfigError("no updates")
    n = len(inputs)
    arrays = {c: np.asarray(v, dtype=np.float64) for c, v in inputs.items()}
    if clip_norm is None:
        clip_norm = max(float(np.linalg.norm(v)) for v in arrays.values()) or 1.0
    random, session = _random_factory(seed)
    spec = RoundPlanner(session_id=session, clip_norm=clip_norm).spec(
        0, tuple(sorted(arrays)), threshold=threshold if threshold is not None else n // 2 + 1)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use 'secagg', 'ckks' or 'plain'")
    outcome = make_aggregator(mode, neighbours=neighbours).aggregate(
        spec, arrays, random=random, dropouts=dropouts)
    return SecureSumResult(
        total=outcome.total,
        survivors=outcome.survivors,
        dropouts=dict(outcome.dropouts),
        bytes_sent=dict(outcome.bytes_sent),
    )
