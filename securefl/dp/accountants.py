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

Cost of the RDP accountant: Opacus' analysis runs O(distinct events x orders) times, not
O(rounds x orders x steps); the rest is one vector addition per ledger entry.

* Composition by count. RDP composes additively at every order (Mironov, "Renyi Differential
  Privacy", CSF 2017, Proposition 1), so k runs of the same unit mechanism (a Poisson(q)-sampled
  Gaussian step with multiplier z, or one DDG release) are (alpha, k eps(alpha))-RDP: an entry of
  k steps costs one multiplication of its unit's curve, not k evaluations. :class:`RdpAccount`
  accumulates these vectors, so a running epsilon is updated incrementally (one vector addition
  per new entry), in the same order as evaluating every entry afresh: same bits.
* Cached curves. Each unit's curve is computed once per process (LRU, keyed by the frozen event
  value) with Opacus' analysis (``opacus.accountants.analysis.rdp``, the Mironov, Talwar, Zhang 2019
  computation of the sampled Gaussian's RDP, Section 3.3) at each order, exactly the numbers
  ``compute_rdp`` returns; ``get_privacy_spent`` (Balle et al. 2020, Theorem 21) converts to
  (epsilon, delta). That one file of Opacus is loaded without Opacus' package ``__init__`` (which
  imports its whole training engine, seconds of start-up) when Opacus is not imported already.
* Noise calibration runs the same bisection as before with the same decisions, but a decision
  "epsilon(z) > target" evaluates only the orders it needs (:class:`_NoiseSearch`). Chiefly: at a
  fixed order the sampled Gaussian's RDP is non-increasing in z (a larger z is the smaller one
  plus independent Gaussian noise, i.e. post-processing, and Renyi divergence satisfies the
  data-processing inequality: van Erven and Harremoes, IEEE Trans. Inf. Theory 2014, arXiv
  1206.2459, Theorem 9), so an order above the target at z' is above it at every z < z' and is
  not recomputed there; RDP >= 0 and its monotonicity in the order settle more orders.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    from types import ModuleType

    from numpy.typing import NDArray

    from securefl.dp.ledger import LedgerEntry

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "Accountant",
    "RdpAccount",
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


# --- Opacus' RDP analysis ------------------------------------------------------------------------
_OPACUS_RDP = "opacus.accountants.analysis.rdp"
_analysis: ModuleType | None = None
_analysis_lock = threading.Lock()


def rdp_analysis() -> ModuleType:
    """Opacus' RDP analysis module (``opacus.accountants.analysis.rdp``).

    If Opacus is not imported yet, that one file is executed on its own (it imports only numpy and
    scipy.special) rather than through ``import opacus``, whose package ``__init__`` loads Opacus'
    whole training engine (seconds of start-up the accountant does not use). Same code, same
    numbers; falls back to the ordinary import when the file is not where Opacus keeps it.
    """
    global _analysis
    if _analysis is None:
        with _analysis_lock:
            if _analysis is None:
                _analysis = (sys.modules.get(_OPACUS_RDP) or _load_opacus_rdp_file()
                             or importlib.import_module(_OPACUS_RDP))
    return _analysis


def _load_opacus_rdp_file() -> ModuleType | None:
    try:
        spec = importlib.util.find_spec("opacus")  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    paths = [Path(r) / "accountants" / "analysis" / "rdp.py" for r in roots]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return None
    file_spec = importlib.util.spec_from_file_location("securefl.dp._opacus_rdp", path)
    if file_spec is None or file_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except ImportError:  # the file needs the package after all (e.g. a relative import)
        return None
    return module


# --- cached RDP curves of unit mechanisms --------------------------------------------------------
def _gauss_unit(q: float, z: float) -> Event:
    """The frozen event that keys the curve of one Poisson(q)-sampled Gaussian step."""
    g = GaussianEvent(float(z))
    return g if q == 1.0 else PoissonSampledEvent(float(q), g)


def _unit_rdp(unit: Hashable, alpha: float) -> float:
    """RDP at ``alpha`` of one run of a Gaussian unit: Opacus' ``compute_rdp`` with steps=1, i.e.
    exactly the element ``compute_rdp`` puts in its array for this order."""
    if isinstance(unit, GaussianEvent):
        q, z = 1.0, unit.noise_multiplier
    elif isinstance(unit, PoissonSampledEvent) and isinstance(unit.event, GaussianEvent):
        q, z = unit.rate, unit.event.noise_multiplier
    else:  # pragma: no cover - units are built by _gauss_unit
        raise UnsupportedEventError(f"not a Gaussian unit: {unit!r}")
    return float(rdp_analysis().compute_rdp(q=q, noise_multiplier=z, steps=1,
                                            orders=float(alpha)))


class _CurveCache:
    """RDP of distinct unit mechanisms at one tuple of orders, keyed by the frozen event value:
    per-order values (the noise search fills only the orders it needs) and whole curves. The
    least recently used units are dropped beyond ``MAX_UNITS``."""

    MAX_UNITS = 4096

    def __init__(self, orders: tuple[float, ...]) -> None:
        self.orders = orders
        self._values: OrderedDict[Hashable, dict[int, float]] = OrderedDict()
        self._curves: dict[Hashable, NDArray[np.float64]] = {}
        self._lock = threading.Lock()
        self.computed = 0  # per-order evaluations of Opacus' analysis (for tests and benchmarks)

    def _slot(self, unit: Hashable) -> dict[int, float]:
        with self._lock:
            slot = self._values.get(unit)
            if slot is None:
                slot = self._values[unit] = {}
                while len(self._values) > self.MAX_UNITS:
                    old, _ = self._values.popitem(last=False)
                    self._curves.pop(old, None)
            else:
                self._values.move_to_end(unit)
            return slot

    def value(self, unit: Hashable, i: int) -> float:
        """eps_unit(orders[i]) of one run of a Gaussian unit."""
        slot = self._slot(unit)
        got = slot.get(i)
        if got is None:
            got = slot[i] = _unit_rdp(unit, self.orders[i])
            self.computed += 1
        return got

    def curve(self, unit: Hashable) -> NDArray[np.float64]:
        """The unit's RDP curve at every order (read-only array)."""
        self._slot(unit)
        got = self._curves.get(unit)
        if got is None:
            if isinstance(unit, DistributedDiscreteGaussianEvent):
                got = ddg_rdp(unit, self.orders)
            else:
                got = np.array([self.value(unit, i) for i in range(len(self.orders))],
                               dtype=np.float64)
            got.setflags(write=False)
            with self._lock:
                if unit in self._values:
                    self._curves[unit] = got
        return got


_caches: dict[tuple[float, ...], _CurveCache] = {}
_caches_lock = threading.Lock()


def _curve_cache(orders: tuple[float, ...]) -> _CurveCache:
    with _caches_lock:
        cache = _caches.get(orders)
        if cache is None:
            cache = _caches[orders] = _CurveCache(orders)
        return cache


def clear_rdp_cache() -> None:
    """Forget every cached RDP curve (tests and benchmarks time a cold accountant with it)."""
    with _caches_lock:
        _caches.clear()


def _epsilon_from_rdp(orders: Sequence[float], rdp: NDArray[np.float64], delta: float) -> float:
    if not np.any(rdp):
        return 0.0
    if not np.all(np.isfinite(rdp)):
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the smallest alpha"
        eps, _ = rdp_analysis().get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


class RdpAccount:
    """The RDP curve of (add/remove) events, composed over cached curves of their unit mechanisms.

    Mironov 2017, Proposition 1: RDP composes by addition at each order, so a piece that runs one
    unit mechanism k times (a Poisson(q)-sampled Gaussian step with multiplier z, or one DDG
    release) contributes k * eps_unit(alpha), and the curve of a list of events is the sum of its
    pieces. Each distinct unit's curve is computed once (process-wide cache), so Opacus' analysis
    runs O(distinct units x orders) times whatever the number of events, and :meth:`add` extends
    the account as events arrive (a running epsilon: one vector addition per new piece).

    The pieces are added in the order the straightforward computation adds them (Gaussian pieces
    in event order, then DDG pieces), so the curve, hence epsilon, is bit for bit the one obtained
    by evaluating every piece afresh. (Merging equal pieces into one count * curve would be the
    same number mathematically but can differ in the last bits, which JSON output shows.)
    """

    def __init__(self, orders: Sequence[float] = RDP_ORDERS) -> None:
        self.orders = tuple(orders)
        self._cache = _curve_cache(self.orders)
        self._gauss_sum = np.zeros(len(self.orders), dtype=np.float64)
        self._ddg_sum = np.zeros(len(self.orders), dtype=np.float64)
        self._gauss_pieces = 0
        self._ddg_pieces: list[tuple[DistributedDiscreteGaussianEvent, int]] = []
        self._units: dict[Event, int] = {}
        self._infinite = False

    def add(self, events: Iterable[Event]) -> None:
        """Compose ``events`` (add/remove neighbouring) after those already added. Nothing is added
        if one of them cannot be accounted (UnsupportedEventError)."""
        flat = _flat(list(events))
        gauss = [(_gauss_unit(g.q, g.z), g.count) for g in flat.gauss if g.z != 0.0]
        curves = [self._cache.curve(unit) for unit, _ in gauss]  # computed before any change
        curves_ddg = [self._cache.curve(ev) for ev, _ in flat.ddg]
        if any(g.z == 0.0 and g.q > 0 for g in flat.gauss):
            self._infinite = True  # a noiseless release: no finite guarantee
        for (unit, count), curve in zip(gauss, curves, strict=True):
            self._gauss_sum = self._gauss_sum + curve * count
            self._units[unit] = self._units.get(unit, 0) + count
        self._gauss_pieces += len(gauss)
        for (ev, count), curve in zip(flat.ddg, curves_ddg, strict=True):
            self._ddg_sum = self._ddg_sum + count * curve
            self._units[ev] = self._units.get(ev, 0) + count
        self._ddg_pieces += flat.ddg

    def copy(self) -> RdpAccount:
        out = RdpAccount(self.orders)
        out._gauss_sum, out._ddg_sum = self._gauss_sum.copy(), self._ddg_sum.copy()
        out._gauss_pieces, out._ddg_pieces = self._gauss_pieces, list(self._ddg_pieces)
        out._units, out._infinite = dict(self._units), self._infinite
        return out

    @property
    def units(self) -> dict[Event, int]:
        """Distinct unit mechanisms and how many times each ran, in the order first added."""
        return dict(self._units)

    def rdp(self) -> NDArray[np.float64]:
        if self._infinite:
            return np.full(len(self.orders), np.inf)
        if not self._ddg_pieces:
            return self._gauss_sum.copy()
        if not self._gauss_pieces:
            return self._ddg_sum.copy()
        total = self._gauss_sum  # both kinds: the DDG pieces go on top of the Gaussian sum
        for ev, count in self._ddg_pieces:
            total = total + count * self._cache.curve(ev)
        return total

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` (Opacus' ``get_privacy_spent``: Balle et al. 2020, Theorem 21)."""
        _check_delta(delta)
        return _epsilon_from_rdp(self.orders, self.rdp(), delta)


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
    """Opacus' RDP analysis (``opacus.accountants.analysis.rdp``) plus the DDG RDP curve, composed
    by count over cached unit curves (:class:`RdpAccount`)."""

    name = "rdp"

    def __init__(self, orders: Sequence[float] = RDP_ORDERS) -> None:
        self.orders = tuple(orders)

    def account(self, events: Sequence[Event]) -> RdpAccount:
        acc = RdpAccount(self.orders)
        acc.add(events)
        return acc

    def rdp(self, events: Sequence[Event]) -> NDArray[np.float64]:
        return self.account(events).rdp()

    def epsilon(self, events: Sequence[Event], delta: float) -> float:
        _check_delta(delta)
        return self.account(events).epsilon(delta)


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


def _bisect_noise(exceeds: Callable[[float], bool], target_epsilon: float,
                  rel_tol: float) -> float:
    """Doubling from 1 until ``exceeds`` is false, then bisection down to ``rel_tol``; returns
    the upper end (which never exceeds). Every accountant runs this same search."""
    lo, hi = 0.0, 1.0
    while exceeds(hi):
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise PrivacyError(f"no noise multiplier <= 1e6 reaches epsilon {target_epsilon}")
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2.0
        if exceeds(mid):
            lo = mid
        else:
            hi = mid
    return hi


#: a per-order value certifies "above the target" at smaller z only with this relative margin
#: (far above the rounding error of Opacus' analysis)
_CERTIFY_MARGIN = 1e-9


class _NoiseSearch:
    """Decides "epsilon(z) > target" for ``count`` runs of a Poisson(q)-sampled Gaussian exactly as
    the whole RDP curve would, evaluating only the orders it needs.

    Opacus' ``get_privacy_spent`` takes epsilon = min over orders of
    e(alpha) = (rdp(alpha) - shift(alpha)) + gain(alpha), with shift = (log delta + log alpha) /
    (alpha - 1) and gain = log((alpha - 1) / alpha). So "epsilon(z) <= target" holds iff some order
    has e <= target, and "> target" iff every order has e > target. An order is settled above the
    target without evaluating it at z when a lower bound LB of its RDP gives
    (LB - shift) + gain > target, by a relative margin far above Opacus' rounding error:

    * RDP >= 0 (Renyi divergences are non-negative): settles the small orders, whose shift is
      large, and which are the slowest ones for Opacus' fractional-order series;
    * RDP at z >= RDP at any z' >= z, same order: at a fixed order the sampled Gaussian's RDP is
      non-increasing in the noise multiplier (data-processing inequality, module docstring);
    * RDP at alpha >= RDP at any alpha' <= alpha, same z: Renyi divergence is non-decreasing in
      its order (van Erven and Harremoes 2014, Theorem 3), and eps(alpha) of the sampled Gaussian
      is the divergence between one fixed pair of distributions (Mironov, Talwar, Zhang 2019).

    Every order not settled so is evaluated (ascending, so each value can settle the higher orders);
    a z found "<= target" is the new upper end of the bracket, and its values settle later, smaller
    z. Per-order values are Opacus' own (cached) and the conversion is the same IEEE arithmetic
    numpy does element by element. For z < Z_MIN, q outside [Q_MIN, Q_MAX] (q = 1 is fine) or a
    value that is not finite and positive, the whole curve is evaluated instead (``exact``), so no
    assumption is made about Opacus' numerics there.
    """

    Z_MIN = 1e-2
    Q_MIN, Q_MAX = 1e-12, 1.0 - 1e-9

    def __init__(self, orders: tuple[float, ...], q: float, count: int, delta: float,
                 target: float, exact: Callable[[float], float],
                 offset: Sequence[float] | None = None) -> None:
        self.cache = _curve_cache(orders)
        #: per order, the RDP of events already spent (added to every value; >= 0, so the lower
        #: bounds stay lower bounds)
        self.offset = list(offset) if offset is not None else [0.0] * len(orders)
        self.q, self.count, self.target, self.exact = q, count, target, exact
        o = np.atleast_1d(list(orders))  # as get_privacy_spent builds its vectors
        self.shift: list[float] = ((np.log(delta) + np.log(o)) / (o - 1)).tolist()
        self.gain: list[float] = np.log((o - 1) / o).tolist()
        self.ascending = [int(i) for i in np.argsort(o, kind="stable")]
        self.fast = count > 0 and (q == 1.0 or self.Q_MIN <= q <= self.Q_MAX)
        #: (z, {order index: count * rdp}) of every z evaluated so far
        self.known: list[tuple[float, dict[int, float]]] = []

    def _settled_above(self, i: int, lower_bound: float) -> bool:
        e = (lower_bound + self.offset[i] - self.shift[i]) + self.gain[i]
        return e > self.target and e - self.target > _CERTIFY_MARGIN * max(1.0, abs(e))

    def exceeds(self, z: float) -> bool:
        if not self.fast or z < self.Z_MIN:
            return self.exact(z) > self.target
        above = [vals for z2, vals in self.known if z2 >= z]
        unit = _gauss_unit(self.q, z)
        here: dict[int, float] = {}
        below = False
        lb = 0.0  # max count * rdp over the orders <= the current one, at z or any z' >= z
        for i in self.ascending:
            for vals in above:
                lb = max(lb, vals.get(i, 0.0))
            if self._settled_above(i, lb):
                continue
            r = self.cache.value(unit, i) * self.count  # == (curve * count)[i] in numpy
            if not (math.isfinite(r) and r > 0.0):
                return self.exact(z) > self.target
            here[i] = r
            lb = max(lb, r)
            below = below or (r + self.offset[i] - self.shift[i]) + self.gain[i] <= self.target
        self.known.append((z, here))
        return not below


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, sampling_rate: float = 1.0,
                    accountant: str = "rdp", *, steps_per_round: int = 1,
                    rel_tol: float = 1e-3, spent: Sequence[Event] = ()) -> float:
    """Smallest noise multiplier (within ``rel_tol``) whose ``rounds * steps_per_round``
    Poisson(``sampling_rate``)-sampled Gaussian steps stay within ``target_epsilon`` at ``delta``.

    Bracketed search (doubling from 1, then bisection); the returned value always satisfies the
    target (it is the upper end). With ``"rdp"`` each step of the search evaluates only the orders
    it needs over cached curves (:class:`_NoiseSearch`) and takes the same decision as the whole
    curve, so the result is the same as evaluating every order at every step. ``spent``: events
    the same party also runs (e.g. the round-0 statistics), composed in before the target.
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise PrivacyError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be an integer >= 1, got {rounds!r}")
    acc = get_accountant(accountant)

    def eps(z: float) -> float:
        return acc.epsilon([*spent, SelfComposedEvent(_per_round(z, sampling_rate,
                                                                 steps_per_round), rounds)], delta)

    if isinstance(acc, RdpAccountant) and all(isinstance(e, GaussianEvent) for e in spent):
        _check_delta(delta)
        flat = _flat([SelfComposedEvent(_per_round(1.0, sampling_rate, steps_per_round), rounds)])
        if len(flat.gauss) == 1 and not flat.ddg:
            offset = [math.fsum(_unit_rdp(e, a) for e in spent) for a in acc.orders]
            search = _NoiseSearch(acc.orders, flat.gauss[0].q, flat.gauss[0].count, delta,
                                  target_epsilon, eps, offset)
            z = _bisect_noise(search.exceeds, target_epsilon, rel_tol)
            while spent and eps(z) > target_epsilon:  # rounding of the sum at the boundary
                z *= 1.0 + rel_tol
            return z
    return _bisect_noise(lambda z: eps(z) > target_epsilon, target_epsilon, rel_tol)


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
