"""The federated run: wires data, local training, an aggregation mode, DP, the ledger and the audit
log together (DESIGN.md section 3). Everything here is the simulation driver of ``securefl run``: every
bank, the server (and the CKKS key holder) live in this process, each seeing only what the protocol
gives it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from securefl import __version__
from securefl.aggregators import Aggregator, RandomFactory, make_aggregator
from securefl.config import DEFAULT_RECORD_EPSILON, DEFAULT_STATS_NOISE, RunConfig
from securefl.crypto.random import SimulationRandomness
from securefl.engine import (
    NO_PHASE,
    PHASES,
    PhaseCallback,
    ProgressCallback,
    RoundEngine,
    RoundOutcome,
)
from securefl.errors import BudgetExceededError, ConfigError, DataError
from securefl.protocol.plan import NoisePlan, RoundPlanner
from securefl.result import RoundReport, RunResult

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.transport.policy import Deadlines

__all__ = [
    "PHASES",
    "RoundReport",
    "RunResult",
    "run",
    "sample_participants",
    "session_id_for",
    "stream_id_for",
    "train",
]

class _Randomness(SimulationRandomness):
    """The simulation's streams (see :class:`securefl.crypto.random.SimulationRandomness`), plus the
    per-round factory the aggregators take. A deployment uses the OS CSPRNG (DESIGN.md section 8)."""

    def factory(self, round_: int) -> RandomFactory:
        """The (client, purpose) -> source callable the aggregators take, for one round."""

        def make(party: int, purpose: str) -> RandomSource:
            return self.source(round_, party, purpose)

        return make


#: options that change what is reported, not what the federation computes
REPORTING_ONLY = ("out", "baselines")
#: options added later, left out of the session id at their default so that earlier runs keep
#: their session ids (and the simulation's random streams)
_NEW_OFF = ("schema", "stats_noise_multiplier")


def stream_id_for(config: RunConfig, extra: bytes = b"") -> bytes:
    """What the simulation's random streams are keyed by (with the seed): the session id of the
    configuration with the aggregation mode left out, so ``plain``, ``secagg`` and ``ckks`` runs with
    the same seed train on the same draws (DP-SGD, rounding, continuous noise) and differ only by
    what the mode itself does. A ``--data`` (and ``--schema``) file enters by its content (SHA-256),
    not its path: the same table and seed give the same run wherever the file lives (a path-keyed
    stream gave a test other draws in every pytest session, issue 18)."""
    files = {k: "sha256:" + _file_sha256(v)
             for k, v in (("data", config.data), ("schema", config.schema)) if v is not None}
    return session_id_for(config.replace(aggregation="plain", **files), extra)


def _file_sha256(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}",
                        hint="check the path of --data / --schema") from exc


def session_id_for(config: RunConfig, extra: bytes = b"") -> bytes:
    """The 16-byte session id of a run: a hash of its configuration, reporting-only options aside
    (so ``securefl run`` and ``securefl run --baselines`` train the same federated model), and of
    ``extra`` (a library run's model and banks, :func:`train`)."""
    body = json.dumps({k: v for k, v in config.to_dict().items()
                       if k not in REPORTING_ONLY and not (k in _NEW_OFF and v is None)},
                      sort_keys=True)
    return hashlib.sha256(b"securefl-session-v1" + body.encode() + extra).digest()[:16]


def sample_participants(seed: int, round_: int, n_banks: int, fraction: float,
                        floor: int = 2) -> tuple[int, ...]:
    """The banks (ids 0..n_banks-1) taking part in ``round_``: max(floor, round(fraction * n))
    of them, drawn without replacement from a generator keyed by (seed, round). Public
    randomness: who takes part is not secret, and no amplification by sampling is claimed."""
    k = max(floor, round(fraction * n_banks))
    rng = np.random.default_rng([seed, round_, 1])
    return tuple(sorted(int(i) for i in rng.choice(n_banks, size=min(k, n_banks),
                                                   replace=False)))


def _discard_unfinished_create(run_dir: Path) -> bool:
    """A run killed while its directory was being created (before the first COMMIT) committed
    nothing: remove exactly the files creation writes, so the run starts afresh. Returns True if it
    did; refuses (AuditError) when anything else is in the directory."""
    from securefl.audit import layout as L
    from securefl.errors import AuditError

    if (run_dir / L.COMMIT).exists() or not run_dir.exists():
        return False
    known = {L.CONFIG, L.FEDERATION, L.SERVER_KEY, L.model_name(0), *L.APPEND_ONLY}
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    rel = [p.relative_to(run_dir).as_posix() for p in files]
    strangers = [r for r, p in zip(rel, files, strict=True)
                 if r not in known and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if strangers:
        raise AuditError(f"{run_dir} has no COMMIT but holds {', '.join(sorted(strangers)[:5])}",
                         hint="not a securefl run directory; nothing was changed")
    for p in files:
        p.unlink()
    for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
        d.rmdir()
    return True


#: RunConfig.model of a library run: the caller's own torch model (:func:`train`)
CUSTOM_MODEL = "custom"


@dataclass
class _Setup:
    """What a run federates: the banks (securefl.bank.Bank), the global model, how it is scored,
    and the run-directory facts that describe them."""

    banks: list[Any]
    model: Any
    evaluate: Callable[[Any], dict[str, float]]
    task: str
    facts: dict[str, Any]
    baselines: Callable[[], dict[str, dict[str, float]]] | None = None
    #: bytes that, with the config, key the session id (a library run's model and banks)
    identity: bytes = b""


class Engine:
    """One federated run: the single round engine behind :func:`run` (``securefl run``) and
    :func:`train` (your own model and banks)."""

    def __init__(self, config: RunConfig, *, resume: Path | None = None,
                 custom: _Setup | None = None, deadlines: Deadlines | None = None) -> None:
        self.config = config
        #: per-stage deadlines (securefl.transport.policy): stragglers become dropouts
        self.deadlines = deadlines
        #: bank -> the round whose local training overran ``deadlines.training_s``
        self.late_training: dict[int, int] = {}
        self.resume = resume
        self._custom = custom
        extra = custom.identity if custom is not None else b""
        self.session_id = session_id_for(config, extra)
        self.random = _Randomness(config.seed, stream_id_for(config, extra))
        self._account: Any = None  # securefl.dp.budget.RunningAccount, made on first use
        self._stats_drafts: list[Any] = []  # the round-0 release's ledger drafts (noised moments)
        self._schema_drafted = False
        self._stats_z = 0.0  # the round-0 release's noise multiplier (0: none)

    # -- setup ------------------------------------------------------------------------------------
    def _load_data(self) -> Any:
        from securefl.data import build_federated_data

        c = self.config
        return build_federated_data(
            data=c.data, label=c.label, task=None if c.task == "auto" else c.task,
            split_by=c.split_by, banks=c.banks, partition=c.partition,  # type: ignore[arg-type]
            alpha=c.alpha,
            test_fraction=c.test_fraction, local_test_fraction=c.local_test_fraction, seed=c.seed,
            schema=self._data_schema(),
        )

    def _data_schema(self) -> Any:
        """The data schema of a --data table: --schema's file, or one drafted in memory from the
        whole table (said in a warning and recorded in the run directory's facts)."""
        import logging

        from securefl.data.schema import draft_schema, load_schema, read_cells

        c = self.config
        if c.data is None:
            return None
        if c.schema is not None:
            return load_schema(c.schema)
        if c.label is None:
            raise DataError("a data file needs --label COLUMN", hint="name the label column")
        cells, _ = read_cells(c.data)
        schema = draft_schema(cells, label=c.label, task=None if c.task == "auto" else c.task,
                              source=c.data, exclude=(c.split_by,) if c.split_by else ())
        self._schema_drafted = True
        logging.getLogger(__name__).warning(
            "no --schema: drafted a data schema in memory from the whole table (%d features); "
            "review one with `securefl data schema %s --label %s --out schema.toml` and pass "
            "--schema schema.toml", len(schema.features), c.data, c.label)
        return schema

    def _stats_noise(self, fed: Any) -> float:
        """The round-0 release's record-level noise multiplier (0: none)."""
        c = self.config
        if c.stats_noise_multiplier is not None:
            return c.stats_noise_multiplier if c.dp else 0.0
        return DEFAULT_STATS_NOISE if c.dp and fed.bounds is not None else 0.0

    def _standardize(self, fed: Any, aggregator: Aggregator) -> tuple[Any, str]:
        """Federated standardisation and imputation: the banks' moment vectors are summed by the
        aggregator, so only federation-wide per-feature counts, means and variances are revealed
        (docs/data.md). With DP on each bank adds its share of Gaussian noise to its vector (of
        its rows scaled into public ranges), sized so the honest shares alone carry std
        z * sensitivity, and the release is recorded in the ledger (round 0, record level)."""
        from securefl.crypto.random import SystemRandomSource
        from securefl.data.standardize import moments_sensitivity, unscale_moments
        from securefl.protocol import round0

        z = self._stats_z = self._stats_noise(fed)
        norm_log2: dict[int, int] = {}
        if z > 0:
            if fed.bounds is None:
                raise ConfigError("this table has no public input ranges for noised statistics",
                                  hint="use a data schema (--schema), or --stats-noise-multiplier 0")
            sens = moments_sensitivity(fed.groups)
            # every bank's round-0 input is in the sum (threshold: all of them)
            share = round0.share_std(z, sens, len(fed.banks), self.config.colluders)
            moments = {}
            for i, b in enumerate(fed.banks):
                src = (SystemRandomSource() if self.config.secure_mode
                       else self.random.source(0, i, "stats-noise"))
                moments[i] = round0.noised_moments(b.X_train, fed.bounds, share, src)
                norm_log2[i] = round0.norm_log2_bound(b.n_train, moments[i].size, z)
            source = "os_csprng" if self.config.secure_mode else "seeded_chacha20"
            self._stats_drafts = round0.stats_drafts([b.name for b in fed.banks], z, sens, source)
        else:
            moments = {i: np.asarray(b.moments(), dtype=np.float64)
                       for i, b in enumerate(fed.banks)}
            # each bank reveals only the power of two above its own norm (documented leak of
            # < 7 bits of scale); with noise the bound follows from public facts only
            norm_log2 = {i: int(np.ceil(np.log2(max(float(np.linalg.norm(m)), 1.0))))
                         for i, m in moments.items()}
        if aggregator.name == "secagg":
            from securefl.protocol.secagg import moments_precision_bits

            aggregator = make_aggregator("secagg",
                                         precision_bits=moments_precision_bits(len(moments)))
        bound = float(2.0 ** (max(norm_log2.values()) + 1))  # the same rule as a deployment
        spec = self.planner.exact(bound).spec(0, tuple(moments))
        outcome = aggregator.aggregate(spec, moments, random=self.random.factory(0))
        total = unscale_moments(outcome.total, fed.bounds) if z > 0 else outcome.total
        return fed.prepared(total), outcome.digests.get("aggregate", "")

    def _train_spec(self, task: str) -> Any:
        from securefl.fl.train import LocalTrainSpec

        c = self.config
        return LocalTrainSpec(task=task, loss=c.loss_for(task), epochs=c.local_epochs,
                              batch_size=c.batch_size, lr=c.lr, optimizer=c.optimizer,
                              prox_mu=c.prox_mu if c.server_optimizer == "fedprox" else 0.0)

    def _evaluate(self, model: Any, fed: Any) -> dict[str, float]:
        from securefl.fl.metrics import classification_metrics, regression_metrics
        from securefl.fl.train import predict

        pred = predict(model, fed.X_test, fed.task)
        if fed.task == "classification":
            return classification_metrics(fed.y_test.astype(np.float64), pred)
        scaler = fed.target_scaler
        return regression_metrics(scaler.inverse(fed.y_test.astype(np.float64)),
                                  scaler.inverse(pred))

    def _sample(self, round_: int, n_banks: int) -> tuple[int, ...]:
        """Per-round client sampling (public randomness: who takes part is not secret)."""
        return sample_participants(self.config.seed, round_, n_banks,
                                   self.config.clients_per_round)

    def _simulated_dropouts(self, round_: int, participants: tuple[int, ...],
                            stages: tuple[str, ...]) -> dict[int, str]:
        if self.config.dropout <= 0:
            return {}
        rng = np.random.default_rng([self.config.seed, round_, 2])
        drops: dict[int, str] = {}
        for cid in participants:
            if rng.random() < self.config.dropout:
                drops[cid] = stages[int(rng.integers(len(stages)))]
        return drops

    def _baselines(self, fed: Any, train_spec: Any) -> dict[str, dict[str, float]]:
        """Centralized (all banks' training rows pooled: what federation tries to approach) and each
        bank alone (what a bank gets without federating), trained for as many epochs as a federated
        bank (rounds x local epochs) and scored on the same global test split. With DP on they
        train with DP-SGD at the same record-level epsilon, so the comparison is like for like."""
        import dataclasses

        import torch

        from securefl.dp.accountants import calibrate_noise
        from securefl.dp.dpsgd import dp_train_epochs, dpsgd_schedule
        from securefl.fl.models import build_model
        from securefl.fl.train import local_train, loss_function

        c = self.config
        epochs = c.rounds * c.local_epochs
        spec = dataclasses.replace(train_spec, epochs=epochs, prox_mu=0.0)
        sets = {"centralized": (np.concatenate([b.X_train for b in fed.banks]),
                                np.concatenate([b.y_train for b in fed.banks]))}
        sets.update({f"alone:{b.name}": (b.X_train, b.y_train) for b in fed.banks})
        out: dict[str, dict[str, float]] = {}
        for name, (X, y) in sets.items():
            torch.manual_seed(c.seed)
            model = build_model(c.model, fed.X_test.shape[1], c.hidden)
            if c.dp:
                steps, q = dpsgd_schedule(len(y), c.batch_size, epochs)
                z = c.record_noise_multiplier or calibrate_noise(
                    c.record_epsilon or DEFAULT_RECORD_EPSILON, c.delta, 1, q, "rdp",
                    steps_per_round=steps)
                state, _ = dp_train_epochs(
                    model, torch.from_numpy(X), torch.from_numpy(y),
                    loss_fn=loss_function(spec.task, spec.loss), epochs=epochs,
                    batch_size=c.batch_size, lr=c.lr, optimizer=c.optimizer,
                    noise_multiplier=z, max_grad_norm=c.record_clip, random_seed=c.seed)
                model.load_state_dict(state)
            else:
                local_train(model, X, y, spec, seed=c.seed)
            out[name] = self._evaluate(model, fed)
        return out

    # -- privacy ------------------------------------------------------------------------------------
    def _record_noise(self, fed: Any) -> dict[int, float]:
        """Per-bank DP-SGD noise multiplier: given, or calibrated (RDP) so that every step the bank
        will run in the whole run, with the round-0 statistics it releases, stays within
        ``record_epsilon`` at ``delta``."""
        from securefl.dp.accountants import calibrate_noise
        from securefl.dp.events import GaussianEvent

        c = self.config
        if not c.dp:
            return {}
        if c.record_noise_multiplier is not None:
            return {i: c.record_noise_multiplier for i in range(len(fed.banks))}
        target = c.record_epsilon if c.record_epsilon is not None else DEFAULT_RECORD_EPSILON
        out: dict[int, float] = {}
        from securefl.dp.dpsgd import dpsgd_schedule

        # the round-0 statistics are the same bank's records: the target covers both
        spent = [GaussianEvent(noise_multiplier=self._stats_z)] if self._stats_z > 0 else []
        from securefl.errors import PrivacyError

        for i, bank in enumerate(fed.banks):
            steps, q = dpsgd_schedule(bank.n_train, c.batch_size, c.local_epochs)
            try:
                out[i] = calibrate_noise(target, c.delta, c.rounds, q, "rdp",
                                         steps_per_round=steps, spent=spent)
            except PrivacyError as err:
                if not spent:
                    raise
                raise PrivacyError(
                    f"{err.message}: the round-0 release (z = {self._stats_z:g}) is part of "
                    f"record epsilon {target:g}", hint="raise --stats-noise-multiplier (z = 4 "
                    "alone costs about 1.2 at delta 1e-5), or the target epsilon") from err
        return out

    def _client_events(self) -> Any:
        """How this run's client-level events enter the ledger (securefl.committer.ClientEvents):
        the seeded simulation's streams, no amplification claimed for client sampling."""
        from securefl.committer import ClientEvents

        c = self.config
        return ClientEvents(clip_norm=c.clip_norm,
                            sampling="all" if c.clients_per_round >= 1 else "fixed_size",
                            noise_source="seeded_chacha20")

    def _client_drafts(self, round_: int, n_participants: int, threshold: int,
                       outcome: Any, dim: int) -> list[Any]:
        """The client-level mechanism this round actually released (survivors, not the plan),
        as the server and the assumed colluders see it (ClientEvents.released)."""
        plan = self._noise_plan(n_participants, threshold)
        if plan is None:
            return []
        return [self._client_events().released(
            round_, n_participants, plan, len(outcome.survivors),
            encoding=getattr(outcome, "encoding", None), dim=dim)]

    def _planned_client_drafts(self, round_: int, n_participants: int, threshold: int,
                               dim: int) -> list[Any]:
        """What a budget check charges for the next round: the event the round will record
        (dp.fedavg.client_round_event, with the encoding the aggregator will use) for every
        admissible survivor count, reduced to the worst case (dp.budget.worst_case_events)."""
        from securefl.dp.budget import planned_client_events

        c = self.config
        plan = self._noise_plan(n_participants, threshold)
        if plan is None:
            return []
        encoding = None
        if c.aggregation == "secagg":
            from securefl.aggregators.secagg import SecAggAggregator

            agg = cast(SecAggAggregator, make_aggregator("secagg", neighbours=c.neighbours,
                                                          colluders=c.colluders))
            encoding = agg.encoding_for(self.planner.spec(
                round_, tuple(range(n_participants)), threshold=threshold), dim)
        events = planned_client_events(plan, n_participants, encoding=encoding, dim=dim)
        return [self._client_events().draft(round_, n_participants, plan.min_survivors, ev,
                                            plan.colluders) for ev in events]

    @property
    def planner(self) -> RoundPlanner:
        """The run's round planner (securefl.protocol.plan.RoundPlanner): the session, clip C,
        client-level z (0 without DP), the threshold (``--threshold``, or the smallest the
        active-security bounds allow for the stated colluders) and SecAgg+'s degree; each
        round's RoundSpec and NoisePlan follow from it and the round's participants."""
        from securefl.protocol.secagg.bounds import Assumptions

        c = self.config
        return RoundPlanner(session_id=self.session_id, clip_norm=c.clip_norm,
                            noise_multiplier=c.noise_multiplier if c.dp else 0.0,
                            aggregation=c.aggregation,
                            assumptions=Assumptions(colluders=c.colluders),
                            degree=c.neighbours, threshold=c.threshold or None)

    def _noise_plan(self, n_participants: int, threshold: int) -> NoisePlan | None:
        """The round's client-level noise plan (RoundPlanner.noise): each share sized so that the
        smallest honest set whose sum can be revealed under the stated colluders
        (NoisePlan.honest_floor: T - c, or SecAgg+'s isolatable honest set) still carries z * C;
        None without it."""
        return self.planner.noise(n_participants, threshold)

    def _check_secagg_plan(self, n_banks: int) -> None:
        """Refuse, before anything runs, a threshold or degree below the SecAgg bounds for the
        stated colluders (ConfigError naming the bound; protocol.secagg.bounds)."""
        c = self.config
        if c.aggregation != "secagg":
            return
        from securefl.protocol.secagg import Assumptions, derive

        k = len(self._sample(1, n_banks))
        derive(k, Assumptions(colluders=c.colluders),
               threshold=self.planner.threshold_for(k), degree=c.neighbours)

    def _check_budget_before_start(self, n_banks: int, model: Any) -> None:
        """Refuse a plan whose rounds, each charged what it will record (the worst admissible
        survivor count; ``model`` gives the update dimension), exceed the target epsilon."""
        from securefl.dp.budget import check_plan

        c = self.config
        if c.target_epsilon is None:
            return
        if not (c.dp and c.noise_multiplier > 0):
            raise BudgetExceededError(
                "a client-level target epsilon needs client-level noise (--dp with "
                "--noise-multiplier > 0); without it epsilon is infinite")
        k = len(self._sample(1, n_banks))
        threshold = self.planner.threshold_for(k)
        dim = sum(int(p.numel()) for p in model.parameters())
        drafts = self._planned_client_drafts(1, k, threshold, dim)
        check_plan([d.event for d in drafts], c.rounds, c.target_epsilon, c.delta)

    def _running_epsilon(self, ledger: Any) -> dict[str, float]:
        """Epsilon spent so far (RDP), updated from the entries appended since the last round."""
        from securefl.dp.budget import RunningAccount

        c = self.config
        out: dict[str, float] = {}
        if not c.dp:
            return out
        if self._account is None:
            self._account = RunningAccount()
        account = self._account
        account.update(ledger)
        if account.entries("client"):
            out["client"] = account.epsilon(c.delta, level="client")
        banks = account.parties("record")
        if banks:
            out["record(max bank)"] = max(account.epsilon(c.delta, level="record", party=p)
                                          for p in banks)
        return out

    # -- persistence --------------------------------------------------------------------------------
    def _store_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.to_dict().items() if k != "out"}

    def _open_store(self, initial_model: bytes, facts: dict[str, Any]) -> tuple[Any, Any]:
        from securefl.audit.store import RunStore
        from securefl.crypto.signing import SigningKey
        from securefl.dp.ledger import Ledger

        run_dir = Path(self.config.out or "runs/securefl")
        if not _discard_unfinished_create(run_dir) and self.resume is not None:
            store = RunStore.open(run_dir)
            stored = json.loads((run_dir / "config.json").read_text("utf-8"))
            if stored != json.loads(json.dumps(self._store_config())):
                raise ConfigError(f"{run_dir}/config.json does not match the run being resumed")
            ledger = Ledger.from_bytes((run_dir / "ledger.jsonl").read_bytes())
            return store, ledger
        store = RunStore.create(
            run_dir, config=self._store_config(), server_key=SigningKey.generate(),
            origin=f"securefl/{self.session_id.hex()}", initial_model=initial_model,
            federation=facts)
        return store, Ledger()

    # -- the banks, the model and how it is scored ---------------------------------------------------
    def _builtin_setup(self, aggregator: Aggregator, on: PhaseCallback) -> _Setup:
        """``securefl run``'s federation: a table split into banks, federated standardisation,
        securefl's own model (mlp or logreg), scored on the global test split."""
        from securefl.bank import Bank
        from securefl.fl.models import build_model
        from securefl.fl.train import loss_function

        c = self.config
        if c.model == CUSTOM_MODEL:
            raise ConfigError("model 'custom' is your own torch model: use securefl.train(model, "
                              "banks, config) from Python")
        on(0, "loading data", c.data or "embedded credit data")
        fed = self._load_data()
        on(0, "standardising", f"{c.aggregation} sum of the banks' feature moments")
        fed, stats_digest = self._standardize(fed, aggregator)
        train_spec = self._train_spec(fed.task)
        loss = loss_function(train_spec.task, train_spec.loss)
        banks = [Bank(b.name, b.X_train, b.y_train, task=fed.task, loss=loss) for b in fed.banks]
        return _Setup(
            banks=banks, model=build_model(c.model, fed.X_test.shape[1], c.hidden),
            evaluate=lambda model: self._evaluate(model, fed), task=fed.task,
            facts={"data_source": fed.source, "n_features": int(fed.X_test.shape[1]),
                   "standardisation": {"mode": c.aggregation, "aggregate_sha256": stats_digest,
                                       "noise_multiplier": self._stats_noise(fed)},
                   **({"data_schema": {"sha256": fed.schema_digest,
                                       "drafted_in_memory": self._schema_drafted}}
                      if fed.schema_digest else {})},
            baselines=lambda: self._baselines(fed, train_spec))

    # -- the run ------------------------------------------------------------------------------------
    def run(self, *, progress: ProgressCallback | None = None,
            phase: PhaseCallback | None = None) -> RunResult:
        """Run (or resume) the federation; ``progress`` gets each round's report, ``phase`` what
        the run is about to do (see :data:`PHASES`). The rounds are the round engine's
        (securefl.engine.RoundEngine) over this in-process transport (:meth:`rounds`)."""
        import torch

        from securefl.committer import RoundCommitter, TorchServerModel
        from securefl.fl.params import model_tensors, to_bytes
        from securefl.fl.server_opt import ServerOptimizer

        c = self.config
        t_start = _now()
        torch.manual_seed(c.seed)
        self.aggregator = make_aggregator(c.aggregation, neighbours=c.neighbours,
                                          colluders=c.colluders, deadlines=self.deadlines)
        on = self._on = phase or NO_PHASE
        setup = self.setup = (self._custom if self._custom is not None
                              else self._builtin_setup(self.aggregator, on))
        banks, model = setup.banks, setup.model
        self._check_secagg_plan(len(banks))
        if c.target_epsilon is not None:
            on(0, "accounting", "checking the plan against the target epsilon")
        self._check_budget_before_start(len(banks), model)
        server_opt = ServerOptimizer(kind=c.server_optimizer, lr=c.server_lr)
        sizes = [b.n_train for b in banks]
        self.public_weight = [n / max(sizes) for n in sizes]  # example counts are public
        names = self.names = [b.name for b in banks]
        if c.dp and c.record_noise_multiplier is None:
            on(0, "calibrating noise", "record-level DP-SGD noise per bank")
        self.record_noise = self._record_noise(setup)
        facts = {
            "banks": [{"name": b.name, "train_examples": b.n_train} for b in banks],
            "task": setup.task, **setup.facts,
            "record_noise_multiplier": {names[i]: z for i, z in self.record_noise.items()},
        }
        on(0, "committing", "opening the run directory")
        store, ledger = self._open_store(to_bytes(model_tensors(model)), facts)
        self.store, self.ledger = store, ledger
        self.keepers = self._checkpoint_keepers(store, len(banks))
        server = self.server = TorchServerModel(model, server_opt)
        server.restore(store.model_bytes(store.last_round))
        committer = RoundCommitter(store, ledger, server, session_id=self.session_id,
                                   aggregation=c.aggregation, events=self._client_events())
        engine = RoundEngine(lambda: committer, evaluate=lambda: setup.evaluate(model),
                             account=(lambda: self._running_epsilon(ledger)) if c.dp else None,
                             progress=progress, phase=on,
                             history=RoundEngine.resumed(store) if store.last_round else ())
        history = engine.run(self, store.last_round + 1, c.rounds)

        if c.baselines:
            on(0, "baselines", "centralised and each bank alone")
        baselines = setup.baselines() if c.baselines and setup.baselines else {}
        privacy: dict[str, Any] = {}
        if c.dp:
            from securefl.dp.report import privacy_report

            on(0, "accounting", "privacy report")
            privacy = privacy_report(ledger, c.delta, "rdp")
        result = RunResult(
            securefl_version=__version__, transport="in-process",
            session_id=self.session_id.hex(), aggregation=c.aggregation,
            insecure=c.aggregation == "plain", dp=c.dp, task=setup.task, manifest_sha256=None,
            run_dir=str(store.run_dir),
            rounds_completed=sum(1 for h in history if h.aborted is None),
            final_metrics=history[-1].metrics if history else setup.evaluate(model),
            history=history, baselines=baselines, privacy=privacy,
            model_sha256=store.model_sha256(store.last_round),
            seconds=round(_now() - t_start, 3), stopped_early=engine.stopped,
            round_trips=None, round_trips_per_round=None, trips=None, refused={})
        on(0, "committing", "result")
        store.finish(result)
        return result

    def rounds(self, engine: RoundEngine, first: int, last: int) -> Iterator[RoundOutcome]:
        """The in-process transport (securefl.engine.RoundTransport): each round's public plan
        (participants, threshold, noise plan, RoundSpec), the budget check, the banks' local
        updates and the in-process aggregator; one typed outcome per round. A round that would
        exceed the target epsilon stops the run before it starts (``engine.stopped``)."""
        from securefl.committer import Release
        from securefl.errors import AggregationAbortedError

        c, on, server = self.config, self._on, self.server
        aggregator, names, public_weight = self.aggregator, self.names, self.public_weight
        planner = self.planner
        for round_ in range(first, last + 1):
            t0 = _now()
            engine.check_attempts(round_)
            participants = self._sample(round_, len(self.setup.banks))
            threshold = planner.threshold_for(len(participants))
            if c.target_epsilon is not None:
                from securefl.dp.budget import would_exceed

                on(round_, "accounting", "budget check")

                planned = self._planned_client_drafts(round_, len(participants), threshold,
                                                      len(server.weights))
                checks = would_exceed(self.ledger, planned, c.target_epsilon, c.delta)
                over = [f"{p}/{lv}: {ch.epsilon:.4g}" for (p, lv), ch in checks.items()
                        if ch.exceeds]
                if over:
                    engine.stopped = (f"round {round_} would exceed target epsilon "
                                      f"{c.target_epsilon:g} ({', '.join(over)})")
                    return
            dropouts = self._simulated_dropouts(round_, participants, aggregator.stages)
            weights = server.weights
            inputs, drafts, clipped = self._local_updates(
                round_, participants, self.setup.banks, self.setup.model, weights,
                self.record_noise, public_weight, phase=on)
            dropouts.update({b: aggregator.stages[0] for b, r in self.late_training.items()
                             if r == round_ and b not in dropouts})
            if round_ == 1:  # the round-0 release is committed with the first round
                drafts = [*self._stats_drafts, *drafts]
            spec = planner.spec(round_, participants,
                                weights=tuple(public_weight[i] for i in participants),
                                model_digest=hashlib.sha256(
                                    np.ascontiguousarray(weights).tobytes()).digest())
            noise = spec.noise
            who = tuple(names[i] for i in participants)
            on(round_, "protecting + aggregating",
               f"{aggregator.name}, {len(participants)} banks")
            try:
                out = aggregator.aggregate(spec, inputs, dropouts=dropouts,
                                           random=self.random.factory(round_))
            except AggregationAbortedError as err:
                # nothing was released: the model stays, the round is recorded as aborted
                server.reset()
                outcome = RoundOutcome(
                    round=round_, participants=who, error=err,
                    alive=tuple(names[i] for i in participants if i not in dropouts),
                    dropouts={names[i]: st for i, st in dropouts.items()}, drafts=tuple(drafts),
                    clipped=clipped, started=t0)
            else:
                outcome = RoundOutcome(
                    round=round_, participants=who, release=Release.of(
                        out.total, out.survivors, names,
                        {names[i]: public_weight[i] for i in participants},
                        dropouts=out.dropouts, aggregate_digest=out.digests.get("aggregate"),
                        input_digests={int(k.split("/", 1)[1]): v
                                       for k, v in out.digests.items()
                                       if k.startswith("input/")},
                        weight_total=out.weight_total,
                        encoding=getattr(out, "encoding", None)),
                    drafts=tuple(drafts), noise=noise, dim=len(weights), clipped=clipped,
                    started=t0)
            yield outcome
            self._send_checkpoint(self.store, self.keepers, participants)

    @staticmethod
    def _checkpoint_keepers(store: Any, n_banks: int) -> list[Any]:
        """Each bank keeps the signed checkpoints it was shown (RFC 9162 consistency-checked), so a
        forked or rewritten log is caught by any participant. In this simulation they live in
        memory and start from the checkpoint current at (re)start."""
        from securefl.audit.log import CheckpointKeeper

        keepers = [CheckpointKeeper(store.verifier, origin=store.origin) for _ in range(n_banks)]
        for k in keepers:
            k.receive(store.signed_checkpoint(), [])
        return keepers

    @staticmethod
    def _send_checkpoint(store: Any, keepers: list[Any], participants: tuple[int, ...]) -> None:
        """After a commit the server sends each participant the new signed checkpoint with a
        consistency proof from the last one it accepted; a bank refuses (AuditError) a fork."""
        note = store.signed_checkpoint()
        for cid in participants:
            last = keepers[cid].latest.size
            proof = store.log.consistency_proof(last) if last < store.log.size else []
            keepers[cid].receive(note, proof)

    def _local_plan(self, round_: int, cid: int, record_noise: dict[int, float],
                    public_weight: list[float]) -> Any:
        """The public plan bank ``cid`` follows in ``round_`` (securefl.bank.LocalPlan)."""
        from securefl.bank import LocalPlan

        c = self.config
        return LocalPlan(round=round_, clip_norm=c.clip_norm, weight=public_weight[cid],
                         epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr,
                         optimizer=c.optimizer, record_noise_multiplier=record_noise.get(cid),
                         record_clip=c.record_clip, dp_backend=c.dp_backend,
                         secure_randomness=c.secure_mode,
                         prox_mu=c.prox_mu if c.server_optimizer == "fedprox" else 0.0)

    def _local_updates(self, round_: int, participants: tuple[int, ...], banks: list[Any],
                       model: Any, weights: NDArray[np.float64], record_noise: dict[int, float],
                       public_weight: list[float], phase: PhaseCallback = NO_PHASE
                       ) -> tuple[dict[int, NDArray[np.float64]], list[Any], int]:
        """Each participant trains on its own rows (DP-SGD when on) and clips its update
        (securefl.bank.Bank.update)."""
        inputs: dict[int, NDArray[np.float64]] = {}
        drafts: list[Any] = []
        clipped = 0
        for k, cid in enumerate(participants, 1):
            bank = banks[cid]
            phase(round_, "training", f"bank {k}/{len(participants)} ({bank.name}"
                  + (", DP-SGD)" if cid in record_noise else ")"))
            seed = int.from_bytes(self.random.source(round_, cid, "train").random_bytes(8),
                                  "big") >> 1
            t0 = self.deadlines.clock() if self.deadlines is not None else 0.0
            update = bank.update(model, weights,
                                 self._local_plan(round_, cid, record_noise, public_weight),
                                 seed=seed)
            if self.deadlines is not None and self.deadlines.training_s is not None \
                    and self.deadlines.clock() - t0 > self.deadlines.training_s:
                self.late_training[cid] = round_  # a straggler: a dropout at the first stage
            inputs[cid] = update.vector
            drafts += update.drafts
            clipped += int(update.clipped)
        return inputs, drafts, clipped


def run(
    config: RunConfig,
    *,
    progress: ProgressCallback | None = None,
    resume: str | Path | None = None,
    phase: PhaseCallback | None = None,
    deadlines: Deadlines | None = None,
) -> RunResult:
    """Run a federated training as configured; see :class:`RunResult`. ``progress`` receives each
    round's :class:`RoundReport`, ``phase`` what the run is about to do (:data:`PHASES`),
    ``deadlines`` the per-stage deadlines (securefl.transport.policy.Deadlines)."""
    return Engine(config, resume=Path(resume) if resume is not None else None,
                  deadlines=deadlines).run(progress=progress, phase=phase)


def train(
    model: Any,
    banks: Sequence[Any],
    config: RunConfig | None = None,
    *,
    test: tuple[Any, Any] | None = None,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    progress: ProgressCallback | None = None,
    resume: str | Path | None = None,
    phase: PhaseCallback | None = None,
    deadlines: Deadlines | None = None,
) -> RunResult:
    """Federated training of your own torch ``model`` over your own ``banks``
    (:class:`securefl.bank.Bank`), through the same round engine as ``securefl run``: DP-SGD,
    client clip, noise shares, the aggregation mode (secagg, ckks or plain) and the audit log and
    privacy ledger in ``config.out``, all as ``config`` says (its data and model options do not
    apply: ``banks`` and ``model`` replace them). ``model`` ends holding the final global weights.

    Each round is scored with ``evaluate(model)`` (a mapping of metric name to number), or on
    ``test = (X, y)`` with securefl's metrics for the banks' task; with neither, rounds carry no
    metrics. The banks live in this process (an in-process simulation of the federation); a
    deployment runs the same :meth:`Bank.update` at each bank (docs/architecture.md).

    ``deadlines`` (securefl.transport.policy.Deadlines): a bank whose local training, or whose
    reply in a protocol stage, overruns its deadline is a dropout (the protocol's dropout
    handling; a round that loses too many aborts with an aborted audit record); a bank that waits
    too long for the server gives up the round. None: every party is waited for.
    """
    from securefl.bank import Bank
    from securefl.fl.params import model_tensors, to_bytes

    cfg = config if config is not None else RunConfig()
    if cfg.baselines:
        raise ConfigError("baselines: securefl.train has no pooled data to train baselines on",
                          hint="train them yourself, or use securefl run --baselines")
    banks = list(banks)
    if len(banks) < 2 or not all(isinstance(b, Bank) for b in banks):
        raise ConfigError("banks must be at least two securefl.Bank objects")
    names = [b.name for b in banks]
    if len(set(names)) != len(names):
        raise ConfigError(f"bank names must be distinct, got {names}")
    if len({b.n_features for b in banks}) != 1 or len({b.task for b in banks}) != 1:
        raise DataError("every bank must have the same number of features and the same task")
    if not hasattr(model, "state_dict") or not hasattr(model, "parameters"):
        raise ConfigError("model must be a torch.nn.Module")
    cfg = cfg.replace(banks=len(banks), model=CUSTOM_MODEL)
    task = banks[0].task
    initial = to_bytes(model_tensors(model))
    identity = hashlib.sha256(initial + json.dumps(
        [[b.name, b.n_train, b.n_features] for b in banks]).encode()).digest()
    setup = _Setup(
        banks=banks, model=model, evaluate=_scorer(task, test, evaluate), task=task,
        facts={"data_source": "securefl.train: per-bank arrays held by the caller",
               "n_features": banks[0].n_features,
               "model": {"class": type(model).__qualname__,
                         "parameters": int(sum(p.numel() for p in model.parameters()))}},
        identity=identity)
    return Engine(cfg, resume=Path(resume) if resume is not None else None,
                  custom=setup, deadlines=deadlines).run(progress=progress, phase=phase)


def _scorer(task: str, test: tuple[Any, Any] | None,
            evaluate: Callable[[Any], Mapping[str, float]] | None
            ) -> Callable[[Any], dict[str, float]]:
    """A round's metrics: the caller's ``evaluate``, or securefl's metrics on ``test``."""
    if test is not None and evaluate is not None:
        raise ConfigError("give test or evaluate, not both")
    if evaluate is not None:
        user = evaluate

        def checked(model: Any) -> dict[str, float]:
            out = dict(user(model))
            bad = [k for k, v in out.items() if not isinstance(k, str) or isinstance(v, bool)
                   or not isinstance(v, int | float) or not np.isfinite(v)]
            if bad:
                raise DataError(f"evaluate returned non-finite or non-numeric metrics: {bad[:5]}")
            return {k: float(v) for k, v in out.items()}

        return checked
    if test is None:
        return lambda model: {}
    from securefl.bank import Bank
    from securefl.fl.metrics import classification_metrics, regression_metrics
    from securefl.fl.train import predict

    held_out = Bank("test", test[0], test[1], task=task)  # the same input checks as a bank's rows

    def score(model: Any) -> dict[str, float]:
        pred = predict(model, held_out.X, task)
        y = held_out.y.astype(np.float64)
        if task == "classification":
            return classification_metrics(y, pred)
        return regression_metrics(y, pred)

    return score


def _now() -> float:
    return time.perf_counter()
