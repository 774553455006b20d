"""securefl's SecAgg (or CKKS) inside any Flower ClientApp:
``ClientApp(client_fn=..., mods=[securefl_mod])``.

Shaped like Flower's own ``secaggplus_mod``: the mod answers securefl's TRAIN messages (those
carrying the :data:`~securefl.flower.common.RECORD` array record) itself and calls the user's
ClientApp (``call_next``, the NumPyClient's ``fit``) once per round, at the masked-input stage. A
TRAIN message without that record is refused (the user's fit would send its raw parameters back
unprotected); a plain EVALUATE or QUERY message reaches the user's app only when the node config
opts in with ``allow-plain-evaluate`` / ``allow-plain-query`` = true (default: refused; evaluate
returns metrics on the bank's own data, unprotected).

Node config (``--node-config``): ``member`` (this bank's name in the manifest), ``key`` (its Ed25519
identity key; ``passphrase-file`` if encrypted), ``manifest`` (the signed federation manifest),
``state-dir`` (where it keeps the highest session counter it accepted), ``num-examples`` (its
public training-set size: the FedAvg weight; fit must report the same), optional ``state-key``
(default ``<key>.state-key``) and, for a bank whose own loop runs DP-SGD, the declared mechanism
``dpsgd-noise-multiplier``, ``dpsgd-sample-rate``, ``dpsgd-steps``, ``dpsgd-max-grad-norm``.
The bank's own privacy caps across runs (securefl.dp.bank_budget, as a deployed bank's):
``record-epsilon-cap`` (needs the declared DP-SGD mechanism: the record-level events it charges),
``client-epsilon-cap``, ``budget-delta`` (default 1e-5), ``budget-dir`` (required with a cap; the
ledger's length and head are marked in ``state-dir``, and a ledger lost or rolled back behind that
mark is refused).

What this path guarantees, whatever the user's fit does:

- **client-level clip**: the update (fit parameters - global parameters, flattened) is scaled to
  L2 norm at most the manifest's ``clip_norm`` (DP-FedAvg, McMahan et al., ICLR 2018), then
  multiplied by the public FedAvg weight n_i / max n;
- **noise share**: with the manifest's ``noise_multiplier`` > 0 the bank adds its discrete Gaussian
  share after quantization, sized so the honest survivors the plan guarantees carry the planned
  noise (securefl.protocol.secagg.encode_input, the protocol's own encoding);
- **the bank's own caps**: with a cap configured, each signed plan is charged to the bank's
  persistent budget (its declared DP-SGD, the client-level sum as the manifest's colluders see
  it) before the bank advertises a key; a round that would take it past a cap, or a plan without
  client-level noise under a client cap, is refused (BudgetExceededError) and nothing of that
  round leaves the bank;
- **secure aggregation**: securefl's actively secure SecAgg/SecAgg+ client machine
  (securefl.protocol.secagg; Bonawitz et al. CCS 2017 figure 4, Bell et al. CCS 2020): the server
  learns only the sum of the survivors' masked inputs; the plan (participants, thresholds, clip,
  noise, weights, the global model's and the fit config's digests) is signed by the manifest's
  server key and bound into every key advertisement and consistency signature.

With a manifest whose aggregation is ``ckks`` the noise share is Gaussian, of std
z C / sqrt(T) (T the plan's threshold; securefl.deploy.ckks.noise_share_std), added before the
bank encrypts its update under the public context the manifest's key holder signed for this
plan's (session, round) (a context of another round or session is refused before the user's fit
runs), and secure aggregation is securefl's CKKS protocol (protocols/ckks/spec.md: the server
sums ciphertexts, the key holder decrypts only the verified, co-signed aggregate, once). A node
whose config says ``role = "ckks-key-holder"`` is the key holder
(securefl.deploy.ckks.KeyHolderNode, its node config keys there): the user's app never runs on it
and it refuses every message but securefl's.

Record-level DP-SGD is NOT guaranteed here: the user's fit runs outside securefl. A bank that
trains through securefl's client API (:class:`securefl.Bank`) gets it; a bank with its own DP-SGD
loop may declare its parameters in the node config, and the server's ledger records them as
declared, not verified.

The node's state between messages (the round's key seed, its encoded input, the server messages so
far) lives in ``context.state`` sealed with AES-256-GCM under a node-local key
(securefl.deploy.common.NodeHandler); the SecAgg machine is rebuilt for each message by replay.
Because every server message of the round in flight is kept there, the bank also counts the bytes
it took from the server this round: a message that would take it past the plan's per-round limit
(securefl.protocol.secagg.limits, ``from_server``) is refused before it is decoded
(ByteLimitError, SFL308), so a server cannot make a bank accept more per round across ClientApp
processes than one process would. flwr is imported lazily, inside :func:`securefl_mod`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping
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
    SessionCounter,
    bank_ids,
    check_pending,
    encode_input,
    encoding_for,
    identity_roster,
    next_attempt,
    randomness,
    secagg_config,
    session_id,
)
from securefl.deploy.messages import FLOWER_APP, HELLO_DOMAIN, Hello, Signed
from securefl.dp.bank_budget import caps_from_node_config
from securefl.errors import (
    ConfigError,
    PlanMismatchError,
    RemoteProtocolError,
    SignatureError,
    StateError,
)
from securefl.flower.common import (
    ARRAY,
    CKKS_STAGES,
    INFO_DOMAIN,
    PLAN_DOMAIN,
    RECORD,
    STAGES,
    STATE,
    BankInfo,
    ClientMsg,
    FlowerPlan,
    ServerMsg,
    check_plan,
    config_digest,
    decode_server,
    flatten,
    params_digest,
    round_spec_for,
    round_start,
)
from securefl.protocol import wire
from securefl.protocol.messages import decode_message, encode_message
from securefl.protocol.secagg import SecAggClient, Start
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.transport.policy import ByteMeter

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.bank import DeclaredDpSgd
    from securefl.dp.bank_budget import BankBudget
    from securefl.dp.ledger import Draft
    from securefl.federation import Federation
    from securefl.transport.flower import Envelope

__all__ = ["FitCheck", "FitOutcome", "FlowerBank", "securefl_mod"]

log = logging.getLogger("securefl.flower")


@dataclass(frozen=True)
class FitOutcome:
    """What the user's fit returned, next to what it started from."""

    global_params: list[NDArray[Any]]
    new_params: list[NDArray[Any]]
    num_examples: int
    config: Mapping[str, Any]


#: (global parameters, fit config) -> None, raises when they are not what the signed plan names
FitCheck = Callable[[list["NDArray[Any]"], Mapping[str, Any]], None]


class _RoundMemo(RedactedStruct, msgspec.Struct, forbid_unknown_fields=True):
    # every representation (RedactedStruct)
    __redacted__ = frozenset({"seed", "field_input", "ckks"})

    plan: bytes  # msgpack FlowerPlan, signature verified
    seed: bytes | None  # key-machine seed (None only with the INSECURE simulation seed)
    field_input: bytes | None = None  # uint32 little-endian, once fit ran
    received: list[bytes] = []  # server protocol messages of this round, in order
    #: ckks: the key holder's public context signed for this round, checked before the fit ran
    context: bytes | None = None
    #: ckks: the CKKS client's round state once fit ran (securefl.protocol.ckks.ClientRoundState)
    ckks: bytes | None = None


class _Memo(msgspec.Struct, forbid_unknown_fields=True):
    session: bytes = b""
    counter: int = 0
    last_round: int = 0
    current: _RoundMemo | None = None
    #: the global model of the last plan this bank made keys for, and how many plans in a row
    #: named it (attempts at one input: at most MAX_ATTEMPTS)
    last_model: bytes = b""
    attempts: int = 0
    #: earlier rounds of this session that took this bank's keys and never unmasked (whatever
    #: their model: at most MAX_ATTEMPTS, securefl.deploy.common.check_pending)
    pending: list[int] = []
    #: ckks: SHA-256 of the session's signed hello, to which every round key must be bound
    hello: bytes = b""


@dataclass(frozen=True)
class FlowerBank(NodeHandler):
    """One bank's node inside a Flower app (the node config, see the module docstring)."""

    insecure_seed_effect = "every key and mask of this bank is predictable"

    member: str
    key_path: Path
    manifest_path: Path
    state_dir: Path
    num_examples: int
    passphrase_file: Path | None = None
    sim_seed: int | None = None
    state_key_file: Path | None = None
    declared_dpsgd: DeclaredDpSgd | None = None
    #: the bank's own persistent privacy caps (node config record-epsilon-cap /
    #: client-epsilon-cap / budget-delta / budget-dir), charged before every round's advertisement
    budget: BankBudget | None = None
    #: runs the user's fit for the current message (set per message by :func:`securefl_mod`);
    #: it calls its argument with the FitIns' global parameters and config before the user's code
    fit: Callable[[FitCheck], FitOutcome] | None = None

    def federation(self) -> Federation:
        """The verified manifest. A manifest that pins a data schema is refused (ConfigError): on
        this path the user's app loads and encodes the bank's data, so the mod cannot check it
        against the schema, and running would claim a check that does not exist (a deployment's
        bank does check it: securefl.deploy.client.load_bank_rows)."""
        fed = super().federation()
        if fed.params.data_schema is not None:
            raise ConfigError(
                f"the manifest pins data_schema {fed.params.data_schema[:12]}...: on the Flower "
                "path your app loads the bank's data, so securefl_mod cannot check it against "
                "the schema, and this bank refuses to run",
                hint="sign a manifest without data_schema for a Flower app, or deploy with "
                     "`securefl deploy` (its banks encode their tables with the pinned schema)")
        return fed

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> FlowerBank:
        from securefl.bank import DeclaredDpSgd

        try:
            declared = None
            if "dpsgd-noise-multiplier" in cfg:
                declared = DeclaredDpSgd(
                    noise_multiplier=float(cfg["dpsgd-noise-multiplier"]),
                    sample_rate=float(cfg["dpsgd-sample-rate"]),
                    steps=int(cfg["dpsgd-steps"]), max_grad_norm=float(cfg["dpsgd-max-grad-norm"]))
            n = int(cfg["num-examples"])
            if n < 1:
                raise ConfigError("num-examples must be >= 1")
            budget = caps_from_node_config(cfg, str(cfg["member"]), Path(str(cfg["state-dir"])))
            if budget is not None and budget.caps.record_epsilon_cap is not None \
                    and declared is None:
                raise ConfigError("record-epsilon-cap needs the bank's declared DP-SGD mechanism "
                                  "(dpsgd-noise-multiplier, ...): the user's fit runs outside "
                                  "securefl, so only a declared mechanism can be charged")
            return cls(**cls.common_config(cfg), state_dir=Path(str(cfg["state-dir"])),
                       num_examples=n, declared_dpsgd=declared, budget=budget)
        except KeyError as exc:
            raise ConfigError(f"node config lacks {exc.args[0]!r}",
                              hint="--node-config 'member=... key=... manifest=... "
                                   "state-dir=... num-examples=...'") from exc
        except ValueError as exc:
            raise ConfigError(f"node config: {exc}") from exc

    # -- one message ----------------------------------------------------------------------------
    def _handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        fed = self.federation()
        if env.federation != fed.digest:
            raise SignatureError("message for another federation manifest")
        identity = self.identity(fed)
        msg = decode_server(env.payload)
        if msg.stage != env.stage:
            raise RemoteProtocolError("the payload's stage is not the envelope's")
        memo = wire.decode(state, _Memo) if state else _Memo()
        ckks = fed.params.aggregation == "ckks"
        if msg.stage == "hello":
            reply = ClientMsg(stage="hello", info=self._info(identity, env.session))
        elif ckks and msg.stage == "commit":
            reply = self._ckks_commit(fed, identity, memo, env, msg)
        elif ckks and msg.stage in CKKS_STAGES:
            reply = self._ckks_step(fed, identity, memo, env, msg)
        elif not ckks and msg.stage == "advertise":
            reply = ClientMsg(stage="advertise",
                              protocol=self._advertise(fed, identity, memo, env, msg))
        elif not ckks and msg.stage in STAGES:
            reply = self._step(fed, identity, memo, env, msg)
        else:
            raise RemoteProtocolError(f"a {msg.stage!r} message: not a stage of the manifest's "
                                      f"{fed.params.aggregation}")
        return wire.encode(reply), wire.encode(memo)

    def _info(self, identity: SigningKey, session: bytes) -> BankInfo:
        unsigned = BankInfo(member=self.member, n_examples=self.num_examples,
                            signature=bytes(64))
        sig = sign_bound(identity, domain=INFO_DOMAIN, session_id=session, round_=0,
                         message=unsigned.message())
        return msgspec.structs.replace(unsigned, signature=sig)

    def _advertise(self, fed: Federation, identity: SigningKey, memo: _Memo, env: Envelope,
                   msg: ServerMsg) -> list[bytes]:
        _, body = self._accept_plan(fed, memo, env, msg)
        seed = None if self.sim_seed is not None else SystemRandomSource().random_bytes(32)
        memo.current = _RoundMemo(plan=body, seed=seed)
        _, first = self._machine(fed, identity, memo.session, memo.current)
        return [encode_message(m) for m in first]

    def _accept_plan(self, fed: Federation, memo: _Memo, env: Envelope,
                     msg: ServerMsg) -> tuple[FlowerPlan, bytes]:
        """The checks every round's signed plan passes before anything of the round leaves the
        bank (both aggregations): the manifest server's signature for (session, round), a fresh
        session counter, rounds once and in order, every forwarded size signed by its bank, the
        manifest's floors (check_plan), the bounds on attempts at one model, and the bank's own
        caps (charged here). Returns the plan and its signed body."""
        if msg.plan is None:
            raise RemoteProtocolError(f"a {msg.stage} message without a plan")
        verify_bound(fed.verify_key(fed.server), msg.plan.signature, domain=PLAN_DOMAIN,
                     session_id=env.session, round_=env.round, message=msg.plan.body)
        plan: FlowerPlan = wire.decode(msg.plan.body, FlowerPlan)
        if plan.session != env.session or plan.round != env.round:
            raise SignatureError("the plan names another session or round")
        if plan.session != memo.session:
            # a new session: its id must derive from the manifest and a counter this bank never
            # accepted before (securefl.deploy.common.SessionCounter)
            if plan.session != session_id(fed.digest, plan.counter):
                raise RemoteProtocolError("the session id is not derived from the manifest and "
                                          f"the session counter {plan.counter}")
            SessionCounter(self.state_dir, fed.digest,
                           fed.params.max_sessions).accept(plan.counter)
            memo.session, memo.counter, memo.last_round = plan.session, plan.counter, 0
            memo.current, memo.pending = None, []
        if plan.round <= memo.last_round:
            raise RemoteProtocolError(f"round {plan.round} after round {memo.last_round}: each "
                                      "round runs once, in order")
        if self.member not in plan.participants:
            raise ConfigError(f"{self.member!r} is not a participant of round {plan.round}")
        seen: set[str] = set()
        for info in msg.infos:
            if info.member in seen or info.member not in fed.clients:
                raise RemoteProtocolError(f"a signed size for {info.member!r} twice or outside "
                                          "the manifest")
            seen.add(info.member)
            verify_bound(fed.verify_key(info.member), info.signature, domain=INFO_DOMAIN,
                         session_id=plan.session, round_=0, message=info.message())
        mine = [i for i in msg.infos if i.member == self.member]
        if not mine or mine[0].n_examples != self.num_examples:
            raise RemoteProtocolError("the plan does not carry this bank's own signed size")
        check_plan(fed, plan, msg.infos)
        # an aborted round leaves the model unchanged and the next round retries it with a new
        # graph and new keys: the attempts at one input are bounded, and so are the rounds since
        # the last unmask whatever their model (securefl.deploy's rules, spec section 12.1)
        if memo.current is not None and fed.params.aggregation == "secagg":
            # the previous plan took this bank's keys, never unmasked (a CKKS round is over for a
            # bank outside its verifier window once it revealed: each round has its own key)
            memo.pending = [*memo.pending, memo.last_round]
        memo.current = None
        check_pending(plan.round, memo.pending)
        memo.attempts = next_attempt(plan.round, plan.model_digest, memo.last_model,
                                     memo.attempts)
        memo.last_model = plan.model_digest
        memo.last_round = plan.round
        self._charge_budget(fed, memo.session, plan)  # before anything of the round leaves
        return plan, msg.plan.body

    # -- ckks ------------------------------------------------------------------------------------
    def _ckks_commit(self, fed: Federation, identity: SigningKey, memo: _Memo, env: Envelope,
                     msg: ServerMsg) -> ClientMsg:
        """CKKS commit stage: the signed plan (as an advertisement's), then the key holder's
        public context, accepted only if the manifest's key holder signed it for this plan's
        (session, round) (a context replayed from another round or session is refused before
        the user's fit runs), then the fit, the update's clip, FedAvg weight and Gaussian noise
        share, encrypted and committed to (securefl.deploy.ckks.bank_commit: the deployment's
        bank does the same)."""
        from securefl.deploy.ckks import bank_commit, hello_digest, public_context

        if msg.protocol is None or msg.hello is None:
            raise RemoteProtocolError("a CKKS commit message without the key holder's context "
                                      "or the signed hello")
        hello = _ckks_hello(fed, env, msg.hello)
        mine = hello_digest(msg.hello.body)
        if env.session == memo.session and memo.hello not in (b"", mine):
            raise PlanMismatchError("a second, different signed hello in this session")
        # before the plan is charged to the bank's caps (_accept_plan checks that the plan names
        # the envelope's session and round): the key holder's key for this (session, round),
        # bound to this hello (S7b-6)
        public_context(fed, msg.protocol, env.session, env.round, mine)
        plan, body = self._accept_plan(fed, memo, env, msg)
        _check_plan_against_hello(fed, plan, hello)
        memo.hello = mine
        rm = memo.current = _RoundMemo(plan=body, seed=None, context=msg.protocol)
        update, drafts, clipped = self._fit_update(rm)
        rm.ckks, item = bank_commit(fed=fed, identity=identity, member=self.member,
                                    context=msg.protocol, hello=mine, start=round_start(plan),
                                    values=update, sim_seed=self.sim_seed,
                                    # the signed FlowerPlan (its model and config digests too),
                                    # alike for every bank of the round (S8-1)
                                    signed_plan=body)
        return ClientMsg(stage="commit", protocol=[item.data], drafts=drafts, clipped=clipped)

    def _ckks_step(self, fed: Federation, identity: SigningKey, memo: _Memo, env: Envelope,
                   msg: ServerMsg) -> ClientMsg:
        """CKKS reveal (the server-signed CommitmentSet -> this bank's ciphertext) or verify (a
        VerifyRequest -> recompute the sum, co-sign; the round is then over here), under the
        context this round's commitment was made under (securefl.deploy.ckks.bank_step)."""
        from securefl.deploy.ckks import bank_step

        rm = memo.current
        if rm is None or rm.ckks is None or rm.context is None or \
                env.session != memo.session or env.round != memo.last_round:
            raise StateError(f"a {msg.stage!r} message for round {env.round}, not in flight here")
        if msg.protocol is None:
            raise RemoteProtocolError(f"a {msg.stage!r} message without a protocol message")
        plan: FlowerPlan = wire.decode(rm.plan, FlowerPlan)
        state, out = bank_step(fed=fed, identity=identity, member=self.member,
                               context=rm.context, hello=memo.hello,
                               start=round_start(plan), state=rm.ckks,
                               data=msg.protocol, verifiers=plan.verifiers,
                               verifier_skips=plan.verifier_skips)
        if state is None:
            memo.current = None  # co-signed: the round is over for this bank
        else:
            rm.ckks = state
        return ClientMsg(stage=msg.stage, protocol=[i.data for i in out])

    def _charge_budget(self, fed: Federation, session: bytes, plan: FlowerPlan) -> None:
        """The bank's own caps (securefl.dp.bank_budget), whatever the server enforces: charge the
        round's planned events (the declared DP-SGD, the client-level sum as the manifest's
        colluders see it, with SecAgg's rounding) before the bank advertises a key;
        BudgetExceededError refuses the round (the bank is a dropout at the advertisement)."""
        if self.budget is None:
            return
        from securefl.dp.bank_budget import charge_round, planned_round_drafts

        start, spec = round_start(plan), round_spec_for(plan, fed)
        drafts = planned_round_drafts(
            bank=self.member, round_=plan.round, record=self.declared_dpsgd, noise=spec.noise,
            n_participants=len(plan.participants), clip_norm=plan.clip_norm,
            colluders=fed.params.colluders, dim=plan.dim,
            encoding=encoding_for(start, spec)[0] if fed.params.aggregation == "secagg"
            else None)
        charge_round(self.budget, drafts, session=session, round_=plan.round,
                     record_noise=self.declared_dpsgd is not None,
                     client_noise=plan.noise_multiplier > 0)

    def _machine(self, fed: Federation, identity: SigningKey, session: bytes,
                 rm: _RoundMemo) -> tuple[SecAggClient, list[Any]]:
        """The round's SecAgg client machine after Start, and Start's output (the advertisement,
        re-derived identically from the stored seed)."""
        plan: FlowerPlan = wire.decode(rm.plan, FlowerPlan)
        start = round_start(plan)
        ids = bank_ids(fed)
        spec = round_spec_for(plan, fed, hashlib.sha256(rm.plan).digest())
        enc, threshold = encoding_for(start, spec)
        cfg = secagg_config(start, spec, enc, threshold, fed)
        cid = ids[self.member]
        x = (np.frombuffer(rm.field_input, dtype="<u4").astype(np.uint32)
             if rm.field_input is not None else np.zeros(plan.dim, dtype=np.uint32))
        client = SecAggClient(cfg, identity_roster(fed, session), cid, identity, x,
                              randomness(self.sim_seed, session, plan.round, cid, "keys", rm.seed),
                              input_binding=plan.model_digest)
        return client, client.receive(Start())

    def _step(self, fed: Federation, identity: SigningKey, memo: _Memo, env: Envelope,
              msg: ServerMsg) -> ClientMsg:
        rm = memo.current
        if rm is None or env.session != memo.session or env.round != memo.last_round:
            raise StateError(f"a {msg.stage!r} message for round {env.round}, not in flight here")
        if msg.protocol is None:
            raise RemoteProtocolError(f"a {msg.stage!r} message without a protocol message")
        reply = ClientMsg(stage=msg.stage)
        if msg.stage == "masked":
            reply = self._fit_and_encode(fed, memo, rm)
        client, _ = self._machine(fed, identity, memo.session, rm)
        # the round's byte cap across messages: the kept messages plus this one, before decoding
        meter = ByteMeter(round_byte_limits(client.config).from_server, self.member)
        for data in (*rm.received, msg.protocol):
            meter.take("the server", len(data))
        for old in rm.received:
            client.receive(decode_message(old))
        out = client.receive(decode_message(msg.protocol))
        rm.received.append(msg.protocol)
        if msg.stage == "unmask":
            memo.current = None  # the round is over for this bank: forget its secrets
            memo.pending = []
        return msgspec.structs.replace(reply, protocol=[encode_message(m) for m in out])

    def _fit_and_encode(self, fed: Federation, memo: _Memo, rm: _RoundMemo) -> ClientMsg:
        """The user's fit and its clipped, weighted update (:meth:`_fit_update`), encoded with this
        bank's noise share (securefl.protocol.secagg.encode_input)."""
        plan: FlowerPlan = wire.decode(rm.plan, FlowerPlan)
        update, drafts, clipped = self._fit_update(rm)
        start = round_start(plan)
        ids = bank_ids(fed)
        spec = round_spec_for(plan, fed)
        enc, _ = encoding_for(start, spec)
        cid = ids[self.member]
        field = encode_input(update, spec, enc,
                             randomness(self.sim_seed, memo.session, plan.round, cid, "rounding"),
                             randomness(self.sim_seed, memo.session, plan.round, cid, "noise"))
        rm.field_input = field.astype("<u4").tobytes()
        return ClientMsg(stage="masked", drafts=drafts, clipped=clipped)

    def _fit_update(self, rm: _RoundMemo) -> tuple[NDArray[np.float64], list[Draft], bool]:
        """The user's fit (once per round, after its model and config are checked against the
        signed plan), then the update (fit - global), the client-level clip and the FedAvg
        weight; with the declared DP-SGD draft and whether the clip bit."""
        from securefl.bank import clip_update

        if self.fit is None or rm.field_input is not None or rm.ckks is not None:
            raise StateError("a round runs the user's fit once, with the user's app")
        plan: FlowerPlan = wire.decode(rm.plan, FlowerPlan)

        def check(global_params: list[NDArray[Any]], config: Mapping[str, Any]) -> None:
            """Before the user's fit runs: the model and config are the plan's."""
            if params_digest(global_params) != plan.model_digest:
                raise RemoteProtocolError(f"round {plan.round}: the global model is not the one "
                                          "the signed plan names")
            if config_digest(config) != plan.config_digest:
                raise RemoteProtocolError(f"round {plan.round}: the fit config is not the one the "
                                          "signed plan names")

        res = self.fit(check)
        if res.num_examples != self.num_examples:
            raise ConfigError(f"fit reported {res.num_examples} examples, the node config's "
                              f"num-examples (the public FedAvg weight) is {self.num_examples}")
        if [np.shape(a) for a in res.new_params] != [np.shape(a) for a in res.global_params]:
            raise ConfigError("fit returned parameters of other shapes than the global model's")
        delta = flatten(res.new_params) - flatten(res.global_params)
        if delta.size != plan.dim:
            raise ConfigError(f"round {plan.round}: {delta.size} parameters, plan says {plan.dim}")
        clipped_delta, clipped = clip_update(delta, plan.clip_norm)
        drafts = ([self.declared_dpsgd.draft(round=plan.round, bank=self.member)]
                  if self.declared_dpsgd is not None else [])
        return plan.weights[self.member] * clipped_delta, drafts, bool(clipped)


#: node-config keys opting a bank into plain (unprotected) Flower messages of each type
PLAIN_MESSAGE_KEYS = {"evaluate": "allow-plain-evaluate", "query": "allow-plain-query"}


def _check_plain_message(message_type: str, cfg: Mapping[str, Any]) -> None:
    """A message without securefl's record reaches the user's app only when it cannot carry the
    bank's update and the bank opted in: a plain TRAIN message would run the user's fit and send
    its raw parameters back unclipped, unnoised and unmasked, so it is always refused; a plain
    EVALUATE (metrics on the bank's own data, unprotected) or QUERY message passes only with
    ``allow-plain-evaluate`` / ``allow-plain-query`` = true in the node config."""
    kind = str(message_type).split(".", 1)[0]
    key = PLAIN_MESSAGE_KEYS.get(kind)
    if key is None:
        raise RemoteProtocolError(
            f"a plain Flower {message_type!r} message outside securefl: under securefl_mod a "
            "TRAIN message runs only securefl's protocol, so nothing of the bank's fit leaves "
            "it unprotected, and no other message type reaches the app (a legacy "
            "get_parameters / get_properties message neither: give the strategy its "
            "initial_parameters)")
    value = cfg.get(key, False)
    if value is True or str(value).strip().lower() == "true":
        return
    if value not in (False, None, "") and str(value).strip().lower() != "false":
        raise ConfigError(f"node config {key} must be true or false, got {value!r}")
    raise RemoteProtocolError(
        f"a plain Flower {message_type!r} message: this bank answers it only with "
        f"{key}=true in its node config (its answer leaves the bank unprotected)")


def _ckks_hello(fed: Federation, env: Envelope, signed: Signed) -> Hello:
    """The signed hello of a CKKS Flower session (the workflow's, which the key holder keys the
    session for): the manifest server's signature for (session, 0), this manifest and session, a
    CKKS plan of a Flower app."""
    verify_bound(fed.verify_key(fed.server), signed.signature, domain=HELLO_DOMAIN,
                 session_id=env.session, round_=0, message=signed.body)
    hello: Hello = wire.decode(signed.body, Hello)
    if hello.federation != fed.digest or hello.session != env.session:
        raise SignatureError("the hello names another federation or session")
    if hello.plan.aggregation != "ckks" or hello.plan.task != FLOWER_APP:
        raise RemoteProtocolError("the hello is not a CKKS plan of a Flower app")
    return hello


def _check_plan_against_hello(fed: Federation, plan: FlowerPlan, hello: Hello) -> None:
    """The round's plan within the session's hello (the key holder's view of the session): the
    same verifier policy, a round the hello keys, and DP exactly when the manifest has noise."""
    hp = hello.plan
    if (plan.verifiers, plan.verifier_skips) != (hp.ckks_verifiers, hp.ckks_verifier_skips) or \
            plan.round > hp.rounds or hp.dp != (fed.params.noise_multiplier > 0):
        raise PlanMismatchError(f"round {plan.round}: the plan does not match the session's "
                                "signed hello")


def _key_holder_message(msg: Any, ctxt: Any) -> Any:
    """The CKKS key holder's node inside the Flower app (node config ``role =
    "ckks-key-holder"``): securefl.deploy.ckks.KeyHolderNode answers the workflow's key requests
    and decryption requests, exactly as in a deployment; the user's app never runs on this node
    and every other message is refused."""
    from flwr.app import Array, ArrayRecord, Message, RecordDict
    from flwr.app.message_type import MessageType

    from securefl.deploy.ckks import KeyHolderNode
    from securefl.transport.flower import handle_client_message

    if RECORD not in msg.content.array_records or \
            msg.metadata.message_type != MessageType.TRAIN:
        raise RemoteProtocolError(f"a {msg.metadata.message_type!r} message for the CKKS key "
                                  "holder: its node answers securefl's TRAIN messages only")
    node = dataclasses.replace(KeyHolderNode.from_node_config(ctxt.node_config), flower_app=True)
    data = msg.content.array_records[RECORD][ARRAY].numpy().tobytes()
    saved = ctxt.state.array_records.get(STATE)
    state = saved[ARRAY].numpy().tobytes() if saved is not None else None
    reply, new_state = handle_client_message(data, state, member=node.member,
                                             federation=node.federation().digest,
                                             handler=node.handle)
    ctxt.state.array_records[STATE] = ArrayRecord(
        {ARRAY: Array(np.frombuffer(new_state, dtype=np.uint8))})
    return Message(RecordDict({RECORD: ArrayRecord(
        {ARRAY: Array(np.frombuffer(reply, dtype=np.uint8))})}), reply_to=msg)


def securefl_mod(msg: Any, ctxt: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower mod: run securefl's SecAgg (or CKKS) client for securefl TRAIN messages, call the
    user's app (``call_next``) at the masked-input (CKKS: commit) stage; on the CKKS key holder's
    node (node config ``role = "ckks-key-holder"``) answer as the key holder instead. A TRAIN
    message without securefl's record is refused (RemoteProtocolError: the user's fit never
    runs for it); a plain EVALUATE or QUERY message reaches the user's app only if the node
    config opts in (``allow-plain-evaluate``, ``allow-plain-query``), otherwise it is refused
    too.

    A refusal (bad signature, a plan weaker than the manifest, a view mismatch) is logged with its
    code and raised, so Flower returns an error reply and the server counts a dropout."""
    from flwr.app import Array, ArrayRecord, Message, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from securefl.transport.flower import handle_client_message

    if str(ctxt.node_config.get("role", "client")) == "ckks-key-holder":
        return _key_holder_message(msg, ctxt)
    if RECORD not in msg.content.array_records:
        _check_plain_message(msg.metadata.message_type, ctxt.node_config)
        return call_next(msg, ctxt)
    if msg.metadata.message_type != MessageType.TRAIN:
        raise RemoteProtocolError(f"a securefl record in a {msg.metadata.message_type!r} "
                                  "message: securefl runs only in TRAIN messages")
    node = FlowerBank.from_node_config(ctxt.node_config)
    digest = node.federation().digest
    data = msg.content.array_records[RECORD][ARRAY].numpy().tobytes()
    saved = ctxt.state.array_records.get(STATE)
    state = saved[ARRAY].numpy().tobytes() if saved is not None else None
    out: dict[str, Any] = {"content": RecordDict()}

    def fit(check: FitCheck) -> FitOutcome:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        check(parameters_to_ndarrays(fitins.parameters), dict(fitins.config))
        reply = call_next(msg, ctxt)
        if reply.has_error():
            raise StateError(f"the ClientApp's fit failed: {reply.error.reason}")
        fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
        for record in reply.content.array_records.values():
            record.clear()  # the update leaves this node only masked
        out["content"] = reply.content
        return FitOutcome(global_params=parameters_to_ndarrays(fitins.parameters),
                          new_params=parameters_to_ndarrays(fitres.parameters),
                          num_examples=int(fitres.num_examples), config=dict(fitins.config))

    handler = replace(node, fit=fit)
    reply, new_state = handle_client_message(data, state, member=node.member,
                                             federation=digest, handler=handler.handle)
    ctxt.state.array_records[STATE] = ArrayRecord(
        {ARRAY: Array(np.frombuffer(new_state, dtype=np.uint8))})
    content = out["content"]
    content.array_records[RECORD] = ArrayRecord(
        {ARRAY: Array(np.frombuffer(reply, dtype=np.uint8))})
    return Message(content, reply_to=msg)
