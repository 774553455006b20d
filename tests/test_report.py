"""Issue 20: what `securefl report` shows, where each number comes from, and what it refuses to show.

The browser rendering is tests/test_report_browser.py; here the HTML and the verified facts behind
it are checked against the run directory's own files, read independently of securefl.report.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import resign_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.audit.note import NoteVerifier
from securefl.audit.verify import verify_run_dir
from securefl.cli.main import main
from securefl.crypto.signing import SigningKey
from securefl.dp.ledger import Ledger
from securefl.dp.report import privacy_report
from securefl.errors import AuditError
from securefl.report import REPORT_FILE, build_report, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from securefl.config import RunConfig
    from securefl.runtime import run

    d = tmp_path_factory.mktemp("rep") / "run"
    run(RunConfig(rounds=2, model="logreg", aggregation="plain", dp=True, seed=5, out=str(d)))
    return d


@pytest.fixture
def copy(run_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    return d


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "audit" / "log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[1:]]


def test_model_numbers_are_the_signed_records_and_epsilons_the_ledgers(run_dir: Path) -> None:
    html, facts = build_report(run_dir)
    assert facts.ok and 'data-status="verified-unpinned"' in html
    records = _records(run_dir)
    for rec in records:  # every round's headline metrics, as the signed record states them
        for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
            assert f">{rec['metrics'][name]:.4f}<" in html, (rec["round"], name)
    last = records[-1]["metrics"]
    bins = {k: v for k, v in last.items() if k.startswith("reliability/")}
    assert [(b.index, b.n, b.predicted, b.observed) for b in facts.reliability] == [
        (int(k.split("/")[1]), int(bins[k]), bins[k.replace("/n", "/predicted")],
         bins[k.replace("/n", "/observed")]) for k in sorted(bins) if k.endswith("/n")]
    # epsilon: the ledger file replayed by the privacy report, at config.json's delta
    delta = json.loads((run_dir / "config.json").read_text())["delta"]
    replay = privacy_report(Ledger.load(run_dir / "ledger.jsonl"), delta, "rdp")
    fed = replay["federation"]["client"]["epsilon"]
    assert facts.epsilon[-1].federation_client == fed
    for bank, levels in replay["banks"].items():
        assert facts.epsilon[-1].bank_record[bank] == levels["record"]["epsilon"]
        assert f">{levels['record']['epsilon']:.4f}<" in html
    # after round 1, only round 1's ledger lines count
    n1 = len(records[0]["ledger_entries_sha256"])
    lines = (run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)[:n1]
    first = privacy_report(Ledger.from_bytes(b"".join(lines)), delta, "rdp")
    assert facts.epsilon[0].round == 1
    assert facts.epsilon[0].federation_client == first["federation"]["client"]["epsilon"] < fed


def test_a_regression_run_without_dp_says_so(tmp_path: Path) -> None:
    from securefl.config import RunConfig
    from securefl.runtime import run

    d = tmp_path / "reg"
    run(RunConfig(rounds=1, model="logreg", aggregation="plain", dp=False, label="LIMIT_BAL",
                  out=str(d)))
    html, facts = build_report(d)
    assert facts.ok and facts.privacy == {} and facts.reliability == []
    assert re.findall(r'<img alt="([^"]+)"', html) == ["model quality per round",
                                                       "participation per round"]
    assert "released its models without differential privacy" in html
    assert "INSECURE comparison mode" in html
    r2 = _records(d)[0]["metrics"]["r2"]
    assert f">{r2:.4f}<" in html


def test_the_page_is_self_contained(run_dir: Path) -> None:
    html, _ = build_report(run_dir)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html and "url(" not in html
    assert re.search(r'http-equiv="Content-Security-Policy" content="default-src \'none\'', html)
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert len(srcs) == 4 and all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert not re.search(r'\bhref="', html)


def test_a_tampered_directory_gets_the_banner_and_no_numbers(copy: Path) -> None:
    rec = _records(copy)[-1]
    lines = (copy / "metrics.jsonl").read_bytes().split(b"\n")
    lines[-2] = lines[-2].replace(b'"roc_auc":0.', b'"roc_auc":1.', 1)
    (copy / "metrics.jsonl").write_bytes(b"\n".join(lines))
    html, facts = build_report(copy)
    assert not facts.ok and isinstance(facts.error, AuditError)
    assert 'data-status="failed"' in html
    assert html.index("VERIFICATION FAILED") < html.index("<main>")  # at the top
    assert "<img" not in html
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        assert f"{rec['metrics'][name]:.4f}" not in html
    assert "epsilon spent" not in html


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=st.sampled_from(["ledger.jsonl", "audit/log.jsonl", "audit/checkpoints", "metrics.jsonl",
                            "result.json", "config.json", "federation.json", "COMMIT"]),
       where=st.floats(0.0, 1.0, exclude_max=True), flip=st.integers(1, 255))
def test_any_changed_byte_gives_a_failed_report_without_numbers(
        run_dir: Path, tmp_path: Path, rel: str, where: float, flip: int) -> None:
    """Property: one byte changed anywhere in a signed or hashed file, and the report shows the
    failure banner, no plot and none of the run's numbers."""
    d = tmp_path / f"flip-{rel.replace('/', '_')}-{where}-{flip}"
    shutil.copytree(run_dir, d)
    data = bytearray((d / rel).read_bytes())
    data[int(where * len(data))] ^= flip
    (d / rel).write_bytes(bytes(data))
    html, facts = build_report(d)
    assert not facts.ok
    assert 'data-status="failed"' in html and "<img" not in html and "epsilon spent" not in html
    shutil.rmtree(d)


def test_a_result_json_rewritten_and_resigned_is_a_failed_report(copy: Path) -> None:
    """The report never takes a number from result.json unchecked: a re-signed false claim fails."""
    key = SigningKey.from_pem((copy / "keys/server.key").read_bytes())
    resign_result(copy, key, lambda res: res["final_metrics"].update(roc_auc=0.99))
    html, facts = build_report(copy)
    assert not facts.ok and "claim final_metrics: roc_auc" in html


def test_cli_report_pinned_unpinned_and_failed(copy: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(copy), "--out", str(out)]) == 0
    assert 'data-status="verified-unpinned"' in out.read_text()
    assert "NOT pinned" in capsys.readouterr().out
    server_key = json.loads((copy / "federation.json").read_text())["server_key"]
    assert main(["report", str(copy), "--pubkey", server_key]) == 0
    pinned = (copy / REPORT_FILE).read_text()
    assert 'data-status="verified"' in pinned and "VERIFIED against the pinned server key" in pinned
    verify_run_dir(copy)  # report.html in the run directory is allowed (derived, not evidence)
    other = NoteVerifier(server_key.split("+", 1)[0], SigningKey.generate().verify_key)
    assert main(["report", str(copy), "--pubkey", other.to_string()]) != 0
    assert 'data-status="failed"' in (copy / REPORT_FILE).read_text()
    assert "VERIFICATION FAILED" in capsys.readouterr().err


def test_only_the_report_is_allowed_beside_the_verified_files(copy: Path) -> None:
    write_report(copy)
    verify_run_dir(copy)
    (copy / "notes.html").write_text("x")
    with pytest.raises(AuditError, match=r"notes\.html: unexpected file"):
        verify_run_dir(copy)
