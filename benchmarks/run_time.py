"""How long the default `securefl run` takes, and where the time goes, measured in one run.

Run: python benchmarks/run_time.py [--rounds N] [--repeat K] [--cli]
     (prints a table, writes benchmarks/results/run_time.json)

One run is one child process (this script with --child) doing what `securefl run --json` does with
the defaults; the parent times it from spawn to exit, which is the wall time a user waits. The
child splits that time with the run's phase callback (securefl.runtime.PHASES) and a wrapper
around the aggregator:

  startup      interpreter start-up until the child's first line (wall clocks of both)
  import       securefl and everything the run imports lazily (torch, training, SecAgg, DP,
               audit, Opacus' RDP analysis), imported up front and timed; modules still first
               imported during the run are counted in the JSON (``imported_during_run``)
  data         loading the embedded data, federated standardisation (a secure sum of moments)
  training     each bank's local (DP-SGD) training
  protection   the aggregation call minus the server's CPU time in it: each bank's encoding,
               rounding and noise share, its masking (SecAgg) or encryption (CKKS) and protocol
               messages
  aggregation  the server's CPU time inside the aggregation call (per-party process_time that
               the in-process SecAgg driver reports; 0 for modes that do not report it, whose
               aggregation is then counted under protection)
  accounting   noise calibration, the running epsilon, budget checks, the final privacy report
  evaluation   scoring the global model on the test split after each round
  commit       run directory, model files, audit records, ledger, signed checkpoints, result.json
  other        time no phase covers (e.g. between the run's start and its first phase)
  exit         the child's interpreter shutdown after its last line (freeing torch etc.)

The machine may be busy with other work: the load average before and after is recorded, and the
numbers are one measurement, not a best case.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

STARTED = time.time()  # this script's first line runs now (the child's start-up ends here)

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from _common import table, write_json  # noqa: E402

#: what `securefl run` imports lazily, imported (and timed) before the run starts
PRELOAD = (
    "securefl.cli.main", "securefl.cli.run", "numpy", "torch", "securefl.runtime",
    "securefl.data", "securefl.fl.train", "securefl.fl.models", "securefl.fl.params",
    "securefl.fl.metrics", "securefl.fl.server_opt", "securefl.aggregators.plain",
    "securefl.aggregators.secagg",
    "securefl.dp.dpsgd", "securefl.dp.fedavg", "securefl.dp.budget", "securefl.dp.report",
    "securefl.dp.ledger", "securefl.audit.store", "securefl.audit.log", "securefl.crypto.signing",
)

BUCKETS = ("startup", "import", "data", "training", "protection", "aggregation", "accounting",
           "evaluation", "commit", "other", "exit")

PHASE_BUCKET = {
    "loading data": "data",
    "standardising": "data",
    "calibrating noise": "accounting",
    "training": "training",
    "protecting + aggregating": "protection",
    "evaluating": "evaluation",
    "committing": "commit",
    "accounting": "accounting",
    "baselines": "other",
}


class _TimedAggregator:
    """Delegates to an aggregator and records each aggregate call's start, duration and the
    server CPU seconds its outcome reports."""

    def __init__(self, inner: Any, calls: list[tuple[float, float, float]]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = self._inner.aggregate(*args, **kwargs)
        server = float(getattr(out, "cpu_seconds", {}).get("server", 0.0))
        self._calls.append((t, time.perf_counter() - t, server))
        return out


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def child(out: str, rounds: int | None) -> dict[str, Any]:
    """One instrumented default run: wall and CPU seconds per bucket."""
    script_start = time.perf_counter() - (time.time() - STARTED)
    start = _now()
    for name in PRELOAD:
        importlib.import_module(name)
    from securefl.dp.accountants import rdp_analysis

    rdp_analysis()
    imported = _now()
    loaded = set(sys.modules)

    import securefl.runtime as runtime
    from securefl.config import resolve

    calls: list[tuple[float, float, float]] = []
    make = runtime.make_aggregator

    def timed_make(*args: Any, **kwargs: Any) -> Any:
        return _TimedAggregator(make(*args, **kwargs), calls)

    runtime.make_aggregator = timed_make  # type: ignore[assignment]
    marks: list[tuple[tuple[float, float], str]] = [(imported, "(set-up)")]
    config = resolve(None, {"out": out, "rounds": rounds})
    result = runtime.run(config, phase=lambda r, what, detail: marks.append((_now(), what)))
    json.dumps(result.to_dict())  # what `--json` prints
    end = _now()

    wall = dict.fromkeys(BUCKETS, 0.0)
    cpu = dict.fromkeys(BUCKETS, 0.0)
    wall["import"], cpu["import"] = imported[0] - start[0], imported[1] - start[1]
    wall["other"] += start[0] - script_start  # argument parsing before child() was called
    spans = [(t, what, marks[i + 1][0] if i + 1 < len(marks) else end)
             for i, (t, what) in enumerate(marks)]
    for t, what, stop in spans:
        bucket = PHASE_BUCKET.get(what, "other")
        wall[bucket] += stop[0] - t[0]
        cpu[bucket] += stop[1] - t[1]
    server = sum(s for t, _, s in calls if any(
        a[0] <= t < b[0] and w == "protecting + aggregating" for a, w, b in spans))
    for d in (wall, cpu):  # server CPU seconds: ~ its wall time (single-threaded, in process)
        d["protection"] -= server
        d["aggregation"] += server
    new = set(sys.modules) - loaded
    return {"started": STARTED, "ended": time.time(), "buckets": wall, "cpu_buckets": cpu,
            "model_sha256": result.model_sha256, "rounds": result.rounds_completed,
            "imported_during_run": {"count": len(new),
                                    "packages": sorted({m.split(".")[0] for m in new})}}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(rounds: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--out",
               str(Path(tmp) / "run")]
        if rounds is not None:
            cmd += ["--rounds", str(rounds)]
        load_before = _load()
        spawned, t = time.time(), time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall, exited = time.perf_counter() - t, time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res: dict[str, Any] = json.loads(proc.stdout)
    res["buckets"]["startup"] = res["started"] - spawned
    res["buckets"]["exit"] = exited - res["ended"]
    res["wall_seconds"] = wall
    res["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["load_average"] = {"before": load_before, "after": _load()}
    return res


def measure_cli(rounds: int | None) -> float:
    """Wall time of the plain, uninstrumented `securefl run --json` (for comparison)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "securefl", "run", "--json", "--out", str(Path(tmp) / "run")]
        if rounds is not None:
            cmd += ["--rounds", str(rounds)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None, help="default: the run's default (20)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cli", action="store_true",
                    help="also time the plain `securefl run --json` process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.out, args.rounds)))
        return
    runs = [measure(args.rounds) for _ in range(args.repeat)]
    cli = [measure_cli(args.rounds) for _ in range(args.repeat)] if args.cli else []
    best = min(runs, key=lambda r: r["wall_seconds"])
    rows = [[b, best["buckets"][b], f"{100 * best['buckets'][b] / best['wall_seconds']:.0f}%",
             best["cpu_buckets"].get(b, "-")] for b in BUCKETS]
    rows.append(["total (child process)", best["wall_seconds"], "100%", best["cpu_seconds"]])
    print(table(["where", "wall seconds", "share", "CPU seconds (all threads)"], rows))
    walls = [r["wall_seconds"] for r in runs]
    print(f"\nwall seconds of each run: {', '.join(f'{w:.1f}' for w in walls)}"
          f" (median {statistics.median(walls):.1f})")
    if cli:
        print(f"plain `securefl run --json`: {', '.join(f'{s:.1f}' for s in cli)} s")
    print(f"load average before/after: {best['load_average']}; cpus: {os.cpu_count()}")
    print(f"model sha256: {best['model_sha256']}")
    path = write_json("run_time", {"runs": runs, "best": best, "cli_wall_seconds": cli,
                                   "command": "securefl run --json (defaults)",
                                   "rounds": args.rounds})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
