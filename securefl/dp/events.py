"""Privacy mechanisms as frozen, validated values (in the spirit of dp_accounting's ``DpEvent``).

An event says *what was released*, never what it costs: every accountant in
:mod:`securefl.dp.accountants` replays events into its own representation. Events are validated
when they are constructed (and when they are decoded, since msgspec runs ``__post_init__``), so an
invalid parameter never reaches a ledger. Events are never removed or changed in meaning; new
parameters are added as optional fields.

Units:
* ``GaussianEvent.noise_multiplier``: noise std divided by the L2 sensitivity (clip norm), as in
  Opacus and dp_accounting.
* ``DistributedDiscreteGaussianEvent``: integer units of the SecAgg encoder (after scaling):
  ``sigma_int`` is the std parameter of *each* survivor's discrete Gaussian share, so the released
  sum carries N_Z(0, sigma_int^2) summed ``survivors`` times; ``sensitivity_int`` is the L2 norm
  bound of one client's encoded (scaled, rounded) update, including the rounding inflation. Under
  collusion (a ledger entry's ``colluders``) ``survivors`` counts the shares the adversary cannot
  remove: the honest survivors' shares of the smallest sum that can be revealed.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeAlias

import msgspec

from securefl.errors import PrivacyError

__all__ = [
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "Event",
    "GaussianEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
]


#: a finite number >= 0 (the JSON Schema states the bound; __post_init__ also rejects NaN/inf)
NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]


def _finite_nonneg(owner: str, field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrivacyError(f"{owner}.{field} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise PrivacyError(f"{owner}.{field} must be finite and >= 0, got {value!r}")


def _int_at_least(owner: str, field: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PrivacyError(f"{owner}.{field} must be an integer >= {low}, got {value!r}")


class GaussianEvent(msgspec.Struct, frozen=True, tag="gaussian", forbid_unknown_fields=True):
    """One Gaussian mechanism with std = noise_multiplier * L2 sensitivity."""

    noise_multiplier: NonNeg

    def __post_init__(self) -> None:
        _finite_nonneg("GaussianEvent", "noise_multiplier", self.noise_multiplier)


class DistributedDiscreteGaussianEvent(msgspec.Struct, frozen=True,
                                       tag="distributed_discrete_gaussian",
                                       forbid_unknown_fields=True):
    """Sum over ``survivors`` clients of independent N_Z(0, sigma_int^2)^dim noise shares
    (Kairouz, Liu, Steinke, ICML 2021), released once.

    ``sensitivity_l1_int``: optional L1 bound of one encoded update; when absent the accountant uses
    min(sqrt(dim) * L2, L2^2), valid for integer vectors.
    """

    sigma_int: Annotated[float, msgspec.Meta(ge=0.5)]
    survivors: Annotated[int, msgspec.Meta(ge=1)]
    sensitivity_int: NonNeg
    dim: Annotated[int, msgspec.Meta(ge=1)]
    sensitivity_l1_int: NonNeg | None = None

    def __post_init__(self) -> None:
        owner = "DistributedDiscreteGaussianEvent"
        _finite_nonneg(owner, "sigma_int", self.sigma_int)
        if self.sigma_int < 0.5:
            raise PrivacyError(f"{owner}.sigma_int must be >= 0.5 (Kairouz et al. 2021, Thm 1), "
                               f"got {self.sigma_int!r}")
        _int_at_least(owner, "survivors", self.survivors, 1)
        _finite_nonneg(owner, "sensitivity_int", self.sensitivity_int)
        _int_at_least(owner, "dim", self.dim, 1)
        if self.sensitivity_l1_int is not None:
            _finite_nonneg(owner, "sensitivity_l1_int", self.sensitivity_l1_int)


class PoissonSampledEvent(msgspec.Struct, frozen=True, tag="poisson_sampled",
                          forbid_unknown_fields=True):
    """``event`` on a Poisson sample: each record (or client) is included w.p. ``rate``."""

    rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    event: Event

    def __post_init__(self) -> None:
        _finite_nonneg("PoissonSampledEvent", "rate", self.rate)
        if self.rate > 1:
            raise PrivacyError(f"PoissonSampledEvent.rate must be in [0, 1], got {self.rate!r}")


class SelfComposedEvent(msgspec.Struct, frozen=True, tag="self_composed",
                        forbid_unknown_fields=True):
    """``event`` run ``count`` times (adaptive composition)."""

    event: Event
    count: Annotated[int, msgspec.Meta(ge=0)]

    def __post_init__(self) -> None:
        _int_at_least("SelfComposedEvent", "count", self.count, 0)


class ComposedEvent(msgspec.Struct, frozen=True, tag="composed", forbid_unknown_fields=True):
    """Each of ``events`` run once (adaptive composition)."""

    events: list[Event]


Event: TypeAlias = Annotated[
    GaussianEvent | DistributedDiscreteGaussianEvent | PoissonSampledEvent | SelfComposedEvent
    | ComposedEvent,
    msgspec.Meta(description="a privacy mechanism (tagged by its `type` field)"),
]

EventTag = Literal["gaussian", "distributed_discrete_gaussian", "poisson_sampled", "self_composed",
                   "composed"]
