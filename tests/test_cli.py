"""CLI: exit codes per error class, no traceback without --debug, --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.cli.main import main
from securefl.errors import (
    EXIT_CODES,
    AuditError,
    BudgetExceededError,
    ConfigError,
    DataError,
    SecureFLError,
    exit_code_for,
)


def test_exit_code_table_is_most_specific_first() -> None:
    assert exit_code_for(BudgetExceededError("x")) == 7
    assert exit_code_for(AuditError("x")) == 8
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # distinct codes


def test_bad_option_exits_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--rounds", "0"]) == 2
    err = capsys.readouterr().err
    assert "SFL100" in err and "rounds" in err and "Traceback" not in err


def test_missing_data_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--data", str(tmp_path / "none.csv"), "--label", "y"]) == 3
    assert "SFL200" in capsys.readouterr().err


def test_unknown_config_key_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("roundz = 2\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "roundz" in capsys.readouterr().err


def test_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--rounds", "0", "--json"]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert payload["error"]["code"] == ConfigError.code


def test_debug_reraises() -> None:
    with pytest.raises(ConfigError):
        main(["--debug", "run", "--rounds", "0"])


def test_every_error_has_code_and_hint() -> None:
    def walk(cls: type[SecureFLError]) -> list[type[SecureFLError]]:
        return [cls] + [c for s in cls.__subclasses__() for c in walk(s)]

    classes = walk(SecureFLError)
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "error codes must be stable and unique"
    for cls in classes:
        assert cls.default_hint
    assert DataError("x").to_dict()["code"] == "SFL200"


def test_help_runs_as_a_process() -> None:
    out = subprocess.run([sys.executable, "-m", "securefl", "--help"], capture_output=True,
                         text=True, check=True)
    assert "run" in out.stdout


def test_unexpected_exception_is_one_line_without_its_message(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence: a non-securefl exception (a bug) exits 1 with one line naming
    its type and place and a --debug hint; its message (which may hold data) is never printed."""
    import securefl.cli.run as run_cli

    def boom(args: object) -> int:
        raise ValueError("secret-update-bytes 0.123456789")

    monkeypatch.setattr(run_cli, "run_command", boom)
    code = main(["run", "--rounds", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error: ValueError at cli" in err and "--debug" in err
    assert "secret-update-bytes" not in err and "0.123456789" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    with pytest.raises(ValueError, match="secret-update-bytes"):
        main(["--debug", "run", "--rounds", "1"])
    code = main(["run", "--rounds", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["error"]["code"] == "internal"
    assert "secret-update-bytes" not in json.dumps(out)
