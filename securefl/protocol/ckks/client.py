"""A bank in the CKKS protocol: noise, overflow check, encrypt and commit; reveal once the server
closes the commitment set (protocols/ckks/spec.md, steps 2 and 4).

Per (session, round) the client is in one state of :class:`ClientState`, holding that state's own
data (:class:`Committed`: the unrevealed ciphertext; :class:`Revealed`: what it revealed under
which set; :class:`Failed`: nothing, the round is over for it); :data:`CLIENT_TRANSITIONS` is its
whole behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.secret import RedactedStruct
from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound
from securefl.dp.noise import gaussian
from securefl.errors import LocalProtocolError, OverflowRiskError, RemoteProtocolError, StateError
from securefl.he.context import PublicContext
from securefl.he.flooding import coefficient_error_bound
from securefl.he.vectors import check_no_overflow, ciphertext_digest, encrypt_chunks
from securefl.protocol.ckks.canonical import (
    commitment_message,
    commitment_value,
    contribution_message,
)
from securefl.protocol.ckks.checks import check_one_plan, verify_set_signature
from securefl.protocol.ckks.config import DOMAIN_COMMITMENT, DOMAIN_CONTRIBUTION
from securefl.protocol.ckks.encoding import noise_bound
from securefl.protocol.ckks.machine import Transition, transition
from securefl.protocol.ckks_messages import Commitment, CommitmentSet, Contribution

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = [
    "CLIENT_TRANSITIONS",
    "CKKSClient",
    "ClientRoundState",
    "ClientState",
    "CommitRequest",
    "Committed",
    "Failed",
    "GiveUp",
    "Revealed",
]

Slot = tuple[bytes, int]


class ClientState(Enum):
    """A client's state for one (session, round)."""

    NEW = "not committed in this round"
    COMMITTED = "committed, its ciphertext not yet revealed"
    REVEALED = "already revealed its ciphertext in this round"
    FAILED = "gave up this round when its deadline passed; accepts nothing more of it"


@dataclass(frozen=True)
class CommitRequest:
    """Local event: encrypt this (clipped, weighted) input and commit to it."""

    session_id: bytes
    round: int
    values: Any  # NDArray[np.float64]
    clip_norm: float
    num_participants: int
    noise_std: float
    random: Any  # RandomSource
    weight: float | None
    plan_digest: bytes


@dataclass(frozen=True)
class GiveUp:
    """Local event (the transport's deadline, securefl.transport.policy.Deadlines.bank_wait_s): the
    server's next message did not come in time; the round is over for this client."""

    session_id: bytes
    round: int


@dataclass(frozen=True)
class Committed:
    """COMMITTED: the ciphertext (kept until the set closes), its digest, the commitment, d and
    the round-plan digest it was committed under."""

    chunks: list[bytes]
    digest: bytes
    commitment: bytes
    num_values: int
    plan_digest: bytes


@dataclass(frozen=True)
class Revealed:
    """REVEALED: what was revealed, and the digest of the commitment set it was revealed under."""

    digest: bytes
    commitment: bytes
    num_values: int
    revealed_under: bytes
    plan_digest: bytes


@dataclass(frozen=True)
class Failed:
    """FAILED: nothing is kept; an unrevealed ciphertext is dropped, so it can never be revealed."""


_STATE_OF: dict[type, ClientState] = {
    Committed: ClientState.COMMITTED,
    Revealed: ClientState.REVEALED,
    Failed: ClientState.FAILED,
}


class ClientRoundState(RedactedStruct, msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A client's state for one (session, round), for a process that must stop between the commit
    and the reveal (a Flower ClientApp runs each message in a fresh process). Local only: it stays
    on the client's node. ``chunks`` (the unrevealed ciphertext) is None once revealed, and
    redacted in every representation."""

    __redacted__ = frozenset({"chunks"})

    session_id: bytes
    round: int
    num_values: int
    digest: bytes
    commitment: bytes
    #: the round-plan digest the commitment was signed with (the reveal checks the set against it)
    plan_digest: bytes
    chunks: list[bytes] | None = None
    revealed_under: bytes | None = None


class CKKSClient:
    """One institution: noises, checks overflow, encrypts and commits; reveals once the set closes.

    ``server_key`` is the aggregation server's enrolled identity key (it signs the closed
    commitment set). One commitment and at most one reveal per (session, round)
    (:data:`CLIENT_TRANSITIONS`).
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
        #: (session, round) -> the data of its state (absent: NEW)
        self._rounds: dict[Slot, Committed | Revealed | Failed] = {}

    def state(self, session_id: bytes, round_: int) -> ClientState:
        data = self._rounds.get((session_id, round_))
        return ClientState.NEW if data is None else _STATE_OF[type(data)]

    @property
    def revealed_under(self) -> dict[Slot, bytes]:
        """(session, round) -> digest of the commitment set this client revealed under."""
        return {s: d.revealed_under for s, d in self._rounds.items() if isinstance(d, Revealed)}

    def _step(self, slot: Slot, msg: object) -> Any:
        tr = transition(CLIENT_TRANSITIONS, self.state(*slot), msg, f"client {self.client_id}",
                        local=(CommitRequest, GiveUp), remote_error=RemoteProtocolError)
        out = tr.handler(self, msg)  # raises, and changes nothing, when it refuses
        if self.state(*slot) is not tr.next_state:
            raise StateError(f"client {self.client_id}: the handler left the wrong state")
        return out

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
        plan_digest: bytes,
        weight: float | None = None,
    ) -> Commitment:
        """Encrypt w_i clip(delta_i) (+ N(0, noise_std^2) per coordinate), keep the ciphertext and
        return a signed commitment to it.

        ``values`` must already be clipped to L2 norm ``clip_norm`` and weighted; ``noise_std`` is
        this client's DP share z*C/sqrt(min_survivors) (0 for none). ``weight`` (FedAvg rounds):
        the client's weight w_i = n_i / max_j n_j in (0, 1], encrypted beside the update in one
        extra last slot without noise, so the decrypted sum carries sum_i w_i over exactly the
        contributions in it and the weighted mean is sum[:-1] / sum[-1] (spec.md "Weight slot").
        ``plan_digest``: the round plan this input and noise share were sized by
        (:func:`securefl.protocol.ckks.canonical.round_plan_digest`), signed into the commitment;
        the reveal refuses a set with a commitment under another plan (S8-1).
        Raises OverflowRiskError when num_participants * B * scale could wrap the modulus,
        B = max(clip_norm + noise tail bound, 1).
        """
        req = CommitRequest(session_id, round_, values, clip_norm, num_participants, noise_std,
                            random, weight, plan_digest)
        out: Commitment = self._step((session_id, round_), req)
        return out

    def _commit(self, req: CommitRequest) -> Commitment:
        if len(req.plan_digest) != 32:
            raise LocalProtocolError("plan_digest must be 32 bytes")
        x = np.asarray(req.values, dtype=np.float64)
        if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
            raise LocalProtocolError("values must be a non-empty finite 1-D vector")
        weight = req.weight
        if weight is not None and not 0 < weight <= 1:
            raise LocalProtocolError("the FedAvg weight must be in (0, 1] (n_i / max_j n_j)")
        bound = noise_bound(req.clip_norm, req.noise_std, x.size)
        check_no_overflow(
            self.context,
            req.num_participants,
            max(bound, 1.0) if weight is not None else bound,
            error_margin=coefficient_error_bound(
                req.num_participants, self.context.params.poly_modulus_degree
            ),
        )
        if float(np.linalg.norm(x)) > req.clip_norm * (1 + 1e-9):
            raise OverflowRiskError(
                f"the input's L2 norm exceeds the clip norm {req.clip_norm}; the overflow bound "
                "assumes clipped inputs",
                hint="clip (and weight) the update before encrypting",
            )
        if req.noise_std > 0:
            x = x + gaussian(x.size, req.noise_std, req.random)
        if float(np.max(np.abs(x))) > bound:  # probability <= 2^-40 for honest noise
            raise OverflowRiskError("a noised coordinate exceeds the overflow bound; not encrypted")
        if weight is not None:
            x = np.append(x, float(weight))
        chunks = encrypt_chunks(self.context, x)
        digest = ciphertext_digest(chunks)
        commitment = commitment_value(
            req.session_id, req.round, self.client_id, x.size, digest, self.context.digest
        )
        self._rounds[(req.session_id, req.round)] = Committed(chunks, digest, commitment, x.size,
                                                              req.plan_digest)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_COMMITMENT,
            session_id=req.session_id,
            round_=req.round,
            message=commitment_message(self.client_id, x.size, commitment, req.plan_digest),
        )
        return Commitment(
            session_id=req.session_id,
            round=req.round,
            client_id=self.client_id,
            num_values=x.size,
            commitment=commitment,
            plan_digest=req.plan_digest,
            signature=sig,
        )

    def give_up(self, session_id: bytes, round_: int) -> None:
        """The bank's own deadline passed before the server's next message of (session, round)
        arrived: the round is over for this client (FAILED). It accepts nothing more of the round,
        and a committed ciphertext is dropped unrevealed, so it never leaves this client, whatever
        the server sends later. Idempotent."""
        self._step((session_id, round_), GiveUp(session_id, round_))

    def _give_up(self, ev: GiveUp) -> None:
        self._rounds[(ev.session_id, ev.round)] = Failed()

    def export_round(self, session_id: bytes, round_: int) -> ClientRoundState:
        """This client's state for one round (after commit, or after reveal)."""
        data = self._rounds.get((session_id, round_))
        if data is None:
            raise StateError("this client has no commitment in that round")
        if isinstance(data, Failed):
            raise StateError("this client gave up that round; nothing of it is kept")
        if isinstance(data, Committed):
            return ClientRoundState(session_id=session_id, round=round_,
                                    num_values=data.num_values, digest=data.digest,
                                    commitment=data.commitment,
                                    plan_digest=data.plan_digest, chunks=list(data.chunks))
        return ClientRoundState(session_id=session_id, round=round_, num_values=data.num_values,
                                digest=data.digest, commitment=data.commitment,
                                plan_digest=data.plan_digest,
                                revealed_under=data.revealed_under)

    def restore_round(self, state: ClientRoundState) -> None:
        """Load a state written by :meth:`export_round` (the client's own node storage)."""
        slot = (state.session_id, state.round)
        if slot in self._rounds:
            raise StateError("this client already holds state for that round")
        chunks, under = state.chunks, state.revealed_under
        if chunks is not None and under is None:
            self._rounds[slot] = Committed(list(chunks), state.digest, state.commitment,
                                           state.num_values, state.plan_digest)
        elif chunks is None and under is not None:
            self._rounds[slot] = Revealed(state.digest, state.commitment, state.num_values, under,
                                          state.plan_digest)
        else:
            raise StateError("a round state is either pending (chunks) or revealed, not both")

    def reveal(self, cs: CommitmentSet) -> Contribution:
        """Check the server-signed closed commitment set (this client's own commitment is in it,
        unchanged, under this client's key; every commitment under this client's round plan,
        PlanMismatchError otherwise) and reveal the committed ciphertext, signed over its
        digest and the set's digest. Reveals at most once: a second set for the same round is
        refused."""
        out: Contribution = self._step((cs.session_id, cs.round), cs)
        return out

    def _reveal(self, cs: CommitmentSet) -> Contribution:
        slot = (cs.session_id, cs.round)
        pending = self._rounds[slot]
        if not isinstance(pending, Committed):  # unreachable: the table routes COMMITTED here
            raise StateError("no unrevealed commitment for that round")
        if cs.num_values != pending.num_values:
            raise RemoteProtocolError("the commitment set is for another number of values")
        if cs.key_digest != self.context.digest:
            raise RemoteProtocolError("the commitment set is under another CKKS key")
        mine = [e for e in cs.entries if e.client_id == self.client_id]
        if len(mine) != 1 or mine[0].commitment != pending.commitment:
            raise RemoteProtocolError("the commitment set does not carry this client's commitment")
        set_digest = verify_set_signature(cs, self.server_key)
        # every commitment in the set was signed under this client's own round plan (S8-1): the
        # others' inputs and noise shares were sized as this client's
        check_one_plan(cs, pending.plan_digest)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_CONTRIBUTION,
            session_id=cs.session_id,
            round_=cs.round,
            message=contribution_message(self.client_id, cs.num_values, pending.digest,
                                         set_digest),
        )
        self._rounds[slot] = Revealed(pending.digest, pending.commitment, pending.num_values,
                                      set_digest, pending.plan_digest)
        return Contribution(
            session_id=cs.session_id,
            round=cs.round,
            client_id=self.client_id,
            num_values=cs.num_values,
            chunks=pending.chunks,
            commitment_set_digest=set_digest,
            signature=sig,
        )


#: A client's behaviour for one (session, round). Not in the table, hence refused: a second
#: commitment (StateError), a commitment set before committing or after revealing
#: (RemoteProtocolError: a client reveals at most once, under one set), and anything once it gave
#: up (FAILED: a commitment, StateError; a commitment set, RemoteProtocolError).
CLIENT_TRANSITIONS: dict[tuple[ClientState, type], Transition[ClientState]] = {
    (ClientState.NEW, CommitRequest): Transition(CKKSClient._commit, ClientState.COMMITTED),
    (ClientState.COMMITTED, CommitmentSet): Transition(CKKSClient._reveal, ClientState.REVEALED),
    (ClientState.NEW, GiveUp): Transition(CKKSClient._give_up, ClientState.FAILED),
    (ClientState.COMMITTED, GiveUp): Transition(CKKSClient._give_up, ClientState.FAILED),
    (ClientState.REVEALED, GiveUp): Transition(CKKSClient._give_up, ClientState.FAILED),
    (ClientState.FAILED, GiveUp): Transition(CKKSClient._give_up, ClientState.FAILED),
}
