"""A file-access guard for the server process: a Python audit hook (PEP 578, ``sys.addaudithook``)
sees every ``open`` made through Python (builtins.open, io, os.open, numpy/pandas readers that go
through them) and refuses any path under a forbidden directory with PermissionError, recording
it. It cannot see a C library calling open(2) directly; the server's code paths read files only
through Python, and tests check the guard with a positive control (the server's own test file
is recorded as opened)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["OpenGuard"]


class OpenGuard:
    """Install once per process; audit hooks cannot be removed (PEP 578)."""

    def __init__(self, forbidden: Iterable[str | Path], log_path: str | Path | None = None) -> None:
        self.forbidden = tuple(os.path.realpath(p) for p in forbidden)
        self.log_path = Path(log_path) if log_path is not None else None
        self.opened: list[str] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._writing = False

    def install(self) -> OpenGuard:
        sys.addaudithook(self._hook)
        return self

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or self._writing or not args:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # an already-open file descriptor
        real = os.path.realpath(os.fsdecode(path))
        with self._lock:
            self.opened.append(real)
            bad = any(real == f or real.startswith(f + os.sep) for f in self.forbidden)
            if bad:
                self.violations.append(real)
        if bad:
            raise PermissionError(f"the server process may not open {real}")

    def write(self) -> None:
        """Write {"opened": [...], "violations": [...]} to ``log_path`` (not recorded itself)."""
        if self.log_path is None:
            return
        self._writing = True
        try:
            self.log_path.write_text(json.dumps({"opened": sorted(set(self.opened)),
                                                 "violations": self.violations}))
        finally:
            self._writing = False
