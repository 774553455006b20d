"""The aggregation server's side of a SecAgg(+) round: :class:`SecAggServer`, its states, its
transition table and its result (:class:`ServerResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.crypto import shamir
from securefl.crypto.kdf import agree, derive_pair_key, x25519_public_from_private
from securefl.crypto.prg import accumulate_mask
from securefl.crypto.secret import Secret
from securefl.crypto.signing import verify_bound
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    CryptoError,
    IntegrityError,
    MessageError,
    RemoteProtocolError,
)
from securefl.protocol import quantize
from securefl.protocol.graph import random_graph
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RosterEntry,
    SealedShare,
    ShareKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from securefl.protocol.secagg.canonical import (
    _check_header,
    advertise_message,
    consistency_message,
    pair_sign,
    plan_digest,
    roster_digest,
    self_mask_commitment,
)
from securefl.protocol.secagg.config import (
    ADVERTISE_DOMAIN,
    CONSISTENCY_DOMAIN,
    MASK_PURPOSE,
    SEED_SIZE,
    IdentityRoster,
    SecAggConfig,
)
from securefl.protocol.secagg.machine import Deadline, Outgoing, Start, Transition, _dispatch

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["SERVER_TRANSITIONS", "SecAggServer", "ServerResult", "ServerState"]


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

    def __init__(self, config: SecAggConfig, federation: IdentityRoster,
                 input_binding: bytes = bytes(32)) -> None:
        if federation.session_id != config.session_id:
            raise ConfigError("the federation manifest belongs to another session")
        if len(input_binding) != 32:
            raise ConfigError("input_binding must be 32 bytes")
        #: the input binding every client must have signed (SecAggClient.input_binding); a
        #: transport that sends the inputs' basis after the keys sets it before the consistency
        #: stage
        self.input_binding = input_binding
        self.config = config
        self.federation = federation
        self.state = ServerState.COLLECT_KEYS
        self._plan = plan_digest(config)
        #: the round's graph over its participants (public randomness, fixed before any key)
        self._graph = random_graph(config.participants, config.degree, config.graph_seed)
        self._keys: dict[int, AdvertiseKeys] = {}
        self._entries: list[RosterEntry] = []
        self._digest = b""
        self._share_msgs: dict[int, ShareKeys] = {}
        self._masked_with: dict[int, frozenset[int]] = {}
        self._acc = quantize.PackedSum(config.bits, config.dim)
        self._u3: set[int] = set()
        self._signatures: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] = ()
        self._unmask: dict[int, UnmaskShares] = {}
        self.result: ServerResult | None = None

    @property
    def graph(self) -> Mapping[int, frozenset[int]]:
        """The round's public graph: each participant's neighbours."""
        return self._graph

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
            message=advertise_message(msg.sender, msg.cipher_pk, msg.mask_pk, self._plan),
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
        roster = KeyRoster(session_id=cfg.session_id, round=cfg.round, entries=self._entries)
        return [Outgoing(c, roster) for c in sorted(self._keys)]

    # stage 1
    def _on_share_keys(self, msg: ShareKeys) -> list[Outgoing]:
        self._check_client(msg, self._keys, self._share_msgs)
        peers = [s.peer for s in msg.shares]
        if sorted(peers) != sorted(self._graph[msg.sender] & set(self._keys)):
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
            message=consistency_message(self._plan, self._digest, self._survivors,
                                        self.input_binding),
        )
        self._signatures[msg.sender] = msg.signature
        return []

    def _close_signatures(self, _: Deadline) -> list[Outgoing]:
        cfg = self.config
        self._abort_below(len(self._signatures), "signed the survivor set")
        unsigned = set(self._survivors) - set(self._signatures)
        if unsigned:  # clients reveal nothing unless every survivor signed (client._on_unmask)
            raise AggregationAbortedError(
                f"survivor(s) {sorted(unsigned)[:5]} did not sign the survivor set; the round "
                "cannot be unmasked"
            )
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
            t = cfg.neighbour_threshold
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
            t = cfg.neighbour_threshold
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
