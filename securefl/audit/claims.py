"""The claims result.json makes, checked against what the signed log and the ledger say.

A signature on result.json proves only that the log key signed it: a server (or whoever holds the
key) can sign a result whose accuracy or epsilon is not the run's. So :func:`check_result_claims`
re-derives every claim it knows from the committed records and ``ledger.jsonl`` and refuses a
result.json that disagrees (protocols/audit/spec.md, "Claims"):

- ``final_metrics``: equal to the metrics of the last round's record (exactly: both are the same
  floats in shortest round-trip JSON);
- ``model_sha256``: the last round's model;
- ``history[i]``: its ``metrics`` equal round ``round``'s record and its ``aborted`` is the
  record's error code (None for a committed round); its running ``epsilon`` (``client``,
  ``record(max bank)``) equal to RDP accounting of the ledger up to that round
  (:class:`securefl.dp.budget.RunningAccount`);
- ``rounds_completed``: the number of committed (not aborted) rounds in the log;
- ``privacy``: equal to :func:`securefl.dp.report.privacy_report` recomputed from the ledger at
  config.json's ``delta`` with the claimed accountant. Numbers are compared with a relative
  tolerance of 1e-9 (float formatting and summation order only); everything else exactly.

The calibration metrics (``brier``, ``ece``) and the reliability curve's bins
(``reliability/BB/...``, :mod:`securefl.fl.metrics`) are metrics like the others, so they are checked
the same way, bit for bit. ``baselines`` (the centralized and bank-alone models' test metrics) cannot
be re-derived: the log records no baseline and the run directory holds no data; they are returned as
not checkable (signed by the log key with result.json, nothing more).

result.json has one schema (securefl.result, protocols/audit/result.schema.json), decoded before
these checks: every field is present, and an empty one (``privacy`` without DP, ``history`` with no
round, ``baselines``) makes no claim. The names of the claims checked and of those present but not
checkable are returned for the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from securefl.audit import layout as L
from securefl.audit.records import LeafRecord, RoundRecord
from securefl.errors import AuditError, SecureFLError

if TYPE_CHECKING:
    from securefl.result import RoundReport, RunResult

__all__ = ["ClaimsChecked", "check_result_claims"]

#: relative tolerance for recomputed epsilons: float formatting and summation order only
REL_TOL = 1e-9
#: running-epsilon keys of a history entry (securefl.runtime.Engine._running_epsilon)
_RUNNING_KEYS = frozenset({"client", "record(max bank)"})


@dataclass
class ClaimsChecked:
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def _fail(claim: str, msg: str) -> AuditError:
    return AuditError(f"{L.RESULT}: claim {claim}: {msg}",
                      hint="result.json states something the signed log and ledger do not say "
                      "(or it was written by another securefl version: see its securefl_version)")


def _same_metrics(claim: str, got: Any, want: dict[str, float], where: str) -> None:
    if not isinstance(got, dict):
        raise _fail(claim, "is not an object of metrics")
    if set(got) != set(want):
        raise _fail(claim, f"names {sorted(got)} differ from {where}'s {sorted(want)}")
    for k, v in want.items():
        g = got[k]
        if isinstance(g, bool) or not isinstance(g, int | float) or float(g) != v:
            raise _fail(claim, f"{k} = {g!r}, but {where} says {v!r}")


def _close(claim: str, got: Any, want: Any, path: str = "") -> None:
    """Equal structure; floats within REL_TOL; everything else exactly."""
    here = f"{claim}{path}"
    if isinstance(want, float) or (isinstance(want, int) and isinstance(got, float)):
        if isinstance(got, bool) or not isinstance(got, int | float) or not math.isclose(
                float(got), float(want), rel_tol=REL_TOL, abs_tol=0.0):
            raise _fail(here, f"{got!r}, but the ledger gives {want!r}")
    elif isinstance(want, dict):
        if not isinstance(got, dict):
            raise _fail(here, "is not an object")
        if set(got) != set(want):
            raise _fail(here, f"claims fields {sorted(set(got) - set(want))} the recomputation "
                        f"does not have and lacks {sorted(set(want) - set(got))}")
        for k in sorted(want):
            _close(claim, got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list | tuple):
        if not isinstance(got, list) or len(got) != len(want):
            raise _fail(here, "differs from the recomputation")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(claim, g, w, f"{path}[{i}]")
    elif got != want or type(got) is not type(want):
        raise _fail(here, f"{got!r}, but the ledger gives {want!r}")


def _delta(config: Any, claimed: Any) -> float:
    d = config.get("delta") if isinstance(config, dict) else None
    if d is None:
        d = claimed
    if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d < 1:
        raise _fail("privacy.delta", f"no usable delta in {L.CONFIG} or the claim")
    return float(d)


def _round_lines(records: Sequence[LeafRecord]) -> dict[int, int]:
    """Round -> number of ledger lines committed up to and including it (verify checked them)."""
    out: dict[int, int] = {}
    n = 0
    for rec in records[1:]:
        if isinstance(rec, RoundRecord):
            n += len(rec.ledger_entries_sha256)
            out[rec.round] = n
    return out


def _history(result: RunResult, records: Sequence[LeafRecord], ledger_lines: list[bytes],
             config: Any, out: ClaimsChecked) -> None:
    by_round = {r.round: r for r in records[1:] if isinstance(r, RoundRecord)}
    running: list[tuple[int, RoundReport]] = []
    for i, h in enumerate(result.history):
        claim = f"history[{i}]"
        rec = by_round.get(h.round)
        if rec is None:
            raise _fail(claim, "names no committed round")
        _same_metrics(f"{claim}.metrics", h.metrics, rec.metrics, f"round {rec.round}'s record")
        if (h.aborted is not None) != (rec.status == "aborted"):
            raise _fail(f"{claim}.aborted", f"round {rec.round} is {rec.status} in the log")
        if h.aborted is not None and h.aborted != rec.error_code:
            raise _fail(f"{claim}.aborted", f"{h.aborted}, but round {rec.round}'s record says "
                        f"{rec.error_code}")
        if h.epsilon:
            if not set(h.epsilon) <= _RUNNING_KEYS:
                out.unchecked.append(f"{claim}.epsilon")
            else:
                running.append((i, h))
    out.checked.append("history")
    if running:
        _running_epsilons(running, records, ledger_lines, config)
        out.checked.append("history.epsilon")
    completed = sum(1 for r in by_round.values() if r.status != "aborted")
    if result.rounds_completed != completed:
        raise _fail("rounds_completed", f"{result.rounds_completed}, but the log holds "
                    f"{completed} committed rounds")
    out.checked.append("rounds_completed")


def _running_epsilons(running: list[tuple[int, RoundReport]], records: Sequence[LeafRecord],
                      ledger_lines: list[bytes], config: Any) -> None:
    from securefl.dp.budget import RunningAccount
    from securefl.dp.ledger import Ledger

    delta = _delta(config, None)
    upto = _round_lines(records)
    entries = _ledger(ledger_lines).entries
    grown, account = Ledger(), RunningAccount()
    for i, h in sorted(running, key=lambda x: x[1].round):
        grown.append(entries[len(grown) : upto[h.round]])
        account.update(grown)
        want: dict[str, float] = {}
        if account.entries("client"):
            want["client"] = account.epsilon(delta, level="client")
        banks = account.parties("record")
        if banks:
            want["record(max bank)"] = max(account.epsilon(delta, level="record", party=p)
                                           for p in banks)
        _close(f"history[{i}].epsilon", dict(h.epsilon), want)


def _ledger(ledger_lines: list[bytes]) -> Any:
    from securefl.dp.ledger import Ledger

    try:
        return Ledger.from_bytes(b"".join(x + b"\n" for x in ledger_lines))
    except SecureFLError as exc:
        raise _fail("privacy", f"{L.LEDGER} cannot be read as a privacy ledger "
                    f"({exc.message})") from exc


def _privacy(claimed: Any, ledger_lines: list[bytes], config: Any) -> None:
    from securefl.dp.report import privacy_report

    if not isinstance(claimed, dict):
        raise _fail("privacy", "is not an object")
    accountant = claimed.get("accountant")
    if accountant not in ("rdp", "prv", "pld"):
        raise _fail("privacy.accountant", f"{accountant!r} is not rdp, prv or pld")
    delta = _delta(config, claimed.get("delta"))
    want = privacy_report(_ledger(ledger_lines), delta, accountant)
    _close("privacy", claimed, want)


def check_result_claims(result: RunResult, records: Sequence[LeafRecord],
                        ledger_lines: list[bytes], config: Any) -> ClaimsChecked:
    """Check result.json's ``result`` (decoded with securefl.result.decode_result) against the
    verified ``records`` (leaf 0 first), ledger lines and parsed config.json; raise
    :class:`AuditError` naming the first false claim."""
    out = ClaimsChecked()
    last = records[-1]
    if isinstance(last, RoundRecord):
        _same_metrics("final_metrics", result.final_metrics, last.metrics,
                      f"round {last.round}'s record")
        out.checked.append("final_metrics")
    else:
        out.unchecked.append("final_metrics")  # no round committed: nothing recorded them
    want = last.model_sha256_after if isinstance(last, RoundRecord) else last.model_sha256
    if result.model_sha256 != want:
        raise _fail("model_sha256", "is not the last round's model")
    out.checked.append("model_sha256")
    _history(result, records, ledger_lines, config, out)
    if result.baselines:
        out.unchecked.append("baselines")  # nothing in the log or ledger to re-derive them from
    if result.privacy:  # {} when DP is off: no claim
        _privacy(result.privacy, ledger_lines, config)
        out.checked.append("privacy")
    return out
