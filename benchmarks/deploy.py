"""Deployment latency over loopback: one training round with d ~ 1e5 parameters, measured three
ways in the same run, and the number of Flower round trips per training round.

- in-process: ``securefl run``'s simulation (Engine + the in-process SecAgg driver);
- local link: the deployment's server and bank handlers in one process (envelopes, state bytes,
  state replay; no Flower);
- Flower: SuperLink + N SuperNodes on 127.0.0.1 with TLS and node auth (N = 3, and 10 unless
  --quick), the securefl Flower App, ``flwr run``.

Round latency = the seconds of one steady-state training round (the last of 2): in-process and
local link from the run's history; Flower as the sum of that round's 4 trips (SecAgg: advertise,
which also carries the previous round's unmask, share incl. local training, masked, consistency;
CKKS: commit incl. local training, reveal, verify, decrypt).

    python benchmarks/deploy.py --quick   # N = 3 only
    python benchmarks/deploy.py           # N = 3 and 10 -> benchmarks/results/deploy.json
    python benchmarks/deploy.py --aggregation ckks --sizes 3   # + the key holder's SuperNode
                                                               # -> benchmarks/results/deploy-ckks.json

    python benchmarks/deploy.py --round-keys-only   # the CKKS key holder node's per-round key cost

With CKKS the three models differ only by CKKS's own encryption error (the seed fixes every other
random draw): the table reports the largest weight difference instead of hash equality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from deploy_helpers import final_weights, make_federation, node_config_string
from flower_harness import CONN, FlowerCluster

from securefl.deploy.server import TRIPS_PER_ROUND, trips_for

ROUNDS = 2
HIDDEN = (4000,)  # mlp 23 -> 4000 -> 1: 25 * 4000 + 1 = 100001 parameters
AGGREGATION = "secagg"  # set by --aggregation


def _run_cfg(banks: int) -> dict[str, Any]:
    # the embedded data's natural split exists for 3 and 4 banks; larger federations are iid
    return {"rounds": ROUNDS, "seed": 0, "banks": banks, "hidden": list(HIDDEN), "dp": False,
            "local_epochs": 1, "partition": "natural" if banks in (3, 4) else "iid",
            "aggregation": AGGREGATION}


def _steady(trips: list[dict[str, Any]]) -> float:
    return sum(t["seconds"] for t in trips if t["round"] == ROUNDS and t["stage"] != "unmask")


def in_process(banks: int, out: Path) -> dict[str, Any]:
    from securefl.config import RunConfig
    from securefl.runtime import run

    cfg = _run_cfg(banks)
    t0 = time.monotonic()
    res = run(RunConfig(**{**cfg, "hidden": HIDDEN}, out=str(out)))
    return {"round_s": res.history[-1].seconds, "total_s": time.monotonic() - t0,
            "model_sha256": res.model_sha256}


def local_link(f: Any, out: Path) -> dict[str, Any]:
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    srv = DeployServer(ServerSettings.load(f.server_file(out)))
    nodes: dict[int, Any] = {i: BankNode.from_node_config(f.node_config(b, sim_seed=0))
                             for i, b in enumerate(f.banks)}
    if AGGREGATION == "ckks":
        from securefl.deploy.ckks import KeyHolderNode

        nodes[len(nodes)] = KeyHolderNode.from_node_config(
            {**f.key_holder_config(sim_seed=0), "usage-file": str(out.parent / "kh-local.json")})
    link = LocalLink(nodes, srv.fed.digest)
    t0 = time.monotonic()
    res = srv.run(link, link.names())
    return {"round_s": _steady(res["trips"]), "total_s": time.monotonic() - t0,
            "trips": res["round_trips"], "model_sha256": res["model_sha256"]}


def flower(f: Any, root: Path) -> dict[str, Any]:
    from securefl.deploy.app import write_app

    progress = root / "progress.jsonl"
    cfg = f.server_file(root / "run", progress=str(progress), stage_timeout_s=300.0)
    app = write_app(root / "app", cfg)
    cluster = FlowerCluster(root / "flower", 0)
    t0 = time.monotonic()
    lines: list[dict[str, Any]] = []
    try:
        cluster.start_superlink()
        for i, bank in enumerate(f.banks):
            cluster.add_supernode(i, name=bank,
                                  node_config=node_config_string(f.node_config(bank, sim_seed=0)))
        if AGGREGATION == "ckks":
            kh = {**f.key_holder_config(sim_seed=0), "usage-file": str(root / "kh-usage.json")}
            cluster.add_supernode(len(f.banks), name="kh", node_config=node_config_string(kh))
        t_up = time.monotonic() - t0
        cluster.flwr("run", str(app), CONN, timeout=180)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if progress.exists():
                lines = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
                if any("status" in x for x in lines):
                    break
            time.sleep(1)
    finally:
        cluster.stop()
    status = [x for x in lines if "status" in x]
    if not status or status[-1]["status"] != "done":
        raise RuntimeError(f"Flower run did not finish: {status}")
    trips = [x for x in lines if "stage" in x]
    from securefl.audit.store import RunStore

    return {"round_s": _steady(trips), "total_s": time.monotonic() - t0,
            "cluster_up_s": t_up, "trips": len(trips),
            "trip_s": {f"{t['stage']}@{t['round']}": t["seconds"] for t in trips},
            "model_sha256": RunStore.open(root / "run").model_sha256(ROUNDS)}


def round_key_cost(root: Path, reps: int = 7) -> dict[str, Any]:
    """The CKKS key holder node's added cost per round (medians over ``reps`` rounds): handling
    the KeyRequest (hello check, SEAL key generation, export, sealing the node state, the usage
    file's fsync), reloading the sealed round key for the decryption, and each bank's check of
    the context (signature, parse); the context's bytes to each bank and the sealed state's."""
    import numpy as np

    from securefl.crypto.aead import open_sealed
    from securefl.deploy.ckks import (
        KeyHolderMemo,
        KeyHolderNode,
        bank_round_context,
        contexts_in,
        hello_digest,
        key_request,
    )
    from securefl.deploy.messages import (
        HELLO_DOMAIN,
        Hello,
        ProtocolItem,
        ServerPayload,
        decode_client,
    )
    from securefl.deploy.server import DeployServer, ServerSettings
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope

    f = make_federation(root / "fed", {"rounds": reps, "seed": 0, "aggregation": "ckks"})
    srv = DeployServer(ServerSettings.load(f.server_file(root / "run")))
    fed, session = srv.fed, srv.session
    hello = srv._sign(wire.encode(Hello(session=session, federation=fed.digest, plan=srv.plan(),
                                        counter=srv.counter)), HELLO_DOMAIN, 0)
    node = KeyHolderNode.from_node_config({**f.key_holder_config(sim_seed=None),
                                           "usage-file": str(root / "usage.json")})
    identity = node.identity(fed)
    state: bytes | None = None
    cols: dict[str, list[float]] = {"kh_cpu": [], "kh_wall": [], "reload": [], "bank": []}
    ctx_bytes = state_bytes = 0
    for r in range(reps):
        env = Envelope(federation=fed.digest, session=session, round=r, stage="key",
                       sender=fed.server, receiver=node.member,
                       payload=wire.encode(ServerPayload(hello=hello,
                                                         protocol=[key_request(session, r)])))
        c, w = time.process_time(), time.perf_counter()
        reply, state = node.handle(env, state)
        cols["kh_cpu"].append(time.process_time() - c)
        cols["kh_wall"].append(time.perf_counter() - w)
        memo = wire.decode(open_sealed(node._state_key(), state, aad=node._state_context(env)),
                           KeyHolderMemo)
        c = time.process_time()
        node.load_holder(fed, identity, session, memo)
        cols["reload"].append(time.process_time() - c)
        context = contexts_in(decode_client(reply))[r]
        c = time.process_time()
        bank_round_context(fed, ProtocolItem(round=r, data=context), session,
                           hello_digest(hello.body))
        cols["bank"].append(time.process_time() - c)
        ctx_bytes, state_bytes = len(context), len(state)
    med = {k: float(np.median(v)) for k, v in cols.items()}
    print(f"deployment round key (N=8192 [60, 60, 60], medians of {reps}): key holder node "
          f"{1e3 * med['kh_cpu']:.1f} ms CPU ({1e3 * med['kh_wall']:.1f} ms wall incl. the usage "
          f"file's fsync), reload of the sealed key at the decryption {1e3 * med['reload']:.1f} "
          f"ms CPU, each bank {1e3 * med['bank']:.1f} ms CPU; {ctx_bytes / 1024:.1f} KiB to each "
          f"bank per round; sealed key holder state {state_bytes / 1024:.1f} KiB", flush=True)
    return {**med, "context_bytes": ctx_bytes, "state_bytes": state_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 SuperNodes only")
    ap.add_argument("--sizes", type=int, nargs="*", help="SuperNode counts (default 3 10)")
    ap.add_argument("--aggregation", choices=("secagg", "ckks"), default="secagg")
    ap.add_argument("--round-keys-only", action="store_true",
                    help="only the CKKS key holder node's per-round key cost (prints)")
    args = ap.parse_args()
    if args.round_keys_only:
        with tempfile.TemporaryDirectory() as tmp:
            round_key_cost(Path(tmp))
        return
    global AGGREGATION
    AGGREGATION = args.aggregation
    import logging

    logging.getLogger("securefl.deploy").setLevel(logging.ERROR)
    sizes = args.sizes or ([3] if args.quick else [3, 10])
    rows, out = [], {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            f = make_federation(root / "fed", _run_cfg(n))
            sim = in_process(n, root / "sim")
            loc = local_link(f, root / "local")
            flw = flower(f, root / "flower")
            ref = final_weights(root / "sim")
            diff = float(max(abs(final_weights(root / d) - ref).max() for d in ("local", "flower/run")))
        same = sim["model_sha256"] == loc["model_sha256"] == flw["model_sha256"]
        out[str(n)] = {"in_process": sim, "local_link": loc, "flower": flw,
                       "same_model": same, "max_weight_diff": diff}
        rows.append([n, sim["round_s"], loc["round_s"], flw["round_s"], flw["trips"],
                     TRIPS_PER_ROUND, flw["cluster_up_s"], flw["total_s"],
                     same if AGGREGATION == "secagg" else f"max |dw| {diff:.1e}"])
        print(f"n={n}: {json.dumps(out[str(n)])}", flush=True)
    headers = ["SuperNodes", "in-process round s", "local-link round s", "Flower round s",
               "Flower trips (run)", "trips/round", "cluster up s", "Flower run total s",
               "same model"]
    print(table(headers, rows))
    name = "deploy" if AGGREGATION == "secagg" else f"deploy-{AGGREGATION}"
    path = write_json(name, {"rounds": ROUNDS, "dim": 25 * HIDDEN[0] + 1,
                             "aggregation": AGGREGATION, "trips_per_round": TRIPS_PER_ROUND,
                             "trips_per_run": trips_for(ROUNDS, AGGREGATION), "results": out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
