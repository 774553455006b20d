"""The vectorised exact discrete Gaussian sampler: distribution, the float filter's soundness, and
the exact path that settles the coins the filter leaves open.

Statistical tests use fixed seeds and state their false-failure probability (the chance that a
correct sampler fails for a seed drawn at random). Reference probabilities are computed here, from
exp(-x^2 / (2 sigma2)) with Python's decimal module, independently of securefl.dp.discrete.
"""

from __future__ import annotations

import decimal
import itertools
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.dp import discrete
from securefl.dp.discrete import discrete_gaussian

ALPHA = 1e-6
CTX = decimal.Context(prec=60)


def _rng(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x09" * 32), label)


def _exp_dec(x: Fraction) -> Decimal:
    return CTX.exp(CTX.divide(Decimal(x.numerator), Decimal(x.denominator)))


def _pmf(support: range, sigma2: float) -> dict[int, float]:
    """P(X = k) for k in ``support``, normalised over |k| <= 60 sigma + 60 (mass outside < 1e-700)."""
    s2 = Fraction(sigma2)
    radius = int(60 * math.sqrt(sigma2)) + 60
    weight = {k: _exp_dec(-Fraction(k * k) / (2 * s2)) for k in range(-radius, radius + 1)}
    z = CTX.add(Decimal(0), sum(weight.values(), Decimal(0)))
    return {k: float(weight[k] / z) for k in support}


def _chi_square(x: np.ndarray, probs: list[float], cuts: list[int]) -> float:
    """p-value of Pearson's chi-square for the counts of x in (-inf, c_1), [c_1, c_2), ...,
    [c_m, inf) against ``probs`` (one more entry than ``cuts``)."""
    counts = np.bincount(np.searchsorted(np.array(cuts), x, side="right"), minlength=len(probs))
    expected = np.array(probs) * len(x)
    assert expected.min() >= 20  # the chi-square approximation is sound
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(stat, len(probs) - 1))


def _binned(pmf: dict[int, float], cuts: list[int]) -> list[float]:
    """Bin probabilities for the bins of :func:`_chi_square` from a pmf over a wide support."""
    edges = [min(pmf), *cuts, max(pmf) + 1]
    return [sum(pmf[k] for k in range(a, b)) for a, b in itertools.pairwise(edges)]


SMALL = [0.3, 1.5, 7.5, 40.0, 1234.5]


@pytest.mark.parametrize("sigma2", SMALL)
def test_chi_square_against_exact_pmf(sigma2: float) -> None:
    """n = 300,000 samples, one bin per integer where the expected count is >= 20, tails merged;
    false-failure probability ALPHA / len(SMALL) per sigma (ALPHA in all). Covers t = 1 (no U
    draw), Lemire's U with rejections (t = 2, 3, 7, 36), and every V level that occurs."""
    n = 300_000
    x = discrete_gaussian(n, sigma2, _rng(f"chi/{sigma2}"))
    radius = int(12 * math.sqrt(sigma2)) + 12
    pmf = _pmf(range(-radius, radius + 1), sigma2)
    lo = min(k for k in pmf if pmf[k] * n >= 20)
    hi = max(k for k in pmf if pmf[k] * n >= 20)
    step = 8 if sigma2 > 100 else 1  # sigma2 = 1234.5: ~240 integers, in runs of 8
    cuts = list(range(lo + 1, hi + 1, step))  # tails (-inf, lo] and [hi, inf) in the end bins
    p = _chi_square(x, _binned(pmf, cuts), cuts)
    assert p > ALPHA / len(SMALL), (sigma2, p)


@pytest.mark.parametrize("sigma2", [8.589934592e7, 1e20])
def test_large_sigma_bins_against_the_normal_limit(sigma2: float) -> None:
    """For sigma ~ 1e4 and above, the probability of the integers in [a, b] is the normal
    probability of [a - 1/2, b + 1/2] up to a relative 1e-8 (midpoint rule on a function with
    |f''/f| <= 4 / sigma^2 over the bulk of the mass, plus Poisson summation's
    exp(-2 pi^2 sigma^2) for the normaliser): far below the test's statistical resolution (~1%).
    20 equal-probability bins, n = 200,000; false-failure probability ALPHA / 2 per sigma.
    sigma2 = 2^32 / 50 is a SecAgg client's share (z = 1, C / gamma = 2^16, 50 survivors);
    sigma2 = 1e20 has t = 1e10 + 1 > 2^32, so U comes from the 64-bit rejection sampler."""
    n = 200_000
    x = discrete_gaussian(n, sigma2, _rng(f"big/{sigma2}"))
    sigma = math.sqrt(sigma2)
    cuts = [math.floor(stats.norm.ppf(q / 20) * sigma) for q in range(1, 20)]
    # bin [c_i, c_(i+1)) holds the integers c_i .. c_(i+1) - 1: normal mass of [c_i - 1/2, c_(i+1) - 1/2)
    cdf = [0.0, *(stats.norm.cdf((c - 0.5) / sigma) for c in cuts), 1.0]
    probs = [b - a for a, b in itertools.pairwise(cdf)]
    p = _chi_square(x, probs, cuts)
    assert p > ALPHA / 2, (sigma2, p)


def test_exact_path_alone_has_the_right_distribution() -> None:
    """Every coin decided by _LazyUniform (the path the filter defers to): chi-square against the
    exact pmf for sigma2 = 2.5, n = 6,000 (exact decisions cost ~0.2 ms each); false-failure
    probability ALPHA."""
    n, sigma2 = 6000, 2.5
    x = discrete._sample(n, discrete._Params.of(sigma2), _rng("exact-path"), exact=True)
    pmf = _pmf(range(-20, 21), sigma2)
    cuts = [-2, -1, 0, 1, 2, 3]  # (-inf, -3], -2, -1, 0, 1, 2, [3, inf)
    p = _chi_square(x, _binned(pmf, cuts), cuts)
    assert p > ALPHA, p


# --- the float filter never decides a coin wrongly ---------------------------------------------------


def test_filter_decisions_are_sound_near_the_threshold() -> None:
    """For many (U, X), words w placed across the filter's band around p 2^32 (p = exp(-E)): a
    "surely below" must mean (w + 1) 2^-32 < p and a "surely above" w 2^-32 >= p, checked with
    exact rationals against a 60-digit exp (error ~1e-59). Words at twice the band's half-width
    (2^-26 relative) from p 2^32 must be decided: the band is no wider than the analysis says."""
    exp_tab, _ = discrete._tables()
    rng = _rng("filter")
    delta = discrete._FILTER_DELTA
    for sigma2 in (0.3, 2.0, 7.5, 1e4, 8.589934592e7, 1e16, 1e24):
        p = discrete._Params.of(sigma2)
        m = 300
        u = (rng.uint64(m) % np.uint64(p.t)).astype(np.int64)
        v = (rng.uint64(m) % np.uint64(9)).astype(np.int64)
        x = u + p.t * v
        probs = [_exp_dec(-p.exponent(int(a), int(b))) for a, b in zip(u, x, strict=True)]
        for c in (-2.0, -1.1, -1.0, -0.9, -0.5, 0.0, 0.5, 0.9, 1.0, 1.1, 2.0):
            targets = [float(q) * 2**32 * (1 + c * delta) for q in probs]
            for shift in (-1, 0, 1):
                w = np.array([min(max(math.floor(y) + shift, 0), 2**32 - 1) for y in targets],
                             dtype=np.uint32)
                yes, no = discrete._accept_filter(p, u, x, w, exp_tab)
                assert not (yes & no).any()
                for i in range(m):
                    exact = Decimal(probs[i])
                    if yes[i]:
                        assert Decimal(int(w[i]) + 1) / Decimal(2**32) < exact, (sigma2, i, c)
                    elif no[i]:
                        assert Decimal(int(w[i])) / Decimal(2**32) >= exact, (sigma2, i, c)
                    elif abs(c) >= 2.0 and targets[i] * delta >= 4:  # band >= 4 words wide
                        raise AssertionError(f"word {int(w[i])} at {c} band widths left open")


def test_filter_band_is_narrow() -> None:
    """Words drawn uniformly: the filter leaves at most a handful of 200,000 coins open (expected
    ~0.01); more would mean the error band is far wider than the analysis says."""
    exp_tab, _ = discrete._tables()
    p = discrete._Params.of(1e6)
    rng = _rng("band")
    m = 200_000
    u = (rng.uint64(m) % np.uint64(p.t)).astype(np.int64)
    x = u + p.t * (rng.uint64(m) % np.uint64(4)).astype(np.int64)
    yes, no = discrete._accept_filter(p, u, x, rng.uint32(m), exp_tab)
    assert int((~(yes | no)).sum()) <= 3


# --- exact pieces ----------------------------------------------------------------------------------


class Words:
    """A RandomSource replaying uint32 words (fails when it runs out)."""

    def __init__(self, words: list[int]) -> None:
        self.words = list(words)

    def uint32(self, n: int) -> np.ndarray:
        if n > len(self.words):
            raise AssertionError("ran out of scripted words")
        out, self.words = self.words[:n], self.words[n:]
        return np.array(out, dtype=np.uint32)


def _bits_of_exp_neg(q: Fraction, nbits: int) -> int:
    """floor(exp(-q) 2^nbits); 60 digits (~199 bits) leave no doubt for nbits <= 96."""
    return int((CTX.multiply(_exp_dec(-q), Decimal(2**nbits))).to_integral_value(
        rounding=decimal.ROUND_FLOOR))


def test_lazy_uniform_reads_further_words_only_when_needed() -> None:
    f64 = _bits_of_exp_neg(Fraction(1), 64)  # the first 64 bits of e^-1
    hi, lo = f64 >> 32, f64 & 0xFFFFFFFF
    lazy = discrete._LazyUniform
    assert lazy(hi - 1, 32, Words([])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    assert not lazy(hi + 1, 32, Words([])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    assert lazy(hi, 32, Words([lo - 1])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    assert not lazy(hi, 32, Words([lo + 1])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    f96 = _bits_of_exp_neg(Fraction(1), 96) & 0xFFFFFFFF
    assert lazy(hi, 32, Words([lo, f96 - 1])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    assert not lazy(hi, 32, Words([lo, f96 + 1])).below_exp_neg(Fraction(1))  # type: ignore[arg-type]
    assert lazy(2**32 - 1, 32, Words([])).below_exp_neg(Fraction(0))  # type: ignore[arg-type]
    # exp(-3000) = 2^-4328.08...: W = 0.000...1 decides as soon as its bits pass that point
    words = Words([0] * 100 + [1, 7])  # W in [2^-3264, 2^-3263): above
    assert not lazy(0, 32, words).below_exp_neg(Fraction(3000))  # type: ignore[arg-type]
    assert words.words == [7]
    words = Words([0] * 140 + [1])  # 32 * 136 zero bits: W < 2^-4352, below
    assert lazy(0, 32, words).below_exp_neg(Fraction(3000))  # type: ignore[arg-type]
    assert len(words.words) == 141 - 135  # 32 (1 + 135) = 4352 >= 4329 bits read


def test_v_thresholds_are_the_exact_floors() -> None:
    _, table = discrete._tables()
    for v in range(1, discrete._V_MAX + 1):
        assert int(table[v]) == _bits_of_exp_neg(Fraction(v), 32), v
    assert int(table[discrete._V_MAX + 1]) == 0


def test_geometric_v_from_one_word_and_its_ties() -> None:
    _, table = discrete._tables()
    t = 10
    t1, t2, t3 = (int(table[i]) for i in (1, 2, 3))
    t22 = int(table[22])
    assert t22 == 1  # e^-22 2^32 = 1.19...
    w = np.array([t1 + 1, t1, t1 - 1, t2, t2 - 1, t3 - 1, 2, t22, 0], dtype=np.uint32)
    x = np.zeros(w.size, dtype=np.int64)
    open_ = discrete._add_geometric(x, t, w, table, np.empty(w.size, dtype=bool))
    # V = #{v : w < T_v}; w == T_v is open; w == 0 is past the table (V >= 22): open
    assert x[[0, 2, 4, 5, 6]].tolist() == [0, 10, 20, 30, 210]
    assert sorted(open_.tolist()) == [1, 3, 7, 8]


def test_tiny_variance_uses_the_rational_path() -> None:
    # sigma2 = 1e-20: P(X != 0) = 2 exp(-5e19) / Z; the all-rational CKS path returns zeros
    assert not discrete_gaussian(2000, 1e-20, _rng("tiny")).any()


def test_deterministic_and_stream_dependent() -> None:
    a = discrete_gaussian(50_000, 8.589934592e7, _rng("det"))
    b = discrete_gaussian(50_000, 8.589934592e7, _rng("det"))
    c = discrete_gaussian(50_000, 8.589934592e7, _rng("det2"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
