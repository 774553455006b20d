"""What a compliance report may say about a run directory: only facts that survived verification.

:func:`gather` first verifies the directory (:func:`securefl.audit.verify.verify_run_dir`: every
signature, proof, hash chain, file and result.json claim). If that fails, it returns the error and
nothing else: no number from an unverified directory reaches the report. Otherwise:

- model numbers (ROC-AUC, PR-AUC, log-loss, Brier, ECE, the reliability curve) are read from the
  signed round records themselves, never from metrics.jsonl or result.json (the directory holds no
  evaluation data to recompute them from); the ECE is checked against its own reliability bins;
- every epsilon is recomputed from ``ledger.jsonl`` (:func:`securefl.dp.report.privacy_report`, RDP),
  per round from the ledger lines the records committed up to that round;
- participation and dropouts come from the records; the configuration from ``config.json`` (its
  sha256 is in every record); the latest signed checkpoint from ``audit/checkpoints``;
- the baselines are the one thing the log does not record: they are taken from the signed
  result.json and labelled as such (signed by the log key, not re-derivable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefl.errors import AuditError, SecureFLError

if TYPE_CHECKING:
    from securefl.audit.records import RoundRecord
    from securefl.audit.verify import VerifyReport
    from securefl.crypto.signing import VerifyKey
    from securefl.fl.metrics import ReliabilityBin

__all__ = ["RoundEpsilon", "RunFacts", "gather"]

#: |recorded ECE - ECE of the recorded bins| above this is reported as an inconsistency
ECE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RoundEpsilon:
    """Epsilon spent up to and including ``round`` (RDP at the run's delta), from the ledger."""

    round: int
    federation_client: float | None
    bank_record: dict[str, float]
    bank_client: dict[str, float]


@dataclass
class RunFacts:
    """The verified facts of one run directory (or the reason there are none)."""

    run_dir: str
    error: SecureFLError | None = None
    verified: VerifyReport | None = None
    config: dict[str, Any] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    checkpoint: str = ""
    privacy: dict[str, Any] = field(default_factory=dict)
    epsilon: list[RoundEpsilon] = field(default_factory=list)
    reliability: list[ReliabilityBin] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    #: self-consistency checks of the recorded numbers, each (what, passed)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.verified is not None

    @property
    def committed(self) -> list[RoundRecord]:
        return [r for r in self.rounds if r.status == "committed"]


def gather(run_dir: Path, *, pubkey: VerifyKey | None = None,
           key_source: str | None = None) -> RunFacts:
    """Verify ``run_dir`` and collect what the report shows; never raises a securefl error for a
    bad directory (the error is in :attr:`RunFacts.error`)."""
    facts = RunFacts(run_dir=str(run_dir))
    try:
        _gather(Path(run_dir), facts, pubkey, key_source)
    except SecureFLError as err:
        return RunFacts(run_dir=str(run_dir), error=err)
    return facts


def _gather(run_dir: Path, facts: RunFacts, pubkey: VerifyKey | None,
            key_source: str | None) -> None:
    from securefl.audit import layout as L
    from securefl.audit.merkle import MerkleTree
    from securefl.audit.note import b64encode
    from securefl.audit.records import RoundRecord, decode_leaf
    from securefl.audit.verify import verify_run_dir

    facts.verified = verify_run_dir(run_dir, pubkey=pubkey, key_source=key_source)
    # verification read and checked these files; read again here, they are checked against what
    # it established (tree size, config hash), so a file swapped in between is caught
    leaves = L.split_lines(L.read_bytes(run_dir, L.LOG), L.LOG)
    tree = MerkleTree()
    for leaf in leaves:
        tree.append_data(leaf)
    if b64encode(tree.root()) != facts.verified.root_hash:
        raise AuditError(f"{L.LOG} changed while the report was made")
    records = [decode_leaf(x) for x in leaves]
    facts.rounds = [r for r in records if isinstance(r, RoundRecord)]
    config_bytes = L.read_bytes(run_dir, L.CONFIG)
    if L.sha256_hex(config_bytes) != records[0].config_sha256:
        raise AuditError(f"{L.CONFIG} changed while the report was made")
    config = L.decode_json_canonical(config_bytes, L.CONFIG)
    fed = L.decode_json_canonical(L.read_bytes(run_dir, L.FEDERATION), L.FEDERATION)
    facts.config = config if isinstance(config, dict) else {}
    facts.members = fed.get("members", {}) if isinstance(fed, dict) else {}
    facts.checkpoint = _last_checkpoint(L.read_bytes(run_dir, L.CHECKPOINTS))
    ledger_lines = L.split_lines(L.read_bytes(run_dir, L.LEDGER), L.LEDGER)
    _privacy(facts, ledger_lines)
    _model(facts)
    if facts.verified.has_result:
        _baselines(facts, L.decode_json_canonical(L.read_bytes(run_dir, L.RESULT), L.RESULT))


def _last_checkpoint(data: bytes) -> str:
    """The last signed note of audit/checkpoints (5 lines each; verification checked them)."""
    lines = data.decode("utf-8").split("\n")[:-1]
    return "\n".join(lines[-5:]) + "\n" if len(lines) >= 5 else ""


def _privacy(facts: RunFacts, ledger_lines: list[bytes]) -> None:
    from securefl.audit.layout import sha256_hex
    from securefl.dp.ledger import Ledger
    from securefl.dp.report import privacy_report

    committed = [h for rec in facts.rounds for h in rec.ledger_entries_sha256]
    if [sha256_hex(x) for x in ledger_lines] != committed:
        raise AuditError("ledger.jsonl changed while the report was made")
    if not ledger_lines:
        return
    delta = facts.config.get("delta")
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise AuditError("config.json has no usable delta to account the ledger at")
    facts.privacy = privacy_report(Ledger.from_bytes(b"".join(x + b"\n" for x in ledger_lines)),
                                   float(delta), "rdp")
    upto = 0
    for rec in facts.rounds:
        upto += len(rec.ledger_entries_sha256)
        if not upto:
            continue
        rep = privacy_report(Ledger.from_bytes(b"".join(x + b"\n" for x in ledger_lines[:upto])),
                             float(delta), "rdp")
        fed = rep["federation"]["client"]
        facts.epsilon.append(RoundEpsilon(
            round=rec.round,
            federation_client=fed["epsilon"] if fed["entries"] else None,
            bank_record={b: v["record"]["epsilon"] for b, v in rep["banks"].items()
                         if v["record"]["entries"]},
            bank_client={b: v["client"]["epsilon"] for b, v in rep["banks"].items()
                         if v["client"]["entries"]}))


def _model(facts: RunFacts) -> None:
    from securefl.fl.metrics import reliability_from_metrics

    last = facts.committed[-1] if facts.committed else None
    if last is None:
        return
    facts.reliability = reliability_from_metrics(last.metrics)
    if facts.reliability and "ece" in last.metrics:
        total = sum(b.n for b in facts.reliability)
        ece = sum(b.n / total * abs(b.observed - b.predicted) for b in facts.reliability)
        facts.checks.append((f"round {last.round}'s ECE ({last.metrics['ece']:.4f}) equals the ECE "
                             "of its recorded reliability bins",
                             math.isclose(ece, last.metrics["ece"], rel_tol=0, abs_tol=ECE_TOLERANCE)))


def _baselines(facts: RunFacts, doc: Any) -> None:
    """The baselines result.json states (the one result schema, securefl.result; verification
    decoded it already), kept when every value is finite."""
    from securefl.result import decode_result

    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
        raise AuditError("result.json changed while the report was made")
    for name, metrics in decode_result(doc["body"].get("result")).baselines.items():
        if all(math.isfinite(v) for v in metrics.values()):
            facts.baselines[name] = dict(metrics)
