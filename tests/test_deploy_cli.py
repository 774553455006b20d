"""``securefl deploy app|check-node`` through a parser built with register_deploy."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from deploy_helpers import make_federation

from securefl.cli.deploy import register_deploy
from securefl.errors import SignatureError


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    register_deploy(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_app_and_check_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = make_federation(tmp_path / "fed", {"rounds": 1})
    cfg = f.server_file(tmp_path / "run")
    args = _parse(["deploy", "app", "--out", str(tmp_path / "app"), "--server-config", str(cfg)])
    assert args.handler(args) == 0
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    assert f'securefl-server = "{cfg}"' in text
    bank = f.banks[0]
    args = _parse(["deploy", "check-node", "--member", bank, "--key", str(f.keys[bank]),
                   "--manifest", str(f.manifest), "--data", str(f.data[bank])])
    assert args.handler(args) == 0
    assert f"OK: {bank}" in capsys.readouterr().out
    args = _parse(["deploy", "check-node", "--member", bank, "--key", str(f.keys[f.banks[1]]),
                   "--manifest", str(f.manifest), "--data", str(f.data[bank])])
    with pytest.raises(SignatureError):
        args.handler(args)
