"""`import securefl` and `securefl --help` must not load torch, tenseal or opacus."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "tenseal", "opacus")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return {m for m in out.stdout.rstrip("\n").split("\n")[-1].split(",") if m}


def test_import_is_light() -> None:
    assert _loaded_after("import securefl") == set()


def test_help_is_light() -> None:
    code = ("import contextlib, io\nfrom securefl.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert _loaded_after(code) == set()


def test_run_help_is_light() -> None:
    code = ("import contextlib, io\nfrom securefl.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['run', '--help'])\n    except SystemExit:\n        pass")
    assert _loaded_after(code) == set()


def test_probe_detects_heavy_import() -> None:
    # the probe itself must be able to fail
    assert _loaded_after("import torch") == {"torch"}
