"""CKKS aggregation in a deployment: the key holder's node, a bank's CKKS steps and the server's
round driver. The protocol is protocols/ckks/spec.md, run by the sans-IO roles of
securefl.protocol.ckks; this module only moves their messages over Flower round trips.

Parties (all listed in the signed federation manifest):
- each bank: a SuperNode running the securefl ClientApp (:class:`securefl.deploy.client.BankNode`);
- the aggregation server: the ServerApp (:class:`securefl.deploy.server.DeployServer`);
- the CKKS key holder (role ``ckks-key-holder``): its own SuperNode, configured with
  ``role="ckks-key-holder"`` (:class:`KeyHolderNode`). It alone holds the secret key; the server and
  the banks only ever see the public context it signs with its manifest key, bound to the one
signed hello it accepted for the session (red-team finding S7b-6: every bank refuses a context
bound to another hello than its own, so all banks of a sum act on one plan).

Keys: a fresh CKKS key per round (protocols/ckks/spec.md, "Keys"). The key holder makes round r's
key when the server asks for it (:class:`KeyRequest`), keeps the secret key sealed in its node
state until round r's one decryption and erases it there; the public context it signs for
(session, r) travels to every participant with round r's plan, and a bank encrypts only under the
context signed for the (session, round) of the plan it is answering, so a context replayed from
another round or session is refused. A key that leaks opens one round, and a ciphertext replayed
from an earlier round decrypts to noise. The key holder's usage file records, durably and before
anything leaves the node, every round it keyed and every round it released: a restarted key holder
never makes a second key for a round, nor releases a round twice (a round whose key was lost with
the node state aborts; the next round gets a new key). The file is read-checked-written under an
exclusive lock, and checked against the per-session marks the sealed node state keeps: missing
while the state shows history, or behind those marks, it is refused (StateError). A rollback of
the file together with the node state is the residual (spec.md, "Keys").

Round trips of one aggregation round (``TRIPS_PER_ROUND``):

  "commit":  signed RoundStart + the key holder's public context signed for this round (+ the
             signed global model) -> each bank: Commitment (it trained, clipped, weighted, noised
             and encrypted; the ciphertext stays on the bank until the set is closed), signed
             with its round-plan digest (:func:`bank_plan_digest`, S8-1)
  "reveal":  the server-signed CommitmentSet -> Contribution (the ciphertext), only if every
             entry of the set names this bank's round-plan digest
  "verify":  VerifyRequest to the first ``verifiers + verifier_skips`` contributors ranked by the
             closed set -> CoSignature
  "decrypt": DecryptionRequest (the aggregate, never an individual ciphertext) + the KeyRequest of
             the next round to the key holder -> DecryptionResult (flooded, rounded, signed) + the
             next round's signed public context

The run's hello trip also goes to the key holder (it checks the plan against its policy). The
first round's key, and the key of a round after one that released nothing, take one more trip
("key") to the key holder alone. Every payload to the key holder carries the signed hello, so a
restarted key holder node can go on. A bank that does not answer a trip is a dropout at that stage
(``contribution``, ``reveal`` or ``verification``), as in ``securefl run --aggregation ckks``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from securefl.crypto.secret import RedactedStruct, Secret
from securefl.crypto.signing import SigningKey, VerifyKey, verify_bound
from securefl.deploy.common import (
    NodeHandler,
    Round0Survivors,
    ServerFaultError,
    bank_ids,
    public_draw,
    randomness,
    round_spec,
    session_id,
)
from securefl.deploy.messages import (
    FLOWER_APP,
    HELLO_DOMAIN,
    MAX_PAYLOAD_BYTES,
    ClientPayload,
    Hello,
    ProtocolItem,
    RoundStart,
    ServerPayload,
    Signed,
    TrainPlan,
)
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    MessageError,
    PlanMismatchError,
    RemoteProtocolError,
    SecureFLError,
    SignatureError,
    StateError,
)
from securefl.federation import (
    Federation,
)
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol import wire
from securefl.protocol.ckks import (
    DEFAULT_VERIFIER_SKIPS,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    ClientRoundState,
    accept_public_context,
    check_commitment_set,
    round_plan_digest,
    split_weight_slot,
)
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentSet,
    Contribution,
    CoSignature,
    DecryptionRequest,
    DecryptionResult,
    SignedPublicContext,
    VerifyRequest,
    max_commitment_set_bytes,
    max_message_bytes,
)
from securefl.storage import atomic_write_bytes, exclusive_lock

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.he.context import PublicContext
    from securefl.transport.flower import Envelope

__all__ = [
    "STAGES",
    "TRIPS_PER_ROUND",
    "CKKSRoundResult",
    "KeyHolderMemo",
    "KeyHolderNode",
    "KeyRequest",
    "KeyUsage",
    "RoundKeyMemo",
    "bank_commit",
    "bank_round_context",
    "bank_step",
    "contexts_in",
    "hello_digest",
    "key_request",
    "public_context",
    "run_ckks_round",
]

log = logging.getLogger("securefl.deploy")

TRIPS_PER_ROUND = 4
#: the dropout stage a bank gets when it misses each trip (as CKKSAggregator.stages)
STAGES = {"commit": "contribution", "reveal": "reveal", "verify": "verification"}
#: the public context (N = 8192, three 60-bit primes: ~0.4 MB) and small messages
_MAX_CONTEXT_BYTES = 32 * 1024 * 1024
_MAX_SMALL_BYTES = 64 * 1024
#: key holder usage file: format version (1: a long-lived key's; 2: round keys)
_USAGE_VERSION = 2


def _decode(data: bytes, typ: type[Any], max_bytes: int) -> Any:
    return wire.decode(data, typ, max_bytes=max_bytes)


def _chunk_limits(num_values: int) -> tuple[int, int]:
    return DEFAULT_PARAMS.ciphertext_max_bytes(), DEFAULT_PARAMS.num_chunks(num_values)


def slots_of(start: RoundStart) -> int:
    """Values each ciphertext list carries: the input, plus the FedAvg weight slot in training
    rounds (spec.md "Weight slot")."""
    return start.dim + 1 if start.task == "train" else start.dim


def noise_share_std(start: RoundStart) -> float:
    """This bank's Gaussian DP share z C / sqrt(min_survivors) (CKKSAggregator's rule)."""
    if start.noise_multiplier <= 0:
        return 0.0
    return start.noise_multiplier * start.clip_norm / math.sqrt(start.min_survivors)


def federation_keys(fed: Federation) -> dict[int, VerifyKey]:
    """CKKS client id (the bank's index in the manifest's client list) -> its identity key."""
    return {i: fed.verify_key(name) for i, name in enumerate(fed.clients)}


def key_holder_key(fed: Federation) -> VerifyKey:
    if fed.key_holder is None:
        raise ConfigError("the manifest lists no ckks-key-holder")
    return fed.verify_key(fed.key_holder)


def public_context(fed: Federation, signed: bytes, session: bytes, round_: int,
                   hello: bytes | None = None) -> PublicContext:
    """The key holder's public context of (session, round): signed by the manifest's key holder
    for exactly that (session, round), with the agreed parameters and no secret key; a context of
    another round or session (a replay) is refused (RemoteProtocolError). With ``hello`` (a
    bank: the :func:`hello_digest` of the Hello it verified), only a context the key holder bound
    to that same signed plan (PlanMismatchError otherwise, S7b-6)."""
    msg = _decode(signed, SignedPublicContext, _MAX_CONTEXT_BYTES)
    return accept_public_context(msg, key_holder_key(fed), DEFAULT_PARAMS, session_id=session,
                                 round_=round_, hello_digest=hello)


def hello_digest(hello_body: bytes) -> bytes:
    """SHA-256 of a signed Hello's body: the plan a CKKS round key is bound to (S7b-6; SecAgg
    binds the same digest into every plan digest)."""
    return hashlib.sha256(hello_body).digest()


class KeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                 tag="securefl.deploy.ckks.key_request", tag_field="type"):
    """Server -> key holder: make the key of (``session``, ``round``) and publish its public
    context (answered once per round; the same context again while the key waits)."""

    session: Annotated[bytes, Meta(min_length=16, max_length=16)]
    round: Annotated[int, Meta(ge=0)]


_KEY_REQUEST_TAG = "securefl.deploy.ckks.key_request"
_CONTEXT_TAG = "ckks.public_context"


def key_request(session: bytes, round_: int) -> ProtocolItem:
    """The item asking the key holder for round ``round_``'s key."""
    return ProtocolItem(round=round_, data=wire.encode(KeyRequest(session=session, round=round_)))


def contexts_in(reply: ClientPayload | None) -> dict[int, bytes]:
    """The signed public contexts a key holder's reply carries, by round (each is checked by
    :func:`public_context` where it is used)."""
    if reply is None:
        return {}
    return {i.round: i.data for i in reply.protocol if _peek_type(i.data) == _CONTEXT_TAG}


# --- bank ------------------------------------------------------------------------------------------
def bank_round_context(fed: Federation, item: ProtocolItem, session: bytes, hello: bytes
                       ) -> bytes | None:
    """A bank's check of a CKKS item from the server: the key holder's public context signed for
    (this session, the item's round) and bound to this bank's verified plan (``hello``: the
    :func:`hello_digest` of its Hello) is returned (the bank keeps it for that round's plan); any
    other CKKS message gives None. A context signed for another session or round is refused, one
    bound to another plan too (PlanMismatchError, S7b-6)."""
    if _peek_type(item.data) != _CONTEXT_TAG:
        return None
    public_context(fed, item.data, session, item.round, hello)
    return item.data


def bank_plan_digest(fed: Federation, hello: bytes, start: RoundStart, signed_plan: bytes,
                     model_digest: bytes) -> bytes:
    """The round-plan digest a bank signs into its commitment (S8-1): the round's
    :class:`RoundSpec` as this bank received it (``hello``: the :func:`hello_digest` of its signed
    training plan; ``model_digest``: SHA-256 of the signed global model it trained from, zeros
    where none, e.g. round 0 or the Flower path, whose plan carries it) and ``signed_plan``, the
    signed body of the round's plan every bank receives alike (a RoundStart, a FlowerPlan)."""
    spec = round_spec(start, bank_ids(fed), hello, fed.params)
    return round_plan_digest(dataclasses.replace(spec, model_digest=model_digest), signed_plan)


def bank_commit(*, fed: Federation, identity: SigningKey, member: str, context: bytes,
                hello: bytes, start: RoundStart, values: NDArray[np.float64],
                sim_seed: int | None, signed_plan: bytes,
                model_digest: bytes = bytes(32)) -> tuple[bytes, ProtocolItem]:
    """Noise, check overflow, encrypt and commit this bank's clipped, weighted input. Returns the
    round state to keep on the node (it holds the unrevealed ciphertext) and the Commitment.
    ``hello``: the :func:`hello_digest` of the signed plan this bank verified; ``signed_plan`` and
    ``model_digest``: see :func:`bank_plan_digest` (signed into the commitment, S8-1)."""
    cid = fed.clients.index(member)
    # encrypt only under the key signed for the (session, round) of this plan and bound to this
    # bank's signed plan (a replayed context of an earlier round, or a key the key holder made
    # for another plan, is refused here: S7b-6)
    client = CKKSClient(cid, identity,
                        public_context(fed, context, start.session, start.round, hello),
                        fed.verify_key(fed.server))
    com = client.commit(session_id=start.session, round_=start.round,
                        values=np.asarray(values, dtype=np.float64), clip_norm=start.clip_norm,
                        num_participants=len(start.participants),
                        noise_std=noise_share_std(start),
                        random=randomness(sim_seed, start.session, start.round, cid, "noise",
                                          sim_stream=start.sim_stream),
                        plan_digest=bank_plan_digest(fed, hello, start, signed_plan,
                                                     model_digest),
                        weight=start.weights[member] if start.task == "train" else None)
    state = wire.encode(client.export_round(start.session, start.round))
    return state, ProtocolItem(round=start.round, data=wire.encode(com))


def bank_step(*, fed: Federation, identity: SigningKey, member: str, context: bytes,
              hello: bytes, start: RoundStart, state: bytes, data: bytes, verifiers: int,
              verifier_skips: int, round0: Round0Survivors | None = None
              ) -> tuple[bytes | None, list[ProtocolItem]]:
    """Answer the server's CommitmentSet (reveal) or VerifyRequest (recompute and co-sign).
    Returns the new round state (None once the round is over for this bank) and the reply.
    Round 0 (task "moments", no noise) with this bank's ``round0`` record: the ciphertext is
    revealed only under the closed commitment set of this manifest's first round 0 (red-team
    finding S6b-1; ServerFaultError otherwise, and nothing leaves)."""
    cid = fed.clients.index(member)
    public = public_context(fed, context, start.session, start.round, hello)
    server_key = fed.verify_key(fed.server)
    saved: ClientRoundState = _decode(state, ClientRoundState, MAX_PAYLOAD_BYTES)
    chunk_bytes, chunks = _chunk_limits(slots_of(start))
    n = len(fed.clients)
    kind = _peek_type(data)
    if kind == "ckks.commitment_set":
        cs = _decode(data, CommitmentSet, max_commitment_set_bytes(n))
        if len(cs.entries) < start.threshold:
            # this bank sized its noise share for T contributions (NoisePlan): a sum of fewer
            # would carry less noise than planned (red-team finding S7b-4)
            raise ServerFaultError(
                f"round {start.round}: a commitment set of {len(cs.entries)} banks, below the "
                f"plan's threshold {start.threshold}: nothing is revealed")
        # every entry's signature, not only the plan digests it names: a server that forged
        # another bank's entry to name this bank's plan is caught before anything is revealed
        # (red team s8b; the key holder and the verifiers check the same, later)
        check_commitment_set(cs, federation_keys(fed), server_key)
        client = CKKSClient(cid, identity, public, server_key)
        client.restore_round(saved)
        reveal = client.reveal(cs)  # checks the set's signature and this bank's commitment
        if start.task == "moments" and round0 is not None:
            round0.check_and_record(start.round, [fed.clients[e.client_id] for e in cs.entries])
        new = wire.encode(client.export_round(start.session, start.round))
        return new, [ProtocolItem(round=start.round, data=wire.encode(reveal))]
    if kind == "ckks.verify_request":
        req = _decode(data, VerifyRequest, max_message_bytes(chunk_bytes, chunks, n)
                      + max_commitment_set_bytes(n))
        verifier = CKKSVerifier(cid, identity, public, federation_keys(fed), server_key,
                                min_clients=start.threshold, verifiers=verifiers,
                                verifier_skips=verifier_skips)
        cosig = verifier.verify(req, session_id=start.session, round_=start.round,
                                revealed_under=saved.revealed_under)
        return None, [ProtocolItem(round=start.round, data=wire.encode(cosig))]
    raise RemoteProtocolError(f"unexpected CKKS message {kind!r} for a bank")


class _Tagged(msgspec.Struct):
    type: str


def _peek_type(data: bytes) -> str:
    """The ``type`` tag of an encoded CKKS message (the message is then decoded strictly)."""
    try:
        return msgspec.msgpack.decode(data, type=_Tagged).type
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError("a CKKS message without a valid type tag") from exc


# --- key holder ------------------------------------------------------------------------------------
class RoundKeyMemo(RedactedStruct, msgspec.Struct, forbid_unknown_fields=True):
    """A round key waiting for its aggregate: the serialized secret context and its signed public
    context. Lives only in the key holder's sealed node state; ``secret`` is redacted in every
    representation (RedactedStruct)."""

    __redacted__ = frozenset({"secret"})

    secret: bytes
    signed: bytes


class KeyHolderMemo(msgspec.Struct, forbid_unknown_fields=True):
    """The key holder node's per-run state (its context.state, sealed by NodeHandler; the round key
    it holds is redacted in every representation by RoundKeyMemo): the verified hello and the
    round key waiting for its decryption (at most one: making round r's
    key erases every earlier round's, since each round runs once, in order)."""

    hello: bytes | None = None
    #: per session (hex): the SHA-256 (hex) of the one signed plan accepted for it (S7b-6); only
    #: sessions derived from a counter the manifest's max_sessions allows: at most that many
    hellos: dict[str, str] = {}
    keys: dict[int, RoundKeyMemo] = {}
    #: per session (hex): the last round this node keyed, and the last round it released; the
    #: usage file must never be behind these marks (a deleted or rolled-back file is refused)
    keyed: dict[str, int] = {}
    released: dict[str, int] = {}

    def history(self) -> bool:
        """Whether this node state shows a key made or a round released."""
        return bool(self.keys or self.keyed or self.released)


@dataclass
class KeyUsage:
    """The key holder's durable record (the usage file): every (session, round) it released and,
    per session, the last round it made a key for."""

    decrypted: set[tuple[bytes, int]] = field(default_factory=set)
    keyed: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyHolderNode(NodeHandler):
    """The CKKS key holder's SuperNode (``--node-config``: ``role="ckks-key-holder"``, ``member``,
    ``key`` (its manifest identity key), ``manifest``, optional ``passphrase-file``,
    ``usage-file`` (default ``<ckks-keys>/keyholder-usage.json``, or ``<key>.ckks-usage.json``
    without ``ckks-keys``), ``state-dir`` (its round-0 records, default ``<key>.state``),
    ``verifiers`` (the co-signatures it requires, default 2) and
    ``verifier-skips`` (default 2)).

    It makes a fresh CKKS key for every round (:class:`KeyRequest`), keeps the secret key sealed
    in its node state, and erases it with that round's one release. It decrypts only aggregates
    that pass every check of :meth:`securefl.protocol.ckks.CKKSKeyHolder.decrypt`, at most once
    per (session, round), and records each key it makes and each release in the usage file
    (written atomically BEFORE the context or the release leaves the node), so a restarted key
    holder never makes a second key for a round nor releases a round twice.
    """

    role = "ckks-key-holder"
    insecure_seed_effect = "the flooding noise is predictable"

    member: str
    key_path: Path
    manifest_path: Path
    ckks_dir: Path | None = None
    passphrase_file: Path | None = None
    usage_file: Path | None = None
    verifiers: int = 2
    verifier_skips: int = DEFAULT_VERIFIER_SKIPS
    #: INSECURE, tests only: the flooding noise of ``securefl run --seed``
    sim_seed: int | None = None
    #: the node-local key sealing this node's state (default ``<key>.state-key``; NodeHandler)
    state_key_file: Path | None = None
    #: where the round-0 record of each manifest is kept (``state-dir``, default
    #: ``<key>.state``): the contributors of the first round-0 sum it decrypted
    state_dir: Path | None = None
    #: the node runs inside a Flower app (securefl.flower.mod sets it, never the server): the
    #: app's strategy picks the participants, so plans of task FLOWER_APP are accepted and keep
    #: the manifest's release floor; a deployment's key holder refuses them (S7b-2)
    flower_app: bool = False

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> KeyHolderNode:
        try:
            uf, kd, sd = cfg.get("usage-file"), cfg.get("ckks-keys"), cfg.get("state-dir")
            node = cls(**cls.common_config(cfg), ckks_dir=Path(str(kd)) if kd else None,
                       usage_file=Path(str(uf)) if uf else None,
                       state_dir=Path(str(sd)) if sd else None,
                       verifiers=int(cfg.get("verifiers", 2)),
                       verifier_skips=int(cfg.get("verifier-skips", DEFAULT_VERIFIER_SKIPS)))
        except KeyError as exc:
            raise ConfigError(f"key holder node config lacks {exc.args[0]!r}",
                              hint="--node-config 'role=\"ckks-key-holder\" member=... key=... "
                                   "manifest=...'") from exc
        except ValueError as exc:
            raise ConfigError(f"key holder node config: {exc}") from exc
        if node.verifiers < 1 or node.verifier_skips < 0:
            raise ConfigError("key holder node config: verifiers must be >= 1, "
                              "verifier-skips >= 0")
        return node

    @property
    def round0_record(self) -> Path:
        """The directory of this key holder's round-0 records (``state-dir``)."""
        return self.state_dir or self.key_path.with_name(self.key_path.name + ".state")

    @property
    def usage_path(self) -> Path:
        if self.usage_file is not None:
            return self.usage_file
        if self.ckks_dir is not None:
            return self.ckks_dir / "keyholder-usage.json"
        return self.key_path.with_name(self.key_path.name + ".ckks-usage.json")

    def load_holder(self, fed: Federation, identity: SigningKey, session: bytes,
                    memo: KeyHolderMemo) -> tuple[CKKSKeyHolder, KeyUsage]:
        """The sans-IO key holder with this node's durable usage and the round key its sealed
        state holds (a key of a round already released is dropped, never loaded)."""
        from securefl.he.context import load_secret_context

        holder = CKKSKeyHolder(identity, None, federation_keys(fed), params=DEFAULT_PARAMS,
                               min_clients=fed.params.threshold, verifiers=self.verifiers,
                               server_key=fed.verify_key(fed.server),
                               verifier_skips=self.verifier_skips)
        usage = self._fresh_usage(memo, session)
        holder.restore_usage(0, usage.decrypted)
        for r, key in list(memo.keys.items()):
            if (session, r) in usage.decrypted:
                del memo.keys[r]
                continue
            holder.restore_round_key(
                session, r,
                load_secret_context(Secret(key.secret, label="ckks-round-key"), DEFAULT_PARAMS),
                _decode(key.signed, SignedPublicContext, _MAX_CONTEXT_BYTES))
        return holder, usage

    def read_usage(self) -> KeyUsage:
        """The usage file (version 1, a long-lived key's, contributes its released rounds)."""
        path = self.usage_path
        if not path.exists():
            return KeyUsage()
        try:
            raw = json.loads(path.read_text("utf-8"))
            if raw["version"] not in (1, _USAGE_VERSION):
                raise ConfigError(f"{path}: unknown usage file version {raw['version']!r}")
            done = {(bytes.fromhex(s), int(r)) for s, r in raw["decrypted"]}
            keyed = {bytes.fromhex(s): int(r) for s, r in raw.get("keyed", {}).items()}
            return KeyUsage(done, keyed)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read the key holder usage file {path}: {exc}") from exc

    def ensure_usage(self) -> KeyUsage:
        """The usage file, created (empty) if missing: at enrolment (``securefl deploy
        check-key-holder``) or first use, so that later a missing file means a lost one."""
        with self._usage_lock():
            if not self.usage_path.exists():
                self._write_usage(KeyUsage())
            return self.read_usage()

    def _usage_lock(self) -> AbstractContextManager[None]:
        """Exclusive lock around every read-check-write of the usage file (two runs served at
        once, or two key holder processes on one file, never lose an update)."""
        return exclusive_lock(self.usage_path.with_name(self.usage_path.name + ".lock"))

    def _fresh_usage(self, memo: KeyHolderMemo, session: bytes) -> KeyUsage:
        """The usage file, checked against this node's sealed state: a file missing while the
        state shows history, or behind the state's marks of this session, was deleted or rolled
        back, and would let a second key be made (or a round be released twice): StateError.
        (A rollback together with the node state, e.g. a new run replaying an old session, is
        not caught here: only a monotonic counter outside the node would; spec "Keys".)"""
        if not self.usage_path.exists():
            if memo.history():
                raise StateError(
                    f"the key holder usage file {self.usage_path} is missing but this node's "
                    "state shows rounds keyed or released: refusing to go on without the record "
                    "that no round is keyed twice",
                    hint="restore the usage file from its backup; never delete it")
            return self.ensure_usage()
        usage = self.read_usage()
        sid = session.hex()
        if usage.keyed.get(session, -1) < memo.keyed.get(sid, -1) or (
                sid in memo.released and (session, memo.released[sid]) not in usage.decrypted):
            raise StateError(
                f"the key holder usage file {self.usage_path} is behind this node's state "
                f"(round {memo.keyed.get(sid, -1)} keyed, round {memo.released.get(sid, -1)} "
                "released in this session): it was rolled back",
                hint="restore the newest usage file; never roll it back")
        return usage

    def _write_usage(self, usage: KeyUsage) -> None:
        """Write ``usage`` joined with the file's current content (released rounds: union; last
        round keyed per session: maximum), so no update is lost; call under the usage lock."""
        if self.usage_path.exists():
            now = self.read_usage()
            usage.decrypted |= now.decrypted
            for sess, r in now.keyed.items():
                usage.keyed[sess] = max(r, usage.keyed.get(sess, -1))
        body = {"version": _USAGE_VERSION,
                "decrypted": sorted([s.hex(), r] for s, r in usage.decrypted),
                "keyed": {s.hex(): r for s, r in sorted(usage.keyed.items())}}
        atomic_write_bytes(self.usage_path, (json.dumps(body, indent=1) + "\n").encode(),
                           mode=0o600)

    def _handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        """One message (NodeHandler.handle calls it): returns (ClientPayload bytes, new memo
        bytes). Any error: nothing is released and the server sees no reply."""
        fed, identity, msg, server_key = self._open(env)
        memo = wire.decode(state, KeyHolderMemo) if state else KeyHolderMemo()
        out: list[ProtocolItem] = []
        if msg.hello is not None:
            verify_bound(server_key, msg.hello.signature, domain=HELLO_DOMAIN,
                         session_id=env.session, round_=0, message=msg.hello.body)
            hello: Hello = wire.decode(msg.hello.body, Hello)
            if hello.federation != fed.digest or hello.session != env.session:
                raise SignatureError("the hello names another federation or session")
            self._check_plan(hello, fed)
            # a session the manifest allows (its id derived from a counter <= max_sessions), so
            # the per-session record below holds at most max_sessions entries (S8-1, Low)
            if not 1 <= hello.counter <= fed.params.max_sessions or \
                    hello.session != session_id(fed.digest, hello.counter):
                raise ServerFaultError(
                    f"a hello for session counter {hello.counter}: the manifest allows counters "
                    f"1..{fed.params.max_sessions}, each session id derived from its counter")
            # one signed plan per session: every round key is bound to it (S7b-6)
            digest, sid = hello_digest(msg.hello.body).hex(), hello.session.hex()
            if memo.hellos.setdefault(sid, digest) != digest:
                raise PlanMismatchError("a second, different signed plan for this session: the "
                                        "key holder keys a session for one plan only")
            memo.hello = msg.hello.body
        for item in msg.protocol:
            if memo.hello is None:
                raise StateError("a request before a verified hello")
            hello = wire.decode(memo.hello, Hello)
            kind = _peek_type(item.data)
            if kind == _KEY_REQUEST_TAG:
                out.append(self._round_key(fed, identity, hello, memo, item))
            elif kind == "ckks.decrypt_request":
                out.append(self._decrypt(fed, identity, hello, memo, item))
            else:
                raise RemoteProtocolError(f"unexpected message {kind!r} for the key holder")
        return wire.encode(ClientPayload(protocol=out)), wire.encode(memo)

    def _check_plan(self, hello: Hello, fed: Federation) -> None:
        """Refuse a plan this node would act on wrongly: another aggregation, a round-0 noise
        multiplier that is neither 0 (no DP) nor a DP release (S7b-1), a sampling fraction
        other than the manifest's (its release floor follows the public draw, S7b-2), or a
        Flower app's plan outside a Flower app's node (the floor would drop to the manifest's)."""
        from securefl.protocol.round0 import check_round0_noise

        plan = hello.plan
        if plan.aggregation != "ckks":
            raise ConfigError(f"the plan's aggregation is {plan.aggregation!r}, not ckks")
        if (plan.task == FLOWER_APP) != self.flower_app:
            raise ConfigError(
                f"a plan of task {plan.task!r} for a key holder node "
                f"{'inside' if self.flower_app else 'outside'} a Flower app: its release floor "
                "follows the public draw in a deployment only (spec 12.1, S7b-2)")
        if not self.flower_app:  # a Flower app standardises locally: no round 0, no draw
            check_round0_noise(plan.stats_noise_multiplier, plan.dp)
            if plan.clients_per_round != fed.params.clients_per_round:
                raise ConfigError(
                    f"the plan samples {plan.clients_per_round:g} of the clients per round, the "
                    f"manifest {fed.params.clients_per_round:g}: this key holder's release floor "
                    "follows the manifest's public draw (spec 12.1, S7b-2)")
        if plan.ckks_verifiers < self.verifiers or plan.ckks_verifier_skips > self.verifier_skips:
            raise ConfigError(
                f"the plan asks for {plan.ckks_verifiers} verifiers with "
                f"{plan.ckks_verifier_skips} skips; this key holder requires at least "
                f"{self.verifiers} verifiers and allows at most {self.verifier_skips} skips")

    def _round_key(self, fed: Federation, identity: SigningKey, hello: Hello,
                   memo: KeyHolderMemo, item: ProtocolItem) -> ProtocolItem:
        """Make (once) the key of (session, round) and return its signed public context."""
        req: KeyRequest = _decode(item.data, KeyRequest, _MAX_SMALL_BYTES)
        r = req.round
        if req.session != hello.session or r != item.round:
            raise RemoteProtocolError("a key request for another session or round")
        if r > hello.plan.rounds:
            raise RemoteProtocolError(f"a key for round {r}; the plan has {hello.plan.rounds}")
        with self._usage_lock():  # read-check-write as one step
            holder, usage = self.load_holder(fed, identity, hello.session, memo)
            if r not in memo.keys:
                last = usage.keyed.get(hello.session, -1)
                if r <= last:
                    raise StateError(
                        f"round {r}'s key was asked for after this session's round {last} was "
                        "keyed: a key is made once per round, in order (a round whose key a "
                        "restart lost aborts; the next round gets a new key)")
                usage.keyed[hello.session] = r
                self._write_usage(usage)  # durable before the context leaves the node
                memo.keyed[hello.session.hex()] = r
        if memo.hello is None:
            raise StateError("a key request before a verified hello")
        # the key is bound to the session's one signed plan: every bank checks it (S7b-6)
        signed = holder.round_context(hello.session, r, hello_digest(memo.hello))
        if r not in memo.keys:
            secret, _ = holder.export_round_key(hello.session, r)
            # earlier rounds' keys are erased: a round runs once, in order
            memo.keys = {r: RoundKeyMemo(secret=secret.expose(), signed=wire.encode(signed))}
            log.info("%s made the key of round %d (key id %s)", self.member, r,
                     signed.key_id.hex())
        return ProtocolItem(round=r, data=wire.encode(signed))

    @staticmethod
    def release_floor(fed: Federation, session: bytes, round_: int, plan: TrainPlan) -> int:
        """The fewest contributions this key holder decrypts a sum of. A training round: the
        threshold T the manifest fixes for the round's public draw (ProtocolParams.
        round_threshold, which every bank checks the signed plan's T and min_survivors against,
        and for which each bank sized its noise share): a sum of fewer contributions would carry
        less noise than planned (red-team finding S7-2). Round 0: the manifest's threshold (its T
        counts the banks with a signed size, which this node does not see; the verifiers check
        it). On the Flower path (a plan of task FLOWER_APP) the app's strategy, not the public
        draw, picks the participants, which this node does not see: the manifest's threshold,
        and the verifiers check the round's T (docs/flower.md 2b)."""
        if round_ == 0 or plan.task == FLOWER_APP:
            return fed.params.threshold
        n = len(public_draw(fed, session, round_, fed.params.clients_per_round))
        return max(fed.params.threshold, fed.params.round_threshold(n))

    def _decrypt(self, fed: Federation, identity: SigningKey, hello: Hello,
                 memo: KeyHolderMemo, item: ProtocolItem) -> ProtocolItem:
        # the key holder does not know the model's size: the payload's own bound applies
        req: DecryptionRequest = _decode(item.data, DecryptionRequest, MAX_PAYLOAD_BYTES)
        r = req.manifest.round
        if req.manifest.session_id != hello.session or r != item.round:
            raise RemoteProtocolError("a decryption request for another session or round")
        with self._usage_lock():  # read-check-write as one step
            holder, usage = self.load_holder(fed, identity, hello.session, memo)
            holder.min_clients = self.release_floor(fed, hello.session, r, hello.plan)
            res = holder.decrypt(req, randomness(self.sim_seed, hello.session, r, -1,
                                                 "ckks-flooding", sim_stream=hello.sim_stream))
            if r == 0:
                # round 0 (the banks' noiseless moments, a task banks accept at round 0 only):
                # this key holder releases it only over the contributors of the first round-0
                # sum it released under this manifest. It alone releases and it sees every
                # session, also those that cut a victim off (spec 12.1, S6b-1). Checked after
                # decrypt verified the contributors' signatures; nothing has left the node.
                Round0Survivors(self.round0_record, fed, "this key holder",
                                noiseless=not hello.plan.dp
                                ).check_and_record(r, [fed.clients[e.client_id]
                                                       for e in req.manifest.entries])
            usage.decrypted.add((hello.session, r))
            self._write_usage(usage)  # durable before anything leaves the node
        memo.released[hello.session.hex()] = r
        memo.keys.pop(r, None)  # the round key is erased with its one release
        log.info("%s released round %d (%d contributions, flooding std %.3g)", self.member,
                 r, len(req.manifest.entries), res.flood_std)
        return ProtocolItem(round=item.round, data=wire.encode(res))


# --- server ----------------------------------------------------------------------------------------
#: (round, stage, payload per member) -> decoded replies per member (DeployServer._trip)
Trip = Callable[[int, str, Mapping[str, ServerPayload]], Mapping[str, ClientPayload]]


@dataclass
class CKKSRoundResult:
    """What one CKKS round released, who took part, and the digests for the audit record."""

    total: NDArray[np.float64]
    survivors: tuple[int, ...]
    dropouts: dict[int, str]
    input_digests: dict[int, str]
    aggregate_digest: str
    refused: dict[str, str] = field(default_factory=dict)
    #: training rounds: the released sum of the contributors' FedAvg weights (the weight slot)
    weight_total: float | None = None
    #: the next round's signed public context, when the key holder sent it with the release
    next_context: bytes | None = None


def _items(reply: ClientPayload, round_: int, typ: type[Any], limit: int) -> list[Any]:
    return [_decode(i.data, typ, limit) for i in reply.protocol if i.round == round_]


def run_ckks_round(*, trip: Trip, fed: Federation, server_key: SigningKey, public: PublicContext,
                   start: RoundStart, first: Mapping[str, ServerPayload], key_holder: str,
                   verifiers: int, verifier_skips: int, hello: Signed,
                   next_round: int | None = None) -> CKKSRoundResult:
    """One CKKS aggregation round over four trips; ``first`` holds each participant's payload of
    the commit trip (the signed plan, the model, the round's public context ``public``). The
    decryption request also asks for ``next_round``'s key (with the signed ``hello``, which every
    payload to the key holder carries). Raises AggregationAbortedError (or the protocol's typed
    error) when nothing can be released."""
    ids = {name: i for i, name in enumerate(fed.clients)}
    names = {i: n for n, i in ids.items()}
    r = start.round
    participants = tuple(sorted(ids[p] for p in start.participants))
    slots = slots_of(start)
    server = CKKSServer(public, federation_keys(fed), server_key, session_id=start.session,
                        round_=r, num_values=slots, participants=participants,
                        min_clients=start.threshold, verifiers=verifiers)
    chunk_bytes, chunks = _chunk_limits(slots)
    dropouts: dict[int, str] = {}
    refused: dict[str, str] = {}

    def feed(name: str, reply: ClientPayload | None, typ: type[Any], limit: int,
             accept: Callable[[Any], None], stage: str) -> bool:
        """Hand a bank's one message to the server machine; a missing, malformed or refused
        message makes the bank a dropout at ``stage`` (refusals are logged with their code)."""
        try:
            msgs = _items(reply, r, typ, limit) if reply is not None else []
            if len(msgs) != 1:
                raise MessageError(f"expected one {typ.__name__}, got {len(msgs)}")
            if getattr(msgs[0], "client_id", getattr(msgs[0], "verifier_id", None)) != ids[name]:
                raise SignatureError(f"{name} sent a message as another client")
            accept(msgs[0])
            return True
        except SecureFLError as err:
            if reply is not None:
                refused[name] = f"{err.code}: {err.message}"
                log.error("round %d: %s refused at %s: %s %s", r, name, stage, err.code,
                          err.message)
            dropouts[ids[name]] = STAGES[stage]
            return False

    replies = trip(r, "commit", first)
    committed = [p for p in start.participants
                 if feed(p, replies.get(p), Commitment, max_commitment_set_bytes(1),
                         server.receive_commitment, "commit")]
    cset = server.close_commitments()
    replies = trip(r, "reveal", {p: ServerPayload(protocol=[ProtocolItem(
        round=r, data=wire.encode(cset))]) for p in committed})
    for p in committed:
        feed(p, replies.get(p), Contribution, max_message_bytes(chunk_bytes, chunks),
             server.receive_contribution, "reveal")
    manifest = server.close()
    contributors = {e.client_id for e in manifest.entries}
    window = server.verifier_ranking()[: verifiers + verifier_skips]
    request = ProtocolItem(round=r, data=wire.encode(server.verify_request()))
    replies = trip(r, "verify", {names[v]: ServerPayload(protocol=[request]) for v in window})
    signed = 0
    for v in window:  # ranking order: the first `verifiers` valid co-signatures suffice
        if signed < verifiers and feed(names[v], replies.get(names[v]), CoSignature, 4096,
                                       server.receive_cosignature, "verify"):
            signed += 1
    if signed < verifiers:
        raise AggregationAbortedError(f"{signed} of the {len(window)} drawn verifiers co-signed; "
                                      f"{verifiers} required")
    dreq = ProtocolItem(round=r, data=wire.encode(server.decryption_request()))
    asks = [dreq] + ([key_request(start.session, next_round)] if next_round is not None else [])
    replies = trip(r, "decrypt", {key_holder: ServerPayload(hello=hello, protocol=asks)})
    reply = replies.get(key_holder)
    results = (_items(reply, r, DecryptionResult, 8 * slots + 65536)
               if reply is not None else [])
    if len(results) != 1:
        raise AggregationAbortedError(f"round {r}: the key holder released nothing")
    total = server.receive_result(results[0], key_holder_key(fed))
    weight_total = None
    if slots > start.dim:
        total, weight_total = split_weight_slot(
            total, (start.weights[names[c]] for c in contributors), params=DEFAULT_PARAMS,
            num_summands=len(contributors))
    dropouts = {c: s for c, s in dropouts.items() if c not in contributors}
    return CKKSRoundResult(
        total=total, survivors=tuple(sorted(contributors)), dropouts=dropouts,
        input_digests={e.client_id: e.digest.hex() for e in manifest.entries},
        aggregate_digest=manifest.aggregate_digest.hex(), refused=refused,
        weight_total=weight_total,
        next_context=contexts_in(reply).get(next_round) if next_round is not None else None)

