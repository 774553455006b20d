"""securefl.committer.RoundCommitter: the one end of a round that securefl run, securefl.train and
the Flower workflow share. Expected values are written out by hand from the FedAvg rule, never
computed by the committer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from securefl.audit.store import RunStore
from securefl.audit.verify import verify_run_dir
from securefl.committer import ClientEvents, Release, RoundCommitter
from securefl.crypto.signing import SigningKey
from securefl.dp.ledger import Ledger
from securefl.errors import AggregationAbortedError, ConfigError
from securefl.protocol.plan import NoisePlan

SESSION = bytes(range(16))


class _Model:
    """A ServerModel that keeps the mean updates it was given (plain FedAvg, lr 1)."""

    def __init__(self) -> None:
        self.weights = np.array([1.0, 2.0])
        self.steps: list[np.ndarray] = []

    def step(self, mean_update: np.ndarray) -> None:
        self.steps.append(mean_update)
        self.weights = self.weights + mean_update

    def checkpoint(self) -> bytes:
        return self.weights.astype("<f8").tobytes()


def _committer(tmp_path: Path) -> tuple[RoundCommitter, _Model]:
    model = _Model()
    store = RunStore.create(tmp_path / "run", config={}, server_key=SigningKey.generate(),
                            origin="securefl/test", initial_model=model.checkpoint(),
                            federation={})
    return RoundCommitter(store, Ledger(), model, session_id=SESSION, aggregation="secagg",
                          events=ClientEvents(clip_norm=1.0)), model


def _ledger(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]


def test_a_release_moves_the_model_by_the_fedavg_mean_and_commits(tmp_path: Path) -> None:
    committer, model = _committer(tmp_path)
    # b (weight 0.5) and c (weight 1.0) survived; a dropped before its input
    release = Release(total=np.array([0.75, -1.5]), survivors=("b", "c"),
                      survivor_weights=(0.5, 1.0), dropouts={"a": "masked", "c": "unmask"},
                      aggregate_digest="ab" * 32, input_digests={"b": "01" * 32, "c": "02" * 32})
    done = committer.commit(1, ["a", "b", "c"], release, dim=2,
                            evaluate=lambda: {"accuracy": 0.5},
                            noise=NoisePlan(1.0, 2))
    assert np.array_equal(model.steps[0], np.array([0.5, -1.0]))  # total / (0.5 + 1.0)
    # c dropped after its input was in the sum: a survivor, not a dropout
    assert done.dropouts == {"a": "masked"} and done.metrics == {"accuracy": 0.5}
    store = RunStore.open(tmp_path / "run")
    rec = store.records[1]
    assert (rec.survivors, rec.dropouts, rec.status) == (["b", "c"], {"a": "masked"}, "committed")
    assert rec.input_digests == {"b": "01" * 32, "c": "02" * 32}
    assert store.model_bytes(1) == np.array([1.5, 1.0]).astype("<f8").tobytes()
    (client,) = _ledger(tmp_path)
    assert (client["level"], client["party"], client["survivors"], client["participants"]) == \
        ("client", "federation", 2, 3)
    assert client["noise_source"] == "os_csprng" and client["sampling"] == "all"
    verify_run_dir(tmp_path / "run")


def test_ckks_divides_by_the_released_weight_total(tmp_path: Path) -> None:
    committer, model = _committer(tmp_path)
    release = Release(total=np.array([3.0, 3.0]), survivors=("a", "b"),
                      survivor_weights=(1.0, 1.0), weight_total=1.5)
    committer.commit(1, ["a", "b"], release, dim=2)
    assert np.array_equal(model.steps[0], np.array([2.0, 2.0]))
    assert _ledger(tmp_path) == []  # no noise plan: no client-level event


def test_an_abort_keeps_the_model_and_records_what_the_banks_spent(tmp_path: Path) -> None:
    from securefl.dp.events import GaussianEvent
    from securefl.dp.ledger import Draft

    committer, model = _committer(tmp_path)
    spent = Draft(round=1, level="record", party="bank:a", event=GaussianEvent(1.0),
                  clip_norm=1.0, participants=1, survivors=1, noise_source="declared")
    err = AggregationAbortedError("too few survivors")
    done = committer.abort(1, ["a", "b"], err, alive=["a"], dropouts={"b": "share"},
                           drafts=[spent], metrics={"accuracy": 0.25})
    assert model.steps == [] and done.error is err
    rec = RunStore.open(tmp_path / "run").records[1]
    assert (rec.status, rec.error_code, rec.survivors, rec.dropouts) == \
        ("aborted", err.code, ["a"], {"b": "share"})
    assert rec.metrics == {"accuracy": 0.25}
    assert [(e["party"], e["round"]) for e in _ledger(tmp_path)] == [("bank:a", 1)]
    verify_run_dir(tmp_path / "run")


def test_a_release_needs_a_weight_per_survivor() -> None:
    with pytest.raises(ConfigError):
        Release(total=np.zeros(2), survivors=("a", "b"), survivor_weights=(1.0,))
