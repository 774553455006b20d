"""The server's audit log (leaves, RFC 9162 tree, signed checkpoints) and the clients' keepers.

:class:`AuditLog` is in memory; :class:`securefl.audit.store.RunStore` persists it. Each participant
keeps a :class:`CheckpointKeeper`: on every new checkpoint it checks the log's signature and an
RFC 9162 consistency proof from the last checkpoint it accepted, so a log that was forked,
truncated or rewritten after a client saw it is caught by that client (the "gossip" defence of
Certificate Transparency, RFC 9162 section 8.1.3 / 11.3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from securefl.audit.merkle import MerkleTree, verify_consistency
from securefl.audit.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    b64decode_strict,
    b64encode,
    open_checkpoint,
)
from securefl.crypto.signing import SigningKey
from securefl.errors import AuditError, StateError
from securefl.storage import atomic_write_json

__all__ = ["AuditLog", "CheckpointKeeper", "cosign_checkpoint"]


class AuditLog:
    """Append-only list of leaf bytes with an incremental Merkle tree and a checkpoint signer.
    Built from a :class:`NoteVerifier` instead of a key it is read-only: it cannot sign."""

    def __init__(self, origin: str, signer: SigningKey | NoteVerifier) -> None:
        self.origin = origin
        if isinstance(signer, NoteVerifier):
            self._signer: NoteSigner | None = None
            self._verifier = signer
        else:
            self._signer = NoteSigner(origin, signer)
            self._verifier = self._signer.verifier
        self.tree = MerkleTree()
        self._leaves: list[bytes] = []

    @property
    def verifier(self) -> NoteVerifier:
        return self._verifier

    @property
    def size(self) -> int:
        return self.tree.size

    def append(self, leaf: bytes) -> int:
        """Append one leaf (its bytes are hashed as an RFC 9162 leaf); return its index."""
        self._leaves.append(leaf)
        return self.tree.append_data(leaf)

    def leaf(self, index: int) -> bytes:
        return self._leaves[index]

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        n = self.size if size is None else size
        return Checkpoint(self.origin, n, self.tree.root(n))

    def signed_checkpoint(self, size: int | None = None) -> bytes:
        """The checkpoint of ``size`` leaves as a signed note (Ed25519, the log key)."""
        if self._signer is None:
            raise StateError("this audit log was opened without its key: it cannot sign")
        return self.checkpoint(size).sign([self._signer])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self.tree.consistency_proof(old_size, new_size)


def cosign_checkpoint(note: bytes, client: NoteSigner, log_key: NoteVerifier) -> bytes:
    """A client adds its signature to a checkpoint it has verified (a witness co-signature)."""
    open_checkpoint(note, log_key)
    return add_signatures(note, [client])


class CheckpointKeeper:
    """The checkpoints one participant has accepted from the log, newest last.

    ``receive`` accepts a new checkpoint only if the log key signed it, its origin is the log's,
    and it is consistent with the last accepted one (RFC 9162 2.1.4.2). Anything else raises
    :class:`AuditError`: a smaller tree is a rollback, a different root for an equal size or a
    failing consistency proof is a fork or a rewrite. With ``path``, accepted checkpoints are
    saved atomically (JSON list of notes) and reloaded on construction.
    """

    def __init__(self, log_key: NoteVerifier, *, origin: str | None = None,
                 path: Path | None = None, cosigner: NoteSigner | None = None) -> None:
        self.log_key = log_key
        self.origin = origin if origin is not None else log_key.name
        self.path = path
        self.cosigner = cosigner
        self._notes: list[bytes] = []
        self._checkpoints: list[Checkpoint] = []
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read the checkpoint store {path.name}") from exc
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise AuditError(f"checkpoint store {path.name} is malformed")
        prev: Checkpoint | None = None
        for s in data:
            note = b64decode_strict(s, what="stored checkpoint")
            cp, _ = open_checkpoint(note, self.log_key, origin=self.origin)
            if prev is not None and cp.size < prev.size:
                raise AuditError(f"checkpoint store {path.name} is out of order")
            self._notes.append(note)
            self._checkpoints.append(cp)
            prev = cp

    @property
    def latest(self) -> Checkpoint | None:
        return self._checkpoints[-1] if self._checkpoints else None

    @property
    def checkpoints(self) -> tuple[Checkpoint, ...]:
        return tuple(self._checkpoints)

    def receive(self, note: bytes, consistency_proof: Sequence[bytes]) -> Checkpoint:
        """Verify and store a new checkpoint; return it. ``consistency_proof`` goes from the last
        accepted checkpoint's size to the new size (empty for the first checkpoint)."""
        cp, _ = open_checkpoint(note, self.log_key, origin=self.origin)
        last = self.latest
        if last is not None:
            if cp.size < last.size:
                raise AuditError(
                    f"log rolled back from size {last.size} to {cp.size}",
                    hint="the server presented an older or forked log; keep both notes as evidence",
                )
            try:
                verify_consistency(last.size, cp.size, last.root_hash, cp.root_hash,
                                   consistency_proof)
            except AuditError as exc:
                raise AuditError(
                    f"checkpoint of size {cp.size} is not consistent with the accepted one of "
                    f"size {last.size}: {exc.message}",
                    hint="the log was forked or rewritten; keep both signed notes as evidence",
                ) from exc
        self._notes.append(note)
        self._checkpoints.append(cp)
        if self.path is not None:
            atomic_write_json(self.path, [b64encode(n) for n in self._notes])
        return cp

    def cosign_latest(self) -> bytes:
        """The latest accepted checkpoint co-signed by this keeper's ``cosigner`` key."""
        if self.cosigner is None or not self._notes:
            raise AuditError("no co-signing key or no checkpoint to co-sign")
        return add_signatures(self._notes[-1], [self.cosigner])
