"""The round engine (securefl.engine): one loop for every driver. A fake committer and fake
transports check what the engine owns: settling each typed outcome before the transport goes on,
the abort policy, the round reports and progress, and resume's history."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.committer import Committed, Release
from securefl.engine import RoundEngine, RoundOutcome, RoundReport
from securefl.errors import AggregationAbortedError, ConfigError

BANKS = ("a", "b", "c")


class FakeCommitter:
    """Records what the engine asked it to commit, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def commit(self, round_: int, participants: Sequence[str], release: Release, *,
               drafts: Sequence[Any] = (), noise: Any = None, dim: int,
               evaluate: Any = dict) -> Committed:
        self.calls.append(("commit", round_))
        return Committed(round_, tuple(participants), release.survivors, {}, dict(evaluate()))

    def abort(self, round_: int, participants: Sequence[str], error: Any, *,
              alive: Sequence[str], dropouts: Mapping[str, str] | None = None,
              drafts: Sequence[Any] = (), metrics: Mapping[str, float] | None = None
              ) -> Committed:
        self.calls.append(("abort", round_))
        return Committed(round_, tuple(participants), tuple(alive), dict(dropouts or {}),
                         dict(metrics or {}), error=error)


def _released(r: int) -> RoundOutcome:
    return RoundOutcome(round=r, participants=BANKS, release=Release(
        total=np.ones(2), survivors=BANKS, survivor_weights=(1.0, 1.0, 1.0)), dim=2)


def _aborted(r: int) -> RoundOutcome:
    return RoundOutcome(round=r, participants=BANKS, alive=("a",), dropouts={"b": "masked"},
                        error=AggregationAbortedError(f"round {r}: too few survivors"))


class Scripted:
    """A transport whose rounds abort where ``aborts`` says; it logs when it resumes."""

    def __init__(self, aborts: set[int], log: list[tuple[str, int]]) -> None:
        self.aborts, self.log = aborts, log

    def rounds(self, engine: RoundEngine, first: int, last: int) -> Iterator[RoundOutcome]:
        for r in range(first, last + 1):
            engine.check_attempts(r)
            yield _aborted(r) if r in self.aborts else _released(r)
            self.log.append(("resumed after", r))


def test_each_outcome_is_settled_before_the_transport_goes_on() -> None:
    fake = FakeCommitter()
    scores = iter(range(100))
    reports: list[RoundReport] = []
    engine = RoundEngine(lambda: fake, evaluate=lambda: {"score": float(next(scores))},
                         progress=reports.append)
    history = engine.run(Scripted({2}, fake.calls), 1, 3)
    assert fake.calls == [("commit", 1), ("resumed after", 1), ("abort", 2),
                          ("resumed after", 2), ("commit", 3), ("resumed after", 3)]
    assert reports == history and [h.round for h in history] == [1, 2, 3]
    # an aborted round keeps the last metrics; released rounds are scored once each
    assert [h.metrics for h in history] == [{"score": 0.0}, {"score": 0.0}, {"score": 1.0}]
    assert history[1].aborted == AggregationAbortedError.code
    assert history[1].error == "round 2: too few survivors"
    assert history[1].survivors == ("a",) and history[1].dropouts == {"b": "masked"}
    assert [h.aborted is None for h in history] == [True, False, True]


def test_an_aborted_first_round_is_scored_on_the_unchanged_model() -> None:
    fake = FakeCommitter()
    engine = RoundEngine(lambda: fake, evaluate=lambda: {"auc": 0.5})
    assert engine.run(Scripted({1}, []), 1, 1)[0].metrics == {"auc": 0.5}


@settings(max_examples=50, deadline=None)
@given(aborts=st.sets(st.integers(1, 12)), bound=st.integers(1, 4))
def test_the_abort_policy_stops_before_a_round_after_max_aborted_in_a_row(
        aborts: set[int], bound: int) -> None:
    """Property: the run stops (AggregationAbortedError) exactly before the first round that
    follows ``bound`` aborted rounds in a row, counted independently here."""
    fake = FakeCommitter()
    engine = RoundEngine(lambda: fake, max_aborted=bound)
    stop = None
    streak = 0
    for r in range(1, 13):
        if streak >= bound:
            stop = r
            break
        streak = streak + 1 if r in aborts else 0
    if stop is None:
        assert len(engine.run(Scripted(aborts, []), 1, 12)) == 12
    else:
        with pytest.raises(AggregationAbortedError, match=f"round {stop}: the last {bound} "):
            engine.run(Scripted(aborts, []), 1, 12)
        assert [h.round for h in engine.history] == list(range(1, stop))


def test_without_a_bound_any_number_of_rounds_may_abort() -> None:
    engine = RoundEngine(FakeCommitter)
    assert len(engine.run(Scripted(set(range(1, 9)), []), 1, 8)) == 8
    assert engine.aborted_in_a_row() == 8


def test_a_driver_may_pass_its_own_count_to_the_policy() -> None:
    engine = RoundEngine(FakeCommitter, max_aborted=3)
    engine.check_attempts(5, in_a_row=2)
    with pytest.raises(AggregationAbortedError, match="round 5: the last 3 rounds aborted"):
        engine.check_attempts(5, in_a_row=3)


def test_an_outcome_is_a_release_or_an_error_never_both_or_neither() -> None:
    rel = _released(1).release
    with pytest.raises(ConfigError):
        RoundOutcome(round=1, participants=BANKS)
    with pytest.raises(ConfigError):
        RoundOutcome(round=1, participants=BANKS, release=rel,
                     error=AggregationAbortedError("x"))


def test_resume_history_comes_from_the_audit_records() -> None:
    rec = SimpleNamespace(round=1, participants=["a", "b"], survivors=["a"], dropouts={"b": "x"},
                          metrics={"auc": 0.7}, status="aborted", error_code="SFL310")
    ok = SimpleNamespace(round=2, participants=["a", "b"], survivors=["a", "b"], dropouts={},
                         metrics={"auc": 0.8}, status="ok", error_code=None)
    store = SimpleNamespace(records=[object(), rec, ok])
    hist = RoundEngine.resumed(store)
    assert [(h.round, h.aborted, h.metrics) for h in hist] == [
        (1, "SFL310", {"auc": 0.7}), (2, None, {"auc": 0.8})]
    engine = RoundEngine(FakeCommitter, max_aborted=1, history=hist[:1])
    with pytest.raises(AggregationAbortedError):  # the resumed abort counts
        engine.check_attempts(2)


def test_a_transport_that_stops_early_says_why() -> None:
    class Budgeted:
        def rounds(self, engine: RoundEngine, first: int, last: int
                   ) -> Iterator[RoundOutcome]:
            yield _released(first)
            engine.stopped = "round 2 would exceed target epsilon"

    engine = RoundEngine(FakeCommitter)
    assert len(engine.run(Budgeted(), 1, 5)) == 1
    assert engine.stopped == "round 2 would exceed target epsilon"
