"""Metrics against scikit-learn (an independent implementation) and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from securefl.errors import DataError
from securefl.fl.metrics import (
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    headline_metrics,
    log_loss,
    pr_auc,
    regression_metrics,
    reliability_curve,
    reliability_from_metrics,
    roc_auc,
)


def test_roc_auc_hand_worked() -> None:
    # positives score 0.8 and 0.4, negatives 0.5 and 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1)
    y = np.array([1, 1, 0, 0], dtype=float)
    s = np.array([0.8, 0.4, 0.5, 0.1])
    assert roc_auc(y, s) == pytest.approx(3 / 4)


def test_roc_auc_ties_count_half() -> None:
    y = np.array([1, 0], dtype=float)
    assert roc_auc(y, np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_pr_auc_hand_worked() -> None:
    # ranked: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1): AP = .5*1 + .5*2/3
    y = np.array([1, 0, 1], dtype=float)
    s = np.array([0.9, 0.8, 0.7])
    assert pr_auc(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 200), st.sampled_from([1, 2, 10]))
def test_classification_metrics_match_sklearn(seed: int, n: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    y[0], y[1] = 1.0, 0.0  # both classes present
    p = np.round(rng.random(n), decimals)  # few decimals -> many ties
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert log_loss(y, np.clip(p, 0.01, 0.99)) == pytest.approx(
        skm.log_loss(y, np.clip(p, 0.01, 0.99)), rel=1e-9)


def test_calibration_hand_worked() -> None:
    # bin 0 [0, .1]: p .05 (y 0), .05 (y 1) -> mean .05, observed .5, gap .45
    # bin 9 [.9, 1]: p .95 (y 1), .95 (y 1) -> mean .95, observed 1, gap .05
    y = np.array([0.0, 1.0, 1.0, 1.0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    assert brier_score(y, p) == pytest.approx((0.05**2 + 0.95**2 + 0.05**2 + 0.05**2) / 4)
    curve = reliability_curve(y, p)
    assert [(b.index, b.n) for b in curve] == [(0, 2), (9, 2)]
    assert curve[0].predicted == pytest.approx(0.05) and curve[0].observed == 0.5
    assert curve[1].predicted == pytest.approx(0.95) and curve[1].observed == 1.0
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_a_constant_base_rate_prediction_is_perfectly_calibrated() -> None:
    y = np.array([1.0, 0.0, 0.0, 0.0])
    assert expected_calibration_error(y, np.full(4, 0.25)) == pytest.approx(0.0, abs=1e-15)
    # but it still has a Brier score: the outcome's variance
    assert brier_score(y, np.full(4, 0.25)) == pytest.approx(0.25 * 0.75)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 300), st.sampled_from([1, 2, 10]))
def test_calibration_matches_sklearn(seed: int, n: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.round(rng.random(n), decimals)  # 1 decimal: many probabilities on bin edges
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    curve = reliability_curve(y, p)
    assert [b.observed for b in curve] == pytest.approx(observed, abs=1e-12)
    assert [b.predicted for b in curve] == pytest.approx(predicted, abs=1e-12)
    # ECE by its definition, one example at a time: bin of p is ceil(10 p) - 1 (0 for p = 0)
    bins = np.maximum(np.ceil(np.round(p * 10, 9)) - 1, 0)
    gaps = [abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum() / n
            for b in np.unique(bins)]
    assert expected_calibration_error(y, p) == pytest.approx(sum(gaps), abs=1e-12)
    ece = expected_calibration_error(y, p)
    assert 0.0 <= ece <= 1.0


def test_the_reliability_curve_travels_in_the_metrics_and_reads_back() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(500) < 0.2).astype(float)
    p = rng.random(500)
    m = classification_metrics(y, p)
    assert reliability_from_metrics(m) == reliability_curve(y, p)
    assert set(headline_metrics(m)) == {"roc_auc", "pr_auc", "accuracy", "log_loss", "brier", "ece"}
    assert sum(v for k, v in m.items() if k.endswith("/n")) == 500
    broken = {k: v for k, v in m.items() if k != "reliability/03/observed"}
    with pytest.raises(DataError, match="bin 3"):
        reliability_from_metrics(broken)
    with pytest.raises(DataError, match="bin 3"):
        reliability_from_metrics({**m, "reliability/03/predicted": 0.9})  # outside [.3, .4]


def test_regression_metrics_hand_worked() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 3.0, 2.0])  # errors 0, 1, 0, -2
    m = regression_metrics(y, pred)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["r2"] == pytest.approx(1 - 5 / 5)  # SS_tot = 2.25+.25+.25+2.25 = 5


def test_metric_errors_are_typed() -> None:
    with pytest.raises(DataError):
        roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError):
        classification_metrics(np.array([0.0, 1.0]), np.array([np.nan, 0.5]))
    with pytest.raises(DataError):
        regression_metrics(np.ones(3), np.ones(3))
