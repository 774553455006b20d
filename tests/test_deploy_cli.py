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


def test_check_key_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy_helpers import KEY_HOLDER

    f = make_federation(tmp_path / "fed", {"rounds": 1, "aggregation": "ckks"})
    assert f.ckks_dir is not None
    base = ["deploy", "check-key-holder", "--member", KEY_HOLDER, "--manifest", str(f.manifest),
            "--ckks-keys", str(f.ckks_dir)]
    args = _parse([*base, "--key", str(f.keys[KEY_HOLDER])])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert f"OK: {KEY_HOLDER} is the ckks-key-holder" in out
    assert "a fresh CKKS key per round" in out and "0 rounds released" in out
    # a bank's key is not the key holder's; a bank is not the key holder
    args = _parse([*base, "--key", str(f.keys[f.banks[0]])])
    with pytest.raises(SignatureError, match="not the key the manifest lists"):
        args.handler(args)
    args = _parse(["deploy", "check-key-holder", "--member", f.banks[0], "--key",
                   str(f.keys[f.banks[0]]), "--manifest", str(f.manifest), "--ckks-keys",
                   str(f.ckks_dir)])
    with pytest.raises(SignatureError, match="is not a ckks-key-holder"):
        args.handler(args)
