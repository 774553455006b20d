"""CKKS aggregation in a deployment: the key holder's node, a bank's CKKS steps and the server's
round driver. The protocol is protocols/ckks/spec.md, run by the sans-IO roles of
securefl.protocol.ckks; this module only moves their messages over Flower round trips.

Parties (all listed in the signed federation manifest):
- each bank: a SuperNode running the securefl ClientApp (:class:`securefl.deploy.client.BankNode`);
- the aggregation server: the ServerApp (:class:`securefl.deploy.server.DeployServer`);
- the CKKS key holder (role ``ckks-key-holder``): its own SuperNode, configured with
  ``role="ckks-key-holder"`` (:class:`KeyHolderNode`). It alone holds the secret key; the server and
  the banks only ever see the public context it signs with its manifest key.

Round trips of one aggregation round (``TRIPS_PER_ROUND``):

  "commit":  signed RoundStart (+ the signed global model; + the key holder's signed public context
             in the first round) -> each bank: Commitment (it trained, clipped, weighted, noised and
             encrypted; the ciphertext stays on the bank until the set is closed)
  "reveal":  the server-signed CommitmentSet -> Contribution (the ciphertext)
  "verify":  VerifyRequest to the first ``verifiers + verifier_skips`` contributors ranked by the
             closed set -> CoSignature
  "decrypt": DecryptionRequest (the aggregate, never an individual ciphertext) to the key holder
             -> DecryptionResult (flooded, rounded, signed)

The run's hello trip also goes to the key holder, which answers with its SignedPublicContext.
A bank that does not answer a trip is a dropout at that stage (``contribution``, ``reveal`` or
``verification``), as in ``securefl run --aggregation ckks``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey, verify_bound
from securefl.deploy.common import NodeHandler, randomness
from securefl.deploy.messages import (
    HELLO_DOMAIN,
    MAX_PAYLOAD_BYTES,
    ClientPayload,
    Hello,
    ProtocolItem,
    RoundStart,
    ServerPayload,
)
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    MessageError,
    RemoteProtocolError,
    SecureFLError,
    SignatureError,
    StateError,
)
from securefl.federation import (
    Federation,
    read_private_file,
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
from securefl.storage import atomic_write_bytes

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.he.context import PublicContext
    from securefl.transport.flower import Envelope

__all__ = [
    "STAGES",
    "TRIPS_PER_ROUND",
    "CKKSRoundResult",
    "KeyHolderNode",
    "bank_commit",
    "bank_step",
    "run_ckks_round",
]

log = logging.getLogger("securefl.deploy")

TRIPS_PER_ROUND = 4
#: the dropout stage a bank gets when it misses each trip (as CKKSAggregator.stages)
STAGES = {"commit": "contribution", "reveal": "reveal", "verify": "verification"}
#: the public context (N = 8192, three 60-bit primes: ~0.4 MB) and small messages
_MAX_CONTEXT_BYTES = 32 * 1024 * 1024
_MAX_SMALL_BYTES = 64 * 1024
#: key holder usage file: format version
_USAGE_VERSION = 1


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


def public_context(fed: Federation, signed: bytes) -> PublicContext:
    """The key holder's public context, checked against its manifest key and the parameters."""
    msg = _decode(signed, SignedPublicContext, _MAX_CONTEXT_BYTES)
    return accept_public_context(msg, key_holder_key(fed), DEFAULT_PARAMS)


# --- bank ------------------------------------------------------------------------------------------
def bank_commit(*, fed: Federation, identity: SigningKey, member: str, context: bytes,
                start: RoundStart, values: NDArray[np.float64], sim_seed: int | None
                ) -> tuple[bytes, ProtocolItem]:
    """Noise, check overflow, encrypt and commit this bank's clipped, weighted input. Returns the
    round state to keep on the node (it holds the unrevealed ciphertext) and the Commitment."""
    cid = fed.clients.index(member)
    client = CKKSClient(cid, identity, public_context(fed, context), fed.verify_key(fed.server))
    com = client.commit(session_id=start.session, round_=start.round,
                        values=np.asarray(values, dtype=np.float64), clip_norm=start.clip_norm,
                        num_participants=len(start.participants),
                        noise_std=noise_share_std(start),
                        random=randomness(sim_seed, start.session, start.round, cid, "noise",
                                          sim_stream=start.sim_stream),
                        weight=start.weights[member] if start.task == "train" else None)
    state = wire.encode(client.export_round(start.session, start.round))
    return state, ProtocolItem(round=start.round, data=wire.encode(com))


def bank_step(*, fed: Federation, identity: SigningKey, member: str, context: bytes,
              start: RoundStart, state: bytes, data: bytes, verifiers: int, verifier_skips: int
              ) -> tuple[bytes | None, list[ProtocolItem]]:
    """Answer the server's CommitmentSet (reveal) or VerifyRequest (recompute and co-sign).
    Returns the new round state (None once the round is over for this bank) and the reply."""
    cid = fed.clients.index(member)
    public = public_context(fed, context)
    server_key = fed.verify_key(fed.server)
    saved: ClientRoundState = _decode(state, ClientRoundState, MAX_PAYLOAD_BYTES)
    chunk_bytes, chunks = _chunk_limits(slots_of(start))
    n = len(fed.clients)
    kind = _peek_type(data)
    if kind == "ckks.commitment_set":
        cs = _decode(data, CommitmentSet, max_commitment_set_bytes(n))
        client = CKKSClient(cid, identity, public, server_key)
        client.restore_round(saved)
        reveal = client.reveal(cs)
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
class KeyHolderMemo(msgspec.Struct, forbid_unknown_fields=True):
    """The key holder node's per-run state (its context.state): the verified hello."""

    hello: bytes | None = None


@dataclass(frozen=True)
class KeyHolderNode(NodeHandler):
    """The CKKS key holder's SuperNode (``--node-config``: ``role="ckks-key-holder"``, ``member``,
    ``key`` (its manifest identity key), ``manifest``, ``ckks-keys`` (the directory written by
    ``securefl keys ckks``), optional ``passphrase-file``, ``usage-file`` (default
    ``<ckks-keys>/keyholder-usage.json``), ``verifiers`` (the co-signatures it requires, default 2)
    and ``verifier-skips`` (default 2)).

    It decrypts only aggregates that pass every check of
    :meth:`securefl.protocol.ckks.CKKSKeyHolder.decrypt`, at most once per (session, round), and
    records each release and the key's query budget in the usage file (written atomically BEFORE
    the release leaves the node), so a restarted key holder never releases a round twice.
    """

    role = "ckks-key-holder"
    insecure_seed_effect = "the flooding noise is predictable"

    member: str
    key_path: Path
    manifest_path: Path
    ckks_dir: Path
    passphrase_file: Path | None = None
    usage_file: Path | None = None
    verifiers: int = 2
    verifier_skips: int = DEFAULT_VERIFIER_SKIPS
    #: INSECURE, tests only: the flooding noise of ``securefl run --seed``
    sim_seed: int | None = None
    #: the node-local key sealing this node's state (default ``<key>.state-key``; NodeHandler)
    state_key_file: Path | None = None

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> KeyHolderNode:
        try:
            uf = cfg.get("usage-file")
            node = cls(**cls.common_config(cfg), ckks_dir=Path(str(cfg["ckks-keys"])),
                       usage_file=Path(str(uf)) if uf else None,
                       verifiers=int(cfg.get("verifiers", 2)),
                       verifier_skips=int(cfg.get("verifier-skips", DEFAULT_VERIFIER_SKIPS)))
        except KeyError as exc:
            raise ConfigError(f"key holder node config lacks {exc.args[0]!r}",
                              hint="--node-config 'role=\"ckks-key-holder\" member=... key=... "
                                   "manifest=... ckks-keys=DIR'") from exc
        except ValueError as exc:
            raise ConfigError(f"key holder node config: {exc}") from exc
        if node.verifiers < 1 or node.verifier_skips < 0:
            raise ConfigError("key holder node config: verifiers must be >= 1, "
                              "verifier-skips >= 0")
        return node

    @property
    def usage_path(self) -> Path:
        return self.usage_file or self.ckks_dir / "keyholder-usage.json"

    def load_holder(self, fed: Federation, identity: SigningKey, threshold: int) -> CKKSKeyHolder:
        from securefl.he.context import load_secret_context
        from securefl.keyholder import KEY_FILES

        secret = read_private_file(self.ckks_dir / KEY_FILES["secret_context"], 2**30,
                                   "CKKS secret context")
        holder = CKKSKeyHolder(identity,
                               load_secret_context(Secret(secret, label="ckks-secret-context"),
                                                   DEFAULT_PARAMS),
                               federation_keys(fed), min_clients=threshold,
                               verifiers=self.verifiers, server_key=fed.verify_key(fed.server),
                               verifier_skips=self.verifier_skips)
        used, done = self._read_usage(holder)
        holder.restore_usage(used, done)
        return holder

    def _read_usage(self, holder: CKKSKeyHolder) -> tuple[int, set[tuple[bytes, int]]]:
        """(queries used, released (session, round) slots) of this key; none when no file yet."""
        path = self.usage_path
        kid = holder.public_context_message().key_id.hex()
        if not path.exists():
            return 0, set()
        try:
            raw = json.loads(path.read_text("utf-8"))
            if raw["version"] != _USAGE_VERSION:
                raise ConfigError(f"{path}: unknown usage file version {raw['version']!r}")
            if raw["key_id"] != kid:
                raise ConfigError(f"{path} records another key's usage ({raw['key_id']})",
                                  hint="each CKKS key needs its own usage file")
            done = {(bytes.fromhex(s), int(r)) for s, r in raw["decrypted"]}
            return int(raw["queries_used"]), done
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the key holder usage file {path}: {exc}") from exc

    def _write_usage(self, holder: CKKSKeyHolder) -> None:
        body = {"version": _USAGE_VERSION,
                "key_id": holder.public_context_message().key_id.hex(),
                "queries_used": holder.queries_used,
                "decrypted": sorted([s.hex(), r] for s, r in holder.decrypted)}
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
            self._check_plan(hello)
            memo = KeyHolderMemo(hello=msg.hello.body)
            holder = self.load_holder(fed, identity, fed.params.threshold)
            out.append(ProtocolItem(round=0, data=wire.encode(holder.public_context_message())))
        for item in msg.protocol:
            if memo.hello is None:
                raise StateError("a decryption request before a verified hello")
            hello = wire.decode(memo.hello, Hello)
            out.append(self._decrypt(fed, identity, hello, item))
        return wire.encode(ClientPayload(protocol=out)), wire.encode(memo)

    def _check_plan(self, hello: Hello) -> None:
        plan = hello.plan
        if plan.aggregation != "ckks":
            raise ConfigError(f"the plan's aggregation is {plan.aggregation!r}, not ckks")
        if plan.ckks_verifiers < self.verifiers or plan.ckks_verifier_skips > self.verifier_skips:
            raise ConfigError(
                f"the plan asks for {plan.ckks_verifiers} verifiers with "
                f"{plan.ckks_verifier_skips} skips; this key holder requires at least "
                f"{self.verifiers} verifiers and allows at most {self.verifier_skips} skips")

    def _decrypt(self, fed: Federation, identity: SigningKey, hello: Hello, item: ProtocolItem
                 ) -> ProtocolItem:
        # the key holder does not know the model's size: the payload's own bound applies
        req: DecryptionRequest = _decode(item.data, DecryptionRequest, MAX_PAYLOAD_BYTES)
        if req.manifest.session_id != hello.session or req.manifest.round != item.round:
            raise RemoteProtocolError("a decryption request for another session or round")
        # the manifest's threshold is the floor every member signed
        holder = self.load_holder(fed, identity, fed.params.threshold)
        res = holder.decrypt(req, randomness(self.sim_seed, hello.session, req.manifest.round,
                                              -1, "ckks-flooding", sim_stream=hello.sim_stream))
        self._write_usage(holder)  # durable before anything leaves the node
        log.info("%s released round %d (%d contributions, flooding std %.3g)", self.member,
                 req.manifest.round, len(req.manifest.entries), res.flood_std)
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


def _items(reply: ClientPayload, round_: int, typ: type[Any], limit: int) -> list[Any]:
    return [_decode(i.data, typ, limit) for i in reply.protocol if i.round == round_]


def run_ckks_round(*, trip: Trip, fed: Federation, server_key: SigningKey, public: PublicContext,
                   start: RoundStart, first: Mapping[str, ServerPayload], key_holder: str,
                   verifiers: int, verifier_skips: int) -> CKKSRoundResult:
    """One CKKS aggregation round over four trips; ``first`` holds each participant's payload of
    the commit trip (the signed plan, the model, the public context). Raises
    AggregationAbortedError (or the protocol's typed error) when nothing can be released."""
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
    replies = trip(r, "decrypt", {key_holder: ServerPayload(protocol=[dreq])})
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
        weight_total=weight_total)

