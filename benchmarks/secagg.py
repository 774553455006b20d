"""SecAgg+ cost benchmark: client and server CPU seconds, bytes per coordinate, and the ratio to
the PRG floor measured in the same run (AES-CTR expansion of one mask + one uint32 add, per mask).

    python benchmarks/secagg.py --quick   # CI-sized: n in {10, 100}, d = 1e4
    python benchmarks/secagg.py           # full grid (minutes) -> benchmarks/results/secagg.json

Floors: a client expands k_eff + 1 masks (k_eff neighbours + its self mask); the server expands
|U3| self masks + sum over dropped j of (surviving neighbours of j) pairwise masks. Dropouts happen
at the `masked` stage (after sharing: the costly case for the server, which must regenerate the
dropped clients' pairwise masks).

Client encode rows (after the grid; ``--encode-only`` runs just these): one client's whole path
from a float update to its masked message at k = 14 (the SecAgg+ degree for n = 100), d = 1e6
(quick: 1e5): clip (securefl.dp.fedavg.clip_l2), stochastic rounding into Z_2^b
(securefl.protocol.secagg.encode_input, the one path simulation and deployment share) and masking (the
client's stage-2 CPU in an n = k + 1 round: k pairwise masks + its self mask, the same work as a
SecAgg+ client with k neighbours), against the PRG floor (k + 1) x one mask measured in the same
run. The exact discrete Gaussian noise (securefl.dp.discrete) for that client, at the variance a
round with z = 1, C / gamma = 2^16 and min_survivors = 50 uses, is timed on its own line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from securefl.crypto.prg import accumulate_mask
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.dp.discrete import discrete_gaussian
from securefl.dp.fedavg import clip_l2
from securefl.protocol import quantize
from securefl.protocol.secagg import (
    Assumptions,
    IdentityRoster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ServerResult,
    encode_input,
)
from securefl.transport.inprocess import InProcessDriver

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (test extra)
    threadpool_limits = None

RESULTS = Path(__file__).parent / "results" / "secagg.json"
#: the assumptions every grid row derives T, k and t from (SecAggConfig.build)
ASSUMPTIONS = Assumptions(dropout_fraction=0.1)
#: (n, d) combinations skipped in the full grid, with the reason
SKIP = {
    (1000, 1_000_000): "4 GB of client inputs plus ~1000 x 21 mask expansions of 4 MB each "
    "exceed the shared 2-core machine's budget; cost scales linearly from n=1000, d=1e5"
}


def prg_seconds(d: int, reps: int = 5) -> float:
    """CPU seconds for one mask: AES-CTR expansion of d words + one uint32 add, best of reps."""
    acc = np.zeros(d, dtype=np.uint32)
    best = float("inf")
    for r in range(reps):
        seed = Secret(bytes([r]) * 32)
        t0 = time.process_time()
        accumulate_mask(acc, seed, 1)
        best = min(best, time.process_time() - t0)
    return best


def bench_round(label: bytes, n: int, d: int, bits: int, degree: int | None = None
                ) -> tuple[SecAggConfig, IdentityRoster, NDArray[np.uint32], dict[int, SecAggClient]]:
    """n clients with deterministic keys and one shared input pattern (RAM stays O(d)), with the
    safe parameters securefl derives (protocols/secagg/spec.md, "Threat model and bounds") for
    ASSUMPTIONS; ``degree = n - 1`` forces classic SecAgg."""
    master = Secret(label.ljust(32, b"\x00"))
    ids = list(range(n))
    identities = {
        c: SigningKey.from_seed(Secret(SeededRandomSource(master, f"id{c}").random_bytes(32)))
        for c in ids
    }
    session = label[:1] * 16
    fed = IdentityRoster(session, {c: k.verify_key for c, k in identities.items()})
    cfg = SecAggConfig.build(session_id=session, round=0, participants=ids, dim=d, bits=bits,
                             assumptions=ASSUMPTIONS, degree=degree)
    base = (SeededRandomSource(master, "inputs").uint64(d) % np.uint64(1 << bits)).astype(np.uint32)
    clients = {c: SecAggClient(cfg, fed, c, identities[c], base, SeededRandomSource(master, f"k{c}"))
               for c in ids}
    return cfg, fed, base, clients


def run_checked(server: SecAggServer, clients: dict[int, SecAggClient], dropouts: dict[int, str],
                base: NDArray[np.uint32], bits: int, what: str
                ) -> tuple[InProcessDriver, ServerResult, float]:
    """One round through the in-process driver, its wall time, and a check that the sum is the
    shared input times the number of survivors (SystemExit otherwise)."""
    driver = InProcessDriver(server, clients, dropouts=dropouts)
    t0 = time.perf_counter()
    result = driver.run()
    wall = time.perf_counter() - t0
    expected = (base.astype(np.uint64) * np.uint64(len(result.survivors))) % np.uint64(1 << bits)
    if not np.array_equal(result.field_sum.astype(np.uint64), expected):
        raise SystemExit(f"wrong sum ({what})")
    return driver, result, wall


def run_one(n: int, d: int, dropout: float, precision_bits: int = 16) -> dict[str, Any]:
    ids = list(range(n))
    clip, gamma = 1.0, 1.0 / 2**precision_bits
    bits = quantize.choose_encoding(n, d, clip, gamma).bits
    cfg, fed, base, clients = bench_round(b"bench", n, d, bits)
    n_drop = round(dropout * n)
    dropouts = {c: "masked" for c in ids[1 : 1 + n_drop]}
    g0 = time.process_time()  # the server derives the whole round graph: n(n-1)/2 SHA-256
    server = SecAggServer(cfg, fed)
    graph_cpu = time.process_time() - g0
    driver, result, wall = run_checked(server, clients, dropouts, base, bits, f"n={n} d={d}")
    graph = server._graph
    survivors = set(result.survivors)
    dropped = set(dropouts)
    server_masks = len(survivors) + sum(len(graph[j] & survivors) for j in dropped)
    k_eff = cfg.degree
    t_prg = prg_seconds(d)
    cpu = driver.stats.cpu_seconds
    client_total = [cpu[f"client/{c}"] for c in ids if c not in dropped]
    client_mask = cpu["clients/masked"] / max(1, len(ids) - len(dropped))
    bytes_sent = driver.stats.bytes_sent
    client_bytes = np.mean([bytes_sent[f"client/{c}"] for c in ids if c not in dropped])
    row = {
        "n": n,
        "d": d,
        "dropout": dropout,
        "k": k_eff,
        "t": cfg.neighbour_threshold,
        "T": cfg.threshold,
        "graph": "classic" if cfg.guarantee.classic else "G(n,p)",
        "min_honest_sum": cfg.guarantee.min_honest_sum,
        "bits": bits,
        "survivors": len(survivors),
        "wall_s": wall,
        "prg_floor_one_mask_s": t_prg,
        "client_cpu_s_mean": float(np.mean(client_total)),
        "client_masking_cpu_s_mean": client_mask,
        "client_floor_s": (k_eff + 1) * t_prg,
        "client_masking_ratio": client_mask / ((k_eff + 1) * t_prg),
        "server_cpu_s": cpu["server"] + graph_cpu,
        "server_graph_cpu_s": graph_cpu,
        "server_unmask_cpu_s": cpu["server/unmask"],
        "server_masks": server_masks,
        "server_floor_s": server_masks * t_prg,
        "server_unmask_ratio": cpu["server/unmask"] / (server_masks * t_prg),
        "server_total_ratio": (cpu["server"] + graph_cpu) / (server_masks * t_prg),
        "client_bytes_per_coord": float(client_bytes) / d,
        "server_bytes_per_coord_per_client": bytes_sent["server"] / (n * d),
    }
    return row


def encode_row(k: int, d: int, precision_bits: int = 16, noise_survivors: int = 50,
               reps: int = 3) -> dict[str, Any]:
    """One client's clip + round + mask at degree k (see the module docstring); CPU seconds, mean
    over the k + 1 clients (masking) and best of ``reps`` per client (clip, encode, noise).

    BLAS runs single-threaded here: after a multi-threaded ddot (the clip norm) OpenBLAS worker
    threads busy-wait for milliseconds, and the process CPU clock would charge that spinning to
    whatever is timed next."""
    limit = (threadpool_limits(1, user_api="blas") if threadpool_limits is not None
             else contextlib.nullcontext())
    with limit:
        return _encode_row(k, d, precision_bits, noise_survivors, reps)


def _encode_row(k: int, d: int, precision_bits: int, noise_survivors: int, reps: int
                ) -> dict[str, Any]:
    n = k + 1
    master = Secret(b"bench-encode".ljust(32, b"\x00"))
    ids = list(range(n))
    clip = 1.0
    gamma = clip / 2**precision_bits
    sigma2 = (clip / gamma) ** 2 / noise_survivors  # z = 1: (z C / gamma)^2 / min_survivors
    enc = quantize.choose_encoding(100, d, clip, gamma)  # the field of an n = 100 round
    t_prg = prg_seconds(d)
    clip_s: list[float] = []
    encode_s: list[float] = []
    fields = {}
    for c in ids:
        raw = SeededRandomSource(master, f"update{c}").uniform(d) - 0.5
        raw *= 1.5 * clip / float(np.linalg.norm(raw))  # over the clip norm: clipping scales it
        best_clip = best_enc = float("inf")
        for r in range(reps):
            t0 = time.process_time()
            x, _ = clip_l2(raw, clip)
            t1 = time.process_time()
            field = encode_input(x, clip_norm=clip, encoding=enc,
                                 rounding=SeededRandomSource(master, f"round{c}/{r}"),
                                 noise=SeededRandomSource(master, f"noise{c}/{r}"))
            t2 = time.process_time()
            best_clip, best_enc = min(best_clip, t1 - t0), min(best_enc, t2 - t1)
        clip_s.append(best_clip)
        encode_s.append(best_enc)
        fields[c] = field
    identities = {
        c: SigningKey.from_seed(Secret(SeededRandomSource(master, f"id{c}").random_bytes(32)))
        for c in ids
    }
    fed = IdentityRoster(b"E" * 16, {c: key.verify_key for c, key in identities.items()})
    # n = k + 1 clients on the complete graph: the same masking work as a SecAgg+ client with k
    # neighbours; T derived from the bounds
    cfg = SecAggConfig.build(session_id=b"E" * 16, round=0, participants=ids,
                             dim=d, bits=enc.bits, degree=k)
    expected = sum((fields[c].astype(np.uint64) for c in ids), np.zeros(d, np.uint64))
    expected %= np.uint64(1 << enc.bits)
    mask_s = float("inf")
    for r in range(reps):  # whole rounds; the masked stage's mean CPU per client, best round
        clients = {
            c: SecAggClient(cfg, fed, c, identities[c], fields[c],
                            SeededRandomSource(master, f"k{c}/{r}"))
            for c in ids
        }
        driver = InProcessDriver(SecAggServer(cfg, fed), clients)
        result = driver.run()
        if not np.array_equal(result.field_sum.astype(np.uint64), expected):
            raise SystemExit(f"wrong sum in the encode run (k={k}, d={d})")
        mask_s = min(mask_s, driver.stats.cpu_seconds["clients/masked"] / n)
    t_prg = min(t_prg, prg_seconds(d))  # the floor again, after the rounds: the lower one counts
    noise_s = float("inf")
    for r in range(reps):
        t0 = time.process_time()
        discrete_gaussian(d, sigma2, SeededRandomSource(master, f"noise/{r}"))
        noise_s = min(noise_s, time.process_time() - t0)
    floor = (k + 1) * t_prg
    clip_mean, encode_mean = float(np.mean(clip_s)), float(np.mean(encode_s))
    total = clip_mean + encode_mean + mask_s
    return {
        "k": k,
        "d": d,
        "bits": enc.bits,
        "prg_floor_one_mask_s": t_prg,
        "client_floor_s": floor,
        "clip_cpu_s": clip_mean,
        "round_cpu_s": encode_mean,
        "mask_cpu_s": mask_s,
        "encode_cpu_s": total,
        "mask_ratio": mask_s / floor,
        "encode_ratio": total / floor,
        "noise_sigma2": sigma2,
        "noise_cpu_s": noise_s,
    }


def print_encode(r: dict[str, Any]) -> None:
    print(
        f"client encode k={r['k']} d={r['d']} b={r['bits']}: clip {r['clip_cpu_s']:.4f} + round "
        f"{r['round_cpu_s']:.4f} + mask {r['mask_cpu_s']:.4f} = {r['encode_cpu_s']:.4f} s CPU; "
        f"PRG floor {r['client_floor_s']:.4f} s ({r['k'] + 1} x {r['prg_floor_one_mask_s']:.5f}); "
        f"mask-only x{r['mask_ratio']:.2f}, clip+round+mask x{r['encode_ratio']:.2f} the floor",
        flush=True,
    )
    print(
        f"discrete Gaussian noise d={r['d']} sigma2={r['noise_sigma2']:.4g}: "
        f"{r['noise_cpu_s']:.4f} s CPU",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (n in {10, 100}, d = 1e4)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--encode-only", action="store_true",
                    help="only the client encode rows (clip + round + mask, noise)")
    ap.add_argument("--ns", default="10,100,1000",
                    help="comma-separated n of the full grid (n = 1000 simulates 1000 clients in "
                         "one process: about 11 minutes a row at d = 1e4 with the safe k = 194)")
    args = ap.parse_args()
    if args.quick:
        grid = [(n, 10_000) for n in (10, 100)]
    else:
        ns = [int(x) for x in args.ns.split(",")]
        grid = [(n, d) for n in ns for d in (10_000, 100_000, 1_000_000)]
    if args.encode_only:
        grid = []
    rows, skipped = [], []
    hdr = (
        f"{'n':>5} {'d':>8} {'drop':>4} {'k':>3} {'b':>3} {'cli cpu':>8} {'cli mask':>8} "
        f"{'xfloor':>6} {'srv cpu':>8} {'srv unm':>8} {'xfloor':>6} {'B/coord':>7}"
    )
    print(hdr)
    for n, d in grid:
        if (n, d) in SKIP:
            skipped.append({"n": n, "d": d, "reason": SKIP[(n, d)]})
            print(f"{n:>5} {d:>8}  skipped: {SKIP[(n, d)]}")
            continue
        for dropout in (0.0, 0.1):
            r = run_one(n, d, dropout)
            rows.append(r)
            print(
                f"{n:>5} {d:>8} {dropout:>4.0%} {r['k']:>3} {r['bits']:>3} "
                f"{r['client_cpu_s_mean']:>8.4f} {r['client_masking_cpu_s_mean']:>8.4f} "
                f"{r['client_masking_ratio']:>6.2f} {r['server_cpu_s']:>8.3f} "
                f"{r['server_unmask_cpu_s']:>8.3f} {r['server_unmask_ratio']:>6.2f} "
                f"{r['client_bytes_per_coord']:>7.3f}",
                flush=True,
            )
    encode_rows = [encode_row(14, 100_000 if args.quick else 1_000_000)]
    for r in encode_rows:
        print_encode(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "secagg",
                "quick": args.quick,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "rows": rows,
                "skipped": skipped,
                "client_encode": encode_rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
