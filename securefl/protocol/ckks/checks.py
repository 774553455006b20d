"""Checks every CKKS party shares: the key holder's signed public context, the server-signed closed
commitment set, a manifest's entries against it, and verifier co-signatures."""

from __future__ import annotations

from collections.abc import Mapping

from securefl.crypto.signing import VerifyKey, verify_bound
from securefl.errors import (
    CryptoError,
    IntegrityError,
    PlanMismatchError,
    RemoteProtocolError,
    SignatureError,
)
from securefl.he.context import PublicContext, load_public_context
from securefl.he.params import CKKSParams
from securefl.protocol.ckks.canonical import (
    commitment_message,
    commitment_set_digest,
    commitment_value,
    context_message,
    contribution_message,
    cosign_message,
    key_id_for,
)
from securefl.protocol.ckks.config import (
    DOMAIN_COMMITMENT,
    DOMAIN_COMMITMENT_SET,
    DOMAIN_CONTEXT,
    DOMAIN_CONTRIBUTION,
    DOMAIN_COSIGN,
    DOMAIN_PLAN_CONTEXT,
    DOMAIN_ROUND_CONTEXT,
    DecryptionRefusedError,
    IdentityKeys,
)
from securefl.protocol.ckks_messages import CommitmentSet, CoSignature, Manifest, SignedPublicContext

__all__ = [
    "accept_public_context",
    "check_commitment_set",
    "check_entries",
    "check_one_plan",
    "context_binding",
    "verify_cosignature",
    "verify_set_signature",
]


def verify_cosignature(federation: Mapping[int, VerifyKey], cs: CoSignature, mdig: bytes) -> None:
    """Raise unless ``cs`` is an enrolled verifier's signature over manifest digest ``mdig`` in the
    co-signature's own session and round (callers check those match the round first)."""
    key = federation.get(cs.verifier_id)
    if key is None:
        raise SignatureError(f"verifier {cs.verifier_id} is not enrolled")
    verify_bound(
        key,
        cs.signature,
        domain=DOMAIN_COSIGN,
        session_id=cs.session_id,
        round_=cs.round,
        message=cosign_message(cs.verifier_id, mdig),
    )



def context_binding(key_id: bytes, slot: tuple[bytes, int] | None, hello_digest: bytes | None
                    ) -> tuple[str, bytes, int]:
    """(domain, session, round) a public context is signed under: a long-lived key's
    (ckks/public-context, bound to its key id and round 0), a round key's (ckks/round-context,
    its session and round) or a round key bound to a signed plan (ckks/round-context-plan, S7b-6).
    A long-lived key serves every session, so it cannot be bound to one session's plan."""
    if slot is None:
        if hello_digest is not None:
            raise RemoteProtocolError("a long-lived key cannot be bound to one session's plan")
        return DOMAIN_CONTEXT, key_id, 0
    return (DOMAIN_ROUND_CONTEXT if hello_digest is None else DOMAIN_PLAN_CONTEXT), *slot


def accept_public_context(
    msg: SignedPublicContext,
    key_holder: VerifyKey,
    params: CKKSParams,
    *,
    session_id: bytes | None = None,
    round_: int | None = None,
    hello_digest: bytes | None = None,
) -> PublicContext:
    """Verify the key holder's signature and parameters; reject a context carrying the secret
    key. With ``session_id`` and ``round_``, accept only a round key signed for exactly that
    (session, round) (fresh per round, spec.md "Keys"); without them, only a long-lived key.
    With ``hello_digest`` (a deployment's bank: the SHA-256 of the Hello body it verified), accept
    only a round key the key holder bound to exactly that plan (PlanMismatchError otherwise:
    the server showed the parties different plans, S7b-6)."""
    got = CKKSParams(msg.poly_modulus_degree, tuple(msg.coeff_mod_bit_sizes), msg.scale_bits)
    if got != params:
        raise CryptoError("the published CKKS parameters differ from the agreed ones")
    if msg.key_id != key_id_for(msg.context):
        raise IntegrityError("the public context's key_id does not match its contents")
    if (msg.session_id, msg.round) != (session_id, round_):
        raise RemoteProtocolError(
            "the public context is not the key for this round"
            if session_id is not None
            else "a round key was offered where the long-lived key is expected"
        )
    if hello_digest is not None and msg.hello_digest != hello_digest:
        raise PlanMismatchError(
            "the round's key is bound to another signed plan than this party's"
            if msg.hello_digest is not None
            else "the round's key is bound to no signed plan"
        )
    slot = (msg.session_id, msg.round) if msg.session_id is not None and msg.round is not None \
        else None
    domain, bound_session, bound_round = context_binding(msg.key_id, slot, msg.hello_digest)
    verify_bound(
        key_holder,
        msg.signature,
        domain=domain,
        session_id=bound_session,
        round_=bound_round,
        message=context_message(params, msg.context, msg.hello_digest),
    )
    return load_public_context(msg.context, params)


def verify_set_signature(cs: CommitmentSet, server_key: VerifyKey) -> bytes:
    """Entries sorted and distinct, and the server's signature over the set; returns its digest."""
    ids = [e.client_id for e in cs.entries]
    if len(set(ids)) != len(ids) or ids != sorted(ids):
        raise RemoteProtocolError("commitment set entries must be sorted by client id and distinct")
    digest = commitment_set_digest(cs)
    verify_bound(
        server_key,
        cs.signature,
        domain=DOMAIN_COMMITMENT_SET,
        session_id=cs.session_id,
        round_=cs.round,
        message=digest,
    )
    return digest


def check_commitment_set(
    cs: CommitmentSet, federation: IdentityKeys, server_key: VerifyKey
) -> bytes:
    """Server signature, entries sorted and distinct, enrolled, each commitment signature valid
    and every commitment made under the same round plan (PlanMismatchError otherwise: the server
    gave the banks different plans, S8-1). Returns the set's digest."""
    digest = verify_set_signature(cs, server_key)
    check_one_plan(cs)
    for e in cs.entries:
        verify_commitment(federation, e.client_id, cs.session_id, cs.round, cs.num_values,
                          e.commitment, e.plan_digest, e.signature)
    return digest


def check_one_plan(cs: CommitmentSet, plan_digest: bytes | None = None) -> None:
    """Every entry of ``cs`` names the same round-plan digest (``plan_digest``, this party's own,
    when given): PlanMismatchError otherwise. The server signed the banks of the set different
    round plans (e.g. a clip norm, hence a noise share, shrunk for all but one bank), and their sum
    would not carry the noise every bank planned for (red-team finding S8-1)."""
    plans = {e.plan_digest for e in cs.entries}
    if len(plans) != 1 or (plan_digest is not None and plans != {plan_digest}):
        raise PlanMismatchError(
            f"round {cs.round}: the commitment set holds commitments made under "
            f"{len(plans)} round plan(s)"
            + ("" if plan_digest is None or plan_digest in plans else ", none of them this one's")
            + ": the banks were given different plans; nothing is revealed or decrypted")


def verify_commitment(federation: Mapping[int, VerifyKey], client_id: int, session_id: bytes,
                      round_: int, num_values: int, commitment: bytes, plan_digest: bytes,
                      signature: bytes) -> None:
    """``signature`` is the enrolled client's signature of its commitment and round-plan digest
    for this round (SignatureError otherwise, also for a client outside the federation)."""
    key = federation.get(client_id)
    if key is None:
        raise SignatureError(f"client {client_id} is not enrolled in the federation")
    verify_bound(key, signature, domain=DOMAIN_COMMITMENT, session_id=session_id, round_=round_,
                 message=commitment_message(client_id, num_values, commitment, plan_digest))


def check_entries(
    manifest: Manifest,
    federation: IdentityKeys,
    server_key: VerifyKey,
    min_clients: int,
    key_digest: bytes,
) -> bytes:
    """The closed commitment set is the server's, for this round and this round's key
    (``key_digest``), with valid commitment
    signatures; entries sorted by id, distinct, enrolled, >= min_clients; every entry opens its
    client's commitment in that set, and every reveal signature binds that same set (a client shown
    another set signed another digest). Returns the commitment set's digest."""
    cs = manifest.commitment_set
    if (cs.session_id, cs.round, cs.num_values) != (
        manifest.session_id,
        manifest.round,
        manifest.num_values,
    ):
        raise DecryptionRefusedError("the commitment set is for another session, round or size")
    if cs.key_digest != key_digest:
        raise DecryptionRefusedError(
            "the commitment set is under another CKKS key than this round's"
        )
    set_digest = check_commitment_set(cs, federation, server_key)
    committed = {e.client_id: e.commitment for e in cs.entries}
    ids = [e.client_id for e in manifest.entries]
    if len(set(ids)) != len(ids):
        raise DecryptionRefusedError("the manifest lists a client more than once")
    if ids != sorted(ids):
        raise RemoteProtocolError("manifest entries must be sorted by client id")
    if len(ids) < min_clients:
        raise DecryptionRefusedError(
            f"the manifest has {len(ids)} contributions; at least {min_clients} are required"
        )
    if len({e.digest for e in manifest.entries}) != len(ids):
        raise DecryptionRefusedError("two contributions carry the same ciphertext")
    for e in manifest.entries:
        key = federation.get(e.client_id)
        if key is None:
            raise SignatureError(f"client {e.client_id} is not enrolled in the federation")
        commitment = committed.get(e.client_id)
        if commitment is None:
            raise DecryptionRefusedError(
                f"client {e.client_id} contributed without a commitment in the closed set"
            )
        opened = commitment_value(
            manifest.session_id,
            manifest.round,
            e.client_id,
            manifest.num_values,
            e.digest,
            cs.key_digest,
        )
        if opened != commitment:
            raise DecryptionRefusedError(
                f"client {e.client_id}'s ciphertext does not match its commitment"
            )
        verify_bound(
            key,
            e.signature,
            domain=DOMAIN_CONTRIBUTION,
            session_id=manifest.session_id,
            round_=manifest.round,
            message=contribution_message(e.client_id, manifest.num_values, e.digest, set_digest),
        )
    return set_digest
