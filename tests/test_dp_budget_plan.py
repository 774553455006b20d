"""Budgets never overshoot (issue 16, "Budgets overshoot"): a budget plans with exactly the events a
round records (securefl.dp.fedavg.client_round_event for both), including SecAgg's rounding-inflated
sensitivity, the stated colluders and every admissible survivor count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.aggregators import make_aggregator
from securefl.config import RunConfig
from securefl.dp.accountants import epsilon_of_events
from securefl.dp.budget import planned_client_events, would_exceed
from securefl.dp.events import DistributedDiscreteGaussianEvent, GaussianEvent
from securefl.dp.ledger import Ledger
from securefl.errors import AggregationAbortedError, BudgetExceededError
from securefl.protocol.plan import NoisePlan, RoundSpec
from securefl.protocol.secagg.bounds import default_threshold
from securefl.runtime import Engine, run


def test_issue_target_is_refused_before_any_round(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The finding: --target-epsilon 1.4474 (threshold 3, z = 5, 3 rounds) ran all 3 rounds and the
    ledger said 1.44777, because the plan charged GaussianEvent(5) and the rounds recorded the
    distributed discrete Gaussian with sensitivity C / gamma + sqrt(d)."""
    cfg = RunConfig(rounds=3, threshold=3, noise_multiplier=5.0, target_epsilon=1.4474,
                    out=str(tmp_path / "run"))
    with pytest.raises(BudgetExceededError, match="at most 2 rounds fit"):
        run(cfg)
    assert not (tmp_path / "run" / "ledger.jsonl").exists()


def test_secagg_plan_is_the_recorded_ddg_event() -> None:
    """The plan's event for the worst admissible round is the DDG event with the encoder's inflated
    sensitivity, the exact event a round with ``threshold`` survivors records, and it costs more
    than the plain Gaussian the old plan charged."""
    cfg = RunConfig(threshold=3, noise_multiplier=5.0)
    engine = Engine(cfg)
    dim = 8_001
    (draft,) = engine._planned_client_drafts(1, 3, 3, dim)
    gamma = 1.0 / 2**16
    sens = 1.0 / gamma + math.sqrt(dim)  # C / gamma + sqrt(d), written out independently
    assert isinstance(draft.event, DistributedDiscreteGaussianEvent)
    assert draft.event.sensitivity_int == pytest.approx(sens, rel=1e-12)
    assert draft.event.sigma_int == pytest.approx(5.0 / gamma / math.sqrt(3), rel=1e-12)
    assert draft.event.survivors == 3
    planned = epsilon_of_events([draft.event] * 3, 1e-5)
    gaussian = epsilon_of_events([GaussianEvent(5.0)] * 3, 1e-5)
    assert planned > gaussian + 1e-4  # the overshoot the old plan missed (1.44777 vs 1.4474)


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(["secagg", "secagg", "plain"]), n=st.integers(3, 5),
       c=st.integers(0, 2), z=st.floats(0.5, 8.0), dim=st.integers(500, 4000),
       k=st.integers(1, 3), u=st.floats(-3e-3, 3e-3), seed=st.integers(0, 2**32 - 1))
def test_recorded_epsilon_never_exceeds_the_target(mode: str, n: int, c: int, z: float,
                                                   dim: int, k: int, u: float,
                                                   seed: int) -> None:
    """Sweep of targets around the epsilon of k rounds of the plain Gaussian (where the old plan's
    error lies: SecAgg's rounding inflates the sensitivity by sqrt(d) / 2^16 of C / gamma): before
    each round the engine's budget check charges the planned events; the round then runs through
    the real aggregator with random dropouts and its recorded events go into the ledger. Whatever
    happened, the ledger's epsilon stays within the target."""
    rounds = k + 1
    target = epsilon_of_events([GaussianEvent(z)] * k, 1e-5) * (1 + u)
    c = min(c, n - 2)
    cfg = RunConfig(banks=n, aggregation=mode, colluders=c, noise_multiplier=z, rounds=rounds,
                    target_epsilon=target, seed=seed % 1000)
    engine = Engine(cfg)
    agg = make_aggregator(mode, colluders=c)
    rng = np.random.default_rng(seed)
    ledger = Ledger()
    parts = tuple(range(n))
    threshold = default_threshold(n, c)
    for round_ in range(1, rounds + 1):
        planned = engine._planned_client_drafts(round_, n, threshold, dim)
        if any(ch.exceeds for ch in would_exceed(ledger, planned, target, cfg.delta).values()):
            break
        drops = {i: agg.stages[int(rng.integers(len(agg.stages)))]
                 for i in parts if rng.random() < 0.3}
        inputs = {i: rng.normal(size=dim) / (4 * math.sqrt(dim)) for i in parts}
        spec = RoundSpec(session_id=engine.session_id, round=round_, participants=parts,
                         clip_norm=1.0, threshold=threshold,
                         noise=engine._noise_plan(n, threshold))
        try:
            out = agg.aggregate(spec, inputs, random=engine.random.factory(round_),
                                dropouts=drops)
        except AggregationAbortedError:
            continue
        ledger.record(engine._client_drafts(round_, n, threshold, out, dim))
    spent = epsilon_of_events([e.event for e in ledger.entries], cfg.delta)
    assert spent <= target


@given(n=st.integers(3, 12), c=st.integers(0, 3), z=st.floats(0.5, 10.0))
@settings(max_examples=40, deadline=None)
def test_continuous_plan_is_the_worst_survivor_count(n: int, c: int, z: float) -> None:
    """plain / ckks: more survivors only add honest noise, so the plan's one event is the one a
    round with exactly ``threshold`` survivors records: z * sqrt(h / h) = z."""
    c = min(c, n - 2)
    t = default_threshold(n, c)
    plan = NoisePlan(z, t, colluders=c)
    assert planned_client_events(plan, n) == [GaussianEvent(z)]
