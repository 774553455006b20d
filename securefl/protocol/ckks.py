"""Sans-IO CKKS aggregation: key holder, client, server and verifier (protocols/ckks/spec.md).

No I/O, no clock, no global RNG: randomness is an injected RandomSource; messages are the Structs of
securefl.protocol.ckks_messages. The flow of one round:

1. key holder -> all: SignedPublicContext (public key only, Ed25519-signed).
2. client -> server: Commitment = sha256 of its ciphertext's digest bound to (session, round, id,
   size), signed. No ciphertext is revealed yet.
3. server -> committed clients: CommitmentSet, the closed set of commitments, signed by the server.
4. client -> server: Contribution (the reveal) = Enc(w_i clip(delta_i) + DP noise share), signed over
   its digest AND the digest of the closed commitment set it was shown. A ciphertext chosen after
   seeing another client's ciphertext cannot match a commitment made before the set closed, so the
   rogue-ciphertext attack (submit -ct_B to isolate client C) is refused.
5. server: checks each reveal against its commitment, sums homomorphically, publishes a Manifest
   (commitment set, client id, digest, signature, aggregate digest); verifiers are ranked by a hash
   of the closed commitment set (public, fixed once the set is signed) and each gets a VerifyRequest.
6. verifier (a client): re-checks every commitment and contribution, recomputes the sum, co-signs.
7. server -> key holder: DecryptionRequest (aggregate + manifest + co-signatures), never an
   individual ciphertext. The key holder decrypts once per (session, round), only with >=
   min_clients distinct enrolled contributions that match commitments in one server-signed set and
   all bind that set, and >= verifiers co-signatures from eligible verifiers, then floods and rounds
   (Li-Micciancio, EUROCRYPT 2021; see securefl.he.flooding) and signs the release.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound, verify_bound
from securefl.dp.noise import gaussian
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    CryptoError,
    IntegrityError,
    LocalProtocolError,
    OverflowRiskError,
    RemoteProtocolError,
    SignatureError,
    StateError,
)
from securefl.he.context import (
    PublicContext,
    SecretContext,
    generate_context,
    load_public_context,
)
from securefl.he.flooding import (
    DEFAULT_MAX_QUERIES,
    DEFAULT_STATISTICAL_SECURITY,
    coefficient_error_bound,
    flooding_std,
    release_error_bound,
    release_grid,
    tail_factor,
)
from securefl.he.params import CKKSParams
from securefl.he.vectors import (
    check_no_overflow,
    ciphertext_digest,
    ciphertext_digests,
    decrypt_chunks,
    encrypt_chunks,
    load_chunks,
    sum_chunks,
)
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentEntry,
    CommitmentSet,
    Contribution,
    ContributionEntry,
    CoSignature,
    DecryptionRequest,
    DecryptionResult,
    Manifest,
    SignedPublicContext,
    VerifyRequest,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = [
    "DEFAULT_VERIFIER_SKIPS",
    "DOMAIN_COMMITMENT",
    "DOMAIN_COMMITMENT_SET",
    "DOMAIN_CONTEXT",
    "DOMAIN_CONTRIBUTION",
    "DOMAIN_COSIGN",
    "DOMAIN_RELEASE",
    "DOMAIN_ROUND_CONTEXT",
    "CKKSClient",
    "CKKSKeyHolder",
    "CKKSServer",
    "CKKSVerifier",
    "ClientRoundState",
    "DecryptionRefusedError",
    "Federation",
    "accept_public_context",
    "commitment_message",
    "commitment_set_digest",
    "commitment_value",
    "contribution_message",
    "cosign_message",
    "eligible_verifiers",
    "manifest_digest",
    "noise_bound",
    "release_message",
    "split_weight_slot",
    "verifier_ranking",
]

DOMAIN_CONTEXT = "securefl/ckks/public-context/v1"
DOMAIN_ROUND_CONTEXT = "securefl/ckks/round-context/v1"
DOMAIN_COMMITMENT = "securefl/ckks/commitment/v1"
DOMAIN_COMMITMENT_SET = "securefl/ckks/commitment-set/v1"
DOMAIN_CONTRIBUTION = "securefl/ckks/contribution/v2"
DOMAIN_COSIGN = "securefl/ckks/aggregate-cosign/v1"
DOMAIN_RELEASE = "securefl/ckks/release/v1"

#: client id -> enrolled Ed25519 identity key (the federation manifest is the PKI)
Federation = Mapping[int, VerifyKey]

#: how many ranked verifiers may be skipped (dropped out) before the key holder refuses co-signers
DEFAULT_VERIFIER_SKIPS = 2


class DecryptionRefusedError(RemoteProtocolError):
    """The key holder refused to decrypt: missing signatures, co-signatures, or a replayed round."""

    code = "SFL312"
    default_hint = "nothing was decrypted or released for this round"


# --- canonical byte strings that are signed (spec.md section "Signatures")
# ---------------------------
def context_message(params: CKKSParams, context: bytes) -> bytes:
    return params.canonical_bytes() + hashlib.sha256(context).digest()


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


def commitment_message(client_id: int, num_values: int, commitment: bytes) -> bytes:
    return struct.pack(">QQ", client_id, num_values) + commitment


def commitment_set_digest(cs: CommitmentSet) -> bytes:
    """SHA-256 over the closed commitment set (without the server's signature over it)."""
    h = hashlib.sha256(b"securefl-ckks-commitment-set-v2")
    h.update(cs.session_id + struct.pack(">QQ", cs.round, cs.num_values) + cs.key_digest)
    h.update(struct.pack(">I", len(cs.entries)))
    for e in cs.entries:
        h.update(struct.pack(">Q", e.client_id) + e.commitment + e.signature)
    return h.digest()


def contribution_message(
    client_id: int, num_values: int, digest: bytes, commitment_set_digest_: bytes
) -> bytes:
    """What a reveal signs: u64 id || u64 d || ct_digest || commitment_set_digest."""
    return struct.pack(">QQ", client_id, num_values) + digest + commitment_set_digest_


def cosign_message(verifier_id: int, manifest_digest_: bytes) -> bytes:
    return struct.pack(">Q", verifier_id) + manifest_digest_


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


def noise_bound(clip_norm: float, noise_std: float, num_values: int) -> float:
    """Bound B on every |x_j| a client encrypts: clip_norm + Gaussian tail (2^-40 over all
    coords)."""
    if noise_std == 0:
        return clip_norm
    return clip_norm + tail_factor(num_values) * noise_std


def split_weight_slot(
    released: NDArray[np.float64],
    public_weights: Iterable[float],
    *,
    params: CKKSParams,
    num_summands: int,
    max_queries: int = DEFAULT_MAX_QUERIES,
) -> tuple[NDArray[np.float64], float]:
    """Split a release of d + 1 values into the update sum and the sum of the contributors' FedAvg
    weights (the last slot, spec.md "Weight slot"). The released weight sum must equal the public
    weights of the manifest's contributors within the release error bound
    (securefl.he.flooding.release_error_bound); IntegrityError otherwise: the denominator then
    does not describe the contributions in the sum."""
    if released.ndim != 1 or released.size < 2:
        raise IntegrityError("a release with a weight slot has at least 2 values")
    total, weight_total = released[:-1], float(released[-1])
    expected = float(sum(public_weights))
    bound = release_error_bound(
        num_summands, params.poly_modulus_degree, params.scale, released.size,
        max_queries=max_queries,
    )
    if not abs(weight_total - expected) <= bound or weight_total <= 0:
        raise IntegrityError(
            f"the released weight sum {weight_total:.6g} differs from the contributors' public "
            f"weights {expected:.6g} by more than the release error bound {bound:.2g}"
        )
    return total, weight_total


# --- key holder
# ---------------------------------------------------------------------------------------
def accept_public_context(
    msg: SignedPublicContext,
    key_holder: VerifyKey,
    params: CKKSParams,
    *,
    session_id: bytes | None = None,
    round_: int | None = None,
) -> PublicContext:
    """Verify the key holder's signature and parameters; reject a context carrying the secret
    key. With ``session_id`` and ``round_``, accept only a round key signed for exactly that
    (session, round) (fresh per round, spec.md "Keys"); without them, only a long-lived key."""
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
    if msg.session_id is not None and msg.round is not None:
        domain, bound_session, bound_round = DOMAIN_ROUND_CONTEXT, msg.session_id, msg.round
    else:
        domain, bound_session, bound_round = DOMAIN_CONTEXT, msg.key_id, 0
    verify_bound(
        key_holder,
        msg.signature,
        domain=domain,
        session_id=bound_session,
        round_=bound_round,
        message=context_message(params, msg.context),
    )
    return load_public_context(msg.context, params)


def _verify_set_signature(cs: CommitmentSet, server_key: VerifyKey) -> bytes:
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


def _check_commitment_set(
    cs: CommitmentSet, federation: Federation, server_key: VerifyKey
) -> bytes:
    """Server signature, entries sorted and distinct, enrolled, each commitment signature valid.
    Returns the set's digest."""
    digest = _verify_set_signature(cs, server_key)
    for e in cs.entries:
        key = federation.get(e.client_id)
        if key is None:
            raise SignatureError(f"client {e.client_id} is not enrolled in the federation")
        verify_bound(
            key,
            e.signature,
            domain=DOMAIN_COMMITMENT,
            session_id=cs.session_id,
            round_=cs.round,
            message=commitment_message(e.client_id, cs.num_values, e.commitment),
        )
    return digest


def _check_entries(
    manifest: Manifest,
    federation: Federation,
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
    set_digest = _check_commitment_set(cs, federation, server_key)
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


class CKKSKeyHolder:
    """Holds the secret key(s); decrypts at most one verified aggregate per (session, round).

    Two kinds of key. A **round key** (:meth:`round_context`): fresh CKKS keys for one (session,
    round), their public context signed for that round; the secret key decrypts that round's
    aggregate once and is then deleted, so a key that leaks (for instance to a bank that crafted a
    malformed ciphertext, spec.md "Trust assumption") opens that round only, and a ciphertext
    replayed from an earlier round decrypts to noise under this round's key. The **long-lived
    key** (``secret_context``, published by :meth:`public_context_message`): one key for every
    round of every session, as the deployment's key holder node uses today. A round with a round
    key is decrypted only with it.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        secret_context: SecretContext | None,
        federation: Federation,
        *,
        min_clients: int,
        verifiers: int = 2,
        max_queries: int = DEFAULT_MAX_QUERIES,
        statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
        server_key: VerifyKey | None = None,
        verifier_skips: int = DEFAULT_VERIFIER_SKIPS,
        params: CKKSParams | None = None,
        keygen: Callable[[CKKSParams], SecretContext] = generate_context,
    ) -> None:
        """``server_key`` is the aggregation server's enrolled identity (it signs the closed
        commitment set); decryption is refused until it is set. ``verifier_skips``: how many
        ranked verifiers may have dropped out (co-signers must rank in the first
        ``verifiers + verifier_skips`` contributors). ``secret_context``: the long-lived key, or
        None for a key holder that only makes round keys (then ``params`` names their
        parameters); ``keygen`` makes each round key (SEAL's CSPRNG)."""
        resolved = secret_context.params if secret_context is not None else params
        if resolved is None or (params is not None and params != resolved):
            raise ConfigError(
                "name the CKKS parameters (params) or give a long-lived key with the same ones"
            )
        if min_clients < 1 or verifiers < 1 or verifier_skips < 0:
            raise ConfigError("min_clients and verifiers must be >= 1, verifier_skips >= 0")
        if statistical_security < 30:
            raise ConfigError("statistical security must be >= 30 bits")
        self._key = signing_key
        self._ctx = secret_context
        self.params: CKKSParams = resolved
        self._keygen = keygen
        #: (session, round) -> (secret round key, its SignedPublicContext), until it decrypts
        self._round_keys: dict[tuple[bytes, int], tuple[SecretContext, SignedPublicContext]] = {}
        self.federation = dict(federation)
        self.min_clients = min_clients
        self.verifiers = verifiers
        self.max_queries = max_queries
        self.statistical_security = statistical_security
        self.server_key = server_key
        self.verifier_skips = verifier_skips
        self.queries_used = 0
        self._decrypted: set[tuple[bytes, int]] = set()

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    @property
    def has_long_lived_key(self) -> bool:
        """True when rounds without a round key use the long-lived key (deployment today)."""
        return self._ctx is not None

    @property
    def decrypted(self) -> frozenset[tuple[bytes, int]]:
        """The (session, round) slots this key holder has decrypted (each at most once)."""
        return frozenset(self._decrypted)

    def restore_usage(self, queries_used: int, decrypted: Iterable[tuple[bytes, int]]) -> None:
        """Load the key's usage from durable storage (a key holder that restarts must not forget
        which rounds it released nor how much of the key's query budget is spent)."""
        if queries_used < 0:
            raise StateError("queries_used must be >= 0")
        self.queries_used = max(self.queries_used, queries_used)
        self._decrypted |= set(decrypted)

    def _signed_context(
        self, secret: SecretContext, slot: tuple[bytes, int] | None
    ) -> SignedPublicContext:
        context = secret.public_bytes()
        kid = key_id_for(context)
        domain, session, round_ = (
            (DOMAIN_CONTEXT, kid, 0) if slot is None else (DOMAIN_ROUND_CONTEXT, *slot)
        )
        sig = sign_bound(
            self._key,
            domain=domain,
            session_id=session,
            round_=round_,
            message=context_message(secret.params, context),
        )
        return SignedPublicContext(
            poly_modulus_degree=secret.params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(secret.params.coeff_mod_bit_sizes),
            scale_bits=secret.params.scale_bits,
            context=context,
            key_id=kid,
            signature=sig,
            session_id=None if slot is None else slot[0],
            round=None if slot is None else slot[1],
        )

    def public_context_message(self) -> SignedPublicContext:
        """The long-lived key's public context, signed (no session or round)."""
        if self._ctx is None:
            raise ConfigError("this key holder has no long-lived key; use round_context")
        return self._signed_context(self._ctx, None)

    def round_context(self, session_id: bytes, round_: int) -> SignedPublicContext:
        """Fresh CKKS keys for one round (made on the first call, the same message after), their
        public context signed for (session, round). Refused for a round already decrypted."""
        slot = (session_id, round_)
        if slot in self._decrypted:
            raise StateError(f"round {round_} of this session was already decrypted")
        if slot not in self._round_keys:
            secret = self._keygen(self.params)
            self._round_keys[slot] = (secret, self._signed_context(secret, slot))
        return self._round_keys[slot][1]

    def decrypt(self, req: DecryptionRequest, random: RandomSource) -> DecryptionResult:
        """Check everything, then decrypt, flood, round and sign. Raises and releases nothing on
        failure."""
        m = req.manifest
        slot = (m.session_id, m.round)
        if slot in self._decrypted:
            raise DecryptionRefusedError(
                f"round {m.round} of this session was already decrypted; one release per round"
            )
        if self.server_key is None:
            raise ConfigError("the key holder does not know the server's identity key")
        round_key = self._round_keys.get(slot)
        secret = round_key[0] if round_key is not None else self._ctx
        if secret is None:
            raise DecryptionRefusedError(f"no key was made for round {m.round} of this session")
        key_digest = hashlib.sha256(round_key[1].context).digest() if round_key else (
            secret.public_digest()
        )
        _check_entries(m, self.federation, self.server_key, self.min_clients, key_digest)
        if ciphertext_digest(req.aggregate) != m.aggregate_digest:
            raise DecryptionRefusedError("the aggregate does not match the manifest's digest")
        mdig = manifest_digest(m)
        eligible = eligible_verifiers(m, self.verifiers, self.verifier_skips)
        signers: set[int] = set()
        for cs in req.cosignatures:
            if cs.verifier_id in signers:
                raise DecryptionRefusedError(f"verifier {cs.verifier_id} co-signed twice")
            if cs.verifier_id not in eligible:
                raise DecryptionRefusedError(
                    f"client {cs.verifier_id} is not among the verifiers drawn from the closed "
                    "commitment set"
                )
            if (cs.session_id, cs.round) != slot or cs.manifest_digest != mdig:
                raise DecryptionRefusedError(
                    f"the co-signature of verifier {cs.verifier_id} is for another manifest"
                )
            verify_cosignature(self.federation, cs, mdig)
            signers.add(cs.verifier_id)
        if len(signers) < self.verifiers:
            raise DecryptionRefusedError(
                f"{len(signers)} verifier co-signatures; {self.verifiers} are required"
            )
        chunks = secret.params.num_chunks(m.num_values)
        used = 0 if round_key is not None else self.queries_used  # a round key decrypts once
        if used + chunks > self.max_queries:
            raise DecryptionRefusedError(
                f"decrypting {chunks} more ciphertexts would exceed this key's budget of "
                f"{self.max_queries} (noise flooding assumes at most that many); rotate the key",
                hint="create a new key holder key with `securefl keys ckks` and restart the "
                "session",
            )
        # Commit the refusal state before decrypting, so no failure path can decrypt twice; a
        # round key is forgotten as it is used.
        self._decrypted.add(slot)
        if round_key is None:
            self.queries_used += chunks
        else:
            del self._round_keys[slot]
        total = decrypt_chunks(secret, req.aggregate, m.num_values)
        # Noise flooding (Li-Micciancio, EUROCRYPT 2021), sized as OpenFHE documents:
        # sigma = sqrt(12 tau) 2^(s/2) t, moved to the slot domain (securefl.he.flooding).
        flood = flooding_std(
            len(m.entries),
            self.params.poly_modulus_degree,
            self.params.scale,
            max_queries=self.max_queries,
            statistical_security=self.statistical_security,
        )
        grid = release_grid(flood)
        released = np.round((total + gaussian(total.size, flood, random)) / grid) * grid
        values = released.astype("<f8").tobytes()
        sig = sign_bound(
            self._key,
            domain=DOMAIN_RELEASE,
            session_id=m.session_id,
            round_=m.round,
            message=release_message(mdig, m.num_values, values),
        )
        return DecryptionResult(
            session_id=m.session_id,
            round=m.round,
            manifest_digest=mdig,
            num_values=m.num_values,
            values=values,
            flood_std=flood,
            grid=grid,
            signature=sig,
        )


class ClientRoundState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A client's state for one (session, round), for a process that must stop between the commit
    and the reveal (a Flower ClientApp runs each message in a fresh process). Local only: it stays
    on the client's node. ``chunks`` is None once revealed."""

    session_id: bytes
    round: int
    num_values: int
    digest: bytes
    commitment: bytes
    chunks: list[bytes] | None = None
    revealed_under: bytes | None = None


# --- client
# ----------------------------------------------------------------------------------------------
class CKKSClient:
    """One institution: noises, checks overflow, encrypts and commits; reveals once the set closes.

    ``server_key`` is the aggregation server's enrolled identity key (it signs the closed
    commitment set). One commitment and at most one reveal per (session, round).
    """

    def __init__(
        self,
        client_id: int,
        signing_key: SigningKey,
        context: PublicContext,
        server_key: VerifyKey,
    ) -> None:
        self.client_id = client_id
        self._key = signing_key
        self.context = context
        self.server_key = server_key
        #: (session, round) -> (ciphertext chunks, ct digest, commitment, d) not yet revealed
        self._pending: dict[tuple[bytes, int], tuple[list[bytes], bytes, bytes, int]] = {}
        #: (session, round) -> digest of the commitment set this client revealed under
        self.revealed_under: dict[tuple[bytes, int], bytes] = {}
        #: (session, round) -> (ct digest, commitment, d) of a revealed ciphertext
        self._revealed: dict[tuple[bytes, int], tuple[bytes, bytes, int]] = {}

    def commit(
        self,
        *,
        session_id: bytes,
        round_: int,
        values: NDArray[np.float64],
        clip_norm: float,
        num_participants: int,
        noise_std: float,
        random: RandomSource,
        weight: float | None = None,
    ) -> Commitment:
        """Encrypt w_i clip(delta_i) (+ N(0, noise_std^2) per coordinate), keep the ciphertext and
        return a signed commitment to it.

        ``values`` must already be clipped to L2 norm ``clip_norm`` and weighted; ``noise_std`` is
        this client's DP share z*C/sqrt(min_survivors) (0 for none). ``weight`` (FedAvg rounds):
        the client's weight w_i = n_i / max_j n_j in (0, 1], encrypted beside the update in one
        extra last slot without noise, so the decrypted sum carries sum_i w_i over exactly the
        contributions in it and the weighted mean is sum[:-1] / sum[-1] (spec.md "Weight slot").
        Raises OverflowRiskError when num_participants * B * scale could wrap the modulus,
        B = max(clip_norm + noise tail bound, 1).
        """
        slot = (session_id, round_)
        if slot in self._pending or slot in self.revealed_under:
            raise StateError("this client already committed in this round")
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
            raise LocalProtocolError("values must be a non-empty finite 1-D vector")
        if weight is not None and not 0 < weight <= 1:
            raise LocalProtocolError("the FedAvg weight must be in (0, 1] (n_i / max_j n_j)")
        bound = noise_bound(clip_norm, noise_std, x.size)
        check_no_overflow(
            self.context,
            num_participants,
            max(bound, 1.0) if weight is not None else bound,
            error_margin=coefficient_error_bound(
                num_participants, self.context.params.poly_modulus_degree
            ),
        )
        if float(np.linalg.norm(x)) > clip_norm * (1 + 1e-9):
            raise OverflowRiskError(
                f"the input's L2 norm exceeds the clip norm {clip_norm}; the overflow bound "
                "assumes clipped inputs",
                hint="clip (and weight) the update before encrypting",
            )
        if noise_std > 0:
            x = x + gaussian(x.size, noise_std, random)
        if float(np.max(np.abs(x))) > bound:  # probability <= 2^-40 for honest noise
            raise OverflowRiskError("a noised coordinate exceeds the overflow bound; not encrypted")
        if weight is not None:
            x = np.append(x, float(weight))
        chunks = encrypt_chunks(self.context, x)
        digest = ciphertext_digest(chunks)
        commitment = commitment_value(
            session_id, round_, self.client_id, x.size, digest, self.context.digest
        )
        self._pending[slot] = (chunks, digest, commitment, x.size)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_COMMITMENT,
            session_id=session_id,
            round_=round_,
            message=commitment_message(self.client_id, x.size, commitment),
        )
        return Commitment(
            session_id=session_id,
            round=round_,
            client_id=self.client_id,
            num_values=x.size,
            commitment=commitment,
            signature=sig,
        )

    def export_round(self, session_id: bytes, round_: int) -> ClientRoundState:
        """This client's state for one round (after commit, or after reveal)."""
        slot = (session_id, round_)
        pending = self._pending.get(slot)
        if pending is not None:
            chunks, digest, commitment, num_values = pending
            return ClientRoundState(session_id=session_id, round=round_, num_values=num_values,
                                    digest=digest, commitment=commitment, chunks=list(chunks))
        revealed = self._revealed.get(slot)
        if revealed is None:
            raise StateError("this client has no commitment in that round")
        digest, commitment, num_values = revealed
        return ClientRoundState(session_id=session_id, round=round_, num_values=num_values,
                                digest=digest, commitment=commitment,
                                revealed_under=self.revealed_under[slot])

    def restore_round(self, state: ClientRoundState) -> None:
        """Load a state written by :meth:`export_round` (the client's own node storage)."""
        slot = (state.session_id, state.round)
        if slot in self._pending or slot in self.revealed_under:
            raise StateError("this client already holds state for that round")
        chunks, under = state.chunks, state.revealed_under
        if chunks is not None and under is None:
            self._pending[slot] = (list(chunks), state.digest, state.commitment, state.num_values)
        elif chunks is None and under is not None:
            self._revealed[slot] = (state.digest, state.commitment, state.num_values)
            self.revealed_under[slot] = under
        else:
            raise StateError("a round state is either pending (chunks) or revealed, not both")

    def reveal(self, cs: CommitmentSet) -> Contribution:
        """Check the server-signed closed commitment set (this client's own commitment is in it,
        unchanged) and reveal the committed ciphertext, signed over its digest and the set's
        digest. Reveals at most once: a second set for the same round is refused."""
        slot = (cs.session_id, cs.round)
        if slot in self.revealed_under:
            raise RemoteProtocolError("already revealed under a commitment set for this round")
        pending = self._pending.get(slot)
        if pending is None:
            raise RemoteProtocolError("no commitment of this client for that session and round")
        chunks, digest, commitment, num_values = pending
        if cs.num_values != num_values:
            raise RemoteProtocolError("the commitment set is for another number of values")
        if cs.key_digest != self.context.digest:
            raise RemoteProtocolError("the commitment set is under another CKKS key")
        mine = [e for e in cs.entries if e.client_id == self.client_id]
        if len(mine) != 1 or mine[0].commitment != commitment:
            raise RemoteProtocolError("the commitment set does not carry this client's commitment")
        set_digest = _verify_set_signature(cs, self.server_key)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_CONTRIBUTION,
            session_id=cs.session_id,
            round_=cs.round,
            message=contribution_message(self.client_id, cs.num_values, digest, set_digest),
        )
        del self._pending[slot]
        self.revealed_under[slot] = set_digest
        self._revealed[slot] = (digest, commitment, num_values)
        return Contribution(
            session_id=cs.session_id,
            round=cs.round,
            client_id=self.client_id,
            num_values=cs.num_values,
            chunks=chunks,
            commitment_set_digest=set_digest,
            signature=sig,
        )


# --- verifier
# --------------------------------------------------------------------------------------------
class CKKSVerifier:
    """A client that recomputes the aggregate from the published contributions and co-signs it.

    It co-signs only if it is among the first ``verifiers + verifier_skips`` contributors ranked by
    the closed commitment set's hash, and (when it contributed) only the commitment set it revealed
    under.
    """

    def __init__(
        self,
        client_id: int,
        signing_key: SigningKey,
        context: PublicContext,
        federation: Federation,
        server_key: VerifyKey,
        *,
        min_clients: int,
        verifiers: int = 2,
        verifier_skips: int = DEFAULT_VERIFIER_SKIPS,
    ) -> None:
        self.client_id = client_id
        self._key = signing_key
        self.context = context
        self.federation = dict(federation)
        self.server_key = server_key
        self.min_clients = min_clients
        self.verifiers = verifiers
        self.verifier_skips = verifier_skips

    def verify(
        self,
        req: VerifyRequest,
        *,
        session_id: bytes,
        round_: int,
        revealed_under: bytes | None = None,
    ) -> CoSignature:
        """Check and co-sign. ``revealed_under``: the digest of the commitment set this client
        revealed its own contribution under (``CKKSClient.revealed_under``), if it contributed."""
        m = req.manifest
        if (m.session_id, m.round) != (session_id, round_):
            raise RemoteProtocolError("the manifest is for another session or round")
        set_digest = _check_entries(
            m, self.federation, self.server_key, self.min_clients, self.context.digest
        )
        if revealed_under is not None and revealed_under != set_digest:
            raise RemoteProtocolError(
                "the manifest's commitment set differs from the one this client was shown"
            )
        if self.client_id not in eligible_verifiers(m, self.verifiers, self.verifier_skips):
            raise RemoteProtocolError(
                "this client is not among the verifiers drawn from the closed commitment set"
            )
        if len(req.contributions) != len(m.entries):
            raise RemoteProtocolError("the request must carry one chunk list per manifest entry")

        digests = ciphertext_digests(req.contributions)
        for entry, digest in zip(m.entries, digests, strict=True):
            if digest != entry.digest:
                raise IntegrityError(
                    f"client {entry.client_id}'s ciphertext does not match its digest"
                )
        total = sum_chunks(self.context, req.contributions, m.num_values)
        if ciphertext_digest(total) != m.aggregate_digest:
            raise IntegrityError("the recomputed sum differs from the manifest's aggregate digest")
        mdig = manifest_digest(m)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_COSIGN,
            session_id=m.session_id,
            round_=m.round,
            message=cosign_message(self.client_id, mdig),
        )
        return CoSignature(
            session_id=m.session_id,
            round=m.round,
            verifier_id=self.client_id,
            manifest_digest=mdig,
            signature=sig,
        )


# --- server
# ----------------------------------------------------------------------------------------------
class CKKSServer:
    """Collects commitments, closes and signs the commitment set, collects the reveals, sums them,
    gathers co-signatures, asks the key holder to decrypt."""

    def __init__(
        self,
        context: PublicContext,
        federation: Federation,
        signing_key: SigningKey,
        *,
        session_id: bytes,
        round_: int,
        num_values: int,
        participants: tuple[int, ...],
        min_clients: int,
        verifiers: int = 2,
    ) -> None:
        if verifiers < 1 or min_clients < 1:
            raise ConfigError("verifiers and min_clients must be >= 1")
        self.context = context
        self.federation = dict(federation)
        self._key = signing_key
        self.session_id = session_id
        self.round = round_
        self.num_values = num_values
        self.participants = frozenset(participants)
        self.min_clients = min_clients
        self.verifiers = verifiers
        self._commitments: dict[int, Commitment] = {}
        self._commitment_set: CommitmentSet | None = None
        self._set_digest: bytes | None = None
        self._contributions: dict[int, Contribution] = {}
        self._digests: dict[int, bytes] = {}
        #: running homomorphic sum (addition is exact and commutative: arrival order is irrelevant)
        self._acc: list[Any] | None = None
        self._manifest: Manifest | None = None
        self._aggregate: list[bytes] | None = None
        self._cosignatures: dict[int, CoSignature] = {}

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    def receive_commitment(self, c: Commitment) -> None:
        if self._commitment_set is not None:
            raise StateError("commitments are closed for this round")
        if (c.session_id, c.round) != (self.session_id, self.round):
            raise RemoteProtocolError("commitment for another session or round")
        if c.client_id not in self.participants:
            raise RemoteProtocolError(f"client {c.client_id} is not a participant of this round")
        if c.client_id in self._commitments:
            raise RemoteProtocolError(f"client {c.client_id} already committed")
        if c.num_values != self.num_values:
            raise RemoteProtocolError("commitment has the wrong number of values")
        key = self.federation.get(c.client_id)
        if key is None:
            raise SignatureError(f"client {c.client_id} is not enrolled")
        verify_bound(
            key,
            c.signature,
            domain=DOMAIN_COMMITMENT,
            session_id=c.session_id,
            round_=c.round,
            message=commitment_message(c.client_id, c.num_values, c.commitment),
        )
        self._commitments[c.client_id] = c

    def close_commitments(self) -> CommitmentSet:
        """Close the set of commitments (no later commitment is accepted) and sign it; send the
        result to every committed client. Idempotent."""
        if self._commitment_set is not None:
            return self._commitment_set
        if len(self._commitments) < self.min_clients:
            raise AggregationAbortedError(
                f"only {len(self._commitments)} commitments; at least {self.min_clients} needed"
            )
        entries = [
            CommitmentEntry(
                client_id=i,
                commitment=self._commitments[i].commitment,
                signature=self._commitments[i].signature,
            )
            for i in sorted(self._commitments)
        ]
        unsigned = CommitmentSet(
            session_id=self.session_id,
            round=self.round,
            num_values=self.num_values,
            key_digest=self.context.digest,
            entries=entries,
            signature=bytes(64),
        )
        digest = commitment_set_digest(unsigned)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_COMMITMENT_SET,
            session_id=self.session_id,
            round_=self.round,
            message=digest,
        )
        self._commitment_set = msgspec.structs.replace(unsigned, signature=sig)
        self._set_digest = digest
        return self._commitment_set

    def receive_contribution(self, c: Contribution) -> None:
        """Accept a reveal: it must open the client's commitment in the closed set and bind that
        set's digest."""
        if self._commitment_set is None or self._set_digest is None:
            raise StateError("close the commitment set before accepting ciphertexts")
        if self._manifest is not None:
            raise StateError("contributions are closed for this round")
        if (c.session_id, c.round) != (self.session_id, self.round):
            raise RemoteProtocolError("contribution for another session or round")
        commitment = self._commitments.get(c.client_id)
        if commitment is None:
            raise RemoteProtocolError(
                f"client {c.client_id} has no commitment in the closed set; its ciphertext is "
                "refused"
            )
        if c.client_id in self._contributions:
            raise RemoteProtocolError(f"client {c.client_id} already contributed")
        if c.num_values != self.num_values:
            raise RemoteProtocolError("contribution has the wrong number of values")
        if c.commitment_set_digest != self._set_digest:
            raise RemoteProtocolError(f"client {c.client_id} revealed under another commitment set")
        digest = ciphertext_digest(c.chunks)
        opened = commitment_value(
            c.session_id, c.round, c.client_id, c.num_values, digest, self.context.digest
        )
        if opened != commitment.commitment:
            raise IntegrityError(f"client {c.client_id}'s ciphertext does not match its commitment")
        key = self.federation.get(c.client_id)
        if key is None:  # unreachable: commitments are only accepted from enrolled clients
            raise SignatureError(f"client {c.client_id} is not enrolled")
        verify_bound(
            key,
            c.signature,
            domain=DOMAIN_CONTRIBUTION,
            session_id=c.session_id,
            round_=c.round,
            message=contribution_message(c.client_id, c.num_values, digest, self._set_digest),
        )
        if digest in self._digests.values():
            raise RemoteProtocolError(f"client {c.client_id} sent another client's ciphertext")
        vecs = load_chunks(self.context, c.chunks, self.num_values)  # sizes, parameters, parse
        if self._acc is None:
            self._acc = vecs
        else:
            for a, b in zip(self._acc, vecs, strict=True):
                a.add_(b)
        self._contributions[c.client_id] = c
        self._digests[c.client_id] = digest

    def close(self) -> Manifest:
        """Sum the received contributions and publish the manifest."""
        if self._manifest is not None:
            return self._manifest
        if self._commitment_set is None:
            raise StateError("no commitment set was closed")
        if len(self._contributions) < self.min_clients:
            raise AggregationAbortedError(
                f"only {len(self._contributions)} contributions; at least {self.min_clients} needed"
            )
        ids = sorted(self._contributions)
        if self._acc is None:  # unreachable: min_clients >= 1
            raise StateError("no contribution was summed")
        self._aggregate = [bytes(v.serialize()) for v in self._acc]
        self._acc = None
        entries = [
            ContributionEntry(
                client_id=i,
                digest=self._digests[i],
                signature=self._contributions[i].signature,
            )
            for i in ids
        ]
        self._manifest = Manifest(
            session_id=self.session_id,
            round=self.round,
            num_values=self.num_values,
            entries=entries,
            aggregate_digest=ciphertext_digest(self._aggregate),
            commitment_set=self._commitment_set,
        )
        return self._manifest

    def verifier_ranking(self) -> tuple[int, ...]:
        """Contributors in the order they are asked to verify (public: derived from the closed
        commitment set); the key holder accepts co-signers among the first
        ``verifiers + verifier_skips``."""
        m = self.close()
        return verifier_ranking(
            commitment_set_digest(m.commitment_set), (e.client_id for e in m.entries)
        )

    def verify_request(self) -> VerifyRequest:
        m = self.close()
        return VerifyRequest(
            manifest=m, contributions=[self._contributions[e.client_id].chunks for e in m.entries]
        )

    def receive_cosignature(self, cs: CoSignature) -> None:
        if self._manifest is None:
            raise StateError("no manifest published yet")
        mdig = manifest_digest(self._manifest)
        if (cs.session_id, cs.round, cs.manifest_digest) != (self.session_id, self.round, mdig):
            raise RemoteProtocolError(f"verifier {cs.verifier_id} co-signed another manifest")
        verify_cosignature(self.federation, cs, mdig)
        self._cosignatures[cs.verifier_id] = cs

    def decryption_request(self) -> DecryptionRequest:
        if self._manifest is None or self._aggregate is None:
            raise StateError("close the round before asking for decryption")
        if len(self._cosignatures) < self.verifiers:
            raise AggregationAbortedError(
                f"{len(self._cosignatures)} co-signatures; {self.verifiers} required"
            )
        return DecryptionRequest(
            manifest=self._manifest,
            aggregate=self._aggregate,
            cosignatures=[self._cosignatures[i] for i in sorted(self._cosignatures)],
        )

    def receive_result(self, res: DecryptionResult, key_holder: VerifyKey) -> NDArray[np.float64]:
        """Verify the key holder's signed release and return the released sum (float64)."""
        if self._manifest is None:
            raise StateError("no manifest published yet")
        mdig = manifest_digest(self._manifest)
        if (res.session_id, res.round, res.manifest_digest, res.num_values) != (
            self.session_id,
            self.round,
            mdig,
            self.num_values,
        ):
            raise RemoteProtocolError("the release is for another manifest")
        if len(res.values) != 8 * self.num_values:
            raise RemoteProtocolError("the release has the wrong length")
        verify_bound(
            key_holder,
            res.signature,
            domain=DOMAIN_RELEASE,
            session_id=self.session_id,
            round_=self.round,
            message=release_message(mdig, res.num_values, res.values),
        )
        out = np.frombuffer(res.values, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(out)) or not math.isfinite(res.flood_std):
            raise RemoteProtocolError("the release contains non-finite values")
        return out
