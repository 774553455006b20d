"""End-to-end federated runs through the library API and the CLI (short runs; the full default run
is measured by benchmarks/results.py and quoted in README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.audit.verify import verify_run_dir
from securefl.config import RunConfig
from securefl.dp.ledger import Ledger
from securefl.dp.report import privacy_report
from securefl.errors import BudgetExceededError
from securefl.runtime import Engine, run


@pytest.mark.slow
def test_secagg_dp_run_beats_every_bank_alone(tmp_path: Path) -> None:
    cfg = RunConfig(rounds=8, out=str(tmp_path / "run"), baselines=True)  # secagg + DP defaults
    result = run(cfg)
    auc = result.final_metrics["roc_auc"]
    alone = [m["roc_auc"] for name, m in result.baselines.items() if name.startswith("alone:")]
    assert len(alone) == 3
    assert auc > max(alone), (auc, result.baselines)
    verify_run_dir(tmp_path / "run")
    # the privacy numbers in the result are recomputed from the ledger file alone
    replay = privacy_report(Ledger.load(tmp_path / "run" / "ledger.jsonl"), cfg.delta, "rdp")
    assert replay == result.privacy
    record_eps = [b["record"]["epsilon"] for b in replay["banks"].values()]
    assert all(e <= 8.0 + 1e-9 for e in record_eps)


def test_ckks_matches_plain(tmp_path: Path) -> None:
    common = {"rounds": 3, "model": "logreg", "dp": True}
    plain = run(RunConfig(aggregation="plain", out=str(tmp_path / "p"), **common))
    ckks = run(RunConfig(aggregation="ckks", out=str(tmp_path / "c"), **common))
    assert abs(plain.final_metrics["roc_auc"] - ckks.final_metrics["roc_auc"]) < 0.005
    verify_run_dir(tmp_path / "c")


def test_dropouts_and_aborted_rounds_are_recorded(tmp_path: Path) -> None:
    cfg = RunConfig(rounds=6, model="logreg", dropout=0.45, seed=3, out=str(tmp_path / "d"),
                    aggregation="secagg")
    result = run(cfg)
    aborted = [h for h in result.history if h.aborted]
    dropped = [h for h in result.history if h.dropouts and not h.aborted]
    assert aborted and dropped, result.to_dict()["history"]
    report = verify_run_dir(tmp_path / "d")
    assert report.rounds_aborted == len(aborted)
    # the ledger records the survivors actually present in each completed round
    entries = Ledger.load(tmp_path / "d" / "ledger.jsonl").entries
    by_round = {e.round: e.survivors for e in entries if e.level == "client"}
    for h in result.history:
        if not h.aborted:
            assert by_round[h.round] == len(h.survivors)
        else:
            assert h.round not in by_round


def test_budget_refuses_a_plan_that_does_not_fit(tmp_path: Path) -> None:
    cfg = RunConfig(rounds=50, model="logreg", noise_multiplier=2.0, target_epsilon=5.0,
                    out=str(tmp_path / "b"))
    with pytest.raises(BudgetExceededError, match=r"at most \d+ rounds fit"):
        run(cfg)
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_budget_stops_before_the_round_that_would_exceed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # simulate a plan that under-estimated the cost: the start check passes, the per-round check
    # must stop the run before the first round that would exceed the target
    monkeypatch.setattr(Engine, "_check_budget_before_start", lambda self, *args: None)
    cfg = RunConfig(rounds=10, model="logreg", noise_multiplier=2.0, target_epsilon=4.0,
                    out=str(tmp_path / "s"))
    result = run(cfg)
    assert result.stopped_early and "would exceed" in result.stopped_early
    assert 1 <= result.rounds_completed < 10
    assert result.privacy["federation"]["client"]["epsilon"] <= 4.0
    verify_run_dir(tmp_path / "s")


def test_cli_json_and_no_dp_label(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "securefl", "run", "--rounds", "2", "--model", "logreg", "--no-dp",
         "--aggregation", "plain", "--out", str(tmp_path / "j"), "--json"],
        capture_output=True, text=True, check=True, timeout=600)
    payload = json.loads(out.stdout)
    assert payload["dp"] is False and payload["insecure"] is True
    assert payload["rounds_completed"] == 2 and payload["privacy"] == {}
    final = payload["final_metrics"]  # calibration beside ranking (issue 18 item 3)
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece"} <= set(final)
    assert sum(v for k, v in final.items() if k.startswith("reliability/") and k.endswith("/n")) > 0
    assert (tmp_path / "j" / "report.html").is_file()  # written by default (issue 20)
    human = subprocess.run(
        [sys.executable, "-m", "securefl", "run", "--rounds", "1", "--model", "logreg", "--no-dp",
         "--out", str(tmp_path / "h"), "--no-report"], capture_output=True, text=True, check=True,
        timeout=600)
    assert "NO differential privacy" in human.stdout
    assert "brier" in human.stdout and "ece" in human.stdout
    assert "reliability/" not in human.stdout  # the bins are in --json, result.json, the report
    assert not (tmp_path / "h" / "report.html").exists()


@pytest.mark.slow
def test_regression_with_secagg_and_dp(tmp_path: Path) -> None:
    cfg = RunConfig(label="LIMIT_BAL", rounds=5, out=str(tmp_path / "r"))
    result = run(cfg)
    assert result.task == "regression"
    m = result.final_metrics
    assert set(m) == {"rmse", "mae", "r2"} and m["r2"] > 0.1
    verify_run_dir(tmp_path / "r")


def test_seed_determinism(tmp_path: Path) -> None:
    cfg = {"rounds": 2, "model": "logreg", "seed": 11}
    a = run(RunConfig(out=str(tmp_path / "a"), **cfg))
    b = run(RunConfig(out=str(tmp_path / "b"), **cfg))
    c = run(RunConfig(out=str(tmp_path / "c"), **{**cfg, "seed": 12}))
    assert a.model_sha256 == b.model_sha256 != c.model_sha256


def test_baselines_do_not_change_the_federated_model(tmp_path: Path) -> None:
    cfg = {"rounds": 1, "model": "logreg", "seed": 5}
    a = run(RunConfig(out=str(tmp_path / "a"), **cfg))
    b = run(RunConfig(out=str(tmp_path / "b"), baselines=True, **cfg))
    assert a.model_sha256 == b.model_sha256 and b.baselines and not a.baselines
