"""README opens with the two commands (run, test) and CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_run_and_test_commands() -> None:
    run_cmd, test_cmd = _blocks()[:2]
    for cmd in (run_cmd, test_cmd):
        assert "pip install torch==2.13.0" in cmd
        assert cmd.index("torch==2.13.0") < cmd.index(" -e ")
    assert run_cmd.rstrip().endswith("securefl run")
    assert "python -m pytest" in test_cmd
    assert "-c constraints.txt" in test_cmd  # CI's installs are reproducible


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = _blocks()[1]
    install_and_test = test_cmd.split("&& ", 2)[2]  # after creating and activating the venv
    assert install_and_test in (ROOT / ".ci" / "run").read_text()
