"""securefl over a real Flower 1.42 deployment on 127.0.0.1: SuperLink with TLS and SuperNode
authentication, one SuperNode per bank (each reading only its own CSV), identity keys and a
manifest signed by every member. One bank's SuperNode is SIGKILLed in the last round; the round
completes with the two others (threshold 2 of 3). The final model must equal, bit for bit, the
in-process simulation (``securefl.runtime.Engine``) of the same seed with the same dropout, the run
directory must pass ``securefl audit verify``, and the server process must never have opened a
bank's file (an audit-hook guard in the ServerApp process records every open; a positive control
checks that it saw the server's own test file)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import Fed, final_weights, make_federation, node_config_string
from flower_harness import CONN, FlowerCluster

from securefl.deploy.app import write_app
from securefl.deploy.server import trips_for

ROUNDS = 2
RUN = {"rounds": ROUNDS, "seed": 0}
TIMEOUT_S = 40.0


def _progress(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(path: Path, pred: Any, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _progress(path)
        if any(pred(x) for x in lines) or any(x.get("status") not in (None, "running")
                                              for x in lines):
            return lines
        time.sleep(0.5)
    return _progress(path)


def _node_config(f: Fed, bank: str) -> str:
    return node_config_string(f.node_config(bank, sim_seed=0))


def _reference_model_sha(f: Fed, records: list[Any], out: Path) -> str:
    """Engine (the in-process simulation) with the deployment's participants and dropouts."""
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    ids = {n: i for i, n in enumerate(f.banks)}
    plan = {r.round: r for r in records}

    class Replay(Engine):
        def _sample(self, round_: int, n_banks: int) -> tuple[int, ...]:
            return tuple(sorted(ids[p] for p in plan[round_].participants))

        def _simulated_dropouts(self, round_: int, participants: tuple[int, ...],
                                stages: tuple[str, ...]) -> dict[int, str]:
            return {ids[n]: st for n, st in plan[round_].dropouts.items()}

    result = Replay(RunConfig(**RUN, out=str(out))).run()
    return result.model_sha256


@pytest.mark.slow
def test_deployment_over_flower_with_a_killed_bank(tmp_path: Path) -> None:
    f = make_federation(tmp_path / "fed", RUN)
    progress = tmp_path / "progress.jsonl"
    opens = tmp_path / "server-opens.json"
    run_dir = tmp_path / "run"
    server_cfg = f.server_file(run_dir, progress=str(progress), stage_timeout_s=TIMEOUT_S,
                               forbid_paths=[str(f.data_dir)], opens_log=str(opens))
    app = write_app(tmp_path / "app", server_cfg)
    cluster = FlowerCluster(tmp_path / "flower", 0)
    victim = f.banks[2]
    t0 = time.monotonic()
    try:
        cluster.start_superlink()
        for i, bank in enumerate(f.banks):
            cluster.add_supernode(i, name=bank, node_config=_node_config(f, bank))
        run = cluster.flwr("run", str(app), CONN, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        # kill the victim once round 1 is committed (the trip that finishes it is done)
        lines = _wait(progress, lambda x: x.get("round") == ROUNDS and
                      x.get("stage") == "advertise", timeout=200)
        assert any(x.get("round") == ROUNDS for x in lines), (
            lines, cluster.log("superlink")[-3000:], cluster.log(victim)[-3000:])
        cluster.kill(victim)
        lines = _wait(progress, lambda x: x.get("status") is not None, timeout=200)
        t_total = time.monotonic() - t0
    finally:
        cluster.stop()
    for proc in cluster.procs.values():
        assert proc.poll() is not None  # every process we started is gone
    status = [x for x in lines if "status" in x]
    assert status and status[-1]["status"] == "done", (status, cluster.log("superlink")[-4000:])
    trips = [x for x in lines if "stage" in x]
    assert len(trips) == trips_for(ROUNDS)
    print(f"\nFlower deployment: {len(trips)} round trips, {t_total:.1f} s in all; per trip: "
          + ", ".join(f"{x['stage']}@{x['round']}={x['seconds']:.1f}s" for x in trips))

    # the audit log verifies, and records the dropout in the last round
    ver = subprocess.run([sys.executable, "-m", "securefl", "audit", "verify", str(run_dir)],
                         capture_output=True, text=True, check=False)
    assert ver.returncode == 0, ver.stdout + ver.stderr
    from securefl.audit.store import RunStore

    records = list(RunStore.open(run_dir).records[1:])
    assert [r.round for r in records] == list(range(1, ROUNDS + 1))
    last = records[-1]
    assert last.status == "committed"
    assert victim in last.dropouts and victim not in last.survivors
    assert sorted(last.survivors) == sorted(b for b in f.banks if b != victim)
    assert all(len(r.survivors) == 3 for r in records[:-1])

    # bit-exact against the in-process simulation with the same seed, participants and dropouts
    deployed = RunStore.open(run_dir).model_sha256(ROUNDS)
    assert deployed == _reference_model_sha(f, records, tmp_path / "sim")

    # the server process never opened a bank's file, and the guard was watching
    seen = json.loads(opens.read_text())
    assert seen["violations"] == []
    assert str(f.test_file.resolve()) in seen["opened"]
    assert not [p for p in seen["opened"] if p.startswith(str(f.data_dir.resolve()))]


CKKS_RUN = {"rounds": 1, "seed": 0, "aggregation": "ckks"}


@pytest.mark.slow
def test_ckks_deployment_over_flower_with_the_key_holder_as_its_own_node(tmp_path: Path) -> None:
    """Aggregation ckks across processes: SuperLink, three bank SuperNodes and the key holder's
    SuperNode (the only process that ever loads the CKKS secret key). The server process must not
    open the banks' files nor the key holder's key directory; the model must match
    ``securefl run --aggregation ckks`` with the same seed (CKKS's own encryption error aside)."""
    import numpy as np

    from securefl.audit.store import RunStore

    f = make_federation(tmp_path / "fed", CKKS_RUN)
    assert f.ckks_dir is not None
    progress = tmp_path / "progress.jsonl"
    opens = tmp_path / "server-opens.json"
    run_dir = tmp_path / "run"
    usage = tmp_path / "kh-state" / "usage.json"
    server_cfg = f.server_file(run_dir, progress=str(progress), stage_timeout_s=TIMEOUT_S,
                               forbid_paths=[str(f.data_dir), str(f.ckks_dir)],
                               opens_log=str(opens))
    app = write_app(tmp_path / "app", server_cfg)
    cluster = FlowerCluster(tmp_path / "flower", 0)
    kh_cfg = {**f.key_holder_config(sim_seed=0), "usage-file": str(usage)}
    t0 = time.monotonic()
    try:
        cluster.start_superlink()
        for i, bank in enumerate(f.banks):
            cluster.add_supernode(i, name=bank, node_config=_node_config(f, bank))
        cluster.add_supernode(len(f.banks), name="kh", node_config=node_config_string(kh_cfg))
        run = cluster.flwr("run", str(app), CONN, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = _wait(progress, lambda x: x.get("status") is not None, timeout=400)
        t_total = time.monotonic() - t0
    finally:
        cluster.stop()
    for proc in cluster.procs.values():
        assert proc.poll() is not None  # every process we started is gone
    status = [x for x in lines if "status" in x]
    assert status and status[-1]["status"] == "done", (status, cluster.log("superlink")[-4000:],
                                                       cluster.log("kh")[-3000:])
    trips = [x for x in lines if "stage" in x]
    assert len(trips) == trips_for(1, "ckks")
    assert [x["stage"] for x in trips if x["stage"] == "decrypt"] == ["decrypt"] * 2
    assert all(x["sent"] == ["kh"] for x in trips if x["stage"] == "decrypt")
    print(f"\nFlower CKKS deployment: {len(trips)} round trips, {t_total:.1f} s in all; per trip: "
          + ", ".join(f"{x['stage']}@{x['round']}={x['seconds']:.1f}s" for x in trips))

    ver = subprocess.run([sys.executable, "-m", "securefl", "audit", "verify", str(run_dir)],
                         capture_output=True, text=True, check=False)
    assert ver.returncode == 0, ver.stdout + ver.stderr
    store = RunStore.open(run_dir)
    rec = store.records[1]
    assert rec.aggregation == "ckks" and rec.status == "committed"
    assert sorted(rec.survivors) == sorted(f.banks)
    # the key holder's own process recorded both releases
    assert len(json.loads(usage.read_text())["decrypted"]) == 2

    from securefl.config import RunConfig
    from securefl.runtime import Engine

    sim = Engine(RunConfig(**CKKS_RUN, out=str(tmp_path / "sim"))).run()
    assert np.max(np.abs(final_weights(run_dir) - final_weights(tmp_path / "sim"))) < 1e-6
    assert sim.final_metrics.keys() == store.records[1].metrics.keys()

    seen = json.loads(opens.read_text())
    assert seen["violations"] == []
    assert str(f.test_file.resolve()) in seen["opened"]
    for secret_dir in (f.data_dir, f.ckks_dir):
        assert not [p for p in seen["opened"] if p.startswith(str(secret_dir.resolve()))]
