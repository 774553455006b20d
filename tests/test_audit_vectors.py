"""protocols/audit/vectors/securefl_run: the format regression vector, checked two ways —
by verify_run_dir, and by a small independent reading of the spec written here with hashlib."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

from audit_helpers import snapshot

from securefl.audit.verify import verify_run_dir
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey

ROOT = Path(__file__).resolve().parents[1]
VEC = ROOT / "protocols/audit/vectors/securefl_run"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "protocols/audit/generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pubkey() -> VerifyKey:
    seed = hashlib.sha256(b"securefl-audit-vector").digest()
    return SigningKey.from_seed(Secret(seed)).verify_key


def test_vector_run_verifies_with_the_pinned_key() -> None:
    report = verify_run_dir(VEC, pubkey=_pubkey())
    assert report.last_round == 3 and report.tree_size == 4 and report.has_result


def test_vector_run_is_reproduced_byte_for_byte(tmp_path: Path) -> None:
    _generator().write_vector_run(tmp_path / "run")
    assert snapshot(tmp_path / "run") == snapshot(VEC)


def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_vector_run_by_an_independent_reading_of_the_spec() -> None:
    pub = _pubkey()
    fed = json.loads((VEC / "federation.json").read_bytes())
    name = fed["origin"]
    keyhash = hashlib.sha256(name.encode() + b"\n\x01" + pub.raw).digest()[:4]
    assert fed["server_key"] == (f"{name}+{keyhash.hex()}+"
                                 + base64.b64encode(b"\x01" + pub.raw).decode())
    leaves = (VEC / "audit/log.jsonl").read_bytes().split(b"\n")[:-1]
    notes = (VEC / "audit/checkpoints").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(notes) == 5 * len(leaves)
    for i in range(len(leaves)):
        origin, size, root, blank, sig = notes[5 * i : 5 * i + 5]
        assert (origin, size, blank) == (name, str(i + 1), "")
        assert base64.b64decode(root) == _mth(leaves[: i + 1])
        assert sig.startswith(f"— {name} ")
        raw = base64.b64decode(sig.split(" ")[2])
        assert raw[:4] == keyhash
        pub.verify(raw[4:], f"{origin}\n{size}\n{root}\n".encode())
    models = sorted((VEC / "models").iterdir())
    records = [json.loads(x) for x in leaves]
    assert hashlib.sha256(models[0].read_bytes()).hexdigest() == records[0]["model_sha256"]
    for r in range(1, len(records)):
        assert records[r]["round"] == r
        assert hashlib.sha256(models[r].read_bytes()).hexdigest() == records[r][
            "model_sha256_after"]
        assert records[r]["model_sha256_before"] == (
            records[r - 1].get("model_sha256") or records[r - 1]["model_sha256_after"])
    ledger = (VEC / "ledger.jsonl").read_bytes().split(b"\n")[:-1]
    assert [hashlib.sha256(x).hexdigest() for x in ledger] == [
        h for rec in records[1:] for h in rec["ledger_entries_sha256"]]
    # COMMIT (spec section 5): signed by the log key over the domain label and the canonical JSON
    # of every other field; its root is the tree of all leaves; it names result.json's sha256
    commit = json.loads((VEC / "COMMIT").read_bytes())
    assert commit["version"] == 2 and commit["last_round"] == len(leaves) - 1
    unsigned = {k: v for k, v in commit.items() if k != "signature"}
    pub.verify(base64.b64decode(commit["signature"]), b"securefl-audit-commit-v2\n"
               + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode())
    assert base64.b64decode(commit["root_hash"]) == _mth(leaves)
    result_bytes = (VEC / "result.json").read_bytes()
    assert hashlib.sha256(result_bytes).hexdigest() == commit["result_sha256"]
    sizes = {p: len((VEC / p).read_bytes()) for p in commit["sizes"]}
    assert sizes == commit["sizes"]
    # result.json: signed body; its final_metrics claim is the last record's metrics
    result = json.loads(result_bytes)
    body = json.dumps(result["body"], sort_keys=True, separators=(",", ":")).encode()
    pub.verify(base64.b64decode(result["signature"]), b"securefl-audit-result-v1\n" + body)
    assert result["body"]["result"]["final_metrics"] == records[-1]["metrics"]
    assert result["body"]["root_hash"] == commit["root_hash"]
