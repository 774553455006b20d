"""The CKKS aggregation server: collects commitments, closes and signs the commitment set, collects
the reveals, sums them, publishes the manifest, gathers co-signatures and asks the key holder to
decrypt (protocols/ckks/spec.md, steps 3, 5, 6 and 8).

The server is in one state of :class:`ServerState` at a time, holding that state's own data
(:class:`Committing`, :class:`Revealing`, :class:`Published`); :data:`SERVER_TRANSITIONS` is its
whole behaviour. A refused message (not in the table, or failing a check) changes nothing: that
bank is simply not in the sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound, verify_bound
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    IntegrityError,
    RemoteProtocolError,
    SignatureError,
    StateError,
)
from securefl.he.context import PublicContext
from securefl.he.vectors import ciphertext_digest, load_chunks
from securefl.protocol.ckks.canonical import (
    commitment_set_digest,
    commitment_value,
    contribution_message,
    manifest_digest,
    release_message,
    verifier_ranking,
)
from securefl.protocol.ckks.checks import verify_commitment, verify_cosignature
from securefl.protocol.ckks.config import (
    DOMAIN_COMMITMENT_SET,
    DOMAIN_CONTRIBUTION,
    DOMAIN_RELEASE,
    IdentityKeys,
)
from securefl.protocol.ckks.machine import Transition, transition
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
    VerifyRequest,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "SERVER_TRANSITIONS",
    "CKKSServer",
    "CloseCommitments",
    "CloseReveals",
    "Committing",
    "Published",
    "Revealing",
    "ServerState",
]


class ServerState(Enum):
    """The server's state in its one round."""

    COMMITTING = "collecting commitments (no ciphertext accepted yet)"
    REVEALING = "commitments are closed, collecting reveals"
    PUBLISHED = "the manifest is published (contributions closed), collecting co-signatures"


@dataclass(frozen=True)
class CloseCommitments:
    """Local event (the transport's deadline): close and sign the commitment set."""


@dataclass(frozen=True)
class CloseReveals:
    """Local event (the transport's deadline): sum the reveals and publish the manifest."""


@dataclass(frozen=True)
class Committing:
    """COMMITTING: the commitments received so far, by client id."""

    commitments: dict[int, Commitment] = field(default_factory=dict)


@dataclass
class Revealing:
    """REVEALING: the closed, signed set and the reveals accepted so far, summed as they come."""

    commitments: dict[int, Commitment]
    commitment_set: CommitmentSet
    set_digest: bytes
    contributions: dict[int, Contribution] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)
    #: running homomorphic sum (addition is exact and commutative: arrival order is irrelevant)
    acc: list[Any] | None = None


@dataclass(frozen=True)
class Published:
    """PUBLISHED: the manifest, the serialized aggregate, the contributions (for verifiers) and the
    co-signatures received so far."""

    commitment_set: CommitmentSet
    manifest: Manifest
    aggregate: list[bytes]
    contributions: dict[int, Contribution]
    cosignatures: dict[int, CoSignature] = field(default_factory=dict)


_STATE_OF: dict[type, ServerState] = {
    Committing: ServerState.COMMITTING,
    Revealing: ServerState.REVEALING,
    Published: ServerState.PUBLISHED,
}


class CKKSServer:
    """Collects commitments, closes and signs the commitment set, collects the reveals, sums them,
    gathers co-signatures, asks the key holder to decrypt (:data:`SERVER_TRANSITIONS`)."""

    def __init__(
        self,
        context: PublicContext,
        federation: IdentityKeys,
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
        self._data: Committing | Revealing | Published = Committing()

    @property
    def state(self) -> ServerState:
        return _STATE_OF[type(self._data)]

    @property
    def verify_key(self) -> VerifyKey:
        return self._key.verify_key

    def _step(self, msg: object, *args: Any) -> Any:
        tr = transition(SERVER_TRANSITIONS, self.state, msg, "the server",
                        local=(CloseCommitments, CloseReveals), remote_error=StateError)
        out = tr.handler(self, msg, *args)  # raises, and changes nothing, when it refuses
        if self.state is not tr.next_state:
            raise StateError("the server's handler left the wrong state")
        return out

    def _published(self) -> Published:
        if not isinstance(self._data, Published):
            raise StateError("close the round before asking for decryption")
        return self._data

    # --- COMMITTING -----------------------------------------------------------------------------
    def receive_commitment(self, c: Commitment) -> None:
        self._step(c)

    def _receive_commitment(self, c: Commitment) -> None:
        data = self._data
        if not isinstance(data, Committing):  # unreachable: the table routes COMMITTING here
            raise StateError("commitments are closed for this round")
        if (c.session_id, c.round) != (self.session_id, self.round):
            raise RemoteProtocolError("commitment for another session or round")
        if c.client_id not in self.participants:
            raise RemoteProtocolError(f"client {c.client_id} is not a participant of this round")
        if c.client_id in data.commitments:
            raise RemoteProtocolError(f"client {c.client_id} already committed")
        if c.num_values != self.num_values:
            raise RemoteProtocolError("commitment has the wrong number of values")
        verify_commitment(self.federation, c.client_id, c.session_id, c.round, c.num_values,
                          c.commitment, c.plan_digest, c.signature)
        data.commitments[c.client_id] = c

    def close_commitments(self) -> CommitmentSet:
        """Close the set of commitments (no later commitment is accepted) and sign it; send the
        result to every committed client. Idempotent."""
        out: CommitmentSet = self._step(CloseCommitments())
        return out

    def _close_commitments(self, _: CloseCommitments) -> CommitmentSet:
        data = self._data
        if not isinstance(data, Committing):  # unreachable: the table routes COMMITTING here
            raise StateError("the commitment set is already closed")
        if len(data.commitments) < self.min_clients:
            raise AggregationAbortedError(
                f"only {len(data.commitments)} commitments; at least {self.min_clients} needed"
            )
        entries = [
            CommitmentEntry(
                client_id=i,
                commitment=data.commitments[i].commitment,
                plan_digest=data.commitments[i].plan_digest,
                signature=data.commitments[i].signature,
            )
            for i in sorted(data.commitments)
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
        cset = msgspec.structs.replace(unsigned, signature=sig)
        self._data = Revealing(dict(data.commitments), cset, digest)
        return cset

    def _same_commitment_set(self, _: CloseCommitments) -> CommitmentSet:
        data = self._data
        if isinstance(data, Committing):  # unreachable: the table routes later states here
            raise StateError("no commitment set was closed")
        return data.commitment_set

    # --- REVEALING ------------------------------------------------------------------------------
    def receive_contribution(self, c: Contribution) -> None:
        """Accept a reveal: it must open the client's commitment in the closed set and bind that
        set's digest."""
        self._step(c)

    def _receive_contribution(self, c: Contribution) -> None:
        data = self._data
        if not isinstance(data, Revealing):  # unreachable: the table routes REVEALING here
            raise StateError("close the commitment set before accepting ciphertexts")
        if (c.session_id, c.round) != (self.session_id, self.round):
            raise RemoteProtocolError("contribution for another session or round")
        commitment = data.commitments.get(c.client_id)
        if commitment is None:
            raise RemoteProtocolError(
                f"client {c.client_id} has no commitment in the closed set; its ciphertext is "
                "refused"
            )
        if c.client_id in data.contributions:
            raise RemoteProtocolError(f"client {c.client_id} already contributed")
        if c.num_values != self.num_values:
            raise RemoteProtocolError("contribution has the wrong number of values")
        if c.commitment_set_digest != data.set_digest:
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
            message=contribution_message(c.client_id, c.num_values, digest, data.set_digest),
        )
        if digest in data.digests.values():
            raise RemoteProtocolError(f"client {c.client_id} sent another client's ciphertext")
        vecs = load_chunks(self.context, c.chunks, self.num_values)  # sizes, parameters, parse
        if data.acc is None:
            data.acc = vecs
        else:
            for a, b in zip(data.acc, vecs, strict=True):
                a.add_(b)
        data.contributions[c.client_id] = c
        data.digests[c.client_id] = digest

    def close(self) -> Manifest:
        """Sum the received contributions and publish the manifest. Idempotent."""
        out: Manifest = self._step(CloseReveals())
        return out

    def _publish(self, _: CloseReveals) -> Manifest:
        data = self._data
        if not isinstance(data, Revealing):  # unreachable: the table routes REVEALING here
            raise StateError("no commitment set was closed")
        if len(data.contributions) < self.min_clients:
            raise AggregationAbortedError(
                f"only {len(data.contributions)} contributions; at least {self.min_clients} "
                "needed"
            )
        if data.acc is None:  # unreachable: min_clients >= 1
            raise StateError("no contribution was summed")
        aggregate = [bytes(v.serialize()) for v in data.acc]
        entries = [
            ContributionEntry(
                client_id=i,
                digest=data.digests[i],
                signature=data.contributions[i].signature,
            )
            for i in sorted(data.contributions)
        ]
        manifest = Manifest(
            session_id=self.session_id,
            round=self.round,
            num_values=self.num_values,
            entries=entries,
            aggregate_digest=ciphertext_digest(aggregate),
            commitment_set=data.commitment_set,
        )
        self._data = Published(data.commitment_set, manifest, aggregate,
                               dict(data.contributions))
        return manifest

    def _same_manifest(self, _: CloseReveals) -> Manifest:
        return self._published().manifest

    # --- PUBLISHED ------------------------------------------------------------------------------
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
        contributions = self._published().contributions
        return VerifyRequest(
            manifest=m, contributions=[contributions[e.client_id].chunks for e in m.entries]
        )

    def receive_cosignature(self, cs: CoSignature) -> None:
        self._step(cs)

    def _receive_cosignature(self, cs: CoSignature) -> None:
        data = self._published()
        mdig = manifest_digest(data.manifest)
        if (cs.session_id, cs.round, cs.manifest_digest) != (self.session_id, self.round, mdig):
            raise RemoteProtocolError(f"verifier {cs.verifier_id} co-signed another manifest")
        verify_cosignature(self.federation, cs, mdig)
        data.cosignatures[cs.verifier_id] = cs

    def decryption_request(self) -> DecryptionRequest:
        data = self._published()
        if len(data.cosignatures) < self.verifiers:
            raise AggregationAbortedError(
                f"{len(data.cosignatures)} co-signatures; {self.verifiers} required"
            )
        return DecryptionRequest(
            manifest=data.manifest,
            aggregate=data.aggregate,
            cosignatures=[data.cosignatures[i] for i in sorted(data.cosignatures)],
        )

    def receive_result(self, res: DecryptionResult, key_holder: VerifyKey) -> NDArray[np.float64]:
        """Verify the key holder's signed release and return the released sum (float64)."""
        out: NDArray[np.float64] = self._step(res, key_holder)
        return out

    def _receive_result(self, res: DecryptionResult, key_holder: VerifyKey
                        ) -> NDArray[np.float64]:
        mdig = manifest_digest(self._published().manifest)
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


_S = ServerState
#: The server's behaviour in its round. Not in the table, hence refused with StateError (the stage
#: is over or has not begun): a commitment once the set is closed, a ciphertext before it is
#: closed or after the manifest is published, a co-signature or release before the manifest.
SERVER_TRANSITIONS: dict[tuple[ServerState, type], Transition[ServerState]] = {
    (_S.COMMITTING, Commitment): Transition(CKKSServer._receive_commitment, _S.COMMITTING),
    (_S.COMMITTING, CloseCommitments): Transition(CKKSServer._close_commitments, _S.REVEALING),
    (_S.REVEALING, CloseCommitments): Transition(CKKSServer._same_commitment_set, _S.REVEALING),
    (_S.REVEALING, Contribution): Transition(CKKSServer._receive_contribution, _S.REVEALING),
    (_S.REVEALING, CloseReveals): Transition(CKKSServer._publish, _S.PUBLISHED),
    (_S.PUBLISHED, CloseCommitments): Transition(CKKSServer._same_commitment_set, _S.PUBLISHED),
    (_S.PUBLISHED, CloseReveals): Transition(CKKSServer._same_manifest, _S.PUBLISHED),
    (_S.PUBLISHED, CoSignature): Transition(CKKSServer._receive_cosignature, _S.PUBLISHED),
    (_S.PUBLISHED, DecryptionResult): Transition(CKKSServer._receive_result, _S.PUBLISHED),
}
