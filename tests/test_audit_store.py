"""RunStore API, verify_run_dir options, proofs for third parties and the summary."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from audit_helpers import (
    CONFIG,
    ORIGIN,
    create_run,
    fake_result,
    make_run,
    round_inputs,
    server_key,
)

from securefl.audit.note import NoteVerifier
from securefl.audit.store import RunStore, prove, show, verify_proof, verify_run_dir
from securefl.errors import AuditError, StateError


def test_layout_and_contents(tmp_path: Path) -> None:
    d = tmp_path / "run"
    store = make_run(d, 3)
    assert store.last_round == 3
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert files == ["COMMIT", "audit/checkpoints", "audit/log.jsonl", "config.json",
                     "federation.json", "keys/server.key", "ledger.jsonl", "metrics.jsonl",
                     "models/round-00000.safetensors", "models/round-00001.safetensors",
                     "models/round-00002.safetensors",
                     "models/round-00003.safetensors", "result.json"]
    assert os.stat(d / "keys/server.key").st_mode & 0o777 == 0o600
    assert json.loads((d / "config.json").read_bytes()) == CONFIG
    fed = json.loads((d / "federation.json").read_bytes())
    assert fed["server_key"] == NoteVerifier(ORIGIN, server_key().verify_key).to_string()
    assert "PRIVATE" not in (d / "federation.json").read_text()
    log = (d / "audit/log.jsonl").read_bytes().splitlines()
    assert len(log) == 4
    rec2 = json.loads(log[2])
    inputs = round_inputs(2)
    assert rec2["config_sha256"] == hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
    assert rec2["model_sha256_after"] == hashlib.sha256(inputs["model"]).hexdigest()
    assert rec2["ledger_entries_sha256"] == [hashlib.sha256(x).hexdigest()
                                             for x in inputs["ledger_lines"]]
    assert rec2["dropouts"] == {"bank2": "masked_input"}
    assert (d / "audit/checkpoints").read_text(encoding="utf-8").count("\n\n") == 4
    assert store.model_bytes(2) == inputs["model"]
    commit = json.loads((d / "COMMIT").read_bytes())
    assert commit["last_round"] == 3
    assert commit["sizes"]["ledger.jsonl"] == (d / "ledger.jsonl").stat().st_size


def test_resume_continues_the_same_log(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2, finish=False)
    store = RunStore.open(d)
    assert store.last_round == 2
    assert store.model_bytes(2) == round_inputs(2)["model"]
    cp = store.commit_round(**round_inputs(3))
    assert cp.size == 4
    assert verify_run_dir(d).last_round == 3


def test_commit_round_argument_checks(tmp_path: Path) -> None:
    d = tmp_path / "run"
    store = create_run(d)
    with pytest.raises(StateError):
        store.commit_round(**round_inputs(2))
    bad = round_inputs(1)
    bad["record_fields"] = {**bad["record_fields"], "model_sha256_after": "0" * 64}
    with pytest.raises(AuditError, match="unknown"):
        store.commit_round(**bad)
    bad = round_inputs(1)
    bad["ledger_lines"] = [b"two\nlines"]
    with pytest.raises(AuditError):
        store.commit_round(**bad)
    bad = round_inputs(1)
    bad["record_fields"] = {**bad["record_fields"], "dropouts": {}}
    with pytest.raises(AuditError, match="dropouts"):
        store.commit_round(**bad)
    assert store.last_round == 0
    store.commit_round(**round_inputs(1))  # nothing was written by the refused calls
    verify_run_dir(d)
    with pytest.raises(AuditError):
        store.model_bytes(2)


def test_create_refuses_non_empty_dir_and_private_material(tmp_path: Path) -> None:
    d = tmp_path / "run"
    create_run(d)
    with pytest.raises(AuditError, match="not empty"):
        create_run(d)
    pem = server_key().to_pem().expose().decode()
    with pytest.raises(AuditError, match="public keys only"):
        RunStore.create(tmp_path / "r2", config={}, server_key=server_key(), origin=ORIGIN,
                        initial_model=b"m", federation={"key": pem})


def test_pinned_pubkey(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2)
    verify_run_dir(d, pubkey=server_key().verify_key)
    with pytest.raises(AuditError, match="pinned key"):
        verify_run_dir(d, pubkey=server_key(b"someone else").verify_key)


def test_run_without_key_file(tmp_path: Path) -> None:
    d = tmp_path / "run"
    store = RunStore.create(d, config={}, server_key=server_key(), origin=ORIGIN,
                            initial_model=b"m0", federation={}, write_key_file=False)
    assert not (d / "keys/server.key").exists()
    store.commit_round(**round_inputs(1) | {"model": b"m1"})
    verify_run_dir(d)
    read_only = RunStore.open(d)  # no key to sign with: it reads, it does not write
    assert read_only.last_round == 1 and read_only.model_bytes(1) == b"m1"
    with pytest.raises(StateError, match="read-only"):
        read_only.commit_round(**round_inputs(2))
    with pytest.raises(StateError, match="read-only"):
        read_only.finish(fake_result(read_only))
    with pytest.raises(AuditError, match="does not match"):
        RunStore.open(d, server_key=server_key(b"someone else"))
    assert RunStore.open(d, server_key=server_key()).last_round == 1


def test_prove_and_verify_proof(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 4)
    vkey = NoteVerifier(ORIGIN, server_key().verify_key).to_string()
    for r in range(5):
        proof = prove(d, r)
        json.dumps(proof)  # plain JSON
        rec = verify_proof(json.loads(json.dumps(proof)), server_key().verify_key)
        assert getattr(rec, "round", 0) == r
        verify_proof(proof, vkey)
    proof = prove(d, 2)
    with pytest.raises(AuditError):
        verify_proof(proof, server_key(b"x").verify_key)
    tampered = dict(proof, record=proof["record"].replace('"round":2', '"round":3'))
    with pytest.raises(AuditError):
        verify_proof(tampered, server_key().verify_key)
    tampered = dict(proof, leaf_index=1)
    with pytest.raises(AuditError):
        verify_proof(tampered, server_key().verify_key)
    with pytest.raises(AuditError):
        prove(d, 5)


def test_show(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 3)
    text = show(d)
    assert "VERIFIED" in text and "aborted" in text and "round     3" in text
    one = show(d, 2)
    assert "survivors" in one and "bank2" in one


def test_import_is_light() -> None:
    code = ("import sys, securefl.audit; "
            "bad = [m for m in ('torch', 'tenseal', 'opacus') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
