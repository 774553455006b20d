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


def _committed_rounds(out: Path) -> int:
    """Rounds the run directory shows as committed (one metrics line each)."""
    p = out / "metrics.jsonl"
    try:
        return p.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path: Path) -> None:
    reference = _run_to_end(tmp_path / "reference")
    ref_model = reference["body"]["model_sha256"]  # type: ignore[index]
    ref_ledger = Ledger.load(tmp_path / "reference" / "ledger.jsonl")

    rng = np.random.default_rng(2026)
    kills = 0
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        # Three SIGKILLs, each at a random instant after this process was *seen* to commit a new
        # round (so every kill lands mid-run whatever the machine's speed), then a resume that is
        # left to finish.
        delays: list[float | None] = [float(d) for d in rng.uniform(0.0, 1.5, size=3)] + [None]
        for delay in delays:
            # what an operator does: resume once the run has written its config, else start again
            cmd = (_cli("run", "--resume", str(out)) if (out / "config.json").exists()
                   else _cli("run", *ARGS, "--out", str(out)))
            before = _committed_rounds(out)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                if delay is not None:
                    deadline = time.monotonic() + 600
                    while (proc.poll() is None and _committed_rounds(out) <= before
                           and time.monotonic() < deadline):
                        time.sleep(0.02)
                    time.sleep(delay)
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
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
    assert kills >= 3, "no kill landed after a committed round; resume was not exercised"
