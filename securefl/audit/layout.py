"""The run directory's file names, the COMMIT pointer and the small file helpers they share.

See protocols/audit/spec.md ("Run directory") for the layout and the commit protocol.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from securefl.errors import AuditError

CONFIG = "config.json"
FEDERATION = "federation.json"
SERVER_KEY = "keys/server.key"
LEDGER = "ledger.jsonl"
LOG = "audit/log.jsonl"
CHECKPOINTS = "audit/checkpoints"
METRICS = "metrics.jsonl"
COMMIT = "COMMIT"
RESULT = "result.json"
MODELS_DIR = "models"
#: append-only files whose committed sizes COMMIT records, in the order commit_round appends them.
APPEND_ONLY = (LEDGER, LOG, CHECKPOINTS, METRICS)
SUBDIRS = ("keys", MODELS_DIR, "audit")
_MODEL_RE = re.compile(r"round-([0-9]{5,9})\.safetensors")
RESULT_DOMAIN = b"securefl-audit-result-v1\n"


def model_name(round_: int) -> str:
    """``models/round-00000.safetensors`` (at least 5 digits)."""
    return f"{MODELS_DIR}/round-{round_:05d}.safetensors"


def model_round(filename: str) -> int | None:
    """Round number of a model file name, or None if the name is not one ``model_name`` makes."""
    m = _MODEL_RE.fullmatch(filename)
    if m is None:
        return None
    r = int(m.group(1))
    return r if f"round-{r:05d}.safetensors" == filename else None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NonNeg = Annotated[int, msgspec.Meta(ge=0)]


class CommitSizes(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={
    "ledger": LEDGER, "log": LOG, "checkpoints": CHECKPOINTS, "metrics": METRICS}):
    ledger: NonNeg
    log: NonNeg
    checkpoints: NonNeg
    metrics: NonNeg

    def by_file(self) -> dict[str, int]:
        return {LEDGER: self.ledger, LOG: self.log, CHECKPOINTS: self.checkpoints,
                METRICS: self.metrics}


class CommitPointer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The COMMIT file: the last committed round, the committed size (bytes) of each
    append-only file and the sha256 of result.json once the run finished (else null).
    Replacing it atomically is the commit point of a round and of finish()."""

    version: Literal[1]
    last_round: NonNeg
    sizes: CommitSizes
    result_sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None


def encode_commit(ptr: CommitPointer) -> bytes:
    return msgspec.json.encode(ptr, order="sorted")


def decode_commit(data: bytes) -> CommitPointer:
    try:
        ptr = msgspec.json.decode(data, type=CommitPointer)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{COMMIT}: malformed: {exc}") from exc
    if encode_commit(ptr) != data:
        raise AuditError(f"{COMMIT}: not in canonical form")
    return ptr


def read_bytes(run_dir: Path, rel: str) -> bytes:
    try:
        return (run_dir / rel).read_bytes()
    except FileNotFoundError as exc:
        raise AuditError(f"{rel}: missing") from exc
    except OSError as exc:
        raise AuditError(f"{rel}: unreadable ({exc.strerror})") from exc


def split_lines(data: bytes, rel: str) -> list[bytes]:
    """Lines of an append-only file; every line, the last included, ends with ``\\n``."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise AuditError(f"{rel}: last line is not terminated (torn write?)")
    return data[:-1].split(b"\n")


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync (O_APPEND; a torn tail is cut back by RunStore.open)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def decode_json_canonical(data: bytes, rel: str) -> Any:
    """Generic JSON that must be in canonical form (sorted keys, no whitespace)."""
    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{rel}: malformed JSON") from exc
    if msgspec.json.encode(obj, order="sorted") != data:
        raise AuditError(f"{rel}: not in canonical JSON form")
    return obj
