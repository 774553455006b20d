"""``securefl keys init`` and ``securefl federation create|sign|verify`` through a parser built
around :func:`register_keys` / :func:`register_federation` (as cli/extra.py will wire them)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.cli.keys import register_federation, register_keys
from securefl.errors import ConfigError, CryptoError, SignatureError, exit_code_for
from securefl.federation import load_identity, load_manifest


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="securefl")
    sub = parser.add_subparsers(dest="command")
    register_keys(sub)
    register_federation(sub)
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    for name, role in (("agg", "server"), ("bank-a", "client"), ("bank-b", "client")):
        assert cli("keys", "init", "--institution", name, "--role", role, "--out", str(d)) == 0
    (tmp_path / "pass.txt").write_text("s3cret passphrase\n")
    assert cli("keys", "init", "--institution", "bank-c", "--out", str(d),
               "--passphrase-file", str(tmp_path / "pass.txt")) == 0
    return d


def _create(keys: Path, out: Path, *extra: str) -> int:
    members = [f"{n}:{r}:{keys / (n + '.pub.json')}" for n, r in
               (("agg", "server"), ("bank-a", "client"), ("bank-b", "client"),
                ("bank-c", "client"))]
    argv = ["federation", "create", "--id", "fed-cli", "--threshold", "2",
            "--aggregation", "secagg", "--out", str(out), *extra]
    for m in members:
        argv += ["--member", m]
    return cli(*argv)


def test_keys_init_files_and_modes(keys: Path) -> None:
    for name in ("agg", "bank-a", "bank-b", "bank-c"):
        assert stat.S_IMODE(os.stat(keys / f"{name}.key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(keys / f"{name}.pub.json").st_mode) == 0o644
    pub = json.loads((keys / "agg.pub.json").read_text())
    assert set(pub) == {"format", "institution", "role", "public_key", "fingerprint"}
    assert pub["institution"] == "agg" and pub["role"] == "server"
    assert b"ENCRYPTED PRIVATE KEY" in (keys / "bank-c.key").read_bytes()
    assert b"BEGIN PRIVATE KEY" in (keys / "bank-a.key").read_bytes()
    assert load_identity(keys / "bank-c.pub.json").role == "client"


def test_keys_init_refuses_to_overwrite(keys: Path) -> None:
    before = (keys / "agg.key").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        cli("keys", "init", "--institution", "agg", "--role", "server", "--out", str(keys))
    assert (keys / "agg.key").read_bytes() == before


def test_full_flow_create_sign_verify(keys: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "manifest.json"
    assert _create(keys, manifest) == 0
    for name in ("agg", "bank-a", "bank-b"):
        assert cli("federation", "sign", str(manifest), "--key", str(keys / f"{name}.key"),
                   "--institution", name) == 0
    with pytest.raises(SignatureError, match="'bank-c'") as err:
        cli("federation", "verify", str(manifest))
    assert exit_code_for(err.value) == 5
    # bank-c's key is encrypted: no passphrase and a wrong one both fail with CryptoError
    with pytest.raises(CryptoError):
        cli("federation", "sign", str(manifest), "--key", str(keys / "bank-c.key"),
            "--institution", "bank-c")
    (tmp_path / "wrong.txt").write_text("not it\n")
    with pytest.raises(CryptoError):
        cli("federation", "sign", str(manifest), "--key", str(keys / "bank-c.key"),
            "--institution", "bank-c", "--passphrase-file", str(tmp_path / "wrong.txt"))
    assert cli("federation", "sign", str(manifest), "--key", str(keys / "bank-c.key"),
               "--institution", "bank-c", "--passphrase-file", str(tmp_path / "pass.txt")) == 0
    capsys.readouterr()
    assert cli("federation", "verify", str(manifest), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["server"] == "agg"
    assert summary["clients"] == ["bank-a", "bank-b", "bank-c"]
    assert summary["params"]["threshold"] == 2
    fps = {m["name"]: m["fingerprint"] for m in summary["members"]}
    assert fps["bank-a"] == json.loads((keys / "bank-a.pub.json").read_text())["fingerprint"]


def test_sign_with_another_members_key_is_refused(keys: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    assert _create(keys, manifest) == 0
    before = manifest.read_bytes()
    with pytest.raises(SignatureError, match="not the key listed"):
        cli("federation", "sign", str(manifest), "--key", str(keys / "bank-a.key"),
            "--institution", "bank-b")
    assert manifest.read_bytes() == before
    assert load_manifest(manifest).signatures == []


def test_create_rejects_mismatched_member_spec(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity file says bank-a:client"):
        cli("federation", "create", "--id", "f", "--threshold", "2", "--aggregation", "secagg",
            "--out", str(tmp_path / "m.json"),
            "--member", f"agg:server:{keys / 'agg.pub.json'}",
            "--member", f"bank-x:client:{keys / 'bank-a.pub.json'}",
            "--member", f"bank-b:client:{keys / 'bank-b.pub.json'}")
    with pytest.raises(ConfigError, match="NAME:ROLE:PUBKEYFILE"):
        cli("federation", "create", "--id", "f", "--threshold", "2", "--aggregation", "secagg",
            "--out", str(tmp_path / "m.json"), "--member", "agg:server")
    with pytest.raises(ConfigError, match="threshold"):
        _create(keys, tmp_path / "m2.json", "--threshold", "9")


def test_create_sets_the_session_cap_and_the_data_schema(keys: Path, tmp_path: Path) -> None:
    """``--max-sessions`` and ``--data-schema`` land in the signed params (version 3); without
    them the cap is the documented default 256 and no schema is pinned; a malformed digest is
    refused."""
    import hashlib

    digest = hashlib.sha256(b"schema").hexdigest()
    assert _create(keys, tmp_path / "a.json", "--max-sessions", "8",
                   "--data-schema", digest) == 0
    body = load_manifest(tmp_path / "a.json").body
    assert (body.version, body.params.max_sessions, body.params.data_schema) == (3, 8, digest)
    assert _create(keys, tmp_path / "b.json") == 0
    params = load_manifest(tmp_path / "b.json").body.params
    assert (params.max_sessions, params.data_schema) == (256, None)
    with pytest.raises(ConfigError, match="data_schema"):
        _create(keys, tmp_path / "c.json", "--data-schema", "not-a-digest")
    with pytest.raises(ConfigError, match="max_sessions"):
        _create(keys, tmp_path / "d.json", "--max-sessions", "0")


def test_create_sets_the_round_cap_and_the_client_fraction(keys: Path, tmp_path: Path) -> None:
    """``--max-rounds`` and ``--clients-per-round`` land in the signed params (defaults 1000 and
    1); values outside their ranges are refused."""
    assert _create(keys, tmp_path / "a.json", "--max-rounds", "50",
                   "--clients-per-round", "0.5") == 0
    params = load_manifest(tmp_path / "a.json").body.params
    assert (params.max_rounds, params.clients_per_round) == (50, 0.5)
    assert _create(keys, tmp_path / "b.json") == 0
    params = load_manifest(tmp_path / "b.json").body.params
    assert (params.max_rounds, params.clients_per_round) == (1000, 1.0)
    with pytest.raises(ConfigError, match="max_rounds"):
        _create(keys, tmp_path / "c.json", "--max-rounds", "0")
    with pytest.raises(ConfigError, match="clients_per_round"):
        _create(keys, tmp_path / "d.json", "--clients-per-round", "1.5")


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys, argparse\n"
            "from securefl.cli.keys import register_keys, register_federation\n"
            "p = argparse.ArgumentParser(); s = p.add_subparsers()\n"
            "register_keys(s); register_federation(s)\n"
            "bad = [m for m in ('torch', 'tenseal', 'opacus', 'flwr', 'cryptography')"
            " if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_keys_ckks_creates_private_files_0600(tmp_path: Path) -> None:
    from securefl.cli.main import main as cli_main
    from securefl.keyholder import load_signed_public_context

    out = tmp_path / "holder"
    assert cli_main(["keys", "ckks", "--out", str(out), "--json"]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    secret = [n for n in modes if "secret" in n or n.endswith(".pem")]
    assert len(secret) == 2 and all(modes[n] == 0o600 for n in secret)
    public = [p for p in out.iterdir() if "public-context" in p.name]
    assert public and load_signed_public_context(public[0]) is not None
