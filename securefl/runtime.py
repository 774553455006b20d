"""The federated run: wires data, local training, an aggregation mode, DP, the ledger and the audit
log together (DESIGN.md section 3). Everything here is the simulation driver of ``securefl run``: every
bank, the server (and the CKKS key holder) live in this process, each seeing only what the protocol
gives it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl import __version__
from securefl.aggregation import Aggregator, NoisePlan, RoundSpec
from securefl.config import RunConfig
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource

__all__ = ["RoundReport", "RunResult", "make_aggregator", "run", "weighted_mean_update"]

ProgressCallback = Callable[["RoundReport"], None]


@dataclass(frozen=True)
class RoundReport:
    """What one round released and measured (also a line of metrics.jsonl)."""

    round: int
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: dict[str, str]
    metrics: dict[str, float]
    update_norms_clipped: int  # how many banks' updates were clipped
    seconds: float
    epsilon: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "participants": list(self.participants),
            "survivors": list(self.survivors),
            "dropouts": dict(self.dropouts),
            "metrics": dict(self.metrics),
            "clipped": self.update_norms_clipped,
            "seconds": round(self.seconds, 4),
            "epsilon": dict(self.epsilon),
        }


@dataclass
class RunResult:
    """The outcome of :func:`run` (also written to ``result.json`` in the run directory)."""

    run_dir: Path
    config: dict[str, Any]
    task: str
    rounds_completed: int
    final_metrics: dict[str, float]
    history: list[RoundReport]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    model_sha256: str = ""
    seconds: float = 0.0
    stopped_early: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "securefl_version": __version__,
            "task": self.task,
            "aggregation": self.config.get("aggregation"),
            "insecure": self.config.get("aggregation") == "plain",
            "dp": self.config.get("dp"),
            "rounds_completed": self.rounds_completed,
            "final_metrics": self.final_metrics,
            "baselines": self.baselines,
            "privacy": self.privacy,
            "model_sha256": self.model_sha256,
            "seconds": round(self.seconds, 3),
            "stopped_early": self.stopped_early,
            "history": [r.to_dict() for r in self.history],
        }


def make_aggregator(name: str, *, neighbours: int | None = None) -> Aggregator:
    """The aggregation mode called ``name`` (imports its module lazily)."""
    if name == "plain":
        from securefl.plain import PlainAggregator

        return PlainAggregator()
    if name == "secagg":
        from securefl.secagg import SecAggAggregator

        return SecAggAggregator(neighbours=neighbours)
    if name == "ckks":
        from securefl.ckks import CKKSAggregator

        return CKKSAggregator()
    raise ConfigError(f"unknown aggregation {name!r}")


def default_threshold(n: int) -> int:
    """Majority of the participants, at least 2 (so no single bank's update is ever released)."""
    return min(n, max(2, n // 2 + 1))


class _Randomness:
    """Per-(round, party, purpose) CSPRNG streams for the simulation, derived from the run seed.

    Reproducible given ``--seed`` (so a resumed run ends in the same model). A deployment uses the
    OS CSPRNG instead; see DESIGN.md section 8.
    """

    def __init__(self, seed: int, session_id: bytes) -> None:
        self._seed = Secret(hashlib.sha256(b"securefl-sim-seed-v1" + seed.to_bytes(8, "big")
                                           + session_id).digest(), label="sim-seed")
        self._session = session_id.hex()

    def source(self, round_: int, party: int | str, purpose: str) -> RandomSource:
        return SeededRandomSource(self._seed, f"{self._session}/{round_}/{party}/{purpose}")


def _session_id(config: RunConfig) -> bytes:
    body = json.dumps({k: v for k, v in config.to_dict().items() if k != "out"}, sort_keys=True)
    return hashlib.sha256(b"securefl-session-v1" + body.encode()).digest()[:16]


def weighted_mean_update(total: NDArray[np.float64], survivors: tuple[int, ...],
                         public_weight: list[float]) -> NDArray[np.float64]:
    """FedAvg: each survivor sent w_i * update_i (w_i = n_i / max n, public); the weighted mean is
    the released sum divided by the survivors' total weight."""
    return total / sum(public_weight[s] for s in survivors)


def _clip(vec: NDArray[np.float64], bound: float) -> tuple[NDArray[np.float64], bool]:
    norm = float(np.linalg.norm(vec))
    if norm > bound:
        return vec * (bound / norm), True
    return vec, False


class Engine:
    """One federated run (simulation driver). Use :func:`run`."""

    def __init__(self, config: RunConfig, *, resume: Path | None = None) -> None:
        self.config = config
        self.resume = resume
        self.session_id = _session_id(config)
        self.random = _Randomness(config.seed, self.session_id)

    # -- setup ------------------------------------------------------------------------------------
    def _load_data(self) -> Any:
        from securefl.data import build_federated_data

        c = self.config
        return build_federated_data(
            data=c.data, label=c.label, task=None if c.task == "auto" else c.task,
            split_by=c.split_by, banks=c.banks, partition=c.partition, alpha=c.alpha,
            test_fraction=c.test_fraction, local_test_fraction=c.local_test_fraction, seed=c.seed,
        )

    def _standardize(self, fed: Any, aggregator: Aggregator) -> Any:
        """Federated standardisation: the banks' moment vectors are summed by the aggregator, so
        only federation-wide per-feature means and variances are revealed (docs/data.md)."""
        from securefl.data import Standardizer

        moments = {i: np.asarray(b.moments(), dtype=np.float64) for i, b in enumerate(fed.banks)}
        # a public bound on the moment vectors' norm: each bank reveals only the power of two
        # above its own norm (documented leak of < 7 bits of scale)
        bound = float(2.0 ** max(int(np.ceil(np.log2(max(np.linalg.norm(m), 1.0)))) + 1
                                 for m in moments.values()))
        spec = RoundSpec(session_id=self.session_id, round=0,
                         participants=tuple(moments), clip_norm=bound,
                         threshold=len(moments), noise=None)
        outcome = aggregator.aggregate(
            spec, moments, random=lambda cid, purpose: self.random.source(0, cid, purpose))
        return fed.standardized(Standardizer.from_summed_moments(outcome.total))

    def _train_spec(self, task: str) -> Any:
        from securefl.fl.train import LocalTrainSpec

        c = self.config
        loss = c.loss if c.loss != "auto" else ("bce" if task == "classification" else "mse")
        return LocalTrainSpec(task=task, loss=loss, epochs=c.local_epochs,
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
        c = self.config
        k = max(2, round(c.clients_per_round * n_banks))
        rng = np.random.default_rng([c.seed, round_, 1])
        return tuple(sorted(int(i) for i in rng.choice(n_banks, size=min(k, n_banks),
                                                       replace=False)))

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
        bank alone (what a bank gets without federating), trained for the same number of epochs as a
        federated bank (rounds x local epochs) and scored on the same global test split."""
        import dataclasses

        import torch

        from securefl.fl.models import build_model
        from securefl.fl.train import local_train

        c = self.config
        spec = dataclasses.replace(train_spec, epochs=c.rounds * c.local_epochs, prox_mu=0.0)
        sets = {"centralized": (np.concatenate([b.X_train for b in fed.banks]),
                                np.concatenate([b.y_train for b in fed.banks]))}
        sets.update({f"alone:{b.name}": (b.X_train, b.y_train) for b in fed.banks})
        out: dict[str, dict[str, float]] = {}
        for name, (X, y) in sets.items():
            torch.manual_seed(c.seed)
            model = build_model(c.model, fed.X_test.shape[1], c.hidden)
            local_train(model, X, y, spec, seed=c.seed)
            out[name] = self._evaluate(model, fed)
        return out

    # -- the run -----------------------------------------------------------------------------------
    def run(self, *, progress: ProgressCallback | None = None) -> RunResult:
        import torch

        from securefl.fl.models import build_model
        from securefl.fl.params import get_flat, model_tensors, set_flat, to_bytes
        from securefl.fl.server_opt import ServerOptimizer
        from securefl.fl.train import local_train

        c = self.config
        t_start = _now()
        torch.manual_seed(c.seed)
        aggregator = make_aggregator(c.aggregation, neighbours=c.neighbours)
        fed = self._standardize(self._load_data(), aggregator)
        task = fed.task
        train_spec = self._train_spec(task)
        model = build_model(c.model, fed.X_test.shape[1], c.hidden)
        weights = get_flat(model)
        server_opt = ServerOptimizer(kind=c.server_optimizer, lr=c.server_lr)
        sizes = [len(b.y_train) for b in fed.banks]
        public_weight = [n / max(sizes) for n in sizes]  # example counts are public metadata
        bank_names = [b.name for b in fed.banks]

        history: list[RoundReport] = []
        for round_ in range(1, c.rounds + 1):
            t0 = _now()
            participants = self._sample(round_, len(fed.banks))
            threshold = c.threshold or default_threshold(len(participants))
            threshold = min(threshold, len(participants))
            dropouts = self._simulated_dropouts(round_, participants,
                                                getattr(aggregator, "stages", ("upload",)))
            inputs: dict[int, NDArray[np.float64]] = {}
            clipped = 0
            for cid in participants:
                bank = fed.banks[cid]
                set_flat(model, weights)
                local_train(model, bank.X_train, bank.y_train, train_spec,
                            seed=int.from_bytes(self.random.source(round_, cid, "train")
                                                .random_bytes(8), "big") >> 1)
                delta, was_clipped = _clip(get_flat(model) - weights, c.clip_norm)
                clipped += int(was_clipped)
                inputs[cid] = public_weight[cid] * delta
            noise = (NoisePlan(c.noise_multiplier, threshold)
                     if c.dp and c.noise_multiplier > 0 else None)
            spec = RoundSpec(session_id=self.session_id, round=round_, participants=participants,
                             clip_norm=c.clip_norm, threshold=threshold, noise=noise)
            outcome = aggregator.aggregate(
                spec, inputs, dropouts=dropouts,
                random=lambda cid, purpose, r=round_: self.random.source(r, cid, purpose))
            weights = server_opt.step(
                weights, weighted_mean_update(outcome.total, outcome.survivors, public_weight))
            set_flat(model, weights)
            metrics = self._evaluate(model, fed)
            report = RoundReport(
                round=round_,
                participants=tuple(bank_names[i] for i in participants),
                survivors=tuple(bank_names[i] for i in outcome.survivors),
                dropouts={bank_names[i]: st for i, st in outcome.dropouts.items()},
                metrics=metrics, update_norms_clipped=clipped, seconds=_now() - t0)
            history.append(report)
            if progress is not None:
                progress(report)

        baselines = self._baselines(fed, train_spec) if c.baselines else {}
        model_bytes = to_bytes({**model_tensors(model), **server_opt.state()})
        result = RunResult(
            run_dir=Path(c.out or "."), config=c.to_dict(), task=task,
            rounds_completed=len(history), final_metrics=history[-1].metrics if history else {},
            history=history, baselines=baselines, model_sha256=hashlib.sha256(model_bytes).hexdigest(),
            seconds=_now() - t_start)
        return result


def run(
    config: RunConfig,
    *,
    progress: ProgressCallback | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Run a federated training as configured; see :class:`RunResult`."""
    return Engine(config, resume=Path(resume) if resume is not None else None).run(
        progress=progress)


def _now() -> float:
    return time.perf_counter()
