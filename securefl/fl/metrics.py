"""Evaluation metrics, computed with numpy only (tests cross-check them against scikit-learn).

Classification: ROC-AUC (Mann-Whitney U with mid-ranks for ties), PR-AUC as average precision
(step-wise, as scikit-learn's ``average_precision_score``), accuracy at 0.5, log-loss, and how well the
predicted probabilities are calibrated: the Brier score (Brier, Monthly Weather Review 1950: mean
squared error of the probability), the expected calibration error over 10 equal-width bins (Naeini,
Cooper and Hauskrecht, AAAI 2015; Guo et al., ICML 2017) and the reliability curve it is computed from
(per bin: examples, mean predicted probability, observed default rate; bins as scikit-learn's
``calibration_curve(strategy="uniform")``). The curve travels as flat metrics named
``reliability/BB/n|predicted|observed`` (BB the bin, 00..09; empty bins are absent) so it sits in the
same signed audit records as every other metric (:func:`reliability_from_metrics` reads it back).
Regression: RMSE, MAE, R^2 (in the target's original units).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "RELIABILITY_BINS",
    "ReliabilityBin",
    "accuracy",
    "brier_score",
    "classification_metrics",
    "expected_calibration_error",
    "headline_metrics",
    "log_loss",
    "pr_auc",
    "regression_metrics",
    "reliability_curve",
    "reliability_from_metrics",
    "roc_auc",
]

CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "accuracy", "log_loss", "brier", "ece")
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


def brier_score(y: NDArray[np.float64], prob: NDArray[np.float64]) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome."""
    _check(y, prob)
    return float(np.mean((prob - (y == 1)) ** 2))


#: equal-width bins of the reliability curve and the expected calibration error
RELIABILITY_BINS = 10
_RELIABILITY_KEY = re.compile(r"reliability/([0-9]{2})/(n|predicted|observed)")


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin [lower, upper] of the reliability curve: ``n`` examples whose mean predicted
    probability is ``predicted`` and of which a fraction ``observed`` were positive (defaults)."""

    index: int
    n: int
    predicted: float
    observed: float

    @property
    def lower(self) -> float:
        return self.index / RELIABILITY_BINS

    @property
    def upper(self) -> float:
        return (self.index + 1) / RELIABILITY_BINS


def reliability_curve(y: NDArray[np.float64], prob: NDArray[np.float64]) -> list[ReliabilityBin]:
    """The non-empty bins of RELIABILITY_BINS equal-width bins over [0, 1]. A probability on an
    inner edge goes to the lower bin (scikit-learn's ``calibration_curve`` does the same)."""
    _check(y, prob)
    if np.any((prob < 0) | (prob > 1)):
        raise DataError("a reliability curve needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    n = np.bincount(ids, minlength=RELIABILITY_BINS)
    pred = np.bincount(ids, weights=prob, minlength=RELIABILITY_BINS)
    pos = np.bincount(ids, weights=(y == 1).astype(np.float64), minlength=RELIABILITY_BINS)
    return [ReliabilityBin(i, int(n[i]), float(pred[i] / n[i]), float(pos[i] / n[i]))
            for i in range(RELIABILITY_BINS) if n[i]]


def _ece(curve: list[ReliabilityBin]) -> float:
    total = sum(b.n for b in curve)
    return float(sum(b.n / total * abs(b.observed - b.predicted) for b in curve))


def expected_calibration_error(y: NDArray[np.float64], prob: NDArray[np.float64]) -> float:
    """Sum over the reliability curve's bins of (bin share) * |observed rate - mean prediction|."""
    return _ece(reliability_curve(y, prob))


def _reliability_metrics(curve: list[ReliabilityBin]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in curve:
        key = f"reliability/{b.index:02d}"
        out |= {f"{key}/n": float(b.n), f"{key}/predicted": b.predicted,
                f"{key}/observed": b.observed}
    return out


def reliability_from_metrics(metrics: dict[str, float]) -> list[ReliabilityBin]:
    """The reliability curve carried in a metrics dict (empty if it carries none); raise
    :class:`DataError` when its entries are incomplete or out of range."""
    parts: dict[int, dict[str, float]] = {}
    for k, v in metrics.items():
        m = _RELIABILITY_KEY.fullmatch(k)
        if m is not None:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = v
    curve = []
    for i, p in sorted(parts.items()):
        if set(p) != {"n", "predicted", "observed"} or not 0 <= i < RELIABILITY_BINS:
            raise DataError(f"reliability bin {i}: incomplete or outside 0..{RELIABILITY_BINS - 1}")
        n = p["n"]
        if not (n >= 1 and float(n).is_integer()):
            raise DataError(f"reliability bin {i}: count {n!r} is not a positive integer")
        lo, hi = i / RELIABILITY_BINS, (i + 1) / RELIABILITY_BINS
        if not (lo <= p["predicted"] <= hi and 0 <= p["observed"] <= 1):
            raise DataError(f"reliability bin {i}: mean prediction outside [{lo}, {hi}] or "
                            "observed rate outside [0, 1]")
        curve.append(ReliabilityBin(i, int(n), p["predicted"], p["observed"]))
    return curve


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without the reliability curve's entries (for tables and one-line summaries)."""
    return {k: v for k, v in metrics.items() if not k.startswith("reliability/")}


def classification_metrics(y: NDArray[np.float64], prob: NDArray[np.float64]) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    curve = reliability_curve(y, prob)
    return {"roc_auc": roc_auc(y, prob), "pr_auc": pr_auc(y, prob),
            "accuracy": accuracy(y, prob), "log_loss": log_loss(y, prob),
            "brier": brier_score(y, prob), "ece": _ece(curve), **_reliability_metrics(curve)}


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
