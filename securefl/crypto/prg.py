"""The mask PRG: a 256-bit seed expanded with AES-256-CTR into uint32 words.

Word k of the mask is the little-endian uint32 at bytes [4k, 4k+4) of the AES-256-CTR key stream
under key = seed, initial counter block = 16 zero bytes (the counter is the whole 128-bit block,
incremented big-endian as in NIST SP 800-38A / OpenSSL). A seed is used for exactly one mask, so
the fixed initial counter is safe. Bonawitz et al., CCS 2017, section 4: masks are PRG(s_{u,v})
and PRG(b_u).

Masks are generated in chunks straight into one preallocated buffer (``update_into``) viewed as a
uint32 array, and added to / subtracted from an accumulator modulo 2^32; callers reduce modulo 2^b
at the end (2^b divides 2^32, so the reduction commutes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.crypto.secret import Secret
from securefl.errors import CryptoError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["CHUNK_WORDS", "accumulate_mask", "expand_mask"]

#: words generated per update_into call: 256 KiB, cache friendly
CHUNK_WORDS = 1 << 16
_BLOCK = 16
_ZEROS = bytes(4 * CHUNK_WORDS)


def _encryptor(seed: Secret):  # type: ignore[no-untyped-def]
    raw = seed.expose()
    if len(raw) != 32:
        raise CryptoError("a mask seed is exactly 32 bytes")
    return Cipher(algorithms.AES(raw), modes.CTR(bytes(_BLOCK))).encryptor()


def accumulate_mask(acc: NDArray[np.uint32], seed: Secret, sign: int) -> None:
    """``acc += sign * PRG(seed)`` modulo 2^32, in place; ``sign`` is +1 or -1."""
    if sign not in (1, -1):
        raise CryptoError("sign must be +1 or -1")
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise CryptoError("the accumulator must be a contiguous 1-D uint32 array")
    enc = _encryptor(seed)
    buf = bytearray(4 * CHUNK_WORDS + _BLOCK - 1)
    words = np.frombuffer(buf, dtype="<u4", count=CHUNK_WORDS)
    zeros = memoryview(_ZEROS)
    op = np.add if sign == 1 else np.subtract
    n = acc.shape[0]
    for start in range(0, n, CHUNK_WORDS):
        m = min(CHUNK_WORDS, n - start)
        enc.update_into(zeros[: 4 * m], buf)
        part = acc[start : start + m]
        op(part, words[:m], out=part)


def expand_mask(seed: Secret, n: int) -> NDArray[np.uint32]:
    """The first ``n`` words of PRG(seed) as a new uint32 vector (tests and vectors)."""
    if n < 0:
        raise CryptoError("n must be >= 0")
    out = np.zeros(n, dtype=np.uint32)
    accumulate_mask(out, seed, 1)
    return out
