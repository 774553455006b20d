"""One client's side of a SecAgg(+) round: :class:`SecAggClient`, its states and its transition
table (Bonawitz et al. CCS 2017, figure 4; Bell et al. CCS 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.crypto import aead, shamir
from securefl.crypto.kdf import X25519KeyPair, agree, derive_pair_key
from securefl.crypto.prg import accumulate_mask
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, sign_bound, verify_bound
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    RemoteProtocolError,
    StateError,
)
from securefl.protocol import quantize
from securefl.protocol.graph import neighbours_of
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RevealedShare,
    RosterEntry,
    SealedShare,
    ShareKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from securefl.protocol.secagg.canonical import (
    _check_header,
    _parse_share_plaintext,
    _sorted_unique,
    advertise_message,
    consistency_message,
    pair_sign,
    plan_digest,
    roster_digest,
    self_mask_commitment,
    share_plaintext,
)
from securefl.protocol.secagg.config import (
    ADVERTISE_DOMAIN,
    CONSISTENCY_DOMAIN,
    MASK_PURPOSE,
    SEED_SIZE,
    SHARE_PURPOSE,
    IdentityRoster,
    SecAggConfig,
)
from securefl.protocol.secagg.machine import Deadline, Start, Transition, _dispatch

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = [
    "CLIENT_TRANSITIONS", "ClientState", "DoubleRevealError", "SecAggClient", "ViewMismatchError"]


class ViewMismatchError(RemoteProtocolError):
    """The server's survivor set is inconsistent with what this client saw (it names a neighbour
    whose shares never reached this client: Bonawitz et al., figure 4, round 3)."""

    code = "SFL306"
    default_hint = "the server is malicious or inconsistent; this client refused to sign or unmask"


class DoubleRevealError(RemoteProtocolError):
    """The server asked for both the self-mask share and the mask-key share of one client
    (Bonawitz et al., section 4: revealing both would unmask that client's input)."""

    code = "SFL305"
    default_hint = "the server is malicious or inconsistent; this client refused to unmask"


# --- client ---------------------------------------------------------------------------------------
class ClientState(Enum):
    IDLE = "idle"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    CHECKED = "checked"
    DONE = "done"
    FAILED = "failed"


CLIENT_TRANSITIONS: dict[tuple[ClientState, type], Transition[ClientState]] = {
    (ClientState.IDLE, Start): Transition("_on_start", ClientState.ADVERTISED),
    (ClientState.ADVERTISED, KeyRoster): Transition("_on_roster", ClientState.SHARED),
    (ClientState.SHARED, ForwardedShares): Transition("_on_shares", ClientState.MASKED),
    (ClientState.MASKED, SurvivorList): Transition("_on_survivors", ClientState.CHECKED),
    (ClientState.CHECKED, UnmaskRequest): Transition("_on_unmask", ClientState.DONE),
}


@dataclass(repr=False)
class _Held:
    """Shares this client holds for one peer (x = own id + 1). Secret: the repr is redacted."""

    key_share: int
    mask_share: int

    def __repr__(self) -> str:
        return "_Held(<redacted shares>)"


class SecAggClient:
    """One client's side of a SecAgg(+) round. ``field_input`` is the encoded input in
    Z_{2^bits}."""

    failed_state = ClientState.FAILED

    def __init__(
        self,
        config: SecAggConfig,
        federation: IdentityRoster,
        client_id: int,
        identity: SigningKey,
        field_input: NDArray[np.uint32],
        random: RandomSource,
        input_binding: bytes = bytes(32),
    ) -> None:
        if client_id not in config.participants:
            raise ConfigError(f"client {client_id} is not a participant of this round")
        if federation.session_id != config.session_id:
            raise ConfigError("the federation manifest belongs to another session")
        x = np.asarray(field_input)
        if x.dtype != np.uint32 or x.shape != (config.dim,):
            raise ConfigError(f"field_input must be a uint32 vector of length {config.dim}")
        if np.any(x >> np.uint32(config.bits)) if config.bits < 32 else False:
            raise ConfigError(f"field_input has values outside Z_2^{config.bits}")
        if len(input_binding) != 32:
            raise ConfigError("input_binding must be 32 bytes")
        #: signed with the survivor set: the digest of what this client's input was computed from
        #: (a deployment's global model, which arrives after the keys are advertised), so a server
        #: that tailored it to one client is caught before anything is unmasked
        self.input_binding = input_binding
        self.config = config
        self.federation = federation
        self.id = client_id
        self._identity = identity
        self._input = x
        self._random = random
        self.state = ClientState.IDLE
        self._plan = plan_digest(config)
        self._cipher: X25519KeyPair | None = None
        self._mask: X25519KeyPair | None = None
        self._self_seed: Secret | None = None
        self._roster: dict[int, RosterEntry] = {}
        self._digest = b""
        self._neighbours: frozenset[int] = frozenset()
        self._held: dict[int, _Held] = {}
        self._masked_with: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()
        #: peer -> "self_mask" | "mask_key": what this client has revealed for it
        self.revealed: dict[int, str] = {}

    def receive(self, msg: Any) -> list[Any]:
        """Feed one event or server message; returns the messages to send to the server."""
        return _dispatch(CLIENT_TRANSITIONS, self, msg, (Start, Deadline), f"client {self.id}")

    def give_up(self) -> None:
        """The bank's own deadline passed before the server's next message arrived (or the
        server sent it more than the round allows): the round is over for this client. Like a
        refused message it moves to FAILED, which accepts nothing more, so no share leaves this
        client after it gave up, whatever the server sends later. A finished round stays DONE."""
        if self.state is not ClientState.DONE:
            self.state = self.failed_state

    # stage 0 ------------------------------------------------------------------------------------
    def _on_start(self, _: Start) -> list[Any]:
        cfg = self.config
        self._cipher = X25519KeyPair.generate(self._random)
        self._mask = X25519KeyPair.generate(self._random)
        sig = sign_bound(
            self._identity,
            domain=ADVERTISE_DOMAIN,
            session_id=cfg.session_id,
            round_=cfg.round,
            message=advertise_message(self.id, self._cipher.public, self._mask.public, self._plan),
        )
        return [
            AdvertiseKeys(
                session_id=cfg.session_id,
                round=cfg.round,
                sender=self.id,
                cipher_pk=self._cipher.public,
                mask_pk=self._mask.public,
                signature=sig,
            )
        ]

    # stage 1 ------------------------------------------------------------------------------------
    def _on_roster(self, msg: KeyRoster) -> list[Any]:
        cfg = self.config
        _check_header(msg, cfg.session_id, cfg.round, "the server")
        ids = [e.sender for e in msg.entries]
        _sorted_unique(ids, "roster")
        if not set(ids) <= set(cfg.participants):
            raise RemoteProtocolError("roster names clients that are not participants")
        roster = {e.sender: e for e in msg.entries}
        mine = roster.get(self.id)
        if self._cipher is None or self._mask is None:
            raise StateError("keys missing")
        if mine is None or (mine.cipher_pk, mine.mask_pk) != (
            self._cipher.public,
            self._mask.public,
        ):
            raise RemoteProtocolError(
                f"the roster omits or substitutes client {self.id}'s own keys"
            )
        if len(ids) < cfg.threshold:
            raise AggregationAbortedError(
                f"only {len(ids)} clients advertised keys; threshold is {cfg.threshold}"
            )
        # Every entry, not only the neighbours': keys signed by enrolled identities over the same
        # plan this client holds (a per-victim roster or a tailored plan fails here).
        for j, e in roster.items():
            verify_bound(
                self.federation.verify_key(j),
                e.signature,
                domain=ADVERTISE_DOMAIN,
                session_id=cfg.session_id,
                round_=cfg.round,
                message=advertise_message(j, e.cipher_pk, e.mask_pk, self._plan),
            )
        self._digest = roster_digest(cfg.session_id, cfg.round, msg.entries)
        self._roster = roster
        # the graph is over the round's participants, from public randomness fixed before any key
        self._neighbours = self._graph_neighbours() & frozenset(ids)
        holders = sorted(self._neighbours | {self.id})
        t = cfg.neighbour_threshold
        if len(holders) < t:  # never lower the threshold: abort instead
            raise AggregationAbortedError(
                f"client {self.id} has {len(holders)} share holders among the clients that "
                f"advertised; the threshold t = {t} needs at least that many"
            )
        seed = self._random.random_bytes(SEED_SIZE)
        self._self_seed = Secret(seed, label="self-mask-seed")
        xs = [h + 1 for h in holders]
        key_shares = shamir.split(self._mask.private.expose(), t, xs, self._random)
        mask_shares = shamir.split(seed, t, xs, self._random)
        self._held[self.id] = _Held(key_shares[self.id + 1], mask_shares[self.id + 1])
        sealed = []
        for j in holders:
            if j == self.id:
                continue
            key = self._pair_key(j, SHARE_PURPOSE)
            ctx = aead.AeadContext(cfg.session_id, cfg.round, self.id, j, binding=self._digest)
            pt = share_plaintext(self.id, j, key_shares[j + 1], mask_shares[j + 1])
            sealed.append(
                SealedShare(peer=j, ciphertext=aead.seal(key, pt, aad=ctx, random=self._random))
            )
        commit = self_mask_commitment(cfg.session_id, cfg.round, self.id, seed)
        return [
            ShareKeys(
                session_id=cfg.session_id,
                round=cfg.round,
                sender=self.id,
                self_mask_commitment=commit,
                shares=sealed,
            )
        ]

    def _graph_neighbours(self) -> frozenset[int]:
        cfg = self.config
        return neighbours_of(self.id, cfg.participants, cfg.degree, cfg.graph_seed)

    def _pair_key(self, j: int, purpose: str) -> Secret:
        if self._cipher is None or self._mask is None:
            raise StateError("keys missing")
        if purpose == SHARE_PURPOSE:
            shared = agree(self._cipher.private, self._roster[j].cipher_pk)
        else:
            shared = agree(self._mask.private, self._roster[j].mask_pk)
        return derive_pair_key(shared, purpose=purpose, session_id=self.config.session_id,
                               round_=self.config.round, i=self.id, j=j)

    # stage 2 ------------------------------------------------------------------------------------
    def _on_shares(self, msg: ForwardedShares) -> list[Any]:
        cfg = self.config
        _check_header(msg, cfg.session_id, cfg.round, "the server")
        if self._self_seed is None:
            raise StateError("keys missing")
        senders = [s.peer for s in msg.shares]
        if len(set(senders)) != len(senders):
            raise RemoteProtocolError("forwarded shares contain duplicates")
        for s in msg.shares:
            j = s.peer
            if j not in self._neighbours:
                raise RemoteProtocolError(f"forwarded share from client {j}, not a neighbour")
            pt = aead.open_sealed(
                self._pair_key(j, SHARE_PURPOSE), s.ciphertext,
                aad=aead.AeadContext(cfg.session_id, cfg.round, j, self.id, binding=self._digest),
            )
            key_share, mask_share = _parse_share_plaintext(pt, j, self.id)
            self._held[j] = _Held(key_share, mask_share)
        self._masked_with = frozenset(senders)
        # Bonawitz et al. figure 4, round 2 ("if |U2| < t, abort"), per neighbourhood as in Bell et
        # al.: the peers whose shares this client holds, itself included, must reach t.
        t = cfg.neighbour_threshold
        if len(self._masked_with) + 1 < t:
            raise AggregationAbortedError(
                f"client {self.id} holds shares of {len(self._masked_with) + 1} clients (itself "
                f"included); the threshold t = {t} needs at least that many before it masks"
            )
        # y = x + PRG(b) + sum_{j in U2 cap N(i)} sign(i, j) PRG(s_ij)   (mod 2^bits)
        acc = self._input.copy()
        accumulate_mask(acc, self._self_seed, 1)
        for j in sorted(self._masked_with):
            accumulate_mask(acc, self._pair_key(j, MASK_PURPOSE), pair_sign(self.id, j))
        if cfg.bits < 32:
            acc &= np.uint32((1 << cfg.bits) - 1)
        return [
            MaskedInput(
                session_id=cfg.session_id,
                round=cfg.round,
                sender=self.id,
                bits=cfg.bits,
                dim=cfg.dim,
                data=quantize.pack(acc, cfg.bits),
            )
        ]

    # stage 3 ------------------------------------------------------------------------------------
    def _on_survivors(self, msg: SurvivorList) -> list[Any]:
        cfg = self.config
        _check_header(msg, cfg.session_id, cfg.round, "the server")
        _sorted_unique(msg.survivors, "survivor list")
        if self.id not in msg.survivors or not set(msg.survivors) <= set(self._roster):
            raise RemoteProtocolError("survivor list omits this client or names unknown clients")
        if len(msg.survivors) < cfg.threshold:
            raise AggregationAbortedError(
                f"only {len(msg.survivors)} survivors; threshold is {cfg.threshold}"
            )
        # View check (Bonawitz et al. figure 4, round 3: U3 within this client's U2): a neighbour
        # in the sum must be a peer this client masked with, else the server withheld shares to
        # leave this input masked by fewer peers than it claims survive.
        unseen = (set(msg.survivors) & self._neighbours) - self._masked_with
        if unseen:
            raise ViewMismatchError(
                f"the survivor list names neighbour(s) {sorted(unseen)[:5]} whose shares client "
                f"{self.id} never received"
            )
        self._survivors = tuple(msg.survivors)
        sig = sign_bound(
            self._identity,
            domain=CONSISTENCY_DOMAIN,
            session_id=cfg.session_id,
            round_=cfg.round,
            message=consistency_message(self._plan, self._digest, self._survivors,
                                        self.input_binding),
        )
        return [
            ConsistencySignature(
                session_id=cfg.session_id, round=cfg.round, sender=self.id, signature=sig
            )
        ]

    # stage 4 ------------------------------------------------------------------------------------
    def _on_unmask(self, msg: UnmaskRequest) -> list[Any]:
        cfg = self.config
        _check_header(msg, cfg.session_id, cfg.round, "the server")
        _sorted_unique(msg.alive, "alive list")
        _sorted_unique(msg.dropped, "dropped list")
        both = set(msg.alive) & set(msg.dropped)
        if both:
            raise DoubleRevealError(
                f"the server lists client(s) {sorted(both)[:5]} as both alive and dropped"
            )
        if tuple(msg.alive) != self._survivors:
            raise RemoteProtocolError(
                "the unmask request's alive set differs from the survivor set this client signed"
            )
        if self.id in msg.dropped or not set(msg.dropped) <= set(self._roster):
            raise RemoteProtocolError("dropped list names this client or unknown clients")
        signed = consistency_message(self._plan, self._digest, self._survivors,
                                     self.input_binding)
        signers: set[int] = set()
        for s in msg.signatures:
            if s.sender in signers or s.sender not in self._survivors:
                raise RemoteProtocolError(
                    "consistency signatures: duplicate or non-survivor signer"
                )
            verify_bound(
                self.federation.verify_key(s.sender),
                s.signature,
                domain=CONSISTENCY_DOMAIN,
                session_id=cfg.session_id,
                round_=cfg.round,
                message=signed,
            )
            signers.add(s.sender)
        if len(signers) < cfg.threshold:
            raise AggregationAbortedError(
                f"only {len(signers)} valid consistency signatures on "
                f"this survivor set; threshold is {cfg.threshold}"
            )
        # Every survivor must have signed this survivor set: its signature is its own view check
        # (every neighbour in U3 is a peer it masked with). Without it a server could leave out a
        # victim that refused, and unmask it against the one neighbour it let it mask with (found
        # by tests/test_secagg_adversary.py; a self-mask share is revealed only for a signer).
        unsigned = set(self._survivors) - signers
        if unsigned:
            raise AggregationAbortedError(
                f"survivor(s) {sorted(unsigned)[:5]} did not sign the survivor set; client "
                f"{self.id} reveals nothing"
            )
        # Reveal from this client's own view: a self-mask share only for a survivor, a mask-key
        # share only for a dropped peer it masked with (never both for one peer).
        alive = set(self._survivors)
        dropped = (set(msg.dropped) & self._masked_with) - alive
        self_mask_shares, key_shares = [], []
        for peer in sorted(self._held):
            kind = "self_mask" if peer in alive else "mask_key" if peer in dropped else None
            if kind is None:
                continue
            previous = self.revealed.get(peer)
            if previous is not None and previous != kind:
                raise DoubleRevealError(f"asked for both shares of client {peer}")
            if kind == "mask_key" and peer == self.id:
                raise DoubleRevealError("asked for this client's own mask key")
            self.revealed[peer] = kind
            held = self._held[peer]
            if kind == "self_mask":
                self_mask_shares.append(RevealedShare(peer, shamir.encode_share(held.mask_share)))
            else:
                key_shares.append(RevealedShare(peer, shamir.encode_share(held.key_share)))
        return [
            UnmaskShares(
                session_id=cfg.session_id,
                round=cfg.round,
                sender=self.id,
                self_mask_shares=self_mask_shares,
                mask_key_shares=key_shares,
            )
        ]
