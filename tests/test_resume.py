"""Crash safety of a real `securefl run`: SIGKILL at random instants, resume, same final model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from securefl.audit.verify import verify_run_dir
from securefl.dp.ledger import Ledger

ARGS = ["--aggregation", "secagg", "--model", "logreg", "--rounds", "4", "--dp",
        "--noise-multiplier", "0.02", "--seed", "7", "--dropout", "0.2"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "securefl", *args]


def _run_to_end(out: Path) -> dict[str, object]:
    subprocess.run(_cli("run", *ARGS, "--out", str(out), "--json"), check=True,
                   capture_output=True, timeout=600)
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    reference = _run_to_end(tmp_path / "reference")
    ref_model = reference["body"]["model_sha256"]  # type: ignore[index]
    ref_ledger = Ledger.load(tmp_path / "reference" / "ledger.jsonl")

    rng = np.random.default_rng(2026)
    kills = mid_run_kills = 0
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        # three SIGKILLs at random instants, then a resume that is left to finish
        delays: list[float | None] = [float(d) for d in rng.uniform(0.5, 8.0, size=3)] + [None]
        for delay in delays:
            # what an operator does: resume once the run has written its config, else start again
            cmd = (_cli("run", "--resume", str(out)) if (out / "config.json").exists()
                   else _cli("run", *ARGS, "--out", str(out)))
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                if delay is not None:
                    time.sleep(delay)
                    if proc.poll() is None:
                        committed = (out / "metrics.jsonl").is_file() and (
                            out / "metrics.jsonl").stat().st_size > 0
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
                        mid_run_kills += int(committed)
                proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err = proc.stderr.read().decode() if proc.stderr else ""
            assert proc.returncode in (0, -signal.SIGKILL), err
            if proc.returncode == 0:
                break
        assert proc.returncode == 0
        result = json.loads((out / "result.json").read_text())
        assert result["body"]["model_sha256"] == ref_model
        ledger = Ledger.load(out / "ledger.jsonl")  # verifies the hash chain: no gap, no dup
        assert [e.seq for e in ledger.entries] == list(range(len(ref_ledger)))
        assert ledger.head_hash == ref_ledger.head_hash
        verify_run_dir(out)
    assert kills >= 3, "the random kill points never hit a running process"
    assert mid_run_kills >= 1, "no kill landed after a committed round; resume was not exercised"
