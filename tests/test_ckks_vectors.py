"""Independent check of protocols/ckks/vectors (hashlib + cryptography directly) and schema sync."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.protocol.ckks_messages import CKKS_MESSAGES

ROOT = Path(__file__).resolve().parent.parent / "protocols" / "ckks"
V = json.loads((ROOT / "vectors" / "vectors.json").read_text())


def _bound(domain: str, session: bytes, round_: int, message: bytes) -> bytes:
    d = domain.encode()
    return (
        b"securefl-sig-v1\x00"
        + struct.pack(">H", len(d))
        + d
        + struct.pack(">H", len(session))
        + session
        + struct.pack(">Q", round_)
        + message
    )


def _digest(chunks: list[bytes]) -> bytes:
    h = hashlib.sha256(b"securefl-ckks-ct-v1" + struct.pack(">I", len(chunks)))
    for c in chunks:
        h.update(struct.pack(">Q", len(c)) + c)
    return h.digest()


def test_vectors_recomputed_independently():
    session = bytes.fromhex(V["session_id"])
    priv = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V["client_seed"]))
    assert priv.public_key().public_bytes_raw().hex() == V["client_public_key"]
    chunks = [bytes.fromhex(c) for c in V["chunks"]]
    digest = _digest(chunks)
    assert digest.hex() == V["ciphertext_digest"]
    msg = struct.pack(">QQ", V["client_id"], V["num_values"]) + digest
    sig = priv.sign(_bound("securefl/ckks/contribution/v1", session, V["round"], msg))
    assert sig.hex() == V["contribution_signature"]
    agg = _digest([bytes.fromhex(c) for c in V["aggregate_chunks"]])
    assert agg.hex() == V["aggregate_digest"]
    m = hashlib.sha256(
        b"securefl-ckks-manifest-v1"
        + session
        + struct.pack(">QQI", V["round"], V["num_values"], 1)
        + struct.pack(">Q", V["client_id"])
        + digest
        + sig
        + agg
    ).digest()
    assert m.hex() == V["manifest_digest"]
    cos = priv.sign(
        _bound(
            "securefl/ckks/aggregate-cosign/v1",
            session,
            V["round"],
            struct.pack(">Q", V["client_id"]) + m,
        )
    )
    assert cos.hex() == V["cosignature"]
    params = b"".join(x.to_bytes(4, "big") for x in (8192, 3, 60, 60, 60, 60))
    assert params.hex() == V["params_canonical"]
    key_id = hashlib.sha256(bytes.fromhex(V["context_bytes"])).digest()[:16]
    assert key_id.hex() == V["context_key_id"]
    holder = Ed25519PublicKey.from_public_bytes(bytes.fromhex(V["holder_public_key"]))
    holder.verify(
        bytes.fromhex(V["context_signature"]),
        _bound(
            "securefl/ckks/public-context/v1",
            key_id,
            0,
            params + hashlib.sha256(bytes.fromhex(V["context_bytes"])).digest(),
        ),
    )


def test_schemas_in_sync_with_structs():
    for cls in CKKS_MESSAGES:
        stored = json.loads((ROOT / "schemas" / f"{cls.__name__}.json").read_text())
        assert stored == msgspec.json.schema(cls), "regenerate: python protocols/ckks/generate.py"
