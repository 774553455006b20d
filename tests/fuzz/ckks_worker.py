"""Run TenSEAL/SEAL parsing of hostile bytes in this (child) process, so that a crash in C++ is a
dead child and a failed test, not a dead pytest (issue 17, item 1). Used by tests/test_fuzz_ckks.py.

    python tests/fuzz/ckks_worker.py many K       # one chunk holding K compressed zero ciphertexts
    python tests/fuzz/ckks_worker.py fuzz N DIR   # N hypothesis examples; each input is written to
                                                  # DIR/current.bin before it is parsed

The address space is limited to what the process maps after setup plus 512 MiB (RLIMIT_AS), so an
over-allocation in SEAL fails here. Prints one JSON line on stdout.
"""

from __future__ import annotations

import faulthandler
import json
import resource
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefl.errors import SecureFLError
from securefl.he.context import generate_context, load_public_context
from securefl.he.params import DEFAULT_PARAMS
from securefl.he.vectors import encrypt_chunks, load_chunks

NUM_VALUES = 10
HEADROOM = 512 << 20
BATCH = 250
HANG_S = 300  # one parse stuck this long: dump every thread's stack and exit non-zero
SEAL_HEADER = struct.Struct("<HBBBBHQ")


def varint(x: int) -> bytes:
    out = b""
    while True:
        b, x = x & 0x7F, x >> 7
        if not x:
            return out + bytes([b])
        out += bytes([b | 0x80])


def field(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def zero_ciphertext_blob(pub: Any, chunk: bytes) -> bytes:
    """A SEAL ciphertext blob whose polynomials are all zero, zlib-compressed (about 400 bytes
    for 393 KB of coefficients), built from the metadata of the real ``chunk`` (layout of SEAL
    4.x Ciphertext::save_members and DynArray::save)."""
    i = chunk.index(b"\x5e\xa1")
    magic, hsize, major, minor, _c, _r, _s = SEAL_HEADER.unpack_from(chunk, i)
    n, limbs = DEFAULT_PARAMS.poly_modulus_degree, len(DEFAULT_PARAMS.coeff_mod_bit_sizes) - 1
    count = 2 * n * limbs
    parms_id = _parms_id(pub, chunk)
    members = (parms_id + b"\x01" + struct.pack("<QQQdQ", 2, n, limbs, DEFAULT_PARAMS.scale, 1)
               + SEAL_HEADER.pack(magic, hsize, major, minor, 0, 0, 16 + 8 + 8 * count)
               + struct.pack("<Q", count) + bytes(8 * count))
    comp = zlib.compress(members, 9)
    return SEAL_HEADER.pack(magic, hsize, major, minor, 1, 0, 16 + len(comp)) + comp


def _parms_id(pub: Any, chunk: bytes) -> bytes:
    import tenseal as ts

    vec = ts.ckks_vector_from(pub.raw, chunk)
    return struct.pack("<4Q", *vec.ciphertext()[0].parms_id())


def many_ciphertexts_chunk(pub: Any, chunk: bytes, k: int) -> bytes:
    blob = zero_ciphertext_blob(pub, chunk)
    scale = chunk[-9:]  # field 3 (key 0x19, a double): the last 9 bytes
    if scale[0] != 0x19:
        raise ValueError("unexpected TenSEAL framing: no scale field at the end")
    return field(1, b"".join(varint(NUM_VALUES) for _ in range(k))) + field(2, blob) * k + scale


def setup() -> tuple[Any, bytes, bytes]:
    ctx = generate_context(DEFAULT_PARAMS)
    pub = ctx.public()
    chunk = encrypt_chunks(pub, np.zeros(NUM_VALUES))[0]
    return pub, chunk, ctx.public_bytes()


def limit_memory() -> int:
    """RLIMIT_AS = what is mapped now + 512 MiB; returns the limit."""
    vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().split("\n")
              if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, vm + HEADROOM))
    return vm + HEADROOM


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def parse(pub: Any, data: bytes, what: str) -> str:
    try:
        if what == "chunk":
            load_chunks(pub, [data], NUM_VALUES)
        else:
            load_public_context(data, DEFAULT_PARAMS)
    except SecureFLError as exc:
        return f"typed:{type(exc).__name__}:{exc.message}"
    return "accepted"


def main_many(k: int) -> dict[str, Any]:
    pub, chunk, _ = setup()
    data = many_ciphertexts_chunk(pub, chunk, k)
    before = rss_mb()
    limit_memory()
    return {"bytes": len(data), "limit": DEFAULT_PARAMS.ciphertext_max_bytes(),
            "outcome": parse(pub, data, "chunk"), "rss_before_mb": before, "rss_after_mb": rss_mb()}


def main_fuzz(n: int, out_dir: Path) -> dict[str, Any]:
    from fuzz import mutate
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pub, chunk, context = setup()
    many = many_ciphertexts_chunk(pub, chunk, 3)
    limit_memory()
    counts: dict[str, int] = {"accepted": 0, "typed": 0}
    current = out_dir / "current.bin"

    def batch(k: int) -> None:
        @settings(max_examples=k, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(what=st.sampled_from(["chunk", "chunk", "chunk", "context"]), data=st.data())
        def run(what: str, data: st.DataObject) -> None:
            seeds = (chunk, many) if what == "chunk" else (context,)
            raw = data.draw(mutate.hostile_inputs(seeds, "raw")
                            | st.sampled_from(seeds).flatmap(_seal_header_edits))
            counts["index"] = counts.get("index", 0) + 1
            (out_dir / f"input-{counts['index'] % 4}.bin").write_bytes(raw)  # the last 4 inputs
            current.write_bytes(raw)
            faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang fails, with a stack
            outcome = parse(pub, raw, what)
            faulthandler.cancel_dump_traceback_later()
            counts["accepted" if outcome == "accepted" else "typed"] += 1

        run()

    # batches: hypothesis keeps every example's choices, and these inputs are 256 KiB each
    for start in range(0, n, BATCH):
        batch(min(BATCH, n - start))
    return {"examples": counts["accepted"] + counts["typed"], **counts, "maxrss_mb": rss_mb()}


def _seal_header_edits(seed: bytes) -> Any:
    """Edit a field of the first SEAL header (magic, header size, version, compression, size)."""
    from hypothesis import strategies as st

    i = seed.index(b"\x5e\xa1")

    def edit(args: tuple[int, int]) -> bytes:
        which, value = args
        fields = list(SEAL_HEADER.unpack_from(seed, i))
        limits = (0xFFFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFFFF, 2**64 - 1)
        fields[which] = value % (limits[which] + 1)
        return seed[:i] + SEAL_HEADER.pack(*fields) + seed[i + SEAL_HEADER.size :]

    return st.tuples(st.integers(0, 6), st.integers(0, 2**64 - 1)
                     | st.sampled_from([0, 1, 2, 3, 16, 255, 2**32, 2**63])).map(edit)


if __name__ == "__main__":
    if sys.argv[1] == "many":
        result = main_many(int(sys.argv[2]))
    else:
        result = main_fuzz(int(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(result))
