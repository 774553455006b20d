"""Issue 20, "Done means": the compliance report of a short real run, rendered in headless Chromium.

Debian's chromium (``apt-get install chromium``; `.ci/run` installs it) driven by Playwright's Python
package at that executable (no browser download). The page must load without console errors or
requests beyond the file itself, show the verification status and the plots as non-empty images of
sensible size; a screenshot is taken. A tampered copy of the run directory shows the failure banner
and no plot. These tests FAIL (never skip) when chromium or Playwright is missing.

Marked slow: about 30 s of CPU together (the run with baselines about 20 s, chromium about 5 s);
measured 181 s wall on the shared 2-core machine at load 9-12.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: a short real run: 3 rounds, dropouts (one round aborts at seed 3), baselines
RUN_FLAGS = ["--rounds", "3", "--model", "logreg", "--baselines", "--dropout", "0.3", "--seed", "3"]


def _securefl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securefl", *args], capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`securefl run` writes the report at the end by default."""
    d = tmp_path_factory.mktemp("report") / "run"
    proc = _securefl("run", *RUN_FLAGS, "--out", str(d))
    assert proc.returncode == 0, proc.stderr
    assert f"report: {d / 'report.html'}" in proc.stdout
    return d


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                    "installs it): the report's browser test cannot run")
    from playwright.sync_api import sync_playwright  # the test extra; an ImportError fails too

    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # root: chromium's sandbox refuses
        b = pw.chromium.launch(executable_path=exe, args=args, headless=True)
        try:
            yield b
        finally:
            b.close()


class Loaded:
    def __init__(self, page: Any, errors: list[str], requests: list[str]) -> None:
        self.page, self.errors, self.requests = page, errors, requests


def _open(browser: Any, report: Path) -> Loaded:
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.resolve().as_uri(), wait_until="load")
    return Loaded(page, errors, requests)


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    return len(colours) if colours is not None else 1 << 16


@pytest.mark.slow
def test_report_of_a_real_run_renders_in_chromium(run_dir: Path, browser: Any,
                                                   tmp_path: Path) -> None:
    report = run_dir / "report.html"
    shown = _open(browser, report)
    page = shown.page
    assert shown.errors == []
    # one request: the file itself (images are data: URIs, nothing else is fetched)
    assert [u for u in shown.requests if not u.startswith("data:")] == [report.resolve().as_uri()]

    status = page.locator("#verification")
    assert status.get_attribute("data-status") == "verified-unpinned"
    assert "VERIFIED" in status.inner_text()
    assert status.is_visible() and status.bounding_box()["y"] < 50  # at the top

    images = page.locator("img")
    alts = [images.nth(i).get_attribute("alt") for i in range(images.count())]
    assert alts == ["model quality per round", "reliability curve", "epsilon per round",
                    "participation per round"]
    for i in range(images.count()):
        img = images.nth(i)
        w, h, done = img.evaluate("e => [e.naturalWidth, e.naturalHeight, e.complete]")
        assert done and w >= 400 and h >= 150, (alts[i], w, h)
        box = img.bounding_box()
        assert box is not None and box["width"] >= 400 and box["height"] >= 150, (alts[i], box)
        # drawn, not blank: a plot has axes, lines and text in many colours
        assert _distinct_colours(img.screenshot()) > 20, alts[i]

    text = page.inner_text("body")
    for heading in ("Model quality per round", "Calibration of the predicted default "
                    "probabilities", "Privacy spent: epsilon per round", "Participation and "
                    "dropouts", "Audit verification", "Assumptions", "Resolved configuration"):
        assert heading in text
    assert "passed: round 3's ECE" in text

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and _distinct_colours(data) > 50
    page.close()


@pytest.mark.slow
def test_tampered_run_directory_shows_the_failure_banner(run_dir: Path, browser: Any,
                                                         tmp_path: Path) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(run_dir, bad)
    (bad / "report.html").unlink()
    ledger = (bad / "ledger.jsonl").read_bytes()
    (bad / "ledger.jsonl").write_bytes(
        ledger.replace(b'"noise_multiplier":0.', b'"noise_multiplier":1.', 1))
    proc = _securefl("report", str(bad))
    assert proc.returncode != 0
    assert "VERIFICATION FAILED" in proc.stderr
    shown = _open(browser, bad / "report.html")
    page = shown.page
    assert shown.errors == []
    status = page.locator("#verification")
    assert status.get_attribute("data-status") == "failed"
    assert "VERIFICATION FAILED: do not rely on this run's results." in status.inner_text()
    assert status.bounding_box()["y"] < 50
    assert page.locator("img").count() == 0  # no plot of unverified numbers
    assert "ledger.jsonl" in page.inner_text("body")  # the first problem, named
    page.screenshot(path=str(tmp_path / "tampered.png"), full_page=True)
    page.close()
