"""Benchmark of ``--aggregation ckks``: per-role costs, bytes per parameter, error, TenSEAL's raw
cost with the same parameters (overhead ratio), and the commit phase's own cost (CPU seconds of
commitments, closing and signing the set, checking it, plus bytes; it also adds one message round
trip per round). Prints a table; writes benchmarks/results/ckks.json.

The server's sum is reported as wall time and CPU time (all threads: SHA-256 of large ciphertexts
runs on several threads), each against bare TenSEAL (x, x cpu), and against a floor: bare TenSEAL
plus single-threaded SHA-256 of the same bytes (/floor, cpu/fl), the work any implementation of
this protocol must do.

    python benchmarks/ckks.py            # d in {1e5, 1e6}, n in {3, 10, 50}
    python benchmarks/ckks.py --quick    # d = 2e4, n in {3, 5}
    python benchmarks/ckks.py --default-only --dims 300000 --ns 10 --out /tmp/ckks.json
    python benchmarks/ckks.py --round-keys-only   # the cost of a fresh CKKS key per round

Round keys: the key holder makes a fresh key for every round (``CKKSKeyHolder.round_context``:
SEAL key generation, serializing the public context, signing it) and every bank checks the
signature and parses the context (``accept_public_context``); the context travels to every bank
each round. Printed before the table, as medians over repetitions, for each parameter set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.he.context import generate_context
from securefl.he.flooding import release_error_bound
from securefl.he.params import COMPACT_PARAMS, DEFAULT_PARAMS, NVFLARE_PARAMS, CKKSParams
from securefl.protocol import wire
from securefl.protocol.ckks import (
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    accept_public_context,
)

SESSION = b"bench-session-01"


def raw_encrypt(ctx: Any, x: np.ndarray, slots: int) -> tuple[float, list[bytes]]:
    """Bare TenSEAL: ts.ckks_vector + serialize per N/2-slot chunk (no checks/digest/signature)."""
    import tenseal as ts

    t = time.perf_counter()
    blobs = [ts.ckks_vector(ctx, x[i : i + slots]).serialize() for i in range(0, x.size, slots)]
    return time.perf_counter() - t, blobs


def raw_sum(ctx: Any, contributions: list[list[bytes]]) -> tuple[float, float, list[bytes]]:
    """Bare TenSEAL: deserialize every chunk, add, serialize the sum. (wall s, CPU s, sum)."""
    import tenseal as ts

    c, t = time.process_time(), time.perf_counter()
    acc = [ts.ckks_vector_from(ctx, b) for b in contributions[0]]
    for blobs in contributions[1:]:
        for a, b in zip(acc, blobs, strict=True):
            a.add_(ts.ckks_vector_from(ctx, b))
    total = [a.serialize() for a in acc]
    return time.perf_counter() - t, time.process_time() - c, total


def sha256_single_thread(blobs: list[bytes]) -> float:
    """Seconds to SHA-256 every blob on one thread: what any implementation of the protocol must
    hash (each contribution to open its commitment, the aggregate for the manifest)."""
    t = time.perf_counter()
    for b in blobs:
        hashlib.sha256(b).digest()
    return time.perf_counter() - t


def new_server(public: Any, fed: dict[int, Any], server_key: SigningKey, d: int, n: int
               ) -> CKKSServer:
    """The benchmark's server: n clients of d values, all required, min(2, n) verifiers."""
    return CKKSServer(public, fed, server_key, session_id=SESSION, round_=0, num_values=d,
                      participants=tuple(range(n)), min_clients=n, verifiers=min(2, n))


def server_sum(
    public: Any,
    fed: dict[int, Any],
    server_key: SigningKey,
    d: int,
    n: int,
    commitments: list[Any],
    contributions: list[Any],
) -> tuple[float, float, CKKSServer]:
    """Replay the server's collection phase on a fresh server: (wall s, CPU s of every thread of
    the process) of receive_contribution for each client plus close()."""
    server = new_server(public, fed, server_key, d, n)
    for com in commitments:
        server.receive_commitment(com)
    server.close_commitments()  # deterministic: same set digest the clients revealed under
    c, t = time.process_time(), time.perf_counter()
    for contribution in contributions:
        server.receive_contribution(contribution)  # commitment, signature, parse, validation
    server.close()
    return time.perf_counter() - t, time.process_time() - c, server


def raw_decrypt(ctx: Any, blobs: list[bytes]) -> float:
    import tenseal as ts

    t = time.perf_counter()
    np.concatenate([np.asarray(ts.ckks_vector_from(ctx, b).decrypt()) for b in blobs])
    return time.perf_counter() - t


def run_one(
    params: CKKSParams, d: int, n: int, raw_reps: int, sum_reps: int = 3
) -> dict[str, float | int | str]:
    """One round with n clients of d values; ours and bare TenSEAL measured interleaved. The
    server's sum is replayed ``sum_reps`` times on fresh servers, interleaved with bare TenSEAL and
    with single-threaded SHA-256 of the same bytes; medians are reported."""
    rng = np.random.default_rng(0)
    keys = {i: SigningKey.from_seed(Secret(bytes([i + 1]) * 32)) for i in range(n)}
    fed = {i: k.verify_key for i, k in keys.items()}
    secret = generate_context(params)
    verifiers = min(2, n)
    server_key = SigningKey.from_seed(Secret(b"\xdd" * 32))
    holder = CKKSKeyHolder(
        SigningKey.from_seed(Secret(b"\xee" * 32)),
        secret,
        fed,
        min_clients=n,
        verifiers=verifiers,
        max_queries=2**20,
        server_key=server_key.verify_key,
    )
    public = accept_public_context(holder.public_context_message(), holder.verify_key, params)
    v = rng.normal(size=d)
    x = v / np.linalg.norm(v)
    server = new_server(public, fed, server_key, d, n)
    ours_enc, raw_enc, nbytes = [], [], 0
    commitments, contributions = [], []
    commit_s, commit_bytes = 0.0, 0  # the commit phase alone: hashing, signing, checking
    clients = {}
    for i in range(n):
        client = CKKSClient(i, keys[i], public, server_key.verify_key)
        t = time.perf_counter()
        com = client.commit(
            session_id=SESSION,
            round_=0,
            values=x,
            clip_norm=1.0,
            num_participants=n,
            noise_std=0.0,
            plan_digest=bytes(32), random=SeededRandomSource(Secret(b"\x01" * 32), f"{i}"),
        )
        ours_enc.append(time.perf_counter() - t)
        commit_bytes += len(wire.encode(com))
        commitments.append(com)
        t = time.perf_counter()
        server.receive_commitment(com)
        commit_s += time.perf_counter() - t
        clients[i] = client
        if i < raw_reps:
            raw_enc.append(raw_encrypt(public.raw, x, params.slots)[0])
    t = time.perf_counter()
    cset = server.close_commitments()
    commit_s += time.perf_counter() - t
    commit_bytes += n * len(wire.encode(cset))
    raw_contribs: list[list[bytes]] = []
    for client in clients.values():
        t = time.perf_counter()
        c = client.reveal(cset)  # checks the set's signature, signs the reveal
        commit_s += (time.perf_counter() - t) / n  # per client (they run in parallel)
        nbytes = sum(len(ch) for ch in c.chunks)
        raw_contribs.append(list(c.chunks))
        contributions.append(c)
    ours_wall, ours_cpu, raw_wall, raw_cpu, sha_s = [], [], [], [], []
    for _ in range(max(sum_reps, 1)):
        wall, cpu, server = server_sum(public, fed, server_key, d, n, commitments, contributions)
        ours_wall.append(wall)
        ours_cpu.append(cpu)
        wall, cpu, total_blobs = raw_sum(public.raw, raw_contribs)
        raw_wall.append(wall)
        raw_cpu.append(cpu)
        # floor: bare TenSEAL + one thread hashing every contribution and the serialized sum
        sha_s.append(sha256_single_thread([b for blobs in raw_contribs for b in blobs]))
        sha_s[-1] += sha256_single_thread(total_blobs)
    server_s, server_cpu_s = float(np.median(ours_wall)), float(np.median(ours_cpu))
    raw_sum_s, raw_sum_cpu_s = float(np.median(raw_wall)), float(np.median(raw_cpu))
    floor_s = raw_sum_s + float(np.median(sha_s))
    req = server.verify_request()
    ver = []
    for vid in server.verifier_ranking()[:verifiers]:
        t = time.perf_counter()
        cs = CKKSVerifier(
            vid, keys[vid], public, fed, server_key.verify_key, min_clients=n, verifiers=verifiers
        ).verify(
            req,
            session_id=SESSION,
            round_=0,
            revealed_under=clients[vid].revealed_under[(SESSION, 0)],
        )
        ver.append(time.perf_counter() - t)
        server.receive_cosignature(cs)
    dreq = server.decryption_request()
    t = time.perf_counter()
    res = holder.decrypt(dreq, SeededRandomSource(Secret(b"\x02" * 32), "flood"))
    dec_s = time.perf_counter() - t
    raw_dec_s = raw_decrypt(secret.raw, list(dreq.aggregate))
    total = server.receive_result(res, holder.verify_key)
    enc_s = float(np.median(ours_enc[: max(raw_reps, 1)]))
    raw_enc_s = float(np.median(raw_enc))
    return {
        "params": f"N={params.poly_modulus_degree} {list(params.coeff_mod_bit_sizes)} 2^{params.scale_bits}",
        "d": d,
        "n": n,
        "client_encrypt_s": enc_s,
        "raw_encrypt_s": raw_enc_s,
        "encrypt_overhead": enc_s / raw_enc_s,
        "bytes_per_param": nbytes / d,
        "server_sum_s": server_s,
        "raw_sum_s": raw_sum_s,
        "sum_overhead": server_s / raw_sum_s,
        "server_sum_cpu_s": server_cpu_s,
        "raw_sum_cpu_s": raw_sum_cpu_s,
        "sum_overhead_cpu": server_cpu_s / raw_sum_cpu_s,
        "floor_sum_s": floor_s,
        "sum_vs_floor": server_s / floor_s,
        "sum_cpu_vs_floor": server_cpu_s / floor_s,
        "verifier_s": float(np.median(ver)),
        "keyholder_decrypt_s": dec_s,
        "raw_decrypt_s": raw_dec_s,
        "max_abs_error_sum": float(np.max(np.abs(total - n * x))),
        "error_bound_sum": release_error_bound(
            n, params.poly_modulus_degree, params.scale, d, max_queries=2**20
        ),
        "flood_std": res.flood_std,
        "commit_phase_s": commit_s,
        "commit_phase_bytes": commit_bytes,
        "loadavg_1m": os.getloadavg()[0],  # > 1 on 2 CPUs: other work competed, wall times suffer
    }


COLUMNS = (
    ("params", "{:<27}"),
    ("d", "{:>8}"),
    ("n", "{:>3}"),
    ("client_encrypt_s", "{:>8.3f}"),
    ("raw_encrypt_s", "{:>8.3f}"),
    ("encrypt_overhead", "{:>6.2f}"),
    ("bytes_per_param", "{:>7.1f}"),
    ("server_sum_s", "{:>8.2f}"),
    ("raw_sum_s", "{:>8.2f}"),
    ("sum_overhead", "{:>6.2f}"),
    ("server_sum_cpu_s", "{:>8.3f}"),
    ("raw_sum_cpu_s", "{:>8.3f}"),
    ("sum_overhead_cpu", "{:>6.2f}"),
    ("floor_sum_s", "{:>8.3f}"),
    ("sum_vs_floor", "{:>6.2f}"),
    ("sum_cpu_vs_floor", "{:>6.2f}"),
    ("verifier_s", "{:>8.2f}"),
    ("keyholder_decrypt_s", "{:>8.2f}"),
    ("raw_decrypt_s", "{:>8.2f}"),
    ("max_abs_error_sum", "{:>9.2e}"),
    ("error_bound_sum", "{:>9.2e}"),
    ("commit_phase_s", "{:>8.4f}"),
    ("commit_phase_bytes", "{:>8}"),
)
HEADER = (
    f"{'params':<27} {'d':>8} {'n':>3} {'enc s':>8} {'raw enc':>8} {'x':>6} {'B/par':>7} "
    f"{'sum s':>8} {'raw sum':>8} {'x':>6} {'sum cpu':>8} {'raw cpu':>8} {'x cpu':>6} "
    f"{'floor':>8} {'/floor':>6} {'cpu/fl':>6} {'verify':>8} {'decrypt':>8} {'raw dec':>8} "
    f"{'max err':>9} {'bound':>9} {'commit s':>8} {'commit B':>8}"
)


def round_key_cost(params: CKKSParams, reps: int = 7) -> dict[str, float | int | str]:
    """Median CPU cost of one round key: key holder (keygen + serialize + sign) and one bank
    (verify + parse), plus the signed context's bytes on the wire (to each bank, each round)."""
    holder = CKKSKeyHolder(SigningKey.from_seed(Secret(b"\xee" * 32)), None, {}, min_clients=1,
                           verifiers=1, params=params)
    make, accept, size = [], [], 0
    for r in range(reps):
        t = time.process_time()
        msg = holder.round_context(SESSION, r)
        make.append(time.process_time() - t)
        data = wire.encode(msg)
        size = len(data)
        t = time.process_time()
        accept_public_context(wire.decode(data, type(msg)), holder.verify_key, params,
                              session_id=SESSION, round_=r)
        accept.append(time.process_time() - t)
    return {"params": f"N={params.poly_modulus_degree} {list(params.coeff_mod_bit_sizes)}",
            "keyholder_round_key_s": float(np.median(make)),
            "bank_accept_s": float(np.median(accept)), "context_bytes": size}


def fmt_round_key(row: dict[str, Any]) -> str:
    return (f"round key {row['params']:<27} key holder {1e3 * row['keyholder_round_key_s']:6.1f} "
            f"ms CPU, each bank {1e3 * row['bank_accept_s']:6.1f} ms CPU, "
            f"{row['context_bytes'] / 1024:7.1f} KiB to each bank per round")


def fmt(row: dict[str, Any]) -> str:
    return " ".join(f.format(row[k]) for k, f in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ckks.json"))
    ap.add_argument("--dims", type=int, nargs="+", help="override the vector sizes d")
    ap.add_argument("--ns", type=int, nargs="+", help="override the client counts n")
    ap.add_argument("--default-only", action="store_true", help="only the default parameters")
    ap.add_argument("--round-keys-only", action="store_true",
                    help="only the cost of a fresh key per round (prints, writes nothing)")
    args = ap.parse_args(argv)
    all_params = (DEFAULT_PARAMS, COMPACT_PARAMS, NVFLARE_PARAMS)
    chosen = all_params[:1] if args.default_only else all_params
    round_keys = [round_key_cost(p) for p in chosen]
    for row in round_keys:
        print(fmt_round_key(row), flush=True)
    if args.round_keys_only:
        return 0
    dims = args.dims or ([20_000] if args.quick else [100_000, 1_000_000])
    ns = args.ns or ([3, 5] if args.quick else [3, 10, 50])
    rows = []
    print(HEADER, flush=True)
    for params in chosen:
        for d in dims:
            for n in ns:
                row = run_one(params, d, n, raw_reps=min(n, 5))
                rows.append(row)
                print(fmt(row), flush=True)
    import tenseal

    meta = {
        "quick": args.quick,
        "python": platform.python_version(),
        "tenseal": tenseal.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "notes": "times in seconds; client_encrypt_s / raw_encrypt_s are medians over the "
        "first min(n, 5) clients, measured interleaved; server_sum_s includes "
        "signature checks, parsing and validation of every contribution; "
        "server_sum_s / raw_sum_s are wall-clock medians over 3 interleaved replays of the "
        "server's collection phase (receive_contribution for each client + close) and of bare "
        "TenSEAL (deserialize, add, serialize); *_cpu_s are time.process_time (all threads); "
        "floor_sum_s = raw_sum_s + single-threaded SHA-256 of every contribution and of the sum, "
        "the work any implementation of this protocol must do; sum_vs_floor = server_sum_s / "
        "floor_sum_s, sum_cpu_vs_floor = server_sum_cpu_s / floor_sum_s; "
        "errors are on the SUM (divide by n for the mean); commit_phase_s is the CPU time "
        "the commit phase adds (server: check commitments, close and sign the set; per client: "
        "check the set, sign the reveal), commit_phase_bytes the bytes it adds (commitments "
        "plus the set sent to every client); it also adds one message round trip per round",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows, "round_keys": round_keys}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
