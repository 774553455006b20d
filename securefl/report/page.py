"""The compliance report as one self-contained HTML page (issue 20).

No script, no font, no link: the page's Content-Security-Policy allows only inline styles and
``data:`` images, so a browser fetches nothing. Every value from the run directory is escaped. When
the directory fails verification the page says so first, in plain words, and shows no number from it.
"""

from __future__ import annotations

import base64
import html
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from securefl.audit.verify import VerifyReport
    from securefl.report.facts import RunFacts

__all__ = ["render"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#212121;
background:#fafafa;line-height:1.45}
main{max-width:960px;margin:0 auto;padding:1.2em 1.5em 3em}
h1{font-size:1.5em;margin:.6em 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;
border-bottom:1px solid #ccc;padding-bottom:.2em}
.banner{padding:1em 1.5em;font-size:1.05em;color:#fff}
.banner.ok{background:#2e7d32}.banner.weak{background:#f9a825;color:#212121}
.banner.fail{background:#b71c1c}
.banner strong{font-size:1.2em;display:block;margin-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{display:block;max-width:100%;height:auto;margin:.6em 0;background:#fff}
.note{color:#555;font-size:.88em}.warn{color:#b71c1c}
summary{cursor:pointer;color:#1565c0;margin:.3em 0}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    out = ["<table>"]
    if any(head):
        out += ["<tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>")
        out += [f'<td class="num">{_e(c)}</td>' if i >= numeric_from else f"<td>{_e(c)}</td>"
                for i, c in enumerate(row)]
        out.append("</tr>")
    return "".join(out) + "</table>"


def _img(svg: str | None, alt: str) -> str:
    if svg is None:
        return f'<p class="note">{_e(alt)}: nothing recorded to plot.</p>'
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}">'


def _page(title: str, banner: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"{banner}<main>{''.join(body)}</main></body></html>\n")


def render(facts: RunFacts) -> str:
    """The report's HTML for ``facts`` (see :func:`securefl.report.facts.gather`)."""
    if not facts.ok:
        return _failed(facts)
    return _verified(facts)


# ------------------------------------------------------------------------------ failed verification
def _failed(facts: RunFacts) -> str:
    err = facts.error
    code = err.code if err is not None else "?"
    message = err.message if err is not None else "verification did not complete"
    hint = err.hint if err is not None else ""
    banner = ('<div class="banner fail" id="verification" data-status="failed">'
              "<strong>VERIFICATION FAILED: do not rely on this run's results.</strong>"
              "The run directory is not what the log key signed: it was altered, damaged or is "
              "incomplete. None of its numbers (model quality, privacy, participation) can be "
              "trusted, so none are shown.</div>")
    body = [f"<h1>securefl compliance report: {_e(facts.run_dir)}</h1>",
            "<h2>What failed</h2>",
            _table(["check", "result"], [["error code", code], ["first problem found", message],
                                         ["what to do", hint]], numeric_from=9),
            "<p>Reproduce with <code>securefl audit verify "
            f"{_e(facts.run_dir)}</code>. Ask the federation's server operator for the original run "
            "directory, or for the signed checkpoints the banks kept, and verify again against "
            "the server key pinned from the federation manifest (<code>--manifest</code>).</p>"]
    return _page("securefl report: VERIFICATION FAILED", banner, body)


# ------------------------------------------------------------------------------ verified run
def _verified(facts: RunFacts) -> str:
    from securefl.report import plots

    v = facts.verified
    if v is None:
        return _failed(facts)
    cfg = facts.config
    banks = [b.get("name", "?") for b in facts.members.get("banks", []) if isinstance(b, dict)]
    banks = banks or sorted({p for r in facts.rounds for p in r.participants})
    if v.key_pinned:
        banner = ('<div class="banner ok" id="verification" data-status="verified">'
                  "<strong>VERIFIED against the pinned server key.</strong>"
                  f"The run directory is exactly what key {_e(v.key_fingerprint)} "
                  f"({_e(v.key_source)}) signed.</div>")
    else:
        banner = ('<div class="banner weak" id="verification" data-status="verified-unpinned">'
                  "<strong>VERIFIED, but only for internal consistency.</strong>"
                  f"The log key {_e(v.key_fingerprint)} was taken from the run directory itself, so a "
                  "directory rewritten and re-signed with another key would verify too. Render the "
                  "report with the key pinned: <code>securefl report RUN_DIR --manifest "
                  "manifest.json</code> (or <code>--key</code>).</div>")
    record_target, client_target = _targets(cfg)
    body = [f"<h1>securefl compliance report: {_e(facts.run_dir)}</h1>",
            _summary(facts, v, banks),
            "<h2>Model quality per round</h2>",
            '<p class="note">Read from the signed round records (the run directory holds no '
            "evaluation data, so these numbers are the server's measurement on its global test "
            "split, signed into the log; they cannot be recomputed here).</p>",
            _img(plots.quality_plot(facts), "model quality per round"),
            "<details><summary>every round's metrics</summary>", _quality_table(facts),
            "</details>",
            _baselines(facts),
            "<h3>Calibration of the predicted default probabilities</h3>",
            _img(plots.reliability_plot(facts), "reliability curve"),
            _checks(facts),
            "<h2>Privacy spent: epsilon per round</h2>",
            _privacy(facts, record_target, client_target),
            _img(plots.epsilon_plot(facts, record_target, client_target), "epsilon per round"),
            "<h2>Participation and dropouts</h2>",
            _img(plots.participation_plot(facts, banks), "participation per round"),
            _participation_table(facts),
            "<h2>Audit verification</h2>",
            _audit(facts, v),
            "<h2>Assumptions and what each guarantee depends on</h2>",
            _assumptions(facts),
            "<h2>Resolved configuration</h2>",
            '<p class="note">config.json, bound into every record by its sha256.</p>',
            _table(["option", "value"], [[k, _e_json(cfg[k])] for k in sorted(cfg)],
                   numeric_from=9)]
    return _page(f"securefl report: {facts.run_dir}", banner, body)


def _e_json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _targets(cfg: dict[str, Any]) -> tuple[float | None, float | None]:
    from securefl.config import DEFAULT_RECORD_EPSILON

    if not cfg.get("dp"):
        return None, None
    record = cfg.get("record_epsilon")
    if record is None and cfg.get("record_noise_multiplier") is None:
        record = DEFAULT_RECORD_EPSILON
    client = cfg.get("target_epsilon")
    return (float(record) if isinstance(record, int | float) else None,
            float(client) if isinstance(client, int | float) else None)


def _summary(facts: RunFacts, v: VerifyReport, banks: list[str]) -> str:
    cfg, m = facts.config, facts.members
    sizes = {b.get("name"): b.get("train_examples") for b in m.get("banks", [])
             if isinstance(b, dict)}
    test_rows = sum(b.n for b in facts.reliability)
    agg = cfg.get("aggregation", "?")
    rows = [["federation (log origin)", v.origin],
            ["members", ", ".join(f"{b} ({sizes[b]} training rows)" if sizes.get(b) else b
                                  for b in banks)],
            ["aggregation", f"{agg}" + (" (INSECURE: the server saw every update)"
                                        if agg == "plain" else "")],
            ["differential privacy", "on" if cfg.get("dp") else "OFF (comparison only)"],
            ["data", f"{m.get('data_source', 'not recorded')}; task {m.get('task', '?')}; "
                     f"{m.get('n_features', '?')} features after encoding"
                     + (f"; global test split {test_rows} rows" if test_rows else "")],
            ["model", f"{cfg.get('model', '?')}" + (f" hidden {cfg.get('hidden')}"
                                                    if cfg.get("model") == "mlp" else "")],
            ["rounds", f"{len(facts.committed)} committed, {v.rounds_aborted} aborted"
                       + ("" if v.has_result else " (the run has not finished: no result.json)")]]
    return ("<h2>Summary</h2>" + _table(["", ""], rows, numeric_from=9)
            + f"<p><strong>Threat model.</strong> {_e(_threat_model(facts))}</p>")


def _threat_model(facts: RunFacts) -> str:
    cfg = facts.config
    agg, c = cfg.get("aggregation"), cfg.get("colluders", 0)
    if agg == "secagg":
        who = "any bank" if not c else f"more than {c} bank(s)"
        what = ("The aggregation server is treated as malicious; with secure aggregation "
                "(SecAgg/SecAgg+ masking) it learns only the sum of the surviving banks' updates, "
                f"unless it colludes with {who} (the federation assumes c = {c} colluders).")
    elif agg == "ckks":
        from securefl.aggregators.ckks import TRUST_ASSUMPTION

        what = (f"Updates are encrypted under CKKS; the key holder decrypts only the aggregate. "
                f"Trust: {TRUST_ASSUMPTION}.")
    else:
        what = ("INSECURE comparison mode: the server saw every bank's update in the clear; "
                "no protection of individual updates.")
    dp = (" The released models carry differential privacy at record level (DP-SGD inside each "
          "bank) and client level (noise shares on the sum); epsilons are below."
          if cfg.get("dp") else " Differential privacy was OFF: the models carry no formal "
          "privacy guarantee.")
    return (what + dp + " Out of scope: a bank poisoning the sum, side channels, fake "
            "identities at enrolment (the federation manifest is the PKI).")


def _metric_names(metrics: list[dict[str, float]]) -> list[str]:
    """Headline metric names, ranking and calibration first, in a fixed order."""
    from securefl.fl.metrics import CLASSIFICATION_METRICS, headline_metrics

    order = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", *CLASSIFICATION_METRICS)
    names = {k for m in metrics for k in headline_metrics(m)}
    return sorted(names, key=lambda k: (order.index(k) if k in order else len(order), k))


def _quality_table(facts: RunFacts) -> str:
    names = _metric_names([r.metrics for r in facts.rounds])
    rows = [[str(r.round), r.status, *(_num(r.metrics.get(k)) for k in names)]
            for r in facts.rounds]
    return _table(["round", "status", *names], rows, numeric_from=2)


def _baselines(facts: RunFacts) -> str:
    if not facts.baselines:
        return '<p class="note">No baselines in this run (<code>securefl run --baselines</code>).</p>'
    names = _metric_names(list(facts.baselines.values()))
    rows = [[n, *(_num(m.get(k)) for k in names)] for n, m in sorted(facts.baselines.items())]
    last = facts.committed[-1].metrics if facts.committed else {}
    rows.insert(0, ["federated (last round, signed record)", *(_num(last.get(k)) for k in names)])
    return ("<h3>Baselines</h3>" + _table(["model", *names], rows)
            + '<p class="note">Baselines (centralized; each bank alone) are not in the audit log: '
              "they come from result.json, whose signature by the log key verified, but they "
              "cannot be re-derived from the log or the ledger.</p>")


def _checks(facts: RunFacts) -> str:
    if not facts.reliability:
        return ('<p class="note">No reliability curve in the records (a regression run, or a run '
                "from a securefl version that did not record it).</p>")
    items = "".join(f"<li>{'passed' if ok else '<span class=warn>FAILED</span>'}: {_e(what)}</li>"
                    for what, ok in facts.checks)
    return (f"<ul>{items}</ul>" if items else "") + (
        '<p class="note">10 equal-width bins of the predicted probability; each point is a bin\'s '
        "mean prediction against the observed default rate in it. ECE is the row-weighted mean "
        "distance from the diagonal.</p>")


def _privacy(facts: RunFacts, record_target: float | None, client_target: float | None) -> str:
    p = facts.privacy
    if not p:
        return ("<p class=\"warn\">No privacy ledger entries: this run released its models without "
                "differential privacy.</p>")
    rows = [["federation", "client", _num(p["federation"]["client"]["epsilon"]),
             _num(client_target) if client_target is not None else "none set"]]
    for bank, lv in sorted(p["banks"].items()):
        rows.append([bank, "record", _num(lv["record"]["epsilon"]) if lv["record"]["entries"]
                     else "no DP-SGD", _num(record_target) if record_target is not None else "-"])
        rows.append([bank, "client", _num(lv["client"]["epsilon"]), _num(client_target)
                     if client_target is not None else "none set"])
    warnings = "".join(f"<li>{_e(w)}</li>" for w in p.get("warnings", []))
    return (f"<p>Recomputed from ledger.jsonl with the RDP accountant at delta {_e(p['delta'])} "
            f"({_e(p['entries'])} ledger entries; head {_e(str(p['head_hash'])[:16])}). "
            "Other accountants: <code>securefl privacy report RUN_DIR --accountant pld</code>.</p>"
            + _table(["party", "level", "epsilon spent", "target"], rows, numeric_from=2)
            + (f'<ul class="warn">{warnings}</ul>' if warnings else ""))


def _participation_table(facts: RunFacts) -> str:
    rows = []
    for r in facts.rounds:
        drops = ", ".join(f"{b} at {st}" for b, st in sorted(r.dropouts.items())) or "none"
        rows.append([str(r.round), r.status + (f" ({r.error_code})" if r.error_code else ""),
                     f"{len(r.survivors)}/{len(r.participants)}", drops])
    return _table(["round", "status", "summed / asked", "dropped (stage)"], rows, numeric_from=9)


def _audit(facts: RunFacts, v: VerifyReport) -> str:
    claims = ", ".join(v.claims_checked) or "none"
    rows = [["result", "verified: every signature, Merkle proof, hash chain, file and result claim"],
            ["checked against key", f"{v.key_fingerprint} from {v.key_source}"],
            ["what this proves", v.assurance],
            ["log", f"tree size {v.tree_size}, root {v.root_hash}"],
            ["result.json claims re-derived", claims],
            ["not re-derivable", ", ".join(v.claims_unchecked) or "none"],
            ["files checked", str(len(v.files_checked))]]
    return (_table(["", ""], rows, numeric_from=9)
            + "<p>Latest signed checkpoint (RFC 9162-style note; banks keep these to catch a "
              "forked or rewritten log):</p>" + f"<pre>{_e(facts.checkpoint)}</pre>"
            + '<p class="note">This report is derived from the run directory and is not itself '
              "evidence: anyone can render it again with <code>securefl report RUN_DIR</code>.</p>")


def _assumptions(facts: RunFacts) -> str:
    cfg, p = facts.config, facts.privacy
    c = cfg.get("colluders", 0)
    agg = cfg.get("aggregation")
    sources = p.get("noise_sources", {}) if p else {}
    rows = [["colluding banks (c)", str(c),
             "secure aggregation hides each update only if at most c banks collude with the "
             "server; the client-level noise is sized so the honest banks' shares alone carry it"],
            ["dropouts tolerated", "as they happened (a deployment; the manifest states the "
             "fraction)" if "deployment" in cfg else
             f"simulated dropout probability {cfg.get('dropout', 0)}",
             "a round needs its threshold of survivors; a round below it aborts and releases "
             "nothing (recorded above)"],
            ["key holder", "CKKS key holder, assumed not to collude with the server"
             if agg == "ckks" else "none (no decryption key in this mode)",
             "CKKS confidentiality" if agg == "ckks" else "-"],
            ["record-level epsilon", ", ".join(sources.get("record", [])) or "-",
             "DP-SGD noise must be unpredictable to the attacker: seeded or non-cryptographic "
             "sources (a simulation) are not a deployment's guarantee"],
            ["client-level epsilon", ", ".join(sources.get("client", [])) or "-",
             f"at most {p.get('colluders', c) if p else c} colluders subtract their own noise "
             "shares; every bank counted in every round"],
            ["audit", "server key", "the verification above is as strong as the key it was "
                                    "checked against (pin it from the manifest)"]]
    return _table(["assumption", "this run", "what depends on it"], rows, numeric_from=9)
