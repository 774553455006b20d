"""One-off measurements of what TenSEAL/SEAL allocate for hostile CKKS bytes (docs/security.md,
"Fuzzing and resource limits"). Needs the `zstd` command line tool (SEAL compresses with zstd).

    python tests/fuzz/seal_measure.py bomb GIB          # one chunk whose zstd stream inflates to GIB
    python tests/fuzz/seal_measure.py many K            # K zstd-compressed zero ciphertexts, 1 chunk
    python tests/fuzz/seal_measure.py foreign-context   # a public context for N=32768, 14 primes

Each prints one JSON line: the input's size, the outcome, the parse's seconds and peak RSS. Set
SECUREFL_NO_FRAMING=1 to measure without securefl's framing check (he/framing.py), and
SECUREFL_RLIMIT=1 to parse under RLIMIT_AS = mapped + 512 MiB.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz.ckks_worker import SEAL_HEADER, field, limit_memory, parse, rss_mb, setup, varint

if os.environ.get("SECUREFL_NO_FRAMING"):
    import securefl.he.vectors

    securefl.he.vectors.check_vector_framing = lambda *a: None  # type: ignore[assignment]


def _zstd(data: bytes, extra_zero_bytes: int = 0) -> bytes:
    """zstd of ``data`` followed by ``extra_zero_bytes`` zeros (streamed: never held in memory)."""
    cmd = f"(cat; head -c {extra_zero_bytes} /dev/zero) | zstd -q -1 -c"
    return subprocess.run(["sh", "-c", cmd], input=data, capture_output=True, check=True).stdout


def _zero_members(chunk: bytes) -> tuple[bytes, bytes]:
    """(SEAL header fields 0-3 of the chunk's ciphertext, its members with zeroed coefficients)."""
    i = chunk.index(b"\x5e\xa1")
    size = SEAL_HEADER.unpack_from(chunk, i)[6]
    raw = subprocess.run(["zstd", "-d", "-q", "-c"], input=chunk[i + 16 : i + size],
                         capture_output=True, check=True).stdout
    return chunk[i : i + 5], raw[:100] + bytes(len(raw) - 100)  # metadata + DynArray count


def _chunk(chunk: bytes, comp: bytes, copies: int = 1) -> bytes:
    """A chunk holding ``copies`` ciphertexts whose members are ``comp`` (zstd, compr_mode 2)."""
    head, _ = _zero_members(chunk)  # magic, header size, major, minor
    blob = head + struct.pack("<BHQ", 2, 0, 16 + len(comp)) + comp
    return (field(1, b"".join(varint(10) for _ in range(copies))) + field(2, blob) * copies
            + chunk[-9:])


def measure(data: bytes, pub: Any, what: str) -> dict[str, Any]:
    before = rss_mb()
    if os.environ.get("SECUREFL_RLIMIT"):
        limit_memory()  # mapped + 512 MiB, as tests/test_fuzz_ckks.py does
    t0 = time.perf_counter()
    outcome = parse(pub, data, what)
    return {"bytes": len(data), "outcome": outcome, "parse_s": round(time.perf_counter() - t0, 2),
            "rss_before_mb": before, "rss_after_mb": rss_mb()}


def main() -> dict[str, Any]:
    pub, chunk, _ = setup()
    mode = sys.argv[1]
    if mode == "bomb":
        _, members = _zero_members(chunk)
        data = _chunk(chunk, _zstd(members, int(float(sys.argv[2]) * (1 << 30))))
        return measure(data, pub, "chunk")
    if mode == "many":
        _, members = _zero_members(chunk)
        return measure(_chunk(chunk, _zstd(members), int(sys.argv[2])), pub, "chunk")
    data = subprocess.run([sys.executable, "-c", _FOREIGN], capture_output=True,
                          check=True).stdout  # made in a child: its memory is not counted here
    return measure(data, pub, "context")


_FOREIGN = """
import sys, tenseal as ts
ctx = ts.context(ts.SCHEME_TYPE.CKKS, 32768, coeff_mod_bit_sizes=[60] * 14)
ctx.global_scale = 2**40
sys.stdout.buffer.write(ctx.serialize(save_public_key=True, save_secret_key=False,
                                      save_galois_keys=False, save_relin_keys=False))
"""


if __name__ == "__main__":
    print(json.dumps(main()))
