"""Exact discrete Gaussian sampler N_Z(0, sigma2), vectorised, randomness only from a RandomSource.

Algorithm: Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
(arXiv 2004.00010), Algorithm 3: with t = floor(sigma) + 1, propose Y from the discrete Laplace of
scale t (their Algorithm 2: U uniform in [0, t), accepted with probability exp(-U/t), V geometric
with P(V >= v) = exp(-v), X = U + t V, a sign bit B, (B = 1, X = 0) rejected) and accept Y with
probability exp(-(|Y| - sigma2/t)^2 / (2 sigma2)). ``sigma2`` is taken as the exact rational value
of the given float, so the output distribution is exactly N_Z(0, sigma2), with none of the
floating-point defects of inverse-CDF or Box-Muller samplers (Mironov, CCS 2012; Jin et al., "Are
We There Yet? Timing and Floating-Point Attacks on DP Systems", S&P 2022).

How the Bernoulli trials are decided (exact, and one 32-bit word per decision):

* The two independent acceptance coins of one attempt, exp(-U/t) and exp(-gamma(Y)), are one coin
  Bernoulli(exp(-E)) with E = U/t + (X - sigma2/t)^2 / (2 sigma2) (product of independent coins).
* Every coin "W < p" compares a uniform real W in [0, 1), read lazily from the keystream 32 bits at
  a time, with the exact p. For exp(-E), a float evaluation p~ with a *proved* relative error bound
  (``_FILTER_DELTA``, derivation at ``_accept_filter``; only IEEE-754 +, -, *, / and exactly
  rounded tables are used, no libm) settles the coin from W's first word unless that word lies
  within the error band around p (probability ~2^-25). For V, a table (``_tables``) holds
  floor(e^-v 2^32) exactly, so V follows from one word unless the word equals a table entry
  (probability ~2^-27). U uses one word by Lemire's multiply-and-reject method.
* The rare unsettled coins are decided exactly by :class:`_LazyUniform`: more bits of the same W
  against rational bounds on exp(-E) from ``decimal``'s correctly rounded exp at growing precision
  (exp(-E) is irrational for rational E > 0 by the Lindemann-Weierstrass theorem, so this ends
  with probability 1).
  Floats therefore only decide which coins are already settled, never a coin's outcome: the output
  distribution is exact, and the same given the same keystream (bit-identical across runs).

Cost at d = 1e6, sigma2 ~ 1e8: ~2.1 attempts per sample, ~12.1 keystream bytes per attempt, ~50
numpy passes per attempt over blocks that stay in the cache (benchmarks/secagg.py prints the time).
Very small variances (0 < sigma2 < 2^-60), where 1 / (2 sigma2) leaves the range of the error
analysis, use the original all-rational vectorisation of CKS Algorithms 1-3
(:func:`_discrete_gaussian_rational`: Bernoulli(num/den) trials on integer words); it is equally
exact, only slower.

Timing: the sampler is not constant-time (like the paper's reference code); noise is added on the
client before masking, so only the client's own machine observes it.
"""

from __future__ import annotations

import decimal
import functools
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from securefl.crypto.random import uint32_into
from securefl.errors import PrivacyError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = ["discrete_gaussian", "discrete_gaussian_pmf"]

_TWO64 = 1 << 64
#: largest sigma2 accepted: keeps t * |Y| and the Laplace scale comfortably inside int64.
MAX_SIGMA2 = 1e24


def _uniform_below(bound: NDArray[np.int64], random: RandomSource) -> NDArray[np.int64]:
    """Uniform integers in [0, bound[i]) for each i (bound[i] in [1, 2^62]), by exact rejection."""
    m = bound.shape[0]
    out = np.empty(m, dtype=np.int64)
    todo = np.arange(m)
    # bits >= bit_length(bound - 1): frexp's exponent of the rounded float is never smaller, and a
    # spare bit only costs a few more rejections (the result stays exactly uniform)
    bits = np.frexp((bound - 1).astype(np.float64))[1].astype(np.uint64)
    shift = (np.uint64(64) - bits)
    while todo.size:
        words = random.uint64(todo.size)
        # a shift by 64 is undefined in numpy: handle bound == 1 (bits == 0) separately
        sh = shift[todo]
        cand = np.where(sh >= np.uint64(64), np.uint64(0), words >> np.minimum(sh, np.uint64(63)))
        cand_i = cand.astype(np.int64)
        ok = cand_i < bound[todo]
        out[todo[ok]] = cand_i[ok]
        todo = todo[~ok]
    return out


def _bernoulli_small(num: NDArray[np.int64], den: NDArray[np.int64],
                     random: RandomSource) -> NDArray[np.bool_]:
    """Exact Bernoulli(num/den) with 0 <= num <= den <= 2^62 (int64 arrays)."""
    if num.size == 0:
        return np.zeros(0, dtype=bool)
    return _uniform_below(den, random) < num


def _bernoulli_big(num: NDArray[np.object_], den: NDArray[np.object_],
                   random: RandomSource) -> NDArray[np.bool_]:
    """Exact Bernoulli(num/den), 0 <= num < den, Python integers of any size (object arrays).

    A uniform real U in [0, 1) is drawn 64 bits at a time: with k the first word and
    P = floor(num * 2^64 / den), U < num/den is certain when k < P and impossible when k > P; when
    k == P (probability < 2^-64) the decision is the same question for the remainder with fresh
    bits (exact, because U's later bits are independent and uniform).
    """
    m = num.shape[0]
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    idx = np.arange(m)
    num_c = num
    while idx.size:
        scaled = num_c * _TWO64
        p_obj = scaled // den[idx]
        p = np.array(p_obj, dtype=np.uint64)  # < 2^64 because num < den
        k = random.uint64(idx.size)
        out[idx[k < p]] = True
        tie = k == p
        if not tie.any():
            break
        # remainder of num/den after the first 64 bits, for the undecided ones only
        num_c = (scaled[tie] - p_obj[tie] * den[idx[tie]])
        idx = idx[tie]
    return out


def _bernoulli_exp_neg_small_rational(num: NDArray[np.int64], den: NDArray[np.int64],
                                      random: RandomSource) -> NDArray[np.bool_]:
    """CKS Algorithm 1 for gamma = num/den in [0, 1] (int64, den * K stays far below 2^62)."""
    m = num.shape[0]
    k = np.ones(m, dtype=np.int64)
    live = np.arange(m)
    while live.size:
        a = _bernoulli_small(num[live], den[live] * k[live], random)
        k[live[a]] += 1
        live = live[a]
    result: NDArray[np.bool_] = (k % 2) == 1
    return result


def _bernoulli_exp_minus_one(m: int, random: RandomSource) -> NDArray[np.bool_]:
    """m independent Bernoulli(exp(-1)) (CKS Algorithm 1 with gamma = 1)."""
    return _bernoulli_exp_neg_small_rational(np.ones(m, dtype=np.int64), np.ones(m, dtype=np.int64),
                                             random)


def _bernoulli_exp_neg_big_rational(num: NDArray[np.object_], den: int,
                                    random: RandomSource) -> NDArray[np.bool_]:
    """CKS Algorithm 1 for gamma = num/den >= 0 with big integers (num: object array, den > 0).

    exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma))): independent trials, all must
    succeed.
    """
    m = num.shape[0]
    whole = np.array(num // den, dtype=object)
    frac = num - whole * den  # in [0, den)
    ok = np.ones(m, dtype=bool)
    # floor(gamma) trials of Bernoulli(exp(-1)); survivors shrink geometrically
    j = 0
    live = np.arange(m)
    while live.size:
        live = live[whole[live] > j]
        if not live.size:
            break
        b = _bernoulli_exp_minus_one(live.size, random)
        ok[live[~b]] = False
        live = live[b]
        j += 1
    # Bernoulli(exp(-frac/den)): K = 1; while Bernoulli(frac/(den*K)): K += 1; accept iff K odd
    live = np.flatnonzero(ok)
    k = np.ones(m, dtype=np.int64)
    while live.size:
        dens = k[live].astype(object) * den
        a = _bernoulli_big(frac[live], dens, random)
        k[live[a]] += 1
        live = live[a]
    result: NDArray[np.bool_] = ok & ((k % 2) == 1)
    return result


def _discrete_laplace(m: int, t: int, random: RandomSource) -> NDArray[np.int64]:
    """m samples of the discrete Laplace with scale t: P(y) ∝ exp(-|y|/t) (CKS Algorithm 2)."""
    out = np.empty(m, dtype=np.int64)
    todo = np.arange(m)
    while todo.size:
        c = todo.size
        u = _uniform_below(np.full(c, t, dtype=np.int64), random)
        d = _bernoulli_exp_neg_small_rational(u, np.full(c, t, dtype=np.int64), random)
        # V: number of successes of Bernoulli(exp(-1)) before the first failure (geometric)
        v = np.zeros(c, dtype=np.int64)
        live = np.flatnonzero(d)
        while live.size:
            a = _bernoulli_exp_minus_one(live.size, random)
            v[live[a]] += 1
            live = live[a]
        x = u + t * v
        b = (random.uint64(c) >> np.uint64(63)).astype(np.int64)  # Bernoulli(1/2)
        accept = d & ~((b == 1) & (x == 0))
        y = (1 - 2 * b) * x
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def _discrete_gaussian_rational(n: int, sigma2: float, random: RandomSource
                                ) -> NDArray[np.int64]:
    """CKS Algorithms 1-3 with every Bernoulli(num/den) trial decided on integer words (object
    arrays where the integers exceed int64): exact and slow (~1-3 s per 1e6 samples). Used for
    0 < sigma2 < ``_FAST_MIN_SIGMA2``; the tests also exercise its building blocks."""
    s2 = Fraction(sigma2)
    a, b = s2.numerator, s2.denominator  # sigma2 = a / b exactly
    t = math.isqrt(a // b) + 1  # floor(sigma) + 1 (Algorithm 3); t >= 1
    # acceptance: gamma = (|Y| - sigma2/t)^2 / (2 sigma2) = (b t |Y| - a)^2 / (2 a b t^2)
    den = 2 * a * b * t * t
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        # draw a few more than needed: CKS Algorithm 3 accepts with probability >= ~0.5
        y = _discrete_laplace(todo.size, t, random)
        w = np.abs(y).astype(object) * (b * t) - a
        c = _bernoulli_exp_neg_big_rational(w * w, den, random)
        out[todo[c]] = y[c]
        todo = todo[~c]
    return out


# --- exact comparisons of a lazily drawn uniform with exp(-q) ------------------------------------

#: decimal context for the exact fallback: exponents never overflow or underflow
_DEC = decimal.Context(rounding=decimal.ROUND_HALF_EVEN, Emin=decimal.MIN_EMIN,
                       Emax=decimal.MAX_EMAX)


def _exp_neg_bounds(q: Fraction, digits: int) -> tuple[Fraction, Fraction]:
    """Rationals lo < exp(-q) < hi for rational q >= 0, hi - lo <= 2 rho exp(-q)(1 + rho) with
    rho = 10^(1 - P) (q + 1), P >= digits significant decimal digits.

    decimal's divide and exp are correctly rounded (half an ulp, relative error h <= 10^(1-P)/2): the
    quotient is x = -q (1 + t1) and the result e = exp(x) (1 + t2), |t1|, |t2| <= h. With q h <= 0.01
    (P is raised to ensure it), |e / exp(-q) - 1| <= 1.01 h (q + 1) <= rho / 2, hence
    exp(-q) = e / (1 + theta), |theta| <= rho / 2, lies in [e (1 - rho), e (1 + rho)].
    """
    p = max(digits, len(str(math.ceil(q))) + 3)
    ctx = _DEC.copy()
    ctx.prec = p
    e = Fraction(ctx.exp(ctx.divide(decimal.Decimal(-q.numerator), decimal.Decimal(q.denominator))))
    rho = Fraction(10) ** (1 - p) * (q + 1)
    return e * (1 - rho), e * (1 + rho)


class _LazyUniform:
    """A uniform real W in [0, 1) of which the first ``bits`` bits (``prefix``) are known; more
    are drawn from ``random`` 32 at a time, only when a comparison needs them."""

    __slots__ = ("_bits", "_prefix", "_random")

    def __init__(self, prefix: int, bits: int, random: RandomSource) -> None:
        self._prefix, self._bits, self._random = prefix, bits, random

    def below_exp_neg(self, q: Fraction) -> bool:
        """W < exp(-q), exactly (q >= 0 rational)."""
        if q == 0:
            return True  # exp(0) = 1 > W
        digits = 40
        while True:
            lo, hi = _exp_neg_bounds(q, digits)
            while True:
                scale = 1 << self._bits
                if (self._prefix + 1) <= lo * scale:  # W < (prefix + 1) / 2^bits <= lo
                    return True
                if self._prefix >= hi * scale:  # W >= prefix / 2^bits >= hi
                    return False
                if (hi - lo) * scale > 1:  # the bounds are the coarser: refine them
                    break
                self._prefix = (self._prefix << 32) | int(self._random.uint32(1)[0])
                self._bits += 32
            digits *= 2


# --- the vectorised sampler ---------------------------------------------------------------------

#: below this variance the float filter's error analysis does not apply (see the module docstring)
_FAST_MIN_SIGMA2 = 2.0**-60
#: attempts per batch: the temporaries of one batch stay in the L2 cache
_BATCH = 1 << 15
#: the float evaluation of exp(-E) covers E < _E_CAP; above it exp(-E) < 2^-69 < 2^-32 (see filter)
_E_CAP = 48.0
#: exp(-E) = exp(-k / 64) * exp(-r), 0 <= r < 1/64; tables have _E_CAP * 64 + 1 entries
_E_STEPS = 64
#: relative error the filter allows for; the proved bound is 2^-28.4 (derivation at _accept_filter)
_FILTER_DELTA = 2.0**-26
#: 2^32 (1 -+ delta): exactly representable (2^32 -+ 2^6)
_LO_SCALE = 2.0**32 * (1 - _FILTER_DELTA)
_HI_SCALE = 2.0**32 * (1 + _FILTER_DELTA)
#: V is read from one word for V <= _V_MAX (e^-22 2^32 ~ 1.2; e^-23 2^32 < 1)
_V_MAX = 22


@functools.cache
def _tables() -> tuple[NDArray[np.float64], NDArray[np.uint32]]:
    """(exp(-k / 64) correctly rounded to double for k = 0 .. 64 * _E_CAP; T_v = floor(e^-v 2^32)
    for v = 1 .. _V_MAX at index v, then a 0 sentinel; index 0 is unused). Built on first use
    (~10 ms) from decimal at 40 digits: a 40-digit product carries relative error < 2e-39, so its
    conversion to double (correctly rounded) has relative error <= 2^-53 (1 + 2^-60); each floor is
    checked to be determined by the certified bounds."""
    ctx = _DEC.copy()
    ctx.prec = 40
    whole = [ctx.exp(decimal.Decimal(-j)) for j in range(int(_E_CAP) + 1)]
    part = [ctx.exp(ctx.divide(decimal.Decimal(-i), decimal.Decimal(_E_STEPS)))
            for i in range(_E_STEPS)]
    size = int(_E_CAP) * _E_STEPS + 1
    exp_tab = np.array([float(ctx.multiply(whole[k // _E_STEPS], part[k % _E_STEPS]))
                        for k in range(size)], dtype=np.float64)
    thresholds = [0xFFFFFFFF]
    for v in range(1, _V_MAX + 1):
        lo, hi = _exp_neg_bounds(Fraction(v), 40)
        floor_lo, floor_hi = math.floor(lo * 2**32), math.floor(hi * 2**32)
        if floor_lo != floor_hi:  # pragma: no cover - 40 digits leave ~100 bits to spare
            raise PrivacyError("internal: exp(-v) table not determined at 40 digits")
        thresholds.append(floor_lo)
    thresholds.append(0)
    return exp_tab, np.array(thresholds, dtype=np.uint32)


@dataclass(frozen=True)
class _Params:
    """Exact and float constants of one sampler call; floats are those of the filter analysis."""

    sigma2: Fraction  # exactly the caller's float
    t: int  # floor(sigma) + 1
    s_f: float  # fl(sigma2 / t)
    inv_2s2: float  # fl(1 / (2 sigma2))
    inv_t: float  # fl(1 / t)
    lemire_floor: int  # 2^32 mod t (Lemire's rejection threshold) when t <= 2^32

    @classmethod
    def of(cls, sigma2: float) -> _Params:
        s2 = Fraction(sigma2)
        t = math.isqrt(math.floor(s2)) + 1  # floor(sqrt(floor(s2))) = floor(sigma)
        return cls(sigma2=s2, t=t, s_f=sigma2 / t, inv_2s2=1.0 / (2.0 * sigma2), inv_t=1.0 / t,
                   lemire_floor=(1 << 32) % t if t <= 1 << 32 else 0)

    def exponent(self, u: int, x: int) -> Fraction:
        """E = U / t + (X - sigma2 / t)^2 / (2 sigma2), exactly."""
        return Fraction(u, self.t) + (x - self.sigma2 / self.t) ** 2 / (2 * self.sigma2)


class _Work:
    """Buffers for batches of up to ``size`` attempts, allocated once per call and reused: fresh
    temporaries of this size would be returned to the OS and page-faulted back in every batch."""

    def __init__(self, size: int) -> None:
        self.words = np.empty(3 * size, dtype=np.uint32)
        self.prod = np.empty(size, dtype=np.uint64)
        self.zeros = np.zeros(size, dtype=np.int64)
        self.x = np.empty(size, dtype=np.int64)
        self.i64 = np.empty(size, dtype=np.int64)
        self.k = np.empty(size, dtype=np.intp)
        self.low = np.empty(size, dtype=np.uint32)
        self.f = [np.empty(size, dtype=np.float64) for _ in range(3)]
        self.b = [np.empty(size, dtype=bool) for _ in range(3)]


def _add_geometric(x: NDArray[np.int64], t: int, w: NDArray[np.uint32], table: NDArray[np.uint32],
                   flag: NDArray[np.bool_]) -> NDArray[np.intp]:
    """x += t V in place, V = #{v >= 1 : W < e^-v} read from W's first word w; returns the
    indices where that word does not settle V (their x is not to be used). ``flag`` is scratch.

    With T_v = floor(e^-v 2^32) (e^-v 2^32 is irrational, so T_v < e^-v 2^32 < T_v + 1):
    w < T_v implies W < (w + 1) 2^-32 <= T_v 2^-32 < e^-v, and w > T_v implies W >= w 2^-32 >
    e^-v; only w == T_v leaves "V >= v" open. T is decreasing, so V is the number of v with
    w < T_v, and the only boundary that can tie is T_(V+1); w == 0 (V >= _V_MAX: past the table)
    meets the 0 sentinel T_(_V_MAX + 1).
    """
    open_: list[NDArray[np.intp]] = []
    first = table[1]
    np.equal(w, first, out=flag)
    if flag.any():
        open_.append(np.flatnonzero(flag))
    np.less(w, first, out=flag)
    live = np.flatnonzero(flag)
    step = 1
    while live.size:
        x[live] += t
        step += 1
        wl = w[live]
        bound = table[step]
        tie = wl == bound
        if tie.any():
            open_.append(np.compress(tie, live))
        if step > _V_MAX:  # only w == 0 is still live; it met the sentinel above
            break
        live = np.compress(wl < bound, live)
    return np.concatenate(open_) if open_ else np.zeros(0, dtype=np.intp)


#: exp(-r) with r = f / 64, f in [0, 1): 1 - r + r^2/2 - r^3/6 = ((_C2 - _C3 f) f - _C1) f + 1
_C1 = 1.0 / _E_STEPS
_C2 = 1.0 / (2 * _E_STEPS**2)
_C3 = 1.0 / (6 * _E_STEPS**3)


def _accept_filter(p: _Params, u: NDArray[np.int64], x: NDArray[np.int64],
                   w: NDArray[np.uint32], exp_tab: NDArray[np.float64], work: _Work | None = None
                   ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(surely W < exp(-E), surely W >= exp(-E)) from W's first word w; neither = undecided.

    Error analysis (u = 2^-53, every operation an IEEE-754 double operation; X, U < 2^53 exact):
    1. E~ = fl(fl(U * fl(1/t)) + fl(fl(d * d) * fl(1/(2 s2)))), d = fl(X - fl(s2 / t)). With
       s = s2 / t <= sigma (t > sigma when sigma >= 1, else t = 1 and s = s2 < sigma),
       |fl(d) - (X - s)| <= 1.01 u (|X - s| + sigma); with D = |X - s| / sigma and g = D^2 / 2,
       |g~ - g| <= u (6.4 g + 0.6) and |E~ - E| <= 8 u (E + 1) <= 2^-49.9 (E~ + 1).
    2. f = 64 min(E~, _E_CAP) (exact), k = floor(f), f - k exact (Sterbenz), r = (f - k) / 64 in
       [0, 1/64) and E~ = k / 64 + r. exp(-r) ~ 1 - r + r^2/2 - r^3/6 has truncation error
       <= r^4 / 24 < 2^-28.58, relative to exp(-r) >= e^(-1/64): <= 2^-28.55; the Horner roundings
       (with the rounded constant _C3) and the correctly rounded table entry add < 12 u.
    3. So p~ = exp(-E)(1 + theta), |theta| <= 2^-28.55 + 12 u + 2^-38 (from 1. with E~ < 48)
       <= 2^-28.4 < _FILTER_DELTA / 5; the products p~ 2^32 (1 -+ delta) round by <= u more.
    Accept: w + 1 <= p~ 2^32 (1 - delta) implies (w + 1) 2^-32 <= exp(-E), so W < exp(-E).
    Reject: w >= p~ 2^32 (1 + delta) implies W >= w 2^-32 >= exp(-E).
    Capped E~ >= _E_CAP: p~ ~ e^-48 (1 + theta) is an upper bound of exp(-E) there, so "reject"
    stays valid and "accept" cannot fire (w + 1 >= 1 > 2^32 e^-48); w == 0 stays open.
    """
    m = x.shape[0]
    wk = work if work is not None else _Work(m)
    e, g, h = (f[:m] for f in wk.f)
    k = wk.k[:m]
    yes, no = wk.b[0][:m], wk.b[1][:m]
    np.copyto(e, x, casting="unsafe")  # exact: X < 2^53
    e -= p.s_f
    np.multiply(e, e, out=e)
    e *= p.inv_2s2
    if p.t > 1:
        np.copyto(g, u, casting="unsafe")
        g *= p.inv_t
        e += g
    np.minimum(e, _E_CAP, out=e)
    e *= float(_E_STEPS)  # f
    np.floor(e, out=g)
    np.copyto(k, g, casting="unsafe")  # 0 <= k <= 64 * _E_CAP
    e -= g  # f - k, exact
    np.multiply(e, -_C3, out=h)
    h += _C2
    h *= e
    h -= _C1
    h *= e
    h += 1.0
    # mode="clip" is a no-op for these k; were one too large, the capped entry is an upper bound
    np.take(exp_tab, k, out=g, mode="clip")
    h *= g  # p~
    np.copyto(g, w)  # the words as doubles (exact)
    np.multiply(h, _LO_SCALE, out=e)
    e -= 1.0  # exact for e >= 1; below 1 nothing is accepted either way
    np.less_equal(g, e, out=yes)
    h *= _HI_SCALE
    np.greater_equal(g, h, out=no)
    return yes, no


def _attempts(m: int, p: _Params, random: RandomSource, work: _Work, out: NDArray[np.int64],
              *, exact: bool = False) -> tuple[int, int]:
    """``m`` attempts of CKS Algorithm 3 (module docstring); writes the first ``len(out)`` accepted
    Y, in attempt order, to ``out`` and returns (how many were written, how many were accepted).

    Keystream order per batch: U words (t > 1; when t > 2^32, 64-bit words and then redraws for the
    values >= t), V words, W words, sign bytes, then the extra words of undecided coins, attempt by
    attempt. ``exact=True`` decides every coin on the exact path
    (tests).
    """
    exp_tab, table = _tables()
    t = p.t
    bad_u = np.zeros(0, dtype=np.intp)
    scratch = work.b[2][:m]
    if 1 < t <= 1 << 32:
        words = work.words[: 3 * m]
        uint32_into(random, words)
        w_u, w_v, w_a = words[:m], words[m : 2 * m], words[2 * m :]
        # Lemire, "Fast random integer generation in an interval", ACM TOMACS 2019: U = (w t) >> 32
        # is exactly uniform on [0, t) once products whose low word is < 2^32 mod t are rejected
        prod = work.prod[:m]
        np.copyto(prod, w_u)
        prod *= np.uint64(t)
        if p.lemire_floor:
            low = work.low[:m]
            np.copyto(low, prod, casting="unsafe")
            np.less(low, np.uint32(p.lemire_floor), out=scratch)
            if scratch.any():
                bad_u = np.flatnonzero(scratch)
        np.right_shift(prod, np.uint64(32), out=prod)
        u = prod.view(np.int64)
    else:
        if t == 1:
            u = work.zeros[:m]
        else:  # t > 2^32: U = the top bits(t - 1) bits of a 64-bit word; values >= t are drawn
            # again (more words, in attempt order), so every attempt gets a uniform U in [0, t)
            prod = work.prod[:m]
            if sys.byteorder == "little":  # the same words as random.uint64(m), in place
                uint32_into(random, prod.view(np.uint32))
            else:  # pragma: no cover
                prod[...] = random.uint64(m)
            shift = np.uint64(64 - (t - 1).bit_length())
            np.right_shift(prod, shift, out=prod)
            u = prod.view(np.int64)
            redo = np.flatnonzero(u >= t)
            while redo.size:
                u[redo] = (random.uint64(redo.size) >> shift).view(np.int64)
                redo = redo[u[redo] >= t]
        words = work.words[: 2 * m]
        uint32_into(random, words)
        w_v, w_a = words[:m], words[m:]
    neg = np.unpackbits(np.frombuffer(random.random_bytes((m + 7) // 8), dtype=np.uint8),
                        count=m).view(bool)
    x = work.x[:m]
    np.copyto(x, u)
    open_v = _add_geometric(x, t, w_v, table, scratch)
    if exact:
        yes = work.b[0][:m]
        yes[...] = False
        undecided = work.b[2][:m]
        undecided[...] = True
    else:
        yes, no = _accept_filter(p, u, x, w_a, exp_tab, work)
        undecided = np.logical_or(yes, no, out=work.b[2][:m])
        np.logical_not(undecided, out=undecided)
    zero = np.flatnonzero(x == 0)
    zero = zero[neg[zero]]  # (B = 1, X = 0): rejected (CKS Algorithm 2)
    for drop in (zero, bad_u):
        yes[drop] = False
        undecided[drop] = False
    yes[open_v] = False
    undecided[open_v] = True
    if bad_u.size:
        undecided[bad_u] = False
    if undecided.any():
        _decide_exactly(np.flatnonzero(undecided), p, u, x, w_v, w_a, neg, open_v, yes, random)
    # x = -x where B = 1: (x ^ -1) + 1, as (x ^ mask) - mask with mask = -B
    mask = work.i64[:m]
    np.copyto(mask, neg.view(np.uint8))
    np.negative(mask, out=mask)
    np.bitwise_xor(x, mask, out=x)
    x -= mask
    accepted = int(np.count_nonzero(yes))
    if accepted <= out.shape[0]:
        np.compress(yes, x, out=out[:accepted])
        return accepted, accepted
    out[...] = np.compress(yes, x)[: out.shape[0]]
    return out.shape[0], accepted


def _decide_exactly(idx: NDArray[np.intp], p: _Params, u: NDArray[np.int64],
                    x: NDArray[np.int64], w_v: NDArray[np.uint32], w_a: NDArray[np.uint32],
                    neg: NDArray[np.bool_], open_v: NDArray[np.intp], yes: NDArray[np.bool_],
                    random: RandomSource) -> None:
    """The coins the first words left open, in attempt order, on the exact path: V from more bits
    of its W (when open), then (B = 1, X = 0), then W < exp(-E) with E exact. Updates ``x`` and
    ``yes`` in place."""
    t = p.t
    v_open = set(open_v.tolist())
    for i in idx.tolist():
        ui = int(u[i])
        if i in v_open:
            lazy = _LazyUniform(int(w_v[i]), 32, random)
            vi = 0
            while lazy.below_exp_neg(Fraction(vi + 1)):
                vi += 1
            x[i] = ui + t * vi
        xi = int(x[i])
        if neg[i] and xi == 0:
            continue
        yes[i] = _LazyUniform(int(w_a[i]), 32, random).below_exp_neg(p.exponent(ui, xi))


def discrete_gaussian(n: int, sigma2: float, random: RandomSource) -> NDArray[np.int64]:
    """``n`` independent samples of the discrete Gaussian N_Z(0, sigma2) on the integers.

    P(x) ∝ exp(-x^2 / (2 sigma2)) for every integer x; ``sigma2`` is the variance parameter in the
    caller's integer units (the exact rational value of the float is used). Exact (CKS 2020,
    Algorithm 3, decided as in the module docstring), all randomness from ``random``, and
    deterministic given its keystream.
    """
    if not isinstance(n, int | np.integer) or n < 0:
        raise PrivacyError(f"n must be a non-negative integer, got {n!r}")
    if not math.isfinite(sigma2) or sigma2 < 0:
        raise PrivacyError(f"sigma2 must be finite and >= 0, got {sigma2!r}")
    if sigma2 > MAX_SIGMA2:
        raise PrivacyError(f"sigma2 = {sigma2:g} exceeds the supported maximum {MAX_SIGMA2:g}")
    n = int(n)
    if n == 0 or sigma2 == 0:
        return np.zeros(n, dtype=np.int64)
    if sigma2 < _FAST_MIN_SIGMA2:
        return _discrete_gaussian_rational(n, sigma2, random)
    return _sample(n, _Params.of(float(sigma2)), random)


def _sample(n: int, p: _Params, random: RandomSource, *, exact: bool = False
            ) -> NDArray[np.int64]:
    out = np.empty(n, dtype=np.int64)
    work = _Work(min(_BATCH, 6 * n + 64))  # >= every batch size m below
    filled, tried, accepted = 0, 0, 0
    while filled < n:
        need = n - filled
        # acceptance is ~0.48 for large sigma, ~0.24 for sigma2 ~ 0.3: size batches on the rate
        # seen so far, so that n is usually reached in one pass over the batches
        rate = max(0.2, accepted / tried) if tried else 0.45
        m = min(_BATCH, int(need / rate * 1.03) + 32)
        wrote, acc = _attempts(m, p, random, work, out[filled:], exact=exact)
        tried += m
        accepted += acc
        filled += wrote
    return out


def discrete_gaussian_pmf(xs: NDArray[np.int64], sigma2: float, *, radius: int | None = None
                          ) -> NDArray[np.float64]:
    """Analytic pmf of N_Z(0, sigma2) at ``xs`` (normaliser summed over |x| <= radius)."""
    if radius is None:
        radius = int(20 * math.sqrt(sigma2)) + 20
    support = np.arange(-radius, radius + 1, dtype=np.float64)
    z = float(np.exp(-(support**2) / (2 * sigma2)).sum())
    xf = xs.astype(np.float64)
    pmf: NDArray[np.float64] = np.exp(-(xf**2) / (2 * sigma2)) / z
    return pmf
