"""securefl SecAgg beside Flower 1.42's SecAgg+, measured in the same run: server CPU seconds of
one round with n clients, d parameters and 10 % of the clients dropping after sharing keys (at the
masked-input stage: the costly case for the server, which must rebuild the dropped clients' mask
keys from shares and regenerate their pairwise masks).

    python benchmarks/secagg_vs_flower.py --quick   # n = 20, d = 1e4 (seconds)
    python benchmarks/secagg_vs_flower.py           # n = 100, d = 1e6 -> results/secagg_vs_flower.json

All times are CPU seconds of this process (time.process_time: every thread, user + system), never
wall time: the machine is shared with other jobs. Only server-side code is charged to the server.
The securefl rows and Flower's example row are run ``--reps`` times (median reported, every sample
in the JSON); the slow Flower rows once. "one mask" is each side's server-side cost of expanding
one mask of d words and adding it in (securefl: AES-CTR into uint32; Flower: numpy MT19937 randint
into int64), measured alone in the same run (best of 5); ``server_masks_x_one_mask_s`` = masks the server
expanded x that (an estimate of the masking share of the server cost, not a bound).

securefl rows: SecAggServer driven by securefl.transport.inprocess.InProcessDriver, whose
``stats.cpu_seconds["server"]`` counts only ``SecAggServer.receive`` (message encoding/decoding is
the driver's, not the server's). T, k and t are what securefl.protocol.secagg.bounds derives for
``Assumptions(dropout_fraction=0.1)`` (c = 0 colluders, 40-bit security, alpha = 0.5); the "classic"
row forces the complete graph (k = n - 1) under the same assumptions.

Flower rows: Flower 1.42's own code, unmodified, in one process. ``SecAggPlusWorkflow``'s four stage
methods are called in the order its ``__call__`` calls them, on a ``LegacyContext`` with a FedAvg
strategy and a client manager holding one ``GridClientProxy`` per node, and on an in-process grid
whose ``send_and_receive`` gives each message (content deep-copied, as a network would) to that
node's ``secaggplus_mod`` wrapped around a ClientApp train function, with a per-node ``Context``
that keeps the mod's state between stages. A dropped node never answers its masked-vector request
(what ``send_and_receive`` returns for it when ``timeout`` expires). Server CPU = CPU spent inside
the stage methods minus the clients' handlers, the deep copies (transport) and the strategy's
``configure_fit`` / ``aggregate_fit`` (plain FedAvg work, not SecAgg: every result carries the same
unmasked aggregate, so ``aggregate_fit`` returns it instead of averaging 90 copies). Flower's
defaults are used for everything that has one (max_weight 1000, clipping_range 8,
quantization_range 2^22, modulus_range 2^32). ``num_shares`` and ``reconstruction_threshold`` have
no defaults in Flower 1.42 (both are required arguments), so each Flower row names its own:

- ``example``: num_shares = 3, reconstruction_threshold = 2, the values Flower's own example ships
  (examples/flower-secure-aggregation/pyproject.toml): a ring where each node masks with 2
  neighbours. It aborts ("Insufficient available nodes") whenever a node keeps fewer than 2
  active ring neighbours (itself included), e.g. two adjacent dropouts, which happens for most
  random 10-of-100 dropout sets; the dropped nodes are therefore picked so that Flower's own check
  passes (greedy over a seeded random order, after the workflow has drawn its ring).
- ``matched``: the same neighbourhood size and threshold as securefl's derived k and t
  (num_shares = k + 1 rounded up to an odd number, as Flower requires; reconstruction_threshold
  = max(2, t)).
- ``classic`` (``--flower-classic``, slow): Flower's ``SecAggWorkflow`` (num_shares = all
  sampled nodes) with reconstruction_threshold = securefl's classic t. Flower reconstructs every
  secret from all the shares it received with PyCryptodome's pure-Python GF(2^128) Shamir, so this
  row costs minutes of server CPU at n = 100.

Flower's transport (protobuf serialisation, object hashing, SuperLink) is not measured, as
securefl's encoding is not: both sides are the protocol's own code only.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import random
import resource
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from _common import table, write_json
from secagg import ASSUMPTIONS, bench_round, run_checked

from securefl.crypto.prg import accumulate_mask
from securefl.crypto.secret import Secret
from securefl.protocol import quantize
from securefl.protocol.secagg import SecAggServer
from securefl.protocol.secagg.bounds import derive

NUM_EXAMPLES = 100  # each client's FedAvg weight (Flower masks [w, w * params]; max_weight 1000)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def securefl_mask_s(d: int, reps: int = 5) -> float:
    """CPU seconds for one securefl mask on the server: AES-CTR expansion of d words added into a
    uint32 accumulator (securefl.crypto.prg.accumulate_mask), best of reps."""
    acc = np.zeros(d, dtype=np.uint32)
    best = float("inf")
    for r in range(reps):
        t0 = time.process_time()
        accumulate_mask(acc, Secret(bytes([r]) * 32), -1)
        best = min(best, time.process_time() - t0)
    return best


def flower_mask_s(d: int, reps: int = 5) -> float:
    """CPU seconds for one Flower mask on the server: pseudo_rand_gen (numpy MT19937 randint into
    int64) of the [weight, d parameters] shapes plus parameters_subtraction, as in unmask_stage."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_subtraction
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    acc = [np.zeros(1, dtype=np.int64), np.zeros(d, dtype=np.int64)]
    shapes = [a.shape for a in acc]
    best = float("inf")
    for r in range(reps):
        t0 = time.process_time()
        acc = parameters_subtraction(acc, pseudo_rand_gen(bytes([r]) * 44, 2**32, shapes))
        best = min(best, time.process_time() - t0)
    return best


# --- securefl ---------------------------------------------------------------------------------------
def securefl_row(n: int, d: int, dropout: float, *, classic: bool) -> dict[str, Any]:
    ids = list(range(n))
    clip, gamma = 1.0, 1.0 / 2**16
    bits = quantize.choose_encoding(n, d, clip, gamma).bits
    # benchmarks/secagg.py's round builder: the same deterministic keys and safe parameters
    cfg, fed, base, clients = bench_round(b"vs-flower", n, d, bits,
                                          degree=n - 1 if classic else None)
    dropped = ids[1 : 1 + round(dropout * n)]
    server = SecAggServer(cfg, fed)
    driver, result, wall = run_checked(server, clients, dict.fromkeys(dropped, "masked"), base,
                                       bits, f"securefl n={n} d={d} classic={classic}")
    survivors = set(result.survivors)
    graph = server._graph
    cpu = driver.stats.cpu_seconds
    chosen = derive(n, ASSUMPTIONS)
    return {
        "protocol": "securefl classic" if cfg.degree == n - 1 else "securefl SecAgg+",
        "side": "securefl",
        "n": n, "d": d, "dropout": dropout, "dropped": len(dropped),
        "k": cfg.degree, "t": cfg.neighbour_threshold, "T": cfg.threshold, "bits": bits,
        "default": cfg.degree == chosen.degree,
        "min_honest_sum": cfg.guarantee.min_honest_sum,
        "log2_failure": cfg.guarantee.log2_failure if not cfg.guarantee.classic else None,
        "survivors": len(survivors),
        "server_cpu_s": cpu["server"],
        "server_cpu_s_by_stage": {k.split("/", 1)[1]: v for k, v in cpu.items()
                                  if k.startswith("server/")},
        "server_masks": len(survivors) + sum(len(graph[j] & survivors) for j in dropped),
        "clients_cpu_s": sum(v for k, v in cpu.items() if k.startswith("clients/")),
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }


# --- Flower -----------------------------------------------------------------------------------------
@dataclass
class _Counters:
    client: float = 0.0
    transport: float = 0.0
    strategy: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


class _InProcessGrid:
    """The part of flwr.serverapp.Grid that SecAggPlusWorkflow uses: ``send_and_receive``.

    Message ids are set as flwr's InMemoryGrid.push_messages sets them (uuid4). Each delivery gets a
    deep copy of the content (a network would deliver a copy; the mod mutates what it receives, and
    the setup stage sends one RecordDict object to every node). Dropped nodes do not answer."""

    def __init__(self, handlers: dict[int, Callable[[Any], Any]], counters: _Counters) -> None:
        self.handlers = handlers
        self.counters = counters
        self.dropped: set[int] = set()

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        from flwr.app import Message

        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            nid = msg.metadata.dst_node_id
            if nid in self.dropped:
                continue
            t0 = time.process_time()
            delivered = Message(copy.deepcopy(msg.content), metadata=copy.deepcopy(msg.metadata))
            t1 = time.process_time()
            replies.append(self.handlers[nid](delivered))
            t2 = time.process_time()
            self.counters.transport += t1 - t0
            self.counters.client += t2 - t1
        return replies


def _timed(counters: _Counters, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            counters.cpu[name] = counters.cpu.get(name, 0.0) + time.process_time() - t0
            counters.calls[name] = counters.calls.get(name, 0) + 1
    return wrapper


def _pick_dropouts(neighbours: dict[int, set[int]], threshold: int, want: int,
                   rng: random.Random) -> list[int]:
    """``want`` nodes whose dropping Flower's own ``_check_threshold`` survives (every node keeps >=
    threshold active neighbours, itself included), greedily over a seeded random order."""
    nodes = sorted(neighbours)
    rng.shuffle(nodes)
    dropped: set[int] = set()
    for nid in nodes:
        if len(dropped) == want:
            break
        trial = dropped | {nid}
        if all(len(neighbours[m] - trial) >= threshold for m in neighbours):
            dropped = trial
    if len(dropped) < want:
        raise SystemExit(f"Flower: no {want} dropouts that its threshold check survives")
    return sorted(dropped)


def flower_row(n: int, d: int, dropout: float, *, label: str, num_shares: int | float,
               threshold: int, classic: bool = False, seed: int = 0) -> dict[str, Any]:
    import flwr.compat.common.recorddict_compat as compat
    import flwr.server.workflow.secure_aggregation.secaggplus_workflow as wf_mod
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow, SecAggWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
    from flwr.supercore.task_identity import TaskIdentity

    # what flwr.server.compat.app.start_grid sets for a ServerApp process (Message needs it)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    counters = _Counters()
    random.seed(seed)  # the workflow shuffles its ring with the global `random`
    np.random.seed(seed)  # secaggplus_mod's stochastic rounding uses numpy's global RNG
    rng = np.random.default_rng(seed)
    update = (rng.random(d, dtype=np.float32) - 0.5).astype(np.float32)  # every client's update
    update_params = ndarrays_to_parameters([update])
    model = ArrayRecord([np.zeros(d, dtype=np.float32)])  # the global model the server broadcasts
    node_ids = sorted(random.Random(seed).sample(range(2, 2**63), n))  # random 63-bit, like Flower's

    def train(msg: Any, ctxt: Any) -> Any:  # the ClientApp under the mod
        fitres = FitRes(status=Status(code=Code.OK, message=""), parameters=update_params,
                        num_examples=NUM_EXAMPLES, metrics={})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    def handler(nid: int) -> Callable[[Any], Any]:
        ctxt = Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
        return lambda msg: secaggplus_mod(msg, ctxt, train)

    grid = _InProcessGrid({nid: handler(nid) for nid in node_ids}, counters)

    aggregate: list[Any] = []

    class _Strategy(FedAvg):
        def configure_fit(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            out = super().configure_fit(*args, **kwargs)
            counters.strategy += time.process_time() - t0
            return out

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            # every FitRes carries the workflow's unmasked aggregate (see the module docstring)
            aggregate.append(results[0][1].parameters)
            return results[0][1].parameters, {}

    client_manager = SimpleClientManager()
    for nid in node_ids:
        client_manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=1))  # type: ignore[arg-type]
    state = RecordDict()
    state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    state.array_records[MAIN_PARAMS_RECORD] = model
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=state, run_config={}),
        config=ServerConfig(num_rounds=1), strategy=_Strategy(), client_manager=client_manager)

    if classic:
        workflow: SecAggPlusWorkflow = SecAggWorkflow(reconstruction_threshold=threshold)
    else:
        workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold)
    # time Flower's Shamir reconstruction and mask expansion inside the server's unmask stage
    # (names in the workflow module only: the clients' mod has its own references)
    originals = {name: getattr(wf_mod, name) for name in ("combine_shares", "pseudo_rand_gen")}
    for name, fn in originals.items():
        setattr(wf_mod, name, _timed(counters, name, fn))
    wstate = WorkflowState()
    stages = [("setup", workflow.setup_stage), ("share_keys", workflow.share_keys_stage),
              ("collect_masked_vectors", workflow.collect_masked_vectors_stage),
              ("unmask", workflow.unmask_stage)]
    by_stage: dict[str, float] = {}
    dropped: list[int] = []
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    w0 = time.perf_counter()
    try:
        for name, step in stages:
            if name == "collect_masked_vectors":  # drop after sharing keys, before masked inputs
                dropped = _pick_dropouts(wstate.nid_to_neighbours, wstate.threshold,
                                         round(dropout * n), random.Random(seed + 1))
                grid.dropped = set(dropped)
            before = (counters.client, counters.transport, counters.strategy)
            t0 = time.process_time()
            ok = step(grid, context, wstate)  # type: ignore[arg-type]
            spent = time.process_time() - t0
            by_stage[name] = spent - sum(
                now - then for now, then in zip((counters.client, counters.transport,
                                                 counters.strategy), before, strict=True))
            if not ok:
                raise SystemExit(f"Flower {label}: the workflow halted at its {name} stage")
    finally:
        for name, fn in originals.items():
            setattr(wf_mod, name, fn)
        flwr_log.setLevel(level)
    wall = time.perf_counter() - w0
    if not aggregate:
        raise SystemExit(f"Flower {label}: no aggregate")
    got = parameters_to_ndarrays(aggregate[0])[0]
    err = float(np.max(np.abs(got - update)))
    if err > 1e-3:  # all clients sent `update`: the weighted mean is `update` up to quantisation
        raise SystemExit(f"Flower {label}: wrong aggregate (max error {err:.3g})")
    return {
        "protocol": f"Flower SecAgg+ {label}",
        "side": "flower",
        "n": n, "d": d, "dropout": dropout, "dropped": len(dropped),
        "num_shares": wstate.num_shares,
        "k": wstate.num_shares - 1, "t": wstate.threshold, "T": None,
        "survivors": n - len(dropped),
        "server_cpu_s": sum(by_stage.values()),
        "server_cpu_s_by_stage": by_stage,
        "server_unmask_shamir_cpu_s": counters.cpu.get("combine_shares", 0.0),
        "server_unmask_shamir_calls": counters.calls.get("combine_shares", 0),
        "server_unmask_prg_cpu_s": counters.cpu.get("pseudo_rand_gen", 0.0),
        "server_masks": counters.calls.get("pseudo_rand_gen", 0),
        "strategy_cpu_s": counters.strategy,
        "transport_copy_cpu_s": counters.transport,
        "clients_cpu_s": counters.client,
        "max_abs_error": err,
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "parameters": {"num_shares": num_shares, "reconstruction_threshold": threshold,
                       "workflow": type(workflow).__name__, "max_weight": workflow.max_weight,
                       "clipping_range": workflow.clipping_range,
                       "quantization_range": workflow.quantization_range,
                       "modulus_range": workflow.modulus_range, "num_examples": NUM_EXAMPLES},
    }


# --- main -------------------------------------------------------------------------------------------
def _odd_at_least(x: int) -> int:
    return x if x & 1 else x + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 20, d = 1e4")
    ap.add_argument("--n", type=int, help="clients (default 100; quick 20)")
    ap.add_argument("--d", type=int, help="parameters (default 1e6; quick 1e4)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of the securefl rows and Flower's example row (median "
                    "reported; the slow Flower rows run once)")
    ap.add_argument("--no-classic", action="store_true", help="skip securefl's complete-graph row")
    ap.add_argument("--flower-classic", action="store_true",
                    help="also run Flower's SecAggWorkflow (complete graph; minutes at n = 100)")
    args = ap.parse_args()
    n = args.n or (20 if args.quick else 100)
    d = args.d or (10_000 if args.quick else 1_000_000)
    dropout = args.dropout
    import flwr

    chosen = derive(n, ASSUMPTIONS)
    load0 = os.getloadavg()
    print(f"n={n} d={d} dropout={dropout:.0%}; securefl derives T={chosen.threshold} "
          f"k={chosen.degree} t={chosen.neighbour_threshold} "
          f"({'classic' if chosen.classic else 'SecAgg+'}) for {ASSUMPTIONS}; flwr {flwr.__version__}; "
          f"CPU seconds (process_time), load average {load0[0]:.2f}", flush=True)

    rows: list[dict[str, Any]] = []

    sfl_mask, flwr_mask = securefl_mask_s(d), flower_mask_s(d)
    print(f"one server mask, d={d}: securefl (AES-CTR, uint32) {sfl_mask * 1e3:.2f} ms CPU; "
          f"Flower (MT19937 randint, int64) {flwr_mask * 1e3:.2f} ms CPU", flush=True)

    def run(fn: Callable[..., dict[str, Any]], *a: Any, reps: int = 1, **kw: Any) -> dict[str, Any]:
        samples = []
        for _ in range(max(1, reps)):
            samples.append(fn(*a, **kw))
            gc.collect()
        row = sorted(samples, key=lambda r: r["server_cpu_s"])[len(samples) // 2]  # the median run
        row["server_cpu_s_samples"] = [r["server_cpu_s"] for r in samples]
        mask = sfl_mask if row["side"] == "securefl" else flwr_mask
        row["one_mask_cpu_s"] = mask
        row["server_masks_x_one_mask_s"] = row["server_masks"] * mask
        rows.append(row)
        spread = (f" (median of {len(samples)}: "
                  + ", ".join(f"{x:.3f}" for x in row["server_cpu_s_samples"]) + ")"
                  if len(samples) > 1 else "")
        print(f"  {row['protocol']}: k={row['k']} t={row['t']} T={row['T']} server "
              f"{row['server_cpu_s']:.3f} s CPU{spread}; {row['server_masks']} masks = "
              f"{row['server_masks_x_one_mask_s']:.3f} s; clients {row['clients_cpu_s']:.1f} s CPU, "
              f"wall {row['wall_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
        return row

    default = run(securefl_row, n, d, dropout, classic=False, reps=args.reps)
    if not chosen.classic and not args.no_classic:
        run(securefl_row, n, d, dropout, classic=True, reps=args.reps)
    run(flower_row, n, d, dropout, label="example (3 shares, t=2)", num_shares=3, threshold=2,
        reps=args.reps)
    k, t = chosen.degree, chosen.neighbour_threshold
    shares = n if k == n - 1 else _odd_at_least(k + 1)
    run(flower_row, n, d, dropout, label=f"matched ({shares} shares, t={max(2, t)})",
        num_shares=shares, threshold=max(2, t), reps=args.reps if args.quick else 1)
    if args.flower_classic and shares != n:
        classic_t = derive(n, ASSUMPTIONS, degree=n - 1).neighbour_threshold
        run(flower_row, n, d, dropout, label=f"classic (SecAggWorkflow, t={classic_t})",
            num_shares=1.0, threshold=classic_t, classic=True)

    base = default["server_cpu_s"]
    flower_rows = [r for r in rows if r["side"] == "flower"]
    for r in rows:
        r["ratio_flower_over_this"] = {f["protocol"]: f["server_cpu_s"] / r["server_cpu_s"]
                                       for f in flower_rows} if r["side"] == "securefl" else None
        r["ratio_over_securefl_default"] = (r["server_cpu_s"] / base if r["side"] == "flower"
                                            else None)
    headers = ["n", "d", "dropout", "protocol", "k", "t", "T", "server CPU s",
               "ratio flower/securefl"]
    print()
    print(table(headers, [[r["n"], r["d"], f"{r['dropout']:.0%}", r["protocol"], r["k"], r["t"],
                           r["T"] if r["T"] is not None else "-", r["server_cpu_s"],
                           f"{r['ratio_over_securefl_default']:.1f}x"
                           if r["ratio_over_securefl_default"] is not None else "-"]
                          for r in rows]))
    cheapest = min(flower_rows, key=lambda r: r["server_cpu_s"])
    headline = cheapest["server_cpu_s"] / base
    print(f"\nratio flower/securefl = Flower row / {default['protocol']} (k={default['k']}, "
          f"t={default['t']}, T={default['T']}: the parameters securefl's defaults pick).")
    print(f"cheapest Flower configuration: {cheapest['protocol']} {cheapest['server_cpu_s']:.3f} s "
          f"= {headline:.1f}x securefl's {base:.3f} s (target >= 15x: "
          f"{'met' if headline >= 15 else 'NOT met'})")
    for r in flower_rows:
        print(f"  {r['protocol']}: unmask {r['server_cpu_s_by_stage']['unmask']:.3f} s, of which "
              f"Shamir {r['server_unmask_shamir_cpu_s']:.3f} s ({r['server_unmask_shamir_calls']} "
              f"secrets), masks {r['server_unmask_prg_cpu_s']:.3f} s ({r['server_masks']} masks)")
    path = write_json("secagg_vs_flower_quick" if args.quick else "secagg_vs_flower", {
        "benchmark": "secagg_vs_flower",
        "quick": args.quick,
        "clock": "time.process_time (CPU seconds of this process, all threads); not wall time",
        "flwr": flwr.__version__,
        "assumptions": {"colluders": ASSUMPTIONS.colluders,
                        "dropout_fraction": ASSUMPTIONS.dropout_fraction,
                        "security_bits": ASSUMPTIONS.security_bits, "alpha": ASSUMPTIONS.alpha},
        "securefl_default": {"T": chosen.threshold, "k": chosen.degree,
                             "t": chosen.neighbour_threshold,
                             "graph": "classic" if chosen.classic else "G(n,p)"},
        "headline": {"flower": cheapest["protocol"], "flower_server_cpu_s": cheapest["server_cpu_s"],
                     "securefl": default["protocol"], "securefl_server_cpu_s": base,
                     "ratio": headline, "target": 15, "met": headline >= 15},
        "one_mask_cpu_s": {"securefl": sfl_mask, "flower": flwr_mask},
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "rows": rows,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
