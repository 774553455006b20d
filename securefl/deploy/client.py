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

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl.crypto.random import SystemRandomSource
from securefl.crypto.signing import SigningKey, verify_bound
from securefl.deploy.common import (
    bank_ids,
    encode_input,
    encoding_for,
    protocol_federation,
    randomness,
    round_spec,
    secagg_config,
)
from securefl.deploy.messages import (
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
    decode_server,
)
from securefl.errors import ConfigError, DataError, SecureFLError, SignatureError, StateError
from securefl.federation import Federation, load_manifest, load_signing_key, verify_manifest
from securefl.protocol import wire
from securefl.protocol.messages import UnmaskRequest, decode_message, encode_message
from securefl.protocol.secagg import SecAggClient, Start

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.dp.ledger import Draft
    from securefl.transport.flower import Envelope

__all__ = ["BankNode", "NodeMemo", "RoundMemo", "load_bank_csv"]

log = logging.getLogger("securefl.deploy")


class RoundMemo(msgspec.Struct, forbid_unknown_fields=True):
    """One round in flight on this node (secret: stays in the node's context.state)."""

    start: bytes  # msgpack RoundStart, signature already verified
    seed: bytes | None  # key-machine seed (None with the INSECURE simulation seed)
    field_input: bytes | None = None  # uint32 little-endian, once trained / computed
    received: list[bytes] = []  # server protocol messages, in order


class NodeMemo(msgspec.Struct, forbid_unknown_fields=True):
    hello: bytes | None = None  # msgpack Hello, signature verified
    record_noise: float | None = None
    rounds: dict[int, RoundMemo] = {}


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


@dataclass(frozen=True)
class BankNode:
    """One bank's node configuration (``--node-config`` of its SuperNode)."""

    member: str
    key_path: Path
    manifest_path: Path
    data_path: Path
    label: str = "default"
    passphrase_file: Path | None = None
    #: INSECURE, tests only: derive every random stream like ``securefl run --seed``
    sim_seed: int | None = None

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> BankNode:
        try:
            pf = cfg.get("passphrase-file")
            seed = cfg.get("insecure-sim-seed")
            return cls(member=str(cfg["member"]), key_path=Path(str(cfg["key"])),
                       manifest_path=Path(str(cfg["manifest"])),
                       data_path=Path(str(cfg["data-path"])),
                       label=str(cfg.get("label", "default")),
                       passphrase_file=Path(str(pf)) if pf else None,
                       sim_seed=int(seed) if seed not in (None, "") else None)
        except KeyError as exc:
            raise ConfigError(f"node config lacks {exc.args[0]!r}",
                              hint="--node-config 'member=... key=... manifest=... "
                                   "data-path=...'") from exc

    # -- identity ---------------------------------------------------------------------------------
    def federation(self) -> Federation:
        """The manifest, verified: every member signed it (SignatureError otherwise)."""
        return verify_manifest(load_manifest(self.manifest_path))

    def identity(self, fed: Federation) -> SigningKey:
        """This node's identity key; SignatureError unless the manifest lists it for ``member``."""
        pw = self.passphrase_file.read_bytes().strip() if self.passphrase_file else None
        key = load_signing_key(self.key_path, pw)
        if self.member not in fed.clients:
            raise SignatureError(f"{self.member!r} is not a client of federation "
                                 f"{fed.federation_id!r}")
        if key.verify_key != fed.verify_key(self.member):
            raise SignatureError(f"this node's identity key {key.verify_key.fingerprint()} is not "
                                 f"the key the manifest lists for {self.member!r}")
        return key

    # -- the handler --------------------------------------------------------------------------------
    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        """One message: returns (ClientPayload bytes, new NodeMemo bytes). Errors are logged with
        their code and re-raised (the server then counts this bank as a dropout)."""
        if self.sim_seed is not None:
            log.warning("%s: INSECURE simulation seed in use: every key and mask of this bank is "
                        "predictable (tests only)", self.member)
        try:
            return self._handle(env, state)
        except SecureFLError as err:
            log.error("%s refused round %d stage %s: %s %s", self.member, env.round, env.stage,
                      err.code, err.message)
            raise

    def _handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        fed = self.federation()
        if env.federation != fed.digest:
            raise SignatureError("message for another federation manifest")
        identity = self.identity(fed)
        memo = wire.decode(state, NodeMemo) if state else NodeMemo()
        msg = decode_server(env.payload)
        server_key = fed.verify_key(fed.server)
        out: list[ProtocolItem] = []
        info: BankInfo | None = None
        drafts: list[Draft] = []
        clipped = False
        if msg.hello is not None:
            hello = self._verified(msg.hello, server_key, HELLO_DOMAIN, env.session, 0, Hello)
            if hello.federation != fed.digest or hello.session != env.session:
                raise SignatureError("the hello names another federation or session")
            memo = NodeMemo(hello=msg.hello.body)
            info, memo.record_noise = self._bank_info(hello)
        hello = self._hello(memo)
        for item in msg.protocol:
            out += self._protocol(fed, identity, memo, hello, item)
        if msg.start is not None:
            try:
                start = self._verified(msg.start, server_key, START_DOMAIN, hello.session,
                                       _round_of(msg.start), RoundStart)
                out += self._start(fed, identity, memo, hello, start, msg.start.body)
            except SecureFLError as err:
                # refuse the new round only: the previous round's unmask above still goes out
                log.error("%s refused the plan of round %d: %s %s", self.member, env.round,
                          err.code, err.message)
                if not out:
                    raise
        if msg.model is not None:
            model = self._verified(msg.model, server_key, MODEL_DOMAIN, hello.session,
                                   _round_of_model(msg.model), GlobalModel)
            drafts, clipped = self._train(fed, memo, hello, model)
            out += self._protocol_pending(fed, identity, memo, hello, model.round)
        reply = ClientPayload(protocol=out, info=info, drafts=drafts, clipped=clipped)
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

    def _bank_info(self, hello: Hello) -> tuple[BankInfo, float | None]:
        from securefl.data.standardize import moments

        X, _ = load_bank_csv(self.data_path, self.label)
        norm = float(np.linalg.norm(moments(X)))
        plan = hello.plan
        z: float | None = None
        if plan.dp:
            if plan.record_noise_multiplier is not None:
                z = plan.record_noise_multiplier
            else:
                from securefl.dp.accountants import calibrate_noise
                from securefl.dp.dpsgd import dpsgd_schedule

                steps, q = dpsgd_schedule(X.shape[0], plan.batch_size, plan.local_epochs)
                z = calibrate_noise(plan.record_epsilon, plan.delta, plan.rounds, q, "rdp",
                                    steps_per_round=steps)
        return BankInfo(n_train=int(X.shape[0]), n_features=int(X.shape[1]),
                        moments_norm_log2=int(np.ceil(np.log2(max(norm, 1.0)))),
                        record_noise_multiplier=z), z

    # -- rounds -------------------------------------------------------------------------------------
    def _check_plan(self, fed: Federation, start: RoundStart, session: bytes) -> None:
        p = fed.params
        if start.session != session:
            raise SignatureError("round plan for another session")
        if self.member not in start.participants:
            raise ConfigError(f"{self.member!r} is not a participant of round {start.round}")
        if start.task == "train" and self.member not in start.weights:
            raise ConfigError(f"round {start.round}: no FedAvg weight for {self.member!r}")
        floor = min(p.threshold, len(start.participants))
        if start.threshold < floor or start.min_survivors < min(floor, start.threshold):
            raise ConfigError(f"round {start.round}: threshold {start.threshold} is below the "
                              f"manifest's {p.threshold}")
        if start.task == "train" and (start.clip_norm > p.clip_norm * (1 + 1e-12)
                                      or start.noise_multiplier < p.noise_multiplier):
            raise ConfigError(f"round {start.round}: clip norm or noise weaker than the "
                              "manifest's")

    def _machine(self, fed: Federation, identity: SigningKey, hello: Hello, rm: RoundMemo
                 ) -> tuple[SecAggClient, list[Any]]:
        """The round's SecAgg client machine after Start and every message in ``rm.received``;
        also returns Start's output (the advertise message, re-derived identically)."""
        start: RoundStart = wire.decode(rm.start, RoundStart)
        ids = bank_ids(fed)
        spec = round_spec(start, ids)
        enc, threshold = encoding_for(start, spec)
        cfg = secagg_config(start, spec, enc, threshold)
        cid = ids[self.member]
        x = (np.frombuffer(rm.field_input, dtype="<u4").astype(np.uint32)
             if rm.field_input is not None else np.zeros(start.dim, dtype=np.uint32))
        client = SecAggClient(cfg, protocol_federation(fed, hello.session), cid, identity, x,
                              randomness(self.sim_seed, hello.session, start.round, cid, "keys",
                                         rm.seed))
        first = client.receive(Start())
        for data in rm.received:
            client.receive(decode_message(data))
        return client, first

    def _start(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
               start: RoundStart, body: bytes) -> list[ProtocolItem]:
        self._check_plan(fed, start, hello.session)
        if start.round in memo.rounds:
            raise StateError(f"round {start.round} was already started on this node")
        seed = None if self.sim_seed is not None else SystemRandomSource().random_bytes(32)
        rm = RoundMemo(start=body, seed=seed)
        if start.task == "moments":
            from securefl.data.standardize import moments

            X, _ = load_bank_csv(self.data_path, self.label)
            rm.field_input = self._encode(fed, hello, start, moments(X))
        memo.rounds[start.round] = rm
        _, first = self._machine(fed, identity, hello, rm)
        return [ProtocolItem(round=start.round, data=encode_message(m)) for m in first]

    def _encode(self, fed: Federation, hello: Hello, start: RoundStart,
                x: NDArray[np.float64]) -> bytes:
        ids = bank_ids(fed)
        spec = round_spec(start, ids)
        if x.size != start.dim:
            raise ConfigError(f"round {start.round}: input of length {x.size}, plan says "
                              f"{start.dim}")
        enc, _ = encoding_for(start, spec)
        cid = ids[self.member]
        r = start.round
        field = encode_input(x, spec, enc,
                             randomness(self.sim_seed, hello.session, r, cid, "rounding"),
                             randomness(self.sim_seed, hello.session, r, cid, "noise"))
        return field.astype("<u4").tobytes()

    def _train(self, fed: Federation, memo: NodeMemo, hello: Hello, model: GlobalModel
               ) -> tuple[list[Draft], bool]:
        """Local training from the signed global model (DP-SGD when the plan says so), clip to
        C, scale by the public FedAvg weight, encode (securefl.runtime.Engine._local_updates)."""
        import torch

        from securefl.data.standardize import Standardizer
        from securefl.fl.models import build_model
        from securefl.fl.params import get_flat, set_flat
        from securefl.fl.train import LocalTrainSpec, local_train, loss_function

        rm = memo.rounds.get(model.round)
        if rm is None or rm.field_input is not None:
            raise StateError(f"a model for round {model.round}, which is not awaiting one")
        start: RoundStart = wire.decode(rm.start, RoundStart)
        plan = hello.plan
        X, y = load_bank_csv(self.data_path, self.label)
        X = Standardizer.from_summed_moments(np.asarray(model.moments_total)).transform(X)
        weights = np.frombuffer(model.weights, dtype="<f8").astype(np.float64)
        net = build_model(plan.model, X.shape[1], tuple(plan.hidden))
        set_flat(net, weights)
        cid = bank_ids(fed)[self.member]
        seed = int.from_bytes(randomness(self.sim_seed, hello.session, model.round, cid, "train")
                              .random_bytes(8), "big") >> 1
        drafts: list[Draft] = []
        if memo.record_noise is not None:
            from securefl.dp.dpsgd import dp_train_epochs

            state, dp_run = dp_train_epochs(
                net, torch.from_numpy(X), torch.from_numpy(y),
                loss_fn=loss_function(plan.task, plan.loss), epochs=plan.local_epochs,
                batch_size=plan.batch_size, lr=plan.lr, optimizer=plan.optimizer,
                noise_multiplier=memo.record_noise, max_grad_norm=plan.record_clip,
                random_seed=seed)
            net.load_state_dict(state)
            drafts.append(dp_run.draft(round=model.round, bank=self.member))
        else:
            spec = LocalTrainSpec(task=plan.task, loss=plan.loss, epochs=plan.local_epochs,
                                  batch_size=plan.batch_size, lr=plan.lr,
                                  optimizer=plan.optimizer, prox_mu=plan.prox_mu)
            local_train(net, X, y, spec, seed=seed)
        delta = get_flat(net) - weights
        norm = float(np.linalg.norm(delta))
        clipped = norm > start.clip_norm
        if clipped:
            delta = delta * (start.clip_norm / norm)
        rm.field_input = self._encode(fed, hello, start, start.weights[self.member] * delta)
        return drafts, clipped

    def _protocol(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
                  item: ProtocolItem) -> list[ProtocolItem]:
        rm = memo.rounds.get(item.round)
        if rm is None:
            raise StateError(f"a protocol message for round {item.round}, not in flight here")
        rm.received.append(item.data)
        start: RoundStart = wire.decode(rm.start, RoundStart)
        if start.task == "train" and rm.field_input is None:
            return []  # the roster waits for the global model in the same payload
        return self._step(fed, identity, memo, hello, item.round)

    def _protocol_pending(self, fed: Federation, identity: SigningKey, memo: NodeMemo,
                          hello: Hello, round_: int) -> list[ProtocolItem]:
        return self._step(fed, identity, memo, hello, round_)

    def _step(self, fed: Federation, identity: SigningKey, memo: NodeMemo, hello: Hello,
              round_: int) -> list[ProtocolItem]:
        """Replay all but the newest message, then answer the newest one."""
        rm = memo.rounds[round_]
        newest = rm.received[-1]
        replay = RoundMemo(start=rm.start, seed=rm.seed, field_input=rm.field_input,
                           received=rm.received[:-1])
        client, _ = self._machine(fed, identity, hello, replay)
        msg = decode_message(newest)
        out = client.receive(msg)
        if isinstance(msg, UnmaskRequest):
            del memo.rounds[round_]  # the round is over for this bank: forget its secrets
        return [ProtocolItem(round=round_, data=encode_message(m)) for m in out]


def _round_of(signed: Signed) -> int:
    """The round a signed RoundStart claims (the signature then binds it)."""
    start: RoundStart = wire.decode(signed.body, RoundStart)
    return start.round


def _round_of_model(signed: Signed) -> int:
    model: GlobalModel = wire.decode(signed.body, GlobalModel)
    return model.round
