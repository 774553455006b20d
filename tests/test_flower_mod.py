"""securefl inside a Flower app, in-process: the real ClientApp with ``mods=[securefl_mod]`` and
the real ``DefaultWorkflow(fit_workflow=SecureFLWorkflow(...))`` with a FedAvg strategy, over a fake
Grid (tests/flower_mod_helpers.py). Expected values come from Flower's own FedAvg arithmetic
(flwr.server.strategy.aggregate.aggregate) on the clients' plain fit results, never from securefl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from result_helpers import check_result_json

from securefl.federation import ProtocolParams
from tests.flower_mod_helpers import (
    KEY_HOLDER,
    FakeGrid,
    FlowerFed,
    known_client_fn,
    known_delta,
    make_flower_federation,
    server_identity,
)

pytest.importorskip("flwr")

BANKS = ["bank-a", "bank-b", "bank-c"]
N_EXAMPLES = {"bank-a": 100, "bank-b": 200, "bank-c": 300, "bank-d": 150}
SHAPES = [(60, 40), (40,)]
CLIP = 10.0  # above every known update's norm (about 1.0): nothing is clipped


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _run(tmp_path: Path, params: ProtocolParams, *, rounds: int = 1,
         extra_config: dict[str, dict[str, Any]] | None = None, evaluate: bool = False,
         fed: FlowerFed | None = None, workflow_cls: Any = None, run_name: str = "run",
         silent: dict[str, str] | None = None, tamper: Any = None,
         calls: list[str] | None = None, tamper_reply: Any = None,
         banks: list[str] = BANKS, late: dict[str, str] | None = None,
         timeout: float | None = None) -> tuple[list[np.ndarray], Path, FakeGrid]:
    """One Flower run in-process; a ckks federation adds its key holder as its own node (the same
    ClientApp, its node config says role = "ckks-key-holder")."""
    from flwr.app import Context, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    from securefl.flower import SecureFLWorkflow, securefl_mod

    fed = fed or make_flower_federation(tmp_path / "fed", banks, params)
    client_fn = known_client_fn({b: i for i, b in enumerate(banks)}, N_EXAMPLES, calls)
    nids = {b: 101 + i for i, b in enumerate(banks)}
    apps = {nids[b]: ClientApp(client_fn=client_fn, mods=[securefl_mod]) for b in banks}
    configs = {nids[b]: fed.node_config(b, N_EXAMPLES[b], **(extra_config or {}).get(b, {}))
               for b in banks}
    if params.aggregation == "ckks":
        nids[KEY_HOLDER] = 100
        apps[100] = ClientApp(client_fn=client_fn, mods=[securefl_mod])
        configs[100] = fed.key_holder_config(**(extra_config or {}).get(KEY_HOLDER, {}))
    grid = FakeGrid(apps, configs, {nid: b for b, nid in nids.items()},
                    silent={nids[b]: st for b, st in (silent or {}).items()},
                    late={nids[b]: st for b, st in (late or {}).items()},
                    tamper=(lambda nid, msg: tamper(names[nid], msg)) if tamper else None,
                    tamper_reply=((lambda nid, reply: tamper_reply(names[nid], reply))
                                  if tamper_reply else None))
    names = {nid: b for b, nid in nids.items()}
    strategy = FedAvg(initial_parameters=ndarrays_to_parameters(_initial()),
                      fraction_fit=1.0, min_fit_clients=len(banks),
                      min_available_clients=len(banks),
                      fraction_evaluate=1.0 if evaluate else 0.0,
                      min_evaluate_clients=len(banks) if evaluate else 0,
                      on_fit_config_fn=lambda r: {"epochs": 1, "round": r})
    run_dir = tmp_path / run_name
    workflow = DefaultWorkflow(fit_workflow=(workflow_cls or SecureFLWorkflow)(
        manifest=fed.manifest, server_key=fed.keys["agg"], run_dir=run_dir,
        state_dir=tmp_path / "server-state", timeout=timeout))
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}),
                            config=ServerConfig(num_rounds=rounds), strategy=strategy)
    with server_identity():
        workflow(grid, context)
    final = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))
    return final, run_dir, grid


def _plain_fedavg_step(params: list[np.ndarray], banks: list[str] = BANKS) -> list[np.ndarray]:
    """Flower's own FedAvg of the clients' plain fit results from ``params``."""
    from flwr.server.strategy.aggregate import aggregate

    fits = [([(p + d) for p, d in zip(params, known_delta(i, SHAPES), strict=True)],
             N_EXAMPLES[b]) for i, b in enumerate(banks)]
    return aggregate(fits)


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _weight_total(banks: list[str] = BANKS) -> float:
    top = max(N_EXAMPLES[b] for b in banks)
    return sum(N_EXAMPLES[b] / top for b in banks)


def test_dp_off_equals_plain_fedavg_within_the_quantization_bound(tmp_path: Path) -> None:
    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0, precision_bits=16)
    final, run_dir, grid = _run(tmp_path, params, rounds=2, evaluate=True)
    want = _plain_fedavg_step(_plain_fedavg_step(_initial()))
    # stochastic rounding moves each bank's value by < gamma = C / 2^precision per coordinate,
    # so the sum by < n gamma and the mean by < n gamma / (sum of the public weights); per round
    gamma = CLIP / 2**16
    bound = 2 * len(BANKS) * gamma / _weight_total() + 1e-6  # + float32 storage
    err = np.abs(_flat(final) - _flat(want))
    assert err.max() <= bound
    assert np.abs(_flat(final) - _flat(_initial())).max() > 100 * bound  # the model moved
    report = verify_run_dir(run_dir)
    assert report.last_round == 2 and report.has_result and report.rounds_aborted == 0
    # the evaluate messages passed through the mod untouched (NumPyClient.evaluate answered)
    assert any(m.metadata.message_type == "evaluate" for m in grid.sent)
    # nothing but masked vectors left the banks: no fit parameters in any reply record
    assert (run_dir / "ledger.jsonl").read_bytes() == b""


def test_dp_on_noise_within_the_bound_it_implies_and_ledgered(tmp_path: Path) -> None:
    from securefl.audit.verify import verify_run_dir

    z = 0.5
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=z, precision_bits=16)
    declared = {"bank-a": {"dpsgd-noise-multiplier": 1.1, "dpsgd-sample-rate": 0.01,
                           "dpsgd-steps": 100, "dpsgd-max-grad-norm": 1.0}}
    final, run_dir, _ = _run(tmp_path, params, extra_config=declared)
    want = _plain_fedavg_step(_initial())
    err_sum = (_flat(final) - _flat(want)) * _weight_total()  # the noise of the released sum
    # DESIGN.md section 6: any admissible honest set carries std >= z C; all n = 3 survivors
    # carry at most n / h = 3 / 2 times that variance (h >= 2, the manifest's threshold)
    std = float(np.std(err_sum))
    assert 0.9 * z * CLIP <= std <= 1.1 * z * CLIP * np.sqrt(3 / 2)
    assert abs(float(np.mean(err_sum))) < 0.2 * z * CLIP
    report = verify_run_dir(run_dir)
    assert "privacy" in report.claims_checked  # result.json's epsilons re-derived from the ledger
    result = check_result_json(run_dir)  # the one result.json schema
    assert (result["transport"], result["task"], result["seconds"], result["trips"]) == (
        "flower-app", None, None, None)
    assert {"final_metrics", "model_sha256", "history", "rounds_completed"} <= set(
        report.claims_checked)
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    client = [e for e in entries if e["level"] == "client"]
    record = [e for e in entries if e["level"] == "record"]
    assert len(client) == 1 and client[0]["survivors"] == 3
    assert [e["party"] for e in record] == ["bank:bank-a"]
    assert record[0]["noise_source"] == "declared"


def test_noise_shares_are_sized_for_the_manifests_colluders(tmp_path: Path) -> None:
    """Four banks, c = 1 colluder in the manifest: thresholds 2T > n + c and T >= c + 2 give
    T = 3, so each share must carry (z C)^2 / (T - c) = (z C)^2 / 2 and the whole sum of four
    survivors (z C)^2 * 2: the three honest shares still carry z C once the colluder subtracts its
    own. (Shares sized for T = 3 honest banks, ignoring the colluder, give (z C)^2 * 4/3.)"""
    banks = ["bank-a", "bank-b", "bank-c", "bank-d"]
    z = 0.5
    params = ProtocolParams(aggregation="secagg", threshold=3, clip_norm=CLIP,
                            noise_multiplier=z, colluders=1)
    final, run_dir, _ = _run(tmp_path, params, banks=banks)
    err_sum = (_flat(final) - _flat(_plain_fedavg_step(_initial(), banks))) * _weight_total(banks)
    std = float(np.std(err_sum))
    assert 0.93 * z * CLIP * np.sqrt(2) <= std <= 1.07 * z * CLIP * np.sqrt(2)
    (client,) = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert client["colluders"] == 1 and client["event"]["survivors"] == 3  # the honest shares


def test_attempts_at_one_global_model_are_bounded(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """bank-c never signs the survivor set, so every round aborts and the next one retries the
    same global model with new keys and a new graph. The workflow's round engine starts at most
    3 attempts in a row (RoundEngine.max_aborted = securefl.deploy.common.MAX_ATTEMPTS, as a
    deployment's server): rounds 4 and 5 are recorded as aborted by the engine's bound and no bank
    hears of them."""
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    final, run_dir, grid = _run(tmp_path, params, rounds=5, silent={"bank-c": "consistency"})
    assert np.array_equal(_flat(final), _flat(_initial()))
    records = _records(run_dir)
    assert [r["status"] for r in records] == ["aborted"] * 5
    assert [r["error_code"] for r in records[3:]] == ["SFL310"] * 2
    bound = [r.getMessage() for r in caplog.records if "refuse more than 3 attempts" in
             r.getMessage()]
    assert len(bound) == 2 and "round 4" in bound[0] and "round 5" in bound[1]
    assert not any("SFL307" in r.getMessage() for r in caplog.records)  # no bank refused
    from tests.flower_mod_helpers import stage_index

    groups = {m.metadata.group_id for m in grid.sent}
    assert "4" not in groups and "5" not in groups
    last = {g: max(stage_index(m) for m in grid.sent if m.metadata.group_id == g)
            for g in ("1", "2", "3")}
    assert last == {"1": 3, "2": 3, "3": 3}  # each got as far as the consistency stage


def test_without_the_servers_bound_the_banks_refuse_a_fourth_attempt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server without the engine's bound (max_aborted = None, as a malicious server would
    run) still gets no fourth attempt: each bank's own guard, the mod's pending-unmask rule
    (securefl.deploy.common.check_pending), refuses the 4th plan after 3 that took its keys and
    were never unmasked (SFL307)."""
    from securefl.flower import SecureFLWorkflow

    class Unbounded(SecureFLWorkflow):
        max_aborted = None

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    final, run_dir, grid = _run(tmp_path, params, rounds=4, silent={"bank-c": "consistency"},
                                workflow_cls=Unbounded)
    assert np.array_equal(_flat(final), _flat(_initial()))
    assert [r["status"] for r in _records(run_dir)] == ["aborted"] * 4
    refusals = [r.getMessage() for r in caplog.records if "SFL307" in r.getMessage()]
    assert len(refusals) == 3 and all("round 4" in m for m in refusals)
    # rounds 1-3 got as far as the consistency stage, round 4 not past the advertisement
    from tests.flower_mod_helpers import stage_index

    last = {g: max(stage_index(m) for m in grid.sent if m.metadata.group_id == g)
            for g in ("1", "2", "3", "4")}
    assert last == {"1": 3, "2": 3, "3": 3, "4": 0}


def test_node_config_errors_are_typed(tmp_path: Path) -> None:
    """A node config without the keys the mod needs, or with a non-positive size, is refused with
    ConfigError naming the key (the mod then fails the message: a dropout for the server)."""
    from securefl.errors import ConfigError
    from securefl.flower.mod import FlowerBank

    good = {"member": "bank-a", "key": "k", "manifest": "m", "state-dir": "s",
            "num-examples": 10}
    assert FlowerBank.from_node_config(good).num_examples == 10
    for drop in ("member", "key", "manifest", "state-dir", "num-examples"):
        with pytest.raises(ConfigError, match=drop):
            FlowerBank.from_node_config({k: v for k, v in good.items() if k != drop})
    with pytest.raises(ConfigError, match="num-examples"):
        FlowerBank.from_node_config({**good, "num-examples": 0})
    with pytest.raises(ConfigError, match="dpsgd-steps"):
        FlowerBank.from_node_config({**good, "dpsgd-noise-multiplier": 1.0,
                                     "dpsgd-sample-rate": 0.1, "dpsgd-max-grad-norm": 1.0})
    # a record-level cap needs a declared mechanism to charge; a cap must be a positive number
    with pytest.raises(ConfigError, match="record-epsilon-cap needs"):
        FlowerBank.from_node_config({**good, "record-epsilon-cap": 2.0, "budget-dir": "b"})
    with pytest.raises(ConfigError, match="client_epsilon_cap must be a positive number"):
        FlowerBank.from_node_config({**good, "client-epsilon-cap": -1})
    capped = FlowerBank.from_node_config({**good, "client-epsilon-cap": 3, "budget-dir": "b"})
    assert capped.budget is not None and capped.budget.path.parent == Path("b")
    # the lifetime ledger lives where the operator chose (rt16 finding 3), its mark in state-dir
    assert capped.budget.anchor is not None and capped.budget.anchor.parent == Path(good["state-dir"])
    with pytest.raises(ConfigError, match="needs budget-dir"):
        FlowerBank.from_node_config({**good, "client-epsilon-cap": 3})


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "audit" / "log.jsonl").read_text().splitlines()][1:]


def test_banks_refuse_a_plan_weaker_than_the_manifest(tmp_path: Path) -> None:
    """A server that plans less noise than the signed manifest says gets no key advertisement:
    the round aborts, nothing is released, the model stays, and the audit log says so."""
    import msgspec

    from securefl.audit.verify import verify_run_dir
    from securefl.flower import SecureFLWorkflow

    class Weaker(SecureFLWorkflow):
        def plan(self, *args: Any, **kwargs: Any) -> Any:
            return msgspec.structs.replace(super().plan(*args, **kwargs), noise_multiplier=0.0)

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.5)
    final, run_dir, _ = _run(tmp_path, params, workflow_cls=Weaker)
    assert np.array_equal(_flat(final), _flat(_initial()))
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL310"


def test_a_replayed_session_is_refused(tmp_path: Path) -> None:
    """A server that reuses a session counter (here: it lost its state) is refused by every bank,
    which keeps the highest counter it accepted (a replayed session would be a second attempt at
    the same inputs under the same session keys)."""
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    _, first, _ = _run(tmp_path, params, fed=fed, run_name="run1")
    assert _records(first)[0]["status"] == "committed"
    import shutil

    shutil.rmtree(tmp_path / "server-state")  # the server's counter starts again at 1
    final, second, _ = _run(tmp_path, params, fed=fed, run_name="run2")
    assert np.array_equal(_flat(final), _flat(_initial()))
    assert _records(second)[0]["status"] == "aborted"


def test_a_session_beyond_the_manifests_max_sessions_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions per manifest are capped (manifest v3, spec section 12.1): with max_sessions = 1
    the honest workflow refuses to open a second session, and a server that opens it anyway
    (its own cap bypassed) is refused by every bank: the round aborts, the model is unchanged."""
    from securefl.deploy.common import SessionCounter
    from securefl.errors import ConfigError

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0, max_sessions=1)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    _, first, _ = _run(tmp_path, params, fed=fed, run_name="run1")
    assert _records(first)[0]["status"] == "committed"
    with pytest.raises(ConfigError, match="max_sessions = 1"):
        _run(tmp_path, params, fed=fed, run_name="run2")

    class Uncapped(SessionCounter):  # the server's side only; the banks keep the real one
        def next(self) -> int:
            self.max_sessions = 2**20
            return super().next()

    monkeypatch.setattr("securefl.flower.workflow.SessionCounter", Uncapped)
    final, third, _ = _run(tmp_path, params, fed=fed, run_name="run3")
    assert np.array_equal(_flat(final), _flat(_initial()))
    assert _records(third)[0]["status"] == "aborted"


def test_a_bank_with_a_key_not_in_the_manifest_drops_out(tmp_path: Path) -> None:
    """A node whose identity key is not its member's in the manifest refuses to run (typed
    SignatureError on the node); the others still release a sum of their own updates only."""
    from securefl.crypto.signing import SigningKey
    from tests.deploy_helpers import write_key

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    write_key(tmp_path / "impostor.key", SigningKey.generate())
    final, run_dir, _ = _run(tmp_path, params, fed=fed,
                             extra_config={"bank-c": {"key": str(tmp_path / "impostor.key")}})
    (rec,) = _records(run_dir)
    # refused at the hello (no signed size), so never a participant of a plan
    assert rec["participants"] == rec["survivors"] == ["bank-a", "bank-b"]
    # FedAvg of the two survivors' plain updates, weights n_i (Flower's own arithmetic)
    from flwr.server.strategy.aggregate import aggregate

    init = _initial()
    want = aggregate([([p + d for p, d in zip(init, known_delta(i, SHAPES), strict=True)],
                       N_EXAMPLES[b]) for i, b in enumerate(BANKS[:2])])
    top = max(N_EXAMPLES.values())
    bound = 2 * (CLIP / 2**16) / ((N_EXAMPLES["bank-a"] + N_EXAMPLES["bank-b"]) / top) + 1e-6
    assert np.abs(_flat(final) - _flat(want)).max() <= bound


@pytest.mark.parametrize("stage", ["masked", "consistency", "unmask"])
def test_a_bank_that_drops_mid_round(tmp_path: Path, stage: str) -> None:
    """bank-c stops answering at ``stage``. Before its masked input arrived ("masked"): its
    pairwise masks are removed through the others' shares and the sum holds bank-a and bank-b.
    After it ("unmask"): its input is in the sum, its self mask removed through the others'
    shares. In between ("consistency"): a survivor that does not sign the survivor set aborts the
    round (the active-security rule, Bonawitz et al. 2017 figure 4): nothing released, model
    unchanged, the abort in the audit log. bank-a declares its own DP-SGD: the ledger charges it
    for the round whether or not the round released (as securefl run records an aborted round)."""
    from flwr.server.strategy.aggregate import aggregate

    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    declared = {"bank-a": {"dpsgd-noise-multiplier": 1.1, "dpsgd-sample-rate": 0.01,
                           "dpsgd-steps": 100, "dpsgd-max-grad-norm": 1.0}}
    final, run_dir, _ = _run(tmp_path, params, silent={"bank-c": stage}, extra_config=declared)
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert [(e["party"], e["round"], e["noise_source"]) for e in entries] == \
        [("bank:bank-a", 1, "declared")]
    if stage == "consistency":
        assert rec["status"] == "aborted"
        assert np.array_equal(_flat(final), _flat(_initial()))
        return
    summed = BANKS[:2] if stage == "masked" else BANKS
    assert rec["survivors"] == summed and rec["dropouts"] == (
        {"bank-c": "masked"} if stage == "masked" else {})
    init = _initial()
    want = aggregate([([p + d for p, d in zip(init, known_delta(i, SHAPES), strict=True)],
                       N_EXAMPLES[b]) for i, b in enumerate(BANKS) if b in summed])
    top = max(N_EXAMPLES.values())
    bound = len(summed) * (CLIP / 2**16) / (sum(N_EXAMPLES[b] for b in summed) / top) + 1e-6
    assert np.abs(_flat(final) - _flat(want)).max() <= bound



@pytest.mark.parametrize("stage", ["advertise", "masked"])
def test_a_bank_that_answers_after_the_deadline_is_a_dropout(tmp_path: Path, stage: str) -> None:
    """bank-c's reply of ``stage`` comes after the stage's timeout (the fake Grid hands it over
    with the next round trip, as a straggler's reply would arrive): the workflow discards it (it
    answers a closed stage), bank-c is a dropout at that stage, and the round releases bank-a's
    and bank-b's sum (threshold 2 kept); every round trip carried the workflow's timeout."""
    from flwr.server.strategy.aggregate import aggregate

    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    final, run_dir, grid = _run(tmp_path, params, late={"bank-c": stage}, timeout=30.0)
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["survivors"] == BANKS[:2] and rec["dropouts"] == {"bank-c": stage}
    assert grid.timeouts and set(grid.timeouts) == {30.0}
    init = _initial()
    want = aggregate([([p + d for p, d in zip(init, known_delta(i, SHAPES), strict=True)],
                       N_EXAMPLES[b]) for i, b in enumerate(BANKS[:2])])
    top = max(N_EXAMPLES.values())
    bound = 2 * (CLIP / 2**16) / ((N_EXAMPLES["bank-a"] + N_EXAMPLES["bank-b"]) / top) + 1e-6
    assert np.abs(_flat(final) - _flat(want)).max() <= bound


def test_more_stragglers_than_tolerated_abort_the_flower_round(tmp_path: Path) -> None:
    """Two of three banks answer the advertise stage after the deadline, threshold 2: the round
    aborts (typed code in the audit record), nothing is released, the model stays, and the run
    directory verifies."""
    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    final, run_dir, _ = _run(tmp_path, params, late={"bank-a": "advertise",
                                                     "bank-c": "advertise"}, timeout=30.0)
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL310"
    assert np.array_equal(_flat(final), _flat(_initial()))


def test_a_model_tailored_to_one_bank_is_refused_by_it(tmp_path: Path) -> None:
    """A server that sends bank-c another global model than the signed plan names (in the masked
    stage's FitIns) gets no masked input from it: bank-c refuses before its fit even runs (a
    RemoteProtocolError on the node), and the sum holds bank-a and bank-b only."""
    from flwr.app import Array, ArrayRecord

    from securefl.audit.verify import verify_run_dir

    def tailor(name: str, msg: Any) -> None:
        rec = msg.content.array_records.get("fitins.parameters")
        if name == "bank-c" and rec is not None:
            msg.content.array_records["fitins.parameters"] = ArrayRecord(
                {k: Array(v.numpy() + np.float32(0.5)) for k, v in rec.items()})

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    calls: list[str] = []
    _, run_dir, _ = _run(tmp_path, params, tamper=tailor, calls=calls)
    assert sorted(calls) == ["bank-a", "bank-b"]
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["survivors"] == ["bank-a", "bank-b"] and rec["dropouts"] == {"bank-c": "masked"}


def test_a_forged_key_advertisement_drops_that_bank_only(tmp_path: Path) -> None:
    """bank-c's advertisement reaches the server with a signature its manifest key did not make:
    the server refuses that bank (a dropout at the advertise stage) instead of aborting the
    round, and the others' sum is released."""
    import msgspec
    from flwr.app import Array, ArrayRecord

    from securefl.flower.common import ARRAY, RECORD, decode_client
    from securefl.protocol import wire
    from securefl.protocol.messages import AdvertiseKeys, decode_message, encode_message
    from securefl.transport.flower import Envelope

    def forge(name: str, reply: Any) -> Any:
        if name != "bank-c" or RECORD not in reply.content.array_records:
            return reply
        env = wire.decode(reply.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
        body = decode_client(env.payload)
        msgs = [decode_message(p) for p in body.protocol]
        if not any(isinstance(m, AdvertiseKeys) for m in msgs):
            return reply
        forged = [msgspec.structs.replace(m, signature=bytes(64)) for m in msgs]
        body = msgspec.structs.replace(body, protocol=[encode_message(m) for m in forged])
        data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(body)))
        reply.content.array_records[RECORD] = ArrayRecord(
            {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})
        return reply

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    _, run_dir, _ = _run(tmp_path, params, tamper_reply=forge)
    (rec,) = _records(run_dir)
    assert rec["status"] == "committed"
    assert rec["survivors"] == ["bank-a", "bank-b"] and rec["dropouts"] == {"bank-c": "advertise"}

def test_a_bank_over_its_round_byte_limit_drops_that_bank_only(tmp_path: Path) -> None:
    """bank-c sends its masked input three times in one reply (each copy valid and under the
    per-message limit): over the per-round limit the plan allows one bank
    (protocol.secagg.limits), so the server refuses the whole reply before the machine sees it
    (ByteLimitError, logged): bank-c is a dropout at the masked stage and the others' sum is
    released."""
    import msgspec
    from flwr.app import Array, ArrayRecord

    from securefl.audit.verify import verify_run_dir
    from securefl.flower.common import ARRAY, RECORD, decode_client
    from securefl.protocol import wire
    from securefl.protocol.messages import MaskedInput, decode_message
    from securefl.transport.flower import Envelope

    def triple(name: str, reply: Any) -> Any:
        if name != "bank-c" or RECORD not in reply.content.array_records:
            return reply
        env = wire.decode(reply.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
        body = decode_client(env.payload)
        if not any(isinstance(decode_message(p), MaskedInput) for p in body.protocol):
            return reply
        body = msgspec.structs.replace(body, protocol=list(body.protocol) * 3)
        data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(body)))
        reply.content.array_records[RECORD] = ArrayRecord(
            {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})
        return reply

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    _, run_dir, _ = _run(tmp_path, params, tamper_reply=triple)
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["status"] == "committed"
    assert rec["survivors"] == ["bank-a", "bank-b"] and rec["dropouts"] == {"bank-c": "masked"}


def test_a_server_that_floods_a_bank_across_messages_is_refused_by_its_round_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server sends bank-c a key roster of 36 entries (the honest 3, twelve times; each entry
    valid, the message under the per-message limit). A ClientApp lives for one message, but the
    bank keeps the round's server messages in its sealed node state, so it counts the round's
    bytes across messages: this one would take it past the plan's per-round limit
    (protocol.secagg.limits, from_server), and it is refused before it is decoded
    (ByteLimitError, SFL308, logged by the bank). bank-c is a dropout at the share stage and the
    others' sum is released; the run directory verifies."""
    import msgspec
    from flwr.app import Array, ArrayRecord

    from securefl.audit.verify import verify_run_dir
    from securefl.flower.common import ARRAY, RECORD, decode_server
    from securefl.protocol import wire
    from securefl.protocol.messages import KeyRoster, decode_message, encode_message
    from securefl.transport.flower import Envelope

    def flood(name: str, msg: Any) -> None:
        if name != "bank-c" or RECORD not in msg.content.array_records:
            return
        env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
        if env.stage != "share":
            return
        body = decode_server(env.payload)
        roster = decode_message(body.protocol)
        assert isinstance(roster, KeyRoster)
        big = KeyRoster(session_id=roster.session_id, round=roster.round,
                        entries=list(roster.entries) * 12)
        body = msgspec.structs.replace(body, protocol=encode_message(big))
        data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(body)))
        msg.content.array_records[RECORD] = ArrayRecord(
            {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    caplog.set_level("ERROR")
    _, run_dir, _ = _run(tmp_path, params, tamper=flood)
    refusals = [r.getMessage() for r in caplog.records if "SFL308" in r.getMessage()]
    assert len(refusals) == 1 and "bank-c" in refusals[0] and "limit of" in refusals[0]
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["status"] == "committed"
    assert rec["survivors"] == ["bank-a", "bank-b"] and rec["dropouts"] == {"bank-c": "share"}


# --- the example app on a real SuperLink and SuperNodes (TLS, node auth) -------------------------
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flower_app"
ROWS = {"bank-a": 120, "bank-b": 200, "bank-c": 280}
N_FEATURES = 8
EXAMPLE_CLIP = 20.0
#: the real-process test's client-level noise multiplier: the noise it implies in the FedAvg mean
#: (about 0.02 per coordinate) is about twice the example's mean update (rms 0.011), so both the
#: noise's spread and the update are measurable
EXAMPLE_Z = 0.002


def _bank_rows(i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(50 + i)
    X = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(n) > 0).astype(np.float32)
    return X, y


def _example_task() -> Any:
    import importlib
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        return importlib.import_module("flower_app.task")
    finally:
        sys.path.remove(str(EXAMPLE))


def _run_example_on_flower(tmp_path: Path, fed: FlowerFed, extra: dict[str, dict[str, Any]],
                           *, key_holder: bool = False) -> Path:
    """examples/flower_app for one round on a SuperLink and one SuperNode per bank (TLS, node
    authentication, each registered under its manifest name; ``extra``: more node config per
    bank), plus the key holder's SuperNode; every process started is stopped. Returns the run
    directory."""
    import shutil

    from tests.deploy_helpers import node_config_string
    from tests.flower_harness import CONN, FlowerCluster, wait_for

    data = {}
    for i, b in enumerate(BANKS):
        X, y = _bank_rows(i, ROWS[b])
        data[b] = tmp_path / "fed" / f"{b}.csv"
        np.savetxt(data[b], np.column_stack([X, y]), delimiter=",", fmt="%.9g",
                   header=",".join([f"f{k}" for k in range(N_FEATURES)] + ["label"]),
                   comments="")
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__"))
    run_dir = tmp_path / "run"
    nodes = len(BANKS) + int(key_holder)
    cluster = FlowerCluster(tmp_path / "cluster", nodes)
    try:
        cluster.start_superlink()
        for i, b in enumerate(BANKS):
            cfg = fed.node_config(b, ROWS[b], **{"data-path": str(data[b]), "seed": i,
                                                 **extra.get(b, {})})
            cluster.add_supernode(i, name=b, node_config=node_config_string(cfg))
        if key_holder:
            cluster.add_supernode(len(BANKS), name=KEY_HOLDER,
                                  node_config=node_config_string(fed.key_holder_config()))
        run = cluster.flwr(
            "run", str(app), CONN, "--run-config",
            f'num-server-rounds=1 manifest="{fed.manifest}" server-key="{fed.keys["agg"]}" '
            f'run-dir="{run_dir}" server-state="{tmp_path / "server-state"}" '
            f"n-features={N_FEATURES} min-clients={nodes}", timeout=120)
        done = wait_for(run_dir / "result.json", lambda o: True, timeout=500)
        assert done is not None, (f"no result; flwr run rc={run.returncode}\n{run.stdout}\n"
                                  f"{run.stderr}\n{cluster.log('superlink')[-4000:]}\n"
                                  f"{cluster.log(KEY_HOLDER if key_holder else 'bank-a')[-3000:]}")
    finally:
        cluster.stop()
    for proc in cluster.procs.values():
        assert proc.poll() is not None  # every process we started is gone
    return run_dir


@pytest.mark.slow
def test_example_app_on_real_flower_processes_verifies(tmp_path: Path) -> None:
    """examples/flower_app on a SuperLink and three SuperNodes (TLS, node authentication, each
    node registered under its manifest name): one round of securefl SecAgg with client-level DP
    on (z = EXAMPLE_Z) and bank-a declaring its own DP-SGD. The committed model minus Flower's own
    FedAvg of the banks' plain fits (recomputed here from the example's training code) is the
    released noise: its spread is the one the noise plan implies, its mean about 0; the ledger
    holds the client-level event of the three survivors' shares (drawn from each node's OS
    CSPRNG) and bank-a's declared record-level event; the audit log and result.json's epsilon
    verify. (DP off, the same comparison within the quantization bound, runs in-process:
    test_dp_off_equals_plain_fedavg_within_the_quantization_bound.)"""
    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=EXAMPLE_CLIP,
                            noise_multiplier=EXAMPLE_Z)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    declared = {"bank-a": {"dpsgd-noise-multiplier": 1.1, "dpsgd-sample-rate": 0.25,
                           "dpsgd-steps": 8, "dpsgd-max-grad-norm": 1.0}}
    run_dir = _run_example_on_flower(tmp_path, fed, declared)

    report = verify_run_dir(run_dir)
    assert report.last_round == 1 and report.rounds_aborted == 0 and report.has_result
    assert "privacy" in report.claims_checked  # result.json's epsilons re-derived from the ledger
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    (client,) = [e for e in entries if e["level"] == "client"]
    assert client["round"] == 1 and client["survivors"] == 3 and client["colluders"] == 0
    assert client["noise_source"] == "os_csprng" and client["clip_norm"] == EXAMPLE_CLIP
    (record,) = [e for e in entries if e["level"] == "record"]
    assert record["party"] == "bank:bank-a" and record["noise_source"] == "declared"
    result = json.loads((run_dir / "result.json").read_text())["body"]["result"]
    assert 0 < result["privacy"]["federation"]["client"]["epsilon"] < float("inf")
    final, init, want = _committed_and_fedavg(run_dir)
    top = max(ROWS.values())
    weight_total = sum(ROWS.values()) / top
    # the noise of the released sum: any admissible honest set (h >= 2, the threshold) carries
    # std >= z C, all n = 3 survivors at most n / h = 3 / 2 times that variance (DESIGN.md
    # section 6); stochastic rounding adds < n gamma = 3 C / 2^16 per coordinate
    err_sum = (_flat(final) - _flat(want)) * weight_total
    std, zc = float(np.std(err_sum)), EXAMPLE_Z * EXAMPLE_CLIP
    assert err_sum.size > 400  # enough coordinates for the spread to be measured
    assert 0.8 * zc <= std <= 1.2 * zc * np.sqrt(3 / 2)
    assert abs(float(np.mean(err_sum))) < 0.3 * zc
    # and the banks' updates are in it: the committed step points along FedAvg's (expected
    # correlation about 0.45; one standard error 1 / sqrt(433) = 0.05)
    step, fedavg_step = _flat(final) - _flat(init), _flat(want) - _flat(init)
    assert float(np.corrcoef(step, fedavg_step)[0, 1]) > 0.2


def _committed_and_fedavg(run_dir: Path
                          ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The run's round-1 model (all three banks survived), the example's initial model, and
    Flower's own FedAvg of each bank's plain fit from it, with the example's own model and
    training code."""
    import torch
    from flwr.server.strategy.aggregate import aggregate

    from securefl.audit.store import RunStore
    from securefl.fl.params import from_bytes

    store = RunStore.open(run_dir)
    assert store.records[1].survivors == sorted(BANKS)
    tensors = from_bytes(store.model_bytes(1))
    final = [np.asarray(tensors[k]) for k in sorted(tensors)]
    task = _example_task()
    torch.manual_seed(0)
    init = task.get_weights(task.FraudNet(N_FEATURES))
    fits = []
    for i, b in enumerate(BANKS):
        net = task.FraudNet(N_FEATURES)
        task.set_weights(net, init)
        task.train(net, *_bank_rows(i, ROWS[b]), epochs=2, seed=i)
        fits.append((task.get_weights(net), ROWS[b]))
    return final, init, aggregate(fits)


@pytest.mark.slow
def test_example_app_with_ckks_on_real_flower_processes_verifies(tmp_path: Path) -> None:
    """examples/flower_app, unchanged, on a SuperLink and four SuperNodes (TLS, node
    authentication): the three banks and, with a ckks manifest, the key holder, registered under
    its manifest name and started with role="ckks-key-holder" in its node config. One round, DP
    off: the committed model equals Flower's own FedAvg of the banks' plain fits (recomputed here
    from the example's training code) within the CKKS release error; the key holder's usage file
    shows the round keyed and released once; the audit log verifies."""
    from securefl.audit.verify import verify_run_dir

    params = ProtocolParams(aggregation="ckks", threshold=2, clip_norm=EXAMPLE_CLIP,
                            noise_multiplier=0.0)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    run_dir = _run_example_on_flower(tmp_path, fed, {}, key_holder=True)

    report = verify_run_dir(run_dir)
    assert report.last_round == 1 and report.rounds_aborted == 0 and report.has_result
    usage = json.loads((tmp_path / "fed" / "keys" / f"{KEY_HOLDER}.key.ckks-usage.json")
                       .read_text())
    assert [r for _, r in usage["decrypted"]] == [1] and list(usage["keyed"].values()) == [1]
    final, init, want = _committed_and_fedavg(run_dir)
    weight_total = sum(ROWS.values()) / max(ROWS.values())
    err = np.abs(_flat(final) - _flat(want))
    assert err.max() <= CKKS_SUM_ERROR / weight_total + 1e-6  # + float32 storage
    assert np.abs(_flat(final) - _flat(init)).max() > 100 * err.max()  # the model moved


def test_a_sparse_secagg_plus_graph_is_refused_on_the_flower_path(tmp_path: Path) -> None:
    """Red-team finding M4: on this path the Flower strategy, not public randomness, picks the
    participants, so a malicious server could grind a sparse SecAgg+ graph (its seed hashes the
    participants). Banks and server accept only the complete graph (classic SecAgg) here."""
    from securefl.errors import ConfigError
    from securefl.federation import load_manifest, verify_manifest
    from securefl.flower.common import FlowerPlan, check_plan
    from securefl.protocol.secagg import derive

    # 100 banks: with the manifest's lifetime bound (spec 12.1) 30 banks and a 10% dropout
    # fraction are the complete graph already
    banks = [f"bank{i:02d}" for i in range(100)]
    d = derive(100, ProtocolParams(aggregation="secagg", threshold=2,
                                   dropout_fraction=0.1).assumptions())
    assert d.degree is not None and d.degree < 99  # a sparse graph the bounds accept
    params = ProtocolParams(aggregation="secagg", threshold=d.threshold, neighbours=d.degree,
                            dropout_fraction=0.1, noise_multiplier=0.0)
    fed = verify_manifest(load_manifest(make_flower_federation(tmp_path, banks, params).manifest))
    plan = FlowerPlan(session=bytes(16), counter=1, round=1, participants=banks,
                      threshold=d.threshold, clip_norm=1.0, noise_multiplier=0.0,
                      min_survivors=d.threshold, degree=d.degree, precision_bits=16, dim=4,
                      weights={b: 1.0 for b in banks}, model_digest=bytes(32),
                      config_digest=bytes(32))
    with pytest.raises(ConfigError, match="classic SecAgg"):
        check_plan(fed, plan, [])


def test_a_round_above_the_manifests_max_rounds_is_refused_on_the_flower_path(
        tmp_path: Path) -> None:
    """Spec 12.1 (red-team finding S6-1): the round numbers are capped by the signed manifest, on
    this path too; round max_rounds itself is accepted, max_rounds + 1 is not."""
    from securefl.errors import ConfigError
    from securefl.federation import load_manifest, verify_manifest
    from securefl.flower.common import BankInfo, FlowerPlan, check_plan

    banks = ["b0", "b1", "b2"]
    params = ProtocolParams(aggregation="secagg", threshold=2, noise_multiplier=0.0,
                            max_rounds=5)
    fed = verify_manifest(load_manifest(make_flower_federation(tmp_path, banks, params).manifest))
    infos = [BankInfo(member=b, n_examples=10, signature=bytes(64)) for b in banks]

    def plan(r: int) -> FlowerPlan:
        return FlowerPlan(session=bytes(16), counter=1, round=r, participants=banks,
                          threshold=2, clip_norm=1.0, noise_multiplier=0.0, min_survivors=2,
                          degree=None, precision_bits=16, dim=4,
                          weights={b: 1.0 for b in banks}, model_digest=bytes(32),
                          config_digest=bytes(32))

    check_plan(fed, plan(5), infos)
    with pytest.raises(ConfigError, match="max_rounds"):
        check_plan(fed, plan(6), infos)


def test_s6b_4_a_flower_plan_with_another_threshold_is_refused(tmp_path: Path) -> None:
    """Red-team finding S6b-4 on this path: the plan's threshold T and min_survivors are the one
    value the manifest fixes for n participants (ProtocolParams.round_threshold, here
    floor(3 / 2) + 1 = 2 for 3 banks), which the mod's check_plan accepts; a larger T or
    min_survivors (a server choosing among graphs, or shrinking every noise share) is refused."""
    from securefl.deploy.common import ServerFaultError
    from securefl.federation import load_manifest, verify_manifest
    from securefl.flower.common import BankInfo, FlowerPlan, check_plan

    banks = ["b0", "b1", "b2"]
    params = ProtocolParams(aggregation="secagg", threshold=2, noise_multiplier=0.0)
    fed = verify_manifest(load_manifest(make_flower_federation(tmp_path, banks, params).manifest))
    infos = [BankInfo(member=b, n_examples=10, signature=bytes(64)) for b in banks]

    def plan(t: int, ms: int) -> FlowerPlan:
        return FlowerPlan(session=bytes(16), counter=1, round=1, participants=banks,
                          threshold=t, clip_norm=1.0, noise_multiplier=0.0, min_survivors=ms,
                          degree=None, precision_bits=16, dim=4,
                          weights={b: 1.0 for b in banks}, model_digest=bytes(32),
                          config_digest=bytes(32))

    check_plan(fed, plan(2, 2), infos)
    for t, ms in ((3, 3), (2, 3)):
        with pytest.raises(ServerFaultError, match="fix both at 2"):
            check_plan(fed, plan(t, ms), infos)


# --- the bank's own budget caps (red-team finding M5) -----------------------------------------------
DECLARED = {"dpsgd-noise-multiplier": 1.1, "dpsgd-sample-rate": 0.01, "dpsgd-steps": 100,
            "dpsgd-max-grad-norm": 1.0}


def test_a_bank_refuses_the_round_that_would_pass_its_record_cap_before_it_advertises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bank-a declares its DP-SGD and caps its record-level epsilon so that exactly one round's
    mechanism fits (counted here with the accountant on the events built by hand). Round 1: it
    takes part. Round 2: it refuses the plan (BudgetExceededError) before making or advertising a
    key, its fit never runs again, and the others' round releases their sum without it."""
    from securefl.dp.accountants import epsilon_of_events
    from securefl.dp.bank_budget import BUDGET_FILE
    from securefl.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent

    one = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 100)
    eps1, eps2 = (epsilon_of_events([one] * k, 1e-5) for k in (1, 2))
    assert eps1 < eps2
    cap = (eps1 + eps2) / 2
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    budget_dir = tmp_path / "bank-a-budget"
    calls: list[str] = []
    extra = {"bank-a": {**DECLARED, "record-epsilon-cap": cap, "budget-dir": str(budget_dir)}}
    _, run_dir, _ = _run(tmp_path, params, rounds=2, extra_config=extra, calls=calls)
    r1, r2 = _records(run_dir)
    assert r1["status"] == r2["status"] == "committed"
    assert "bank-a" in r1["survivors"]
    assert r2["survivors"] == ["bank-b", "bank-c"] and "bank-a" in r2["dropouts"]
    assert calls.count("bank-a") == 1 and calls.count("bank-b") == 2
    refusals = [r.getMessage() for r in caplog.records if "SFL501" in r.getMessage()]
    assert len(refusals) == 1 and "bank-a refused round 2 stage advertise" in refusals[0]
    assert "record epsilon" in refusals[0]
    # its own ledger holds round 1 only: the refused round is not charged
    lines = (budget_dir / BUDGET_FILE).read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1]


def test_a_client_cap_refuses_a_plan_without_client_level_noise(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without client-level noise a round's client-level epsilon is unbounded: a bank with a
    client cap refuses it before its advertisement, the others go on."""
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    calls: list[str] = []
    extra = {"bank-a": {"client-epsilon-cap": 8.0, "budget-dir": str(tmp_path / "b")}}
    _, run_dir, _ = _run(tmp_path, params, extra_config=extra, calls=calls)
    (rec,) = _records(run_dir)
    assert rec["survivors"] == ["bank-b", "bank-c"] and "bank-a" not in calls
    assert any("SFL501" in r.getMessage() and "unbounded" in r.getMessage()
               for r in caplog.records)
    assert not (tmp_path / "b" / "privacy-budget.jsonl").exists()


# --- CKKS on the Flower path: the key holder as its own node ------------------------------------
#: |released - exact| per coordinate of the CKKS sum at these sizes is below 1e-4 (spec.md "Error
#: bound of the released sum": 5.8e-5 at n = 100, d = 10^4); the mean divides it by the weights
CKKS_SUM_ERROR = 1e-4


def _ckks_params(z: float = 0.0) -> ProtocolParams:
    return ProtocolParams(aggregation="ckks", threshold=2, clip_norm=CLIP, noise_multiplier=z)


def _holder_usage(fed_root: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((fed_root / "keys" / f"{KEY_HOLDER}.key.ckks-usage.json")
                                     .read_text())
    return out


def test_ckks_dp_off_equals_plain_fedavg_within_the_release_bound(tmp_path: Path) -> None:
    """A ckks manifest: two Flower rounds through the key holder node; the result is Flower's own
    FedAvg of the plain fits within CKKS's release error, every record committed with each bank's
    ciphertext digest, the key holder released each round once under its own round key, the key
    holder's node never ran the user's app, and the run directory verifies."""
    from securefl.audit.verify import verify_run_dir

    calls: list[str] = []
    final, run_dir, grid = _run(tmp_path, _ckks_params(), rounds=2, evaluate=True, calls=calls)
    want = _plain_fedavg_step(_plain_fedavg_step(_initial()))
    bound = 2 * CKKS_SUM_ERROR / _weight_total() + 1e-6  # two rounds, + float32 storage
    err = np.abs(_flat(final) - _flat(want))
    assert err.max() <= bound
    assert np.abs(_flat(final) - _flat(_initial())).max() > 100 * bound  # the model moved
    assert sorted(calls) == sorted(BANKS * 2)  # each bank's fit once per round, never elsewhere
    report = verify_run_dir(run_dir)
    assert report.last_round == 2 and report.has_result and report.rounds_aborted == 0
    recs = _records(run_dir)
    assert [r["status"] for r in recs] == ["committed", "committed"]
    assert all(r["survivors"] == BANKS and sorted(r["input_digests"]) == BANKS for r in recs)
    result = json.loads((run_dir / "result.json").read_text())["body"]["result"]
    assert result["aggregation"] == "ckks" and result["rounds_completed"] == 2
    assert json.loads((run_dir / "config.json").read_text())["aggregation"] == "ckks"
    usage = _holder_usage(tmp_path / "fed")
    (session,) = usage["keyed"]
    assert usage["keyed"][session] == 2
    assert sorted(r for s, r in usage["decrypted"] if s == session) == [1, 2]
    assert (run_dir / "ledger.jsonl").read_bytes() == b""
    # the key holder's node answers securefl's trips only: the strategy's evaluate message is
    # refused by the mod before any app code runs there
    from securefl.errors import RemoteProtocolError
    from securefl.flower import securefl_mod

    (evaluate,) = [m for m in grid.sent if m.metadata.dst_node_id == 100
                   and m.metadata.message_type == "evaluate"][:1]
    ran: list[Any] = []
    with pytest.raises(RemoteProtocolError, match="key holder"):
        securefl_mod(evaluate, grid.contexts[100], lambda m, c: ran.append(m))
    assert ran == []


def test_ckks_dp_on_noise_within_the_bound_it_implies_and_ledgered(tmp_path: Path) -> None:
    """z = 0.5: each bank adds its Gaussian share before encrypting; the released sum's noise
    has std >= z C (any admissible honest set) and at most sqrt(n / T) z C; the ledger holds the
    client-level Gaussian event and bank-a's declared DP-SGD, and result.json's epsilons are
    re-derived from it."""
    from securefl.audit.verify import verify_run_dir

    z = 0.5
    declared = {"bank-a": {"dpsgd-noise-multiplier": 1.1, "dpsgd-sample-rate": 0.01,
                           "dpsgd-steps": 100, "dpsgd-max-grad-norm": 1.0}}
    final, run_dir, _ = _run(tmp_path, _ckks_params(z), extra_config=declared)
    err_sum = (_flat(final) - _flat(_plain_fedavg_step(_initial()))) * _weight_total()
    std = float(np.std(err_sum))
    assert 0.9 * z * CLIP <= std <= 1.1 * z * CLIP * np.sqrt(3 / 2)
    assert abs(float(np.mean(err_sum))) < 0.2 * z * CLIP
    report = verify_run_dir(run_dir)
    assert "privacy" in report.claims_checked
    assert check_result_json(run_dir)["aggregation"] == "ckks"  # the one result.json schema
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    client = [e for e in entries if e["level"] == "client"]
    record = [e for e in entries if e["level"] == "record"]
    assert len(client) == 1 and client[0]["survivors"] == 3
    assert [(e["party"], e["noise_source"]) for e in record] == [("bank:bank-a", "declared")]


def test_ckks_a_bank_that_drops_before_revealing_is_left_out_of_the_sum(tmp_path: Path) -> None:
    """bank-c commits, then never reveals its ciphertext: the closed commitment set still names
    it, the sum holds bank-a's and bank-b's updates only, and the released weight slot makes the
    mean theirs (Flower's FedAvg of the two)."""
    from flwr.server.strategy.aggregate import aggregate

    from securefl.audit.verify import verify_run_dir

    final, run_dir, _ = _run(tmp_path, _ckks_params(), silent={"bank-c": "reveal"})
    verify_run_dir(run_dir)
    (rec,) = _records(run_dir)
    assert rec["survivors"] == BANKS[:2] and rec["dropouts"] == {"bank-c": "reveal"}
    init = _initial()
    want = aggregate([([p + d for p, d in zip(init, known_delta(i, SHAPES), strict=True)],
                       N_EXAMPLES[b]) for i, b in enumerate(BANKS[:2])])
    top = max(N_EXAMPLES.values())
    bound = CKKS_SUM_ERROR / ((N_EXAMPLES["bank-a"] + N_EXAMPLES["bank-b"]) / top) + 1e-6
    assert np.abs(_flat(final) - _flat(want)).max() <= bound


def _swap_context(msg: Any, context: bytes) -> None:
    """Replace the key holder's context a commit message carries (a hostile server's hand)."""
    import msgspec
    from flwr.app import Array, ArrayRecord

    from securefl.flower.common import ARRAY, RECORD, ServerMsg, decode_server
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope

    env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
    body = msgspec.structs.replace(decode_server(env.payload), protocol=context)
    assert isinstance(body, ServerMsg)
    data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(body)))
    msg.content.array_records[RECORD] = ArrayRecord(
        {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})


def _commit_context(msg: Any) -> tuple[int, bytes] | None:
    """(round, context) of a commit message to a bank, else None."""
    from securefl.flower.common import ARRAY, RECORD, decode_server
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope

    if RECORD not in msg.content.array_records:
        return None
    env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
    if env.stage != "commit":
        return None
    body = decode_server(env.payload)
    return (env.round, body.protocol) if body.protocol is not None else None


@pytest.mark.parametrize("replayed_from", ["an earlier round", "another session"])
def test_ckks_banks_refuse_a_replayed_round_context_before_their_fit_runs(
        tmp_path: Path, replayed_from: str, caplog: pytest.LogCaptureFixture) -> None:
    """A server that sends the banks another round's public context (signed by the real key
    holder, for round 1 of this session, or round 1 of an earlier session) instead of this
    round's: every bank refuses it before the user's fit runs (RemoteProtocolError SFL302 on
    the node), nothing is encrypted under it, the round aborts, the model stays, and the
    abort is in the audit log, which verifies."""
    from securefl.audit.verify import verify_run_dir

    params = _ckks_params()
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    seen: dict[int, bytes] = {}

    def record(name: str, msg: Any) -> None:
        got = _commit_context(msg)
        if got is not None:
            seen.setdefault(got[0], got[1])

    if replayed_from == "another session":
        _run(tmp_path, params, fed=fed, run_name="earlier", tamper=record)
        old = seen[1]

        def replay(name: str, msg: Any) -> None:
            if _commit_context(msg) is not None:
                _swap_context(msg, old)

        calls: list[str] = []
        final, run_dir, _ = _run(tmp_path, params, fed=fed, tamper=replay, calls=calls)
        assert calls == []
        assert np.array_equal(_flat(final), _flat(_initial()))
        statuses = ["aborted"]
    else:
        def replay_round1(name: str, msg: Any) -> None:
            got = _commit_context(msg)
            if got is None:
                return
            if got[0] == 1:
                seen.setdefault(1, got[1])
            else:
                _swap_context(msg, seen[1])

        calls = []
        _, run_dir, _ = _run(tmp_path, params, fed=fed, rounds=2, tamper=replay_round1,
                             calls=calls)
        assert sorted(calls) == sorted(BANKS)  # round 2's fit never ran
        statuses = ["committed", "aborted"]
    verify_run_dir(run_dir)
    recs = _records(run_dir)
    assert [r["status"] for r in recs] == statuses
    refused = [r.getMessage() for r in caplog.records
               if "the public context is not the key for this round" in r.getMessage()]
    bad = len(statuses)
    assert sorted(m.split()[0] for m in refused) == BANKS
    assert all(f"refused round {bad} stage commit: SFL302" in m for m in refused)
    assert recs[-1]["error_code"] == "SFL310"


def test_ckks_a_bank_shown_another_signed_hello_refuses_before_its_fit_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """S7b-6 on the Flower path: the server shows one bank its own re-signed Hello (another plan
    than the one the key holder keyed the session for). That bank refuses the round's key, bound
    to the key holder's Hello, before its fit runs (PlanMismatchError SFL309), and sends nothing."""
    import msgspec

    from securefl.crypto.signing import SigningKey, sign_bound
    from securefl.deploy.messages import HELLO_DOMAIN, Hello, Signed
    from securefl.flower.common import ARRAY, RECORD, decode_server
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope
    from tests.flower_mod_helpers import SERVER

    params = _ckks_params(z=1.0)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    server_key = SigningKey.from_pem(fed.keys[SERVER].read_bytes())
    victim = BANKS[0]

    def tailor(name: str, msg: Any) -> None:
        if name != victim or RECORD not in msg.content.array_records:
            return
        env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
        body = decode_server(env.payload)
        if body.hello is None:
            return
        hello: Hello = wire.decode(body.hello.body, Hello)
        plan = msgspec.structs.replace(hello.plan, delta=hello.plan.delta / 10)
        forged = wire.encode(msgspec.structs.replace(hello, plan=plan))
        signed = Signed(body=forged, signature=sign_bound(
            server_key, domain=HELLO_DOMAIN, session_id=hello.session, round_=0, message=forged))
        from flwr.app import Array, ArrayRecord

        data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(
            msgspec.structs.replace(body, hello=signed))))
        msg.content.array_records[RECORD] = ArrayRecord(
            {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})

    calls: list[str] = []
    _run(tmp_path, params, fed=fed, tamper=tailor, calls=calls)
    assert victim not in calls  # its fit never ran
    refused = [r.getMessage() for r in caplog.records if "SFL309" in r.getMessage()]
    assert refused and all(m.split()[0] == victim for m in refused)
    assert all("bound to another signed plan" in m for m in refused)


def test_ckks_key_holder_refuses_a_replayed_decryption_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The decryption request of a released round, sent to the key holder's node again (a server
    replaying it for a second release): refused (DecryptionRefusedError SFL312; the usage file
    still shows the one release)."""
    from securefl.errors import SecureFLError
    from securefl.protocol import wire
    from securefl.protocol.ckks import DecryptionRefusedError
    from securefl.transport.flower import Envelope
    from tests.flower_mod_helpers import server_identity

    _, _, grid = _run(tmp_path, _ckks_params())

    def stage(m: Any) -> str:
        from securefl.flower.common import ARRAY, RECORD

        return wire.decode(m.content.array_records[RECORD][ARRAY].numpy().tobytes(),
                           Envelope).stage

    (decrypt,) = [m for m in grid.sent if m.metadata.dst_node_id == 100
                  and m.metadata.message_type == "train" and stage(m) == "decrypt"]
    with server_identity(), pytest.raises(SecureFLError) as info:
        grid.apps[100](decrypt, grid.contexts[100])
    assert isinstance(info.value, DecryptionRefusedError) and info.value.code == "SFL312"
    assert "already decrypted (one release per round)" in caplog.text
    usage = _holder_usage(tmp_path / "fed")
    assert [r for _, r in usage["decrypted"]] == [1]
