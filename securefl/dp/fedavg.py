"""Client-level DP for federated averaging (DP-FedAvg, McMahan et al., ICLR 2018): clip, noise.

Each client clips its update to L2 norm C and adds a noise *share*; the shares of any ``h`` honest
clients carry the planned noise std z * C, so each share has variance (z C)^2 / h. ``h`` is the
smallest set of honest inputs whose sum can be revealed (:class:`securefl.protocol.plan.NoisePlan`:
the survivor floor t minus the assumed colluders c, who can subtract their own shares, or SecAgg+'s
minimum isolatable honest set). When s >= t clients survive, the honest part of the released sum
carries variance (s - c) (z C)^2 / h, i.e. an effective noise multiplier z * sqrt((s - c) / h); the
ledger records that value (never less than planned), so a round with fewer survivors records a
larger epsilon than one where all survive. :func:`client_round_event` builds this event for the
budget plan and for the ledger record alike, so a plan never under-counts what a round records.

Units: model units for the continuous path (C, std); integer units of the SecAgg encoder for the
discrete path (sensitivity_int, sigma2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from securefl.dp.events import DistributedDiscreteGaussianEvent, GaussianEvent
from securefl.errors import PrivacyError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.dp.events import Event
    from securefl.protocol.plan import NoisePlan
    from securefl.protocol.quantize import Encoding

__all__ = [
    "client_level_event",
    "client_round_event",
    "clip_l2",
    "ddg_event",
    "ddg_share_sigma2",
    "noise_share_std",
    "rounded_l2_bound",
]


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{name} must be finite and > 0, got {value!r}")


def _nonneg(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise PrivacyError(f"{name} must be finite and >= 0, got {value!r}")


def _survivors(min_survivors: int, survivors: int | None = None) -> None:
    if isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or min_survivors < 1:
        raise PrivacyError(f"min_survivors must be an integer >= 1, got {min_survivors!r}")
    if survivors is not None and (not isinstance(survivors, int) or survivors < min_survivors):
        raise PrivacyError(f"survivors ({survivors!r}) below min_survivors ({min_survivors}): the "
                           "round carries less than the planned noise and must abort")


def clip_l2(update: NDArray[np.float64], clip_norm: float) -> tuple[NDArray[np.float64], float]:
    """``update`` scaled to L2 norm <= clip_norm, and its norm before clipping."""
    _positive("clip_norm", clip_norm)
    x = np.asarray(update, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise PrivacyError("update contains NaN or infinity")
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        x = x * (clip_norm / norm)
    return x, norm


def noise_share_std(noise_multiplier: float, clip_norm: float, min_survivors: int) -> float:
    """Std of one client's continuous share: z * C / sqrt(t)."""
    _nonneg("noise_multiplier", noise_multiplier)
    _positive("clip_norm", clip_norm)
    _survivors(min_survivors)
    return noise_multiplier * clip_norm / math.sqrt(min_survivors)


def client_level_event(noise_multiplier: float, min_survivors: int,
                       survivors: int) -> GaussianEvent:
    """The Gaussian mechanism actually released by a round (continuous shares): z * sqrt(s / t)."""
    _nonneg("noise_multiplier", noise_multiplier)
    _survivors(min_survivors, survivors)
    return GaussianEvent(noise_multiplier * math.sqrt(survivors / min_survivors))


def client_round_event(plan: NoisePlan, survivors: int, *, encoding: Encoding | None = None,
                       dim: int | None = None) -> Event:
    """The client-level mechanism of a round with ``survivors`` survivors, as seen by the server and
    the assumed colluders (who subtract their own shares): the one function both the budget plan
    (``survivors = plan.min_survivors``, the worst admissible round) and the ledger record call.

    Continuous shares (plain, ckks): ``GaussianEvent(z * sqrt(honest / h))``. SecAgg (``encoding``
    and ``dim`` given): the honest shares of N_Z(0, encoding.noise_sigma2_int) with the encoder's
    rounding-inflated L2 sensitivity (Kairouz, Liu, Steinke, ICML 2021)."""
    honest = plan.honest_shares(survivors)
    if encoding is None:
        return client_level_event(plan.noise_multiplier, plan.honest_floor, honest)
    if dim is None:
        raise PrivacyError("a SecAgg round's event needs the update dimension")
    return ddg_event(encoding.noise_sigma2_int, honest, encoding.sensitivity_int, dim)


def ddg_share_sigma2(noise_multiplier: float, sensitivity_int: float, min_survivors: int) -> float:
    """Variance of one client's discrete Gaussian share: (z * Delta2)^2 / t (integer units),
    so any t shares sum to variance (z * Delta2)^2 (Kairouz, Liu, Steinke, ICML 2021, section 4)."""
    _nonneg("noise_multiplier", noise_multiplier)
    _positive("sensitivity_int", sensitivity_int)
    _survivors(min_survivors)
    return (noise_multiplier * sensitivity_int) ** 2 / min_survivors


def ddg_event(sigma2_share: float, survivors: int, sensitivity_int: float, dim: int
              ) -> DistributedDiscreteGaussianEvent:
    """The DDG mechanism a SecAgg round released: ``survivors`` shares of N_Z(0, sigma2_share)."""
    _positive("sigma2_share", sigma2_share)
    return DistributedDiscreteGaussianEvent(sigma_int=math.sqrt(sigma2_share), survivors=survivors,
                                            sensitivity_int=sensitivity_int, dim=dim)


def rounded_l2_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """L2 bound of a scaled update (norm <= ``scaled_clip``) after conditional randomized rounding
    with bias parameter ``beta`` (Kairouz, Liu, Steinke, ICML 2021, section 4.1):
    min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))); beta = 0 gives the
    worst case c + sqrt(d)."""
    _nonneg("scaled_clip", scaled_clip)
    if not 0 <= beta < 1:
        raise PrivacyError(f"beta must be in [0, 1), got {beta!r}")
    worst = scaled_clip + math.sqrt(dim)
    if beta == 0:
        return worst
    sq = scaled_clip**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (
        scaled_clip + math.sqrt(dim) / 2.0)
    return min(worst, math.sqrt(sq))
