"""Every single-point alteration of a run directory is caught by verify_run_dir.

The directory (5 rounds, one aborted, with result.json) is altered in place and restored after each
case: every byte of every file flipped (XOR 0x01, the hardest single-bit change for text formats),
a dense sample of bytes flipped with other masks (0x20 case flip, 0x80, 0xff), truncations, file
deletions, line deletions / duplications / swaps, appended garbage and stray files.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit_helpers import make_run, snapshot

from securefl.audit.verify import verify_run_dir
from securefl.errors import AuditError

ROUNDS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """On tmpfs when there is one: thousands of rewrites would otherwise wait on the disk."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    where = shm or tmp_path_factory.getbasetemp()
    base = Path(tempfile.mkdtemp(prefix="securefl-tamper-", dir=where))
    d = base / "run"
    make_run(d, ROUNDS)
    yield d
    shutil.rmtree(base)


def _paths(run_dir: Path) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))


def _expect_detected(run_dir: Path, original: dict[str, bytes], label: str,
                     mutate: Callable[[], None], missed: list[str]) -> None:
    paths = _paths(run_dir)
    mutate()
    try:
        if snapshot(run_dir) == original and _paths(run_dir) == paths:
            return  # the "mutation" changed nothing (e.g. swapping two equal lines)
        try:
            verify_run_dir(run_dir)
        except AuditError:
            return
        missed.append(label)
    finally:
        _restore(run_dir, original)


def _restore(run_dir: Path, original: dict[str, bytes]) -> None:
    for p in sorted(run_dir.rglob("*"), reverse=True):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and rel not in original:
            p.unlink()
        elif p.is_dir() and not any(k.startswith(rel + "/") for k in original):
            shutil.rmtree(p)
    for rel, data in original.items():
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


def _write(path: Path, data: bytes) -> Callable[[], None]:
    return lambda: path.write_bytes(data)


def _positions(n: int, dense: bool) -> list[int]:
    """Every byte (dense, or files up to 600 bytes); else both ends, 300 evenly spaced and 100
    pseudo-random positions."""
    if dense or n <= 600:
        return list(range(n))
    rng = random.Random(n)
    return sorted({0, n - 1, *(i * (n - 1) // 299 for i in range(300)),
                   *(rng.randrange(n) for _ in range(100))})


def _byte_flips(original: dict[str, bytes], dense: bool) -> Iterator[tuple[str, int, int]]:
    """(file, position, xor mask): 0x01 at every chosen position (and 0x80 when dense); 0x20,
    0x80, 0xff at every 13th byte and at both ends."""
    for rel, data in sorted(original.items()):
        n = len(data)
        for i in _positions(n, dense):
            yield rel, i, 0x01
            if dense:
                yield rel, i, 0x80
            if i % 13 == 0 or i in (0, n - 1):
                for m in (0x20, 0x80, 0xFF):
                    yield rel, i, m


def _structural(
    original: dict[str, bytes], run_dir: Path
) -> Iterator[tuple[str, Callable[[], None]]]:
    for rel, data in sorted(original.items()):
        path = run_dir / rel
        yield f"delete {rel}", path.unlink
        for cut in sorted({0, 1, len(data) // 2, len(data) - 1}):
            if cut < len(data):
                yield f"truncate {rel} to {cut}", _write(path, data[:cut])
        yield f"append newline to {rel}", _write(path, data + b"\n")
        yield f"append garbage to {rel}", _write(path, data + b"x")
        yield f"prepend space to {rel}", _write(path, b" " + data)
        lines = data.split(b"\n")
        if len(lines) > 2:
            body = lines[:-1] if lines[-1] == b"" else lines
            tail = [b""] if lines[-1] == b"" else []
            for j in range(len(body)):
                dropped = body[:j] + body[j + 1 :]
                yield f"delete line {j} of {rel}", _write(path, b"\n".join(dropped + tail))
                dup = body[: j + 1] + body[j:]
                yield f"duplicate line {j} of {rel}", _write(path, b"\n".join(dup + tail))
                if j + 1 < len(body):
                    sw = [*body[:j], body[j + 1], body[j], *body[j + 2 :]]
                    yield f"swap lines {j},{j + 1} of {rel}", _write(path, b"\n".join(sw + tail))
    for rel in ("extra.txt", "models/round-00099.safetensors", "audit/extra", "keys/other.key",
                ".COMMIT.abc.tmp"):
        yield f"add {rel}", _write(run_dir / rel, b"x")
    yield "add directory", lambda: (run_dir / "newdir").mkdir()
    names = sorted(r for r in original if r.startswith("models/"))
    a, b = names[1], names[2]
    yield f"swap {a} and {b}", lambda: (
        (run_dir / a).write_bytes(original[b]), (run_dir / b).write_bytes(original[a]))


def test_untouched_run_dir_verifies(run_dir: Path) -> None:
    report = verify_run_dir(run_dir)
    assert report.last_round == ROUNDS
    assert report.tree_size == ROUNDS + 1
    assert report.rounds_aborted == 1
    assert report.has_result


def _check_byte_flips(run_dir: Path, dense: bool) -> None:
    original = snapshot(run_dir)
    assert set(original) >= {"COMMIT", "config.json", "federation.json", "keys/server.key",
                             "ledger.jsonl", "metrics.jsonl", "result.json", "audit/log.jsonl",
                             "audit/checkpoints", "models/round-00000.safetensors",
                             "models/round-00005.safetensors"}
    missed: list[str] = []
    count = 0
    try:
        for rel, i, mask in _byte_flips(original, dense):
            data = bytearray(original[rel])
            data[i] ^= mask
            (run_dir / rel).write_bytes(bytes(data))
            try:
                verify_run_dir(run_dir)
                missed.append(f"{rel}[{i}]^{mask:#x}")
            except AuditError:
                pass
            (run_dir / rel).write_bytes(original[rel])
            count += 1
    finally:
        _restore(run_dir, original)
    assert count >= sum(min(len(v), 300) for v in original.values())
    assert missed == [], f"{len(missed)} of {count} undetected: {missed[:20]}"
    verify_run_dir(run_dir)  # restored


def test_byte_flips_are_detected(run_dir: Path) -> None:
    """Every byte of files up to 600 bytes, >= 300 positions (incl. first/last) of larger ones."""
    _check_byte_flips(run_dir, dense=False)


@pytest.mark.slow
def test_every_byte_flip_with_every_mask_is_detected(run_dir: Path) -> None:
    _check_byte_flips(run_dir, dense=True)


def test_structural_changes_are_detected(run_dir: Path) -> None:
    original = snapshot(run_dir)
    missed: list[str] = []
    count = 0
    for label, mutate in _structural(original, run_dir):
        _expect_detected(run_dir, original, label, mutate, missed)
        count += 1
    assert count > 100
    assert missed == [], f"{len(missed)} of {count} undetected: {missed[:20]}"
    verify_run_dir(run_dir)


def test_error_names_the_first_bad_file_and_record(run_dir: Path) -> None:
    original = snapshot(run_dir)
    try:
        path = run_dir / "audit/log.jsonl"
        lines = original["audit/log.jsonl"].split(b"\n")
        lines[2] = lines[2].replace(b'"round":2', b'"round":7')
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(AuditError, match=r"audit/log\.jsonl record 2 \(round 2\)"):
            verify_run_dir(run_dir)
        _restore(run_dir, original)
        ledger = original["ledger.jsonl"].split(b"\n")
        ledger[3] = ledger[3].replace(b"0.5", b"0.9")
        (run_dir / "ledger.jsonl").write_bytes(b"\n".join(ledger))
        with pytest.raises(AuditError, match=r"ledger\.jsonl line 4: does not match round 2"):
            verify_run_dir(run_dir)
    finally:
        _restore(run_dir, original)
