"""The exact discrete Gaussian sampler (CKS 2020) vs. the analytic pmf and the continuous limit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.dp import discrete
from securefl.dp.discrete import discrete_gaussian
from securefl.errors import PrivacyError


def _rng(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x07" * 32), label)


def _pmf(support: np.ndarray, sigma2: float) -> np.ndarray:
    # independent of the module under test: normalise exp(-x^2 / (2 sigma2)) over a wide range
    wide = np.arange(-2000, 2001)
    z = math.fsum(math.exp(-(k * k) / (2 * sigma2)) for k in wide)
    return np.array([math.exp(-(k * k) / (2 * sigma2)) / z for k in support])


@pytest.mark.parametrize("sigma2", [0.3, 1.0, 7.5, 40.0])
def test_chi_square_against_analytic_pmf(sigma2: float) -> None:
    n = 60_000
    x = discrete_gaussian(n, sigma2, _rng(f"chi2-{sigma2}"))
    assert x.dtype == np.int64 and x.shape == (n,)
    r = int(3.5 * math.sqrt(sigma2)) + 1
    inner = np.arange(-r + 1, r)
    p_inner = _pmf(inner, sigma2)
    obs = [int((x <= -r).sum())] + [int((x == k).sum()) for k in inner] + [int((x >= r).sum())]
    p_tail = (1.0 - p_inner.sum()) / 2
    exp = np.array([p_tail, *p_inner, p_tail]) * n
    keep = exp >= 5  # merge nothing: drop bins too small for chi-square (only for tiny sigma)
    obs_a, exp_a = np.array(obs)[keep], exp[keep]
    exp_a = exp_a * obs_a.sum() / exp_a.sum()
    stat, p = stats.chisquare(obs_a, exp_a)
    assert p > 1e-4, (stat, p)


def test_variance_and_mean_small_sigma() -> None:
    sigma2 = 4.0
    x = discrete_gaussian(100_000, sigma2, _rng("var"))
    support = np.arange(-60, 61)
    var = float((_pmf(support, sigma2) * support**2).sum())
    assert abs(x.mean()) < 4 * math.sqrt(var / len(x))
    assert x.var() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("sigma2", [1e12, 1e16])
def test_large_sigma_matches_continuous_gaussian(sigma2: float) -> None:
    n = 50_000
    x = discrete_gaussian(n, sigma2, _rng(f"large-{sigma2}"))
    s = math.sqrt(sigma2)
    z = x.astype(np.float64) / s
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert z.var() == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    ks = stats.kstest(z, "norm")
    assert ks.pvalue > 1e-4
    # tails: P(|Z| > 3) = 0.0027 for N(0, 1)
    tail = float((np.abs(z) > 3).mean())
    assert abs(tail - 0.0027) < 6 * math.sqrt(0.0027 / n)


def test_deterministic_for_a_seeded_source_and_zero_cases() -> None:
    a = discrete_gaussian(1000, 1e6, _rng("same"))
    b = discrete_gaussian(1000, 1e6, _rng("same"))
    c = discrete_gaussian(1000, 1e6, _rng("other"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert discrete_gaussian(0, 5.0, _rng("z")).shape == (0,)
    assert not discrete_gaussian(10, 0.0, _rng("z")).any()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e30])
def test_rejects_bad_sigma2(bad: float) -> None:
    with pytest.raises(PrivacyError, match="sigma2"):
        discrete_gaussian(3, bad, _rng("bad"))


def test_rejects_bad_n() -> None:
    with pytest.raises(PrivacyError, match="n must be"):
        discrete_gaussian(-1, 1.0, _rng("bad"))


class _Scripted:
    """A RandomSource replaying given 64-bit words (to drive the exact tie-break path)."""

    def __init__(self, words: list[int]) -> None:
        self.words = list(words)

    def uint64(self, n: int) -> np.ndarray:
        out, self.words = self.words[:n], self.words[n:]
        return np.array(out, dtype=np.uint64)

    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - not used by these helpers
        raise AssertionError("unexpected")

    def uniform(self, n: int) -> np.ndarray:  # pragma: no cover
        raise AssertionError("unexpected")

    def randbelow(self, bound: int) -> int:  # pragma: no cover
        raise AssertionError("unexpected")


def test_bernoulli_big_tie_break_is_exact() -> None:
    # p = 1/3 = 0.0101...b; floor(2^64 / 3) = 0x5555...5. Word == P is a tie: U < 1/3 is then
    # decided by the next word against the remainder (1/3 of an ulp -> again P): 0 < P -> True.
    p_word = (1 << 64) // 3
    num = np.array([1], dtype=object)
    den = np.array([3], dtype=object)
    assert discrete._bernoulli_big(num, den, _Scripted([p_word, 0])).tolist() == [True]
    assert discrete._bernoulli_big(num, den, _Scripted([p_word, (1 << 64) - 1])).tolist() == [False]
    assert discrete._bernoulli_big(num, den, _Scripted([p_word - 1])).tolist() == [True]
    assert discrete._bernoulli_big(num, den, _Scripted([p_word + 1])).tolist() == [False]


def test_bernoulli_exp_neg_frequency() -> None:
    # P(accept) = exp(-gamma) for gamma = 7/3 (> 1: exercises the exp(-1) loop and the fraction)
    n = 40_000
    num = np.array([7] * n, dtype=object)
    got = discrete._bernoulli_exp_neg_big_rational(num, 3, _rng("bexp")).mean()
    want = math.exp(-7 / 3)
    assert abs(got - want) < 5 * math.sqrt(want * (1 - want) / n)


def test_uniform_below_is_uniform_for_odd_bounds() -> None:
    n = 30_000
    u = discrete._uniform_below(np.full(n, 7, dtype=np.int64), _rng("ub"))
    counts = np.bincount(u, minlength=7)
    assert u.min() >= 0 and u.max() <= 6
    assert stats.chisquare(counts).pvalue > 1e-4
