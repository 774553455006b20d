"""Independent check of protocols/ckks/vectors (hashlib + cryptography directly) and schema sync."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.protocol.ckks_messages import CKKS_MESSAGES
from securefl.schema import json_schema

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
    """spec.md ct_digest: a hash list, SHA-256 of each chunk under a labelled, counted header."""
    h = hashlib.sha256(b"securefl-ckks-ct-v2" + struct.pack(">I", len(chunks)))
    for c in chunks:
        h.update(struct.pack(">Q", len(c)) + hashlib.sha256(c).digest())
    return h.digest()


def test_vectors_recomputed_independently():
    session = bytes.fromhex(V["session_id"])
    priv = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V["client_seed"]))
    assert priv.public_key().public_bytes_raw().hex() == V["client_public_key"]
    chunks = [bytes.fromhex(c) for c in V["chunks"]]
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == V["chunk_sha256"]
    digest = _digest(chunks)
    assert digest.hex() == V["ciphertext_digest"]
    large = [bytes([i]) + bytes(range(256)) * 2048 for i in range(V["large_chunks"]["count"])]
    assert _digest(large).hex() == V["large_chunks"]["ciphertext_digest"]
    round_, cid, d = V["round"], V["client_id"], V["num_values"]
    key_digest = hashlib.sha256(bytes.fromhex(V["context_bytes"])).digest()
    assert key_digest.hex() == V["key_digest"]
    commitment = hashlib.sha256(
        b"securefl-ckks-commit-v2"
        + session
        + struct.pack(">QQQ", round_, cid, d)
        + key_digest
        + digest
    ).digest()
    assert commitment.hex() == V["commitment"]
    # the round plan the commitment is made under (S8-1): RoundSpec.plan_digest (model digest,
    # hello digest, clip 1.0, T 1, z 1.1, min_survivors 1, one weight 1.0) and a signed plan body
    spec_digest = hashlib.sha256(
        b"securefl/round-plan/v2\x00"
        + hashlib.sha256(b"a global model").digest()
        + hashlib.sha256(b"a signed hello body").digest()
        + struct.pack(">dIdII1d", 1.0, 1, 1.1, 1, 1, 1.0)
    ).digest()
    round_plan = hashlib.sha256(
        b"securefl-ckks-round-plan-v1\x00"
        + spec_digest
        + hashlib.sha256(b"a signed round plan body").digest()
    ).digest()
    assert round_plan.hex() == V["round_plan_digest"]
    commit_sig = priv.sign(
        _bound(
            "securefl/ckks/commitment/v2",
            session,
            round_,
            struct.pack(">QQ", cid, d) + commitment + round_plan,
        )
    )
    assert commit_sig.hex() == V["commitment_signature"]
    set_digest = hashlib.sha256(
        b"securefl-ckks-commitment-set-v3"
        + session
        + struct.pack(">QQ", round_, d)
        + key_digest
        + struct.pack(">I", 1)
        + struct.pack(">Q", cid)
        + commitment
        + round_plan
        + commit_sig
    ).digest()
    assert set_digest.hex() == V["commitment_set_digest"]
    server = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V["server_seed"]))
    assert server.public_key().public_bytes_raw().hex() == V["server_public_key"]
    set_sig = server.sign(_bound("securefl/ckks/commitment-set/v1", session, round_, set_digest))
    assert set_sig.hex() == V["commitment_set_signature"]
    msg = struct.pack(">QQ", cid, d) + digest + set_digest
    sig = priv.sign(_bound("securefl/ckks/contribution/v2", session, round_, msg))
    assert sig.hex() == V["contribution_signature"]
    agg = _digest([bytes.fromhex(c) for c in V["aggregate_chunks"]])
    assert agg.hex() == V["aggregate_digest"]
    m = hashlib.sha256(
        b"securefl-ckks-manifest-v2"
        + session
        + struct.pack(">QQI", round_, d, 1)
        + struct.pack(">Q", cid)
        + digest
        + sig
        + agg
        + set_digest
        + set_sig
    ).digest()
    assert m.hex() == V["manifest_digest"]
    ranked = sorted(
        V["verifier_ranking_ids"],
        key=lambda i: hashlib.sha256(
            b"securefl-ckks-verifiers-v1" + set_digest + struct.pack(">Q", i)
        ).digest(),
    )
    assert ranked == V["verifier_ranking"]
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
            params + key_digest,
        ),
    )
    # a round key: signed for its (session, round) under its own domain
    holder.verify(
        bytes.fromhex(V["round_context_signature"]),
        _bound("securefl/ckks/round-context/v1", session, round_, params + key_digest),
    )
    # a round key bound to the session's signed plan (S7b-6): the plan's digest is appended
    plan = hashlib.sha256(b"a signed hello body").digest()
    assert plan.hex() == V["hello_digest"]
    holder.verify(
        bytes.fromhex(V["plan_context_signature"]),
        _bound("securefl/ckks/round-context-plan/v1", session, round_, params + key_digest + plan),
    )


def test_schemas_in_sync_with_structs():
    for cls in CKKS_MESSAGES:
        stored = json.loads((ROOT / "schemas" / f"{cls.__name__}.json").read_text())
        assert stored == json_schema(cls), "regenerate: python protocols/ckks/generate.py"
