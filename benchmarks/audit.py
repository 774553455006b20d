"""Audit log cost: append, checkpoint signing, run-directory commit and verification; proof sizes.

    python benchmarks/audit.py            # 1e4 and 1e5 records (a few minutes on 2 cores)
    python benchmarks/audit.py --quick    # 1e3 and 1e4

Prints a table and writes benchmarks/results/audit.json. Run directories for the verify benchmark
are written with fsync disabled, on /dev/shm when it exists (a benchmark of *verification*; file
system latency would otherwise dominate); the durable commit cost (fsync on, default temp dir) is
measured separately on a 100-round run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import securefl
from securefl.audit.log import AuditLog
from securefl.audit.merkle import MerkleTree
from securefl.audit.store import RunStore, prove, verify_run_dir
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.result import RunResult

ORIGIN = "bench.securefl/run"
CLIENTS = [f"bank{i}" for i in range(8)]


def _key() -> SigningKey:
    return SigningKey.from_seed(Secret(hashlib.sha256(b"bench").digest()))


def _inputs(r: int) -> dict[str, Any]:
    survivors = CLIENTS[:-1]
    return {
        "round_": r,
        "record_fields": {
            "session_id": hashlib.sha256(b"%d" % r).hexdigest()[:32],
            "aggregation": "secagg+",
            "participants": CLIENTS,
            "survivors": survivors,
            "dropouts": {CLIENTS[-1]: "masked_input"},
            "input_digests": {c: hashlib.sha256(f"{c}{r}".encode()).hexdigest()
                              for c in survivors},
            "aggregate_digest": hashlib.sha256(b"agg%d" % r).hexdigest(),
        },
        "model": hashlib.sha256(b"model%d" % r).digest() * 4,
        "ledger_lines": [b'{"event":"gaussian","noise_multiplier":0.8,"round":%d}' % r],
        "metrics": {"loss": 1.0 / r, "accuracy": 0.7},
    }


def bench_log(n: int) -> dict[str, float]:
    """In-memory AuditLog: append + sign a checkpoint per record (as one record per round)."""
    leaf = json.dumps(_inputs(1)["record_fields"]).encode()  # ~1 kB, like a RoundRecord
    tree = MerkleTree()
    t0 = time.perf_counter()
    for _ in range(n):
        tree.append_data(leaf)
    t_tree = time.perf_counter() - t0
    log = AuditLog(ORIGIN, _key())
    t0 = time.perf_counter()
    for _ in range(n):
        log.append(leaf)
        log.signed_checkpoint()
    t_log = time.perf_counter() - t0
    idx = [0, n // 3, n // 2, n - 1]
    inc = max(len(log.inclusion_proof(i)) for i in idx)
    cons = max(len(log.consistency_proof(m)) for m in (1, n // 2, n - 1, (n * 2) // 3 + 1))
    return {
        "tree_append_us": 1e6 * t_tree / n,
        "append_and_sign_us": 1e6 * t_log / n,
        "inclusion_proof_hashes_max": inc,
        "inclusion_proof_bytes_max": 32 * inc,
        "consistency_proof_hashes_max": cons,
        "consistency_proof_bytes_max": 32 * cons,
    }


def bench_run_dir(n: int, root: Path) -> dict[str, float]:
    """Write an n-round run directory (fsync off), then time verify_run_dir, open and prove."""
    d = root / f"run-{n}"
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # type: ignore[assignment]  # benchmark of verification only
    try:
        t0 = time.perf_counter()
        store = RunStore.create(d, config={"rounds": n}, server_key=_key(), origin=ORIGIN,
                                initial_model=b"m0" * 64, federation={"clients": CLIENTS})
        for r in range(1, n + 1):
            store.commit_round(**_inputs(r))
        store.finish(RunResult(
            securefl_version=securefl.__version__, transport="in-process",
            session_id=_inputs(n)["record_fields"]["session_id"], aggregation="secagg+",
            insecure=False, dp=False, task=None, manifest_sha256=None, run_dir=str(d),
            rounds_completed=n, final_metrics=_inputs(n)["metrics"], history=[], baselines={},
            privacy={}, model_sha256=store.model_sha256(n), seconds=None, stopped_early=None,
            round_trips=None, round_trips_per_round=None, trips=None, refused={}))
        t_write = time.perf_counter() - t0
    finally:
        os.fsync = real_fsync
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    verify_run_dir(d)
    t_verify = time.perf_counter() - t0
    t0 = time.perf_counter()
    RunStore.open(d)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    proof = prove(d, n // 2)
    t_prove = time.perf_counter() - t0
    shutil.rmtree(d)
    return {
        "commit_no_fsync_ms_per_round": 1e3 * t_write / n,
        "verify_run_dir_s": t_verify,
        "verify_us_per_round": 1e6 * t_verify / n,
        "open_resume_s": t_open,
        "prove_s": t_prove,
        "proof_json_bytes": len(json.dumps(proof)),
        "run_dir_bytes": size,
        "log_bytes_per_round": (size / max(n, 1)),
    }


def bench_durable_commit(rounds: int, root: Path) -> dict[str, float]:
    d = root / "durable"
    store = RunStore.create(d, config={}, server_key=_key(), origin=ORIGIN,
                            initial_model=b"m0" * 64, federation={})
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        store.commit_round(**_inputs(r))
    t = time.perf_counter() - t0
    shutil.rmtree(d)
    return {"durable_commit_ms_per_round": 1e3 * t / rounds, "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000]
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "sizes": {},
    }
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs for scale runs
    results["scale_fs"] = shm or "default temp dir"
    with tempfile.TemporaryDirectory(prefix="securefl-bench-audit-") as tmp:
        results["durable"] = bench_durable_commit(100, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="securefl-bench-audit-", dir=shm) as tmp:
        for n in sizes:
            row = bench_log(n)
            row.update(bench_run_dir(n, Path(tmp)))
            results["sizes"][str(n)] = row
    print(f"{'records':>8} {'tree us':>8} {'app+sign us':>11} {'commit ms':>9} "
          f"{'verify s':>8} {'verify us/r':>11} {'open s':>7} {'incl B':>7} {'cons B':>7} "
          f"{'proof json B':>12}")
    for n, row in results["sizes"].items():
        print(f"{n:>8} {row['tree_append_us']:>8.1f} {row['append_and_sign_us']:>11.1f} "
              f"{row['commit_no_fsync_ms_per_round']:>9.2f} {row['verify_run_dir_s']:>8.2f} "
              f"{row['verify_us_per_round']:>11.1f} {row['open_resume_s']:>7.2f} "
              f"{row['inclusion_proof_bytes_max']:>7} {row['consistency_proof_bytes_max']:>7} "
              f"{row['proof_json_bytes']:>12}")
    print(f"durable commit (fsync on): {results['durable']['durable_commit_ms_per_round']:.2f} "
          "ms per round")
    out = Path(__file__).resolve().parent / "results" / "audit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
