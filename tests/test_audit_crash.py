"""Crash safety of RunStore: a crash at every write of commit_round and finish is recovered.

Each write that commit_round/finish makes (atomic file replacements and fsync'ed appends) is
interrupted in turn, both right after it completed and half-way through it (a torn append, or a
temp file left behind by an atomic write). RunStore.open must then recover a directory that
verifies, at the last committed round; re-running the interrupted work must give byte-identical
files to an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import create_run, fake_result, make_run, round_inputs, snapshot

import securefl.audit.layout as layout
import securefl.audit.store as store_mod
from securefl.audit.store import RunStore
from securefl.audit.verify import verify_run_dir
from securefl.errors import AuditError, StateError

ROUNDS = 4


class Crash(Exception):
    """Stands for the process dying."""


class CrashPlan:
    """Counts writes; at write number ``at`` it crashes after (``torn=False``) or half-way."""

    def __init__(self, at: int, torn: bool) -> None:
        self.at, self.torn, self.n = at, torn, 0
        self.real_append = layout.append_bytes
        self.real_atomic = store_mod.atomic_write_bytes

    def append(self, path: Path, data: bytes) -> None:
        self.n += 1
        if self.n == self.at and self.torn:
            self.real_append(path, data[: max(1, len(data) // 2)])
            raise Crash(f"torn append {path.name}")
        self.real_append(path, data)
        if self.n == self.at:
            raise Crash(f"after append {path.name}")

    def atomic(self, path: Any, data: bytes, *, mode: int = 0o644) -> None:
        self.n += 1
        p = Path(path)
        if self.n == self.at and self.torn:
            (p.parent / f".{p.name}.crash.tmp").write_bytes(data[: len(data) // 2])
            raise Crash(f"torn atomic write {p.name}")
        self.real_atomic(path, data, mode=mode)
        if self.n == self.at:
            raise Crash(f"after atomic write {p.name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("ref") / "run"
    make_run(d, ROUNDS, finish=True)
    return snapshot(d)


def _count_writes(tmp_path: Path, work: Callable[[RunStore], None], rounds_before: int) -> int:
    d = tmp_path / "count"
    store = make_run(d, rounds_before, finish=False)
    plan = CrashPlan(at=-1, torn=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(layout, "append_bytes", plan.append)
    mp.setattr(store_mod, "atomic_write_bytes", plan.atomic)
    try:
        work(store)
    finally:
        mp.undo()
    return plan.n


def _finish_run(d: Path) -> None:
    store = RunStore.open(d)
    for r in range(store.last_round + 1, ROUNDS + 1):
        store.commit_round(**round_inputs(r))
    store.finish(fake_result(store))


@pytest.mark.parametrize("round_", [1, 3, ROUNDS])
def test_crash_at_every_write_of_commit_round(tmp_path: Path, reference: dict[str, bytes],
                                              round_: int) -> None:
    def work(s: RunStore) -> None:
        s.commit_round(**round_inputs(round_))

    n_writes = _count_writes(tmp_path, work, round_ - 1)
    assert n_writes >= 5  # model, (ledger), log, checkpoint, metrics, COMMIT
    cases = 0
    for at in range(1, n_writes + 1):
        for torn in (False, True):
            d = tmp_path / f"r{round_}-{at}-{torn}"
            store = make_run(d, round_ - 1, finish=False)
            before = snapshot(d)
            plan = CrashPlan(at, torn)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(layout, "append_bytes", plan.append)
                mp.setattr(store_mod, "atomic_write_bytes", plan.atomic)
                with pytest.raises(Crash):
                    work(store)
            with pytest.raises(StateError):  # the half-written store refuses to continue
                store.commit_round(**round_inputs(round_))
            reopened = RunStore.open(d)
            committed = at == n_writes and not torn  # crashed after COMMIT was replaced
            assert reopened.last_round == (round_ if committed else round_ - 1)
            verify_run_dir(d)
            if not committed:
                assert snapshot(d) == before, "recovery must restore the pre-round state"
            _finish_run(d)
            assert snapshot(d) == reference
            cases += 1
    assert cases == 2 * n_writes


def test_crash_at_every_write_of_finish(tmp_path: Path, reference: dict[str, bytes]) -> None:
    def work(s: RunStore) -> None:
        s.finish(fake_result(s))

    n_writes = _count_writes(tmp_path, work, ROUNDS)
    assert n_writes == 2  # result.json, COMMIT
    for at in range(1, n_writes + 1):
        for torn in (False, True):
            d = tmp_path / f"f-{at}-{torn}"
            store = make_run(d, ROUNDS, finish=False)
            plan = CrashPlan(at, torn)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(layout, "append_bytes", plan.append)
                mp.setattr(store_mod, "atomic_write_bytes", plan.atomic)
                with pytest.raises(Crash):
                    work(store)
            reopened = RunStore.open(d)
            assert reopened.last_round == ROUNDS
            report = verify_run_dir(d)
            assert report.has_result == (at == n_writes and not torn)
            if not report.has_result:
                reopened.finish(fake_result(reopened))
            assert snapshot(d) == reference


def test_commit_after_finish_removes_stale_result(tmp_path: Path) -> None:
    d = tmp_path / "run"
    store = make_run(d, 2, finish=True)
    assert (d / "result.json").exists()
    store.commit_round(**round_inputs(3))
    assert not (d / "result.json").exists()
    assert not verify_run_dir(d).has_result


def test_open_refuses_lost_committed_data(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2, finish=False)
    data = (d / "metrics.jsonl").read_bytes()
    (d / "metrics.jsonl").write_bytes(data[:-3])
    with pytest.raises(AuditError, match="shorter than the committed"):
        RunStore.open(d)


def test_open_without_commit_file(tmp_path: Path) -> None:
    d = tmp_path / "run"
    create_run(d)
    os.unlink(d / "COMMIT")
    with pytest.raises(AuditError, match="no COMMIT"):
        RunStore.open(d)


def test_open_detects_tampering(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2, finish=False)
    model = d / "models/round-00001.safetensors"
    model.write_bytes(b"evil" + model.read_bytes()[4:])
    with pytest.raises(AuditError, match=r"models/round-00001\.safetensors"):
        RunStore.open(d)
