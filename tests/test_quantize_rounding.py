"""Stochastic rounding drawn as uint32 words: unbiased with the right variance, exact at the edges.

Statistical tests use fixed seeds; each states its false-failure probability, i.e. the chance that a
correct implementation fails it for a seed drawn at random (the seed is fixed, so a run either
always passes or always fails). Expected values are derived analytically: a coordinate with
s = x / gamma rounds up with probability exactly frac(s), so the number of round-ups among n equal
coordinates is Binomial(n, frac(s)) and a sum of rounding errors over independent coordinates has
mean 0 and variance sum frac (1 - frac).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import ConfigError, OverflowRiskError
from securefl.protocol import quantize as qz

#: total false-failure probability of each statistical test below (split with Bonferroni)
ALPHA = 1e-6


def _rng(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x05" * 32), label)


class Words:
    """A RandomSource that replays given uint32 words and fails if more are asked for."""

    def __init__(self, words: list[int]) -> None:
        self.words = list(words)

    def uint32(self, n: int) -> np.ndarray:
        if n > len(self.words):
            raise AssertionError(f"asked for {n} words, {len(self.words)} scripted")
        out, self.words = self.words[:n], self.words[n:]
        return np.array(out, dtype=np.uint32)

    def uint64(self, n: int) -> np.ndarray:  # pragma: no cover - must not be used
        raise AssertionError("stochastic rounding draws uint32 words only")

    def uniform(self, n: int) -> np.ndarray:  # pragma: no cover - must not be used
        raise AssertionError("stochastic rounding must not draw float uniforms")

    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - must not be used
        raise AssertionError("unexpected")

    def randbelow(self, bound: int) -> int:  # pragma: no cover - must not be used
        raise AssertionError("unexpected")


def _round_one(s: float, words: list[int]) -> tuple[int, list[int]]:
    """q for one coordinate x = s (gamma = 1) under scripted words; also the words left over."""
    src = Words(words)
    q = qz.stochastic_round(np.array([s]), 1.0, src)  # type: ignore[arg-type]
    return int(q[0]), src.words


# --- distribution ----------------------------------------------------------------------------------

#: (s, floor(s), frac(s)) with frac computed by hand, not by the code under test
CASES = [
    (0.3, 0, 0.3),
    (-2.7, -3, 0.3),  # frac(-2.7) = 0.3 up to the double's rounding (checked exactly below)
    (0.5, 0, 0.5),
    (1 / 3, 0, 1 / 3),
    (65535.25, 65535, 0.25),
    (-0.25, -1, 0.75),
    (2.0**-10, 0, 2.0**-10),
    (7 - 2.0**-10, 6, 1 - 2.0**-10),
    (-(2.0**-20), -1, 1 - 2.0**-20),
]


def test_round_ups_are_binomial_with_probability_frac() -> None:
    """For each case, #(q = floor + 1) among n = 200,000 equal coordinates ~ Binomial(n, frac):
    exact two-sided binomial test at ALPHA / len(CASES) each (total false-failure prob <= ALPHA).
    Power: a bias of 0.006 in any case's probability fails, and so does a comparison on fewer than
    10 fraction bits (the 2^-10 case would never round up)."""
    n = 200_000
    x = np.repeat(np.array([c[0] for c in CASES]), n)
    q = qz.stochastic_round(x, 1.0, _rng("binomial")).reshape(len(CASES), n)
    for (s, fl, frac), row in zip(CASES, q, strict=True):
        # the double s has frac(s) = s - floor(s) exactly (as rationals); compare with the hand value
        assert math.isclose(float(s - math.floor(s)), frac, rel_tol=1e-12, abs_tol=1e-15)
        assert set(np.unique(row).tolist()) <= {fl, fl + 1}, s
        ups = int((row == fl + 1).sum())
        p = stats.binomtest(ups, n, frac).pvalue
        assert p > ALPHA / len(CASES), (s, ups / n, frac, p)


def test_sum_of_errors_has_mean_zero_and_variance_sum_f_one_minus_f() -> None:
    """Independence across coordinates: T = sum_i (q_i - s_i) over d = 2048 coordinates with
    fractions f_i = (i + 0.5) / d has mean 0 and variance V = sum f_i (1 - f_i) (= d/6 + 1/(12 d)).
    Over R = 300 independent streams: z-test of the mean and chi-square test of the variance,
    each two-sided at ALPHA / 2 (T is a sum of 2048 independent bounded terms: normal to within a
    Berry-Esseen error far below the test's resolution). Reusing one word for several coordinates,
    or drawing words that are not independent, multiplies the variance and fails."""
    d, reps = 2048, 300
    f = (np.arange(d) + 0.5) / d
    base = np.arange(d) % 5 - 2  # integer parts -2..2
    x = base + f
    v = d / 6 + 1 / (12 * d)
    assert math.isclose(v, float((f * (1 - f)).sum()), rel_tol=1e-12)
    t = np.array([(qz.stochastic_round(x, 1.0, _rng(f"sum/{r}")) - x).sum() for r in range(reps)])
    z = t.mean() / math.sqrt(v / reps)
    assert 2 * stats.norm.sf(abs(z)) > ALPHA / 2, z
    chi2 = (reps - 1) * t.var(ddof=1) / v
    p_var = 2 * min(stats.chi2.cdf(chi2, reps - 1), stats.chi2.sf(chi2, reps - 1))
    assert p_var > ALPHA / 2, (t.var(ddof=1), v)


# --- exact edges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.0, -0.0, 5.0, -3.0, 65536.0, 2.0**20 + 3, -(2.0**31), 2.0**31 - 1])
@pytest.mark.parametrize("word", [0, 1, 2**31, 2**32 - 1])
def test_integer_never_rounds_up(s: float, word: int) -> None:
    # frac 0: P = 0, so u < P never holds; u == 0 is a tie with remainder 0 -> down, no more words
    q, left = _round_one(s, [word, 12345])
    assert q == int(s)
    assert left == [12345]


def test_both_integer_conversions_agree() -> None:
    # |s| < 2^19 takes the exact float-bits conversion, larger |s| numpy's float -> int64 cast;
    # a block holding both kinds of values uses the cast for all of them: same words, same q
    x = _rng("conv").uniform(4000) * 1000 - 500
    small = qz.stochastic_round(x, 1.0, _rng("c"))
    mixed = qz.stochastic_round(np.append(x, 2.0**20), 1.0, _rng("c"))
    np.testing.assert_array_equal(mixed[:-1], small)
    assert mixed[-1] == 2**20


def test_integers_stay_put_for_many_random_draws() -> None:
    x = np.arange(-50_000, 50_000, dtype=np.float64) * 0.25  # multiples of gamma = 0.25
    q = qz.stochastic_round(x, 0.25, _rng("ints"))
    np.testing.assert_array_equal(q, np.arange(-50_000, 50_000))


def test_comparison_at_a_half() -> None:
    # s = 0.5: P = 2^31. u < P rounds up, u > P down; u == P ties with remainder 0: down
    assert _round_one(0.5, [2**31 - 1])[0] == 1
    assert _round_one(0.5, [0])[0] == 1
    assert _round_one(0.5, [2**31 + 1])[0] == 0
    assert _round_one(0.5, [2**32 - 1])[0] == 0
    assert _round_one(0.5, [2**31, 777]) == (0, [777])


def test_negative_values_use_floor() -> None:
    # s = -0.25: floor -1, frac 0.75, P = 3 * 2^30
    assert _round_one(-0.25, [3 * 2**30 - 1])[0] == 0
    assert _round_one(-0.25, [3 * 2**30 + 1])[0] == -1
    assert _round_one(-0.25, [3 * 2**30])[0] == -1  # tie, remainder 0


def test_tiny_fraction_is_decided_by_further_words() -> None:
    # s = 2^-40: frac * 2^32 = 2^-8, P = 0, remainder 2^-8; u == 0 ties, and then
    # U < 2^-40 iff the next word is < 2^-8 * 2^32 = 2^24 (== 2^24: tie with remainder 0 -> down)
    s = 2.0**-40
    assert _round_one(s, [1])[0] == 0
    assert _round_one(s, [0, 2**24 - 1]) == (1, [])
    assert _round_one(s, [0, 2**24, 5]) == (0, [5])
    assert _round_one(s, [0, 2**24 + 1]) == (0, [])


def test_fraction_just_below_one() -> None:
    # s = 1 - 2^-53: frac * 2^32 = 2^32 - 2^-21: P = 2^32 - 1, remainder 1 - 2^-21, whose next
    # 32 bits are 2^32 - 2^11 (and then 0)
    s = 1 - 2.0**-53
    assert _round_one(s, [2**32 - 2])[0] == 1
    assert _round_one(s, [2**32 - 1, 2**32 - 2**11 - 1])[0] == 1
    assert _round_one(s, [2**32 - 1, 2**32 - 2**11]) == (0, [])


def test_tiny_negative_value() -> None:
    # s = -2^-60: floor -1, frac 1 - 2^-60; s * 2^32 = -2^-28 floors to -1: P = 2^32 - 1 and the
    # remainder is 1 - 2^-28, whose next 32 bits are 2^32 - 2^4
    s = -(2.0**-60)
    assert _round_one(s, [2**32 - 2])[0] == 0
    assert _round_one(s, [2**32 - 1, 2**32 - 17])[0] == 0
    assert _round_one(s, [2**32 - 1, 2**32 - 16, 0, 0, 0]) == (-1, [0, 0, 0])


def test_tie_words_come_after_the_block_words() -> None:
    # two coordinates, both tied on their first word: their extra words follow the two bulk words
    x = np.array([2.0**-40, 2.0**-40])
    q = qz.stochastic_round(x, 1.0, Words([0, 0, 2**24 - 1, 2**24 + 1]))  # type: ignore[arg-type]
    assert q.tolist() == [1, 0]


def test_range_and_finiteness_are_checked() -> None:
    # s must lie in [-2^31, 2^31 - 1], the centred range of a 32-bit field
    for bad_s in (2.0**31, 2.0**31 - 0.5, -(2.0**31) - 1):
        with pytest.raises(OverflowRiskError):
            qz.stochastic_round(np.array([0.0, bad_s]), 1.0, _rng("big"))
    q = qz.stochastic_round(np.array([2.0**31 - 1.5] * 64), 1.0, _rng("ok"))
    assert set(q.tolist()) == {2**31 - 2, 2**31 - 1}  # P(all 64 equal) = 2^-63
    assert _round_one(2.0**31 - 1.5, [2**31 - 1])[0] == 2**31 - 1
    assert _round_one(2.0**31 - 1.5, [2**31])[0] == 2**31 - 2
    assert _round_one(-(2.0**31) + 0.5, [2**31 - 1])[0] == -(2**31) + 1
    assert _round_one(-(2.0**31) + 0.5, [2**31 + 1])[0] == -(2**31)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ConfigError):
            qz.stochastic_round(np.array([0.0, bad]), 1.0, _rng("bad"))
    with pytest.raises(ConfigError):
        qz.stochastic_round(np.array([1.0]), 0.0, _rng("bad"))
    assert qz.stochastic_round(np.zeros(0), 1.0, _rng("empty")).shape == (0,)


def test_gamma_that_is_not_a_power_of_two() -> None:
    # 0.3 / 0.1 is the double 2.9999999999999996 (not 3): floor 2, frac just below 1
    q = qz.stochastic_round(np.full(10_000, 0.3), 0.1, _rng("tenth"))
    assert set(q.tolist()) == {3}  # P(q = 2) = 4.4e-16 per coordinate
    # gamma so small that gamma * 2^-32 is subnormal: the two-step scaling path
    g = 2.0**-1030
    q = qz.stochastic_round(np.array([2.5 * g, -1.25 * g]), g, Words([2**31 - 1, 2**32 - 1]))  # type: ignore[arg-type]
    assert q.tolist() == [3, -2]


# --- one stream, one code path ----------------------------------------------------------------------


def test_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _rng("x").uniform(10_000) * 200 - 100
    a = qz.stochastic_round(x, 0.37, _rng("same"))
    monkeypatch.setattr(qz, "_BLOCK", 7)
    b = qz.stochastic_round(x, 0.37, _rng("same"))
    np.testing.assert_array_equal(a, b)
    c = qz.stochastic_round(x, 0.37, _rng("other"))
    assert not np.array_equal(a, c)


def test_round_to_field_matches_round_then_field() -> None:
    x = _rng("x2").uniform(5000) * 2 - 1
    noise = (np.arange(5000) % 41 - 20).astype(np.int64)
    q = qz.stochastic_round(x, 2.0**-10, _rng("f"))
    want = qz.to_field(q + noise, 13)
    got = qz.round_to_field(x, 2.0**-10, 13, 1024, _rng("f"), noise)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint32


def test_round_to_field_checks_the_bound_after_rounding() -> None:
    # s = 4.5, bound 5: always fine; s = 5.5: fine when it rounds down, an error when it rounds up
    assert qz.round_to_field(np.array([4.5]), 1.0, 8, 5, Words([0])).tolist() == [5]  # type: ignore[arg-type]
    assert qz.round_to_field(np.array([5.5]), 1.0, 8, 5, Words([2**32 - 1])).tolist() == [5]  # type: ignore[arg-type]
    with pytest.raises(OverflowRiskError):
        qz.round_to_field(np.array([5.5]), 1.0, 8, 5, Words([0]))  # type: ignore[arg-type]
    with pytest.raises(OverflowRiskError):
        qz.round_to_field(np.array([-5.5]), 1.0, 8, 5, Words([2**32 - 1]))  # type: ignore[arg-type]
    # a tie at the bound that resolves upwards is caught too: s = 5 + 2^-40
    with pytest.raises(OverflowRiskError):
        qz.round_to_field(np.array([5 + 2.0**-40]), 1.0, 8, 5, Words([0, 0]))  # type: ignore[arg-type]
    assert qz.round_to_field(np.array([5 + 2.0**-40]), 1.0, 8, 5,
                             Words([0, 2**32 - 1])).tolist() == [5]  # type: ignore[arg-type]


def test_encode_input_is_round_then_noise_then_field() -> None:
    from securefl.dp.discrete import discrete_gaussian
    from securefl.protocol.secagg import encode_input

    enc = qz.choose_encoding(20, 3000, 1.0, 2.0**-12, noise_sigma2=50.0)
    x = _rng("in").uniform(3000) - 0.5
    x *= 0.9 / np.linalg.norm(x)
    got = encode_input(x, clip_norm=1.0, encoding=enc, rounding=_rng("r"), noise=_rng("n"))
    want = qz.to_field(qz.stochastic_round(x, enc.gamma, _rng("r"))
                       + discrete_gaussian(3000, 50.0, _rng("n")), enc.bits)
    np.testing.assert_array_equal(got, want)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[7] = bad
        with pytest.raises(OverflowRiskError, match="not finite or exceeds the clip norm"):
            encode_input(y, clip_norm=1.0, encoding=enc, rounding=_rng("r"), noise=_rng("n"))
    # C / gamma = 2^12 is an integer: a coordinate of exactly C never rounds past it, and one a
    # hair above C (inside the 1e-9 norm tolerance) fails only when it rounds up
    one_hot = np.zeros(3000)
    one_hot[5] = 1.0
    assert encode_input(one_hot, clip_norm=1.0, encoding=enc, rounding=Words([0] * 3000),  # type: ignore[arg-type]
                        noise=_rng("n"))[5] != 0
    one_hot[5] = 1.0 + 2.0**-40
    with pytest.raises(OverflowRiskError, match="per-coordinate bound"):
        encode_input(one_hot, clip_norm=1.0, encoding=enc, rounding=Words([0] * 3000),  # type: ignore[arg-type]
                     noise=_rng("n"))
