"""The fast RDP accounting (composition by count over cached curves, incremental running epsilon,
calibration that evaluates only the orders it needs) against a slow, straightforward reference.

The reference below is the accountant as it was before the fast path: flatten each event, call
Opacus' ``compute_rdp`` (imported the ordinary way) for every flattened piece at every order with
``steps=count``, add the pieces in order, convert with Opacus' ``get_privacy_spent``; calibration
is the same doubling-then-bisection search evaluating the whole curve at every step. Nothing here
takes expected values from the code under test. The fast path must give the same numbers bit for
bit (so every printed digit, including the full-precision floats of --json and result.json).
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis import rdp as opacus_rdp

from securefl.dp import accountants
from securefl.dp.accountants import (
    RDP_ORDERS,
    RdpAccount,
    calibrate_noise,
    clear_rdp_cache,
    ddg_rdp,
    entry_events,
    epsilon_of_events,
    max_rounds_within,
)
from securefl.dp.budget import RunningAccount, spent_epsilon
from securefl.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.dp.ledger import Draft, Ledger

DELTA = 1e-5
#: the formats epsilons are printed with (report .4f, CLI and progress .4g, JSON repr)
PRINTED = ("{:.4f}", "{:.4g}", "{!r}")


# --- the reference (slow, straightforward) -------------------------------------------------------
def _ref_flatten(event: Event, q: float, count: int,
                 out: list[tuple[str, object, float, int]]) -> None:
    if count == 0:
        return
    if isinstance(event, GaussianEvent):
        out.append(("gauss" if event.noise_multiplier else "zero", event.noise_multiplier, q,
                    count))
    elif isinstance(event, PoissonSampledEvent):
        _ref_flatten(event.event, q * event.rate, count, out)
    elif isinstance(event, SelfComposedEvent):
        _ref_flatten(event.event, q, count * event.count, out)
    elif isinstance(event, ComposedEvent):
        for e in event.events:
            _ref_flatten(e, q, count, out)
    elif isinstance(event, DistributedDiscreteGaussianEvent):
        out.append(("ddg", event, q, count))


def ref_rdp(events: Sequence[Event], orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    pieces: list[tuple[str, object, float, int]] = []
    for e in events:
        _ref_flatten(e, 1.0, 1, pieces)
    total = np.zeros(len(orders))
    for kind, what, q, count in pieces:  # Gaussian pieces first, in order, as before
        if kind == "zero":
            if q > 0:
                return np.full(len(orders), np.inf)
        elif kind == "gauss":
            assert isinstance(what, float | int)
            total = total + _compute_rdp(q, what, count, tuple(orders))
    for kind, what, _, count in pieces:
        if kind == "ddg":
            assert isinstance(what, DistributedDiscreteGaussianEvent)
            total = total + count * ddg_rdp(what, orders)
    return total


@functools.lru_cache(maxsize=4096)
def _compute_rdp(q: float, z: float, steps: int, orders: tuple[float, ...]) -> np.ndarray:
    """Opacus' compute_rdp (memoised on its exact arguments only to keep the tests short)."""
    return np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps,
                                             orders=list(orders)), dtype=np.float64)


def ref_epsilon(events: Sequence[Event], delta: float = DELTA) -> float:
    rdp = ref_rdp(events)
    if not np.any(rdp):
        return 0.0
    if not np.all(np.isfinite(rdp)):
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def ref_calibrate(target: float, delta: float, rounds: int, q: float, steps: int,
                  rel_tol: float = 1e-3) -> float:
    def eps(z: float) -> float:
        g = GaussianEvent(z)
        inner: Event = g if q == 1.0 else PoissonSampledEvent(q, g)
        return ref_epsilon([SelfComposedEvent(SelfComposedEvent(inner, steps), rounds)], delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2.0
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2.0
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def _assert_same(got: float, want: float) -> None:
    """Bit for bit, hence to every printed digit (JSON prints the full repr)."""
    assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)
    for fmt in PRINTED:
        assert fmt.format(got) == fmt.format(want), (fmt, got, want)


def _sgd(z: float, q: float, t: int) -> SelfComposedEvent:
    return SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), t)


# --- unit curves ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("q", "z"), [(0.0333, 0.96), (0.025, 1.1), (0.0625, 0.5), (1.0, 2.0),
                                      (0.3, 0.35), (0.001, 5.0)])
def test_cached_unit_curve_is_opacus_compute_rdp_bit_for_bit(q: float, z: float) -> None:
    clear_rdp_cache()
    want = np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1,
                                             orders=list(RDP_ORDERS)), dtype=np.float64)
    unit: Event = PoissonSampledEvent(q, GaussianEvent(z)) if q < 1 else GaussianEvent(z)
    acc = RdpAccount()
    acc.add([unit])
    assert np.array_equal(acc.rdp(), want)
    # k runs of it: k times the curve (composition by count), as compute_rdp(steps=k) gives it
    seven = RdpAccount()
    seven.add([SelfComposedEvent(unit, 7)])
    assert np.array_equal(seven.rdp(), np.asarray(opacus_rdp.compute_rdp(
        q=q, noise_multiplier=z, steps=7, orders=list(RDP_ORDERS))))
    # a later entry is added on top, as the reference adds its pieces
    acc.add([SelfComposedEvent(unit, 6)])
    assert np.array_equal(acc.rdp(), want + want * 6)
    assert acc.units == {unit: 7}


def test_standalone_opacus_module_computes_the_same_numbers() -> None:
    mod = accountants.rdp_analysis()
    # either the package module (opacus already imported here) or its file loaded on its own
    assert mod.compute_rdp.__code__.co_filename == opacus_rdp.compute_rdp.__code__.co_filename
    for q, z in [(0.05, 0.8), (0.5, 3.0)]:
        assert np.array_equal(
            np.asarray(mod.compute_rdp(q=q, noise_multiplier=z, steps=3, orders=list(RDP_ORDERS))),
            np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=3,
                                              orders=list(RDP_ORDERS))))


def test_accounting_does_not_import_the_opacus_package() -> None:
    code = ("import sys\n"
            "from securefl.dp.accountants import calibrate_noise, epsilon_of_events\n"
            "from securefl.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent\n"
            "e = epsilon_of_events([SelfComposedEvent(PoissonSampledEvent(0.05, "
            "GaussianEvent(1.0)), 100)], 1e-5)\n"
            "z = calibrate_noise(8.0, 1e-5, 20, 0.05, steps_per_round=20)\n"
            "print(e > 0, z > 0, 'opacus' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "False", "False"]


# --- composition by count: property over random event sequences -----------------------------------
_z = st.floats(0.5, 20.0, allow_nan=False)
_q = st.sampled_from([1.0, 0.5, 0.1, 0.0625, 0.025, 0.01, 0.001])
_gauss = st.builds(GaussianEvent, _z)
_sampled = st.builds(PoissonSampledEvent, _q, _gauss)
_ddg = st.builds(DistributedDiscreteGaussianEvent, sigma_int=st.floats(0.5, 500.0),
                 survivors=st.integers(1, 8), sensitivity_int=st.floats(0.5, 2000.0),
                 dim=st.integers(1, 5000))
_leaf = st.one_of(_gauss, _sampled, _ddg)
_event = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(SelfComposedEvent, inner, st.integers(0, 300)),
        st.builds(ComposedEvent, st.lists(inner, min_size=0, max_size=3)),
        st.builds(PoissonSampledEvent, st.sampled_from([0.5, 0.2]),
                  st.one_of(_gauss, _sampled))),
    max_leaves=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(pool=st.lists(_event, min_size=1, max_size=4),
       picks=st.lists(st.integers(0, 3), min_size=1, max_size=30),
       delta=st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_fast_epsilon_equals_reference_to_the_printed_digit(
        pool: list[Event], picks: list[int], delta: float) -> None:
    # a sequence drawn with repetition from a small pool: the same events recur, as in a ledger
    events = [pool[i % len(pool)] for i in picks]
    want = ref_epsilon(events, delta)
    _assert_same(epsilon_of_events(events, delta, "rdp"), want)
    # and the running (incremental) account over the same sequence, one event at a time
    acc = RdpAccount()
    for e in events:
        acc.add([e])
    _assert_same(acc.epsilon(delta), want)


def test_zero_noise_and_empty_match_the_reference() -> None:
    for events in ([], [GaussianEvent(0.0)], [SelfComposedEvent(GaussianEvent(0.0), 0)],
                   [PoissonSampledEvent(0.0, GaussianEvent(0.0)), GaussianEvent(3.0)],
                   [_sgd(1.0, 0.1, 10), PoissonSampledEvent(0.2, GaussianEvent(0.0))]):
        assert epsilon_of_events(events, DELTA) == ref_epsilon(events)


# --- the ledger: running epsilon, incremental -----------------------------------------------------
def _round(led: Ledger, r: int, z_fed: float, banks: dict[str, tuple[float, float, int]]
           ) -> None:
    drafts = [Draft(round=r, level="record", party=f"bank:{b}", event=_sgd(z, q, t),
                    clip_norm=1.0, participants=1, survivors=1, steps=t)
              for b, (z, q, t) in banks.items()]
    drafts.append(Draft(round=r, level="client", party="federation",
                        event=GaussianEvent(z_fed), clip_norm=1.0, participants=3,
                        survivors=3, sampling="all"))
    led.record(drafts)


def test_running_account_equals_batch_and_reference_every_round() -> None:
    banks = {"a": (0.96, 1 / 30, 30), "b": (1.1, 0.025, 40), "c": (0.7, 0.0625, 16)}
    led, running = Ledger(), RunningAccount()
    for r in range(1, 21):
        _round(led, r, 0.02 if r % 5 else 0.03, banks)
        running.update(led)
        client = [e for e in led.entries if e.level == "client"]
        assert running.entries("client") == len(client) == r
        got = running.epsilon(DELTA, level="client")
        assert got == spent_epsilon(client, DELTA)  # same computation, incremental or not
        _assert_same(got, ref_epsilon(entry_events(client)))
        assert running.parties("record") == ["bank:a", "bank:b", "bank:c"]
        for b in banks:
            mine = [e for e in led.entries if e.party == f"bank:{b}" and e.level == "record"]
            got = running.epsilon(DELTA, level="record", party=f"bank:{b}")
            assert got == spent_epsilon(mine, DELTA)
            _assert_same(got, ref_epsilon(entry_events(mine)))


def test_running_account_reads_a_replaced_ledger_from_the_start() -> None:
    banks = {"a": (1.0, 0.05, 10)}
    one, two = Ledger(), Ledger()
    for r in range(1, 4):
        _round(one, r, 0.5, banks)
    for r in range(1, 3):
        _round(two, r, 2.0, banks)
    running = RunningAccount()
    running.update(one)
    running.update(two)  # shorter: not an extension
    assert running.epsilon(DELTA, level="client") == ref_epsilon([GaussianEvent(2.0)] * 2)
    _round(two, 3, 2.0, banks)
    running.update(two)
    assert running.epsilon(DELTA, level="client") == ref_epsilon([GaussianEvent(2.0)] * 3)
    three = Ledger()
    for r in range(1, 4):
        _round(three, r, 4.0, banks)  # same length, different entries
    running.update(three)
    assert running.entries("client") == 3
    assert running.epsilon(DELTA, level="client") == ref_epsilon([GaussianEvent(4.0)] * 3)


def test_ledger_accounting_costs_distinct_events_not_rounds() -> None:
    clear_rdp_cache()
    led, running = Ledger(), RunningAccount()
    for r in range(1, 51):
        _round(led, r, 0.02, {"a": (0.96, 1 / 30, 30)})
        running.update(led)
        running.epsilon(DELTA, level="record", party="bank:a")
        running.epsilon(DELTA, level="client")
    cache = accountants._curve_cache(tuple(RDP_ORDERS))
    # two distinct units (the bank's sampled Gaussian step, the federation's Gaussian): each order
    # of each evaluated once in 50 rounds
    assert cache.computed == 2 * len(RDP_ORDERS)
    spent_epsilon(list(led.entries), DELTA)  # the whole ledger again: nothing new to compute
    assert cache.computed == 2 * len(RDP_ORDERS)


# --- calibration ---------------------------------------------------------------------------------
# (steps per round, Poisson rate) of the three banks of the default run (embedded data, batch 256)
DEFAULT_RUN_BANKS = [(30, 1 / 30), (40, 1 / 40), (16, 1 / 16)]


@pytest.mark.parametrize(("steps", "q"), DEFAULT_RUN_BANKS)
def test_calibration_of_the_default_run_equals_the_reference(steps: int, q: float) -> None:
    clear_rdp_cache()
    got = calibrate_noise(8.0, DELTA, 20, q, "rdp", steps_per_round=steps)
    assert got == ref_calibrate(8.0, DELTA, 20, q, steps)
    cache = accountants._curve_cache(tuple(RDP_ORDERS))
    # the reference evaluates every order at every step of the search (about 12 steps here)
    assert cache.computed < 3 * len(RDP_ORDERS)


@settings(max_examples=10, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate])
@given(target=st.floats(0.5, 60.0), q=st.sampled_from([1.0, 0.3, 0.1, 0.05, 0.01, 0.002]),
       steps=st.integers(1, 60), rounds=st.integers(1, 30),
       delta=st.sampled_from([1e-5, 1e-7, 1e-3]))
def test_calibration_equals_the_reference(target: float, q: float, steps: int, rounds: int,
                                          delta: float) -> None:
    assert calibrate_noise(target, delta, rounds, q, steps_per_round=steps) == \
        ref_calibrate(target, delta, rounds, q, steps)


@pytest.mark.parametrize("nudge", [0, -1, 1])
def test_calibration_decides_ties_like_the_reference(nudge: int) -> None:
    # a target exactly at (or one ulp beside) the epsilon of a z the bisection visits (0.75)
    q, steps, rounds = 0.05, 10, 20
    tie = ref_epsilon([SelfComposedEvent(_sgd(0.75, q, steps), rounds)])
    target = tie if nudge == 0 else math.nextafter(tie, math.inf * nudge)
    clear_rdp_cache()
    assert calibrate_noise(target, DELTA, rounds, q, steps_per_round=steps) == \
        ref_calibrate(target, DELTA, rounds, q, steps)


def test_calibration_outside_the_fast_domain_still_matches() -> None:
    # huge target: the search goes below Z_MIN and evaluates whole curves there
    assert calibrate_noise(5e4, DELTA, 1, 1.0) == ref_calibrate(5e4, DELTA, 1, 1.0, 1)
    assert calibrate_noise(5e3, DELTA, 2, 0.5, steps_per_round=2) == \
        ref_calibrate(5e3, DELTA, 2, 0.5, 2)


def test_max_rounds_within_matches_the_reference_search() -> None:
    per_round = [_sgd(1.0, 0.05, 20), GaussianEvent(8.0)]
    got = max_rounds_within(8.0, DELTA, per_round, limit=10_000)

    def ref_eps(t: int) -> float:
        return ref_epsilon([SelfComposedEvent(ComposedEvent(per_round), t)])

    assert ref_eps(got) <= 8.0 < ref_eps(got + 1)
