"""Crash-safe file writes: temp file in the same directory, fsync, atomic rename, fsync the directory.

A crash at any instant leaves either the old file or the new one, never a torn mix (POSIX rename(2)
is atomic within a file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["append_line", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "create_exclusive", "exclusive_lock", "fsync_dir"]


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (permissions ``mode``, e.g. 0o600 for key files)."""
    target = Path(path)
    tmp = _durable_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def _durable_temp(target: Path, data: bytes, mode: int) -> str:
    """A fsynced temporary file with ``data`` and permissions ``mode`` beside ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def create_exclusive(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it. The file
    appears complete or not at all (written to a temporary file, then hard-linked into place,
    which fails if the name exists), so concurrent creators agree on one content."""
    target = Path(path)
    tmp = _durable_temp(target, data, mode)
    try:
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        fsync_dir(target.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, mode: int = 0o644) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n",
                      mode=mode)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and fsync (for logs where a torn last line is detectable and dropped)."""
    if "\n" in line:
        raise ValueError("append_line takes a single line")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


_held = threading.local()


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created 0600; its directory too): a
    read-check-write under it is one step even when several processes (a deployment's ClientApps,
    two runs on one node) act on the same file at once. Re-entrant within one thread (a nested
    call on the same path does not lock again, where a second flock would wait for itself)."""
    path = os.path.abspath(lock_path)
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
    finally:
        os.close(fd)
