"""Accountants: (epsilon, delta) recomputed from privacy events by independent libraries.

Registry (as in Opacus' ``accountants/registry``): ``"rdp"`` Opacus' RDP analysis
(Mironov 2017; Mironov, Talwar, Zhang 2019 for the Poisson-subsampled Gaussian), ``"prv"`` Opacus'
PRV accountant (Gopi, Lee, Wutschitz, NeurIPS 2021), ``"pld"`` Google dp-accounting's privacy-loss
distribution accountant (Doroshenko et al. 2022). The maths lives in the libraries; this module only
converts securefl events into each library's representation.

Conventions: events are accounted under add/remove-one neighbouring. An event recorded under
replace-one is converted first: a Gaussian (or DDG) without sampling has twice the sensitivity, so
``GaussianEvent(z)`` becomes ``GaussianEvent(z / 2)``; a Poisson-sampled event under replace-one is
rejected (:class:`UnsupportedEventError`) rather than approximated.

The distributed discrete Gaussian (DDG, Kairouz, Liu, Steinke, ICML 2021, arXiv 2102.06387) is
accounted by its RDP curve, Proposition 14 (the bound behind Theorem 1): for n survivors with
per-share std sigma, L2/L1 sensitivities D2/D1 (integer units) and dimension d, with
tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1)), the sum satisfies (alpha, eps(alpha))-RDP:
eps(alpha) = min(alpha/2 * D2^2/(n sigma^2) + tau d,
                 alpha/2 * (D2^2/(n sigma^2) + 2 D1 tau/(sqrt(n) sigma) + tau^2 d),
                 alpha/2 * (D2/(sqrt(n) sigma) + tau sqrt(d))^2).
Only the RDP accountant can compose it; ``"prv"`` and ``"pld"`` raise
:class:`UnsupportedEventError` for DDG events (:func:`epsilon` with ``fallback=True`` then uses
``"rdp"`` and says so in its result).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from securefl.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.errors import PrivacyError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.dp.ledger import LedgerEntry

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accountant",
    "UnsupportedEventError",
    "calibrate_noise",
    "ddg_rdp",
    "epsilon_of_events",
    "max_rounds_within",
    "to_add_remove",
]

AccountantName = Literal["rdp", "prv", "pld"]

#: RDP orders: Opacus' default alphas (RDPAccountant.DEFAULT_ALPHAS), extended to 256.
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
                                      + [80, 96, 128, 256])


class UnsupportedEventError(PrivacyError):
    """This accountant cannot account this event (it is not approximated silently)."""

    code = "SFL503"
    default_hint = "use accountant='rdp', which supports every securefl event"


# --- event normalisation -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Gauss:
    """``count`` runs of a Poisson(q)-sampled Gaussian with noise multiplier z (add/remove)."""

    q: float
    z: float
    count: int


@dataclass
class _Flat:
    gauss: list[_Gauss] = field(default_factory=list)
    ddg: list[tuple[DistributedDiscreteGaussianEvent, int]] = field(default_factory=list)


def to_add_remove(event: Event) -> Event:
    """The add/remove-equivalent of an event recorded under replace-one (see module docstring)."""
    if isinstance(event, GaussianEvent):
        return GaussianEvent(event.noise_multiplier / 2.0)
    if isinstance(event, DistributedDiscreteGaussianEvent):
        l1 = None if event.sensitivity_l1_int is None else 2.0 * event.sensitivity_l1_int
        return DistributedDiscreteGaussianEvent(
            sigma_int=event.sigma_int, survivors=event.survivors,
            sensitivity_int=2.0 * event.sensitivity_int, dim=event.dim, sensitivity_l1_int=l1)
    if isinstance(event, SelfComposedEvent):
        return SelfComposedEvent(to_add_remove(event.event), event.count)
    if isinstance(event, ComposedEvent):
        return ComposedEvent([to_add_remove(e) for e in event.events])
    if isinstance(event, PoissonSampledEvent) and event.rate == 1.0:
        return to_add_remove(event.event)
    raise UnsupportedEventError(
        f"{type(event).__name__} under replace-one neighbouring is not supported; "
        "record Poisson-sampled mechanisms under add_remove")


def _flatten(event: Event, q: float, count: int, out: _Flat) -> None:
    if count == 0:
        return
    if isinstance(event, GaussianEvent):
        out.gauss.append(_Gauss(q, event.noise_multiplier, count))
    elif isinstance(event, PoissonSampledEvent):
        _flatten(event.event, q * event.rate, count, out)  # nested Poisson samples compose
    elif isinstance(event, SelfComposedEvent):
        _flatten(event.event, q, count * event.count, out)
    elif isinstance(event, ComposedEvent):
        for e in event.events:
            _flatten(e, q, count, out)
    elif isinstance(event, DistributedDiscreteGaussianEvent):
        if q != 1.0:
            raise UnsupportedEventError("a Poisson-sampled distributed discrete Gaussian is not "
                                        "supported (clients are not subsampled in securefl)")
        out.ddg.append((event, count))
    else:  # pragma: no cover - the Event union is closed
        raise UnsupportedEventError(f"unknown event {type(event).__name__}")


def _flat(events: Sequence[Event]) -> _Flat:
    out = _Flat()
    for e in events:
        _flatten(e, 1.0, 1, out)
    return out


def _merge_unsampled(gauss: list[_Gauss]) -> list[_Gauss]:
    """Replace all unsampled Gaussians by one with z = (sum_i count_i / z_i^2)^(-1/2).

    Exact, not a bound: the Gaussian mechanism with noise multiplier z is exactly (1/z)-GDP and
    mu_i-GDP mechanisms compose to exactly sqrt(sum mu_i^2)-GDP (Dong, Roth, Su, "Gaussian
    Differential Privacy", JRSS-B 2022, Corollary 3.3). Used by the PLD and PRV accountants,
    whose cost grows with the number of distinct compositions.
    """
    unsampled = [g for g in gauss if g.q == 1.0]
    if len(unsampled) <= 1 and all(g.count == 1 for g in unsampled):
        return gauss
    rest = [g for g in gauss if g.q != 1.0]
    if any(g.z == 0.0 for g in unsampled):
        return [*rest, _Gauss(1.0, 0.0, 1)]
    mu2 = math.fsum(g.count / (g.z * g.z) for g in unsampled)
    return [*rest, _Gauss(1.0, 1.0 / math.sqrt(mu2), 1)]


# --- DDG (Kairouz, Liu, Steinke 2021, Proposition 14) --------------------------------------------
def ddg_rdp(event: DistributedDiscreteGaussianEvent,
            orders: Sequence[float]) -> NDArray[np.float64]:
    """RDP eps(alpha) of one release of the distributed discrete Gaussian sum, at each order.

    arXiv 2102.06387, Proposition 14 (requires sigma >= 1/2, checked by the event). D1 defaults to
    min(sqrt(d) * D2, D2^2), valid for integer vectors (|x_i| >= 1 where x_i != 0).
    """
    n, sigma, d = event.survivors, event.sigma_int, event.dim
    d2 = event.sensitivity_int
    d1 = event.sensitivity_l1_int
    if d1 is None:
        d1 = min(math.sqrt(d) * d2, d2 * d2)
    tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    l2s = d2 / (math.sqrt(n) * sigma)
    l1s = d1 / (math.sqrt(n) * sigma)
    a = np.asarray(orders, dtype=np.float64)
    t1 = a / 2.0 * l2s**2 + tau * d
    t2 = a / 2.0 * (l2s**2 + 2.0 * l1s * tau + tau**2 * d)
    t3 = a / 2.0 * (l2s + math.sqrt(d) * tau) ** 2
    out: NDArray[np.float64] = np.minimum(np.minimum(t1, t2), t3)
    return out


# --- accountants ---------------------------------------------------------------------------------
class Accountant(Protocol):
    name: str

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        """Epsilon of the adaptive composition of ``events`` (add/remove) at ``delta``."""
        ...


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta) \
            or not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


class RdpAccountant:
    """Opacus' RDP analysis (``opacus.accountants.analysis.rdp``) plus the DDG RDP curve."""

    name = "rdp"

    def __init__(self, orders: Sequence[float] = RDP_ORDERS) -> None:
        self.orders = tuple(orders)

    def rdp(self, events: Sequence[Event]) -> NDArray[np.float64]:
        from opacus.accountants.analysis import rdp as rdp_analysis

        flat = _flat(events)
        total = np.zeros(len(self.orders), dtype=np.float64)
        for g in flat.gauss:
            if g.z == 0.0:
                if g.q > 0:
                    return np.full(len(self.orders), np.inf)
                continue
            total = total + np.asarray(rdp_analysis.compute_rdp(
                q=g.q, noise_multiplier=g.z, steps=g.count, orders=list(self.orders)),
                dtype=np.float64)
        for ev, count in flat.ddg:
            total = total + count * ddg_rdp(ev, self.orders)
        return total

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        from opacus.accountants.analysis import rdp as rdp_analysis

        _check_delta(delta)
        rdp = self.rdp(events)
        if not np.any(rdp):
            return 0.0
        if not np.all(np.isfinite(rdp)):
            return math.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the smallest alpha"
            eps, _ = rdp_analysis.get_privacy_spent(orders=list(self.orders), rdp=rdp, delta=delta)
        return float(eps)


class PrvAccountant:
    """Opacus' PRV accountant (``opacus.accountants.PRVAccountant``), eps_error 0.01."""

    name = "prv"

    def __init__(self, eps_error: float = 0.01) -> None:
        self.eps_error = eps_error

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        from opacus.accountants import PRVAccountant

        _check_delta(delta)
        flat = _flat(events)
        if flat.ddg:
            raise UnsupportedEventError("the PRV accountant cannot account a distributed discrete "
                                        "Gaussian event")
        hist = [(g.z, g.q, g.count) for g in _merge_unsampled(flat.gauss) if g.q > 0]
        if not hist:
            return 0.0
        if any(z == 0.0 for z, _, _ in hist):
            return math.inf
        acc = PRVAccountant()
        acc.history = hist
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # log(1 - q) at q = 1 inside Opacus
            return float(acc.get_epsilon(delta=delta, eps_error=self.eps_error))


class PldAccountant:
    """Google dp-accounting's PLD accountant (``dp_accounting.pld.PLDAccountant``)."""

    name = "pld"

    def __init__(self, value_discretization_interval: float = 1e-4) -> None:
        self.value_discretization_interval = value_discretization_interval

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        import dp_accounting

        _check_delta(delta)
        flat = _flat(events)
        if flat.ddg:
            raise UnsupportedEventError("the PLD accountant cannot account a distributed discrete "
                                        "Gaussian event")
        parts = []
        for g in _merge_unsampled(flat.gauss):
            if g.q == 0:
                continue
            if g.z == 0.0:
                return math.inf
            inner = dp_accounting.GaussianDpEvent(g.z)
            ev = inner if g.q == 1.0 else dp_accounting.PoissonSampledDpEvent(g.q, inner)
            parts.append(dp_accounting.SelfComposedDpEvent(ev, g.count))
        if not parts:
            return 0.0
        acc = dp_accounting.pld.PLDAccountant(
            value_discretization_interval=self.value_discretization_interval)
        acc.compose(dp_accounting.ComposedDpEvent(parts))
        return float(acc.get_epsilon(delta))


ACCOUNTANTS: dict[str, Callable[[], Accountant]] = {
    "rdp": RdpAccountant,
    "prv": PrvAccountant,
    "pld": PldAccountant,
}


def get_accountant(name: str) -> Accountant:
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise PrivacyError(f"unknown accountant {name!r}; choose one of {sorted(ACCOUNTANTS)}",
                           hint="accountants: rdp, prv, pld") from None


def epsilon_of_events(events: Sequence[Event], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of add/remove ``events`` (named accountant)."""
    return get_accountant(accountant).epsilon(events, delta)


def entry_events(entries: Sequence[LedgerEntry]) -> list[Event]:
    """The add/remove-equivalent events of ledger entries (replace-one converted)."""
    return [e.event if e.neighbouring == "add_remove" else to_add_remove(e.event) for e in entries]


def _per_round(noise_multiplier: float, sampling_rate: float, steps_per_round: int) -> Event:
    g = GaussianEvent(noise_multiplier)
    inner: Event = g if sampling_rate == 1.0 else PoissonSampledEvent(sampling_rate, g)
    return SelfComposedEvent(inner, steps_per_round)


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, sampling_rate: float = 1.0,
                    accountant: str = "rdp", *, steps_per_round: int = 1,
                    rel_tol: float = 1e-3) -> float:
    """Smallest noise multiplier (within ``rel_tol``) whose ``rounds * steps_per_round``
    Poisson(``sampling_rate``)-sampled Gaussian steps stay within ``target_epsilon`` at ``delta``.

    Binary search; the returned value always satisfies the target (it is the upper end).
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise PrivacyError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be an integer >= 1, got {rounds!r}")
    acc = get_accountant(accountant)

    def eps(z: float) -> float:
        return acc.epsilon([SelfComposedEvent(_per_round(z, sampling_rate, steps_per_round),
                                              rounds)], delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise PrivacyError(f"no noise multiplier <= 1e6 reaches epsilon {target_epsilon}")
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2.0
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def max_rounds_within(target_epsilon: float, delta: float, per_round: Sequence[Event],
                      accountant: str = "rdp", *, spent: Sequence[Event] = (),
                      limit: int = 1_000_000) -> int:
    """Largest T (0 <= T <= limit) such that ``spent`` followed by T repetitions of ``per_round``
    stays within ``target_epsilon`` at ``delta`` (epsilon is monotone in T: exponential then
    binary search)."""
    acc = get_accountant(accountant)

    def ok(t: int) -> bool:
        evs = list(spent) + ([SelfComposedEvent(ComposedEvent(list(per_round)), t)] if t else [])
        return acc.epsilon(evs, delta) <= target_epsilon

    if not ok(0):
        return 0
    lo, hi = 0, 1
    while ok(hi):
        lo = hi
        if hi >= limit:
            return limit
        hi = min(hi * 2, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
