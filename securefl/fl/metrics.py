"""Evaluation metrics, computed with numpy only (tests cross-check them against scikit-learn).

Classification: ROC-AUC (Mann-Whitney U with mid-ranks for ties), PR-AUC as average precision
(step-wise, as scikit-learn's ``average_precision_score``), accuracy at 0.5, log-loss.
Regression: RMSE, MAE, R^2 (in the target's original units).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "accuracy",
    "classification_metrics",
    "log_loss",
    "pr_auc",
    "regression_metrics",
    "roc_auc",
]

CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "accuracy", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def _check(y: NDArray[np.float64], s: NDArray[np.float64]) -> None:
    if y.shape != s.shape or y.ndim != 1 or y.size == 0:
        raise DataError("labels and predictions must be non-empty vectors of equal length")
    if not np.all(np.isfinite(s)):
        raise DataError("predictions contain NaN or infinity (the model diverged)")


def _midranks(s: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # boundaries of runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg = (starts + ends + 1) / 2.0  # 1-based mid-rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y: NDArray[np.float64], score: NDArray[np.float64]) -> float:
    _check(y, score)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("ROC-AUC needs both classes in the evaluation set")
    ranks = _midranks(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pr_auc(y: NDArray[np.float64], score: NDArray[np.float64]) -> float:
    """Average precision: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    _check(y, score)
    n_pos = float((y == 1).sum())
    if n_pos == 0:
        raise DataError("PR-AUC needs positive examples in the evaluation set")
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], (y[order] == 1).astype(np.float64)
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(yy)[last_of_run]
    fp = (last_of_run + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(y: NDArray[np.float64], prob: NDArray[np.float64]) -> float:
    _check(y, prob)
    return float(np.mean((prob >= 0.5) == (y == 1)))


def log_loss(y: NDArray[np.float64], prob: NDArray[np.float64], eps: float = 1e-15) -> float:
    _check(y, prob)
    p = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def classification_metrics(y: NDArray[np.float64], prob: NDArray[np.float64]) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    return {"roc_auc": roc_auc(y, prob), "pr_auc": pr_auc(y, prob),
            "accuracy": accuracy(y, prob), "log_loss": log_loss(y, prob)}


def regression_metrics(y: NDArray[np.float64], pred: NDArray[np.float64]) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    _check(y, pred)
    err = pred - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        raise DataError("R^2 is undefined for a constant target")
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.sum(err**2)) / ss_tot}
