"""The aggregation server's side of a deployment (runs inside the Flower ServerApp).

Round plan (DESIGN.md section 3) over Flower round trips, pipelined so a training round costs
FOUR round trips in steady state (``TRIPS_PER_ROUND``):

  trip "advertise":   round r - 1's UnmaskRequest + round r's signed RoundStart
                      -> UnmaskShares (r - 1) + AdvertiseKeys (r); the server then finishes r - 1
                         (unmask, FedAvg, audit commit)
  trip "share":       KeyRoster (r) + the signed global model -> the bank trains, encodes,
                      ShareKeys (r)
  trip "masked":      ForwardedShares (r) -> MaskedInput (r)
  trip "consistency": SurvivorList (r) -> ConsistencySignature (r)

A run adds one "hello" trip (bank metadata), round 0 (federated standardisation: the banks'
moment vectors summed with SecAgg, 4 trips) and one last "unmask" trip: 4 * (rounds + 1) + 2.

A bank that misses a trip's deadline is a dropout for that stage (the SecAgg machine decides
what that means) and is not asked again in later rounds of the run.

The server never opens a bank's file: it sees the banks' public metadata (row counts, a power of
two bounding the moments' norm, DP-SGD noise multipliers) and the SecAgg sums; metrics come from
an optional global test file of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from securefl import __version__
from securefl.committer import ClientEvents, Release, RoundCommitter, TorchServerModel
from securefl.config import RunConfig, from_mapping
from securefl.crypto.signing import sign_bound, verify_bound
from securefl.deploy.ckks import TRIPS_PER_ROUND as CKKS_TRIPS_PER_ROUND
from securefl.deploy.common import (
    MAX_ATTEMPTS,
    SessionCounter,
    bank_ids,
    draw_size,
    encoding_for,
    fedavg_weights,
    identity_roster,
    public_draw,
    round0_fills,
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
    GlobalModel,
    Hello,
    ProtocolItem,
    RoundStart,
    ServerPayload,
    Signed,
    SignedBankInfo,
    TrainPlan,
    decode_client,
)
from securefl.dp.ledger import Ledger
from securefl.engine import RoundEngine, RoundOutcome
from securefl.errors import (
    AggregationAbortedError,
    ByteLimitError,
    ConfigError,
    MessageError,
    SecureFLError,
    SignatureError,
)
from securefl.federation import Federation, load_manifest, load_signing_key, verify_manifest
from securefl.protocol import quantize, wire
from securefl.protocol.messages import AdvertiseKeys, decode_message, encode_message
from securefl.protocol.secagg import (
    ADVERTISE_DOMAIN,
    Deadline,
    SecAggServer,
    advertise_message,
    check_release,
    plan_digest,
)
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.result import RunResult, Trip
from securefl.transport.flower import Link, StageExchange
from securefl.transport.policy import ByteMeter

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.protocol.plan import RoundPlanner, RoundSpec
    from securefl.protocol.quantize import Encoding

__all__ = ["TRIPS_PER_ROUND", "DeployServer", "ServerSettings", "trips_for"]

log = logging.getLogger("securefl.deploy")

TRIPS_PER_ROUND = 4


def trips_for(rounds: int, aggregation: str = "secagg") -> int:
    """Flower round trips of a whole run: hello + 4 per round (incl. round 0), + the last unmask
    for SecAgg (pipelined; securefl.deploy.ckks for CKKS's four, + the first round's key trip)."""
    if aggregation == "ckks":
        return 2 + CKKS_TRIPS_PER_ROUND * (rounds + 1)
    return 1 + TRIPS_PER_ROUND * (rounds + 1) + 1


@dataclass(frozen=True)
class ServerSettings:
    """The server's deployment file (JSON): paths and the run configuration (securefl.config keys;
    ``data`` / ``banks`` / ``split_by`` are the banks' business and ignored here)."""

    manifest: Path
    key: Path
    run_dir: Path
    run: dict[str, Any]
    test_data: Path | None = None
    label: str = "default"
    passphrase_file: Path | None = None
    stage_timeout_s: float = 60.0
    wait_nodes_s: float = 120.0
    #: INSECURE, tests only: sign the simulation's stream id (securefl.runtime.stream_id_for)
    #: into the hello and plans, so banks with an insecure-sim-seed draw ``securefl run``'s
    #: streams (tests compare the two); the session id is never affected
    insecure_sim_streams: bool = False
    #: where the server persists its session counter (default ``<key>.state``)
    state_dir: Path | None = None
    #: continue the run in ``run_dir`` after its last committed round (a crashed or stopped
    #: server): a new hello, no new standardisation, the stored model, optimizer and ledger
    resume: bool = False
    #: JSON lines of progress (one per trip), for operators and tests
    progress: Path | None = None
    #: the data schema the manifest pins (docs/data.md): round 0's public input ranges
    schema: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> ServerSettings:
        try:
            raw = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the server deployment file {path}: {exc}") from exc
        opt = {k: raw.get(k) for k in ("test_data", "passphrase_file", "progress",
                                       "state_dir", "schema")}
        try:
            return cls(manifest=Path(raw["manifest"]), key=Path(raw["key"]),
                       run_dir=Path(raw["run_dir"]), run=dict(raw.get("run", {})),
                       test_data=Path(opt["test_data"]) if opt["test_data"] else None,
                       label=str(raw.get("label", "default")),
                       passphrase_file=(Path(opt["passphrase_file"])
                                        if opt["passphrase_file"] else None),
                       stage_timeout_s=float(raw.get("stage_timeout_s", 60.0)),
                       wait_nodes_s=float(raw.get("wait_nodes_s", 120.0)),
                       insecure_sim_streams=bool(raw.get("insecure_sim_streams", False)),
                       state_dir=Path(opt["state_dir"]) if opt["state_dir"] else None,
                       resume=bool(raw.get("resume", False)),
                       progress=Path(opt["progress"]) if opt["progress"] else None,
                       schema=Path(opt["schema"]) if opt["schema"] else None)
        except KeyError as exc:
            raise ConfigError(f"{path} lacks {exc.args[0]!r}") from exc


@dataclass
class _Flight:
    """One SecAgg round in flight on the server."""

    start: RoundStart
    spec: RoundSpec
    enc: Encoding
    machine: SecAggServer
    names: dict[int, str]
    t0: float
    drafts: list[Any] = field(default_factory=list)
    clipped: int = 0
    aborted: SecureFLError | None = None
    #: bytes each bank sent this round, against the plan's per-round cap (protocol.secagg.limits)
    meter: ByteMeter | None = None


@dataclass
class _Done:
    """One finished aggregation round, whatever the mode: the release or the error."""

    start: RoundStart
    names: dict[int, str]
    t0: float
    aggregation: str
    drafts: list[Any] = field(default_factory=list)
    clipped: int = 0
    total: Any = None  # NDArray[np.float64] once released
    survivors: tuple[int, ...] = ()
    dropouts: dict[int, str] = field(default_factory=dict)
    aggregate_digest: str | None = None
    input_digests: dict[int, str] = field(default_factory=dict)  # by client id
    noise: Any = None  # the round's client-level NoisePlan (securefl.protocol.plan), if any
    encoding: Any = None  # secagg: the round's Encoding (the ledger's DDG event needs it)
    weight_total: float | None = None  # ckks: the released sum of the contributors' weights
    error: SecureFLError | None = None


@dataclass
class _Run:
    """The run's state across rounds (the server side)."""

    plan: TrainPlan
    banks: list[str]
    infos: dict[str, BankInfo]
    sizes: dict[str, int]
    n_features: int
    weights: dict[str, float]
    bound: float
    model: Any
    w: Any  # NDArray[np.float64]: the global weights
    server_opt: Any
    silent: set[str] = field(default_factory=set)
    #: every bank's self-signed BankInfo, forwarded with each plan
    signed_infos: list[SignedBankInfo] = field(default_factory=list)
    store: Any = None  # securefl.audit.store.RunStore, created after round 0
    ledger: Ledger = field(default_factory=Ledger)
    test: tuple[Any, Any] | None = None
    moments_total: list[float] = field(default_factory=list)
    #: the first round this server process runs (0; last committed round + 1 when resuming)
    first_round: int = 0
    #: regression: round 0 carries target / 2^target_scale_log2; ``target`` is its TargetScaler
    target_scale_log2: int | None = None
    target: Any = None
    #: round 0 with noised statistics: the features' public ranges and groups (signed into its
    #: plan), the release's ledger drafts (committed with round 1, as ``securefl run`` does) and
    #: what re-derives them on resume (the run store's facts: the banks in the sum, the
    #: sensitivity, the noise source)
    stats_ranges: Any = None
    stats_groups: tuple[tuple[int, ...], ...] = ()
    stats_drafts: list[Any] = field(default_factory=list)
    stats_ledger: dict[str, Any] | None = None


class DeployServer:
    """Runs a whole federated training over a :class:`~securefl.transport.flower.Link`."""

    def __init__(self, settings: ServerSettings) -> None:
        self.s = settings
        self.config: RunConfig = from_mapping(
            {k: v for k, v in settings.run.items() if k not in ("data", "out")},
            source=str(settings.manifest))
        self.fed: Federation = verify_manifest(load_manifest(settings.manifest))
        pw = settings.passphrase_file.read_bytes().strip() if settings.passphrase_file else None
        self.key = load_signing_key(settings.key, pw)
        if self.key.verify_key != self.fed.verify_key(self.fed.server):
            raise SignatureError("the server key is not the one the manifest lists for "
                                 f"{self.fed.server!r}")
        if self.config.aggregation != self.fed.params.aggregation:
            raise ConfigError(f"the run's aggregation {self.config.aggregation!r} is not the "
                              f"manifest's {self.fed.params.aggregation!r}")
        self.ckks = self.fed.params.aggregation == "ckks"
        self.trips_per_round = CKKS_TRIPS_PER_ROUND if self.ckks else TRIPS_PER_ROUND
        self.ids = bank_ids(self.fed)
        self.counter = SessionCounter(self.s.state_dir or self.s.key.with_name(
            self.s.key.name + ".state"), self.fed.digest, self.fed.params.max_sessions).next()
        # public randomness fixed before any key: the manifest and a counter no bank accepts
        # twice (protocols/secagg/spec.md section 12)
        self.session = session_id(self.fed.digest, self.counter)
        self.sim_stream: bytes | None = None
        if self.s.insecure_sim_streams:
            from securefl.runtime import stream_id_for

            self.sim_stream = stream_id_for(self.config)
        self.trips: list[Trip] = []
        self.refused: dict[str, str] = {}
        self._hello_digest = bytes(32)
        self._rc: RoundCommitter | None = None
        self._rs: _Run | None = None
        self._ex: Any = None  # the run's StageExchange
        self._holder_reply: Any = None  # the CKKS key holder's hello reply
        #: the round engine (securefl.engine): this server is its transport (:meth:`rounds`)
        self.engine = RoundEngine(lambda: self._committer(self._run_state()),
                                  evaluate=self._score, max_aborted=MAX_ATTEMPTS)

    def _run_state(self) -> _Run:
        if self._rs is None:
            raise ConfigError("the run has not started")
        return self._rs

    def _score(self) -> dict[str, float]:
        rs = self._run_state()
        return self._evaluate(rs.model, rs.test, rs.target)

    # -- signing ------------------------------------------------------------------------------------
    def _sign(self, body: bytes, domain: str, round_: int) -> Signed:
        return Signed(body=body, signature=sign_bound(self.key, domain=domain,
                                                      session_id=self.session, round_=round_,
                                                      message=body))

    # -- trips ----------------------------------------------------------------------------------------
    def _trip(self, ex: StageExchange, round_: int, stage: str,
              payloads: Mapping[str, ServerPayload]) -> dict[str, Any]:
        t0 = time.monotonic()
        res = ex.exchange(round_, stage, {n: wire.encode(p) for n, p in payloads.items()})
        replies: dict[str, Any] = {}
        for name, data in res.replies.items():
            try:
                replies[name] = decode_client(data)
            except MessageError as err:
                log.error("malformed reply from %s: %s", name, err.code)
        for name, why in res.dropped.items():
            log.warning("round %d stage %s: %s dropped (%s)", round_, stage, name, why)
        entry = Trip(round=round_, stage=stage, seconds=round(time.monotonic() - t0, 3),
                     sent=sorted(payloads), replied=sorted(replies), dropped=dict(res.dropped))
        self.trips.append(entry)
        if self.s.progress is not None:
            with self.s.progress.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(msgspec.to_builtins(entry)) + "\n")
        return replies

    def _feed(self, flight: _Flight, name: str, item: ProtocolItem) -> None:
        """Deliver one bank's message to the round's machine. A message that is not the bank's own
        (wrong sender id) or whose key advertisement is not signed by its manifest key is refused
        (logged) and the bank is a dropout; any other protocol error aborts the round."""
        if flight.aborted is not None:
            return
        try:
            msg = decode_message(item.data)
        except MessageError as err:
            log.error("%s: malformed protocol message (%s)", name, err.code)
            return
        if getattr(msg, "sender", None) != self.ids[name]:
            self.refused[name] = "sender id is not the bank's own"
            log.error("%s sent a message as client %s: refused", name, getattr(msg, "sender", "?"))
            return
        if flight.meter is None:
            flight.meter = ByteMeter(round_byte_limits(flight.machine.config,
                                                         flight.machine.graph).from_client,
                                     "the server")
        try:
            flight.meter.take(name, len(item.data))
        except ByteLimitError as err:
            self.refused[name] = f"{err.code}: over the round's byte limit"
            log.error("%s refused: %s %s", name, err.code, err.message)
            return
        if isinstance(msg, AdvertiseKeys):
            try:
                verify_bound(self.fed.verify_key(name), msg.signature, domain=ADVERTISE_DOMAIN,
                             session_id=self.session, round_=flight.start.round,
                             message=advertise_message(msg.sender, msg.cipher_pk, msg.mask_pk,
                                                       plan_digest(flight.machine.config)))
            except SignatureError as err:
                self.refused[name] = f"{err.code}: key advertisement not signed by its manifest key"
                log.error("%s refused: %s %s", name, err.code, err.message)
                return
        try:
            flight.machine.receive(msg)
        except SecureFLError as err:
            flight.aborted = err
            log.error("round %d aborted: %s %s", flight.start.round, err.code, err.message)

    def _close(self, flight: _Flight) -> dict[str, list[ProtocolItem]]:
        """The stage's deadline: the machine's messages for the next stage, by bank."""
        if flight.aborted is not None:
            return {}
        try:
            out = flight.machine.receive(Deadline())
        except SecureFLError as err:
            flight.aborted = err
            log.error("round %d aborted: %s %s", flight.start.round, err.code, err.message)
            return {}
        by: dict[str, list[ProtocolItem]] = {}
        for o in out:
            by.setdefault(flight.names[o.recipient], []).append(
                ProtocolItem(round=flight.start.round, data=encode_message(o.message)))
        return by

    def _route(self, replies: Mapping[str, Any], flights: Mapping[int, _Flight]) -> None:
        for name, reply in replies.items():
            for item in reply.protocol:
                fl = flights.get(item.round)
                if fl is not None and name in fl.start.participants:
                    self._feed(fl, name, item)
            for fl in flights.values():
                if name in fl.start.participants and fl.start.task == "train":
                    fl.drafts += [d for d in reply.drafts if d.round == fl.start.round
                                  and d.party == f"bank:{name}"]
                    fl.clipped += int(reply.clipped)

    def _bank_infos(self, replies: Mapping[str, Any]) -> dict[str, BankInfo]:
        """The hello replies' BankInfos that their bank signed with its manifest key (the banks
        check participants and weights against them); an unsigned one is refused (logged)."""
        infos: dict[str, BankInfo] = {}
        for name, reply in replies.items():
            if reply.info is None or name not in self.ids:
                continue
            try:
                if reply.info_signature is None:
                    raise SignatureError("BankInfo without the bank's signature")
                verify_bound(self.fed.verify_key(name), reply.info_signature,
                             domain=BANK_INFO_DOMAIN, session_id=self.session, round_=0,
                             message=wire.encode(reply.info))
            except SignatureError as err:
                self.refused[name] = f"{err.code}: BankInfo not signed by its manifest key"
                log.error("%s refused: %s %s", name, err.code, err.message)
                continue
            infos[name] = reply.info
        return infos

    # -- the run ------------------------------------------------------------------------------------
    def plan(self) -> TrainPlan:
        """The session's signed training plan; ConfigError when the run configuration asks for
        what the manifest fixes otherwise (every bank would refuse it, spec section 12.1)."""
        c = self.config
        p = self.fed.params
        if c.rounds > p.max_rounds:
            raise ConfigError(f"the run has {c.rounds} rounds, above the manifest's max_rounds = "
                              f"{p.max_rounds}", hint="fewer rounds, or a new manifest")
        if c.clients_per_round != p.clients_per_round:
            raise ConfigError(f"the run draws clients_per_round = {c.clients_per_round}, the "
                              f"manifest says {p.clients_per_round}",
                              hint="set the manifest's value in the run configuration")
        if c.neighbours is not None and c.neighbours != p.neighbours:
            raise ConfigError(f"the run's neighbours = {c.neighbours}, the manifest says "
                              f"{p.neighbours}", hint="the manifest fixes the SecAgg+ degree")
        n = draw_size(len(self.fed.clients), p.clients_per_round, max(2, p.threshold))
        if c.threshold is not None and c.threshold != p.round_threshold(n):
            raise ConfigError(f"the run's threshold = {c.threshold}, the manifest fixes "
                              f"{p.round_threshold(n)} for rounds of {n} banks",
                              hint="omit the threshold: the manifest's assumptions fix it")
        task = "classification" if c.task == "auto" else c.task
        loss = c.loss if c.loss != "auto" else ("bce" if task == "classification" else "mse")
        from securefl.config import DEFAULT_RECORD_EPSILON

        return TrainPlan(model=c.model, hidden=list(c.hidden), task=task, loss=loss,
                         local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr,
                         optimizer=c.optimizer,
                         prox_mu=c.prox_mu if c.server_optimizer == "fedprox" else 0.0,
                         rounds=c.rounds, dp=c.dp,
                         record_epsilon=(c.record_epsilon if c.record_epsilon is not None
                                         else DEFAULT_RECORD_EPSILON),
                         record_noise_multiplier=c.record_noise_multiplier,
                         record_clip=c.record_clip, delta=c.delta,
                         aggregation="ckks" if c.aggregation == "ckks" else "secagg",
                         clients_per_round=p.clients_per_round,
                         stats_noise_multiplier=self._stats_noise())

    def _stats_noise(self) -> float:
        """Round 0's record-level noise multiplier: ``securefl run``'s rule (the default with DP
        on, none without); the banks refuse 0 with DP on."""
        from securefl.config import DEFAULT_STATS_NOISE

        c = self.config
        if not c.dp:
            return 0.0
        return c.stats_noise_multiplier if c.stats_noise_multiplier is not None \
            else DEFAULT_STATS_NOISE

    def _stats_inputs(self) -> tuple[Any, tuple[tuple[int, ...], ...]]:
        """The public ranges and groups of round 0's inputs: the pinned data schema's (server
        setting ``schema``), or without one the embedded table's encoding."""
        if self.s.schema is not None:
            from securefl.data.schema import load_pinned_schema, schema_inputs

            ranges, groups = schema_inputs(load_pinned_schema(self.s.schema,
                                                              self.fed.params.data_schema))
        elif self.fed.params.data_schema is not None:
            raise ConfigError("the manifest pins a data schema and the server has none: round 0's "
                              "noised statistics need its public ranges",
                              hint='add "schema": PATH (the agreed schema file) to the server '
                                   'deployment file')
        else:
            from securefl.data.encoding import embedded_inputs

            ranges, groups = embedded_inputs(self.config.label or "default")
        return ranges, groups

    @property
    def planner(self) -> RoundPlanner:
        """The session's round planner (securefl.protocol.plan.RoundPlanner): the manifest's
        assumptions and threshold rule, the run's clip and client-level noise multiplier (0
        without DP). Every bank derives the same RoundSpec from the signed plan
        (securefl.deploy.common.round_spec)."""
        c = self.config
        return self.fed.params.planner(self.session, clip_norm=c.clip_norm,
                                       noise_multiplier=c.noise_multiplier if c.dp else 0.0)

    def _start(self, round_: int, participants: list[str], dim: int, *, clip: float,
               weights: dict[str, float], target_scale_log2: int | None = None,
               round0_threshold: int | None = None, stats: Any = None,
               stats_groups: tuple[tuple[int, ...], ...] = ()) -> tuple[RoundStart, Signed]:
        k = len(participants)
        if round_ == 0:  # standardisation needs every bank that sent a signed size
            t0 = round0_threshold or k
            start = RoundStart(session=self.session, round=0, task="moments",
                               participants=participants, threshold=t0, clip_norm=clip,
                               noise_multiplier=0.0, min_survivors=t0,
                               degree=k - 1,  # classic SecAgg always (spec 12.1, S6b-2)
                               precision_bits=29 - max(1, int(np.ceil(np.log2(k)))), dim=dim,
                               target_scale_log2=target_scale_log2, sim_stream=self.sim_stream,
                               stats_ranges=([(float(lo), float(hi)) for lo, hi in stats]
                                             if stats is not None else []),
                               stats_groups=[list(g) for g in stats_groups])
        else:
            # the manifest fixes T for n = k; every bank checks it (spec 12.1, S6b-4)
            planner = self.planner
            threshold = planner.threshold_for(k)
            start = RoundStart(session=self.session, round=round_, task="train",
                               participants=participants, threshold=threshold,
                               clip_norm=planner.clip_norm,
                               noise_multiplier=planner.noise_multiplier,
                               min_survivors=threshold, degree=planner.degree,
                               precision_bits=self.fed.params.precision_bits,
                               dim=dim, weights={p: weights[p] for p in participants
                                                 if p in weights},
                               sim_stream=self.sim_stream)
        return start, self._sign(wire.encode(start), START_DOMAIN, round_)

    def _flight(self, start: RoundStart) -> _Flight:
        spec = round_spec(start, self.ids, self._hello_digest, self.fed.params)
        enc, threshold = encoding_for(start, spec)
        machine = SecAggServer(secagg_config(start, spec, enc, threshold, self.fed),
                               identity_roster(self.fed, self.session))
        return _Flight(start=start, spec=spec, enc=enc, machine=machine,
                       names={self.ids[p]: p for p in start.participants}, t0=time.perf_counter())

    def _sum(self, fl: _Flight) -> tuple[NDArray[np.float64], tuple[int, ...], dict[int, str]]:
        """The released sum (input units), the survivors and who dropped where; raises
        AggregationAbortedError when the round cannot release (securefl.protocol.secagg.check_release)."""
        if fl.aborted is not None:
            raise fl.aborted
        res = fl.machine.result
        if res is None:
            raise AggregationAbortedError(f"round {fl.start.round} ended without a result")
        check_release(fl.spec, len(res.survivors))
        total = quantize.from_field(res.field_sum, fl.enc.bits).astype(np.float64) * fl.enc.gamma
        return total, res.survivors, dict(res.dropped_at)

    def run(self, link: Link, nodes: Mapping[str, int]) -> dict[str, Any]:
        """The whole run; returns the result written to result.json (securefl.result.RunResult's
        ``to_dict()``, protocols/audit/result.schema.json)."""
        import torch

        from securefl.fl.models import build_model
        from securefl.fl.params import get_flat
        from securefl.fl.server_opt import ServerOptimizer

        c, fed = self.config, self.fed
        t_run = time.monotonic()
        admitted = {}
        holder = fed.key_holder if self.ckks else None
        for name, nid in nodes.items():
            if name in self.ids or name == holder:
                admitted[name] = nid
            else:
                err = SignatureError(f"Flower node {name!r} is not a client in the manifest")
                self.refused[name] = f"{err.code}: not in the manifest"
                log.error("refused node %s: %s %s", name, err.code, err.message)
        ex = StageExchange(link=link, federation=fed.digest, session=self.session,
                           server=fed.server, nodes=admitted, timeout_s=self.s.stage_timeout_s)
        plan = self.plan()
        stats = (self._stats_inputs() if plan.stats_noise_multiplier > 0 and not self.s.resume
                 else None)
        hello = self._sign(wire.encode(Hello(session=self.session, federation=fed.digest,
                                             plan=plan, counter=self.counter,
                                             sim_stream=self.sim_stream)), HELLO_DOMAIN, 0)
        self._hello_digest = hashlib.sha256(hello.body).digest()  # bound into every SecAgg plan
        replies = self._trip(ex, 0, "hello", {n: ServerPayload(hello=hello) for n in admitted})
        infos = self._bank_infos(replies)
        banks = [n for n in fed.clients if n in infos]
        if len(banks) < max(2, fed.params.threshold):
            raise AggregationAbortedError(f"only {len(banks)} banks answered the hello")
        d = {infos[b].n_features for b in banks}
        if len(d) != 1:
            raise ConfigError(f"the banks disagree on the number of features: {sorted(d)}")
        n_features = d.pop()
        sizes = {b: infos[b].n_train for b in banks}
        target_scale = None
        if plan.task == "regression":
            logs = [infos[b].target_abs_log2 for b in banks]
            if any(x is None for x in logs):
                raise ConfigError("a regression run needs every bank's target scale")
            target_scale = max(int(x) for x in logs if x is not None)
        torch.manual_seed(c.seed)
        model = build_model(c.model, n_features, c.hidden)
        rs = _Run(plan=plan, banks=banks, infos=infos, sizes=sizes, n_features=n_features,
                  weights=fedavg_weights(sizes),
                  signed_infos=[SignedBankInfo(member=b, info=infos[b],
                                               signature=replies[b].info_signature)
                                for b in banks],
                  bound=float(2.0 ** max(infos[b].moments_norm_log2 + 1 for b in banks)),
                  model=model, w=get_flat(model),
                  server_opt=ServerOptimizer(kind=c.server_optimizer, lr=c.server_lr),
                  target_scale_log2=target_scale)
        if stats is not None:
            if stats[0].shape[0] != n_features:
                raise ConfigError(f"the banks hold {n_features} features, the public ranges "
                                  f"cover {stats[0].shape[0]}: round 0 cannot be noised",
                                  hint="pin a data schema in the manifest and give it to the "
                                       "server (schema), or run without DP")
            rs.stats_ranges, rs.stats_groups = stats
        self._rs, self._ex = rs, ex
        self._holder_reply = replies.get(holder) if holder else None
        if self.s.resume:
            self._resume(rs)
            self.engine.history = RoundEngine.resumed(rs.store)
        self.engine.run(self, rs.first_round, c.rounds)
        store, history = rs.store, self.engine.history
        privacy: dict[str, Any] = {}
        if c.dp:
            from securefl.dp.report import privacy_report

            privacy = privacy_report(rs.ledger, c.delta, "rdp")
        result = RunResult(
            securefl_version=__version__, transport="flower", session_id=self.session.hex(),
            aggregation=fed.params.aggregation, insecure=False,
            dp=c.dp, task=plan.task, manifest_sha256=fed.digest, run_dir=str(store.run_dir),
            rounds_completed=sum(1 for h in history if h.aborted is None),
            final_metrics=history[-1].metrics if history else {},
            history=history, baselines={}, privacy=privacy,
            model_sha256=store.model_sha256(store.last_round),
            seconds=round(time.monotonic() - t_run, 3), stopped_early=self.engine.stopped,
            round_trips=len(self.trips), round_trips_per_round=self.trips_per_round,
            trips=self.trips, refused=self.refused)
        store.finish(result)
        from securefl.report import write_report  # the compliance report (issue 20)

        write_report(store.run_dir)
        return result.to_dict()

    # -- the rounds, per aggregation mode -------------------------------------------------------------
    def rounds(self, engine: RoundEngine, first: int, last: int) -> Iterator[RoundOutcome]:
        """The deployment as the round engine's transport (securefl.engine.RoundTransport):
        SecAgg or CKKS rounds over Flower round trips, from round ``first`` (0: standardisation
        first, which no outcome reports) to ``last``."""
        rs = self._run_state()
        if self.ckks:
            yield from self._run_ckks(self._ex, rs, self._holder_reply, first, last)
        else:
            yield from self._run_secagg(self._ex, rs, first, last)

    def _run_secagg(self, ex: StageExchange, rs: _Run, first: int, last: int
                    ) -> Iterator[RoundOutcome]:
        """SecAgg rounds, pipelined: round r's first trip carries round r - 1's unmask, and
        round r - 1's outcome goes to the engine before round r's model is sent."""
        prev: _Flight | None = None
        carry: dict[str, list[ProtocolItem]] = {}
        for r in range(first, last + 1):
            if prev is not None and prev.aborted is not None and \
                    self._aborted_in_a_row() + 1 >= MAX_ATTEMPTS:
                # the last attempt, in the audit log
                yield from self._settle(rs, self._secagg_done(prev))
                prev = None
            participants, start, signed = self._next_round(rs, r)
            fl = self._flight(start)
            payloads = {n: ServerPayload(protocol=carry.get(n, []), start=signed,
                                         banks=rs.signed_infos)
                        for n in self._live(rs, participants)}
            for n, items in carry.items():
                if n not in payloads:
                    payloads[n] = ServerPayload(protocol=items)
            flights = {f.start.round: f for f in (prev, fl) if f is not None}
            replies = self._trip(ex, r, "advertise", payloads)
            rs.silent |= set(payloads) - set(replies)
            self._route(replies, flights)
            if prev is not None:
                self._close(prev)
                yield from self._settle(rs, self._secagg_done(prev))
            roster = self._close(fl)
            model_msg = self._model_message(rs, r)
            if model_msg is not None:  # every bank signs the survivor set with this digest
                fl.machine.input_binding = hashlib.sha256(model_msg.body).digest()
            for stage in ("share", "masked", "consistency"):
                out = roster if stage == "share" else self._close(fl)
                if fl.aborted is not None:
                    break
                pl = {n: ServerPayload(protocol=items,
                                       model=model_msg if stage == "share" else None)
                      for n, items in out.items()}
                replies = self._trip(ex, r, stage, pl)
                rs.silent |= set(pl) - set(replies)
                self._route(replies, {r: fl})
            carry = self._close(fl) if fl.aborted is None else {}
            prev = fl
        if prev is not None:
            if carry:
                replies = self._trip(ex, prev.start.round, "unmask",
                                     {n: ServerPayload(protocol=i) for n, i in carry.items()})
                self._route(replies, {prev.start.round: prev})
                self._close(prev)
            yield from self._settle(rs, self._secagg_done(prev))

    def _secagg_done(self, fl: _Flight) -> _Done:
        done = _Done(start=fl.start, names=fl.names, t0=fl.t0, drafts=fl.drafts,
                     clipped=fl.clipped, aggregation="secagg")
        try:
            done.total, done.survivors, done.dropouts = self._sum(fl)
        except SecureFLError as err:
            done.error = err
            return done
        done.aggregate_digest = hashlib.sha256(done.total.tobytes()).hexdigest()
        done.noise, done.encoding = fl.spec.noise, fl.enc
        return done

    def _run_ckks(self, ex: StageExchange, rs: _Run, holder_reply: Any, from_round: int,
                  last: int) -> Iterator[RoundOutcome]:
        """CKKS rounds (securefl.deploy.ckks): four trips each, no pipelining (a round's plan
        needs the previous release). Each round has its own key: its public context, signed by
        the key holder for (session, round), comes with the previous round's release, or else
        from a "key" trip to the key holder alone."""
        from securefl.deploy.ckks import contexts_in, key_request, public_context, run_ckks_round
        from securefl.errors import StateError

        c, fed = self.config, self.fed
        holder = fed.key_holder
        if holder is None or holder_reply is None:
            raise AggregationAbortedError("the CKKS key holder refused the hello: it did not "
                                          "publish its public context")
        # the signed hello again (Ed25519 is deterministic: the same bytes the hello trip sent),
        # for every payload to the key holder, so a restarted key holder node can go on
        hello = self._sign(wire.encode(Hello(session=self.session, federation=fed.digest,
                                             plan=rs.plan, counter=self.counter,
                                             sim_stream=self.sim_stream)), HELLO_DOMAIN, 0)
        if hashlib.sha256(hello.body).digest() != self._hello_digest:
            raise StateError("the hello for the key holder is not the run's hello")
        contexts: dict[int, bytes] = {}

        def trip(round_: int, stage: str, payloads: Mapping[str, ServerPayload]
                 ) -> dict[str, Any]:
            replies = self._trip(ex, round_, stage, payloads)
            rs.silent |= {n for n in set(payloads) - set(replies) if n != holder}
            return replies

        for r in range(from_round, last + 1):
            participants, start, signed = self._next_round(rs, r)
            if r not in contexts:
                replies = trip(r, "key", {holder: ServerPayload(
                    hello=hello, protocol=[key_request(self.session, r)])})
                contexts.update(contexts_in(replies.get(holder)))
            context = contexts.pop(r, None)
            if context is None:
                raise AggregationAbortedError(f"the CKKS key holder did not publish its public "
                                              f"context for round {r}")
            public = public_context(fed, context, self.session, r)  # its manifest key, (s, r)
            model_msg = self._model_message(rs, r)
            live = self._live(rs, participants)
            first = {n: ServerPayload(protocol=[ProtocolItem(round=r, data=context)],
                                      start=signed, model=model_msg, banks=rs.signed_infos)
                     for n in live}
            names = {self.ids[p]: p for p in participants}
            done = _Done(start=start, names=names, t0=time.perf_counter(), aggregation="ckks")

            def collect(round_: int, stage: str, payloads: Mapping[str, ServerPayload],
                        done: _Done = done) -> dict[str, Any]:
                replies = trip(round_, stage, payloads)
                if stage == "commit":
                    self._collect_drafts(done, replies)
                return replies

            try:
                res = run_ckks_round(trip=collect, fed=fed, server_key=self.key, public=public,
                                     start=start, first=first, key_holder=holder,
                                     verifiers=rs.plan.ckks_verifiers,
                                     verifier_skips=rs.plan.ckks_verifier_skips, hello=hello,
                                     next_round=r + 1 if r < c.rounds else None)
            except SecureFLError as err:
                log.error("round %d aborted: %s %s", r, err.code, err.message)
                done.error = err
            else:
                if res.next_context is not None:
                    contexts[r + 1] = res.next_context
                self.refused.update(res.refused)
                done.total, done.survivors, done.dropouts = res.total, res.survivors, res.dropouts
                done.weight_total = res.weight_total
                done.input_digests = dict(res.input_digests)
                done.aggregate_digest = res.aggregate_digest
                done.noise = round_spec(start, self.ids, params=fed.params).noise
            yield from self._settle(rs, done)

    def _collect_drafts(self, done: _Done, replies: Mapping[str, Any]) -> None:
        """The record-level DP-SGD ledger drafts and clipping flags the banks sent with their
        input (train rounds)."""
        if done.start.task != "train":
            return
        for name, reply in replies.items():
            if name in done.start.participants:
                done.drafts += [d for d in reply.drafts if d.round == done.start.round
                                and d.party == f"bank:{name}"]
                done.clipped += int(reply.clipped)

    def _aborted_in_a_row(self) -> int:
        """Rounds aborted in a row, most recent first: each left the global model unchanged, so
        each was an attempt at the same input (MAX_ATTEMPTS bounds them; the engine's count)."""
        return self.engine.aborted_in_a_row()

    def _next_round(self, rs: _Run, r: int) -> tuple[list[str], RoundStart, Signed]:
        """Round r's participants and its signed plan: round 0 sums the moment vectors, later
        rounds the model updates. The participants are the public draw every bank recomputes
        (securefl.deploy.common.round_participants over the manifest's clients): all of them, or
        with ``clients_per_round`` < 1 max(floor, round(q n)) of them. Banks that went silent or
        sent no signed size stay drawn; they get no payload and are SecAgg dropouts, so they
        lower no threshold (spec section 12.1)."""
        if r > 0:  # the engine's abort policy
            self.engine.check_attempts(r, self._aborted_in_a_row())
        available = len([b for b in rs.banks if b not in rs.silent])
        floor = max(2, self.fed.params.threshold)
        if available < floor:
            raise AggregationAbortedError(
                f"round {r}: {available} banks left, fewer than the manifest's threshold "
                f"{floor}")
        participants = public_draw(self.fed, self.session, r,
                                   self.fed.params.clients_per_round if r > 0 else 1.0)
        target_cols = 1 if rs.target_scale_log2 is not None else 0
        dim = 1 + 2 * (rs.n_features + target_cols) if r == 0 else int(rs.w.size)
        start, signed = self._start(r, participants, dim, clip=rs.bound, weights=rs.weights,
                                    target_scale_log2=rs.target_scale_log2,
                                    round0_threshold=len([p for p in participants
                                                          if p in rs.weights]),
                                    stats=rs.stats_ranges, stats_groups=rs.stats_groups)
        return participants, start, signed

    def _live(self, rs: _Run, participants: list[str]) -> list[str]:
        """The drawn banks the server sends the round to: those with a signed size that have not
        gone silent (the others are the round's dropouts)."""
        return [p for p in participants if p in rs.weights and p not in rs.silent]

    def _model_message(self, rs: _Run, r: int) -> Signed | None:
        if r == 0:
            return None
        gm = GlobalModel(round=r, weights=rs.w.astype("<f8").tobytes(),
                         moments_total=rs.moments_total, target_scale_log2=rs.target_scale_log2)
        return self._sign(wire.encode(gm), MODEL_DOMAIN, r)

    def _store_config(self) -> dict[str, Any]:
        """The run configuration the run directory records (config.json)."""
        return {**{k: v for k, v in self.config.to_dict().items() if k != "out"},
                "deployment": {"transport": "flower", "manifest_sha256": self.fed.digest,
                               "stage_timeout_s": self.s.stage_timeout_s}}

    def _test_set(self, total: NDArray[np.float64], target_scale_log2: int | None
                  ) -> tuple[Any, Any] | None:
        """The server's evaluation rows, standardised with the released round-0 sum: a raw table
        encoded with the pinned data schema (setting ``schema``; missing cells filled from the
        sum, as every bank fills its own), or else an already encoded numeric CSV."""
        if self.s.test_data is None:
            return None
        from securefl.deploy.client import load_bank_csv, load_bank_rows

        imputations: tuple[Any, ...] = ()
        if self.s.schema is not None:
            Xt, yt, imputations = load_bank_rows(self.s.test_data, self.s.label, self.s.schema,
                                                 self.fed.params.data_schema)
        else:
            Xt, yt = load_bank_csv(self.s.test_data, self.s.label)
        stdz, _ = split_standardisation(total, target_scale_log2, imputations)
        if imputations:
            from securefl.data.schema import apply_fills

            return stdz.transform(apply_fills(Xt, imputations, round0_fills(
                total, target_scale_log2, imputations))), yt
        return stdz.transform(Xt), yt

    def _resume(self, rs: _Run) -> None:
        """Continue ``run_dir`` after its last committed round: it is recovered and verified
        (securefl.audit.store.RunStore.open), its configuration, manifest and the banks' public
        facts must be this run's, and the model, server optimizer state, ledger and the released
        standardisation sum (checked against its digest in the signed federation facts) are
        loaded. Round 0 is not repeated: banks standardise with the stored sum."""
        from securefl.audit import layout as L
        from securefl.audit.records import canonical_json
        from securefl.audit.store import RunStore

        run_dir = self.s.run_dir
        if not (run_dir / L.COMMIT).exists():
            raise ConfigError(f"nothing to resume in {run_dir}",
                              hint="drop \"resume\" to start a new run there")
        store = RunStore.open(run_dir, server_key=self.key)
        if L.decode_commit(L.read_bytes(run_dir, L.COMMIT)).result_sha256 is not None:
            raise ConfigError(f"the run in {run_dir} is finished; nothing to resume")
        if L.read_bytes(run_dir, L.CONFIG) != canonical_json(self._store_config()):
            raise ConfigError(f"{run_dir}/config.json does not match this run's configuration")
        facts = json.loads(L.read_bytes(run_dir, L.FEDERATION))["members"]
        mine = {"banks": [{"name": b, "train_examples": rs.sizes[b]} for b in rs.banks],
                "n_features": rs.n_features, "manifest_sha256": self.fed.digest}
        if {k: facts.get(k) for k in mine} != mine:
            raise ConfigError("the banks' public facts (names, rows, features) or the manifest "
                              f"differ from the run being resumed in {run_dir}")
        std = facts.get("standardisation", {})
        moments = np.asarray(std.get("moments_total", []), dtype=np.float64)
        if hashlib.sha256(moments.tobytes()).hexdigest() != std.get("aggregate_sha256"):
            raise ConfigError(f"{run_dir}: the stored standardisation sum does not match its "
                              "digest")
        rs.moments_total = [float(v) for v in moments]
        rs.ledger = Ledger.from_bytes(L.read_bytes(run_dir, L.LEDGER))
        rs.stats_drafts = self._round0_drafts(std, rs.ledger, rs.banks, run_dir)
        if std.get("target_scale_log2") != rs.target_scale_log2:
            raise ConfigError(f"{run_dir}: the stored target scale differs from this run's")
        _, rs.target = split_standardisation(moments, rs.target_scale_log2)
        rs.test = self._test_set(moments, rs.target_scale_log2)
        server = TorchServerModel(rs.model, rs.server_opt)
        server.restore(store.model_bytes(store.last_round))
        rs.w = server.weights
        rs.store, rs.first_round = store, store.last_round + 1
        log.info("resuming %s after round %d", run_dir, store.last_round)

    def _settle(self, rs: _Run, done: _Done) -> Iterator[RoundOutcome]:
        """Close one round: round 0 standardises and creates the run store (:meth:`_finish`); a
        training round is yielded to the round engine as its typed outcome, which commits it (or
        its abort) to the audit log and ledger; then the server's copy of the global weights
        follows."""
        if done.start.round == 0:
            self._finish(rs, done)
            return
        yield self._outcome(rs, done)
        rs.w = self._committer(rs).model.weights  # type: ignore[attr-defined]

    def _finish(self, rs: _Run, done: _Done) -> None:
        """Close round 0: the released moment sum standardises, and the run store is created."""
        from securefl.audit.store import RunStore
        from securefl.fl.params import model_tensors, to_bytes

        fed = self.fed
        if done.error is not None:  # no standardisation without round 0's release
            raise done.error
        total = self._round0_release(rs, done)
        rs.moments_total = [float(v) for v in total]
        _, rs.target = split_standardisation(total, rs.target_scale_log2)
        rs.test = self._test_set(total, rs.target_scale_log2)
        facts = {
            "banks": [{"name": b, "train_examples": rs.sizes[b]} for b in rs.banks],
            "data_source": "each bank's own file (deployment)", "task": rs.plan.task,
            "n_features": rs.n_features, "manifest_sha256": fed.digest,
            "standardisation": {"mode": fed.params.aggregation, "aggregate_sha256":
                                hashlib.sha256(total.tobytes()).hexdigest(),
                                "moments_total": rs.moments_total,
                                "target_scale_log2": rs.target_scale_log2,
                                "noise_multiplier": rs.plan.stats_noise_multiplier,
                                **({"ledger": rs.stats_ledger} if rs.stats_ledger else {})},
            "record_noise_multiplier": {b: rs.infos[b].record_noise_multiplier
                                        for b in rs.banks},
        }
        rs.store = RunStore.create(self.s.run_dir, config=self._store_config(),
                                   server_key=self.key,  # the manifest's server key
                                   origin=f"securefl/{self.session.hex()}",
                                   initial_model=to_bytes(model_tensors(rs.model)),
                                   federation=facts, write_key_file=False)

    def _outcome(self, rs: _Run, done: _Done) -> RoundOutcome:
        """A training round's typed outcome (securefl.engine.RoundOutcome): the release, or the
        error with the banks still alive (the silent ones are its dropouts). The round-0
        release's ledger drafts (noised statistics) are committed with round 1, as in the
        simulation."""
        r, participants = done.start.round, tuple(done.start.participants)
        if r == 1 and rs.stats_drafts:
            done.drafts = [*rs.stats_drafts, *done.drafts]
        if done.error is not None:
            return RoundOutcome(round=r, participants=participants, error=done.error,
                                alive=tuple(p for p in participants if p not in rs.silent),
                                dropouts={p: "silent" for p in participants if p in rs.silent},
                                drafts=tuple(done.drafts), clipped=done.clipped,
                                started=done.t0)
        release = Release.of(done.total, done.survivors, done.names, rs.weights,
                             dropouts=done.dropouts, input_digests=done.input_digests,
                             aggregate_digest=done.aggregate_digest,
                             weight_total=done.weight_total, encoding=done.encoding)

        return RoundOutcome(round=r, participants=participants, release=release,
                            drafts=tuple(done.drafts), noise=done.noise, dim=done.start.dim,
                            clipped=done.clipped, started=done.t0)

    def _round0_release(self, rs: _Run, done: _Done) -> NDArray[np.float64]:
        """Round 0's released sum in input units. With noised statistics the banks summed their
        rows' moments in the public ranges (securefl.protocol.round0): unscale them, and draft
        one record-level ledger event per bank in the sum."""
        total: NDArray[np.float64] = np.asarray(done.total, dtype=np.float64)
        z = rs.plan.stats_noise_multiplier
        if z <= 0:
            return total
        from securefl.data.standardize import moments_sensitivity, unscale_moments
        from securefl.protocol.round0 import stats_drafts, with_target

        ranges, groups = np.asarray(rs.stats_ranges, dtype=np.float64), rs.stats_groups
        if rs.target_scale_log2 is not None:
            ranges, groups = with_target(ranges, groups)
        rs.stats_ledger = {
            "banks": [done.names[i] for i in sorted(done.survivors)],
            "sensitivity": moments_sensitivity(groups),
            "noise_source": "seeded_chacha20" if self.s.insecure_sim_streams else "os_csprng"}
        rs.stats_drafts = stats_drafts(z=z, **rs.stats_ledger)
        out: NDArray[np.float64] = unscale_moments(total, ranges)
        return out

    @staticmethod
    def _round0_drafts(std: Mapping[str, Any], ledger: Ledger, banks: list[str], run_dir: Path
                       ) -> list[Any]:
        """On resume, round 0's ledger drafts again if its release is noised and no round has
        committed them yet (the server died, or was stopped, before round 1's commit): re-derived
        from the run store's facts (``standardisation``: z, and the banks in the sum, the
        sensitivity and the noise source :meth:`_round0_release` recorded), so the finished
        ledger holds round 0's events exactly once."""
        from typing import get_args

        from securefl.dp.ledger import NoiseSource
        from securefl.protocol.round0 import stats_drafts

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < np.inf

        z: Any = std.get("noise_multiplier")
        if not number(z) or any(e.round == 0 for e in ledger.entries):
            return []
        facts = std.get("ledger")
        if not isinstance(facts, dict) or set(facts) != {"banks", "sensitivity", "noise_source"} \
                or not isinstance(facts["banks"], list) or not facts["banks"] \
                or len(set(facts["banks"])) != len(facts["banks"]) \
                or not all(isinstance(b, str) and b in banks for b in facts["banks"]) \
                or not number(facts["sensitivity"]) \
                or facts["noise_source"] not in get_args(NoiseSource):
            raise ConfigError(f"{run_dir}: round 0's release is noised but the run store's facts "
                              "do not say what it spent (the banks in the sum, the sensitivity, "
                              "the noise source): its ledger events cannot be re-derived",
                              hint="start the run again in a new run directory")
        return stats_drafts(facts["banks"], float(z), float(facts["sensitivity"]),
                            facts["noise_source"])

    def _committer(self, rs: _Run) -> RoundCommitter:
        """The run's round committer (securefl.committer), over the store round 0 created or
        the resumed one."""
        if self._rc is None or self._rc.store is not rs.store:
            c = self.config
            events = ClientEvents(
                clip_norm=c.clip_norm,
                sampling="all" if c.clients_per_round >= 1 else "fixed_size",
                noise_source="seeded_chacha20" if self.s.insecure_sim_streams else "os_csprng")
            self._rc = RoundCommitter(rs.store, rs.ledger, TorchServerModel(rs.model,
                                                                            rs.server_opt),
                                      session_id=self.session,
                                      aggregation=self.fed.params.aggregation, events=events)
        return self._rc

    @staticmethod
    def _evaluate(model: Any, test: tuple[Any, Any] | None, target: Any) -> dict[str, float]:
        """Metrics on the server's own test file (classification; regression in label units:
        ``target`` maps predictions back, as securefl run reports them)."""
        if test is None:
            return {}
        from securefl.fl.metrics import classification_metrics, regression_metrics
        from securefl.fl.train import predict

        y = np.asarray(test[1], dtype=np.float64)
        if target is None:
            return classification_metrics(y, predict(model, test[0], "classification"))
        return regression_metrics(y, target.inverse(predict(model, test[0], "regression")))
