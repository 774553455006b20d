"""``securefl run``: resolve the configuration, run, show progress, print the result."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefl.config import FIELD_TYPES, resolve

if TYPE_CHECKING:
    from securefl.result import RoundReport, RunResult


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in FIELD_TYPES}


def run_command(args: argparse.Namespace) -> int:
    from securefl.runtime import run

    overrides = _overrides(args)
    if args.resume:
        config = _resume_config(args, overrides)
    else:
        if overrides.get("out") is None:
            overrides["out"] = time.strftime("runs/%Y%m%d-%H%M%S")
        config = resolve(args.config, overrides)
    interactive = sys.stderr.isatty() and not args.json
    label = _label(config.to_dict())
    if interactive:
        result = _run_with_progress(config, label, resume=args.resume)
    else:
        result = run(config, resume=args.resume)
    report = _write_report(Path(result.run_dir)) if args.report else None
    if args.json:
        from securefl.cli.main import print_json

        print_json(result.to_dict())
    else:
        print(format_result(result, configured_task=config.task))
        if report is not None:
            print(f"report: {report}  (securefl report RUN_DIR renders it again)")
    return 0


def _write_report(run_dir: Any) -> Any:
    """The compliance report of the finished run (it verifies the directory first; a run directory
    that fails verification right after the run is a bug, so it is raised, not hidden)."""
    from securefl.report import write_report

    path, facts = write_report(run_dir)
    if facts.error is not None:
        raise facts.error
    return path


def _resume_config(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """A resumed run uses the configuration stored in its directory; other flags are refused."""
    import json
    from pathlib import Path

    from securefl.config import from_mapping
    from securefl.errors import ConfigError

    given = sorted(k for k, v in overrides.items() if v is not None)
    if given or args.config:
        named = ", ".join(given) or "--config"
        raise ConfigError(f"--resume takes no other run options (got {named})",
                          hint="the stored config.json of the run is used")
    path = Path(args.resume) / "config.json"
    if not path.exists():
        raise ConfigError(f"nothing to resume: {path} does not exist",
                          hint="the run was stopped before it wrote anything; start it again "
                          "with its original command")
    try:
        stored = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is not a configuration")
    return from_mapping({**stored, "out": str(args.resume)}, source=str(path))


def _label(cfg: dict[str, Any]) -> str:
    parts = [str(cfg["aggregation"])]
    if cfg["aggregation"] == "plain":
        parts.append("INSECURE")
    parts.append("DP" if cfg["dp"] else "NO-DP")
    return " ".join(parts)


def _round_line(rep: RoundReport, rounds: int) -> str:
    """One finished round, as printed above the progress bar."""
    m = rep.metrics
    main = (f"AUC {m['roc_auc']:.4f}" if "roc_auc" in m
            else f"RMSE {m.get('rmse', float('nan')):.4g}")
    eps = "".join(f"  eps[{k}] {v:.4g}" for k, v in rep.epsilon.items())
    drop = f"  dropped {len(rep.dropouts)}" if rep.dropouts else ""
    aborted = f"  ABORTED: {rep.aborted} {rep.error or ''}".rstrip() if rep.aborted else ""
    return f"round {rep.round}/{rounds}  {main}{eps}{drop}{aborted}  ({rep.seconds:.1f} s)"


def _phase_text(round_: int, rounds: int, what: str, detail: str) -> str:
    where = f"round {round_}/{rounds}: " if round_ else ""
    return f"{where}{what}" + (f" - {detail}" if detail else "")


def _run_with_progress(config: Any, label: str, *, resume: str | None) -> RunResult:
    """The run with a live status line on stderr (what the run is doing now: loading data,
    calibrating noise, training bank k/n, protecting + aggregating, committing, ...) and one line
    per finished round. Only used on a terminal and never with --json."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from securefl.runtime import run

    rounds = config.rounds
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} rounds"), TimeElapsedColumn(),
                  TextColumn("{task.fields[doing]}", markup=False),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"securefl run ({label})", total=rounds, doing="starting")

        def on_phase(round_: int, what: str, detail: str) -> None:
            bar.update(task, doing=_phase_text(round_, rounds, what, detail), refresh=True)

        def on_round(rep: RoundReport) -> None:
            bar.console.print(_round_line(rep, rounds), markup=False, highlight=False)
            bar.update(task, completed=rep.round, doing="", refresh=True)

        result = run(config, progress=on_round, resume=resume, phase=on_phase)
        bar.update(task, doing="done", refresh=True)
        return result


def _privacy_lines(privacy: dict[str, Any]) -> list[str]:
    if not privacy:
        return ["privacy: NO differential privacy (--no-dp); for comparison only"]
    fed = privacy["federation"]["client"]
    lines = [f"privacy (delta {privacy['delta']:g}, {privacy['accountant']}): client-level "
             f"epsilon {fed['epsilon']:.4g}" if fed.get("epsilon") is not None else
             "privacy: no client-level noise"]
    for bank, levels in privacy["banks"].items():
        rec = levels["record"].get("epsilon")
        if rec is not None:
            lines.append(f"  {bank}: record-level epsilon {rec:.4g}")
    lines += [f"  ! {w}" for w in privacy.get("warnings", [])]
    lines.append("  recompute: securefl privacy report RUN_DIR [--accountant rdp|prv|pld]")
    return lines


def _metrics_text(metrics: dict[str, float]) -> str:
    """The headline metrics on one line (the reliability curve's bins are in --json, result.json
    and the report)."""
    from securefl.fl.metrics import headline_metrics

    return ", ".join(f"{k} {v:.4f}" for k, v in headline_metrics(metrics).items())


def format_result(result: RunResult, *, configured_task: str | None = None) -> str:
    """The run's result for a terminal; ``configured_task`` is the task the configuration asked
    for (``auto``: inferred from the label)."""
    how = "inferred from the label" if configured_task == "auto" else "as configured"
    lines = [f"securefl run: {result.rounds_completed} rounds, task={result.task} ({how}), "
             f"aggregation={result.aggregation}"
             + (" (INSECURE: the server saw every update)" if result.insecure else "")
             + (", DP on" if result.dp else ", NO DP (comparison only)"),
             f"run directory: {result.run_dir}"]
    if result.aggregation == "ckks":
        from securefl.aggregators.ckks import TRUST_ASSUMPTION

        lines.append(f"trust: {TRUST_ASSUMPTION}")
    if result.stopped_early:
        lines.append(f"stopped early: {result.stopped_early}")
    lines.append("global test: " + _metrics_text(result.final_metrics))
    for name, metrics in result.baselines.items():
        lines.append(f"baseline {name}: " + _metrics_text(metrics))
    lines += _privacy_lines(result.privacy)
    lines.append(f"model sha256: {result.model_sha256}  ({result.seconds or 0.0:.1f} s)")
    return "\n".join(lines)
