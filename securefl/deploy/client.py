"""The bank's side of a deployment: what one SuperNode's ClientApp does with each message.

Each Flower message runs in a fresh ClientApp process, so nothing lives in Python memory between
messages. :class:`NodeMemo` (kept by the SuperNode in ``context.state``, never sent to the
SuperLink) holds, per round in flight: the verified round plan, a 32-byte seed for the SecAgg key
machine (drawn once from the OS CSPRNG), the bank's encoded input once it has trained, and the
server messages received so far. The SecAgg client machine (securefl.protocol.secagg, sans-IO and
deterministic given its RandomSource) is rebuilt for every message by replaying them; the replay
re-derives the same keys and shares, so nothing secret is ever re-drawn.

Refusals (typed, logged on the node, and the ClientApp fails so the server sees a dropout):
- the manifest lacks a member's signature, or this node's identity key is not the one the manifest
  lists for its member name: :class:`~securefl.errors.SignatureError`;
- a Hello / RoundStart / GlobalModel not signed by the manifest's server key:
  :class:`~securefl.errors.SignatureError`;
- a plan weaker than the manifest's parameters: :class:`~securefl.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.random import SystemRandomSource
from securefl.crypto.secret import RedactedStruct
from securefl.crypto.signing import SigningKey, sign_bound, verify_bound
from securefl.deploy.common import (
    NodeHandler,
    Round0Survivors,
    ServerFaultError,
    SessionCounter,
    bank_ids,
    check_pending,
    check_plan_threshold,
    encode_input,
    encoding_for,
    fedavg_weights,
    identity_roster,
    next_attempt,
    public_draw,
    randomness,
    round0_fills,
    round0_input,
    round_spec,
    secagg_config,
    session_id,
    split_standardisation,
)
from securefl.deploy.messages import (
    BANK_INFO_DOMAIN,
    HELLO_DOMAIN,
    MODEL_DOMAIN,
    START_DOMAIN,
    BankInfo,
    ClientPayload,
    GlobalModel,
    Hello,
    ProtocolItem,
    RoundStart,
    Signed,
    SignedBankInfo,
)
from securefl.dp.bank_budget import caps_from_node_config
from securefl.errors import (
    ConfigError,
    DataError,
    SchemaPinError,
    SecureFLError,
    SignatureError,
    StateError,
)
from securefl.federation import Federation
from securefl.protocol import wire
from securefl.protocol.messages import UnmaskRequest, decode_message, encode_message
from securefl.protocol.round0 import check_round0_noise
from securefl.protocol.secagg import SecAggClient, Start
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.transport.policy import ByteMeter

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.dp.ledger import Draft
    from securefl.protocol.secagg import SecAggConfig
    from securefl.transport.flower import Envelope

__all__ = ["BankNode", "NodeMemo", "RoundMemo", "load_bank_csv", "load_bank_rows"]

log = logging.getLogger("securefl.deploy")


class RoundMemo(RedactedStruct, msgspec.Struct, forbid_unknown_fields=True):
    """One round in flight on this node (secret: stays in the node's context.state; the secret
    fields are redacted in every representation)."""

    __redacted__ = frozenset({"seed", "field_input", "ckks"})

    start: bytes  # msgpack RoundStart, signature already verified
    seed: bytes | None  # key-machine seed (None with the INSECURE simulation seed)
    field_input: bytes | None = None  # uint32 little-endian, once trained / computed
    received: list[bytes] = []  # server protocol messages, in order
    ckks: bytes | None = None  # aggregation ckks: the CKKS client's round state (ClientRoundState)
    #: SHA-256 of the signed GlobalModel body this bank trained from (SecAgg input binding)
    model_digest: bytes = bytes(32)


class NodeMemo(msgspec.Struct, forbid_unknown_fields=True):
    hello: bytes | None = None  # msgpack Hello, signature verified
    record_noise: float | None = None
    #: the key holder's SignedPublicContext of the latest CKKS round, verified for that round
    ckks_context: bytes | None = None
    rounds: dict[int, RoundMemo] = {}
    #: the banks whose signed BankInfo the session's first plan forwarded (their sizes fix the
    #: FedAvg weights; the set is fixed for the session). The draw does not depend on it: it is
    #: over the manifest's clients
    sized: list[str] = []
    #: the last round started in this session (each round runs once, in order)
    last_round: int = -1
    #: SHA-256 of the global weights this bank last trained from, and how many rounds in a row
    #: it trained from them (attempts at one input: at most MAX_ATTEMPTS)
    last_weights: bytes = b""
    attempts: int = 0
    #: the last round this bank was asked to unmask (a round that released its sum)
    last_unmasked: int = -1


def load_bank_csv(path: str | Path, label: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """A bank's own rows: a CSV with a header, numeric (already encoded) features and ``label``."""
    p = Path(path)
    try:
        with p.open("r", encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the bank data {p}: {exc}") from exc
    if label not in header:
        raise DataError(f"{p} has no label column {label!r}")
    if data.shape[1] != len(header) or data.shape[0] < 1:
        raise DataError(f"{p}: {data.shape[1]} values per row for {len(header)} columns")
    j = header.index(label)
    X = np.delete(data, j, axis=1).astype(np.float32)
    return X, data[:, j].astype(np.float32)


def pinned_schema(fed: Federation) -> str | None:
    """The data schema digest the signed manifest pins (``ProtocolParams.data_schema``, manifest
    version 3; None: none pinned)."""
    return fed.params.data_schema


def load_bank_rows(path: str | Path, label: str, schema_path: Path | None, pinned: str | None,
                   ) -> tuple[NDArray[np.float32], NDArray[np.float32], tuple[Any, ...]]:
    """A bank's own rows, its label and the imputations its schema asks for.

    With ``schema_path`` the raw table (strings, numeric strings, missing values) is encoded by
    that data schema, which must be the one the manifest pins (``pinned``: its digest;
    :class:`~securefl.errors.SchemaPinError` otherwise); rare categories fold at this bank. A
    manifest that pins a schema with no ``schema`` in the node config is refused too. Without
    either, the table is already numeric (:func:`load_bank_csv`)."""
    if schema_path is None:
        if pinned is not None:
            raise SchemaPinError(
                f"the federation manifest pins the data schema {pinned[:16]}... and this node "
                "has none", hint="add schema=PATH (the agreed schema file) to the node config")
        X, y = load_bank_csv(path, label)
        return X, y, ()
    from securefl.data.schema import encode, label_values, load_pinned_schema, read_cells

    schema = load_pinned_schema(schema_path, pinned)
    if schema.label != label:
        raise ConfigError(f"the node's label {label!r} is not the schema's {schema.label!r}")
    cells, _ = read_cells(path)
    labels, keep = label_values(cells, schema)
    enc = encode(cells, schema, keep)
    return enc.X.astype(np.float32), labels.astype(np.float32), enc.imputations


@dataclass(frozen=True)
class BankNode(NodeHandler):
    """One bank's node configuration (``--node-config`` of its SuperNode)."""

    insecure_seed_effect = "every key and mask of this bank is predictable"

    member: str
    key_path: Path
    manifest_path: Path
    data_path: Path
    label: str = "default"
    passphrase_file: Path | None = None
    #: INSECURE, tests only: derive every random stream like ``securefl run --seed``
    sim_seed: int | None = None
    #: the node-local key sealing this node's state (default ``<key>.state-key``; NodeHandler)
    state_key_file: Path | None = None
    #: where this bank persists the highest session counter it accepted (default ``<key>.state``)
    state_dir: Path | None = None
    #: the bank's own persistent privacy caps (securefl.dp.bank_budget.BankBudget; node config
    #: record-epsilon-cap / client-epsilon-cap / budget-dir), checked before every round
    budget: Any = None
    #: the data schema its raw table is encoded with (node config ``schema``; docs/data.md)
    schema_path: Path | None = None

    @property
    def session_dir(self) -> Path:
        """Where the highest accepted session counter is kept (``state-dir``)."""
        return self.state_dir or self.key_path.with_name(self.key_path.name + ".state")

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> BankNode:
        try:
            sd = cfg.get("state-dir")
            sp = cfg.get("schema")
            node = cls(**cls.common_config(cfg), data_path=Path(str(cfg["data-path"])),
                       label=str(cfg.get("label", "default")),
                       state_dir=Path(str(sd)) if sd else None,
                       schema_path=Path(str(sp)) if sp else None)
            # the budget ledger's mark lives next to the session counter
            return replace(node, budget=caps_from_node_config(cfg, node.member,
                                                              node.session_dir))
        except KeyError as exc:
            raise ConfigError(f"node config lacks {exc.args[0]!r}",
                              hint="--node-config 'member=... key=... manifest=... "
                                   "data-path=...'") from exc

    # -- the handler (NodeHandler.handle calls it) ---------------------------------------------------
    def _handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        """One message: returns (ClientPayload bytes, new NodeMemo bytes)."""
        fed, identity, msg, server_key = self._open(env)
        memo = wire.decode(state, NodeMemo) if state else NodeMemo()
        out: list[ProtocolItem] = []
        info: BankInfo | None = None
        info_signature: bytes | None = None
        drafts: list[Draft] = []
        clipped = False
        if msg.hello is not None:
            hello = self._verified(msg.hello, server_key, HELLO_DOMAIN, env.session, 0, Hello)
            if hello.federation != fed.digest or hello.session != env.session:
                raise SignatureError("the hello names another federation or session")
            if hello.plan.aggregation != fed.params.aggregation:
                raise ConfigError(f"the plan's aggregation {hello.plan.aggregation!r} is not the "
                                  f"manifest's {fed.params.aggregation!r}")
            _check_hello_plan(fed, hello)
            if hello.session != session_id(fed.digest, hello.counter):
                raise ServerFaultError("the session id is not derived from the manifest and the "
                                       f"session counter {hello.counter}")
            SessionCounter(self.session_dir, fed.digest,
                           fed.params.max_sessions).accept(hello.counter)
            memo = NodeMemo(hello=msg.hello.body)
            info, memo.record_noise = self._bank_info(fed, hello)
            info_signature = sign_bound(identity, domain=BANK_INFO_DOMAIN,
                                        session_id=hello.session, round_=0,
                                        message=wire.encode(info))
        hello = self._hello(memo)
        for item in msg.protocol:
            out += self._protocol(fed, identity, memo, hello, item)
        if msg.start is not None:
            try:
                start = self._verified(msg.start, server_key, START_DOMAIN, hello.session,
                                       _round_of(msg.start), RoundStart)
                out += self._start(fed, identity, memo, hello, start, msg.start.body,
                                   msg.banks)
            except SecureFLError as err:
                # refuse the new round only: the previous round's unmask above still goes out
                log.error("%s refused the plan of round %d: %s %s", self.member, env.round,
                          err.code, err.message)
                if not out:
                    raise
        if msg.model is not None:
            model = self._verified(msg.model, server_key, MODEL_DOMAIN, hello.session,
                                   _round_of_model(msg.model), GlobalModel)
            drafts, clipped, update = self._train(fed, memo, hello, model)
            if model.round in memo.rounds:  # the SecAgg survivor set is signed with this digest
                memo.rounds[model.round].model_digest = hashlib.sha256(msg.model.body).digest()
            out += self._submit(fed, identity, memo, hello, model.round, update)
        reply = ClientPayload(protocol=out, info=info, info_signature=info_signature,
                              drafts=drafts, clipped=clipped)
        return wire.encode(reply), wire.encode(memo)

    @staticmethod
    def _verified(signed: Signed, key: Any, domain: str, session: bytes, round_: int,
                  typ: type[Any]) -> Any:
        verify_bound(key, signed.signature, domain=domain, session_id=session, round_=round_,
                     message=signed.body)
        return wire.decode(signed.body, typ)

    @staticmethod
    def _hello(memo: NodeMemo) -> Hello:
        if memo.hello is None:
            raise StateError("no verified hello yet in this run")
        out: Hello = wire.decode(memo.hello, Hello)
        return out

    def _rows(self, fed: Federation) -> tuple[NDArray[np.float32], NDArray[np.float32],
                                              tuple[Any, ...]]:
        return load_bank_rows(self.data_path, self.label, self.schema_path, pinned_schema(fed))

    def _bank_info(self, fed: Federation, hello: Hello) -> tuple[BankInfo, float | None]:
        X, y, _ = self._rows(fed)
        plan = hello.plan
        target_log2 = None
        if plan.task == "regression":
            target_log2 = int(np.ceil(np.log2(max(float(np.max(np.abs(y))), 1.0))))
        z0 = plan.stats_noise_multiplier
        check_round0_noise(z0, plan.dp)  # 0 without DP, >= MIN_NOISED_Z with it (S7b-1)
        if z0 > 0:  # a bound from public facts only (securefl.protocol.round0)
            from securefl.protocol.round0 import norm_log2_bound

            dim = 1 + 2 * (X.shape[1] + (target_log2 is not None))
            norm_log2 = norm_log2_bound(int(X.shape[0]), dim, z0)
        else:
            # the server's scale is >= this bank's, so the round-0 vector's norm is at most this
            norm = float(np.linalg.norm(round0_input(X, y, target_log2)))
            norm_log2 = int(np.ceil(np.log2(max(norm, 1.0))))
        z: float | None = None
        if plan.dp:
            if plan.record_noise_multiplier is not None:
                z = plan.record_noise_multiplier
            else:
                from securefl.dp.accountants import calibrate_noise
                from securefl.dp.dpsgd import dpsgd_schedule
                from securefl.dp.events import GaussianEvent

                # the round-0 statistics are the same rows: the target covers both (as
                # securefl run calibrates)
                steps, q = dpsgd_schedule(X.shape[0], plan.batch_size, plan.local_epochs)
                z = calibrate_noise(plan.record_epsilon, plan.delta, plan.rounds, q, "rdp",
                                    steps_per_round=steps,
                                    spent=[GaussianEvent(noise_multiplier=z0)])
        return BankInfo(n_train=int(X.shape[0]), n_features=int(X.shape[1]),
                        moments_norm_log2=norm_log2,
                        record_noise_multiplier=z, target_abs_log2=target_log2), z

    # -- rounds -------------------------------------------------------------------------------------
    def _check_plan(self, fed: Federation, start: RoundStart, session: bytes) -> None:
        p = fed.params
        if start.session != session:
            raise SignatureError("round plan for another session")
        if self.member not in start.participants:
            raise ConfigError(f"{self.member!r} is not a participant of round {start.round}")
        if start.task == "train" and self.member not in start.weights:
            raise ConfigError(f"round {start.round}: no FedAvg weight for {self.member!r}")
        # The manifest's threshold is a hard floor on every released sum: a server that shrank a
        # round to fewer banks (by declaring the others silent) could otherwise isolate one bank's
        # update together with a single colluding bank.
        if len(start.participants) < p.threshold:
            raise ConfigError(f"round {start.round} has {len(start.participants)} participants, "
                              f"fewer than the manifest's threshold {p.threshold}")
        if start.threshold < p.threshold or start.min_survivors < p.threshold:
            raise ConfigError(f"round {start.round}: threshold {start.threshold} is below the "
                              f"manifest's {p.threshold}")
        if start.task == "train" and (start.clip_norm > p.clip_norm * (1 + 1e-12)
                                      or start.noise_multiplier < p.noise_multiplier):
            raise ConfigError(f"round {start.round}: clip norm or noise weaker than the "
                              "manifest's")
        if start.min_survivors > len(start.participants):
            raise ConfigError(f"round {start.round}: min_survivors {start.min_survivors} must be "
                              f"in [threshold, participants = {len(start.participants)}]")
        if (start.task == "moments") != (start.round == 0):
            raise ConfigError(f"round {start.round}: task {start.task!r}; the noiseless moments "
                              "are summed at round 0 only")
        # round 0 (noiseless moments) is classic SecAgg, the complete graph with t = T, so that
        # two releases over different sets cannot each find enough revealers (spec 12.1, S6b-2);
        # training rounds use the manifest's degree (None: both derive it from its assumptions)
        want = len(start.participants) - 1 if start.task == "moments" else p.neighbours
        if start.degree != want:
            raise ConfigError(f"round {start.round}: graph degree {start.degree}, expected {want} "
                              "(round 0: the complete graph; later rounds: the manifest's, None: "
                              "derived from its assumptions)")
        if start.task == "train" and start.precision_bits != p.precision_bits:
            raise ConfigError(f"round {start.round}: field precision {start.precision_bits} bits, "
                              f"the manifest says {p.precision_bits}")

    @staticmethod
    def _config(fed: Federation, rm: RoundMemo, hello_body: bytes) -> SecAggConfig:
        """The round's SecAgg configuration, from its verified plan (``rm.start``)."""
        start: RoundStart = wire.decode(rm.start, RoundStart)
        spec = round_spec(start, bank_ids(fed), hashlib.sha256(hello_body).digest(), fed.params)
        enc, threshold = encoding_for(start, spec)
        return secagg_config(start, spec, enc, threshold, fed)

    def _machine(self, fed: Federation, identity: SigningKey, hello: Hello, rm: RoundMemo,
                 hello_body: bytes) -> tuple[SecAggClient, list[Any]]:
        """The round's SecAgg client machine after Start and every message in ``rm.received``;
        also returns Start's output (the advertise message, re-derived identically)."""
        start: RoundStart = wire.decode(rm.start, RoundStart)
        ids = bank_ids(fed)
        cfg = self._config(fed, rm, hello_body)
        cid = ids[self.member]
        x = (np.frombuffer(rm.field_input, dtype="<u4").astype(np.uint32)
             if rm.field_input is not None else np.zeros(start.dim, dtype=np.uint32))
        client = SecAggClient(cfg, identity_roster(fed, hello.session), cid, identity, x,
                              randomness(self.sim_seed, hello.session, start.round, cid, "keys",
                                         rm.seed, sim_stream=hello.sim_stream),
                              input_binding=rm.model_digest)
        first = client.receive(Start())
        for data in rm.received:
            client.receive(decode_message(data))
        return client, first

    def _check_draw(self, fed: Federation, memo: NodeMemo, hello: Hello, start: RoundStart,
                    banks: list[SignedBankInfo]) -> None:
        """The plan against the public randomness and the banks' own signatures (spec section
        12.1): every forwarded BankInfo signed by its bank's manifest key for this session, the
        forwarded set fixed by the session's first plan and holding this bank's own; the
        participants exactly the draw of (session, round) over the manifest's clients (whoever
        the server reports silent or without a size: those stay drawn as SecAgg dropouts); the
        threshold and min_survivors the ones the manifest fixes (:func:`check_plan_threshold`); a
        FedAvg weight n_i / max n of the signed sizes for exactly the participants with one.
        ServerFaultError (SignatureError for a forged BankInfo) otherwise."""
        sizes: dict[str, int] = {}
        for sb in banks:
            if sb.member in sizes or sb.member not in fed.clients:
                raise ServerFaultError(f"round {start.round}: the plan forwards a BankInfo for "
                                       f"{sb.member!r} twice or outside the manifest")
            verify_bound(fed.verify_key(sb.member), sb.signature, domain=BANK_INFO_DOMAIN,
                         session_id=hello.session, round_=0, message=wire.encode(sb.info))
            sizes[sb.member] = sb.info.n_train
        sized = [b for b in fed.clients if b in sizes]
        if memo.sized and sized != memo.sized:
            raise ServerFaultError(
                f"round {start.round}: the plan forwards the signed sizes of {sized[:8]}, not "
                f"{memo.sized[:8]} as earlier in this session: the sizes are fixed for the "
                "session")
        if self.member not in sizes:
            raise ServerFaultError(f"round {start.round}: the plan does not forward this bank's "
                                   "signed size; without it this bank contributes nothing")
        q = hello.plan.clients_per_round if start.task == "train" else 1.0
        want = public_draw(fed, hello.session, start.round, q)
        if start.participants != want:
            raise ServerFaultError(
                f"round {start.round}: participants {start.participants[:8]} are not the "
                f"public draw {want[:8]} of (manifest, session, round)")
        # T and min_survivors follow from the manifest and this plan: no server choice of T,
        # hence of the SecAgg+ graph (spec section 12.1, S6b-4)
        check_plan_threshold(fed.params, start, sizes)
        if start.task == "train":
            w = fedavg_weights(sizes)
            weighted = [p for p in start.participants if p in sizes]
            bad = [p for p in start.participants if start.weights.get(p) != w.get(p)]
            if bad or sorted(start.weights) != sorted(weighted):
                raise ServerFaultError(
                    f"round {start.round}: the FedAvg weights of {bad[:5]} are not n_i / max n of "
                    "the sizes the banks signed")

    def _start(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
               start: RoundStart, body: bytes, banks: list[SignedBankInfo]
               ) -> list[ProtocolItem]:
        if start.round <= memo.last_round or start.round > hello.plan.rounds:
            raise ServerFaultError(f"round {start.round}: this session's rounds run once each, "
                                   f"in order, up to the plan's {hello.plan.rounds} (last started "
                                   f"here: {memo.last_round})")
        self._check_plan(fed, start, hello.session)
        self._check_draw(fed, memo, hello, start, banks)
        memo.sized = [b for b in fed.clients if b in {sb.member for sb in banks}]
        memo.last_round = start.round
        seed = None if self.sim_seed is not None else SystemRandomSource().random_bytes(32)
        rm = RoundMemo(start=body, seed=seed)
        memo.rounds[start.round] = rm
        if hello.plan.aggregation == "ckks":
            for old in [r for r in memo.rounds if r < start.round]:
                del memo.rounds[old]  # an earlier round this bank did not verify: over
            if start.task == "moments":
                return self._submit(fed, identity, memo, hello, start.round,
                                    self._round0_input(fed, hello, start))
            return []  # the commitment follows the global model in the same payload
        if start.task == "moments":
            rm.field_input = self._encode(fed, hello, start, self._round0_input(fed, hello, start))
        _, first = self._machine(fed, identity, hello, rm, _hello_body(memo))
        return [ProtocolItem(round=start.round, data=encode_message(m)) for m in first]

    def _round0_input(self, fed: Federation, hello: Hello, start: RoundStart) -> NDArray[np.float64]:
        """The moments this bank adds to round 0 (features; regression: also the scaled target,
        at the scale the signed plan names)."""
        if (hello.plan.task == "regression") != (start.target_scale_log2 is not None):
            raise ConfigError("round 0 must carry a target scale exactly for regression")
        X, y, _ = self._rows(fed)
        z = hello.plan.stats_noise_multiplier
        if z <= 0:
            self._charge_round0(hello, start, [], noised=False)
            return round0_input(X, y, start.target_scale_log2)
        from securefl.protocol import round0

        ranges = np.asarray(start.stats_ranges, dtype=np.float64).reshape(-1, 2)
        groups: tuple[tuple[int, ...], ...] = tuple(tuple(g) for g in start.stats_groups)
        cols = np.asarray(X, dtype=np.float64)
        if start.target_scale_log2 is not None:
            ranges, groups = round0.with_target(ranges, groups)
            cols = np.column_stack([cols, np.asarray(y, dtype=np.float64)
                                    / 2.0 ** start.target_scale_log2])
        sens = round0.check_groups(cols, ranges, groups)
        # the fewest survivors a released round-0 sum holds: its SecAgg threshold, at least the
        # manifest's (checked in _check_plan), less the manifest's colluders (NoisePlan)
        survivors = min(start.threshold, start.min_survivors)
        std = round0.share_std(z, sens, survivors, fed.params.colluders)
        cid = bank_ids(fed)[self.member]
        # Each noised round 0 draws fresh noise and is a new release, charged to this bank's caps.
        # Reusing the vector of an earlier identical round 0 was tried (S7b-5) and let other
        # differences isolate one bank's own noise share (S7c-1, S7c-3): a bank's spending across
        # sessions is bounded by its caps (spec 12.1).
        self._charge_round0(hello, start, round0.stats_drafts(
            [self.member], z, sens, "os_csprng" if self.sim_seed is None else "seeded_chacha20"),
            noised=True)
        return round0.noised_moments(
            cols, ranges, std, randomness(self.sim_seed, hello.session, 0, cid, "stats-noise",
                                          sim_stream=hello.sim_stream))

    def _charge_round0(self, hello: Hello, start: RoundStart, drafts: list[Draft], *,
                       noised: bool) -> None:
        """The bank's own caps (securefl.dp.bank_budget.charge_round) count round 0's release: a
        record-level Gaussian event, or a refusal of a noiseless release under a record cap. The
        client-level ledger covers the training rounds' sums only (docs/data.md)."""
        from securefl.dp.bank_budget import charge_round

        if self.budget is not None:
            charge_round(self.budget, drafts, session=hello.session, round_=start.round,
                         record_noise=noised, client_noise=True)

    def _submit(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
                round_: int, x: NDArray[np.float64]) -> list[ProtocolItem]:
        """This bank's (clipped, weighted) input enters the round: SecAgg encodes it and answers
        the roster that waited for it; CKKS noises, encrypts and commits to it."""
        rm = memo.rounds[round_]
        start: RoundStart = wire.decode(rm.start, RoundStart)
        if hello.plan.aggregation == "ckks":
            from securefl.deploy.ckks import bank_commit, hello_digest

            if memo.ckks_context is None:
                raise StateError("no public CKKS context from the key holder yet")
            if x.size != start.dim:
                raise ConfigError(f"round {round_}: input of length {x.size}, plan says "
                                  f"{start.dim}")
            rm.ckks, item = bank_commit(fed=fed, identity=identity, member=self.member,
                                        context=memo.ckks_context,
                                        hello=hello_digest(_hello_body(memo)), start=start,
                                        values=x,
                                        sim_seed=self.sim_seed,
                                        # the RoundStart body every bank verified alike (round
                                        # 0's stats ranges and groups too) and the signed model
                                        # this bank trained from (S8-1)
                                        signed_plan=rm.start, model_digest=rm.model_digest)
            return [item]
        rm.field_input = self._encode(fed, hello, start, x)
        return self._step(fed, identity, memo, hello, round_)  # the roster waited for the input

    def _encode(self, fed: Federation, hello: Hello, start: RoundStart,
                x: NDArray[np.float64]) -> bytes:
        ids = bank_ids(fed)
        spec = round_spec(start, ids, params=fed.params)
        if x.size != start.dim:
            raise ConfigError(f"round {start.round}: input of length {x.size}, plan says "
                              f"{start.dim}")
        enc, _ = encoding_for(start, spec)
        cid = ids[self.member]
        r = start.round
        field = encode_input(x, spec, enc,
                             randomness(self.sim_seed, hello.session, r, cid, "rounding",
                                        sim_stream=hello.sim_stream),
                             randomness(self.sim_seed, hello.session, r, cid, "noise",
                                        sim_stream=hello.sim_stream))
        return field.astype("<u4").tobytes()

    def _train(self, fed: Federation, memo: NodeMemo, hello: Hello, model: GlobalModel
               ) -> tuple[list[Draft], bool, NDArray[np.float64]]:
        """Local training from the signed global model (DP-SGD when the plan says so), clipped to
        C and scaled by the public FedAvg weight: the client API's Bank.update, as in a simulation
        (securefl.bank)."""
        from securefl.bank import Bank, LocalPlan
        from securefl.fl.models import build_model
        from securefl.fl.train import loss_function

        rm = memo.rounds.get(model.round)
        if rm is None or rm.field_input is not None or rm.ckks is not None:
            raise StateError(f"a model for round {model.round}, which is not awaiting one")
        # an aborted round leaves the model unchanged and the next round retries it: each retry
        # is a new round and graph for the same input, so the attempts at one model are bounded
        digest = hashlib.sha256(model.weights).digest()
        memo.attempts = next_attempt(model.round, digest, memo.last_weights, memo.attempts)
        memo.last_weights = digest
        # the same bound whatever the model: rounds since the last unmask in which this bank sent
        # a masked input that was never unmasked (each one put an input under a fresh graph; a
        # model moved by one ULP per retry would otherwise reset the count). The previous round
        # may still await its pipelined unmask.
        check_pending(model.round, [r for r, m in memo.rounds.items()
                                    if memo.last_unmasked < r < model.round - 1
                                    and m.field_input is not None])
        start: RoundStart = wire.decode(rm.start, RoundStart)
        plan = hello.plan
        X, y, imputations = self._rows(fed)
        self._charge_budget(fed, hello, start, X.shape[0], memo.record_noise)
        stdz, target = split_standardisation(np.asarray(model.moments_total),
                                             model.target_scale_log2, imputations)
        if imputations:
            from securefl.data.schema import apply_fills

            fills = round0_fills(np.asarray(model.moments_total), model.target_scale_log2,
                                 imputations)
            X = apply_fills(X, imputations, fills).astype(np.float32)
        if (plan.task == "regression") != (target is not None):
            raise ConfigError("the global model must carry a target scale exactly for regression")
        X = stdz.transform(X)
        if target is not None:
            y = target.transform(y)
        weights = np.frombuffer(model.weights, dtype="<f8").astype(np.float64)
        net = build_model(plan.model, X.shape[1], tuple(plan.hidden))
        cid = bank_ids(fed)[self.member]
        seed = int.from_bytes(randomness(self.sim_seed, hello.session, model.round, cid, "train",
                                         sim_stream=hello.sim_stream).random_bytes(8), "big") >> 1
        bank = Bank(self.member, X, y, task=plan.task, loss=loss_function(plan.task, plan.loss))
        local = LocalPlan(round=model.round, clip_norm=start.clip_norm,
                          weight=start.weights[self.member], epochs=plan.local_epochs,
                          batch_size=plan.batch_size, lr=plan.lr, optimizer=plan.optimizer,
                          record_noise_multiplier=memo.record_noise,
                          record_clip=plan.record_clip, prox_mu=plan.prox_mu,
                          deployed=self.sim_seed is None)  # OS CSPRNG DP-SGD noise
        update = bank.update(net, weights, local, seed=seed)
        return list(update.drafts), update.clipped, update.vector

    def _charge_budget(self, fed: Federation, hello: Hello, start: RoundStart, n_rows: int,
                       record_noise: float | None) -> None:
        """The bank's own caps (securefl.dp.bank_budget), whatever the server enforces: charge
        this round's planned events (its DP-SGD, the client-level sum as the manifest's colluders
        see it) before its update leaves; BudgetExceededError refuses the round."""
        from securefl.dp.bank_budget import charge_round, planned_round_drafts

        if self.budget is None:
            return
        if not hello.plan.dp:  # no noise at either level: a bank with a cap refuses the round
            charge_round(self.budget, [], session=hello.session, round_=start.round,
                         record_noise=False, client_noise=False)
        from securefl.dp.dpsgd import DpSgdRun, dpsgd_schedule

        plan = hello.plan
        spec = round_spec(start, bank_ids(fed), params=fed.params)
        steps, q = dpsgd_schedule(n_rows, plan.batch_size, plan.local_epochs)
        record = (DpSgdRun(steps, q, record_noise, plan.record_clip, "planned")
                  if record_noise is not None else None)
        drafts = planned_round_drafts(
            bank=self.member, round_=start.round, record=record, noise=spec.noise,
            n_participants=len(start.participants), clip_norm=start.clip_norm,
            colluders=fed.params.colluders, dim=start.dim,
            encoding=encoding_for(start, spec)[0] if plan.aggregation == "secagg" else None)
        charge_round(self.budget, drafts, session=hello.session, round_=start.round,
                     record_noise=record is not None, client_noise=spec.noise is not None
                     and spec.noise.noise_multiplier > 0)

    def _protocol(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
                  item: ProtocolItem) -> list[ProtocolItem]:
        if hello.plan.aggregation == "ckks":
            return self._ckks_protocol(fed, identity, memo, hello, item)
        rm = memo.rounds.get(item.round)
        if rm is None:
            raise StateError(f"a protocol message for round {item.round}, not in flight here")
        # the round's byte cap across messages (protocol.secagg.limits, from_server): the round's
        # server messages are kept in the sealed memo, so the count survives between ClientApp
        # processes; a message past the plan's limit is refused before it is decoded
        meter = ByteMeter(round_byte_limits(self._config(fed, rm, _hello_body(memo))
                                            ).from_server, self.member)
        for data in (*rm.received, item.data):
            meter.take("the server", len(data))
        rm.received.append(item.data)
        start: RoundStart = wire.decode(rm.start, RoundStart)
        if start.task == "train" and rm.field_input is None:
            return []  # the roster waits for the global model in the same payload
        return self._step(fed, identity, memo, hello, item.round)

    def _ckks_protocol(self, fed: Federation, identity: SigningKey, memo: NodeMemo,
                       hello: Hello, item: ProtocolItem) -> list[ProtocolItem]:
        """CKKS: the key holder's public context for this session and the item's round (kept
        for that round's plan: a bank encrypts only under the context of the round it answers),
        a CommitmentSet (reveal) or a VerifyRequest (recompute the sum and co-sign; the round is
        then over here)."""
        from securefl.deploy.ckks import bank_round_context, bank_step, hello_digest

        # refuses another round's, and a key bound to another signed plan than this bank's
        mine = hello_digest(_hello_body(memo))
        context = bank_round_context(fed, item, hello.session, mine)
        if context is not None:
            memo.ckks_context = context
            return []
        if memo.ckks_context is None:
            raise StateError("no public CKKS context from the key holder yet")
        rm = memo.rounds.get(item.round)
        if rm is None or rm.ckks is None:
            raise StateError(f"a CKKS message for round {item.round}, not committed here")
        start: RoundStart = wire.decode(rm.start, RoundStart)
        state, out = bank_step(fed=fed, identity=identity, member=self.member,
                               context=memo.ckks_context, hello=mine, start=start,
                               state=rm.ckks,
                               data=item.data, verifiers=hello.plan.ckks_verifiers,
                               verifier_skips=hello.plan.ckks_verifier_skips,
                               round0=Round0Survivors(
                                   self.session_dir, fed,
                                   noiseless=not hello.plan.dp))
        if state is None:
            del memo.rounds[item.round]
        else:
            rm.ckks = state
        return out

    def _step(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
              round_: int) -> list[ProtocolItem]:
        """Replay all but the newest message, then answer the newest one."""
        rm = memo.rounds[round_]
        newest = rm.received[-1]
        replay = RoundMemo(start=rm.start, seed=rm.seed, field_input=rm.field_input,
                           received=rm.received[:-1], model_digest=rm.model_digest)
        client, _ = self._machine(fed, identity, hello, replay, _hello_body(memo))
        msg = decode_message(newest)
        out = client.receive(msg)
        if isinstance(msg, UnmaskRequest) and \
                wire.decode(rm.start, RoundStart).task == "moments":
            # round 0 (exact without DP): reveal only over the survivor set of the first
            # round-0 release (verified by the machine above: alive = the signed U3)
            names = {i: n for n, i in bank_ids(fed).items()}
            Round0Survivors(self.session_dir, fed,
                            noiseless=not hello.plan.dp).check_and_record(
                round_, [names[i] for i in msg.alive])
        if isinstance(msg, UnmaskRequest):
            del memo.rounds[round_]  # the round is over for this bank: forget its secrets
            memo.last_unmasked = max(memo.last_unmasked, round_)
        return [ProtocolItem(round=round_, data=encode_message(m)) for m in out]


def _check_hello_plan(fed: Federation, hello: Hello) -> None:
    """The signed plan's round count within the manifest's max_rounds and its client fraction
    the manifest's: neither is the server's choice (spec section 12.1)."""
    p = fed.params
    if hello.plan.rounds > p.max_rounds:
        raise ServerFaultError(f"the plan runs {hello.plan.rounds} rounds, above the manifest's "
                               f"max_rounds = {p.max_rounds} (the round numbers a server may "
                               "choose among enter the graph bound, spec section 12.1)")
    if hello.plan.clients_per_round != p.clients_per_round:
        raise ServerFaultError(f"the plan draws clients_per_round = "
                               f"{hello.plan.clients_per_round}, the manifest says "
                               f"{p.clients_per_round}")


def _hello_body(memo: NodeMemo) -> bytes:
    """The signed Hello body this node verified (its SHA-256 is bound into every SecAgg plan)."""
    if memo.hello is None:
        raise StateError("no verified hello yet in this run")
    return memo.hello


def _round_of(signed: Signed) -> int:
    """The round a signed RoundStart claims (the signature then binds it)."""
    start: RoundStart = wire.decode(signed.body, RoundStart)
    return start.round


def _round_of_model(signed: Signed) -> int:
    model: GlobalModel = wire.decode(signed.body, GlobalModel)
    return model.round
