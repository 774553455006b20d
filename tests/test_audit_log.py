"""AuditLog and the clients' CheckpointKeeper: growth accepted, forks/rewrites/rollbacks caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.log import AuditLog, CheckpointKeeper, cosign_checkpoint
from securefl.audit.merkle import leaf_hash, verify_inclusion
from securefl.audit.note import NoteSigner, open_checkpoint
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import AuditError

ORIGIN = "example.org/securefl/log"


def _key(i: int) -> SigningKey:
    return SigningKey.from_seed(Secret(bytes([i]) * 32))


def _log(n: int, prefix: bytes = b"leaf") -> AuditLog:
    log = AuditLog(ORIGIN, _key(1))
    for i in range(n):
        log.append(prefix + b"%d" % i)
    return log


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6))
def test_keeper_accepts_a_growing_log(steps: list[int]) -> None:
    log = AuditLog(ORIGIN, _key(1))
    keeper = CheckpointKeeper(log.verifier)
    for k in steps:
        old = keeper.latest.size if keeper.latest else 0
        for _ in range(k):
            log.append(b"x%d" % log.size)
        proof = log.consistency_proof(old) if old else []
        cp = keeper.receive(log.signed_checkpoint(), proof)
        assert cp.size == log.size and cp.root_hash == log.tree.root()
    assert [c.size for c in keeper.checkpoints] == sorted(c.size for c in keeper.checkpoints)


def test_keeper_catches_a_fork() -> None:
    honest = _log(5)
    keeper = CheckpointKeeper(honest.verifier)
    keeper.receive(honest.signed_checkpoint(), [])
    forked = _log(5, prefix=b"other")  # same key, rewritten history
    for extra in (0, 3):
        for i in range(extra):
            forked.append(b"more%d" % i)
        with pytest.raises(AuditError, match=r"forked or rewritten|not consistent"):
            keeper.receive(forked.signed_checkpoint(), forked.consistency_proof(5))


def test_keeper_catches_rollback_wrong_key_and_wrong_origin() -> None:
    log = _log(6)
    keeper = CheckpointKeeper(log.verifier)
    keeper.receive(log.signed_checkpoint(), [])
    with pytest.raises(AuditError, match="rolled back"):
        keeper.receive(log.signed_checkpoint(4), [])
    impostor = AuditLog(ORIGIN, _key(2))
    for i in range(7):
        impostor.append(log.leaf(i) if i < 6 else b"new")
    with pytest.raises(AuditError):
        keeper.receive(impostor.signed_checkpoint(), impostor.consistency_proof(6))
    other_origin = AuditLog("example.org/other", _key(1))
    other_origin.append(b"a")
    with pytest.raises(AuditError):
        keeper.receive(other_origin.signed_checkpoint(), [])
    assert keeper.latest is not None and keeper.latest.size == 6


def test_keeper_persists_and_reloads(tmp_path: Path) -> None:
    log = _log(3)
    path = tmp_path / "seen.json"
    keeper = CheckpointKeeper(log.verifier, path=path)
    keeper.receive(log.signed_checkpoint(), [])
    log.append(b"z")
    keeper.receive(log.signed_checkpoint(), log.consistency_proof(3))
    again = CheckpointKeeper(log.verifier, path=path)
    assert again.checkpoints == keeper.checkpoints
    forked = _log(4, prefix=b"evil")
    with pytest.raises(AuditError):
        again.receive(forked.signed_checkpoint(), forked.consistency_proof(4))


def test_client_cosignature() -> None:
    log = _log(2)
    bank = NoteSigner("bank0", _key(9))
    keeper = CheckpointKeeper(log.verifier, cosigner=bank)
    keeper.receive(log.signed_checkpoint(), [])
    note = keeper.cosign_latest()
    _, opened = open_checkpoint(note, log.verifier, cosigners=[bank.verifier])
    assert [s.name for s in opened.verified] == [ORIGIN, "bank0"]
    assert cosign_checkpoint(log.signed_checkpoint(), bank, log.verifier) == note


def test_inclusion_proofs_from_the_log() -> None:
    log = _log(11)
    cp = log.checkpoint()
    for i in range(11):
        verify_inclusion(leaf_hash(log.leaf(i)), i, cp.size, log.inclusion_proof(i), cp.root_hash)
