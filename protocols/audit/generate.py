"""Regenerate protocols/audit/ artefacts from securefl.audit (run from the repo root):

    python protocols/audit/generate.py

- record.schema.json: JSON Schema of a leaf, from the msgspec structs;
- result.schema.json: JSON Schema of result.json's ``result`` object, from securefl.result (the one
  result every driver writes);
- vectors/securefl_run/: a 3-round run directory written by RunStore with a fixed, published test
  key (seed = SHA-256("securefl-audit-vector")) and no key file: what another implementation's
  verifier must accept (securefl regression vectors, not independent ones).

tests/test_audit_records.py, tests/test_result_schema.py and tests/test_audit_vectors.py fail when
these drift from the code.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import securefl
from securefl.audit.records import leaf_json_schema
from securefl.audit.store import RunStore
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.result import RunResult, result_json_schema
from securefl.schema import render as render_schema

HERE = Path(__file__).resolve().parent
VECTOR_SEED = hashlib.sha256(b"securefl-audit-vector").digest()
VECTOR_ORIGIN = "vectors.securefl/audit-v1"


def render() -> str:
    return render_schema(leaf_json_schema())


def render_result() -> str:
    return render_schema(result_json_schema())


def _round(r: int) -> dict[str, Any]:
    clients = ["bank0", "bank1", "bank2"]
    survivors = clients if r != 2 else ["bank0", "bank2"]
    return {
        "round_": r,
        "record_fields": {
            "session_id": hashlib.sha256(b"vector-session-%d" % r).hexdigest()[:32],
            "aggregation": "secagg+",
            "participants": clients,
            "survivors": survivors,
            "dropouts": {} if r != 2 else {"bank1": "unmasking"},
            "input_digests": {c: hashlib.sha256(f"{c}/{r}".encode()).hexdigest()
                              for c in survivors},
            "aggregate_digest": hashlib.sha256(b"aggregate-%d" % r).hexdigest(),
        },
        "model": b"model after round %d\n" % r,
        "ledger_lines": [b'{"mechanism":"gaussian","noise_multiplier":1.1,"round":%d}' % r],
        "metrics": {"loss": 0.5 / r, "auc": 0.7 + r / 100},
    }


def write_vector_run(target: Path) -> None:
    key = SigningKey.from_seed(Secret(VECTOR_SEED, label="published test seed"))
    store = RunStore.create(
        target, config={"rounds": 3, "aggregation": "secagg+", "clip": 1.0},
        server_key=key, origin=VECTOR_ORIGIN, initial_model=b"initial model\n",
        federation={"clients": {f"bank{i}": hashlib.sha256(b"pk%d" % i).hexdigest()
                                for i in range(3)}},
        write_key_file=False)
    for r in (1, 2, 3):
        store.commit_round(**_round(r))
    store.finish(RunResult(
        securefl_version=securefl.__version__, transport="in-process",
        session_id=_round(3)["record_fields"]["session_id"], aggregation="secagg+",
        insecure=False, dp=False, task="classification", manifest_sha256=None,
        run_dir="securefl_run", rounds_completed=3, final_metrics=_round(3)["metrics"],
        history=[], baselines={}, privacy={}, model_sha256=store.model_sha256(3), seconds=None,
        stopped_early=None, round_trips=None, round_trips_per_round=None, trips=None,
        refused={}))


if __name__ == "__main__":
    (HERE / "record.schema.json").write_text(render(), encoding="utf-8")
    (HERE / "result.schema.json").write_text(render_result(), encoding="utf-8")
    out = HERE / "vectors" / "securefl_run"
    with tempfile.TemporaryDirectory() as tmp:
        write_vector_run(Path(tmp) / "run")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(Path(tmp) / "run", out)
