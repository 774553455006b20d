"""The library API: your own torch model and banks (securefl.Bank, securefl.train) through the same
round engine as ``securefl run``; examples/custom_model.py end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import securefl
from securefl.audit.store import RunStore
from securefl.audit.verify import verify_run_dir
from securefl.errors import ConfigError, DataError
from securefl.fl.params import from_bytes

ROOT = Path(__file__).resolve().parents[1]


def _rows(seed: int, n: int = 200, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(np.float32)
    return X, y


class TwoTower(torch.nn.Module):
    """Not an nn.Sequential: DP-SGD must go through Opacus."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(d, 4), torch.nn.Linear(d, 4)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.tanh(self.a(x)), torch.relu(self.b(x))], dim=1))


def _banks(**kwargs: Any) -> list[securefl.Bank]:
    return [securefl.Bank(f"bank{i}", *_rows(i, n=150 + 50 * i), **kwargs) for i in range(3)]


def _config(tmp: Path, **kw: Any) -> securefl.RunConfig:
    base: dict[str, Any] = dict(rounds=2, batch_size=32, lr=0.05, out=str(tmp),
                                record_noise_multiplier=1.0)
    base.update(kw)
    return securefl.RunConfig(**base)


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("custom_model", ROOT / "examples" /
                                                  "custom_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_custom_model_example_trains_and_verifies(tmp_path: Path) -> None:
    source = (ROOT / "examples" / "custom_model.py").read_text()
    assert len(source.splitlines()) <= 40  # the bound for the example
    example = _load_example()
    result = example.main(str(tmp_path / "run"), 2)
    assert result.rounds_completed == 2
    # the model is the user's: a residual network with LayerNorm, not securefl's mlp/logreg
    facts = json.loads((tmp_path / "run" / "federation.json").read_text())
    assert facts["members"]["model"]["class"] == "ResidualScorer"
    # it learned (a random scorer sits at 0.5 ROC-AUC) and the privacy ledger has both levels
    assert result.final_metrics["roc_auc"] > 0.6
    assert set(result.privacy["banks"]) == {"graduate", "university", "other"}
    for bank in result.privacy["banks"].values():
        assert 0 < bank["record"]["epsilon"] < math.inf
    verify_run_dir(tmp_path / "run")


def test_train_secagg_dp_own_model_is_deterministic_and_verifies(tmp_path: Path) -> None:
    X, y = _rows(99, n=300)
    shas = []
    for name in ("a", "b"):
        torch.manual_seed(3)
        model = TwoTower(5)
        result = securefl.train(model, _banks(), _config(tmp_path / name), test=(X, y))
        assert result.rounds_completed == 2
        assert set(result.final_metrics) >= {"roc_auc", "log_loss"}
        verify_run_dir(tmp_path / name)
        # the caller's model object ends holding the committed global model
        stored = from_bytes(RunStore.open(tmp_path / name).model_bytes(2))
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(stored[key], value.numpy())
        shas.append(result.model_sha256)
    assert shas[0] == shas[1]
    # a different initial model is a different session: different random streams
    torch.manual_seed(4)
    other = securefl.train(TwoTower(5), _banks(), _config(tmp_path / "c"), test=(X, y))
    assert other.model_sha256 != shas[0]


def test_ledger_records_each_banks_dpsgd_and_the_clip_holds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 1))  # ghost clipping path
    seen: list[float] = []
    result = securefl.train(model, _banks(), _config(tmp_path / "r", aggregation="plain",
                                                     clip_norm=0.01, rounds=1),
                            evaluate=lambda m: {"norm": float(sum(p.detach().norm() ** 2 for p in
                                                                  m.parameters()) ** 0.5)})
    seen.append(result.final_metrics["norm"])
    lines = [json.loads(x) for x in (tmp_path / "r" / "ledger.jsonl").read_text().splitlines()]
    record = {e["party"]: e for e in lines if e["level"] == "record"}
    assert set(record) == {"bank:bank0", "bank:bank1", "bank:bank2"}
    for i, name in enumerate(("bank0", "bank1", "bank2")):
        n = 150 + 50 * i
        steps_per_epoch = -(-n // 32)
        event = record[f"bank:{name}"]["event"]
        assert event["count"] == steps_per_epoch
        assert math.isclose(event["event"]["rate"], 1 / steps_per_epoch)
        assert event["event"]["event"]["noise_multiplier"] == 1.0
    assert result.rounds_completed == 1 and seen[0] > 0


def test_bank_update_clips_and_weights_exactly() -> None:
    """An own loop that moves every weight by +1: the update is weight * clip * u, u the unit
    vector along (1, ..., 1), computed here independently of securefl."""

    def plus_one(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, plan: Any) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)

    bank = securefl.Bank("b", *_rows(0), train_fn=plus_one)
    model = torch.nn.Linear(5, 1)
    start = np.zeros(6)
    plan = securefl.LocalPlan(round=1, clip_norm=0.5, weight=0.25)
    update = bank.update(model, start, plan, seed=0)
    np.testing.assert_allclose(update.vector, 0.25 * 0.5 * np.ones(6) / math.sqrt(6), rtol=1e-12)
    assert update.clipped and update.drafts == ()
    assert "vector" not in repr(update) and "0.0510" not in repr(update)
    # below the clip the update passes unchanged (times the weight)
    small = securefl.LocalPlan(round=1, clip_norm=10.0, weight=1.0)
    np.testing.assert_allclose(bank.update(model, start, small, seed=0).vector, np.ones(6))


def test_own_loop_under_dp_must_declare_and_is_recorded_as_declared() -> None:
    def loop(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, plan: Any) -> None:
        return None

    plan = securefl.LocalPlan(round=2, clip_norm=1.0, weight=1.0, record_noise_multiplier=1.1)
    with pytest.raises(ConfigError, match="own loop while the round asks for record-level"):
        securefl.Bank("b", *_rows(0), train_fn=loop).update(torch.nn.Linear(5, 1), np.zeros(6),
                                                            plan, seed=0)
    declared = securefl.DeclaredDpSgd(noise_multiplier=1.3, sample_rate=0.02, steps=50,
                                      max_grad_norm=0.7)
    bank = securefl.Bank("b", *_rows(0), train_fn=loop, declared_dpsgd=declared)
    (draft,) = bank.update(torch.nn.Linear(5, 1), np.zeros(6), plan, seed=0).drafts
    assert draft.party == "bank:b" and draft.level == "record" and draft.round == 2
    assert draft.clip_norm == 0.7 and draft.steps == 50
    assert draft.noise_source == "declared"  # recorded as declared, not verified


@pytest.mark.parametrize(("X", "y", "match"), [
    (np.array([[1.0, np.nan]]), np.array([1.0]), "NaN"),
    (np.ones((3, 2)), np.ones(2), "2 labels for 3 rows"),
    (np.ones(3), np.ones(3), "2-D"),
])
def test_bank_refuses_bad_rows(X: Any, y: Any, match: str) -> None:
    with pytest.raises(DataError, match=match):
        securefl.Bank("b", X, y)


def test_bank_from_frame() -> None:
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra")
    frame = pd.DataFrame({"amount": [1.0, 2.0, 3.0], "term": [36, 60, 36], "bad": [0, 1, 0]})
    bank = securefl.Bank.from_frame("b", frame, label="bad")
    np.testing.assert_array_equal(bank.X, [[1, 36], [2, 60], [3, 36]])
    np.testing.assert_array_equal(bank.y, [0, 1, 0])
    with pytest.raises(DataError, match="'home' is not numeric"):
        securefl.Bank.from_frame("b", frame.assign(home=["RENT", "OWN", "RENT"]), label="bad")
    with pytest.raises(DataError, match="no label column"):
        securefl.Bank.from_frame("b", frame, label="default")


def test_train_refuses_bad_federations(tmp_path: Path) -> None:
    model = torch.nn.Linear(5, 1)
    cfg = _config(tmp_path / "x")
    with pytest.raises(ConfigError, match="at least two"):
        securefl.train(model, _banks()[:1], cfg)
    with pytest.raises(ConfigError, match="distinct"):
        securefl.train(model, [_banks()[0], _banks()[0]], cfg)
    odd = securefl.Bank("odd", np.ones((10, 3)), np.zeros(10))
    with pytest.raises(DataError, match="same number of features"):
        securefl.train(model, [*_banks(), odd], cfg)
    with pytest.raises(ConfigError, match="baselines"):
        securefl.train(model, _banks(), _config(tmp_path / "y", baselines=True))
    with pytest.raises(ConfigError, match=r"securefl\.train"):
        securefl.run(_config(tmp_path / "z", model="custom"))
    assert not (tmp_path / "x").exists()
