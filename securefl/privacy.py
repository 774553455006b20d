"""Public privacy API: events, the ledger, epsilon from any accountant, budgets and reports.

>>> from securefl import privacy
>>> step = privacy.PoissonSampledEvent(0.01, privacy.GaussianEvent(1.1))
>>> ev = privacy.SelfComposedEvent(step, 1000)
>>> round(privacy.epsilon([ev], delta=1e-5, accountant="rdp"), 4)
1.7118

Epsilon is always recomputed from events ("rdp": Opacus RDP, "prv": Opacus PRV, "pld": Google
dp-accounting PLD); a ledger never stores it. torch and opacus are imported only when needed.

A bank's own lifetime budget (:class:`BankBudget`, caps :class:`BudgetCaps`): before it takes part
in a round, a bank calls ``charge_round(budget, planned_round_drafts(...), session=..., round_=...,
record_noise=..., client_noise=...)`` (a round without the noise a cap meters is refused)
and refuses the round on :class:`~securefl.errors.BudgetExceededError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from securefl.dp.accountants import (
    ACCOUNTANTS,
    UnsupportedEventError,
    calibrate_noise,
    entry_events,
    epsilon_of_events,
    max_rounds_within,
)
from securefl.dp.bank_budget import BankBudget, BudgetCaps, charge_round, planned_round_drafts
from securefl.dp.budget import BudgetCheck, check_plan, would_exceed
from securefl.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.dp.ledger import Draft, Ledger, LedgerEntry
from securefl.dp.report import format_report, privacy_report

__all__ = [
    "ACCOUNTANTS",
    "BankBudget",
    "BudgetCaps",
    "BudgetCheck",
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "Draft",
    "Event",
    "GaussianEvent",
    "Ledger",
    "LedgerEntry",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "UnsupportedEventError",
    "calibrate_noise",
    "charge_round",
    "check_plan",
    "epsilon",
    "format_report",
    "max_rounds_within",
    "planned_round_drafts",
    "report",
    "would_exceed",
]


def epsilon(events: Sequence[Event | LedgerEntry] | Ledger, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the adaptive composition of ``events`` (events or ledger entries,
    e.g. one party's entries at one level) with accountant "rdp", "prv" or "pld"."""
    items = list(events.entries) if isinstance(events, Ledger) else list(events)
    entries = [e for e in items if isinstance(e, LedgerEntry)]
    plain: list[Event] = [e for e in items if not isinstance(e, LedgerEntry)]
    return epsilon_of_events(plain + entry_events(entries), delta, accountant)


def report(ledger: Ledger | str | os.PathLike[str], delta: float = 1e-5,
           accountant: str = "rdp") -> dict[str, Any]:
    """:func:`securefl.dp.report.privacy_report` of a ledger or a ledger file (ledger.jsonl)."""
    led = ledger if isinstance(ledger, Ledger) else Ledger.load(ledger)
    return privacy_report(led, delta, accountant)
