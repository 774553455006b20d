"""Federated standardisation: per-bank moment vectors, summed across the federation.

Each bank computes ``moments(X_train)`` = [count, sum_1..sum_d, sumsq_1..sumsq_d] (float64) on its
own training rows. The federation sums these vectors (through the secure aggregator, so only the
federation-wide totals are revealed) and every bank applies the same
``Standardizer.from_summed_moments(total)``. The result equals centralized standardisation of the
union of the training rows (population variance, ddof=0). With DP on, each bank instead adds
:func:`scaled_moments` plus its noise share and the release is in the ledger
(securefl.protocol.round0; docs/data.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from securefl.errors import DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Standardizer", "TargetScaler", "moments", "moments_sensitivity", "scaled_moments",
           "target_values", "unscale_moments"]

#: a column whose variance is at most count * this * mean^2 counts as constant: the rounding error
#: of sumsq/count - mean^2 over ``count`` float64 additions stays below it.
_REL_VAR_FLOOR = 4 * float(np.finfo(np.float64).eps)


def moments(X: NDArray[np.floating]) -> NDArray[np.float64]:
    """[count, sum over rows of each column (d), sum of squares of each column (d)], float64."""
    if X.ndim != 2:
        raise DataError(f"moments need a 2-D matrix, got shape {X.shape}")
    x = np.asarray(X, dtype=np.float64)
    return np.concatenate(([float(x.shape[0])], x.sum(axis=0), np.square(x).sum(axis=0)))


def _centre_scale(ranges: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A 0/1 input keeps its values (so a one-hot block has one non-zero per row); any other input
    is mapped from its public range [low, high] onto [-1, 1]."""
    r = np.asarray(ranges, dtype=np.float64)
    binary = (r[:, 0] == 0.0) & (r[:, 1] == 1.0)
    centre = np.where(binary, 0.0, (r[:, 0] + r[:, 1]) / 2)
    scale = np.where(binary, 1.0, np.maximum((r[:, 1] - r[:, 0]) / 2, 1e-12))
    return centre, scale


def scaled_moments(X: NDArray[np.floating], ranges: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`moments` of u = clip((x - centre) / scale, -1, 1) with the public centre and scale of
    each input's ``ranges`` (rows [low, high]): what a bank adds to a DP-noised round-0 sum. One
    row adds at most :func:`moments_sensitivity` to it in L2 norm."""
    centre, scale = _centre_scale(ranges)
    u = np.clip((np.asarray(X, dtype=np.float64) - centre) / scale, -1.0, 1.0)
    return moments(u)


def unscale_moments(total: NDArray[np.float64], ranges: NDArray[np.float64]) -> NDArray[np.float64]:
    """The moments of x from the summed moments of u = (x - c) / s: sum x = s sum u + c N and
    sum x^2 = s^2 sum u^2 + 2 c s sum u + c^2 N."""
    centre, scale = _centre_scale(ranges)
    v = np.asarray(total, dtype=np.float64)
    d = (v.size - 1) // 2
    n, su, qu = v[0], v[1:1 + d], v[1 + d:]
    return np.concatenate(([n], scale * su + centre * n,
                           scale ** 2 * qu + 2 * centre * scale * su + centre ** 2 * n))


def moments_sensitivity(groups: tuple[tuple[int, ...], ...]) -> float:
    """L2 bound of one row's :func:`scaled_moments` vector: 1 (the count) plus, per group of inputs
    with at most one non-zero per row (|u| <= 1), u^2 + u^4 <= 2: sqrt(1 + 2 * groups)."""
    return float(np.sqrt(1.0 + 2.0 * len(groups)))


def _mean_std(total: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    v = np.asarray(total, dtype=np.float64)
    if v.ndim != 1 or v.size < 3 or v.size % 2 != 1:
        raise DataError(f"a moment vector has length 1 + 2d, got shape {v.shape}")
    count = float(v[0])
    if not (count >= 1 and np.all(np.isfinite(v))):
        raise DataError(f"invalid moment vector (count {count})")
    d = (v.size - 1) // 2
    mean = v[1:1 + d] / count
    var = np.maximum(v[1 + d:] / count - np.square(mean), 0.0)
    constant = var <= _REL_VAR_FLOOR * max(count, 16.0) * np.square(mean)
    std = np.where(constant, 1.0, np.sqrt(var))  # std floor: a constant column maps to 0
    return count, mean, std


@dataclass(frozen=True, eq=False)
class Standardizer:
    """x -> (x - mean) / std per feature; ``std`` is 1 for constant columns."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    count: float

    @classmethod
    def from_summed_moments(cls, total: NDArray[np.float64]) -> Standardizer:
        """The standardizer of the union of the rows whose :func:`moments` add up to ``total``."""
        count, mean, std = _mean_std(total)
        return cls(mean=mean, std=std, count=count)

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def transform(self, X: NDArray[np.floating]) -> NDArray[np.float32]:
        """Standardised copy of ``X`` (rows x dim) as float32."""
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise DataError(f"expected {self.dim} features, got shape {X.shape}")
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


def target_values(y: NDArray[np.floating],
                  transform_name: Literal["identity", "signed_log1p"]) -> NDArray[np.float64]:
    """f(y): the regression target before centring; take :func:`moments` of this column."""
    y64 = np.asarray(y, dtype=np.float64)
    if transform_name == "signed_log1p":
        return np.sign(y64) * np.log1p(np.abs(y64))
    return y64


@dataclass(frozen=True)
class TargetScaler:
    """Regression target: t = (f(y) - mean) / std, with f the identity or signed log1p.

    ``mean``/``std`` are fitted on the training targets only (from summed 1-column moments, the
    same federated sum as the features). :meth:`inverse` maps model outputs back to label units.
    """

    mean: float
    std: float
    transform_name: Literal["identity", "signed_log1p"] = "identity"

    @classmethod
    def from_summed_moments(cls, total: NDArray[np.float64],
                            transform_name: Literal["identity", "signed_log1p"] = "identity",
                            ) -> TargetScaler:
        _, mean, std = _mean_std(total)
        if mean.size != 1:
            raise DataError("a target moment vector has length 3")
        return cls(mean=float(mean[0]), std=float(std[0]), transform_name=transform_name)

    def forward(self, y: NDArray[np.floating]) -> NDArray[np.float64]:
        """f(y) before centring."""
        return target_values(y, self.transform_name)

    def transform(self, y: NDArray[np.floating]) -> NDArray[np.float32]:
        return ((self.forward(y) - self.mean) / self.std).astype(np.float32)

    def inverse(self, t: NDArray[np.floating]) -> NDArray[np.float64]:
        """Model output in standardised units -> label units."""
        z = np.asarray(t, dtype=np.float64) * self.std + self.mean
        if self.transform_name == "signed_log1p":
            return np.sign(z) * np.expm1(np.abs(z))
        return z
