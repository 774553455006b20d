"""The canonical byte strings of the CKKS protocol that are signed or hashed (protocols/ckks/spec.md,
"Encodings" and "Signatures"), and the verifier ranking drawn from the closed commitment set."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from securefl.errors import LocalProtocolError
from securefl.he.params import CKKSParams
from securefl.protocol.ckks_messages import CommitmentSet, Manifest
from securefl.protocol.plan import RoundSpec

__all__ = [
    "commitment_message",
    "commitment_set_digest",
    "commitment_value",
    "context_message",
    "contribution_message",
    "cosign_message",
    "eligible_verifiers",
    "key_id_for",
    "manifest_digest",
    "release_message",
    "round_plan_digest",
    "verifier_ranking",
]


def context_message(params: CKKSParams, context: bytes, hello_digest: bytes | None = None
                    ) -> bytes:
    """What the key holder signs over a public context: the parameters' canonical bytes and
    SHA-256(context), then, for a round key bound to a signed plan (domain ckks/round-context-plan,
    S7b-6), the plan's 32-byte digest."""
    if hello_digest is not None and len(hello_digest) != 32:
        raise LocalProtocolError("hello_digest must be 32 bytes")
    return (params.canonical_bytes() + hashlib.sha256(context).digest()
            + (hello_digest if hello_digest is not None else b""))


def key_id_for(context: bytes) -> bytes:
    """16-byte identifier of a public context: sha256(context)[:16]."""
    return hashlib.sha256(context).digest()[:16]


def commitment_value(
    session_id: bytes,
    round_: int,
    client_id: int,
    num_values: int,
    ct_digest: bytes,
    key_digest: bytes,
) -> bytes:
    """The hash commitment to a ciphertext: SHA-256("securefl-ckks-commit-v2" || session(16) ||
    u64 round || u64 id || u64 d || key_digest || ct_digest). Binding by collision resistance; it
    reveals nothing about the ciphertext's digest (which carries the encryption's fresh randomness)
    and, being bound to the client id, cannot be copied by another client. ``key_digest`` (SHA-256
    of the public context the client encrypted under) ties it to the round's key."""
    if len(key_digest) != 32:
        raise LocalProtocolError("key_digest must be 32 bytes")
    return hashlib.sha256(
        b"securefl-ckks-commit-v2"
        + session_id
        + struct.pack(">QQQ", round_, client_id, num_values)
        + key_digest
        + ct_digest
    ).digest()


def commitment_message(client_id: int, num_values: int, commitment: bytes, plan_digest: bytes
                       ) -> bytes:
    """What a commitment signs (domain ckks/commitment v2): u64 id || u64 d || commitment ||
    plan_digest (the bank's :func:`round_plan_digest`, S8-1)."""
    if len(plan_digest) != 32:
        raise LocalProtocolError("plan_digest must be 32 bytes")
    return struct.pack(">QQ", client_id, num_values) + commitment + plan_digest


def round_plan_digest(spec: RoundSpec, signed_plan: bytes = b"") -> bytes:
    """The round plan a CKKS bank commits under (red-team finding S8-1, the CKKS analogue of
    SecAgg's plan digest): SHA-256("securefl-ckks-round-plan-v1" 0x00 || spec.plan_digest() ||
    SHA-256(signed_plan)). ``spec`` is the round's :class:`RoundSpec` as this party received it
    (model digest, training-plan digest, clip norm, threshold, noise plan, FedAvg weights: what
    sizes its input and its noise share); ``signed_plan`` the body of the round's plan the server
    signed for every bank alike (a deployment's RoundStart, with round 0's stats ranges and
    groups; the Flower path's FlowerPlan), empty in process. Every bank signs it into its
    commitment; a bank reveals, a verifier co-signs and the key holder decrypts only a set in
    which every commitment names the same digest."""
    return hashlib.sha256(
        b"securefl-ckks-round-plan-v1\x00" + spec.plan_digest()
        + hashlib.sha256(signed_plan).digest()
    ).digest()


def commitment_set_digest(cs: CommitmentSet) -> bytes:
    """SHA-256 over the closed commitment set (without the server's signature over it)."""
    h = hashlib.sha256(b"securefl-ckks-commitment-set-v3")
    h.update(cs.session_id + struct.pack(">QQ", cs.round, cs.num_values) + cs.key_digest)
    h.update(struct.pack(">I", len(cs.entries)))
    for e in cs.entries:
        h.update(struct.pack(">Q", e.client_id) + e.commitment + e.plan_digest + e.signature)
    return h.digest()


def contribution_message(
    client_id: int, num_values: int, digest: bytes, commitment_set_digest_: bytes
) -> bytes:
    """What a reveal signs: u64 id || u64 d || ct_digest || commitment_set_digest."""
    return struct.pack(">QQ", client_id, num_values) + digest + commitment_set_digest_


def cosign_message(verifier_id: int, manifest_digest_: bytes) -> bytes:
    return struct.pack(">Q", verifier_id) + manifest_digest_


def release_message(manifest_digest_: bytes, num_values: int, values: bytes) -> bytes:
    return manifest_digest_ + struct.pack(">Q", num_values) + hashlib.sha256(values).digest()


def manifest_digest(m: Manifest) -> bytes:
    """SHA-256 over a canonical encoding of the manifest (spec.md, "Encodings")."""
    h = hashlib.sha256(b"securefl-ckks-manifest-v2")
    h.update(m.session_id + struct.pack(">QQI", m.round, m.num_values, len(m.entries)))
    for e in m.entries:
        h.update(struct.pack(">Q", e.client_id) + e.digest + e.signature)
    h.update(m.aggregate_digest)
    h.update(commitment_set_digest(m.commitment_set) + m.commitment_set.signature)
    return h.digest()


def verifier_ranking(set_digest: bytes, client_ids: Iterable[int]) -> tuple[int, ...]:
    """Clients ordered by SHA-256("securefl-ckks-verifiers-v1" || set_digest || u64 id), ties by
    id. ``set_digest`` is the closed commitment set's digest: public, fixed once the server signs
    the set, and unpredictable before every commitment is in (each commitment hides a fresh
    ciphertext digest). Verifiers are the first ranked contributors that answer."""

    def key(cid: int) -> tuple[bytes, int]:
        tag = b"securefl-ckks-verifiers-v1" + set_digest + struct.pack(">Q", cid)
        return hashlib.sha256(tag).digest(), cid

    return tuple(sorted(set(client_ids), key=key))


def eligible_verifiers(m: Manifest, verifiers: int, skips: int) -> tuple[int, ...]:
    """The contributors of ``m`` allowed to co-sign: the first ``verifiers + skips`` of the ranking
    derived from the manifest's closed commitment set."""
    ranking = verifier_ranking(
        commitment_set_digest(m.commitment_set), (e.client_id for e in m.entries)
    )
    return ranking[: verifiers + skips]
