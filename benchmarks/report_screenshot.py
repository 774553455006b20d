"""Screenshot of a compliance report in headless Chromium, for README (issue 20).

Run: python benchmarks/report_screenshot.py RUN_DIR/report.html docs/img/report.png [--height 1500]

Debian's chromium (apt-get install chromium) driven by Playwright at its executable path; the top
of the page (verification banner, summary, model quality) is captured and stored as a small
palette PNG.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=1500)
    args = ap.parse_args()
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe,
                                     args=["--no-sandbox"] if os.geteuid() == 0 else [])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.report.resolve().as_uri(), wait_until="load")
        png = page.screenshot()
        browser.close()
    with Image.open(io.BytesIO(png)) as im:
        im.convert("RGB").quantize(colors=64).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
