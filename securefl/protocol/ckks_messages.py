"""Wire messages of the CKKS aggregation protocol (protocols/ckks/spec.md).

Frozen, tagged (``type`` field), versioned msgspec Structs that forbid unknown fields; sizes bounded
in the types (``Meta``) and, tighter, by the receiver from the agreed parameters. Decode with
:func:`securefl.protocol.wire.decode` and a ``max_bytes`` from :func:`max_message_bytes`.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "CKKS_MESSAGES",
    "CKKSMessage",
    "CoSignature",
    "Commitment",
    "CommitmentEntry",
    "CommitmentSet",
    "Contribution",
    "ContributionEntry",
    "DecryptionRequest",
    "DecryptionResult",
    "Manifest",
    "SignedPublicContext",
    "VerifyRequest",
    "max_commitment_set_bytes",
    "max_message_bytes",
]

#: 2: commit phase (Commitment, CommitmentSet) before the ciphertexts are revealed;
#: 3: the ciphertext digest is a hash list ("securefl-ckks-ct-v2") and training rounds carry the
#: FedAvg weight slot; 4: the public context's key digest is bound into every commitment and the
#: commitment set, and a round key's public context is signed for its (session, round); 5: every
#: commitment (and its commitment-set entry) carries the bank's round-plan digest, signed with it
#: (domain ckks/commitment v2, S8-1).
#: Decoding refuses any other version (the field is a Literal).
PROTOCOL_VERSION: Final = 5
Version = Literal[5]
#: serialized chunk: at most N=32768 with 3 data limbs, uncompressed (2 * 32768 * 3 * 8 + slack)
MAX_CHUNK_BYTES = 2 * 1024 * 1024
#: at most 2^16 chunks (2^28 parameters at N=8192)
MAX_CHUNKS = 65536
MAX_CLIENTS = 10_000

SessionId = Annotated[bytes, Meta(min_length=16, max_length=16)]
Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]
Sig = Annotated[bytes, Meta(min_length=64, max_length=64)]
ClientId = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Round = Annotated[int, Meta(ge=0, le=2**63 - 1)]
NumValues = Annotated[int, Meta(ge=1, le=2**31)]
Chunks = Annotated[
    list[Annotated[bytes, Meta(min_length=1, max_length=MAX_CHUNK_BYTES)]],
    Meta(min_length=1, max_length=MAX_CHUNKS),
]


class _Msg(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class SignedPublicContext(_Msg, tag="ckks.public_context", frozen=True, forbid_unknown_fields=True):
    """The key holder's public CKKS context and parameters, signed. A round key (fresh for one
    round) names its ``session_id`` and ``round`` and is signed for them (domain
    ckks/round-context); a long-lived key leaves both None (domain ckks/public-context). A round
    key made for a deployment's session also names ``hello_digest``, the SHA-256 of the signed
    training plan (Hello body) the key holder accepted for the session, and is signed with it
    (domain ckks/round-context-plan): every bank checks it against its own Hello (S7b-6)."""

    poly_modulus_degree: Annotated[int, Meta(ge=1024, le=32768)]
    coeff_mod_bit_sizes: Annotated[
        list[Annotated[int, Meta(ge=20, le=60)]], Meta(min_length=2, max_length=16)
    ]
    scale_bits: Annotated[int, Meta(ge=20, le=60)]
    context: Annotated[bytes, Meta(min_length=1, max_length=16 * 1024 * 1024)]
    key_id: SessionId
    signature: Sig
    session_id: SessionId | None = None
    round: Round | None = None
    version: Version = PROTOCOL_VERSION
    hello_digest: Digest | None = None


class Commitment(_Msg, tag="ckks.commitment", frozen=True, forbid_unknown_fields=True):
    """Client -> server, before any ciphertext is revealed: a hash commitment to its ciphertext
    (``commitment_value``: sha256 of the ciphertext digest bound to session, round, client id and
    size) and ``plan_digest``, the round plan the bank sized its input and noise share by
    (:func:`securefl.protocol.ckks.canonical.round_plan_digest`), both signed (domain
    ckks/commitment v2, S8-1)."""

    session_id: SessionId
    round: Round
    client_id: ClientId
    num_values: NumValues
    commitment: Digest
    plan_digest: Digest
    signature: Sig
    version: Version = PROTOCOL_VERSION


class CommitmentEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of the closed commitment set: a client's commitment, the round-plan digest it
    committed under and its signature on both."""

    client_id: ClientId
    commitment: Digest
    plan_digest: Digest
    signature: Sig


class CommitmentSet(_Msg, tag="ckks.commitment_set", frozen=True, forbid_unknown_fields=True):
    """Server -> every committed client: the closed, complete set of commitments (sorted by client
    id) under the round's CKKS key (``key_digest``: SHA-256 of its public context), signed by the
    server (domain ckks/commitment-set) over ``commitment_set_digest``."""

    session_id: SessionId
    round: Round
    num_values: NumValues
    key_digest: Digest
    entries: Annotated[list[CommitmentEntry], Meta(min_length=1, max_length=MAX_CLIENTS)]
    signature: Sig
    version: Version = PROTOCOL_VERSION


class Contribution(_Msg, tag="ckks.contribution", frozen=True, forbid_unknown_fields=True):
    """Client -> server (the reveal): the committed ciphertext, signed over its digest and the
    digest of the closed commitment set the client was shown."""

    session_id: SessionId
    round: Round
    client_id: ClientId
    num_values: NumValues
    chunks: Chunks
    commitment_set_digest: Digest
    signature: Sig
    version: Version = PROTOCOL_VERSION


class ContributionEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One manifest line: who contributed which ciphertext (digest), and their reveal signature."""

    client_id: ClientId
    digest: Digest
    signature: Sig


class Manifest(_Msg, tag="ckks.manifest", frozen=True, forbid_unknown_fields=True):
    """Server -> everyone: the contributions in the sum (sorted by client id) and the sum's
    digest."""

    session_id: SessionId
    round: Round
    num_values: NumValues
    entries: Annotated[list[ContributionEntry], Meta(min_length=1, max_length=MAX_CLIENTS)]
    aggregate_digest: Digest
    #: the closed commitment set every listed contribution was committed in and revealed under
    commitment_set: CommitmentSet
    version: Version = PROTOCOL_VERSION


class VerifyRequest(_Msg, tag="ckks.verify_request", frozen=True, forbid_unknown_fields=True):
    """Server -> verifier: the manifest and every listed contribution's chunks (same order)."""

    manifest: Manifest
    contributions: Annotated[list[Chunks], Meta(min_length=1, max_length=MAX_CLIENTS)]
    version: Version = PROTOCOL_VERSION


class CoSignature(_Msg, tag="ckks.cosignature", frozen=True, forbid_unknown_fields=True):
    """Verifier -> server: signature over the manifest digest after recomputing the sum."""

    session_id: SessionId
    round: Round
    verifier_id: ClientId
    manifest_digest: Digest
    signature: Sig
    version: Version = PROTOCOL_VERSION


class DecryptionRequest(_Msg, tag="ckks.decrypt_request", frozen=True, forbid_unknown_fields=True):
    """Server -> key holder: the aggregate (never an individual ciphertext), manifest,
    co-signatures."""

    manifest: Manifest
    aggregate: Chunks
    cosignatures: Annotated[list[CoSignature], Meta(min_length=1, max_length=MAX_CLIENTS)]
    version: Version = PROTOCOL_VERSION


class DecryptionResult(_Msg, tag="ckks.decrypt_result", frozen=True, forbid_unknown_fields=True):
    """Key holder -> server: flooded, rounded sum (little-endian float64), signed."""

    session_id: SessionId
    round: Round
    manifest_digest: Digest
    num_values: NumValues
    values: Annotated[bytes, Meta(max_length=8 * 2**31)]
    flood_std: Annotated[float, Meta(ge=0)]
    grid: Annotated[float, Meta(gt=0)]
    signature: Sig
    version: Version = PROTOCOL_VERSION


CKKSMessage = (
    SignedPublicContext
    | Commitment
    | CommitmentSet
    | Contribution
    | Manifest
    | VerifyRequest
    | CoSignature
    | DecryptionRequest
    | DecryptionResult
)
CKKS_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    SignedPublicContext,
    Commitment,
    CommitmentSet,
    Contribution,
    Manifest,
    VerifyRequest,
    CoSignature,
    DecryptionRequest,
    DecryptionResult,
)


def max_message_bytes(chunk_bytes: int, num_chunks: int, num_clients: int = 1) -> int:
    """Size limit for a message carrying ``num_clients`` chunk lists (plus 64 KiB per client
    slack)."""
    return num_clients * (num_chunks * (chunk_bytes + 16) + 65536) + 65536


def max_commitment_set_bytes(num_clients: int) -> int:
    """Size limit for a Commitment or CommitmentSet message with ``num_clients`` entries."""
    return num_clients * 208 + 4096
