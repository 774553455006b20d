"""DP under collusion (issue 16, "Collusion"), tested from the colluders' side: banks that collude
with the server know their own noise shares and subtract them from the released sum. Each share is
sized for the smallest honest set whose sum can be revealed (NoisePlan.honest_floor: T - c, or
SecAgg+'s isolatable honest set), so what is left still carries the planned noise, and the ledger's
event is the noise that honest set carries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.aggregators import make_aggregator
from securefl.config import RunConfig
from securefl.crypto.random import SimulationRandomness
from securefl.dp.accountants import epsilon_of_events
from securefl.dp.discrete import discrete_gaussian
from securefl.dp.events import DistributedDiscreteGaussianEvent, GaussianEvent
from securefl.dp.fedavg import client_round_event
from securefl.dp.noise import gaussian
from securefl.errors import ConfigError
from securefl.protocol.plan import NoisePlan, RoundSpec
from securefl.protocol.secagg import Assumptions, derive
from securefl.protocol.secagg.bounds import default_threshold
from securefl.runtime import Engine

DIM = 20_000
N, C = 4, 1  # four banks, bank 0 colludes with the server
Z, CLIP = 1.0, 1.0


def _round(mode: str) -> tuple[object, RoundSpec, SimulationRandomness]:
    """One round in which an honest bank (3) drops before its input is in: T = 3 survivors, one
    of them the colluder, so only 2 honest shares remain: the worst admissible round."""
    t = default_threshold(N, C)
    assert t == 3  # the active-security bound for n = 4, c = 1 (2T > n + c, T >= c + 2)
    agg = make_aggregator(mode, colluders=C)
    plan = NoisePlan(Z, t, colluders=C)
    spec = RoundSpec(session_id=bytes(16), round=1, participants=tuple(range(N)), clip_norm=CLIP,
                     threshold=t, noise=plan)
    rnd = SimulationRandomness(7, bytes(16))
    zeros = {i: np.zeros(DIM) for i in range(N)}  # zero updates: the sum is the noise alone
    out = agg.aggregate(spec, zeros, random=lambda cid, what: rnd.source(1, cid, what),
                        dropouts={3: agg.stages[0]})
    assert out.survivors == (0, 1, 2)
    return out, spec, rnd


def test_secagg_colluder_subtracting_its_share_leaves_the_planned_noise() -> None:
    out, spec, rnd = _round("secagg")
    enc = out.encoding  # type: ignore[attr-defined]
    total = out.integer_total.astype(np.float64)  # type: ignore[attr-defined]
    # the colluder re-draws its own share from its own noise stream and removes it
    mine = discrete_gaussian(DIM, enc.noise_sigma2_int, rnd.source(1, 0, "noise"))
    left = total - mine
    planned_var = (Z * CLIP / enc.gamma) ** 2  # (z C)^2 in integer units
    # before the fix each share carried planned / T: 2 honest shares held 2/3 of the plan
    assert left.var() >= 0.95 * planned_var
    # the ledger's event is that honest noise: 2 shares of the recorded sigma
    event = client_round_event(spec.noise, len(out.survivors), encoding=enc, dim=DIM)
    assert isinstance(event, DistributedDiscreteGaussianEvent)
    assert event.survivors == 2
    assert left.var() == pytest.approx(event.survivors * event.sigma_int**2, rel=0.05)


def test_plain_colluder_subtracting_its_share_leaves_the_planned_noise() -> None:
    out, spec, rnd = _round("plain")
    share_std = spec.noise.share_std(CLIP)  # type: ignore[union-attr]
    mine = gaussian(DIM, share_std, rnd.source(1, 0, "noise"))
    left = out.total - mine
    assert left.var() >= 0.95 * (Z * CLIP) ** 2
    event = client_round_event(spec.noise, len(out.survivors))  # type: ignore[arg-type]
    assert event == GaussianEvent(Z)  # the honest pair carries exactly z * C
    assert left.var() == pytest.approx((event.noise_multiplier * CLIP) ** 2, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 200), c=st.integers(0, 10), z=st.floats(0.1, 10.0))
def test_smallest_revealable_honest_set_carries_the_planned_noise(n: int, c: int,
                                                                  z: float) -> None:
    """For the engine's plan, h honest shares of the sized variance sum to (z C)^2, where h is
    T - c (classic) or the bounds' minimum isolatable honest set (SecAgg+), recomputed here from
    protocol.secagg.bounds.derive."""
    c = min(c, n - 2)
    cfg = RunConfig(banks=max(n, 2), colluders=c, noise_multiplier=z)
    t = default_threshold(n, c)
    d = derive(n, Assumptions(colluders=c), threshold=t)
    smallest = d.min_honest_sum  # classic: T - c
    plan = Engine(cfg)._noise_plan(n, t)
    assert plan is not None
    assert plan.colluders == c
    assert smallest * plan.share_std(1.0) ** 2 == pytest.approx(z**2, rel=1e-12)
    # and the worst round's event is exactly the planned Gaussian
    assert client_round_event(plan, t) == GaussianEvent(z * math.sqrt(smallest / smallest))


def test_secagg_refuses_a_noise_plan_that_ignores_its_colluders() -> None:
    agg = make_aggregator("secagg", colluders=1)
    spec = RoundSpec(session_id=bytes(16), round=1, participants=(0, 1, 2, 3), clip_norm=1.0,
                     threshold=3, noise=NoisePlan(1.0, 3))  # shares sized for 3, not T - c = 2
    rnd = SimulationRandomness(1, bytes(16))
    with pytest.raises(ConfigError, match="may hold only 2 honest inputs"):
        agg.aggregate(spec, {i: np.zeros(4) for i in range(4)},
                      random=lambda cid, what: rnd.source(1, cid, what))


def test_epsilon_under_collusion_is_the_planned_epsilon() -> None:
    """The issue's numbers (z = 5, t = 3, 3 rounds): one or two colluders used to raise epsilon
    (1.326 -> 1.660 -> 2.445, PLD); with shares sized for T - c, the honest set carries z in the
    worst round, so epsilon under the assumption is that of c = 0."""
    base = epsilon_of_events([client_round_event(NoisePlan(5.0, 3), 3)] * 3, 1e-5)
    for n, c in ((4, 1), (5, 2)):
        t = default_threshold(n, c)
        plan = NoisePlan(5.0, t, colluders=c)
        eps = epsilon_of_events([client_round_event(plan, t)] * 3, 1e-5)
        assert eps == pytest.approx(base, rel=1e-12)
        # the old sizing (shares for t, colluders' shares subtracted) cost more
        old = GaussianEvent(5.0 * math.sqrt((t - c) / t))
        assert epsilon_of_events([old] * 3, 1e-5) > 1.2 * eps
