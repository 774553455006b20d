"""A real process running RunStore is SIGKILLed at pseudo-random instants and resumed until it
completes; the final directory must equal, byte for byte, one written without interruption."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_helpers import make_run, snapshot

from securefl.audit.verify import verify_run_dir

HELPER = Path(__file__).resolve().parent / "audit_helpers.py"
ROUNDS = 30


@pytest.mark.slow
def test_sigkill_and_resume_until_done(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    make_run(ref, ROUNDS)
    d = tmp_path / "run"
    rng = random.Random(20261125)
    kills = 0
    errors: list[str] = []
    for _attempt in range(40):
        proc = subprocess.Popen([sys.executable, str(HELPER), str(d), str(ROUNDS)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if kills < 8:
            # every third time kill it blind (maybe during start-up or create), otherwise let it
            # commit a round first; then kill it wherever it is
            if _attempt % 3 == 2:
                line = b""
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                line = proc.stdout.readline() if proc.stdout else b""
                time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if line.strip() == b"done":
                break
            if proc.returncode not in (0, -signal.SIGKILL):
                errors.append(proc.stderr.read().decode()[-2000:] if proc.stderr else "")
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
            continue
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.strip().endswith(b"done")
        break
    assert errors == []
    assert kills >= 3
    verify_run_dir(d)
    assert snapshot(d) == snapshot(ref)
