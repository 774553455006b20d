"""Exact discrete Gaussian sampler N_Z(0, sigma2), vectorised, randomness only from a RandomSource.

Algorithm: Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
(arXiv 2004.00010), Algorithm 1 (Bernoulli(exp(-gamma)) for rational gamma), Algorithm 2 (discrete
Laplace with integer scale t) and Algorithm 3 (discrete Gaussian by rejection from the discrete
Laplace with t = floor(sigma) + 1). Every probability is an exact rational number (``sigma2`` is
taken as the exact rational value of the given float); a Bernoulli(p) trial is decided by comparing
uniform random words with exact integers, so the output distribution is exactly N_Z(0, sigma2),
with none of the floating-point defects of inverse-CDF or Box-Muller samplers (Mironov, CCS 2012;
Jin et al., "Are We There Yet? Timing and Floating-Point Attacks on DP Systems", S&P 2022).

Vectorisation: the per-sample loops of the paper become loops over *batches*: each iteration draws
one trial for every still-undecided sample, with numpy integer arithmetic (int64 where the numbers
fit, Python integers in object arrays where they do not, e.g. the acceptance test's denominator
2 * sigma2 * t^2 ~ 1e32 for sigma2 = 1e16). Rejected samples are redrawn in the next batch.

Timing: the sampler is not constant-time (like the paper's reference code); noise is added on the
client before masking, so only the client's own machine observes it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

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


def discrete_gaussian(n: int, sigma2: float, random: RandomSource) -> NDArray[np.int64]:
    """``n`` independent samples of the discrete Gaussian N_Z(0, sigma2) on the integers.

    P(x) ∝ exp(-x^2 / (2 sigma2)) for every integer x; ``sigma2`` is the variance parameter in the
    caller's integer units (the exact rational value of the float is used). Exact (CKS 2020,
    Algorithm 3), all randomness from ``random``.
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
