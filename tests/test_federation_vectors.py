"""protocols/federation: committed schemas and vector match the code, and the vector verifies with
an independent implementation of the spec (json + hashlib + `cryptography`, no securefl signing)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.federation import decode_manifest, verify_manifest

ROOT = Path(__file__).resolve().parents[1] / "protocols" / "federation"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("fed_generate", ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _vector() -> dict[str, Any]:
    return json.loads((ROOT / "vectors" / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_committed_schemas_and_vector_are_current() -> None:
    gen = _generator()
    for name, schema in gen.schemas().items():
        stored = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
        assert stored == schema, "regenerate: python protocols/federation/generate.py"
    assert _vector() == json.loads(gen.render(gen.vectors()))


def _independent_check(vec: dict[str, Any]) -> None:
    """The spec in README.md, implemented from scratch."""
    body = vec["manifest"]["body"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    assert canonical.hex() == vec["canonical_body_hex"]
    assert hashlib.sha256(canonical).hexdigest() == vec["body_sha256"]
    domain, sid = b"securefl/federation-manifest", body["federation_id"].encode()
    message = (b"securefl-sig-v1\x00" + struct.pack(">H", len(domain)) + domain
               + struct.pack(">H", len(sid)) + sid + struct.pack(">Q", body["version"])
               + canonical)
    keys = {m["name"]: m["public_key"] for m in body["members"]}
    signers = [s["member"] for s in vec["manifest"]["signatures"]]
    assert sorted(signers) == sorted(keys) and len(set(signers)) == len(signers)
    for s in vec["manifest"]["signatures"]:
        seed = bytes.fromhex(vec["seeds"][s["member"]])
        priv = Ed25519PrivateKey.from_private_bytes(seed)
        assert priv.public_key().public_bytes_raw().hex() == keys[s["member"]]
        # RFC 8032 signatures are deterministic: re-signing gives the same bytes
        assert priv.sign(message).hex() == s["signature"]
        priv.public_key().verify(bytes.fromhex(s["signature"]), message)


def test_vector_verifies_independently_and_with_securefl() -> None:
    vec = _vector()
    _independent_check(vec)
    fed = verify_manifest(decode_manifest(json.dumps(vec["manifest"]).encode()))
    assert fed.digest == vec["body_sha256"]


def test_independent_verifier_rejects_a_tampered_vector() -> None:
    vec = _vector()
    vec["manifest"]["body"]["params"]["threshold"] = 3
    vec["canonical_body_hex"] = json.dumps(vec["manifest"]["body"], sort_keys=True,
                                           separators=(",", ":")).encode().hex()
    vec["body_sha256"] = hashlib.sha256(bytes.fromhex(vec["canonical_body_hex"])).hexdigest()
    with pytest.raises((AssertionError, InvalidSignature)):
        _independent_check(vec)
