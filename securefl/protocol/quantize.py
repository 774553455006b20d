"""Fixed-point encoding of clipped float updates into Z_{2^b}, with unbiased stochastic rounding.

Encoding (value x in input units, step gamma > 0):
  q = floor(x / gamma) + [u < x / gamma - floor(x / gamma)],  u ~ U[0, 1) from the injected source,
so E[q] = x / gamma (unbiased) and |q - x / gamma| < 1 per coordinate.

No-wrap bound (documented in protocols/secagg/spec.md, tested at its edge):
  each input has L2 norm <= C, hence |x_i| <= C per coordinate and |q_i| <= ceil(C / gamma);
  with n clients and per-client integer noise of variance s2, the sum's noise is sub-Gaussian
  with variance n * s2 (Canonne, Kamath, Steinke, NeurIPS 2020: the discrete Gaussian is
  sub-Gaussian), so |noise| <= tau * sqrt(n * s2) in all d coordinates except with probability
  2 d exp(-tau^2 / 2) <= 2^-tail_log2. The sum is bounded by
  M = n * ceil(C / gamma) + ceil(tau * sqrt(n * s2)), and the centred representation of Z_{2^b}
  holds [-2^(b-1), 2^(b-1) - 1], so b = bitlength(M) + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import ConfigError, OverflowRiskError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = [
    "MAX_BITS",
    "Encoding",
    "bits_for",
    "bytes_per_coordinate",
    "choose_encoding",
    "from_field",
    "noise_tail",
    "pack",
    "stochastic_round",
    "sum_bound",
    "to_field",
    "unpack",
]

MAX_BITS = 32


@dataclass(frozen=True)
class Encoding:
    """How a round encodes floats. ``sensitivity_int`` is the worst-case L2 norm of one client's
    quantized vector in integer units, C / gamma + sqrt(d) (stochastic rounding moves each
    coordinate
    by < 1); the DP accountant divides the noise std (integer units) by it."""

    gamma: float
    bits: int
    sensitivity_int: float
    noise_sigma2_int: float = 0.0

    @property
    def bytes_per_coordinate(self) -> int:
        return bytes_per_coordinate(self.bits)


def noise_tail(dim: int, tail_log2: int) -> float:
    """tau with 2 * dim * exp(-tau^2 / 2) <= 2^-tail_log2."""
    return math.sqrt(2.0 * (math.log(2.0 * max(dim, 1)) + tail_log2 * math.log(2.0)))


def sum_bound(
    n: int, clip_norm: float, gamma: float, noise_sigma2: float, dim: int, tail_log2: int = 40
) -> int:
    """M: the largest |sum| any coordinate can take (noise: except with prob. 2^-tail_log2)."""
    per_client = math.ceil(clip_norm / gamma)
    tail = (
        math.ceil(noise_tail(dim, tail_log2) * math.sqrt(n * noise_sigma2)) if noise_sigma2 else 0
    )
    return n * per_client + tail


def bits_for(bound: int) -> int:
    """The smallest b whose centred range [-2^(b-1), 2^(b-1) - 1] contains [-bound, bound]."""
    if bound < 0:
        raise ConfigError("bound must be >= 0")
    return bound.bit_length() + 1


def bytes_per_coordinate(bits: int) -> int:
    return (bits + 7) // 8


def choose_encoding(
    n: int, dim: int, clip_norm: float, gamma: float, noise_sigma2: float = 0.0, tail_log2: int = 40
) -> Encoding:
    """The field size for n clients; :class:`OverflowRiskError` if it needs more than 32 bits."""
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ConfigError("gamma must be a positive finite number")
    if n < 1 or dim < 1:
        raise ConfigError("n and dim must be >= 1")
    bits = bits_for(sum_bound(n, clip_norm, gamma, noise_sigma2, dim, tail_log2))
    if bits > MAX_BITS:
        raise OverflowRiskError(
            f"the sum of {n} clients needs {bits} bits > {MAX_BITS}; raise gamma or lower the "
            f"clip norm"
        )
    return Encoding(
        gamma=gamma,
        bits=bits,
        sensitivity_int=clip_norm / gamma + math.sqrt(dim),
        noise_sigma2_int=noise_sigma2,
    )


def stochastic_round(
    x: NDArray[np.float64], gamma: float, random: RandomSource
) -> NDArray[np.int64]:
    """Unbiased stochastic rounding of x / gamma to integers (uniforms from ``random``)."""
    scaled = np.asarray(x, dtype=np.float64) / gamma
    if not np.all(np.isfinite(scaled)):
        raise ConfigError("inputs must be finite")
    low = np.floor(scaled)
    up = random.uniform(scaled.shape[0]) < (scaled - low)
    return low.astype(np.int64) + up.astype(np.int64)


def to_field(q: NDArray[np.int64], bits: int) -> NDArray[np.uint32]:
    """q mod 2^bits as uint32 (two's complement wrap, then mask)."""
    mask = np.uint32((1 << bits) - 1)
    return np.asarray(q, dtype=np.int64).astype(np.uint32) & mask


def from_field(v: NDArray[np.uint32], bits: int) -> NDArray[np.int64]:
    """Centred lift of Z_{2^bits} to [-2^(bits-1), 2^(bits-1) - 1]."""
    w = np.asarray(v, dtype=np.int64) & ((1 << bits) - 1)
    return np.where(w >= (1 << (bits - 1)), w - (1 << bits), w)


#: packed layout per width: little-endian low 16 bits, then the next 8 (w = 3); plain words
#: otherwise
_PACKED = {
    1: np.dtype([("lo", "u1")]),
    2: np.dtype([("lo", "<u2")]),
    3: np.dtype([("lo", "<u2"), ("hi", "u1")]),
    4: np.dtype([("lo", "<u4")]),
}


def pack(v: NDArray[np.uint32], bits: int) -> bytes:
    """Little-endian, ceil(bits/8) bytes per coordinate (1, 2, 3 or 4): the low bytes of each
    word."""
    w = bytes_per_coordinate(bits)
    words = np.asarray(v, dtype=np.uint32)
    out = np.empty(words.shape[0], dtype=_PACKED[w])
    out["lo"] = words  # truncating cast keeps the low 8/16/32 bits
    if w == 3:
        out["hi"] = words >> np.uint32(16)
    return out.tobytes()


def unpack(data: bytes, bits: int, dim: int) -> NDArray[np.uint32]:
    """Inverse of :func:`pack`; raises :class:`ConfigError` on a length mismatch."""
    acc = PackedSum(bits, dim)
    acc.add(data)
    return acc.value()


class PackedSum:
    """Running sum mod 2^32 of packed vectors, without unpacking each one: the byte planes of the
    packed layout are summed separately (as uint32) and combined once in :meth:`value`."""

    def __init__(self, bits: int, dim: int) -> None:
        self.bits, self.dim = bits, dim
        self.width = bytes_per_coordinate(bits)
        self._lo = np.zeros(dim, dtype=np.uint32)
        self._hi = np.zeros(dim, dtype=np.uint32) if self.width == 3 else None

    def add(self, data: bytes) -> None:
        if len(data) != self.width * self.dim:
            raise ConfigError(
                f"packed vector has {len(data)} bytes, expected {self.width * self.dim}"
            )
        rec = np.frombuffer(data, dtype=_PACKED[self.width])
        np.add(self._lo, rec["lo"], out=self._lo, casting="unsafe")
        if self._hi is not None:
            np.add(self._hi, rec["hi"], out=self._hi, casting="unsafe")

    def value(self) -> NDArray[np.uint32]:
        """The sum mod 2^32 (callers reduce mod 2^bits)."""
        if self._hi is None:
            return self._lo.copy()
        return self._lo + (self._hi << np.uint32(16))
