"""Generate protocols/ckks/schemas/*.json (JSON Schema of every message) and vectors/vectors.json.

Vectors cover what is deterministic: the ciphertext digest (hash list, with each chunk's SHA-256,
and a 1.5 MiB case that securefl hashes on several threads), the commitment, the commitment set
digest, the manifest digest, the verifier ranking and Ed25519 signatures (RFC 8032 signatures are
deterministic) over fixed inputs with fixed seeds. An independent verifier
(tests/test_ckks_vectors.py) recomputes them with hashlib and `cryptography` directly.

    python protocols/ckks/generate.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, sign_bound
from securefl.he.params import DEFAULT_PARAMS
from securefl.he.vectors import chunk_hashes, ciphertext_digest
from securefl.protocol.ckks import (
    DOMAIN_COMMITMENT,
    DOMAIN_COMMITMENT_SET,
    DOMAIN_CONTEXT,
    DOMAIN_CONTRIBUTION,
    DOMAIN_COSIGN,
    DOMAIN_PLAN_CONTEXT,
    DOMAIN_ROUND_CONTEXT,
    commitment_message,
    commitment_set_digest,
    commitment_value,
    context_message,
    contribution_message,
    cosign_message,
    key_id_for,
    manifest_digest,
    round_plan_digest,
    verifier_ranking,
)
from securefl.protocol.ckks_messages import (
    CKKS_MESSAGES,
    CommitmentEntry,
    CommitmentSet,
    ContributionEntry,
    Manifest,
)
from securefl.protocol.plan import NoisePlan, RoundSpec
from securefl.schema import json_schema, render

HERE = Path(__file__).parent


def schemas() -> dict[str, dict[str, object]]:
    return {cls.__name__: json_schema(cls) for cls in CKKS_MESSAGES}


def vectors() -> dict[str, object]:
    session = bytes(range(16))
    client_seed = bytes([0x11]) * 32
    holder_seed = bytes([0x22]) * 32
    server_seed = bytes([0x33]) * 32
    client = SigningKey.from_seed(Secret(client_seed))
    holder = SigningKey.from_seed(Secret(holder_seed))
    server = SigningKey.from_seed(Secret(server_seed))
    chunks = [b"chunk-0", b"chunk-1-longer"]
    digest = ciphertext_digest(chunks)
    # large enough (1.5 MiB) that securefl hashes the chunks on several threads
    large = [bytes([i]) + bytes(range(256)) * 2048 for i in range(3)]
    fake_context = b"public-context-bytes"
    key_digest = hashlib.sha256(fake_context).digest()
    commitment = commitment_value(session, 7, 5, 9000, digest, key_digest)
    # the round plan the client committed under (S8-1): a RoundSpec and a signed plan body
    spec = RoundSpec(session_id=session, round=7, participants=(5,), clip_norm=1.0, threshold=1,
                     noise=NoisePlan(1.1, 1), weights=(1.0,),
                     model_digest=hashlib.sha256(b"a global model").digest(),
                     context_digest=hashlib.sha256(b"a signed hello body").digest())
    round_plan = round_plan_digest(spec, b"a signed round plan body")
    commit_sig = sign_bound(
        client,
        domain=DOMAIN_COMMITMENT,
        session_id=session,
        round_=7,
        message=commitment_message(5, 9000, commitment, round_plan),
    )
    unsigned = CommitmentSet(
        session_id=session,
        round=7,
        num_values=9000,
        key_digest=key_digest,
        entries=[CommitmentEntry(client_id=5, commitment=commitment, plan_digest=round_plan,
                                 signature=commit_sig)],
        signature=bytes(64),
    )
    set_digest = commitment_set_digest(unsigned)
    set_sig = sign_bound(
        server, domain=DOMAIN_COMMITMENT_SET, session_id=session, round_=7, message=set_digest
    )
    cset = msgspec.structs.replace(unsigned, signature=set_sig)
    contrib_sig = sign_bound(
        client,
        domain=DOMAIN_CONTRIBUTION,
        session_id=session,
        round_=7,
        message=contribution_message(5, 9000, digest, set_digest),
    )
    manifest = Manifest(
        session_id=session,
        round=7,
        num_values=9000,
        entries=[ContributionEntry(client_id=5, digest=digest, signature=contrib_sig)],
        aggregate_digest=ciphertext_digest([b"sum"]),
        commitment_set=cset,
    )
    mdig = manifest_digest(manifest)
    cosig = sign_bound(
        client, domain=DOMAIN_COSIGN, session_id=session, round_=7, message=cosign_message(5, mdig)
    )
    round_ctx_sig = sign_bound(
        holder,
        domain=DOMAIN_ROUND_CONTEXT,
        session_id=session,
        round_=7,
        message=context_message(DEFAULT_PARAMS, fake_context),
    )
    plan_digest = hashlib.sha256(b"a signed hello body").digest()
    plan_ctx_sig = sign_bound(  # a round key bound to the session's signed plan (S7b-6)
        holder,
        domain=DOMAIN_PLAN_CONTEXT,
        session_id=session,
        round_=7,
        message=context_message(DEFAULT_PARAMS, fake_context, plan_digest),
    )
    ctx_sig = sign_bound(
        holder,
        domain=DOMAIN_CONTEXT,
        session_id=key_id_for(fake_context),
        round_=0,
        message=context_message(DEFAULT_PARAMS, fake_context),
    )
    return {
        "session_id": session.hex(),
        "round": 7,
        "client_id": 5,
        "num_values": 9000,
        "client_seed": client_seed.hex(),
        "client_public_key": client.verify_key.raw.hex(),
        "holder_seed": holder_seed.hex(),
        "holder_public_key": holder.verify_key.raw.hex(),
        "server_seed": server_seed.hex(),
        "server_public_key": server.verify_key.raw.hex(),
        "chunks": [c.hex() for c in chunks],
        "chunk_sha256": [h.hex() for h in chunk_hashes(chunks)],
        "ciphertext_digest": digest.hex(),
        "large_chunks": {
            "rule": "chunk i (i = 0, 1, 2) = byte i || bytes 0x00..0xff repeated 2048 times",
            "count": len(large),
            "ciphertext_digest": ciphertext_digest(large).hex(),
        },
        "round_plan_digest": round_plan.hex(),
        "commitment": commitment.hex(),
        "commitment_signature": commit_sig.hex(),
        "commitment_set_digest": set_digest.hex(),
        "commitment_set_signature": set_sig.hex(),
        "contribution_signature": contrib_sig.hex(),
        "aggregate_chunks": [b"sum".hex()],
        "aggregate_digest": manifest.aggregate_digest.hex(),
        "manifest_digest": mdig.hex(),
        "cosignature": cosig.hex(),
        "verifier_ranking_ids": [1, 2, 3, 4, 5, 6, 7, 8],
        "verifier_ranking": list(verifier_ranking(set_digest, range(1, 9))),
        "params_canonical": DEFAULT_PARAMS.canonical_bytes().hex(),
        "context_bytes": fake_context.hex(),
        "context_key_id": key_id_for(fake_context).hex(),
        "context_signature": ctx_sig.hex(),
        "key_digest": key_digest.hex(),
        "round_context_signature": round_ctx_sig.hex(),
        "hello_digest": plan_digest.hex(),
        "plan_context_signature": plan_ctx_sig.hex(),
    }


def main() -> None:
    (HERE / "schemas").mkdir(exist_ok=True)
    for name, schema in schemas().items():
        (HERE / "schemas" / f"{name}.json").write_text(
            render(schema)
        )
    (HERE / "vectors").mkdir(exist_ok=True)
    (HERE / "vectors" / "vectors.json").write_text(json.dumps(vectors(), indent=2) + "\n")


if __name__ == "__main__":
    main()
