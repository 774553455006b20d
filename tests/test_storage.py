"""Atomic writes: a crash mid-write leaves the previous file intact."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from securefl import storage


def test_atomic_write_replaces(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    storage.atomic_write_json(p, {"x": 1})
    storage.atomic_write_json(p, {"x": 2})
    assert p.read_text() == '{\n  "x": 2\n}\n'
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temp files left


def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "state"
    storage.atomic_write_bytes(p, b"old contents")

    def crash(*_a: object, **_k: object) -> None:
        raise OSError("disk full (simulated crash before rename)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        storage.atomic_write_bytes(p, b"new contents that never land")
    assert p.read_bytes() == b"old contents"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["state"]


def test_crash_during_write_of_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "state"
    storage.atomic_write_bytes(p, b"old")
    real_fsync = os.fsync

    def crash(fd: int) -> None:
        real_fsync(fd)
        raise OSError("power loss (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        storage.atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"


def test_private_mode(tmp_path: Path) -> None:
    p = tmp_path / "key"
    storage.atomic_write_bytes(p, b"k", mode=0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_append_line_rejects_newlines(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        storage.append_line(tmp_path / "l", "a\nb")


def test_create_exclusive_creates_once_and_never_overwrites(tmp_path):
    from securefl.storage import create_exclusive

    target = tmp_path / "sub" / "k.bin"
    assert create_exclusive(target, b"first") is True
    assert target.read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o600
    assert create_exclusive(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["k.bin"]  # no temp file left


def test_exclusive_lock_excludes_other_holders_and_reenters_in_one_thread(tmp_path: Path) -> None:
    """One lock helper for every read-check-write (the bank budget, the session counter, the key
    holder's usage file): another holder (another thread here, another process in a deployment)
    waits; a nested use in the same thread does not wait for itself."""
    import threading

    from securefl.storage import exclusive_lock

    lock = tmp_path / "sub" / "x.lock"
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        inside.wait()
        with exclusive_lock(lock):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    with exclusive_lock(lock):
        inside.set()
        with exclusive_lock(lock):  # re-entered: no deadlock
            order.append("nested")
        t.join(timeout=0.5)  # the other thread cannot get in while this one holds the lock
        order.append("outer")
    t.join()
    assert order == ["nested", "outer", "other"]
    assert (lock.stat().st_mode & 0o777) == 0o600
