"""``securefl report``: a run's compliance report, one self-contained HTML file (issue 20).

For risk and compliance officers: what was trained on whose data, how good the model got (with its
calibration), what privacy it cost each bank and the federation per round, who took part and who
dropped out, whether the audit log verifies and against which key, the stated assumptions and the
resolved configuration. Every number is verified first (:mod:`securefl.report.facts`); a directory
that fails verification gets a report that says so at the top and shows none of its numbers.

``securefl run`` writes ``RUN_DIR/report.html`` at the end (``--no-report`` turns it off), so does a
deployment's server; any auditor renders it again from a copied run directory. The file in the run
directory is derived, not evidence (``securefl audit verify`` does not read it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from securefl.audit.layout import REPORT as REPORT_FILE

if TYPE_CHECKING:
    from securefl.crypto.signing import VerifyKey
    from securefl.report.facts import RunFacts

__all__ = ["REPORT_FILE", "build_report", "write_report"]

def build_report(run_dir: Path, *, pubkey: VerifyKey | None = None,
                 key_source: str | None = None) -> tuple[str, RunFacts]:
    """The report's HTML and the verified facts it shows (``facts.ok`` False: verification failed,
    ``facts.error`` says why, and the HTML shows no number from the directory)."""
    from securefl.report.facts import gather
    from securefl.report.page import render

    facts = gather(Path(run_dir), pubkey=pubkey, key_source=key_source)
    return render(facts), facts


def write_report(run_dir: Path, out: Path | None = None, *, pubkey: VerifyKey | None = None,
                 key_source: str | None = None) -> tuple[Path, RunFacts]:
    """Render the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``), atomically."""
    from securefl.storage import atomic_write_bytes

    text, facts = build_report(run_dir, pubkey=pubkey, key_source=key_source)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_bytes(path, text.encode("utf-8"))
    return path, facts
