"""The report's figures, drawn with matplotlib (imported here only, lazily) as SVG.

Each function returns SVG text (text drawn as paths, no fonts or links to fetch) for a data URI, so
the HTML page stays one self-contained file. Matplotlib runs headless (a bare ``Figure``'s SVG
writer, no pyplot), with a fixed hash salt and no date so the same run gives the same bytes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec

if TYPE_CHECKING:
    from securefl.report.facts import RunFacts

__all__ = ["epsilon_plot", "participation_plot", "quality_plot", "reliability_plot"]

P = ParamSpec("P")
_WIDTH, _HEIGHT = 7.2, 3.4  # inches; at 72 pt/inch about 520 x 245 CSS pixels


_STYLE: dict[Any, Any] = {"svg.fonttype": "path", "svg.hashsalt": "securefl-report", "font.size": 9}


def _styled(draw: Callable[P, str | None]) -> Callable[P, str | None]:
    """Draw inside matplotlib's rc_context (the caller's global matplotlib settings stay as they
    were; no pyplot, no backend switch: a bare Figure renders SVG by itself)."""
    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str | None:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _figure(ncols: int = 1, height: float = _HEIGHT) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_WIDTH, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _svg(fig: Any) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "securefl report"})
    return buf.getvalue()


#: (left panel, right panel) of the quality plot per task: (metric, label) pairs
_QUALITY = {"classification": ((("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")),
                               (("log_loss", "log-loss"), ("brier", "Brier score"))),
            "regression": ((("r2", "R^2"),), (("rmse", "RMSE"), ("mae", "MAE")))}


@_styled
def quality_plot(facts: RunFacts) -> str | None:
    """Per committed round: ROC-AUC and PR-AUC (left), log-loss and Brier (right) for a
    classification run, R^2 (left), RMSE and MAE (right) for a regression run; the baselines' final
    values of the left panel's first metric as dashed lines when the run has them."""
    task = "classification" if any("roc_auc" in r.metrics for r in facts.committed) else "regression"
    (left_keys, right_keys) = _QUALITY[task]
    main = left_keys[0][0]
    rounds = [r for r in facts.committed if main in r.metrics]
    if not rounds:
        return None
    fig, (left, right) = _figure(2)
    x = [r.round for r in rounds]
    for key, label in left_keys:
        if all(key in r.metrics for r in rounds):
            left.plot(x, [r.metrics[key] for r in rounds], marker="o", label=f"federated {label}")
    for name, m in sorted(facts.baselines.items()):
        if main in m:
            left.axhline(m[main], linestyle="--" if name == "centralized" else ":", linewidth=1,
                         color="black" if name == "centralized" else "grey",
                         label=f"{name} {left_keys[0][1]}")
    left.set(xlabel="round", ylabel="global test split", title="ranking quality"
             if task == "classification" else "fit")
    left.legend(fontsize=6, loc="lower right")
    for key, label in right_keys:
        if all(key in r.metrics for r in rounds):
            right.plot(x, [r.metrics[key] for r in rounds], marker="o", label=label)
    right.set(xlabel="round", title="probability quality (lower is better)"
              if task == "classification" else "error (lower is better)")
    right.legend(fontsize=7)
    return _svg(fig)


@_styled
def reliability_plot(facts: RunFacts) -> str | None:
    """The last committed round's reliability curve: mean predicted probability of default per bin
    against the observed default rate, the diagonal being perfect calibration."""
    curve = facts.reliability
    if not curve:
        return None
    fig, (ax,) = _figure(1, height=3.6)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    total = sum(b.n for b in curve)
    ax.plot([b.predicted for b in curve], [b.observed for b in curve], marker="o",
            label="federated model (last round)")
    for b in curve:
        ax.annotate(f"{b.n / total:.0%}", (b.predicted, b.observed), fontsize=6,
                    textcoords="offset points", xytext=(4, -9))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability (bin)",
           ylabel="observed default rate", title="reliability (labels: share of test rows)")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper left")
    return _svg(fig)


@_styled
def epsilon_plot(facts: RunFacts, record_target: float | None,
                 client_target: float | None) -> str | None:
    """Epsilon spent so far after each round, recomputed from the ledger: record level per bank
    (left) and client level for the federation and each bank (right), with the target budgets."""
    eps = facts.epsilon
    if not eps:
        return None
    fig, (rec_ax, cli_ax) = _figure(2)
    x = [e.round for e in eps]
    banks = sorted({b for e in eps for b in (*e.bank_record, *e.bank_client)})
    for b in banks:
        ys = [e.bank_record.get(b) for e in eps]
        if any(y is not None for y in ys):
            rec_ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", label=b)
    if record_target is not None:
        rec_ax.axhline(record_target, color="red", linestyle="--", linewidth=1,
                       label=f"target {record_target:g}")
    rec_ax.set(xlabel="round", ylabel="epsilon", title="record level (one bank's customer)")
    rec_ax.legend(fontsize=6)
    fed = [e.federation_client for e in eps]
    if any(y is not None for y in fed):
        cli_ax.plot(x, [float("nan") if y is None else y for y in fed], marker="o",
                    label="federation", color="black")
        for b in banks:
            ys = [e.bank_client.get(b) for e in eps]
            if any(y is not None and y != f for y, f in zip(ys, fed, strict=True)):
                cli_ax.plot(x, [float("nan") if y is None else y for y in ys], marker=".",
                            label=b)
        if client_target is not None:
            cli_ax.axhline(client_target, color="red", linestyle="--", linewidth=1,
                           label=f"target {client_target:g}")
        cli_ax.set_yscale("log")
        cli_ax.legend(fontsize=6)
    else:
        cli_ax.text(0.5, 0.5, "no client-level noise recorded", ha="center", va="center")
    cli_ax.set(xlabel="round", title="client level (a whole bank)")
    return _svg(fig)


#: colours of the participation timeline
_COLOURS = {"survived": "#2e7d32", "dropped": "#ef6c00", "not sampled": "#e0e0e0",
            "aborted": "#c62828"}


@_styled
def participation_plot(facts: RunFacts, banks: list[str]) -> str | None:
    """Who took part in each round and who dropped out at which stage (the stage is written in
    the cell); an aborted round's cells are red."""
    if not facts.rounds or not banks:
        return None
    from matplotlib.patches import Patch, Rectangle

    fig, (ax,) = _figure(1, height=max(1.8, 0.45 * len(banks) + 1.2))
    for rec in facts.rounds:
        for j, bank in enumerate(banks):
            if bank not in rec.participants:
                state, text = "not sampled", ""
            elif rec.status == "aborted":
                state, text = "aborted", rec.dropouts.get(bank, "")
            elif bank in rec.dropouts:
                state, text = "dropped", rec.dropouts[bank]
            else:
                state, text = "survived", ""
            ax.add_patch(Rectangle((rec.round - 0.45, j - 0.4), 0.9, 0.8, color=_COLOURS[state]))
            if text:
                ax.text(rec.round, j, text[:10], ha="center", va="center", fontsize=5,
                        color="white")
    ax.set(xlim=(0.5, facts.rounds[-1].round + 0.5), ylim=(-0.6, len(banks) - 0.4),
           xlabel="round", title="participation per round (dropouts name their stage)")
    ax.set_yticks(range(len(banks)), banks, fontsize=7)
    ax.invert_yaxis()
    ax.legend(handles=[Patch(color=c, label=s) for s, c in _COLOURS.items()], fontsize=6,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)
