"""Metrics against scikit-learn (an independent implementation) and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from securefl.errors import DataError
from securefl.fl.metrics import (
    accuracy,
    classification_metrics,
    log_loss,
    pr_auc,
    regression_metrics,
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
