"""CKKS encoding rules: the bound every encrypted coordinate respects (overflow check) and the
FedAvg weight slot of a release (protocols/ckks/spec.md, "Weight slot")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import IntegrityError
from securefl.he.flooding import DEFAULT_MAX_QUERIES, release_error_bound, tail_factor
from securefl.he.params import CKKSParams

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["noise_bound", "split_weight_slot"]


def noise_bound(clip_norm: float, noise_std: float, num_values: int) -> float:
    """Bound B on every |x_j| a client encrypts: clip_norm + Gaussian tail (2^-40 over all
    coords)."""
    if noise_std == 0:
        return clip_norm
    return clip_norm + tail_factor(num_values) * noise_std


def split_weight_slot(
    released: NDArray[np.float64],
    public_weights: Iterable[float],
    *,
    params: CKKSParams,
    num_summands: int,
    max_queries: int = DEFAULT_MAX_QUERIES,
) -> tuple[NDArray[np.float64], float]:
    """Split a release of d + 1 values into the update sum and the sum of the contributors' FedAvg
    weights (the last slot, spec.md "Weight slot"). The released weight sum must equal the public
    weights of the manifest's contributors within the release error bound
    (securefl.he.flooding.release_error_bound); IntegrityError otherwise: the denominator then
    does not describe the contributions in the sum."""
    if released.ndim != 1 or released.size < 2:
        raise IntegrityError("a release with a weight slot has at least 2 values")
    total, weight_total = released[:-1], float(released[-1])
    expected = float(sum(public_weights))
    bound = release_error_bound(
        num_summands, params.poly_modulus_degree, params.scale, released.size,
        max_queries=max_queries,
    )
    if not abs(weight_total - expected) <= bound or weight_total <= 0:
        raise IntegrityError(
            f"the released weight sum {weight_total:.6g} differs from the contributors' public "
            f"weights {expected:.6g} by more than the release error bound {bound:.2g}"
        )
    return total, weight_total
