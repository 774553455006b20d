"""t-of-n Shamir secret sharing (Shamir, "How to share a secret", CACM 22(11), 1979) over GF(p),
p = 2^521 - 1 (the Mersenne prime M521, also the field of NIST P-521).

A secret is a byte string of at most 64 bytes read as a big-endian integer s < 2^512 < p. The dealer
draws a polynomial f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} with a_k uniform in GF(p) (from the
injected randomness source, by rejection: no modulo bias) and gives holder x the value f(x).
In SecAgg the evaluation point of client ``c`` is ``x = c + 1`` (never 0, where f(0) is the secret).
Any t shares reconstruct s by Lagrange interpolation at 0; fewer than t reveal nothing about s
(information-theoretically), Bonawitz et al., CCS 2017, section 3.

Shares are encoded as 66-byte big-endian integers (ceil(521/8)).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from securefl.crypto.random import RandomSource
from securefl.errors import CryptoError, IntegrityError

__all__ = [
    "PRIME",
    "SHARE_SIZE",
    "combine",
    "decode_share",
    "encode_share",
    "lagrange_at_zero",
    "split",
]

PRIME = 2**521 - 1
SHARE_SIZE = 66
MAX_SECRET_BYTES = 64
_lagrange_cache: dict[tuple[int, ...], tuple[int, ...]] = {}


def split(secret: bytes, threshold: int, xs: Iterable[int], random: RandomSource) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for the distinct non-zero points ``xs``; any ``threshold``
    of them reconstruct it."""
    points = list(xs)
    if len(secret) > MAX_SECRET_BYTES:
        raise CryptoError(f"a Shamir secret is at most {MAX_SECRET_BYTES} bytes")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise CryptoError("Shamir evaluation points must be distinct and non-zero")
    if not 1 <= threshold <= len(points):
        raise CryptoError(f"threshold {threshold} must be in [1, {len(points)}]")
    coeffs = [int.from_bytes(secret, "big")] + [
        random.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis coefficients l_k(0) = prod_{m != k} x_m / (x_m - x_k) mod p (cached)."""
    cached = _lagrange_cache.get(xs)
    if cached is not None:
        return cached
    out = []
    for k, xk in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != k:
                num = num * xm % PRIME
                den = den * (xm - xk) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    result = tuple(out)
    if len(_lagrange_cache) < 4096:
        _lagrange_cache[xs] = result
    return result


def combine(shares: Mapping[int, int], threshold: int, secret_size: int) -> bytes:
    """Reconstruct a ``secret_size``-byte secret from at least ``threshold`` shares (uses the
    ``threshold`` smallest points). Raises :class:`IntegrityError` if the result does not fit."""
    if len(shares) < threshold:
        raise CryptoError(f"{len(shares)} shares are fewer than the threshold {threshold}")
    xs = tuple(sorted(shares)[:threshold])
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise CryptoError("Shamir evaluation points must be distinct and non-zero")
    coeffs = lagrange_at_zero(xs)
    secret = sum(c * shares[x] for c, x in zip(coeffs, xs, strict=True)) % PRIME
    if secret >= 1 << (8 * secret_size):
        raise IntegrityError("reconstructed secret is out of range: a share is forged or corrupt")
    return secret.to_bytes(secret_size, "big")


def encode_share(value: int) -> bytes:
    if not 0 <= value < PRIME:
        raise CryptoError("share value out of the field")
    return value.to_bytes(SHARE_SIZE, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_SIZE:
        raise IntegrityError(f"a share is {SHARE_SIZE} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise IntegrityError("share value out of the field")
    return value
