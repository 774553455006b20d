"""Cryptographic randomness sources for the protocol and DP code (never numpy's generators).

* :class:`SystemRandomSource` reads the OS CSPRNG (``os.urandom``; large draws are expanded from a
  fresh OS key, see "Speed" below): the source for deployments.
* :class:`SeededRandomSource` is a ChaCha20 keystream (RFC 8439 cipher from ``cryptography``) keyed by
  HKDF-SHA256(seed, info=label). It is as unpredictable as its seed, and reproducible: ``securefl run
  --seed`` uses it so a simulated run (stochastic rounding, DP noise) is deterministic and a resumed run
  ends in the same model. Each (client, round, purpose) gets its own label, hence its own key stream.

Both expose the same small API: ``random_bytes``, ``uint32`` / ``uint64`` (numpy vectors of uniform
words, little-endian words of the byte stream), ``uniform`` (floats in [0, 1) with 53 random bits)
and ``randbelow`` (unbiased, by rejection).

Speed: vectors are written by the cipher straight into one preallocated buffer (``update_into``
from a small zero block), so a 4 MB draw costs about as much as the keystream itself (~1.5 ms
for ChaCha20 on one core) rather than the allocation of an input and an output buffer.
:class:`SystemRandomSource` expands draws of more than ``_SMALL_DRAW`` bytes from a fresh 32-byte
``os.urandom`` key with ChaCha20, the "fast-key-erasure" construction (D. J. Bernstein,
"Fast-key-erasure random-number generators", 2017; the Linux CRNG behind ``getrandom`` is itself
ChaCha20 keyed this way): as unpredictable as the OS source, and ~20x faster than reading
megabytes from the kernel.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import TYPE_CHECKING, Protocol

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.crypto.secret import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext
    from numpy.typing import NDArray

__all__ = [
    "RandomSource",
    "SeededRandomSource",
    "SimulationRandomness",
    "SystemRandomSource",
    "uint32_into",
]

#: zero input for the stream ciphers; keystream is produced in chunks of this size
_ZERO_CHUNK = memoryview(bytes(1 << 16))
#: draws up to this many bytes: os.urandom directly (system) or one plain update call (seeded)
_SMALL_DRAW = 256


class RandomSource(Protocol):
    def random_bytes(self, n: int) -> bytes: ...

    def uint32(self, n: int) -> NDArray[np.uint32]: ...

    def uint64(self, n: int) -> NDArray[np.uint64]: ...

    def uniform(self, n: int) -> NDArray[np.float64]: ...

    def randbelow(self, bound: int) -> int: ...


def _keystream_into(encryptor: CipherContext, view: memoryview) -> None:
    """Write the next ``len(view)`` keystream bytes of a stream-cipher encryptor into ``view``."""
    n = len(view)
    step = len(_ZERO_CHUNK)
    for start in range(0, n, step):
        m = min(step, n - start)
        encryptor.update_into(_ZERO_CHUNK[:m], view[start : start + m])


def _keystream(encryptor: CipherContext, n: int) -> bytearray:
    """The next ``n`` keystream bytes of a stream-cipher encryptor, in a new buffer."""
    out = bytearray(n)
    _keystream_into(encryptor, memoryview(out))
    return out


def uint32_into(random: RandomSource, out: NDArray[np.uint32]) -> None:
    """Fill the contiguous uint32 vector ``out`` with the next ``len(out)`` words of ``random``,
    the same words as ``random.uint32(len(out))``, without allocating (hot loops reuse ``out``:
    a fresh buffer per call costs page faults once it exceeds the allocator's mmap threshold)."""
    if isinstance(random, _Base) and out.flags.c_contiguous and sys.byteorder == "little":
        random._fill_into(out.data.cast("B"))
    else:
        out[...] = random.uint32(out.shape[0])


def _chacha20(key: bytes) -> CipherContext:
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()


class _Base:
    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fill(self, n: int) -> bytearray:
        """The next ``n`` bytes of the stream in a fresh writable buffer (same bytes as
        ``random_bytes(n)``)."""
        return bytearray(self.random_bytes(n))

    def _fill_into(self, view: memoryview) -> None:
        """The next ``len(view)`` bytes of the stream, written into ``view``."""
        view[:] = self.random_bytes(len(view))

    def uint32(self, n: int) -> NDArray[np.uint32]:
        """``n`` uniform 32-bit words: the little-endian words of the next ``4 n`` bytes."""
        return np.frombuffer(self._fill(4 * n), dtype="<u4").astype(np.uint32, copy=False)

    def uint64(self, n: int) -> NDArray[np.uint64]:
        """``n`` uniform 64-bit words: the little-endian words of the next ``8 n`` bytes."""
        return np.frombuffer(self._fill(8 * n), dtype="<u8").astype(np.uint64, copy=False)

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
    """The operating system's CSPRNG: ``os.urandom`` for small draws; larger ones are the ChaCha20
    keystream under a fresh ``os.urandom`` key that is used for that one draw and dropped
    (fast-key-erasure, see the module docstring)."""

    def random_bytes(self, n: int) -> bytes:
        if n <= _SMALL_DRAW:
            return os.urandom(n)
        return bytes(self._fill(n))

    def _fill(self, n: int) -> bytearray:
        if n <= _SMALL_DRAW:
            return bytearray(os.urandom(n))
        return _keystream(_chacha20(os.urandom(32)), n)

    def _fill_into(self, view: memoryview) -> None:
        if len(view) <= _SMALL_DRAW:
            view[:] = os.urandom(len(view))
        else:
            _keystream_into(_chacha20(os.urandom(32)), view)

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
        # a fresh key per label, so a fixed (all-zero) nonce and counter block is safe
        self._enc = _chacha20(key)
        self._label = label

    def random_bytes(self, n: int) -> bytes:
        if n <= _SMALL_DRAW:
            return self._enc.update(bytes(n))
        return bytes(_keystream(self._enc, n))

    def _fill(self, n: int) -> bytearray:
        return _keystream(self._enc, n)

    def _fill_into(self, view: memoryview) -> None:
        _keystream_into(self._enc, view)

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
