"""securefl's SecAgg (or CKKS, with a ckks manifest) as a Flower fit workflow:
``DefaultWorkflow(fit_workflow=SecureFLWorkflow(manifest=..., server_key=..., run_dir=...))``.

Shaped like Flower's ``SecAggPlusWorkflow`` (used with a ``LegacyContext``): per Flower round the
strategy's ``configure_fit`` picks the nodes, each node id maps to a manifest member by the name
the SuperLink operator registered it under (``NodeInfo.name``, as securefl.transport.flower's
GridLink maps them: a routing hint; authenticity comes from the manifest keys), and securefl's
SecAgg server machine (securefl.protocol.secagg) runs five stages over Flower TRAIN messages:

  advertise    signed plan + every bank's signed size -> AdvertiseKeys
  share        KeyRoster -> ShareKeys
  masked       ForwardedShares + the strategy's FitIns -> the bank runs the user's fit, clips,
               weights, adds its noise share, masks -> MaskedInput
  consistency  SurvivorList -> ConsistencySignature
  unmask       UnmaskRequest -> UnmaskShares

A run adds one "hello" trip before its first round (each bank's size, signed by its manifest key:
the public FedAvg weights n_i / max n). The released sum divided by the survivors' public weights
is the FedAvg mean update; global + mean update is handed to the strategy as every survivor's
FitRes parameters, so ``aggregate_fit`` (FedAvg) returns it (as Flower's SecAgg+ workflow does).
The workflow is a round-engine transport (securefl.engine.RoundTransport,
:meth:`SecureFLWorkflow.rounds`): each Flower call steps the engine one round
(RoundEngine.steps), which settles the round's typed outcome and bounds the aborted rounds in a
row (``max_aborted``, securefl.deploy.common.MAX_ATTEMPTS); each round's plan comes from the
manifest's round planner (securefl.protocol.plan.RoundPlanner).
Every round, completed or aborted, is committed to ``run_dir``: the audit log (RFC 9162 Merkle
tree, signed checkpoints, securefl.audit.store.RunStore) and the privacy ledger (the client-level
distributed discrete Gaussian event, and any record-level DP-SGD a bank declared, recorded as
declared), so ``securefl audit verify RUN_DIR`` checks the run afterwards.

What this path guarantees: the client-level clip, the noise share and secure aggregation always
(securefl.flower.mod); record-level DP-SGD only when the bank trains through securefl's client API
(securefl.Bank); a user's own DP-SGD loop is recorded as declared, not verified. The strategy, not
a public draw, chooses each round's participants: the banks enforce the manifest's threshold as a
floor on every plan.

With a manifest whose aggregation is ``ckks`` the workflow runs securefl's CKKS protocol
(protocols/ckks/spec.md) with the manifest's key holder as its own Flower node (its node config
says ``role = "ckks-key-holder"``; securefl_mod hands its messages to the deployment's
securefl.deploy.ckks.KeyHolderNode). The rounds are the deployment's
(securefl.deploy.ckks.run_ckks_round), over these Flower round trips:

  key          (key holder alone, first round or after a round that released nothing) the signed
               hello + KeyRequest(session, r) -> the round key's public context, signed for (s, r)
               and bound to the hello's SHA-256 (the key holder keys a session for one hello)
  commit       signed plan + every bank's signed size + that context + the signed hello + the
               strategy's FitIns -> the bank checks the context is the key holder's for this
               (session, round) and bound to this hello, and the plan against the hello, runs
               the user's fit, clips, weights, adds its Gaussian noise share, encrypts -> Commitment
  reveal       the server-signed CommitmentSet -> Contribution (the ciphertext)
  verify       VerifyRequest to the ranked verifier window -> CoSignature
  decrypt      (key holder alone) DecryptionRequest (+ the next round's KeyRequest) ->
               DecryptionResult (flooded, signed) + the next round's signed context

The released sum's last slot is the survivors' encrypted FedAvg weights, so the mean update is
exact for the contributions in the sum. CKKS holds only while every bank encrypts honestly and
the key holder does not collude with the server (protocols/ckks/spec.md, "Trust assumption";
a manifest that assumes colluding banks refuses ckks).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from securefl.committer import ClientEvents, Release, RoundCommitter
from securefl.crypto.signing import SigningKey, sign_bound, verify_bound
from securefl.deploy.common import (
    MAX_ATTEMPTS,
    SessionCounter,
    bank_ids,
    encoding_for,
    identity_roster,
    secagg_config,
    session_id,
)
from securefl.deploy.messages import (
    FLOWER_APP,
    HELLO_DOMAIN,
    ClientPayload,
    Hello,
    ProtocolItem,
    ServerPayload,
    Signed,
    TrainPlan,
)
from securefl.engine import RoundEngine, RoundReport
from securefl.engine import RoundOutcome as Settled
from securefl.errors import (
    AggregationAbortedError,
    ByteLimitError,
    ConfigError,
    MessageError,
    SecureFLError,
    SignatureError,
)
from securefl.flower.common import (
    ARRAY,
    INFO_DOMAIN,
    PLAN_DOMAIN,
    RECORD,
    STAGES,
    BankInfo,
    ClientMsg,
    FlowerPlan,
    ServerMsg,
    check_plan,
    config_digest,
    decode_client,
    fedavg_weights,
    flatten,
    params_digest,
    round_spec_for,
    round_start,
    unflatten,
)
from securefl.protocol import wire
from securefl.protocol.messages import AdvertiseKeys, decode_message, encode_message
from securefl.protocol.secagg import (
    ADVERTISE_DOMAIN,
    Deadline,
    SecAggServer,
    advertise_message,
    check_release,
    decode_sum,
    plan_digest,
)
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.transport.flower import GridLink, StageExchange
from securefl.transport.policy import ByteMeter

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.audit.store import RunStore
    from securefl.dp.ledger import Draft, Ledger
    from securefl.federation import Federation
    from securefl.protocol.plan import NoisePlan

__all__ = ["RoundOutcome", "SecureFLWorkflow"]

log = logging.getLogger("securefl.flower")


@dataclass
class RoundOutcome:
    """One released round: the typed outcome the committer takes, and what the strategy needs."""

    participants: list[str]
    release: Release
    #: the round's client-level noise plan (None without noise)
    noise: NoisePlan | None
    dim: int
    #: the banks' declared record-level DP-SGD drafts, of the survivors
    drafts: list[Draft]
    clipped: int
    #: the survivors' masked-stage replies (the user's FitRes without its parameters), by member
    fit_replies: dict[str, Any]


class _StrategyModel:
    """The Flower path's global model (a securefl.committer.ServerModel): the strategy's
    parameters. A round's FedAvg mean update, added to the global model, is handed to the
    strategy's ``aggregate_fit`` as every survivor's FitRes parameters (as Flower's SecAgg+
    workflow does; ``aggregate``), and what it returns is the new global model."""

    def __init__(self) -> None:
        self.arrays: list[NDArray[Any]] = []
        self.aggregate: Callable[[list[NDArray[Any]]], list[NDArray[Any]]] | None = None

    def step(self, mean_update: NDArray[np.float64]) -> None:
        new = unflatten(flatten(self.arrays) + mean_update, self.arrays)
        self.arrays = self.aggregate(new) if self.aggregate is not None else new

    def checkpoint(self) -> bytes:
        from securefl.fl.params import to_bytes

        return to_bytes(_named(self.arrays))


@dataclass
class _Session:
    fed: Federation
    key: SigningKey
    counter: int
    session: bytes
    infos: list[BankInfo]
    committer: RoundCommitter
    model: _StrategyModel
    #: the round engine (securefl.engine): Flower's loop calls the workflow once per round, the
    #: workflow's transport (SecureFLWorkflow.rounds) yields that round's typed outcome and the
    #: engine settles it (commit or abort, report, the abort bound)
    engine: RoundEngine
    #: the current round's declared drafts so far (recorded even if the round then aborts)
    drafts: list[Draft] = field(default_factory=list)
    #: ckks: the key holder's member name and node id, the signed hello every payload to it
    #: carries, and the signed round contexts it sent ahead (by round)
    holder: str | None = None
    holder_node: int = 0
    num_rounds: int = 0
    hello: Signed | None = None
    contexts: dict[int, bytes] = field(default_factory=dict)

    @property
    def store(self) -> RunStore:
        return self.committer.store

    @property
    def ledger(self) -> Ledger:
        return self.committer.ledger


class _TrainLink:
    """securefl envelopes over Flower TRAIN messages (a :class:`securefl.transport.flower.Link`);
    ``extra[node_id]`` is content to send along (the masked stage's FitIns), ``replies`` keeps the
    last trip's reply messages."""

    def __init__(self, grid: Any, group_id: str) -> None:
        self._grid = grid
        self._group = group_id
        self.extra: dict[int, Any] = {}
        self.replies: dict[int, Any] = {}

    def round_trip(self, payloads: Mapping[int, bytes], timeout_s: float) -> dict[int, bytes]:
        from flwr.app import Array, ArrayRecord, Message, RecordDict
        from flwr.app.message_type import MessageType

        msgs = []
        for nid, data in payloads.items():
            content = self.extra.pop(nid, None) or RecordDict()
            content.array_records[RECORD] = ArrayRecord(
                {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})
            msgs.append(Message(content, dst_node_id=nid, message_type=MessageType.TRAIN,
                                group_id=self._group))
        out: dict[int, bytes] = {}
        self.replies = {}
        timeout = timeout_s if np.isfinite(timeout_s) else None
        for reply in self._grid.send_and_receive(msgs, timeout=timeout):
            if reply.has_error():
                continue  # the mod refused or the app failed: a dropout for this stage
            try:
                data = reply.content.array_records[RECORD][ARRAY].numpy().tobytes()
            except (KeyError, TypeError, ValueError):
                continue
            out[int(reply.metadata.src_node_id)] = data
            self.replies[int(reply.metadata.src_node_id)] = reply
        return out


class SecureFLWorkflow:
    """Flower fit workflow running securefl's SecAgg or, with a ckks manifest, CKKS with the
    manifest's key holder as its own node (see the module docstring).

    ``manifest``: the signed federation manifest; ``server_key``: the manifest server's Ed25519
    identity key (``passphrase_file`` if encrypted); ``run_dir``: the audit run directory (must not
    exist or be empty); ``state_dir``: where the server keeps its session counter (default
    ``<server_key>.state``); ``timeout``: seconds per stage (None: wait for every reply);
    ``delta``: the delta every epsilon of the run is reported at (config.json, result.json);
    ``ckks_verifiers`` / ``ckks_verifier_skips`` (ckks manifests): the co-signatures each round
    collects and how many ranked verifiers may be skipped (the key holder node refuses fewer
    verifiers or more skips than its own node config requires)."""

    def __init__(self, *, manifest: str | Path, server_key: str | Path, run_dir: str | Path,
                 passphrase_file: str | Path | None = None, state_dir: str | Path | None = None,
                 timeout: float | None = None, delta: float = 1e-5, ckks_verifiers: int = 2,
                 ckks_verifier_skips: int = 2) -> None:
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        if ckks_verifiers < 1 or ckks_verifier_skips < 0:
            raise ConfigError("ckks_verifiers must be >= 1 and ckks_verifier_skips >= 0")
        self.ckks_verifiers, self.ckks_verifier_skips = ckks_verifiers, ckks_verifier_skips
        self.delta = float(delta)
        self.manifest = Path(manifest)
        self.server_key = Path(server_key)
        self.run_dir = Path(run_dir)
        self.passphrase_file = Path(passphrase_file) if passphrase_file else None
        self.state_dir = (Path(state_dir) if state_dir
                          else self.server_key.with_name(self.server_key.name + ".state"))
        self.timeout = float("inf") if timeout is None else float(timeout)
        self._s: _Session | None = None
        #: the round engine and its steps over :meth:`rounds` (made at the first Flower call)
        self._engine: RoundEngine | None = None
        self._steps: Iterator[RoundReport] | None = None
        #: the current Flower call: (grid, context, round)
        self._call: tuple[Any, Any, int] | None = None

    #: the round engine's abort bound (securefl.engine.RoundEngine.max_aborted): after this many
    #: rounds in a row aborted, each an attempt at the same global model, the server starts no
    #: other attempt (the later rounds are recorded as aborted without a message to any bank),
    #: as securefl's own deployment (securefl.deploy.common.MAX_ATTEMPTS). Each bank's own guard
    #: stays the mod's pending-unmask rule (securefl.deploy.common.check_pending).
    max_aborted: int | None = MAX_ATTEMPTS

    # -- Flower's entry point -----------------------------------------------------------------------
    def __call__(self, grid: Any, context: Any) -> None:
        """One fit round (DefaultWorkflow calls it once per round): the round engine
        (securefl.engine.RoundEngine.steps over :meth:`rounds`) runs this round through the
        workflow's transport and settles it (commit or abort, report); after the last round,
        result.json."""
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

        if not isinstance(context, LegacyContext):
            raise TypeError(f"Expect a LegacyContext, but get {type(context).__name__}.")
        r = int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND]))
        last = int(context.config.num_rounds)
        self._call = (grid, context, r)
        if self._steps is None:
            self._engine = RoundEngine(lambda: self._committed().committer,
                                       max_aborted=self.max_aborted)
            self._steps = self._engine.steps(self, r, last)
        try:
            next(self._steps)
        except StopIteration:
            raise ConfigError(f"Flower round {r}: this workflow's rounds are over (it runs one "
                              "Flower run)") from None
        self._finish_if_last(self._committed(), r, context)

    def rounds(self, engine: RoundEngine, first: int, last: int) -> Iterator[Settled]:
        """The Flower path as the round engine's transport (securefl.engine.RoundTransport):
        rounds ``first`` .. ``last``, each run when Flower calls the workflow for it
        (:meth:`__call__` hands in its grid and context), each yielding its typed outcome. A
        round starts only within the engine's abort bound (:attr:`max_aborted`); a round that
        cannot release is yielded as aborted (nothing released, the model unchanged)."""
        for r in range(first, last + 1):
            if self._call is None:
                raise ConfigError("the workflow's rounds run only inside Flower's calls")
            grid, context, called = self._call
            if called != r:
                raise ConfigError(f"Flower round {called}, the workflow's next round is {r}: "
                                  "the workflow must see every round of the run")
            yield self._round(engine, grid, context, r)

    def _round(self, engine: RoundEngine, grid: Any, context: Any, r: int) -> Settled:
        """Flower round ``r``: the strategy's ``configure_fit`` picks the nodes, then SecAgg's
        (or CKKS's) stages run over them; the outcome hands the strategy's ``aggregate_fit`` to
        the committer's server update (securefl.committer.RoundCommitter)."""
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat
        from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        global_arrays = parameters_to_ndarrays(parameters)
        instructions = context.strategy.configure_fit(r, parameters, context.client_manager)
        link = GridLink(grid)
        nodes = link.node_names()
        s = self._session(grid, nodes, global_arrays, int(context.config.num_rounds))
        names = {nid: name for name, nid in nodes.items() if name in s.fed.clients}
        chosen = {names[p.node_id]: (p, ins) for p, ins in instructions if p.node_id in names}
        # the key holder's node takes no FitIns (it never trains)
        refused = [p.node_id for p, _ in instructions
                   if p.node_id not in names and p.node_id != nodes.get(s.holder or "")]
        if refused:
            log.error("round %d: nodes %s are not named after a manifest client: left out", r,
                      refused[:5])
        s.model.arrays, s.model.aggregate, s.drafts = global_arrays, None, []
        self._check_round(s, r)
        run_round = self.run_ckks_round if s.holder is not None else self.run_round
        try:
            engine.check_attempts(r)  # the abort bound: no bank hears of this round
            out = run_round(grid, s, r, {n: nodes[n] for n in chosen},
                            {n: ins for n, (_, ins) in chosen.items()}, global_arrays)
        except SecureFLError as err:
            log.error("round %d aborted: %s %s", r, err.code, err.message)
            # nothing released, the model unchanged: no one "survived" into a sum, no one dropped
            return Settled(round=r, participants=tuple(chosen), error=err, alive=tuple(chosen),
                           drafts=tuple(s.drafts))

        def aggregate(new: list[NDArray[Any]]) -> list[NDArray[Any]]:
            """The strategy's aggregate_fit over the survivors, each reporting the new model."""
            params = ndarrays_to_parameters(new)
            results = []
            for name in out.release.survivors:
                res = compat.recorddict_to_fitres(out.fit_replies[name].content, keep_input=True)
                results.append((chosen[name][0], FitRes(
                    status=Status(Code.OK, ""), parameters=params,
                    num_examples=res.num_examples, metrics=res.metrics)))
            aggregated, metrics = context.strategy.aggregate_fit(r, results, [])
            if aggregated is None:
                return new
            context.state.array_records[MAIN_PARAMS_RECORD] = \
                compat.parameters_to_arrayrecord(aggregated, True)
            context.history.add_metrics_distributed_fit(server_round=r, metrics=metrics)
            return parameters_to_ndarrays(aggregated)

        s.model.aggregate = aggregate
        return Settled(round=r, participants=tuple(out.participants), release=out.release,
                       drafts=tuple(out.drafts), noise=out.noise, dim=out.dim)

    def _committed(self) -> _Session:
        """The session (ConfigError before the first round opened it)."""
        if self._s is None:
            raise ConfigError("the workflow has no session before its first round")
        return self._s

    # -- the session ----------------------------------------------------------------------------------
    def _session(self, grid: Any, nodes: Mapping[str, int],
                 global_arrays: list[NDArray[Any]], num_rounds: int) -> _Session:
        """First call: the manifest, the server key, a fresh session (counter), the banks' signed
        sizes (one "hello" trip) and the run directory; ckks: the key holder's node and the
        signed hello it checks (its plan names ``num_rounds``)."""
        if self._s is not None:
            return self._s
        from securefl.audit.store import RunStore
        from securefl.dp.ledger import Ledger
        from securefl.federation import load_manifest, load_signing_key, verify_manifest
        from securefl.fl.params import to_bytes

        fed = verify_manifest(load_manifest(self.manifest))
        pw = self.passphrase_file.read_bytes().strip() if self.passphrase_file else None
        key = load_signing_key(self.server_key, pw)
        if key.verify_key != fed.verify_key(fed.server):
            raise SignatureError("the server key is not the one the manifest lists for "
                                 f"{fed.server!r}")
        holder = fed.key_holder if fed.params.aggregation == "ckks" else None
        if fed.params.aggregation == "ckks" and (holder is None or holder not in nodes):
            raise ConfigError(
                "a ckks manifest on the Flower path needs its ckks-key-holder as a Flower node "
                f"registered under its manifest name ({holder!r}), with node config "
                "role=\"ckks-key-holder\"")
        counter = SessionCounter(self.state_dir, fed.digest, fed.params.max_sessions).next()
        session = session_id(fed.digest, counter)
        banks = {n: nid for n, nid in nodes.items() if n in fed.clients}
        ex = StageExchange(link=_TrainLink(grid, "0"), federation=fed.digest, session=session,
                           server=fed.server, nodes=banks, timeout_s=self.timeout)
        res = ex.exchange(0, "hello", {n: wire.encode(ServerMsg(stage="hello"))
                                       for n in banks})
        infos: list[BankInfo] = []
        for name, data in res.replies.items():
            try:
                info = decode_client(data).info
                if info is None or info.member != name:
                    raise SignatureError(f"{name} answered the hello without its own size")
                verify_bound(fed.verify_key(name), info.signature, domain=INFO_DOMAIN,
                             session_id=session, round_=0, message=info.message())
            except (MessageError, SignatureError) as err:
                log.error("%s refused: %s %s", name, err.code, err.message)
                continue
            infos.append(info)
        infos.sort(key=lambda i: fed.clients.index(i.member))
        config = {"transport": FLOWER_APP, "aggregation": fed.params.aggregation,
                  "manifest_sha256": fed.digest, "clip_norm": fed.params.clip_norm,
                  "noise_multiplier": fed.params.noise_multiplier,
                  "precision_bits": fed.params.precision_bits, "delta": self.delta}
        store = RunStore.create(
            self.run_dir, config=config, server_key=key, origin=f"securefl/{session.hex()}",
            initial_model=to_bytes(_named(global_arrays)), write_key_file=False,
            federation={"banks": [{"name": i.member, "train_examples": i.n_examples}
                                  for i in infos],
                        "manifest_sha256": fed.digest,
                        "data_source": "each bank's own Flower ClientApp"})
        model = _StrategyModel()
        # the shares come from each bank's OS CSPRNG; no sampling amplification claimed (the
        # strategy, not a public draw, picks the participants)
        committer = RoundCommitter(store, Ledger(), model, session_id=session,
                                   aggregation=fed.params.aggregation,
                                   events=ClientEvents(clip_norm=fed.params.clip_norm))
        engine = self._engine if self._engine is not None else RoundEngine(
            lambda: committer, max_aborted=self.max_aborted)
        self._s = _Session(fed=fed, key=key, counter=counter, session=session, infos=infos,
                           committer=committer, model=model, engine=engine)
        if holder is not None:
            self._s.holder, self._s.holder_node = holder, nodes[holder]
            self._s.num_rounds = num_rounds
            self._s.hello = self._ckks_hello(fed, key, session, counter, num_rounds)
        return self._s

    def _ckks_hello(self, fed: Federation, key: SigningKey, session: bytes, counter: int,
                    num_rounds: int) -> Signed:
        """The signed hello the deployment's key holder node checks (securefl.deploy.ckks): the
        session, the manifest, the rounds it may key, the verifier policy. Training is the
        user's app's, so the plan's training fields say so rather than describe it."""
        p = fed.params
        plan = TrainPlan(model=FLOWER_APP, hidden=[], task=FLOWER_APP, loss=FLOWER_APP,
                         local_epochs=1, batch_size=1, lr=1.0, optimizer=FLOWER_APP,
                         prox_mu=0.0, rounds=num_rounds, dp=p.noise_multiplier > 0,
                         record_epsilon=0.0, record_noise_multiplier=None,
                         record_clip=p.clip_norm, delta=self.delta, aggregation="ckks",
                         ckks_verifiers=self.ckks_verifiers,
                         ckks_verifier_skips=self.ckks_verifier_skips)
        body = wire.encode(Hello(session=session, federation=fed.digest, plan=plan,
                                 counter=counter))
        return Signed(body=body, signature=sign_bound(key, domain=HELLO_DOMAIN,
                                                      session_id=session, round_=0,
                                                      message=body))

    # -- one round ------------------------------------------------------------------------------------
    def plan(self, s: _Session, r: int, participants: list[str], fit_config: Mapping[str, Any],
             global_arrays: list[NDArray[Any]]) -> FlowerPlan:
        """Round ``r``'s plan: the manifest's clip, noise, precision and degree, and the threshold
        it fixes for this many participants (the manifest's round planner,
        securefl.protocol.plan.RoundPlanner; banks check it)."""
        p = s.fed.params
        k = len(participants)
        if k < max(2, p.threshold):
            raise AggregationAbortedError(f"round {r}: {k} participants with a signed size, fewer "
                                          f"than the manifest's threshold {p.threshold}")
        planner = p.planner(s.session)  # both sides derive the RoundSpec from it (round_spec_for)
        threshold = planner.threshold_for(k)
        w = fedavg_weights(s.infos)
        plan = FlowerPlan(session=s.session, counter=s.counter, round=r,
                          participants=participants, threshold=threshold,
                          clip_norm=planner.clip_norm, noise_multiplier=planner.noise_multiplier,
                          min_survivors=threshold, degree=planner.degree,
                          precision_bits=p.precision_bits,
                          dim=int(flatten(global_arrays).size),
                          weights={b: w[b] for b in participants},
                          model_digest=params_digest(global_arrays),
                          config_digest=config_digest(fit_config),
                          verifiers=self.ckks_verifiers if s.holder is not None else 0,
                          verifier_skips=self.ckks_verifier_skips if s.holder is not None else 0)
        check_plan(s.fed, plan, s.infos)
        return plan

    def run_round(self, grid: Any, s: _Session, r: int, nodes: Mapping[str, int],
                  fitins: Mapping[str, Any], global_arrays: list[NDArray[Any]]) -> RoundOutcome:
        """The five SecAgg stages of round ``r`` over the chosen ``nodes``; raises a SecureFLError
        when the round cannot release (nothing is released then)."""
        from flwr.compat.common import recorddict_compat as compat

        participants, plan, signed = self._signed_plan(s, r, nodes, fitins, global_arrays)
        body = signed.body
        start = round_start(plan)
        ids = bank_ids(s.fed)
        spec = round_spec_for(plan, s.fed, hashlib.sha256(body).digest())
        enc, threshold = encoding_for(start, spec)
        machine = SecAggServer(secagg_config(start, spec, enc, threshold, s.fed),
                               identity_roster(s.fed, s.session),
                               input_binding=plan.model_digest)
        link = _TrainLink(grid, str(r))
        ex = StageExchange(link=link, federation=s.fed.digest, session=s.session,
                           server=s.fed.server, nodes={n: nodes[n] for n in participants},
                           timeout_s=self.timeout)
        names = {ids[n]: n for n in participants}
        # what the plan lets one bank send in this round (protocol.secagg.limits)
        meter = ByteMeter(round_byte_limits(machine.config, machine.graph).from_client, "the server")
        payloads = {n: ServerMsg(stage="advertise", plan=signed, infos=s.infos)
                    for n in participants}
        fit_replies: dict[str, Any] = {}
        s.drafts = drafts = []
        clipped = 0
        for stage in STAGES:
            if stage == "masked":
                link.extra = {nodes[n]: compat.fitins_to_recorddict(fitins[n], True)
                              for n in payloads}
            res = ex.exchange(r, stage, {n: wire.encode(m) for n, m in payloads.items()})
            for name, why in res.dropped.items():
                log.warning("round %d stage %s: %s dropped (%s)", r, stage, name, why)
            for name, data in res.replies.items():
                reply = self._feed(machine, ids[name], name, stage, data, meter)
                if reply is not None and stage == "masked":
                    fit_replies[name] = link.replies[nodes[name]]
                    drafts += [d for d in reply.drafts
                               if d.round == r and d.party == f"bank:{name}"]
                    clipped += int(reply.clipped)
            payloads = {names[o.recipient]: ServerMsg(stage=_next(stage),
                                                      protocol=encode_message(o.message))
                        for o in machine.receive(Deadline())}
        result = machine.result
        if result is None:
            raise AggregationAbortedError(f"round {r} ended without a result")
        check_release(spec, len(result.survivors))
        total = decode_sum(result.field_sum, enc)
        release = Release.of(total, result.survivors, names, plan.weights,
                             dropouts=result.dropped_at,
                             aggregate_digest=hashlib.sha256(total.tobytes()).hexdigest(),
                             encoding=enc)
        survivors = release.survivors
        return RoundOutcome(participants=participants, release=release, noise=spec.noise,
                            dim=plan.dim,
                            drafts=[d for d in drafts if d.party[len("bank:"):] in survivors],
                            clipped=clipped, fit_replies=fit_replies)

    def _signed_plan(self, s: _Session, r: int, nodes: Mapping[str, int],
                     fitins: Mapping[str, Any], global_arrays: list[NDArray[Any]]
                     ) -> tuple[list[str], FlowerPlan, Signed]:
        """Round ``r``'s participants (the chosen nodes with a signed size, in manifest order)
        and its plan, signed with the server's manifest key; ConfigError when the strategy gave
        the banks different models or fit configs."""
        from flwr.common import parameters_to_ndarrays

        sized = {i.member for i in s.infos}
        participants = [b for b in s.fed.clients if b in nodes and b in sized]
        configs = [dict(ins.config) for n, ins in fitins.items() if n in participants]
        if any(c != configs[0] for c in configs) or any(
                params_digest(parameters_to_ndarrays(fitins[n].parameters))
                != params_digest(global_arrays) for n in participants):
            raise ConfigError(f"round {r}: the strategy gave the banks different models or fit "
                              "configs; securefl's plan binds one of each")
        plan = self.plan(s, r, participants, configs[0] if configs else {}, global_arrays)
        body = wire.encode(plan)
        return participants, plan, Signed(body=body, signature=sign_bound(
            s.key, domain=PLAN_DOMAIN, session_id=s.session, round_=r, message=body))

    def run_ckks_round(self, grid: Any, s: _Session, r: int, nodes: Mapping[str, int],
                       fitins: Mapping[str, Any], global_arrays: list[NDArray[Any]]
                       ) -> RoundOutcome:
        """CKKS round ``r`` (ckks manifests): the deployment's round driver
        (securefl.deploy.ckks.run_ckks_round, with its key holder node) over Flower TRAIN
        messages; the banks speak the Flower path's ServerMsg / ClientMsg (the commit stage
        carries the signed plan and the strategy's FitIns), the key holder the deployment's
        payloads. Raises a SecureFLError when the round cannot release."""
        from flwr.compat.common import recorddict_compat as compat

        from securefl.deploy.ckks import contexts_in, key_request, public_context, run_ckks_round
        from securefl.deploy.messages import decode_client as decode_holder

        holder, hello = s.holder, s.hello
        if holder is None or hello is None:
            raise ConfigError("run_ckks_round needs a ckks session")
        participants, plan, signed = self._signed_plan(s, r, nodes, fitins, global_arrays)
        link = _TrainLink(grid, str(r))
        ex = StageExchange(link=link, federation=s.fed.digest, session=s.session,
                           server=s.fed.server,
                           nodes={**{n: nodes[n] for n in participants}, holder: s.holder_node},
                           timeout_s=self.timeout)
        fit_replies: dict[str, Any] = {}
        drafts: list[Draft] = []
        s.drafts = drafts
        clipped = 0

        def trip(round_: int, stage: str, payloads: Mapping[str, ServerPayload]
                 ) -> dict[str, ClientPayload]:
            """One Flower round trip: the key holder gets the deployment's payload; each bank
            its one CKKS message as a ServerMsg (commit: with the signed plan, the sizes and its
            FitIns), and its reply comes back as the deployment's ClientPayload."""
            nonlocal clipped
            out: dict[str, bytes] = {}
            for name, pl in payloads.items():
                if name == holder:
                    out[name] = wire.encode(pl)
                    continue
                data = pl.protocol[0].data if pl.protocol else None
                out[name] = wire.encode(ServerMsg(
                    stage=stage, protocol=data, plan=signed if stage == "commit" else None,
                    infos=s.infos if stage == "commit" else [],
                    hello=hello if stage == "commit" else None))
                if stage == "commit":
                    link.extra[nodes[name]] = compat.fitins_to_recorddict(fitins[name], True)
            res = ex.exchange(round_, stage, out)
            for name, why in res.dropped.items():
                log.warning("round %d stage %s: %s dropped (%s)", r, stage, name, why)
            replies: dict[str, ClientPayload] = {}
            for name, raw in res.replies.items():
                try:
                    if name == holder:
                        replies[name] = decode_holder(raw)
                        continue
                    reply = decode_client(raw)
                except MessageError as err:
                    log.error("%s: malformed reply (%s)", name, err.code)
                    continue
                if reply.stage != stage:
                    log.error("%s: a reply of another stage: refused", name)
                    continue
                replies[name] = ClientPayload(protocol=[ProtocolItem(round=round_, data=d)
                                                        for d in reply.protocol])
                if stage == "commit":
                    fit_replies[name] = link.replies[nodes[name]]
                    drafts.extend(d for d in reply.drafts
                                  if d.round == r and d.party == f"bank:{name}")
                    clipped += int(reply.clipped)
            return replies

        if r not in s.contexts:
            got = trip(r, "key", {holder: ServerPayload(hello=hello,
                                                        protocol=[key_request(s.session, r)])})
            s.contexts.update(contexts_in(got.get(holder)))
        context = s.contexts.pop(r, None)
        if context is None:
            raise AggregationAbortedError(f"the CKKS key holder did not publish its public "
                                          f"context for round {r}")
        public = public_context(s.fed, context, s.session, r)  # its manifest key, for (s, r)
        start = round_start(plan)
        first = {n: ServerPayload(protocol=[ProtocolItem(round=r, data=context)])
                 for n in participants}
        res = run_ckks_round(trip=trip, fed=s.fed, server_key=s.key, public=public, start=start,
                             first=first, key_holder=holder, verifiers=plan.verifiers,
                             verifier_skips=plan.verifier_skips, hello=hello,
                             next_round=r + 1 if r < s.num_rounds else None)
        if res.next_context is not None:
            s.contexts[r + 1] = res.next_context
        names = dict(enumerate(s.fed.clients))
        release = Release.of(res.total, res.survivors, names, plan.weights,
                             dropouts=res.dropouts, input_digests=res.input_digests,
                             aggregate_digest=res.aggregate_digest, weight_total=res.weight_total)
        survivors = release.survivors
        return RoundOutcome(participants=participants, release=release,
                            noise=round_spec_for(plan, s.fed).noise, dim=plan.dim,
                            drafts=[d for d in drafts if d.party[len("bank:"):] in survivors],
                            clipped=clipped, fit_replies=fit_replies)

    @staticmethod
    def _feed(machine: SecAggServer, cid: int, name: str, stage: str,
              data: bytes, meter: ByteMeter) -> ClientMsg | None:
        """One bank's reply into the machine. A reply that is malformed, of another stage, not the
        bank's own (sender id), over the bank's per-round byte limit (``meter``) or a key
        advertisement its manifest key did not sign is refused (logged; the bank is a dropout),
        so one bank cannot abort the round with a forged advertisement; any other protocol error
        in the machine aborts the round (raised)."""
        try:
            reply = decode_client(data)
            msgs = [decode_message(p) for p in reply.protocol]
        except MessageError as err:
            log.error("%s: malformed reply (%s)", name, err.code)
            return None
        if reply.stage != stage or any(getattr(m, "sender", None) != cid for m in msgs):
            log.error("%s: a reply of another stage or sender: refused", name)
            return None
        try:
            meter.take(name, sum(len(p) for p in reply.protocol))
        except ByteLimitError as err:
            log.error("%s refused: %s %s", name, err.code, err.message)
            return None
        cfg = machine.config
        for m in msgs:
            if not isinstance(m, AdvertiseKeys):
                continue
            try:
                verify_bound(machine.federation.verify_key(cid), m.signature,
                             domain=ADVERTISE_DOMAIN, session_id=cfg.session_id, round_=cfg.round,
                             message=advertise_message(m.sender, m.cipher_pk, m.mask_pk,
                                                       plan_digest(cfg)))
            except SignatureError as err:
                log.error("%s: key advertisement not signed by its manifest key: refused (%s)",
                          name, err.code)
                return None
        for m in msgs:
            machine.receive(m)
        return reply

    # -- audit --------------------------------------------------------------------------------------
    @staticmethod
    def _check_round(s: _Session, r: int) -> None:
        """Round ``r`` must follow the last committed round (the audit log has no gaps)."""
        if s.store.last_round + 1 != r:
            raise ConfigError(f"Flower round {r} after committed round {s.store.last_round}: the "
                              "workflow must see every round of the run")

    def _finish_if_last(self, s: _Session, r: int, context: Any) -> None:
        """After the run's last round: result.json (securefl.result.RunResult), signed and bound
        to the log. The user's app owns the data and Flower's loop the rounds: no task, no run
        time, and final metrics only when the engine evaluated them."""
        from securefl import __version__
        from securefl.dp.report import privacy_report
        from securefl.result import RunResult

        if r != context.config.num_rounds:
            return
        p, history = s.fed.params, s.engine.history
        s.store.finish(RunResult(
            securefl_version=__version__, transport="flower-app", session_id=s.session.hex(),
            aggregation=p.aggregation, insecure=False,
            dp=p.noise_multiplier > 0, task=None, manifest_sha256=s.fed.digest,
            run_dir=str(s.store.run_dir),
            rounds_completed=sum(1 for h in history if h.aborted is None),
            final_metrics=history[-1].metrics if history else {}, history=history, baselines={},
            privacy=privacy_report(s.ledger, self.delta, "rdp"),
            model_sha256=s.store.model_sha256(s.store.last_round), seconds=None,
            stopped_early=None, round_trips=None, round_trips_per_round=None, trips=None,
            refused={}))


def _next(stage: str) -> str:
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else "done"


def _named(arrays: list[NDArray[Any]]) -> dict[str, Any]:
    """Parameters as named tensors for the run directory's safetensors files (array order)."""
    return {f"param{i:04d}": np.asarray(a) for i, a in enumerate(arrays)}
