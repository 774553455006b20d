"""Federated standardisation equals centralized standardisation; task inference; target scaling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefl.data import Standardizer, TargetScaler, build_federated_data, infer_task, moments
from securefl.data.encoding import binary_labels
from securefl.errors import DataError


def test_moments_hand_example() -> None:
    X = np.array([[1.0, -2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(moments(X), [2.0, 4.0, 2.0, 10.0, 20.0])


def test_from_summed_moments_hand_example() -> None:
    # column 0: values 1, 3 -> mean 2, population std 1; column 1: constant 5 -> std floor 1
    s = Standardizer.from_summed_moments(np.array([2.0, 4.0, 10.0, 10.0, 50.0]))
    np.testing.assert_allclose(s.mean, [2.0, 5.0])
    np.testing.assert_allclose(s.std, [1.0, 1.0])
    np.testing.assert_allclose(s.transform(np.array([[1.0, 5.0], [3.0, 5.0]])), [[-1, 0], [1, 0]])


@settings(max_examples=50, deadline=None)
@given(
    parts=st.lists(
        arrays(np.float64, st.tuples(st.integers(1, 20), st.just(3)),
               elements=st.floats(-1e4, 1e4, allow_nan=False)),
        min_size=1, max_size=5),
)
def test_federated_equals_centralized_property(parts: list[np.ndarray]) -> None:
    total = np.sum([moments(p) for p in parts], axis=0)
    s = Standardizer.from_summed_moments(total)
    union = np.vstack(parts)
    mean, std = union.mean(axis=0), union.std(axis=0)
    np.testing.assert_allclose(s.mean, mean, rtol=1e-9, atol=1e-9)
    spread = np.abs(union).max(axis=0) + 1.0
    varying = std > 1e-6 * spread
    # sums of squares lose precision relative to the scale of the data, not of the variance
    if varying.any():
        np.testing.assert_allclose(s.std[varying], std[varying], rtol=1e-6,
                                   atol=1e-6 * spread[varying].max())
    np.testing.assert_array_equal(s.std[std == 0], 1.0)  # constant column: std floor


def test_federated_standardisation_of_the_banks_equals_the_union() -> None:
    fd = build_federated_data(seed=4)
    # the federation sums the banks' moment vectors (here in plaintext; securely in a run)
    total = np.sum([b.moments() for b in fd.banks], axis=0)
    std = Standardizer.from_summed_moments(total)
    union = np.vstack([b.X_train for b in fd.banks]).astype(np.float64)
    mu, sd = union.mean(axis=0), union.std(axis=0)
    np.testing.assert_allclose(std.mean, mu, rtol=1e-9, atol=1e-12)
    live = sd > 0
    np.testing.assert_allclose(std.std[live], sd[live], rtol=1e-7)
    assert np.all(std.std[~live] == 1.0)  # e.g. a PAY code absent from every training row
    s = fd.standardized(std)
    z = np.vstack([b.X_train for b in s.banks]).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0)[live], 1.0, atol=1e-5)
    expect_test = ((fd.X_test.astype(np.float64) - mu) / np.where(live, sd, 1.0)).astype(np.float32)
    np.testing.assert_allclose(s.X_test, expect_test, rtol=1e-5, atol=1e-5)
    assert s.banks[0].y_train is fd.banks[0].y_train  # labels untouched
    np.testing.assert_array_equal(fd.summed_moments(), total)


@settings(max_examples=50, deadline=None)
@given(value=st.floats(-1e7, 1e7, allow_nan=False), n=st.integers(1, 40_000))
def test_constant_column_gets_the_std_floor(value: float, n: int) -> None:
    X = np.full((n, 1), value)
    s = Standardizer.from_summed_moments(moments(X))
    assert s.std[0] == 1.0
    assert np.abs(s.transform(X)).max() <= 1e-6 * max(1.0, abs(value))


def test_bad_moment_vectors() -> None:
    with pytest.raises(DataError):
        Standardizer.from_summed_moments(np.array([0.0, 1.0, 1.0]))
    with pytest.raises(DataError):
        Standardizer.from_summed_moments(np.array([3.0, 1.0]))
    with pytest.raises(DataError):
        Standardizer.from_summed_moments(np.array([3.0, np.nan, 1.0]))
    s = Standardizer.from_summed_moments(np.array([2.0, 1.0, 1.0]))
    with pytest.raises(DataError):
        s.transform(np.zeros((2, 2)))


def test_target_scaler_round_trip_signed_log() -> None:
    y = np.array([-1000.0, 0.0, 20_000.0, 500_000.0])
    f = np.sign(y) * np.log1p(np.abs(y))
    ts = TargetScaler.from_summed_moments(np.array([4.0, f.sum(), (f**2).sum()]), "signed_log1p")
    assert ts.mean == pytest.approx(f.mean()) and ts.std == pytest.approx(f.std())
    np.testing.assert_allclose(ts.inverse(ts.transform(y)), y, rtol=1e-5, atol=1e-3)  # float32


# --- task inference ------------------------------------------------------------
def test_infer_task() -> None:
    assert infer_task(np.array([0.0, 1.0, 1.0])) == "classification"
    assert infer_task(np.array([1.0, 2.0, 1.0])) == "classification"
    assert infer_task(np.linspace(0, 1, 50)) == "regression"
    assert infer_task(np.arange(30.0)) == "regression"  # many integer values: a quantity
    assert infer_task(np.array([0.5, 1.5, 2.5])) == "regression"  # non-integers
    with pytest.raises(DataError, match="--task"):
        infer_task(np.array([0.0, 1.0, 2.0, 1.0]))  # classes or a count?
    assert infer_task(np.array([0.0, 1.0, 2.0]), "regression") == "regression"
    with pytest.raises(DataError, match="binary"):
        infer_task(np.array([0.0, 1.0, 2.0]), "classification")
    with pytest.raises(DataError, match="constant"):
        infer_task(np.ones(5))
    with pytest.raises(DataError, match="unknown task"):
        infer_task(np.array([0.0, 1.0]), "ranking")
    assert infer_task(np.array([0.0, 1.0]), "regression") == "regression"


def test_explicit_task_in_build() -> None:
    fd = build_federated_data(label="EDUCATION", task="regression", partition="iid", seed=0)
    assert fd.task == "regression" and fd.target_scaler is not None
    with pytest.raises(DataError, match="--task"):
        build_federated_data(label="EDUCATION", partition="iid")


def test_binary_labels_mapping() -> None:
    y, mapping = binary_labels(np.array([2.0, 1.0, 2.0]))
    assert y.tolist() == [1.0, 0.0, 1.0] and mapping == (1.0, 2.0)
    with pytest.raises(DataError):
        binary_labels(np.array([1.0, 2.0, 3.0]))
