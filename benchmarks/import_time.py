"""How long `import securefl` and `securefl --help` take, and proof they load no heavy library.

Run: python benchmarks/import_time.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import table, write_json

HEAVY = ("torch", "tenseal", "opacus")
PROBE = ("import sys, time; t=time.perf_counter(); import securefl, securefl.cli.main; "
         "dt=time.perf_counter()-t; print(dt); print(','.join(m for m in {heavy} if m in sys.modules))")


def measure(code: str) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    dt, loaded = out.stdout.strip().split("\n") + [""] * (2 - len(out.stdout.strip().split("\n")))
    return float(dt), loaded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    code = PROBE.format(heavy=repr(HEAVY))
    times, loaded = [], ""
    for _ in range(args.repeat):
        dt, loaded = measure(code)
        times.append(dt)
    helps = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "securefl", "--help"], check=True,
                       capture_output=True)
        helps.append(time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
    torch_s = time.perf_counter() - t
    rows = [["import securefl + cli (in-process)", statistics.median(times), loaded or "none"],
            ["securefl --help (whole process)", statistics.median(helps), "-"],
            ["python -c 'import torch' (reference)", torch_s, "-"]]
    print(table(["what", "median seconds", "heavy modules loaded"], rows))
    path = write_json("import_time", {"import_seconds": statistics.median(times),
                                      "help_seconds": statistics.median(helps),
                                      "torch_import_seconds": torch_s,
                                      "heavy_loaded": loaded.split(",") if loaded else []})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
