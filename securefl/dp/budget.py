"""Privacy budgets: refuse a plan that exceeds the target, stop before the round that would.

DESIGN.md section 6: a run refuses to start when its plan exceeds the target epsilon, and stops at
the first round whose entries would take the spent epsilon above it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from securefl.dp.accountants import (
    RDP_ORDERS,
    RdpAccount,
    entry_events,
    epsilon_of_events,
    max_rounds_within,
    to_add_remove,
)
from securefl.dp.events import ComposedEvent, Event, SelfComposedEvent
from securefl.dp.fedavg import client_round_event
from securefl.dp.ledger import Draft, Ledger, LedgerEntry
from securefl.errors import BudgetExceededError, PrivacyError

if TYPE_CHECKING:
    from securefl.protocol.plan import NoisePlan
    from securefl.protocol.quantize import Encoding

__all__ = ["BudgetCheck", "RunningAccount", "check_plan", "planned_client_events", "spent_epsilon",
           "worst_case_events", "would_exceed"]


@dataclass(frozen=True)
class BudgetCheck:
    """Outcome of a budget check: epsilon after the step and the target it was compared with."""

    epsilon: float
    target_epsilon: float
    delta: float
    accountant: str

    @property
    def exceeds(self) -> bool:
        return self.epsilon > self.target_epsilon


def _check_target(target_epsilon: float) -> None:
    if not isinstance(target_epsilon, int | float) or math.isnan(target_epsilon) \
            or target_epsilon <= 0:
        raise PrivacyError(f"target_epsilon must be > 0, got {target_epsilon!r}")


def check_plan(per_round: Sequence[Event], rounds: int, target_epsilon: float, delta: float,
               accountant: str = "rdp", *, spent: Sequence[Event] = ()) -> BudgetCheck:
    """Raise :class:`BudgetExceededError` if ``rounds`` repetitions of ``per_round`` (after
    ``spent``) exceed ``target_epsilon`` at ``delta``; the message gives the planned epsilon, the
    excess and the largest number of rounds that fits. Returns the check when the plan fits.

    ``per_round``: the events one party releases per round at one level (e.g. the federation's
    client-level Gaussian, or one bank's DP-SGD steps).
    """
    _check_target(target_epsilon)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise PrivacyError(f"rounds must be an integer >= 0, got {rounds!r}")
    planned = list(spent) + ([SelfComposedEvent(ComposedEvent(list(per_round)), rounds)]
                             if rounds else [])
    eps = epsilon_of_events(planned, delta, accountant)
    check = BudgetCheck(eps, float(target_epsilon), delta, accountant)
    if check.exceeds:
        fit = max_rounds_within(target_epsilon, delta, per_round, accountant, spent=spent,
                                limit=rounds)
        raise BudgetExceededError(
            f"the plan of {rounds} rounds spends epsilon = {eps:.4f} ({accountant}, "
            f"delta = {delta:g}), {eps - target_epsilon:.4f} above the target "
            f"{target_epsilon:g}; at most {fit} rounds fit",
            hint=f"run at most {fit} rounds, raise the noise multiplier, or raise the target")
    return check


def worst_case_events(candidates: Sequence[Event], orders: Sequence[float] = RDP_ORDERS
                      ) -> list[Event]:
    """What a budget plan charges for one round whose recorded event will be one of
    ``candidates`` (e.g. one per admissible survivor count): the candidate whose RDP curve is at
    least every other's at every order, so composing it bounds whichever one the round records;
    if none dominates (the distributed discrete Gaussian's tau term grows with the survivors
    while its L2 term shrinks), all distinct candidates composed, an upper bound since RDP curves
    are non-negative."""
    distinct = list(dict.fromkeys(candidates))
    if len(distinct) <= 1:
        return distinct
    account = [RdpAccount(orders) for _ in distinct]
    for acc, ev in zip(account, distinct, strict=True):
        acc.add([to_add_remove(ev)])
    curves = [acc.rdp() for acc in account]
    for ev, curve in zip(distinct, curves, strict=True):
        if all(bool((curve >= other).all()) for other in curves):
            return [ev]
    return distinct


def planned_client_events(plan: NoisePlan, n_participants: int, *,
                          encoding: Encoding | None = None, dim: int | None = None
                          ) -> list[Event]:
    """What a budget charges for one round of ``n_participants`` under ``plan``: the event the
    round records (:func:`securefl.dp.fedavg.client_round_event`, the same function the record
    uses) for every admissible survivor count, reduced by :func:`worst_case_events`."""
    return worst_case_events([client_round_event(plan, s, encoding=encoding, dim=dim)
                              for s in range(plan.min_survivors, n_participants + 1)])


def spent_epsilon(entries: Sequence[LedgerEntry], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the given ledger entries (select one party and level before calling)."""
    return epsilon_of_events(entry_events(entries), delta, accountant)


def would_exceed(ledger: Ledger, next_round: Sequence[Draft], target_epsilon: float,
                 delta: float, accountant: str = "rdp") -> dict[tuple[str, str], BudgetCheck]:
    """Checks, per (party, level) touched by ``next_round``, whether committing it would exceed the
    target. Returns every check; the caller stops before the round if any ``check.exceeds``.

    Client-level entries of the federation also count against every bank (each bank's
    participation is what client-level DP protects), so they are checked as ("federation",
    "client").
    """
    _check_target(target_epsilon)
    out: dict[tuple[str, str], BudgetCheck] = {}
    keys = sorted({(d.party, d.level) for d in next_round})
    for party, level in keys:
        past = [e for e in ledger.entries if e.party == party and e.level == level]
        new = [d for d in next_round if d.party == party and d.level == level]
        events = entry_events(past) + [
            d.event if d.neighbouring == "add_remove" else to_add_remove(d.event) for d in new]
        eps = epsilon_of_events(events, delta, accountant)
        out[(party, level)] = BudgetCheck(eps, float(target_epsilon), delta, accountant)
    return out


class RunningAccount:
    """RDP accounts of a growing ledger per (party, level), updated incrementally.

    :meth:`update` reads only the entries appended since its previous call (a ledger only grows; a
    ledger that does not extend the one already read is read again from its first entry) and adds
    each one's cached RDP curve times its count to the account (:class:`RdpAccount`), so a round's
    running epsilon costs O(new entries + distinct events), not O(rounds). The numbers are bit
    for bit those of :func:`spent_epsilon` with ``accountant="rdp"`` on the same entries.
    """

    def __init__(self, orders: Sequence[float] = RDP_ORDERS) -> None:
        self.orders = tuple(orders)
        self._reset()

    def _reset(self) -> None:
        self._read = 0
        self._head = ""
        self._accounts: dict[tuple[str | None, str], RdpAccount] = {}
        self._entries: dict[tuple[str | None, str], int] = {}

    def update(self, ledger: Ledger) -> None:
        """Account the entries appended to ``ledger`` since the previous call."""
        entries, n = ledger.entries, len(ledger)
        if self._read and (n < self._read or self._head != (
                entries[self._read].prev_hash if n > self._read else ledger.head_hash)):
            self._reset()  # not an extension of the ledger read so far: read it from the start
        for k in range(self._read, n):
            e = entries[k]
            event = e.event if e.neighbouring == "add_remove" else to_add_remove(e.event)
            for key in ((e.party, e.level), (None, e.level)):
                acc = self._accounts.get(key)
                if acc is None:
                    acc = self._accounts[key] = RdpAccount(self.orders)
                acc.add([event])  # validates before it changes anything
                self._entries[key] = self._entries.get(key, 0) + 1
            self._read = k + 1
            self._head = entries[k + 1].prev_hash if k + 1 < n else ledger.head_hash

    def parties(self, level: str) -> list[str]:
        """Parties with entries at ``level``, in the order they first appear."""
        return [p for p, lv in self._accounts if p is not None and lv == level]

    def entries(self, level: str, party: str | None = None) -> int:
        """How many entries of ``party`` (None: every party) at ``level`` were read."""
        return self._entries.get((party, level), 0)

    def epsilon(self, delta: float, *, level: str, party: str | None = None) -> float:
        """RDP epsilon at ``delta`` of the entries of ``party`` (None: every party) at ``level``."""
        acc = self._accounts.get((party, level))
        return RdpAccount(self.orders).epsilon(delta) if acc is None else acc.epsilon(delta)
