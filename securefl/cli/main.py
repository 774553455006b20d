"""The ``securefl`` command line.

One place maps error classes to exit codes (:data:`securefl.errors.EXIT_CODES`); tracebacks appear
only with ``--debug``. Heavy libraries load only inside the subcommand that needs them, so
``securefl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from securefl import __version__
from securefl.errors import SecureFLError, exit_code_for

Handler = Callable[[argparse.Namespace], int]

RUN_HELP: dict[str, str] = {
    "data": "CSV or Parquet file with your own table (default: the embedded Taiwan credit data)",
    "label": "label column of --data (embedded data: default)",
    "task": "classification | regression | auto (inferred from the label)",
    "split_by": "column whose values define the banks (natural split)",
    "schema": "data schema of --data (TOML/JSON, `securefl data schema`); without it one is "
              "drafted in memory from the whole table, and the run says so",
    "stats_noise_multiplier": "record-level noise multiplier of the round-0 statistics "
                              "(standardisation, imputation); default 4 with DP on (--data or "
                              "the embedded table), 0: off",
    "banks": "number of simulated banks",
    "partition": "natural | iid | dirichlet",
    "alpha": "Dirichlet concentration for --partition dirichlet (smaller = more skew)",
    "test_fraction": "fraction of rows held out as the global test split",
    "local_test_fraction": "fraction of each bank's rows it keeps as a local test split",
    "model": "mlp | logreg",
    "hidden": "MLP hidden layer widths, e.g. 64,32 or 128,64",
    "loss": "auto | bce | mse | huber",
    "local_epochs": "local epochs per round",
    "batch_size": "local batch size",
    "lr": "local learning rate",
    "optimizer": "local optimizer: sgd | adam",
    "rounds": "federated rounds",
    "clients_per_round": "fraction of banks sampled each round",
    "server_optimizer": "fedavg | fedadam | fedprox",
    "server_lr": "server learning rate",
    "prox_mu": "FedProx proximal coefficient",
    "aggregation": "secagg (masking) | ckks (homomorphic) | plain (INSECURE, comparison only)",
    "threshold": "survivors needed for a round (default and floor: the active-security bound "
                 "2T > n + c, T >= c + 2)",
    "neighbours": "SecAgg+ expected degree k (default: derived from the bounds; banks-1 = classic "
                  "SecAgg); a k below the alpha-summation bound is refused",
    "colluders": "banks assumed to collude with the server (c); thresholds follow from it",
    "dropout": "simulated per-round probability that a bank drops out",
    "clip_norm": "client-level L2 clip of each bank's update",
    "noise_multiplier": "client-level noise multiplier z (sum noise std = z * clip_norm)",
    "record_epsilon": "per-bank record-level DP-SGD target epsilon for the whole run",
    "record_noise_multiplier": "per-bank DP-SGD noise multiplier (instead of --record-epsilon)",
    "record_clip": "DP-SGD per-example gradient clip",
    "dp_backend": "DP-SGD backend: auto | ghost (exact per-example clipping for MLPs) | opacus",
    "delta": "DP delta",
    "target_epsilon": "client-level epsilon budget; the run refuses or stops when exceeded",
    "seed": "random seed (the run is deterministic given it)",
    "out": "run directory (default runs/<timestamp>)",
}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from securefl.config import FIELD_TYPES

    p.add_argument("--config", metavar="FILE", help="TOML config file; flags override it")
    for name, typ in FIELD_TYPES.items():
        flag = "--" + name.replace("_", "-")
        t = str(typ)
        if name in ("dp", "baselines", "secure_mode"):
            continue
        if "tuple[int" in t:
            p.add_argument(flag, type=_int_list, default=None, help=RUN_HELP.get(name))
        elif t.startswith("int"):
            p.add_argument(flag, type=int, default=None, help=RUN_HELP.get(name))
        elif t.startswith("float"):
            p.add_argument(flag, type=float, default=None, help=RUN_HELP.get(name))
        else:
            p.add_argument(flag, type=str, default=None, help=RUN_HELP.get(name))
    p.add_argument("--dp", dest="dp", action="store_true", default=None,
                   help="differential privacy on")
    p.add_argument("--no-dp", dest="dp", action="store_false",
                   help="differential privacy off (for comparison; labelled in every output)")
    p.add_argument("--baselines", action="store_true", default=None,
                   help="also train the centralized and bank-alone baselines")
    p.add_argument("--secure-mode", dest="secure_mode", action="store_true", default=None,
                   help="DP-SGD noise and sampling from the OS CSPRNG (runs are then not "
                   "reproducible; Opacus' own secure mode needs torchcsprng)")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume an interrupted run")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write the compliance report RUN_DIR/report.html at the end "
                   "(render it later with `securefl report RUN_DIR`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def cmd_run(args: argparse.Namespace) -> int:
    from securefl.cli.run import run_command

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securefl",
        description="Federated training across institutions with secure aggregation, "
        "differential privacy and a tamper-evident audit log.",
    )
    parser.add_argument("--version", action="version", version=f"securefl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_run = sub.add_parser("run", help="run a federated training (simulated banks, one machine)")
    _add_run_args(p_run)
    p_run.set_defaults(handler=cmd_run)
    from securefl.cli import extra

    extra.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if args.debug:
        import logging

        logging.basicConfig(level=logging.DEBUG)
        logging.getLogger("securefl").setLevel(logging.DEBUG)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except SecureFLError as err:
        if args.debug:
            raise
        _print_error(err, as_json=bool(getattr(args, "json", False)))
        return exit_code_for(err)
    except KeyboardInterrupt:
        print("securefl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: a bug, not a bad input
        if args.debug:
            raise
        _print_internal(exc, as_json=bool(getattr(args, "json", False)))
        return INTERNAL_ERROR_EXIT


#: exit code of an unexpected (non-securefl) exception: a bug in securefl or a library it uses
INTERNAL_ERROR_EXIT = 1


def _print_internal(exc: BaseException, *, as_json: bool) -> None:
    """One line naming the exception type and where it was raised, never its message (which may
    hold data, e.g. array values), and a hint to rerun with --debug."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/securefl/" in f.filename.replace("\\", "/")]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    place = (f"{where.filename.rsplit('/securefl/', 1)[-1]}:{where.lineno}"
             if where is not None else "unknown")
    message = f"internal error: {type(exc).__name__} at {place}"
    hint = "this is a bug; rerun with --debug for the traceback and report it"
    if as_json:
        print(json.dumps({"error": {"code": "internal", "message": message, "hint": hint}}))
    print(f"securefl: {message}", file=sys.stderr)
    print(f"  hint: {hint}", file=sys.stderr)


def _print_error(err: SecureFLError, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": err.to_dict()}))
    print(f"securefl: error {err.code}: {err.message}", file=sys.stderr)
    print(f"  hint: {err.hint}", file=sys.stderr)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
