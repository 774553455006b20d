"""Helpers for audit/run-directory tests (also meant for the lead's SIGKILL/--resume test).

- :func:`server_key` a fixed Ed25519 key (from a constant seed) so runs are byte-reproducible;
- :func:`round_inputs` deterministic fake inputs for round r (model bytes, ledger lines, metrics);
- :func:`make_run` creates a run directory with ``rounds`` committed rounds;
- :func:`fake_result` a result (securefl.result.RunResult) consistent with a store's log;
- :func:`snapshot` maps every file of a directory (relative posix path) to its bytes;
- :func:`resign_result`, :func:`rewrite_commit`, :func:`resign_everything`: the tampering an
  attacker with (or without) a signing key can do, for tests/test_audit_claims.py;
- ``python tests/audit_helpers.py RUN_DIR ROUNDS`` (:func:`run_child`) creates or resumes a run
  and commits up to ROUNDS rounds: the process tests kill with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from securefl.audit.layout import decode_commit, encode_commit, sign_commit
from securefl.audit.note import b64encode
from securefl.audit.records import RoundRecord, canonical_json
from securefl.audit.store import CALLER_FIELDS, RunStore
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.result import RunResult, decode_result

ORIGIN = "securefl.test/run-0001"
CONFIG: dict[str, Any] = {"rounds": 5, "mode": "secagg+", "dp": {"clip": 1.0, "sigma": 0.8}}
CLIENTS = ["bank0", "bank1", "bank2", "bank3"]


def server_key(tag: bytes = b"server") -> SigningKey:
    return SigningKey.from_seed(Secret(hashlib.sha256(b"audit-test-" + tag).digest()))


def federation() -> dict[str, Any]:
    return {"clients": {c: server_key(c.encode()).verify_key.raw.hex() for c in CLIENTS}}


def initial_model() -> bytes:
    return hashlib.sha256(b"model-0").digest() * 2


def round_inputs(r: int) -> dict[str, Any]:
    """Keyword arguments of RunStore.commit_round for round ``r`` (deterministic)."""
    dropped = CLIENTS[r % len(CLIENTS)]
    survivors = [c for c in CLIENTS if c != dropped]
    model = hashlib.sha256(b"model-%d" % r).digest() * 2
    aborted = r == 3
    fields: dict[str, Any] = {
        "session_id": hashlib.sha256(b"session-%d" % r).hexdigest()[:32],
        "aggregation": "secagg+",
        "participants": CLIENTS,
        "survivors": survivors,
        "dropouts": {dropped: "masked_input"},
        "input_digests": {c: hashlib.sha256(f"{c}-{r}".encode()).hexdigest() for c in survivors},
        "aggregate_digest": None if aborted else hashlib.sha256(b"agg-%d" % r).hexdigest(),
    }
    if aborted:
        fields["status"] = "aborted"
        fields["error_code"] = "SFL310"
        model = hashlib.sha256(b"model-%d" % (r - 1)).digest() * 2
    ledger = [] if aborted else [
        b'{"event":"gaussian","noise_multiplier":0.8,"round":%d}' % r,
        b'{"event":"sampled","rate":0.5,"round":%d}' % r,
    ]
    return {
        "round_": r,
        "record_fields": fields,
        "model": model,
        "ledger_lines": ledger,
        "metrics": {"loss": 1.0 / r, "accuracy": 0.5 + r / 100},
    }


def create_run(run_dir: Path) -> RunStore:
    return RunStore.create(run_dir, config=CONFIG, server_key=server_key(), origin=ORIGIN,
                           initial_model=initial_model(), federation=federation())


def make_run(run_dir: Path, rounds: int, *, finish: bool = True) -> RunStore:
    store = create_run(run_dir)
    for r in range(1, rounds + 1):
        store.commit_round(**round_inputs(r))
    if finish:
        store.finish(fake_result(store))
    return store


def fake_result(store: RunStore, **fields: Any) -> RunResult:
    """A result.json a driver could write for ``store``'s log: its last model and metrics, the
    number of committed rounds, no history and no privacy claim; ``fields`` replace any of it."""
    last = store.records[-1]
    base = RunResult(
        securefl_version="0.0.test", transport="in-process", session_id="ab",
        aggregation="secagg+", insecure=False, dp=False, task=None, manifest_sha256=None,
        run_dir="run", final_metrics=dict(last.metrics) if isinstance(last, RoundRecord) else {},
        rounds_completed=sum(1 for r in store.records[1:]
                             if isinstance(r, RoundRecord) and r.status != "aborted"),
        history=[], baselines={}, privacy={}, model_sha256=store.model_sha256(store.last_round),
        seconds=None, stopped_early=None, round_trips=None, round_trips_per_round=None,
        trips=None, refused={})
    return msgspec.structs.replace(base, **fields)


def snapshot(directory: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            p = Path(root) / name
            out[p.relative_to(directory).as_posix()] = p.read_bytes()
    return out


# ---------------------------------------------------------------------- an attacker's tools
def resign_result(run_dir: Path, key: SigningKey, mutate: Callable[[dict[str, Any]], None],
                  ) -> None:
    """What a holder of the server key can do: change result.json's ``result`` object, sign it
    again and point a re-signed COMMIT at it."""
    doc = json.loads((run_dir / "result.json").read_bytes())
    mutate(doc["body"]["result"])
    body = canonical_json(doc["body"])
    sig = key.sign(b"securefl-audit-result-v1\n" + body)
    data = canonical_json({"body": doc["body"], "signature": b64encode(sig)})
    (run_dir / "result.json").write_bytes(data)
    rewrite_commit(run_dir, key, result_sha256=hashlib.sha256(data).hexdigest())


def rewrite_commit(run_dir: Path, key: SigningKey | None, **fields: Any) -> None:
    """Change COMMIT's fields; re-sign it with ``key``, or keep the old signature (None)."""
    ptr = msgspec.structs.replace(decode_commit((run_dir / "COMMIT").read_bytes()), **fields)
    if key is not None:
        ptr = sign_commit(ptr, key)
    (run_dir / "COMMIT").write_bytes(encode_commit(ptr))


def resign_everything(src: Path, dst: Path, key: SigningKey) -> None:
    """What anyone can do with a copied run directory: write the same run again under a new key
    (every record, checkpoint, result.json and COMMIT signed by ``key``)."""
    old = RunStore.open(src, verify=False)
    fed = json.loads((src / "federation.json").read_bytes())
    store = RunStore.create(dst, config=json.loads((src / "config.json").read_bytes()),
                            server_key=key, origin=old.origin,
                            initial_model=old.model_bytes(0), federation=fed["members"],
                            write_key_file=fed["server_key_file"] is not None)
    ledger = (src / "ledger.jsonl").read_bytes().split(b"\n")[:-1]
    for rec in old.records[1:]:
        assert isinstance(rec, RoundRecord)
        n = len(rec.ledger_entries_sha256)
        lines, ledger = ledger[:n], ledger[n:]
        fields = {k: getattr(rec, k) for k in CALLER_FIELDS}
        store.commit_round(round_=rec.round, record_fields=fields,
                           model=old.model_bytes(rec.round), ledger_lines=lines,
                           metrics=rec.metrics)
    if (src / "result.json").exists():
        store.finish(decode_result(json.loads((src / "result.json").read_bytes())["body"]["result"]))


def run_child(run_dir: Path, rounds: int) -> None:
    """Create or resume ``run_dir`` and commit rounds up to ``rounds``, then finish: the body of a
    process a test SIGKILLs at random instants. Prints ``<round>`` after each commit."""
    if not (run_dir / "COMMIT").exists():
        if run_dir.exists():  # killed inside create(): not resumable by design, start over
            shutil.rmtree(run_dir)
        store = create_run(run_dir)
    else:
        store = RunStore.open(run_dir)
    for r in range(store.last_round + 1, rounds + 1):
        store.commit_round(**round_inputs(r))
        print(r, flush=True)
    if not (run_dir / "result.json").exists():
        store.finish(fake_result(store))
    print("done", flush=True)


if __name__ == "__main__":
    run_child(Path(sys.argv[1]), int(sys.argv[2]))
