"""Privacy report: (epsilon, delta) per bank and for the federation, recomputed from the ledger.

Record level: the bank's own DP-SGD entries (protects one record of that bank's data).
Client level: the federation's noised-sum entries (protects a whole bank's participation). Every
client-level entry of the federation counts against every bank, as if each bank took part in every
round (the ledger's ``participants`` counts parties, not names, so this is the safe reading).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from securefl.dp.accountants import UnsupportedEventError, entry_events, epsilon_of_events
from securefl.dp.ledger import Ledger, LedgerEntry

__all__ = ["LARGE_CLIENT_EPSILON", "format_report", "privacy_report"]

#: client-level epsilon above which the report warns in plain language
LARGE_CLIENT_EPSILON = 10.0
#: noise sources whose draws someone can predict (securefl.dp.ledger.NoiseSource), and why
PREDICTABLE_SOURCES = {
    "seeded_chacha20": "seeded_chacha20 is securefl run's seeded streams (predictable to whoever "
                       "knows --seed)",
    "torch_prng": "torch_prng is torch's Mersenne Twister (not cryptographic)",
}


def _account(entries: Sequence[LedgerEntry], delta: float, accountant: str) -> dict[str, Any]:
    if not entries:
        return {"epsilon": 0.0, "delta": delta, "accountant": accountant, "entries": 0,
                "rounds": 0, "note": "no entries: nothing released at this level"}
    events = entry_events(entries)
    used, note = accountant, None
    try:
        eps = epsilon_of_events(events, delta, accountant)
    except UnsupportedEventError as exc:
        used = "rdp"
        note = f"{accountant} cannot account these events ({exc.message}); RDP bound shown instead"
        eps = epsilon_of_events(events, delta, "rdp")
    out: dict[str, Any] = {"epsilon": eps, "delta": delta, "accountant": used,
                           "entries": len(entries),
                           "rounds": len({e.round for e in entries})}
    if note:
        out["note"] = note
    return out


def privacy_report(ledger: Ledger, delta: float, accountant: str = "rdp") -> dict[str, Any]:
    """Per-bank and federation (epsilon, delta) at record and client level, with warnings.

    Returns a JSON-ready dict: ``{"delta", "accountant", "entries", "head_hash", "federation":
    {"client": ...}, "banks": {name: {"record": ..., "client": ...}}, "colluders",
    "noise_sources": {"record": [...], "client": [...]}, "warnings": [str]}``; each level holds
    ``epsilon``, ``delta``, the ``accountant`` actually used, ``entries``, ``rounds``;
    ``colluders`` is the largest number of colluding banks the client-level entries assume.
    """
    entries = ledger.entries
    fed_client = [e for e in entries if e.party == "federation" and e.level == "client"]
    banks = sorted({e.party for e in entries if e.party.startswith("bank:")})
    report: dict[str, Any] = {
        "delta": delta,
        "accountant": accountant,
        "entries": len(entries),
        "head_hash": ledger.head_hash,
        "federation": {"client": _account(fed_client, delta, accountant)},
        "banks": {},
        "warnings": [],
    }
    for bank in banks:
        own_record = [e for e in entries if e.party == bank and e.level == "record"]
        own_client = [e for e in entries if e.party == bank and e.level == "client"]
        report["banks"][bank.removeprefix("bank:")] = {
            "record": _account(own_record, delta, accountant),
            "client": _account(sorted(fed_client + own_client, key=lambda e: e.seq), delta,
                               accountant),
        }
    warnings: list[str] = report["warnings"]
    fed_eps = report["federation"]["client"]["epsilon"]
    if not fed_client:
        warnings.append("No client-level DP was recorded: the released models are not protected "
                        "at the level of a whole bank.")
    elif fed_eps > LARGE_CLIENT_EPSILON or math.isinf(fed_eps):
        max_participants = max(e.participants for e in fed_client)
        warnings.append(
            f"Client-level epsilon is {fed_eps:.3g}, which is large: it bounds what the released "
            f"models reveal about whether a whole bank took part. With only {max_participants} "
            "banks, each taking part in every round, little noise per bank is affordable; treat "
            "the client-level guarantee as weak and rely on the record-level guarantee and the "
            "contracts between banks.")
    for bank, levels in report["banks"].items():
        if levels["record"]["entries"] == 0:
            warnings.append(f"Bank {bank} trained without record-level DP (no DP-SGD entries).")
    report["colluders"] = max((e.colluders for e in fed_client), default=0)
    report["noise_sources"] = {
        level: sorted({e.noise_source or "not recorded" for e in entries if e.level == level})
        for level in ("record", "client")}
    if report["colluders"]:
        warnings.append(f"Client-level epsilon assumes up to {report['colluders']} colluding "
                        "bank(s) who subtract their own noise shares (recorded in the ledger); "
                        "more colluders than that void it.")
    predictable = sorted({e.noise_source for e in entries
                          if e.noise_source in PREDICTABLE_SOURCES})
    if predictable:
        warnings.append(
            f"Noise came from {', '.join(predictable)}: "
            + "; ".join(PREDICTABLE_SOURCES[s] for s in predictable)
            + ". Noise that can be predicted can be subtracted: this is a reproducible "
              "simulation's guarantee, not a deployment's (a deployment draws from the OS "
              "CSPRNG).")
    return report


def _fmt_eps(level: dict[str, Any]) -> str:
    if level["entries"] == 0:
        return "-"
    eps = level["epsilon"]
    s = "inf" if math.isinf(eps) else f"{eps:.4f}"
    if level["accountant"] != "":
        s += f" ({level['accountant']})"
    return s


def format_report(report: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`privacy_report`'s dict for people."""
    lines = [
        f"Privacy report (delta = {report['delta']:g}, accountant = {report['accountant']}, "
        f"{report['entries']} ledger entries)",
        "",
    ]
    fed = report["federation"]["client"]
    rows = [("federation", "-", _fmt_eps(fed))] + [
        (f"bank {bank}", _fmt_eps(levels["record"]), _fmt_eps(levels["client"]))
        for bank, levels in report["banks"].items()]
    header = ("party", "record-level epsilon", "client-level epsilon")
    w0 = max(len(r[0]) for r in [header, *rows]) + 2
    w1 = max(len(r[1]) for r in [header, *rows]) + 2
    lines += [f"{a:<{w0}}{b:<{w1}}{c}" for a, b, c in [header, *rows]]
    notes = [fed.get("note")] + [lv.get("note") for b in report["banks"].values()
                                 for lv in b.values()]
    notes = sorted({n for n in notes if n and not n.startswith("no entries")})
    if notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in notes]
    if report["warnings"]:
        lines += ["", "Warnings:"] + [f"  ! {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
