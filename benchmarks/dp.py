"""DP benchmarks: DP-SGD epoch time vs. a non-private epoch, noise throughput, accountant time.

Run: python benchmarks/dp.py [--quick]   (prints a table, writes benchmarks/results/dp.json)
     python benchmarks/dp.py --collusion   (only the noise colluders leave, printed)

Model: MLP 91-64-32-1 (Linear/ReLU), BCEWithLogits, SGD, on 8,000 synthetic rows with 91 features
(the shape of the one-hot encoded credit data). The non-private epoch (shuffled mini-batches) and
each DP-SGD backend are timed in the same process (ghost: alternating with the plain epoch,
median of repeats; Opacus "+setup": one call of one epoch including PrivacyEngine.make_private,
which is what one round costs the federated loop; Opacus steady state: (3-epoch call - 1-epoch
call) / 2).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.dp.accountants import epsilon_of_events
from securefl.dp.discrete import discrete_gaussian
from securefl.dp.dpsgd import dp_train_epochs
from securefl.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from securefl.dp.noise import gaussian

OUT = Path(__file__).resolve().parent / "results" / "dp.json"
N, D = 8000, 91


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g)
    w = torch.randn(D, generator=g)
    y = ((X @ w + 0.5 * torch.randn(N, generator=g)) > 0).float()
    return X, y


def _plain_epoch(model: nn.Module, X: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lf = nn.BCEWithLogitsLoss()
    perm = torch.randperm(N)
    for i in range(0, N, bs):
        idx = perm[i:i + bs]
        opt.zero_grad()
        lf(model(X[idx]).squeeze(1), y[idx]).backward()
        opt.step()


def bench_dpsgd(repeats: int, opacus_modes: list[str]) -> list[dict[str, Any]]:
    X, y = _data()
    rows = []
    for bs in (64, 128, 256):
        plain: list[float] = []
        ghost: list[float] = []
        _plain_epoch(_model(), X, y, bs)  # warm-up
        for r in range(repeats):
            m = _model()
            t = time.perf_counter()
            _plain_epoch(m, X, y, bs)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            dp_train_epochs(_model(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                            batch_size=bs, lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0,
                            random_seed=r, backend="ghost")
            ghost.append(time.perf_counter() - t)
        p = statistics.median(plain)
        g = statistics.median(ghost)
        rows.append({"batch_size": bs, "backend": "ghost", "plain_epoch_s": p, "dp_epoch_s": g,
                     "ratio": g / p})
        for mode in opacus_modes:
            took = {}
            for epochs in (1, 3):
                t = time.perf_counter()
                dp_train_epochs(_model(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=epochs,
                                batch_size=bs, lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0,
                                backend="opacus", grad_sample_mode=mode)
                took[epochs] = time.perf_counter() - t
            rows.append({"batch_size": bs, "backend": f"opacus:{mode}+setup", "plain_epoch_s": p,
                         "dp_epoch_s": took[1], "ratio": took[1] / p})
            steady = (took[3] - took[1]) / 2
            if steady > 0:  # else too noisy to tell (the 1-epoch call paid a warm-up)
                rows.append({"batch_size": bs, "backend": f"opacus:{mode}", "plain_epoch_s": p,
                             "dp_epoch_s": steady, "ratio": steady / p})
    return rows


def bench_noise(n: int) -> list[dict[str, Any]]:
    rng = SeededRandomSource(Secret(b"\x01" * 32), "bench-noise")
    rows = []
    t = time.perf_counter()
    gaussian(n, 1.0, rng)
    dt = time.perf_counter() - t
    rows.append({"sampler": "continuous gaussian (Box-Muller, CSPRNG)", "n": n, "seconds": dt,
                 "samples_per_s": n / dt})
    for s2 in (1e2, 1e12, 1e16):
        t = time.perf_counter()
        discrete_gaussian(n, s2, rng)
        dt = time.perf_counter() - t
        rows.append({"sampler": f"discrete gaussian sigma2={s2:g} (exact CKS)", "n": n,
                     "seconds": dt, "samples_per_s": n / dt})
    return rows


def bench_accountants() -> list[dict[str, Any]]:
    ev = [SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 1000)]
    rows = []
    epsilon_of_events(ev, 1e-5, "rdp")  # import cost out of the timing
    for acc in ("rdp", "prv", "pld"):
        t = time.perf_counter()
        eps = epsilon_of_events(ev, 1e-5, acc)
        rows.append({"accountant": acc, "epsilon": eps, "seconds": time.perf_counter() - t,
                     "case": "z=1.1 q=0.01 T=1000 delta=1e-5"})
    return rows


def bench_collusion(dim: int = 20_000, z: float = 1.0) -> list[dict[str, Any]]:
    """The noise left in the released sum after a colluding bank subtracts its own share: 4 banks,
    bank 0 colluding, threshold T = 3, an honest bank dropped before its input (the worst
    admissible round), zero updates so the sum is the noise alone. Shares sized for T - c (the
    rule) against shares sized for T (the rule before issue 16), as a fraction of (z C)^2."""
    from securefl.aggregators import make_aggregator
    from securefl.crypto.random import SimulationRandomness
    from securefl.protocol.plan import NoisePlan, RoundSpec

    rows: list[dict[str, Any]] = []
    for mode in ("plain", "secagg"):
        for rule, c in (("T - c", 1), ("T (before)", 0)):
            agg = make_aggregator(mode, colluders=c)
            spec = RoundSpec(session_id=bytes(16), round=1, participants=(0, 1, 2, 3),
                             clip_norm=1.0, threshold=3, noise=NoisePlan(z, 3, colluders=c))
            rnd = SimulationRandomness(7, bytes(16))
            out = agg.aggregate(spec, {i: np.zeros(dim) for i in range(4)},
                                random=lambda cid, what, r=rnd: r.source(1, cid, what),
                                dropouts={3: agg.stages[0]})
            own = rnd.source(1, 0, "noise")
            enc = getattr(out, "encoding", None)
            if enc is None:
                left = out.total - gaussian(dim, spec.noise.share_std(1.0), own)  # type: ignore[union-attr]
                planned = z**2
            else:
                left = (out.integer_total.astype(np.float64)  # type: ignore[attr-defined]
                        - discrete_gaussian(dim, enc.noise_sigma2_int, own))
                planned = (z / enc.gamma) ** 2
            rows.append({"mode": mode, "shares sized for": rule, "dim": dim,
                         "left_over_planned": float(left.var() / planned)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--collusion", action="store_true",
                    help="only measure the noise left after a colluder subtracts its share")
    args = ap.parse_args()
    if args.collusion:
        for r in bench_collusion():
            print(f"{r['mode']:<7} shares sized for {r['shares sized for']:<11} noise left "
                  f"{r['left_over_planned']:.4f} x (z C)^2 (d = {r['dim']})")
        return
    torch.set_num_threads(1)
    repeats = 2 if args.quick else 5
    modes = [] if args.quick else ["hooks", "functorch"]
    n_noise = 100_000 if args.quick else 1_000_000
    res = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "numpy": np.__version__, "torch_threads": 1},
        "dpsgd": bench_dpsgd(repeats, modes),
        "noise": bench_noise(n_noise),
        "accountants": bench_accountants(),
    }
    print(f"{'batch':>6} {'backend':<24} {'plain s':>9} {'DP s':>9} {'ratio':>6}")
    for r in res["dpsgd"]:
        print(f"{r['batch_size']:>6} {r['backend']:<24} {r['plain_epoch_s']:>9.4f} "
              f"{r['dp_epoch_s']:>9.4f} {r['ratio']:>6.2f}")
    print()
    for r in res["noise"]:
        print(f"{r['sampler']:<52} n={r['n']:>8} {r['seconds']:>7.3f} s "
              f"{r['samples_per_s']:>12,.0f}/s")
    print()
    for r in res["accountants"]:
        print(f"{r['accountant']:<4} eps={r['epsilon']:.4f} {r['seconds']:.3f} s ({r['case']})")
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
