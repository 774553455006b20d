"""CKKS ciphertext and public-context parsing (TenSEAL/SEAL, C++) under hostile bytes (issue 17).

Each test runs the parse in a child process (tests/fuzz/ckks_worker.py) with RLIMIT_AS set to what
the child maps plus 512 MiB: a SEAL crash is a dead child and a failed test, an over-allocation
fails inside the limit, and the child reports its peak RSS (a memory bound, not a clock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).parent / "fuzz" / "ckks_worker.py"
EXAMPLES = int(os.environ.get("SECUREFL_FUZZ_EXAMPLES", "100"))


def run_worker(*args: str, tmp: Path | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True,
                          timeout=900, check=False)
    crash = f"; last input kept in {tmp / 'current.bin'}" if tmp else ""
    assert proc.returncode == 0, (
        f"worker exited with {proc.returncode} (negative = killed by that signal){crash}\n"
        f"{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_many_ciphertexts_in_one_chunk_are_refused_before_seal() -> None:
    """600 zlib-compressed zero ciphertexts fit in one chunk's byte limit (232 KB of 266 KB);
    parsed by TenSEAL they took +300 MB (1,900 zstd ones in 253 KB: 1.48 GB). The framing check
    refuses the chunk before SEAL allocates anything."""
    out = run_worker("many", "600")
    assert out["bytes"] <= out["limit"]
    assert out["outcome"].startswith("typed:MalformedCiphertextError:"), out
    assert "too many fields" in out["outcome"] or "one ciphertext" in out["outcome"], out
    assert out["rss_after_mb"] - out["rss_before_mb"] < 32, out


def test_one_zero_ciphertext_still_parses() -> None:
    """The framing check accepts a well-framed chunk (here: a valid, all-zero ciphertext)."""
    out = run_worker("many", "1")
    assert out["outcome"] == "accepted", out


def test_ckks_chunk_and_context_parsing_raise_only_typed_errors(tmp_path: Path) -> None:
    """Byte-level and SEAL-header mutations of a real chunk, a 3-ciphertext chunk and a public
    context: the child survives, and every input is accepted or refused with a SecureFLError."""
    out = run_worker("fuzz", str(EXAMPLES), str(tmp_path), tmp=tmp_path)
    assert out["examples"] >= EXAMPLES * 0.9, out
    assert out["typed"] > 0, out
