"""The CKKS key holder: makes the keys, publishes the signed public context, and decrypts at most one
verified aggregate per (session, round), flooded before release (protocols/ckks/spec.md, steps 1,
9 and 10; "Keys").

Per (session, round) the key holder is in one of the states of :class:`KeyHolderState`; the data
of a state is its own type (:class:`RoundKey` while a round key waits for its aggregate,
:class:`Released` after the release), and :data:`KEY_HOLDER_TRANSITIONS` is the whole behaviour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound
from securefl.dp.noise import gaussian
from securefl.errors import ConfigError, PlanMismatchError, StateError
from securefl.he.context import SecretContext, generate_context
from securefl.he.flooding import (
    DEFAULT_MAX_QUERIES,
    DEFAULT_STATISTICAL_SECURITY,
    flooding_std,
    release_grid,
)
from securefl.he.params import CKKSParams
from securefl.he.vectors import ciphertext_digest, decrypt_chunks
from securefl.protocol.ckks.canonical import (
    context_message,
    eligible_verifiers,
    key_id_for,
    manifest_digest,
    release_message,
)
from securefl.protocol.ckks.checks import check_entries, context_binding, verify_cosignature
from securefl.protocol.ckks.config import (
    DEFAULT_VERIFIER_SKIPS,
    DOMAIN_RELEASE,
    DecryptionRefusedError,
    IdentityKeys,
)
from securefl.protocol.ckks.machine import Transition, transition
from securefl.protocol.ckks_messages import (
    DecryptionRequest,
    DecryptionResult,
    SignedPublicContext,
)

if TYPE_CHECKING:
    from securefl.crypto.random import RandomSource

__all__ = [
    "KEY_HOLDER_TRANSITIONS",
    "CKKSKeyHolder",
    "KeyHolderState",
    "Released",
    "RoundKey",
    "RoundKeyRequest",
]

Slot = tuple[bytes, int]


class KeyHolderState(Enum):
    """The key holder's state for one (session, round)."""

    NEW = "no key made for this round yet"
    KEYED = "a round key waits for this round's aggregate"
    RELEASED = "this round was already decrypted (one release per round)"


@dataclass(frozen=True)
class RoundKeyRequest:
    """Local event: make (or return) the round key of (session, round), bound to the signed
    plan of digest ``hello_digest`` when one is given (S7b-6)."""

    session_id: bytes
    round: int
    hello_digest: bytes | None = None


@dataclass(frozen=True)
class RoundKey:
    """KEYED: the round's secret key and its signed public context. Its repr is redacted."""

    secret: SecretContext
    signed: SignedPublicContext

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.signed.context).digest()

    def __repr__(self) -> str:
        return f"RoundKey(key_id={self.signed.key_id.hex()}, <redacted>)"


@dataclass(frozen=True)
class Released:
    """RELEASED: nothing is kept (a round key is deleted as it is used)."""


_STATE_OF: dict[type, KeyHolderState] = {
    RoundKey: KeyHolderState.KEYED,
    Released: KeyHolderState.RELEASED,
}


class CKKSKeyHolder:
    """Holds the secret key(s); decrypts at most one verified aggregate per (session, round).

    Two kinds of key. A **round key** (:meth:`round_context`): fresh CKKS keys for one (session,
    round), their public context signed for that round; the secret key decrypts that round's
    aggregate once and is then deleted, so a key that leaks (for instance to a bank that crafted a
    malformed ciphertext, spec.md "Trust assumption") opens that round only, and a ciphertext
    replayed from an earlier round decrypts to noise under this round's key (``securefl run`` and
    the deployment's key holder node, which keeps a waiting round key sealed in its node state:
    :meth:`export_round_key`, :meth:`restore_round_key`). The **long-lived key**
    (``secret_context``, published by :meth:`public_context_message`): one key for every round of
    every session (``securefl keys ckks``). A round with a round key is decrypted only with it.

    Behaviour per (session, round): :data:`KEY_HOLDER_TRANSITIONS`.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        secret_context: SecretContext | None,
        federation: IdentityKeys,
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
        #: (session, round) -> the data of its state (absent: NEW)
        self._slots: dict[Slot, RoundKey | Released] = {}
        self.federation = dict(federation)
        self.min_clients = min_clients
        self.verifiers = verifiers
        self.max_queries = max_queries
        self.statistical_security = statistical_security
        self.server_key = server_key
        self.verifier_skips = verifier_skips
        self.queries_used = 0

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    @property
    def has_long_lived_key(self) -> bool:
        """True when rounds without a round key use the long-lived key (`securefl keys ckks`)."""
        return self._ctx is not None

    @property
    def decrypted(self) -> frozenset[tuple[bytes, int]]:
        """The (session, round) slots this key holder has decrypted (each at most once)."""
        return frozenset(slot for slot, data in self._slots.items() if isinstance(data, Released))

    def state(self, session_id: bytes, round_: int) -> KeyHolderState:
        data = self._slots.get((session_id, round_))
        return KeyHolderState.NEW if data is None else _STATE_OF[type(data)]

    def _step(self, slot: Slot, msg: object, *args: Any) -> Any:
        tr = transition(KEY_HOLDER_TRANSITIONS, self.state(*slot), msg, "the key holder",
                        local=(RoundKeyRequest,), remote_error=DecryptionRefusedError)
        out = tr.handler(self, msg, *args)  # raises, and changes nothing, when it refuses
        if tr.next_state is KeyHolderState.RELEASED:
            self._slots[slot] = Released()
        return out

    def restore_usage(self, queries_used: int, decrypted: Iterable[tuple[bytes, int]]) -> None:
        """Load the key's usage from durable storage (a key holder that restarts must not forget
        which rounds it released nor how much of the key's query budget is spent)."""
        if queries_used < 0:
            raise StateError("queries_used must be >= 0")
        self.queries_used = max(self.queries_used, queries_used)
        for slot in decrypted:
            self._slots[slot] = Released()

    def _signed_context(
        self, secret: SecretContext, slot: tuple[bytes, int] | None,
        hello_digest: bytes | None = None,
    ) -> SignedPublicContext:
        context = secret.public_bytes()
        kid = key_id_for(context)
        domain, session, round_ = context_binding(kid, slot, hello_digest)
        sig = sign_bound(
            self._key,
            domain=domain,
            session_id=session,
            round_=round_,
            message=context_message(secret.params, context, hello_digest),
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
            hello_digest=hello_digest,
        )

    def public_context_message(self) -> SignedPublicContext:
        """The long-lived key's public context, signed (no session or round)."""
        if self._ctx is None:
            raise ConfigError("this key holder has no long-lived key; use round_context")
        return self._signed_context(self._ctx, None)

    def round_context(self, session_id: bytes, round_: int, hello_digest: bytes | None = None
                      ) -> SignedPublicContext:
        """Fresh CKKS keys for one round (made on the first call, the same message after), their
        public context signed for (session, round) and, given ``hello_digest`` (a deployment: the
        SHA-256 of the session's signed plan), bound to that plan. Refused for a round already
        decrypted, and for a round keyed for another plan (PlanMismatchError, S7b-6)."""
        out: SignedPublicContext = self._step((session_id, round_),
                                              RoundKeyRequest(session_id, round_, hello_digest))
        return out

    def export_round_key(self, session_id: bytes, round_: int) -> tuple[Secret, SignedPublicContext]:
        """The round key of (session, round) while it waits for its aggregate: the serialized
        secret context (a :class:`Secret`, for sealed node storage only) and its signed public
        context. The one greppable export of a round key (a node that stops between the key and
        the decryption keeps it sealed; ``securefl.deploy.ckks.KeyHolderNode``)."""
        key = self._slots.get((session_id, round_))
        if not isinstance(key, RoundKey):
            raise StateError("no round key waits for that round")
        return key.secret.export_secret(), key.signed

    def restore_round_key(self, session_id: bytes, round_: int, secret: SecretContext,
                          signed: SignedPublicContext) -> None:
        """Load a round key written by :meth:`export_round_key` (this key holder's own sealed
        storage). Refused for a round that has a key or a release already, and unless ``signed``
        is this key holder's context of exactly this secret key for (session, round)."""
        slot = (session_id, round_)
        if self.state(*slot) is not KeyHolderState.NEW:
            raise StateError("that round already has a key or a release")
        if (signed.session_id, signed.round) != slot or signed.context != secret.public_bytes():
            raise StateError("the stored public context is not this round key's")
        if secret.params != self.params:
            raise StateError("the stored round key has other CKKS parameters")
        self._slots[slot] = RoundKey(secret, signed)

    def _make_round_key(self, ev: RoundKeyRequest) -> SignedPublicContext:
        slot = (ev.session_id, ev.round)
        secret = self._keygen(self.params)
        key = RoundKey(secret, self._signed_context(secret, slot, ev.hello_digest))
        self._slots[slot] = key
        return key.signed

    def _same_round_key(self, ev: RoundKeyRequest) -> SignedPublicContext:
        key = self._slots[(ev.session_id, ev.round)]
        if not isinstance(key, RoundKey):  # unreachable: the table routes KEYED only here
            raise StateError("no round key for this round")
        if key.signed.hello_digest != ev.hello_digest:
            raise PlanMismatchError("this round's key was made for another signed plan")
        return key.signed

    def decrypt(self, req: DecryptionRequest, random: RandomSource) -> DecryptionResult:
        """Check everything, then decrypt, flood, round and sign. Raises and releases nothing on
        failure (DecryptionRefusedError for a round already released)."""
        out: DecryptionResult = self._step((req.manifest.session_id, req.manifest.round), req,
                                           random)
        return out

    def _decrypt_long_lived(self, req: DecryptionRequest, random: RandomSource
                            ) -> DecryptionResult:
        if self._ctx is None:
            raise DecryptionRefusedError(
                f"no key was made for round {req.manifest.round} of this session"
            )
        return self._release(req, random, self._ctx, self._ctx.public_digest(), round_key=False)

    def _decrypt_round_key(self, req: DecryptionRequest, random: RandomSource
                           ) -> DecryptionResult:
        key = self._slots[(req.manifest.session_id, req.manifest.round)]
        if not isinstance(key, RoundKey):  # unreachable: the table routes KEYED only here
            raise StateError("no round key for this round")
        return self._release(req, random, key.secret, key.digest, round_key=True)

    def _release(self, req: DecryptionRequest, random: RandomSource, secret: SecretContext,
                 key_digest: bytes, *, round_key: bool) -> DecryptionResult:
        m = req.manifest
        slot = (m.session_id, m.round)
        if self.server_key is None:
            raise ConfigError("the key holder does not know the server's identity key")
        check_entries(m, self.federation, self.server_key, self.min_clients, key_digest)
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
        used = 0 if round_key else self.queries_used  # a round key decrypts once
        if used + chunks > self.max_queries:
            raise DecryptionRefusedError(
                f"decrypting {chunks} more ciphertexts would exceed this key's budget of "
                f"{self.max_queries} (noise flooding assumes at most that many); rotate the key",
                hint="create a new key holder key with `securefl keys ckks` and restart the "
                "session",
            )
        # Commit the refusal state before decrypting, so no failure path can decrypt twice; a
        # round key is forgotten as it is used.
        self._slots[slot] = Released()
        if not round_key:
            self.queries_used += chunks
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


#: The key holder's behaviour for one (session, round). Not in the table, hence refused: a round
#: key or a decryption for a round already released (``round_context``: StateError;
#: ``decrypt``: DecryptionRefusedError).
KEY_HOLDER_TRANSITIONS: dict[tuple[KeyHolderState, type], Transition[KeyHolderState]] = {
    (KeyHolderState.NEW, RoundKeyRequest): Transition(
        CKKSKeyHolder._make_round_key, KeyHolderState.KEYED),
    (KeyHolderState.KEYED, RoundKeyRequest): Transition(
        CKKSKeyHolder._same_round_key, KeyHolderState.KEYED),
    (KeyHolderState.NEW, DecryptionRequest): Transition(
        CKKSKeyHolder._decrypt_long_lived, KeyHolderState.RELEASED),
    (KeyHolderState.KEYED, DecryptionRequest): Transition(
        CKKSKeyHolder._decrypt_round_key, KeyHolderState.RELEASED),
}
