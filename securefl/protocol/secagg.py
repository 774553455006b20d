"""SecAgg / SecAgg+ as sans-IO state machines (no I/O, no clock, no global RNG).

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
figure 4 (the actively secure variant with the consistency-check round) and Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (masking and sharing only among
the k neighbours of a random Harary graph; k = n - 1 is classic SecAgg).

Stages (client view):  advertise keys -> share keys -> masked input -> consistency check -> unmask.
Both machines are driven by ONE transition table each: ``(state, input type) -> (handler, next
state)``; any pair not in the table raises :class:`StateError` for a local event and
:class:`RemoteProtocolError` for a peer's message. The server advances a stage on a local
:class:`Deadline` event, which the transport (not the protocol) raises when its clock says so.

Clients are identified to the server by the transport (TLS / node authentication); the messages a
malicious server could forge or replay are signed (keys, survivor set) or AEAD-sealed (shares).
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from securefl.crypto import aead, shamir
from securefl.crypto.kdf import X25519KeyPair, agree, derive_pair_key, x25519_public_from_private
from securefl.crypto.prg import accumulate_mask
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound, verify_bound
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    CryptoError,
    IntegrityError,
    MessageError,
    RemoteProtocolError,
    SignatureError,
    StateError,
)
from securefl.protocol import quantize
from securefl.protocol.graph import default_degree, harary_neighbours
from securefl.protocol.messages import (
    MAX_CLIENTS,
    AdvertiseKeys,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RevealedShare,
    RosterEntry,
    SealedShare,
    ShareKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = [
    "ADVERTISE_DOMAIN",
    "CLIENT_TRANSITIONS",
    "CONSISTENCY_DOMAIN",
    "SERVER_TRANSITIONS",
    "ClientState",
    "Deadline",
    "DoubleRevealError",
    "Federation",
    "Outgoing",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerState",
    "Start",
    "advertise_message",
    "consistency_message",
    "roster_digest",
    "self_mask_commitment",
    "share_plaintext",
]

ADVERTISE_DOMAIN = "securefl/secagg/v1/advertise"
CONSISTENCY_DOMAIN = "securefl/secagg/v1/consistency"
ROSTER_DOMAIN = b"securefl/secagg/v1/roster\x00"
COMMIT_DOMAIN = b"securefl/secagg/v1/self-mask-commit\x00"
MASK_PURPOSE = "mask"
SHARE_PURPOSE = "share"
SEED_SIZE = 32

#: stage names, in order (the ``dropouts`` mapping uses them)
STAGES = ("advertise", "share", "masked", "consistency", "unmask")


class DoubleRevealError(RemoteProtocolError):
    """The server asked for both the self-mask share and the mask-key share of one client
    (Bonawitz et al., section 4: revealing both would unmask that client's input)."""

    code = "SFL305"
    default_hint = "the server is malicious or inconsistent; this client refused to unmask"


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Federation:
    """The PKI for one session: enrolled client id -> Ed25519 identity key (the federation
    manifest)."""

    session_id: bytes
    identities: Mapping[int, VerifyKey]

    def __post_init__(self) -> None:
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")

    def verify_key(self, client_id: int) -> VerifyKey:
        key = self.identities.get(client_id)
        if key is None:
            raise SignatureError(f"client {client_id} is not enrolled in the federation manifest")
        return key


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg round, agreed before it starts.

    ``threshold``: the minimum number of clients in U3 (whose inputs enter the sum) and of valid
    consistency signatures. ``neighbour_threshold`` (t): Shamir threshold among a client's k + 1
    share holders (its k neighbours and itself); it must be a strict majority of the holders so that
    two disjoint sets of t holders cannot exist (a server cannot collect b_i from one set and the
    mask key of i from another). ``degree`` (k): k = n - 1 is classic SecAgg.
    """

    session_id: bytes
    round: int
    participants: tuple[int, ...]
    threshold: int
    degree: int
    neighbour_threshold: int
    dim: int
    bits: int

    def __post_init__(self) -> None:
        n = len(self.participants)
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        if not 0 <= self.round < 2**63:
            raise ConfigError("round out of range")
        if n < 2 or n > MAX_CLIENTS or len(set(self.participants)) != n:
            raise ConfigError(f"SecAgg needs 2..{MAX_CLIENTS} distinct participants")
        if any(not 0 <= c < 2**32 - 1 for c in self.participants):
            raise ConfigError("client ids must be in [0, 2^32 - 1)")
        if not 1 <= self.threshold <= n:
            raise ConfigError(f"threshold must be in [1, {n}]")
        if not 1 <= self.degree <= n - 1 or (self.degree < n - 1 and self.degree % 2):
            raise ConfigError(
                f"degree k = {self.degree} must be even and < n - 1, or n - 1 = {n - 1}"
            )
        holders = self.degree + 1
        if not holders // 2 + 1 <= self.neighbour_threshold <= holders:
            raise ConfigError(
                f"neighbour threshold {self.neighbour_threshold} must be a strict majority of the "
                f"{holders} share holders: in [{holders // 2 + 1}, {holders}]"
            )
        if not 1 <= self.bits <= quantize.MAX_BITS or self.dim < 1:
            raise ConfigError("bits must be in [1, 32] and dim >= 1")

    @classmethod
    def build(
        cls,
        *,
        session_id: bytes,
        round: int,
        participants: Sequence[int],
        threshold: int,
        dim: int,
        bits: int,
        degree: int | None = None,
        neighbour_threshold: int | None = None,
    ) -> SecAggConfig:
        """Fill safe defaults: k = min(n - 1, 2 ceil(log2 n)); t = max(majority of k + 1 holders,
        ``threshold`` when classic)."""
        n = len(participants)
        k = default_degree(n) if degree is None else degree
        if neighbour_threshold is None:
            majority = (k + 1) // 2 + 1
            neighbour_threshold = max(majority, threshold) if k == n - 1 else majority
            neighbour_threshold = min(neighbour_threshold, k + 1)
        return cls(
            session_id=session_id,
            round=round,
            participants=tuple(sorted(participants)),
            threshold=threshold,
            degree=k,
            neighbour_threshold=neighbour_threshold,
            dim=dim,
            bits=bits,
        )


# --- local events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Local event: the client begins the round."""


@dataclass(frozen=True)
class Deadline:
    """Local event: the server closes the current stage (the transport's clock fired)."""


@dataclass(frozen=True)
class Outgoing:
    """A server message for one recipient."""

    recipient: int
    message: Any


# --- canonical byte strings (spec.md lists them) --------------------------------------------------
def advertise_message(sender: int, cipher_pk: bytes, mask_pk: bytes) -> bytes:
    """What a client signs in stage 0 (with sign_bound, domain ADVERTISE_DOMAIN)."""
    return struct.pack(">I", sender) + cipher_pk + mask_pk


def roster_digest(session_id: bytes, round_: int, entries: Sequence[RosterEntry]) -> bytes:
    """SHA-256 over the whole signed roster: the public seed of the SecAgg+ graph."""
    h = hashlib.sha256(ROSTER_DOMAIN + session_id + struct.pack(">QI", round_, len(entries)))
    for e in entries:
        h.update(struct.pack(">I", e.sender) + e.cipher_pk + e.mask_pk + e.signature)
    return h.digest()


def consistency_message(digest: bytes, survivors: Sequence[int]) -> bytes:
    """What a client signs in the consistency check: roster digest | u32 |U3| | u32 ids (sorted)."""
    return digest + struct.pack(f">I{len(survivors)}I", len(survivors), *survivors)


def self_mask_commitment(session_id: bytes, round_: int, sender: int, seed: bytes) -> bytes:
    return hashlib.sha256(
        COMMIT_DOMAIN + session_id + struct.pack(">QI", round_, sender) + seed
    ).digest()


def share_plaintext(sender: int, receiver: int, key_share: int, mask_share: int) -> bytes:
    """u32 sender | u32 receiver | 66-byte mask-key share | 66-byte self-mask share."""
    return (
        struct.pack(">II", sender, receiver)
        + shamir.encode_share(key_share)
        + shamir.encode_share(mask_share)
    )


def _parse_share_plaintext(data: bytes, sender: int, receiver: int) -> tuple[int, int]:
    if len(data) != 8 + 2 * shamir.SHARE_SIZE:
        raise IntegrityError("share payload has the wrong length")
    s, r = struct.unpack(">II", data[:8])
    if (s, r) != (sender, receiver):
        raise RemoteProtocolError(f"share payload names {s}->{r}, expected {sender}->{receiver}")
    return (
        shamir.decode_share(data[8 : 8 + shamir.SHARE_SIZE]),
        shamir.decode_share(data[8 + shamir.SHARE_SIZE :]),
    )


def pair_sign(me: int, peer: int) -> int:
    """Bonawitz et al. section 4: client u adds PRG(s_uv) for v > u and subtracts it for v < u."""
    return 1 if me < peer else -1


def _check_header(msg: Any, session_id: bytes, round_: int, who: str) -> None:
    if msg.session_id != session_id or msg.round != round_:
        raise RemoteProtocolError(
            f"{type(msg).__name__} from {who} belongs to another session or round (replay?)"
        )


def _sorted_unique(ids: Sequence[int], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise RemoteProtocolError(f"{what} must be sorted and without duplicates")


S = TypeVar("S", bound=Enum)
Handler = Callable[[Any, Any], list[Any]]


@dataclass(frozen=True)
class Transition(Generic[S]):
    handler: str
    next_state: S


def _dispatch(
    table: Mapping[tuple[Any, type], Transition[Any]],
    machine: Any,
    msg: Any,
    local_types: tuple[type, ...],
    who: str,
) -> list[Any]:
    """Look (state, type(msg)) up in ``table`` and run its handler. A pair not in the table, or an
    error in the handler, moves the machine to FAILED (like h11's ERROR state): no further input is
    accepted in this round. Local events out of order are the caller's fault (StateError); peer
    messages out of order are the peer's (RemoteProtocolError)."""
    key = (machine.state, type(msg))
    tr = table.get(key)
    if tr is None:
        text = f"{who} cannot accept {type(msg).__name__} in state {machine.state.value}"
        machine.state = machine.failed_state
        if isinstance(msg, local_types):
            raise StateError(text)
        raise RemoteProtocolError(text + " (out of order, replayed or unexpected)")
    try:
        out: list[Any] = getattr(machine, tr.handler)(msg)
    except BaseException:
        machine.state = machine.failed_state
        raise
    machine.state = tr.next_state
    return out


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
        federation: Federation,
        client_id: int,
        identity: SigningKey,
        field_input: NDArray[np.uint32],
        random: RandomSource,
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
        self.config = config
        self.federation = federation
        self.id = client_id
        self._identity = identity
        self._input = x
        self._random = random
        self.state = ClientState.IDLE
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
            message=advertise_message(self.id, self._cipher.public, self._mask.public),
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
        self._digest = roster_digest(cfg.session_id, cfg.round, msg.entries)
        graph = harary_neighbours(ids, cfg.degree, self._digest)
        self._neighbours = graph[self.id]
        for j in self._neighbours:  # active security: keys must be signed by enrolled identities
            e = roster[j]
            verify_bound(
                self.federation.verify_key(j),
                e.signature,
                domain=ADVERTISE_DOMAIN,
                session_id=cfg.session_id,
                round_=cfg.round,
                message=advertise_message(j, e.cipher_pk, e.mask_pk),
            )
        self._roster = roster
        holders = sorted(self._neighbours | {self.id})
        t = min(cfg.neighbour_threshold, len(holders))
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
            key = derive_pair_key(
                agree(self._cipher.private, roster[j].cipher_pk),
                purpose=SHARE_PURPOSE,
                session_id=cfg.session_id,
                round_=cfg.round,
                i=self.id,
                j=j,
            )
            ctx = aead.AeadContext(cfg.session_id, cfg.round, self.id, j)
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

    # stage 2 ------------------------------------------------------------------------------------
    def _on_shares(self, msg: ForwardedShares) -> list[Any]:
        cfg = self.config
        _check_header(msg, cfg.session_id, cfg.round, "the server")
        if self._cipher is None or self._mask is None or self._self_seed is None:
            raise StateError("keys missing")
        senders = [s.peer for s in msg.shares]
        if len(set(senders)) != len(senders):
            raise RemoteProtocolError("forwarded shares contain duplicates")
        for s in msg.shares:
            j = s.peer
            if j not in self._neighbours:
                raise RemoteProtocolError(f"forwarded share from client {j}, not a neighbour")
            key = derive_pair_key(
                agree(self._cipher.private, self._roster[j].cipher_pk),
                purpose=SHARE_PURPOSE,
                session_id=cfg.session_id,
                round_=cfg.round,
                i=self.id,
                j=j,
            )
            pt = aead.open_sealed(
                key, s.ciphertext, aad=aead.AeadContext(cfg.session_id, cfg.round, j, self.id)
            )
            key_share, mask_share = _parse_share_plaintext(pt, j, self.id)
            self._held[j] = _Held(key_share, mask_share)
        self._masked_with = frozenset(senders)
        # Bonawitz et al. figure 4, round 2 ("if |U2| < t, abort"), per neighbourhood as in Bell et
        # al.: with too few pairwise masks, y_i would be protected by PRG(b_i) alone, and b_i is
        # revealed in the unmask stage, so a server that withheld shares would learn x_i.
        needed = min(self.config.neighbour_threshold, len(self._neighbours) + 1) - 1
        if len(self._masked_with) < needed:
            raise AggregationAbortedError(
                f"client {self.id} received shares from {len(self._masked_with)} neighbours; at "
                f"least {needed} are needed to mask its input safely"
            )
        # y = x + PRG(b) + sum_{j in U2 cap N(i)} sign(i, j) PRG(s_ij)   (mod 2^bits)
        acc = self._input.copy()
        accumulate_mask(acc, self._self_seed, 1)
        for j in sorted(self._masked_with):
            seed = derive_pair_key(
                agree(self._mask.private, self._roster[j].mask_pk),
                purpose=MASK_PURPOSE,
                session_id=cfg.session_id,
                round_=cfg.round,
                i=self.id,
                j=j,
            )
            accumulate_mask(acc, seed, pair_sign(self.id, j))
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
        self._survivors = tuple(msg.survivors)
        sig = sign_bound(
            self._identity,
            domain=CONSISTENCY_DOMAIN,
            session_id=cfg.session_id,
            round_=cfg.round,
            message=consistency_message(self._digest, self._survivors),
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
        signed = consistency_message(self._digest, self._survivors)
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
        alive, dropped = set(msg.alive), set(msg.dropped)
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


# --- server ---------------------------------------------------------------------------------------
class ServerState(Enum):
    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_MASKED = "collect-masked"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK = "collect-unmask"
    DONE = "done"
    FAILED = "failed"


SERVER_TRANSITIONS: dict[tuple[ServerState, type], Transition[ServerState]] = {
    (ServerState.COLLECT_KEYS, AdvertiseKeys): Transition("_on_keys", ServerState.COLLECT_KEYS),
    (ServerState.COLLECT_KEYS, Deadline): Transition("_close_keys", ServerState.COLLECT_SHARES),
    (ServerState.COLLECT_SHARES, ShareKeys): Transition(
        "_on_share_keys", ServerState.COLLECT_SHARES
    ),
    (ServerState.COLLECT_SHARES, Deadline): Transition("_close_shares", ServerState.COLLECT_MASKED),
    (ServerState.COLLECT_MASKED, MaskedInput): Transition("_on_masked", ServerState.COLLECT_MASKED),
    (ServerState.COLLECT_MASKED, Deadline): Transition(
        "_close_masked", ServerState.COLLECT_SIGNATURES
    ),
    (ServerState.COLLECT_SIGNATURES, ConsistencySignature): Transition(
        "_on_signature", ServerState.COLLECT_SIGNATURES
    ),
    (ServerState.COLLECT_SIGNATURES, Deadline): Transition(
        "_close_signatures", ServerState.COLLECT_UNMASK
    ),
    (ServerState.COLLECT_UNMASK, UnmaskShares): Transition(
        "_on_unmask_shares", ServerState.COLLECT_UNMASK
    ),
    (ServerState.COLLECT_UNMASK, Deadline): Transition("_finish", ServerState.DONE),
}


@dataclass
class ServerResult:
    """The unmasked sum in Z_{2^bits} and who is in it."""

    field_sum: NDArray[np.uint32]
    survivors: tuple[int, ...]
    #: client id -> stage at which the server stopped hearing from it
    dropped_at: dict[int, str] = field(default_factory=dict)


class SecAggServer:
    """The aggregation server. Learns only sum_{i in U3} x_i mod 2^bits."""

    failed_state = ServerState.FAILED

    def __init__(self, config: SecAggConfig, federation: Federation) -> None:
        if federation.session_id != config.session_id:
            raise ConfigError("the federation manifest belongs to another session")
        self.config = config
        self.federation = federation
        self.state = ServerState.COLLECT_KEYS
        self._keys: dict[int, AdvertiseKeys] = {}
        self._entries: list[RosterEntry] = []
        self._graph: dict[int, frozenset[int]] = {}
        self._digest = b""
        self._share_msgs: dict[int, ShareKeys] = {}
        self._masked_with: dict[int, frozenset[int]] = {}
        self._acc = quantize.PackedSum(config.bits, config.dim)
        self._u3: set[int] = set()
        self._signatures: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] = ()
        self._unmask: dict[int, UnmaskShares] = {}
        self.result: ServerResult | None = None

    def receive(self, msg: Any) -> list[Outgoing]:
        """Feed one client message (or a local Deadline); returns addressed outgoing messages."""
        return _dispatch(SERVER_TRANSITIONS, self, msg, (Start, Deadline), "the server")

    def _check_client(
        self, msg: Any, allowed: set[int] | Mapping[int, Any], seen: Mapping[int, Any]
    ) -> None:
        _check_header(msg, self.config.session_id, self.config.round, f"client {msg.sender}")
        if msg.sender not in allowed:
            raise RemoteProtocolError(f"client {msg.sender} is not admitted to this stage")
        if msg.sender in seen:
            raise RemoteProtocolError(f"duplicate {type(msg).__name__} from client {msg.sender}")

    def _abort_below(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise AggregationAbortedError(
                f"only {count} clients {what}; threshold is {self.config.threshold}"
            )

    def _dropped_at(self) -> dict[int, str]:
        cfg, out = self.config, {}
        for c in cfg.participants:
            if c not in self._keys:
                out[c] = "advertise"
            elif c not in self._share_msgs:
                out[c] = "share"
            elif c not in self._u3:
                out[c] = "masked"
            elif c not in self._signatures:
                out[c] = "consistency"
            elif c not in self._unmask:
                out[c] = "unmask"
        return out

    # stage 0
    def _on_keys(self, msg: AdvertiseKeys) -> list[Outgoing]:
        cfg = self.config
        self._check_client(msg, set(cfg.participants), self._keys)
        verify_bound(
            self.federation.verify_key(msg.sender),
            msg.signature,
            domain=ADVERTISE_DOMAIN,
            session_id=cfg.session_id,
            round_=cfg.round,
            message=advertise_message(msg.sender, msg.cipher_pk, msg.mask_pk),
        )
        self._keys[msg.sender] = msg
        return []

    def _close_keys(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        self._abort_below(len(self._keys), "advertised keys")
        self._entries = [
            RosterEntry(m.sender, m.cipher_pk, m.mask_pk, m.signature)
            for _, m in sorted(self._keys.items())
        ]
        self._digest = roster_digest(cfg.session_id, cfg.round, self._entries)
        self._graph = harary_neighbours(sorted(self._keys), cfg.degree, self._digest)
        roster = KeyRoster(session_id=cfg.session_id, round=cfg.round, entries=self._entries)
        return [Outgoing(c, roster) for c in sorted(self._keys)]

    # stage 1
    def _on_share_keys(self, msg: ShareKeys) -> list[Outgoing]:
        self._check_client(msg, self._keys, self._share_msgs)
        peers = [s.peer for s in msg.shares]
        if sorted(peers) != sorted(self._graph[msg.sender]):
            raise RemoteProtocolError(f"client {msg.sender} must send one share per neighbour")
        self._share_msgs[msg.sender] = msg
        return []

    def _close_shares(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        self._abort_below(len(self._share_msgs), "shared their keys")
        inbox: dict[int, list[SealedShare]] = {c: [] for c in self._share_msgs}
        for sender, m in sorted(self._share_msgs.items()):
            for s in m.shares:
                if s.peer in inbox:
                    inbox[s.peer].append(SealedShare(peer=sender, ciphertext=s.ciphertext))
        out = []
        for c, shares in inbox.items():
            self._masked_with[c] = frozenset(s.peer for s in shares)
            out.append(
                Outgoing(
                    c, ForwardedShares(session_id=cfg.session_id, round=cfg.round, shares=shares)
                )
            )
        return out

    # stage 2
    def _on_masked(self, msg: MaskedInput) -> list[Outgoing]:
        cfg = self.config
        self._check_client(msg, self._share_msgs, {c: None for c in self._u3})
        if msg.bits != cfg.bits or msg.dim != cfg.dim:
            raise MessageError(f"masked input of client {msg.sender} has the wrong bits or dim")
        if len(msg.data) != quantize.bytes_per_coordinate(cfg.bits) * cfg.dim:
            raise MessageError(f"masked input of client {msg.sender} has the wrong length")
        self._acc.add(msg.data)
        self._u3.add(msg.sender)
        return []

    def _close_masked(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        self._abort_below(len(self._u3), "sent masked inputs")
        self._survivors = tuple(sorted(self._u3))
        msg = SurvivorList(
            session_id=cfg.session_id, round=cfg.round, survivors=list(self._survivors)
        )
        return [Outgoing(c, msg) for c in self._survivors]

    # stage 3
    def _on_signature(self, msg: ConsistencySignature) -> list[Outgoing]:
        cfg = self.config
        self._check_client(msg, self._u3, self._signatures)
        verify_bound(
            self.federation.verify_key(msg.sender),
            msg.signature,
            domain=CONSISTENCY_DOMAIN,
            session_id=cfg.session_id,
            round_=cfg.round,
            message=consistency_message(self._digest, self._survivors),
        )
        self._signatures[msg.sender] = msg.signature
        return []

    def _close_signatures(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        self._abort_below(len(self._signatures), "signed the survivor set")
        dropped = sorted(set(self._share_msgs) - self._u3)
        req = UnmaskRequest(
            session_id=cfg.session_id,
            round=cfg.round,
            alive=list(self._survivors),
            dropped=dropped,
            signatures=[SignedSurvivors(c, s) for c, s in sorted(self._signatures.items())],
        )
        return [Outgoing(c, req) for c in sorted(self._signatures)]

    # stage 4
    def _on_unmask_shares(self, msg: UnmaskShares) -> list[Outgoing]:
        self._check_client(msg, self._signatures, self._unmask)
        self._unmask[msg.sender] = msg
        return []

    def _collect(self, owner: int, kind: str) -> dict[int, int]:
        """Shares of ``owner``'s secret revealed by its holders (x = holder id + 1)."""
        out: dict[int, int] = {}
        holders = self._graph[owner] | {owner}
        for h in holders:
            m = self._unmask.get(h)
            if m is None:
                continue
            for r in m.self_mask_shares if kind == "self_mask" else m.mask_key_shares:
                if r.owner == owner:
                    out[h + 1] = shamir.decode_share(r.share)
        return out

    def _finish(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        acc = self._acc.value()
        dropped = set(self._share_msgs) - self._u3
        for i in self._survivors:  # remove self masks: b_i from >= t shares
            shares = self._collect(i, "self_mask")
            t = min(cfg.neighbour_threshold, len(self._graph[i]) + 1)
            if len(shares) < t:
                raise AggregationAbortedError(
                    f"only {len(shares)} of {t} needed self-mask shares of client {i} arrived"
                )
            b_seed = shamir.combine(shares, t, SEED_SIZE)
            commitment = self_mask_commitment(cfg.session_id, cfg.round, i, b_seed)
            if commitment != self._share_msgs[i].self_mask_commitment:
                raise IntegrityError(
                    f"reconstructed self mask of client {i} does not match its "
                    "commitment (a forged share)"
                )
            accumulate_mask(acc, Secret(b_seed, label="self-mask-seed"), -1)
        for j in sorted(dropped):  # remove pairwise masks of dropped clients
            partners = [i for i in self._survivors if j in self._masked_with.get(i, frozenset())]
            if not partners:
                continue
            shares = self._collect(j, "mask_key")
            t = min(cfg.neighbour_threshold, len(self._graph[j]) + 1)
            if len(shares) < t:
                raise AggregationAbortedError(
                    f"only {len(shares)} of {t} needed mask-key shares of dropped client {j} "
                    f"arrived"
                )
            sk = Secret(shamir.combine(shares, t, 32), label="x25519-private")
            try:
                pk = x25519_public_from_private(sk)
            except CryptoError as exc:
                raise IntegrityError(f"reconstructed mask key of client {j} is invalid") from exc
            if pk != self._keys[j].mask_pk:
                raise IntegrityError(
                    f"reconstructed mask key of client {j} does not match its "
                    "advertised public key (a forged share)"
                )
            for i in partners:
                seed = derive_pair_key(
                    agree(sk, self._keys[i].mask_pk),
                    purpose=MASK_PURPOSE,
                    session_id=cfg.session_id,
                    round_=cfg.round,
                    i=i,
                    j=j,
                )
                accumulate_mask(acc, seed, -pair_sign(i, j))
        if cfg.bits < 32:
            acc &= np.uint32((1 << cfg.bits) - 1)
        self.result = ServerResult(
            field_sum=acc, survivors=self._survivors, dropped_at=self._dropped_at()
        )
        return []
