"""Fixed-point encoding of clipped float updates into Z_{2^b}, with unbiased stochastic rounding.

Encoding (value x in input units, step gamma > 0, s = x / gamma the float quotient):
  q = floor(s) + [U < frac(s)],  U ~ U[0, 1) from the injected source,
so E[q] = s exactly (unbiased), Var[q] = frac(s) (1 - frac(s)) and |q - s| < 1 per coordinate
(the stochastic rounding of Gupta et al., "Deep Learning with Limited Numerical Precision", ICML
2015, as used for SecAgg inputs by Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021).
U is read from the keystream as integers, never as floats: its first 32 bits are one uint32 word u,
and frac(s) * 2^32 = P + R with P = floor(frac(s) * 2^32) an integer and R in [0, 1). Then
U < frac(s) iff u < P, or u == P and (the rest of U) < R; the tie (probability 2^-32 per coordinate)
is settled with further words, exactly, so P(q = floor(s) + 1) is frac(s) itself, not a 32-bit
approximation of it. In int64, with z = floor(s * 2^32) (s * 2^32 is exact, one division by
gamma * 2^-32): P = z mod 2^32 and q = (z + 2^32 - 1 - u) >> 32, whose low word before the shift is
all ones exactly at a tie. Hence s must lie in [-2^31, 2^31 - 1], the centred range of Z_{2^32}.

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
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from securefl.crypto.random import uint32_into
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
    "round_to_field",
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


#: stochastic rounding: fraction bits compared per uint32 draw
_FRAC_BITS = 32
_TWO_FRAC = 2.0**_FRAC_BITS
#: s = x / gamma must lie in [-2^31, 2^31 - 1] (the centred range of Z_2^32), i.e. a = s 2^32 in
#: [-2^63, 2^63 - 2^32]: floor(a) + 2^32 - 1 then fits int64
_A_MIN = -(2.0**63)
_A_MAX = 2.0**63 - 2.0**32
#: |a| < 2^51: floor(a) + 1.5 * 2^52 is exact and its bits minus those of 1.5 * 2^52 are floor(a)
_MAGIC = 1.5 * 2.0**52
_MAGIC_BITS = int(np.array(_MAGIC).view(np.int64))
_MAGIC_RANGE = 2.0**51
#: coordinates per block: the temporaries of one block stay in the L2 cache
_BLOCK = 1 << 15

_Emit = Callable[[int, "NDArray[np.int64]", float, float], None]


def _round_blocks(x: NDArray[np.float64], gamma: float, random: RandomSource, emit: _Emit
                  ) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """The stochastic-rounding kernel, block by block (module docstring).

    For each block, ``emit(start, q, s_min, s_max)`` receives q = floor(s) + [u < P] in a reused
    int64 buffer, and the least and greatest s of the block. Returns the indices where the exact tie
    break (u == P, then more words) rounded *up*, with their floor(s): the value emitted there was
    floor(s) and must be raised by one.
    """
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ConfigError("gamma must be a positive finite number")
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 1:
        raise ConfigError("stochastic rounding takes a 1-D vector")
    n = xs.shape[0]
    # a = s * 2^32 in one correctly rounded division by gamma * 2^-32 when that divisor is exact
    # and normal (then a == 2^32 * fl(x / gamma) unless x / gamma is subnormal); else two steps
    div = gamma / _TWO_FRAC
    one_step = div * _TWO_FRAC == gamma and div >= sys.float_info.min
    # dividing by a power of two is multiplying by its exact reciprocal (same double, faster)
    inv = 1.0 / div if one_step and math.frexp(div)[0] == 0.5 else 0.0
    scaled = np.empty(min(n, _BLOCK), dtype=np.float64)
    zbuf = np.empty(min(n, _BLOCK), dtype=np.int64)
    lowbuf = np.empty(min(n, _BLOCK), dtype=np.uint32)
    ubuf = np.empty(min(n, _BLOCK), dtype=np.uint32)
    tie_idx: list[NDArray[np.intp]] = []
    tie_floor: list[NDArray[np.int64]] = []
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        m = stop - start
        a, z = scaled[:m], zbuf[:m]
        if inv:
            np.multiply(xs[start:stop], inv, out=a)
        elif one_step:
            np.divide(xs[start:stop], div, out=a)
        else:
            np.divide(xs[start:stop], gamma, out=a)
            a *= _TWO_FRAC
        lo, hi = float(a.min()), float(a.max())  # NaN propagates through min / max
        if not (lo >= _A_MIN and hi <= _A_MAX):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ConfigError("inputs must be finite")
            raise OverflowRiskError(
                f"x / gamma reaches {(hi if hi > _A_MAX else lo) / _TWO_FRAC:.4g}, outside "
                f"[-2^{MAX_BITS - 1}, 2^{MAX_BITS - 1} - 1]: no {MAX_BITS}-bit field holds it; "
                "raise gamma"
            )
        # z = floor(a), exactly: z >> 32 = floor(s) and z mod 2^32 = P
        np.floor(a, out=a)
        if lo > -_MAGIC_RANGE and hi < _MAGIC_RANGE:  # exact float-bits conversion (see _MAGIC)
            a += _MAGIC
            np.subtract(a.view(np.int64), _MAGIC_BITS, out=z)
        else:
            z[...] = a  # float -> int64 conversion, exact for these integers
        # q = floor(s) + [u < P] = (z + 2^32 - 1 - u) >> 32, and the low word of z + 2^32 - 1 - u
        # is all ones exactly when u == P (a tie)
        u = ubuf[:m]
        uint32_into(random, u)
        np.invert(u, out=u)  # 2^32 - 1 - u
        np.add(z, u, out=z)
        low = lowbuf[:m]
        np.copyto(low, z, casting="unsafe")  # the low word (two's complement)
        tie = low == np.uint32(0xFFFFFFFF)
        np.right_shift(z, _FRAC_BITS, out=z)
        if tie.any():
            where = np.flatnonzero(tie)
            tie_idx.append(start + where)
            tie_floor.append(z[where].copy())  # at a tie q is floor(s)
        emit(start, z, lo / _TWO_FRAC, hi / _TWO_FRAC)
    idx = np.concatenate(tie_idx) if tie_idx else np.zeros(0, dtype=np.intp)
    floors = np.concatenate(tie_floor) if tie_floor else np.zeros(0, dtype=np.int64)
    ups = np.array([_tie_rounds_up(float(xs[i]), gamma, div, one_step, random) for i in idx],
                   dtype=bool)
    return idx[ups], floors[ups]


def _tie_rounds_up(x: float, gamma: float, div: float, one_step: bool,
                   random: RandomSource) -> bool:
    """U < frac(s) given that U's first 32 bits equal P = floor(frac(s) * 2^32): the remaining
    bits of U, drawn 32 at a time, against the exact remainder frac(a) of a = s * 2^32 (the same
    double as in the kernel). Terminates: a double has finitely many fraction bits; once the
    remainder is 0, U >= frac(s)."""
    a = x / div if one_step else (x / gamma) * _TWO_FRAC
    rem = Fraction(a) - math.floor(a)
    while rem:
        rem *= 1 << _FRAC_BITS
        p = math.floor(rem)
        u = int(random.uint32(1)[0])
        if u != p:
            return u < p
        rem -= p
    return False


def stochastic_round(
    x: NDArray[np.float64], gamma: float, random: RandomSource
) -> NDArray[np.int64]:
    """Unbiased stochastic rounding of s = x / gamma to integers: floor(s) + 1 with probability
    exactly frac(s), else floor(s) (module docstring). One uint32 word per coordinate from
    ``random``, in order (plus more only at a tie, probability 2^-32 per coordinate).
    ConfigError if x is not finite, OverflowRiskError if some s is outside [-2^31, 2^31 - 1]."""
    out = np.empty(np.shape(x)[0] if np.ndim(x) == 1 else 0, dtype=np.int64)

    def emit(start: int, q: NDArray[np.int64], s_min: float, s_max: float) -> None:
        out[start : start + q.shape[0]] = q

    up, _ = _round_blocks(x, gamma, random, emit)
    out[up] += 1
    return out


def round_to_field(x: NDArray[np.float64], gamma: float, bits: int, bound: int,
                   random: RandomSource, noise: NDArray[np.int64] | None = None
                   ) -> NDArray[np.uint32]:
    """``to_field(stochastic_round(x, gamma, random) + noise, bits)`` with the same draws, checking
    |q| <= ``bound`` per coordinate before the noise is added (OverflowRiskError otherwise), in
    one blocked pass without the full-length float and int64 intermediates."""
    xs = np.asarray(x, dtype=np.float64)
    n = xs.shape[0] if xs.ndim == 1 else 0
    if noise is not None and noise.shape != (n,):
        raise ConfigError(f"noise has shape {noise.shape}, expected ({n},)")
    field = np.empty(n, dtype=np.uint32)
    mask = np.uint32((1 << bits) - 1)

    def emit(start: int, q: NDArray[np.int64], s_min: float, s_max: float) -> None:
        stop = start + q.shape[0]
        # q is floor(s) or ceil(s), so -bound <= s <= bound (bound an integer) already implies
        # |q| <= bound; only a block reaching past it needs the check on q itself
        if (s_min < -bound or s_max > bound) and (int(q.min()) < -bound or int(q.max()) > bound):
            raise OverflowRiskError(f"a rounded coordinate exceeds the bound {bound}")
        if noise is not None:
            q += noise[start:stop]
        out = field[start:stop]
        out[...] = q  # int64 -> uint32 keeps the low word: q mod 2^32
        out &= mask

    up, floors = _round_blocks(xs, gamma, random, emit)
    if floors.size and int(floors.max()) + 1 > bound:
        raise OverflowRiskError(f"a rounded coordinate exceeds the bound {bound}")
    field[up] = (field[up] + np.uint32(1)) & mask  # wraps mod 2^bits like the cast and the mask
    return field


def to_field(q: NDArray[np.int64], bits: int) -> NDArray[np.uint32]:
    """q mod 2^bits as uint32 (two's complement wrap, then mask)."""
    out = np.asarray(q, dtype=np.int64).astype(np.uint32)
    out &= np.uint32((1 << bits) - 1)
    return out


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
    if w == 3:  # byte 2 of each little-endian word, read in place (no shifted temporary)
        out["hi"] = words.astype("<u4", copy=False).view(np.uint8)[2::4]
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
