"""Partitioners: sizes add up, balance, determinism, Dirichlet skew, natural split of the README."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.data import build_federated_data, load_embedded
from securefl.data.federated import EMBEDDED_RULES
from securefl.data.partition import (
    dirichlet_partition,
    iid_partition,
    natural_groups,
    stratified_split,
)
from securefl.errors import ConfigError, DataError

strata_st = st.lists(st.integers(0, 2), min_size=6, max_size=300).map(
    lambda v: np.asarray(v, dtype=np.int64))


def _is_partition(parts: list[np.ndarray], n: int) -> bool:
    allidx = np.concatenate(parts)
    return allidx.size == n and np.array_equal(np.sort(allidx), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(strata=strata_st, fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_is_a_partition_with_stratum_fractions(strata, fraction, seed):  # type: ignore[no-untyped-def]
    keep, test = stratified_split(strata, fraction, np.random.default_rng(seed))
    assert _is_partition([keep, test], strata.size)
    for s in np.unique(strata):
        size = int((strata == s).sum())
        got = int((strata[test] == s).sum())
        assert abs(got - fraction * size) <= 1 or size < 2
        if size >= 2:
            assert 1 <= got <= size - 1


@settings(max_examples=60, deadline=None)
@given(strata=strata_st, banks=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_iid_sizes_add_up_and_balance(strata, banks, seed):  # type: ignore[no-untyped-def]
    parts = iid_partition(strata, banks, np.random.default_rng(seed))
    assert len(parts) == banks and _is_partition(parts, strata.size)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for s in np.unique(strata):
        per_bank = [int((strata[p] == s).sum()) for p in parts]
        assert max(per_bank) - min(per_bank) <= 1


@settings(max_examples=40, deadline=None)
@given(banks=st.integers(2, 5), alpha=st.floats(0.05, 50), seed=st.integers(0, 2**32 - 1))
def test_dirichlet_sizes_add_up_and_every_bank_sees_every_class(banks, alpha, seed):  # type: ignore[no-untyped-def]
    strata = np.repeat([0, 1], [400, 150])
    parts = dirichlet_partition(strata, banks, alpha, np.random.default_rng(seed),
                                min_per_stratum=10)
    assert _is_partition(parts, strata.size)
    for p in parts:
        assert np.bincount(strata[p], minlength=2).min() >= 10


def _skew(alpha: float, seeds: range) -> float:
    """Mean absolute deviation of each bank's positive rate from the overall rate."""
    strata = np.repeat([0, 1], [4000, 1000])
    devs = []
    for seed in seeds:
        parts = dirichlet_partition(strata, 4, alpha, np.random.default_rng(seed),
                                    min_per_stratum=5)
        devs += [abs(strata[p].mean() - 0.2) for p in parts]
    return float(np.mean(devs))


def test_dirichlet_skew_increases_as_alpha_decreases() -> None:
    seeds = range(20)
    s_small, s_mid, s_large = _skew(0.1, seeds), _skew(1.0, seeds), _skew(100.0, seeds)
    assert s_small > s_mid > s_large
    assert s_large < 0.03  # nearly IID
    assert s_small > 0.1  # strongly skewed


def test_dirichlet_too_few_rows_per_class() -> None:
    with pytest.raises(DataError):
        dirichlet_partition(np.repeat([0, 1], [100, 5]), 3, 0.5, np.random.default_rng(0),
                            min_per_stratum=2)


def test_dirichlet_rejects_nonpositive_alpha() -> None:
    with pytest.raises(DataError):
        dirichlet_partition(np.zeros(10, dtype=np.int64), 2, 0.0, np.random.default_rng(0))


def test_partitioners_are_deterministic_per_seed() -> None:
    strata = np.repeat([0, 1], [700, 300])

    def run(seed: int) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        keep, test = stratified_split(strata, 0.2, rng)
        return [test.tolist()] + [keep[p].tolist() for p in
                                  dirichlet_partition(strata[keep], 3, 0.5, rng)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    iid = [p.tolist() for p in iid_partition(strata, 3, np.random.default_rng(1))]
    assert iid == [p.tolist() for p in iid_partition(strata, 3, np.random.default_rng(1))]
    assert iid != [p.tolist() for p in iid_partition(strata, 3, np.random.default_rng(2))]


def test_readme_natural_split_over_full_data() -> None:
    t = load_embedded()
    assign, names = natural_groups(t.column("EDUCATION"), 3, column="EDUCATION",
                                   rule=EMBEDDED_RULES[("EDUCATION", 3)])
    assert np.bincount(assign).tolist() == [10_585, 14_030, 5_385]  # shared/data/README.md
    y = t.column("default")
    rates = [y[assign == b].mean() for b in range(3)]
    assert rates[0] == pytest.approx(0.192, abs=0.0006)
    assert rates[1] == pytest.approx(0.237, abs=0.0006)
    assert rates[2] == pytest.approx(0.234, abs=0.003)  # README: "~23.4 %" (measured 23.58 %)
    assert names[0].startswith("bank0-graduate")


def test_readme_age_bands_over_full_data() -> None:
    t = load_embedded()
    assign, _ = natural_groups(t.column("AGE"), 4, column="AGE", rule=EMBEDDED_RULES[("AGE", 4)])
    assert np.bincount(assign).tolist() == [9_618, 11_238, 6_464, 2_680]


def test_limit_bal_quintiles_match_readme_default_rates() -> None:
    t = load_embedded()
    assign, _ = natural_groups(t.column("LIMIT_BAL"), 5, column="LIMIT_BAL")
    y = t.column("default")
    rates = [y[assign == b].mean() for b in range(5)]
    assert rates[0] == pytest.approx(0.318, abs=0.0006)  # README: 31.8 % down to 13.8 %
    assert rates[-1] == pytest.approx(0.138, abs=0.0006)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_natural_groups_generic_rules() -> None:
    # one bank per value
    a, names = natural_groups(np.array([3.0, 1.0, 3.0, 2.0]), 3, column="c")
    assert a.tolist() == [2, 0, 2, 1] and names == ("bank0-c-1", "bank1-c-2", "bank2-c-3")
    # quantile ranges (pandas.qcut bins), worked by hand: quartile edges of 1..8 are 4.5
    a, _ = natural_groups(np.arange(1.0, 9.0), 2, column="c")
    assert a.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # categorical packing: counts a=5, b=3, c=2 -> banks {a}, {b, c}
    codes = np.array([0] * 5 + [1] * 3 + [2] * 2, dtype=np.float64)
    a, _ = natural_groups(codes, 2, column="k", categories=("a", "b", "c"))
    assert a.tolist() == [0] * 5 + [1] * 5
    with pytest.raises(DataError):
        natural_groups(np.array([1.0, 1.0, 2.0]), 3, column="c")


# --- build_federated_data -------------------------------------------------------------------------
def _rows(fd) -> int:  # type: ignore[no-untyped-def]
    return int(fd.y_test.size + sum(b.y_train.size + b.y_test.size for b in fd.banks))


@pytest.mark.parametrize("partition", ["natural", "iid", "dirichlet"])
def test_build_sizes_add_up_and_label_balance(partition: str) -> None:
    fd = build_federated_data(partition=partition, seed=3)  # type: ignore[arg-type]
    assert _rows(fd) == 30_000
    assert len(fd.banks) == 3 and fd.task == "classification" and fd.n_features == 93
    assert fd.y_test.size == 6_000  # 20 % global test, stratified
    assert fd.y_test.mean() == pytest.approx(6_636 / 30_000, abs=2e-4)
    for b in fd.banks:
        n = b.y_train.size + b.y_test.size
        assert b.y_test.size == pytest.approx(0.1 * n, abs=2)
        assert b.X_train.dtype == np.float32 and b.X_train.shape[1] == 93
        assert set(np.unique(b.y_train)) == {0.0, 1.0}
        if partition == "iid":
            assert b.y_train.mean() == pytest.approx(0.2212, abs=0.002)
    if partition == "natural":
        # 80 % of the README's full-data sizes, up to stratification noise
        sizes = [b.y_train.size + b.y_test.size for b in fd.banks]
        for got, full in zip(sizes, [10_585, 14_030, 5_385], strict=True):
            assert abs(got - 0.8 * full) < 150


def test_build_is_deterministic() -> None:
    a = build_federated_data(partition="dirichlet", seed=5)
    b = build_federated_data(partition="dirichlet", seed=5)
    c = build_federated_data(partition="dirichlet", seed=6)
    for x, y in zip(a.banks, b.banks, strict=True):
        np.testing.assert_array_equal(x.X_train, y.X_train)
        np.testing.assert_array_equal(x.y_test, y.y_test)
    assert any(x.y_train.size != z.y_train.size for x, z in zip(a.banks, c.banks, strict=True))


def test_build_regression_example() -> None:
    fd = build_federated_data(label="LIMIT_BAL", partition="iid", seed=1)
    assert fd.task == "regression" and fd.n_features == 92
    assert not any("LIMIT_BAL" in n for n in fd.feature_names)
    assert fd.target_scaler is not None
    y_tr = np.concatenate([b.y_train for b in fd.banks]).astype(np.float64)
    assert y_tr.mean() == pytest.approx(0.0, abs=1e-5) and y_tr.std() == pytest.approx(1.0, 1e-5)
    # round trip to NT dollars: every test target maps back to a LIMIT_BAL value of the table
    back = fd.target_scaler.inverse(fd.y_test)
    limits = np.unique(load_embedded().column("LIMIT_BAL"))
    nearest = limits[np.abs(back[:, None] - limits[None, :]).argmin(axis=1)]
    np.testing.assert_allclose(back, nearest, rtol=1e-5)


def test_build_dirichlet_regression_uses_target_bins() -> None:
    fd = build_federated_data(label="LIMIT_BAL", partition="dirichlet", alpha=0.1, seed=2)
    assert _rows(fd) == 30_000


def test_build_argument_errors() -> None:
    with pytest.raises(ConfigError):
        build_federated_data(banks=0)
    with pytest.raises(ConfigError):
        build_federated_data(partition="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_federated_data(partition="dirichlet", alpha=-1)
    with pytest.raises(ConfigError):
        build_federated_data(test_fraction=1.0)


def test_bank_without_both_classes_is_data_error() -> None:
    # splitting by the label itself gives banks with a single class
    with pytest.raises(DataError, match="class"):
        build_federated_data(split_by="default", banks=2)
