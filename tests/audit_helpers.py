"""Helpers for audit/run-directory tests (also meant for the lead's SIGKILL/--resume test).

- :func:`server_key` a fixed Ed25519 key (from a constant seed) so runs are byte-reproducible;
- :func:`round_inputs` deterministic fake inputs for round r (model bytes, ledger lines, metrics);
- :func:`make_run` creates a run directory with ``rounds`` committed rounds;
- :func:`snapshot` maps every file of a directory (relative posix path) to its bytes;
- ``python tests/audit_helpers.py RUN_DIR ROUNDS`` (:func:`run_child`) creates or resumes a run
  and commits up to ROUNDS rounds: the process tests kill with SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from securefl.audit.store import RunStore
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey

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
        store.finish({"accuracy": 0.81, "rounds": rounds})
    return store


def snapshot(directory: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            p = Path(root) / name
            out[p.relative_to(directory).as_posix()] = p.read_bytes()
    return out


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
        store.finish({"accuracy": 0.81, "rounds": rounds})
    print("done", flush=True)


if __name__ == "__main__":
    run_child(Path(sys.argv[1]), int(sys.argv[2]))
