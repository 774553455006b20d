"""The round engine (issue 15, item 1): the one loop every driver runs, whatever moves its bytes.

A driver is a :class:`RoundTransport`: it picks each round's participants, plans the round
with the one planner (:class:`~securefl.protocol.plan.RoundPlanner`: the public
:class:`~securefl.protocol.plan.RoundSpec` and its :class:`~securefl.protocol.plan.NoisePlan`),
runs it over its transport (in process: securefl.aggregators; a deployment or a Flower app:
Flower round trips) and yields one typed :class:`RoundOutcome` per round: the release (the
survivors' sum) or the error that aborted the round, with the per-client facts the ledger and
audit record need.
:class:`RoundEngine` does the rest, the same way for every driver:

- the abort policy: how many rounds in a row may abort (each an attempt at the same global model,
  :meth:`RoundEngine.check_attempts`);
- the commit (securefl.committer.RoundCommitter: the client-level ledger event, the server
  update, the audit record, one atomic commit), or the aborted round's record;
- the evaluation of the new model (an aborted round keeps the last metrics, or scores the
  unchanged model when there are none);
- the round report (:class:`RoundReport`), the history and the progress callbacks;
- resume: the rounds a run directory already committed (:meth:`RoundEngine.resumed`).

``securefl run`` / :func:`securefl.train` (securefl.runtime), a deployment's server
(securefl.deploy.server) and the Flower workflow (securefl.flower.SecureFLWorkflow) drive it;
they differ only in their transport. Where the host owns the loop (Flower's DefaultWorkflow calls
the workflow once per round), :meth:`RoundEngine.steps` runs the same loop one settled round per
call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from securefl.result import MAX_TEXT, RoundReport

if TYPE_CHECKING:
    from securefl.committer import Release, RoundCommitter
    from securefl.dp.ledger import Draft
    from securefl.errors import SecureFLError
    from securefl.protocol.plan import NoisePlan

__all__ = [
    "NO_PHASE",
    "PHASES",
    "PhaseCallback",
    "ProgressCallback",
    "RoundEngine",
    "RoundOutcome",
    "RoundReport",
    "RoundTransport",
]

#: ``phase(round, what, detail)``: called when the run starts doing ``what`` (one of PHASES);
#: round 0 is the work before the first round and after the last one
PhaseCallback = Callable[[int, str, str], None]
PHASES = ("loading data", "standardising", "calibrating noise", "training",
          "protecting + aggregating", "evaluating", "committing", "accounting", "baselines")


def _no_phase(round_: int, what: str, detail: str) -> None:
    return None


#: the phase callback that does nothing
NO_PHASE: PhaseCallback = _no_phase


ProgressCallback = Callable[[RoundReport], None]


@dataclass(frozen=True)
class RoundOutcome:
    """The typed outcome of one round, as its transport ran it: ``release`` (what the round
    released, securefl.committer.Release) or ``error`` (why it aborted; nothing released), never
    both. Parties are named as the run directory names them (bank names)."""

    round: int
    participants: tuple[str, ...]
    release: Release | None = None
    error: SecureFLError | None = None
    #: an aborted round: the participants still alive, and who dropped where
    alive: tuple[str, ...] = ()
    dropouts: Mapping[str, str] = field(default_factory=dict)
    #: the banks' record-level ledger drafts (DP-SGD) of the round
    drafts: tuple[Draft, ...] = ()
    #: the round's client-level noise plan (None: no client-level noise)
    noise: NoisePlan | None = None
    #: the update's dimension (the client-level ledger event needs it)
    dim: int = 0
    #: how many participants' updates were clipped
    clipped: int = 0
    #: when the round started (time.perf_counter())
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        from securefl.errors import ConfigError

        if (self.release is None) == (self.error is None):
            raise ConfigError("a round outcome is a release or an error, exactly one")


class RoundTransport(Protocol):
    """How a driver runs its rounds: ``rounds(engine, first, last)`` yields each round's
    :class:`RoundOutcome` in order. The engine settles (commits) each outcome before the
    generator resumes, so a round planned after a ``yield`` sees the new global model; a
    pipelined transport (a deployment's SecAgg) may plan round r before it yields round r - 1.
    A transport stops early by returning (``engine.stopped`` says why, when it sets it) and
    asks ``engine.check_attempts(r)`` before it starts round r."""

    def rounds(self, engine: RoundEngine, first: int, last: int) -> Iterator[RoundOutcome]:
        ...


class RoundEngine:
    """The loop over a run's rounds: ``committer()`` gives the run's RoundCommitter (a
    deployment makes it once round 0 created the run directory), ``evaluate()`` scores the
    current global model, ``account()`` the epsilon spent so far (for the round report);
    ``max_aborted`` rounds may abort in a row (None: no bound)."""

    def __init__(self, committer: Callable[[], RoundCommitter], *,
                 evaluate: Callable[[], Mapping[str, float]] = dict,
                 account: Callable[[], dict[str, float]] | None = None,
                 max_aborted: int | None = None, progress: ProgressCallback | None = None,
                 phase: PhaseCallback | None = None,
                 history: Sequence[RoundReport] = ()) -> None:
        self._committer = committer
        self.evaluate = evaluate
        self.account = account
        self.max_aborted = max_aborted
        self.progress = progress
        self.phase = phase or NO_PHASE
        self.history: list[RoundReport] = list(history)
        #: why the run stopped before its last round (set by a transport), or None
        self.stopped: str | None = None

    @staticmethod
    def resumed(store: Any) -> list[RoundReport]:
        """The round reports of the rounds ``store`` (securefl.audit.store.RunStore) committed
        before a resume, from its audit records."""
        return [RoundReport(round=rec.round, participants=tuple(rec.participants),
                            survivors=tuple(rec.survivors), dropouts=dict(rec.dropouts),
                            metrics=dict(rec.metrics), update_norms_clipped=0, seconds=0.0,
                            epsilon={}, error=None,
                            aborted=rec.error_code if rec.status == "aborted" else None)
                for rec in store.records[1:]]

    # -- the abort policy ---------------------------------------------------------------------------
    def aborted_in_a_row(self) -> int:
        """Rounds aborted in a row, most recent first: each left the global model unchanged, so
        each was an attempt at the same input."""
        n = 0
        for h in reversed(self.history):
            if h.aborted is None:
                break
            n += 1
        return n

    def check_attempts(self, round_: int, in_a_row: int | None = None) -> None:
        """Refuse to start ``round_`` (AggregationAbortedError) when ``max_aborted`` rounds in a
        row already aborted (``in_a_row``: that count as the driver sees it; default
        :meth:`aborted_in_a_row`)."""
        retries = self.aborted_in_a_row() if in_a_row is None else in_a_row
        if self.max_aborted is not None and retries >= self.max_aborted:
            from securefl.errors import AggregationAbortedError

            raise AggregationAbortedError(
                f"round {round_}: the last {retries} rounds aborted; the banks refuse more than "
                f"{self.max_aborted} attempts at one global model")

    # -- one round ---------------------------------------------------------------------------------
    def settle(self, outcome: RoundOutcome) -> RoundReport:
        """Commit one round's outcome (or record its abort), score the model, report it."""
        rc = self._committer()
        on, r = self.phase, outcome.round
        release = outcome.release
        if release is None:  # aborted: outcome.error is set (RoundOutcome checks it)
            metrics = self.history[-1].metrics if self.history else dict(self.evaluate())
            on(r, "committing", "aborted round: audit record, ledger")
            done = rc.abort(r, outcome.participants, outcome.error, alive=outcome.alive,
                            dropouts=outcome.dropouts, drafts=outcome.drafts, metrics=metrics)
        else:
            def evaluate() -> dict[str, float]:
                on(r, "evaluating", "global test split")
                metrics = dict(self.evaluate())
                on(r, "committing", "model, audit record, ledger, signed checkpoint")
                return metrics

            done = rc.commit(r, outcome.participants, release, drafts=outcome.drafts,
                             noise=outcome.noise, dim=outcome.dim, evaluate=evaluate)
        epsilon: dict[str, float] = {}
        if self.account is not None:
            on(r, "accounting", "epsilon spent so far")
            epsilon = self.account()
        report = RoundReport(
            round=r, participants=done.participants, survivors=done.survivors,
            dropouts=done.dropouts, metrics=done.metrics, update_norms_clipped=outcome.clipped,
            seconds=round(time.perf_counter() - outcome.started, 4), epsilon=epsilon,
            aborted=done.error.code if done.error is not None else None,
            error=done.error.message[:MAX_TEXT] if done.error is not None else None)
        self.history.append(report)
        if self.progress is not None:
            self.progress(report)
        return report

    # -- the run -----------------------------------------------------------------------------------
    def run(self, transport: RoundTransport, first: int, last: int) -> list[RoundReport]:
        """Rounds ``first`` .. ``last`` over ``transport``, each outcome settled as it comes;
        returns the whole history (with the rounds committed before a resume)."""
        for _ in self.steps(transport, first, last):
            pass
        return self.history

    def steps(self, transport: RoundTransport, first: int, last: int) -> Iterator[RoundReport]:
        """:meth:`run`, one settled round per ``next()``: for a host that owns the loop and calls
        in once per round (Flower's DefaultWorkflow calls securefl.flower.SecureFLWorkflow), the
        transport yields that round's outcome and the engine settles it before returning."""
        for outcome in transport.rounds(self, first, last):
            yield self.settle(outcome)
