"""What a transport enforces on its peers, whatever carries the bytes (issue 17): per-stage
deadlines (:class:`Deadlines`) and per-round, per-peer byte caps (:class:`ByteMeter`).

A peer that misses a deadline or goes over its byte cap is a **dropout** at that stage: the
protocol's own dropout handling (SecAgg's unmasking of a dropped client's pairwise masks, CKKS's
leaving it out of the sum) decides what that means, and a round that loses more parties than its
threshold tolerates aborts (:class:`securefl.errors.AggregationAbortedError`). A threshold is never
lowered to let a round finish.

The clock is injected (``Deadlines.clock``), so tests make a straggler deterministically with a
fake clock instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from securefl.errors import AggregationAbortedError, ByteLimitError, ConfigError, DeadlineError

__all__ = ["ByteMeter", "Deadlines", "FakeClock", "deadline_abort"]


@dataclass(frozen=True)
class Deadlines:
    """Per-stage deadlines, in seconds of ``clock``.

    ``stage_s``: how long the server waits for a bank's reply in each stage (from the moment it
    sent the stage's message to the moment the reply is delivered); a later reply is discarded
    and the bank is a dropout at that stage. ``bank_wait_s``: how long a bank waits for the
    server's next message once it has answered; past it the bank gives up the round
    (:class:`securefl.errors.DeadlineError`) and accepts nothing more of it. ``training_s``: how
    long a bank's local training may take in a library run (``securefl.train``); a bank that takes
    longer is a dropout at the round's first stage. None: no deadline.
    """

    stage_s: float | None = None
    bank_wait_s: float | None = None
    training_s: float | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        for name in ("stage_s", "bank_wait_s", "training_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"Deadlines.{name} must be a positive finite number of seconds")

    @staticmethod
    def late(elapsed: float, limit: float | None) -> bool:
        """True when ``elapsed`` seconds overran ``limit`` (never without a limit)."""
        return limit is not None and elapsed > limit


def deadline_abort(err: AggregationAbortedError, late: Collection[int]
                   ) -> AggregationAbortedError:
    """The error a round aborts with: ``err``, or a DeadlineError saying so when parties that
    missed a deadline (``late``) were among the dropouts that brought it below its threshold."""
    if not late or isinstance(err, DeadlineError):
        return err
    return DeadlineError(f"{err.message}; client(s) {sorted(late)[:5]} missed a deadline")


class FakeClock:
    """A clock that moves only when told (tests and simulations: ``Deadlines(clock=FakeClock())``
    with :meth:`advance` called where the simulated delay happens)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ConfigError("a clock only moves forward")
        self.now += seconds


@dataclass
class ByteMeter:
    """Bytes taken from each peer in one round, against a cap per peer. :meth:`take` raises
    :class:`ByteLimitError` naming the cap before the bytes that would exceed it are used; the
    refused peer is remembered (``refused``) and every later byte from it is refused too."""

    limit: int
    what: str
    taken: dict[object, int] = field(default_factory=lambda: defaultdict(int))
    refused: set[object] = field(default_factory=set)

    def take(self, peer: object, nbytes: int) -> None:
        if peer in self.refused or self.taken[peer] + nbytes > self.limit:
            self.refused.add(peer)
            raise ByteLimitError(
                f"{self.what}: {peer} sent {self.taken[peer] + nbytes} bytes this round, over the "
                f"round's limit of {self.limit} bytes per peer (derived from the plan)")
        self.taken[peer] += nbytes
