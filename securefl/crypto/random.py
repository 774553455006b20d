"""Cryptographic randomness sources for the protocol and DP code (never numpy's generators).

* :class:`SystemRandomSource` reads the OS CSPRNG (``os.urandom``): the source for deployments.
* :class:`SeededRandomSource` is a ChaCha20 keystream (RFC 8439 cipher from ``cryptography``) keyed by
  HKDF-SHA256(seed, info=label). It is as unpredictable as its seed, and reproducible: ``securefl run
  --seed`` uses it so a simulated run (stochastic rounding, DP noise) is deterministic and a resumed run
  ends in the same model. Each (client, round, purpose) gets its own label, hence its own key stream.

Both expose the same small API: ``random_bytes``, ``uint64`` (a numpy vector of uniform words),
``uniform`` (floats in [0, 1) with 53 random bits) and ``randbelow`` (unbiased, by rejection).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Protocol

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.crypto.secret import Secret

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["RandomSource", "SeededRandomSource", "SimulationRandomness", "SystemRandomSource"]


class RandomSource(Protocol):
    def random_bytes(self, n: int) -> bytes: ...

    def uint64(self, n: int) -> NDArray[np.uint64]: ...

    def uniform(self, n: int) -> NDArray[np.float64]: ...

    def randbelow(self, bound: int) -> int: ...


class _Base:
    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def uint64(self, n: int) -> NDArray[np.uint64]:
        return np.frombuffer(self.random_bytes(8 * n), dtype="<u8").astype(np.uint64, copy=False)

    def uniform(self, n: int) -> NDArray[np.float64]:
        """Floats k * 2^-53, k uniform in [0, 2^53): exactly representable, never 1.0."""
        return (self.uint64(n) >> np.uint64(11)).astype(np.float64) * (2.0**-53)

    def randbelow(self, bound: int) -> int:
        """Uniform integer in [0, bound) by rejection sampling (no modulo bias)."""
        if bound <= 0:
            raise ValueError("bound must be positive")
        nbits = bound.bit_length()
        nbytes = (nbits + 7) // 8
        excess = 8 * nbytes - nbits
        while True:
            value = int.from_bytes(self.random_bytes(nbytes), "big") >> excess
            if value < bound:
                return value


class SystemRandomSource(_Base):
    """The operating system's CSPRNG."""

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def __repr__(self) -> str:
        return "SystemRandomSource()"


class SeededRandomSource(_Base):
    """ChaCha20 keystream under HKDF-SHA256(seed, info=label): reproducible and unpredictable."""

    __slots__ = ("_enc", "_label")

    def __init__(self, seed: Secret, label: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"securefl-seeded-random-v1",
            info=label.encode("utf-8"),
        ).derive(seed.expose())
        nonce = bytes(16)  # a fresh key per label, so a fixed counter block is safe
        self._enc = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        self._label = label

    def random_bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def __repr__(self) -> str:
        return f"SeededRandomSource({self._label!r}, <redacted seed>)"


class SimulationRandomness:
    """Per-(round, party, purpose) ChaCha20 streams derived from a run seed and session id, so a
    simulated run (``securefl run --seed``) and a test deployment with the same seed draw exactly
    the same rounding, noise and key streams. INSECURE for real deployments: whoever knows the seed
    knows every stream; deployments use :class:`SystemRandomSource`."""

    __slots__ = ("_seed", "_session")

    def __init__(self, seed: int, session_id: bytes) -> None:
        self._seed = Secret(hashlib.sha256(b"securefl-sim-seed-v1" + seed.to_bytes(8, "big")
                                           + session_id).digest(), label="sim-seed")
        self._session = session_id.hex()

    def source(self, round_: int, party: int | str, purpose: str) -> SeededRandomSource:
        return SeededRandomSource(self._seed, f"{self._session}/{round_}/{party}/{purpose}")

    def __repr__(self) -> str:
        return "SimulationRandomness(<redacted seed>)"
