"""Progress of `securefl run`: phases reported by the runtime, a live status line on a terminal,
and nothing but JSON on stdout with --json (stderr attached to a pseudo-terminal, so the run
believes it is interactive)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from securefl.config import RunConfig
from securefl.runtime import PHASES, RoundReport, run

SMALL = ["--rounds", "2", "--model", "logreg"]


def _run_on_terminal(args: list[str]) -> tuple[str, str]:
    """`securefl run ARGS` with stderr on a pseudo-terminal and stdout on a pipe: (stdout, what
    the terminal showed)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "securefl", "run", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=env)
    os.close(slave)
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child has closed the terminal
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=900) == 0
    reader.join(timeout=30)
    os.close(master)
    return out, b"".join(shown).decode(errors="replace")


def test_terminal_shows_what_each_round_is_doing(tmp_path: Path) -> None:
    out, shown = _run_on_terminal([*SMALL, "--out", str(tmp_path / "t")])
    for what in ("calibrating noise", "round 1/2: training - bank 1/3",
                 "round 2/2: protecting + aggregating - secagg", "round 2/2: committing",
                 "round 1/2  AUC"):
        assert what in shown, what
    assert "securefl run: 2 rounds" in out  # the human result still goes to stdout
    assert "training" not in out


def test_json_output_is_pure_json_even_on_a_terminal(tmp_path: Path) -> None:
    out, shown = _run_on_terminal([*SMALL, "--json", "--out", str(tmp_path / "j")])
    payload = json.loads(out)  # the whole of stdout is one JSON document
    assert out.lstrip().startswith("{") and out.rstrip().endswith("}")
    assert payload["rounds_completed"] == 2
    assert shown.strip() == ""  # no progress, no status line


def test_phases_come_in_order_for_every_round(tmp_path: Path) -> None:
    seen: list[tuple[int, str, str]] = []
    done: list[int] = []

    def on_round(rep: RoundReport) -> None:
        done.append(rep.round)

    cfg = RunConfig(rounds=2, model="logreg", out=str(tmp_path / "p"))
    run(cfg, progress=on_round, phase=lambda r, what, detail: seen.append((r, what, detail)))
    assert done == [1, 2]
    assert {what for _, what, _ in seen} <= set(PHASES)
    setup = [what for r, what, _ in seen if r == 0]
    assert setup[:3] == ["loading data", "standardising", "calibrating noise"]
    assert setup[-2:] == ["accounting", "committing"]  # privacy report, result
    for r in (1, 2):
        steps = [what for rr, what, _ in seen if rr == r]
        assert steps == ["training"] * 3 + ["protecting + aggregating", "evaluating",
                                            "committing", "accounting"]
        banks = [detail for rr, what, detail in seen if rr == r and what == "training"]
        assert banks[0].startswith("bank 1/3 (") and banks[-1].endswith(", DP-SGD)")
