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

from securefl.audit.note import b64decode_strict, b64encode
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.errors import AuditError, AuditFormatError, SignatureError

CONFIG = "config.json"
FEDERATION = "federation.json"
SERVER_KEY = "keys/server.key"
LEDGER = "ledger.jsonl"
LOG = "audit/log.jsonl"
CHECKPOINTS = "audit/checkpoints"
METRICS = "metrics.jsonl"
COMMIT = "COMMIT"
RESULT = "result.json"
#: the compliance report (securefl.report): derived from the directory, not evidence, never read
#: by verification; allowed beside the files verification checks
REPORT = "report.html"
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


#: COMMIT format version. 1 (unsigned) is refused with AuditFormatError: nothing bound its
#: ``result_sha256`` to the log key, so a finished run could be passed off as an unfinished one.
COMMIT_VERSION: Literal[2] = 2
COMMIT_DOMAIN = b"securefl-audit-commit-v2\n"


class CommitPointer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The COMMIT file: the last committed round, the committed size (bytes) of each append-only
    file, the sha256 of result.json once the run finished (else null), the log's root hash
    (base64) after the last round, and the log key's Ed25519 signature (base64) of
    :meth:`signed_bytes`. Replacing it atomically is the commit point of a round and of finish();
    the signature makes "finished or not" a statement of the log key, like the checkpoints."""

    version: Literal[2]
    last_round: NonNeg
    sizes: CommitSizes
    result_sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None
    root_hash: Annotated[str, msgspec.Meta(min_length=44, max_length=44)]
    signature: Annotated[str, msgspec.Meta(min_length=88, max_length=88)] = ""

    def signed_bytes(self) -> bytes:
        """The domain label, then the canonical JSON of every field but ``signature``."""
        fields = {f: getattr(self, f) for f in self.__struct_fields__ if f != "signature"}
        return COMMIT_DOMAIN + msgspec.json.encode(fields, order="sorted")


def sign_commit(ptr: CommitPointer, key: SigningKey) -> CommitPointer:
    return msgspec.structs.replace(ptr, signature=b64encode(key.sign(ptr.signed_bytes())))


def check_commit_signature(ptr: CommitPointer, key: VerifyKey) -> None:
    """Raise AuditError unless the log key signed COMMIT."""
    sig = b64decode_strict(ptr.signature, what=f"{COMMIT} signature")
    try:
        key.verify(sig, ptr.signed_bytes())
    except SignatureError as exc:
        raise AuditError(f"{COMMIT}: not signed by the log key {key.fingerprint()}") from exc


def encode_commit(ptr: CommitPointer) -> bytes:
    return msgspec.json.encode(ptr, order="sorted")


class _Versioned(msgspec.Struct):
    version: Any = None


def decode_commit(data: bytes) -> CommitPointer:
    """Parse COMMIT (canonical JSON); a COMMIT of another format version raises
    :class:`AuditFormatError` naming it (version 1: unsigned, written by securefl 0.1.0 before
    the audit-claims change)."""
    try:
        version = msgspec.json.decode(data, type=_Versioned).version
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        version = COMMIT_VERSION  # let the strict decoder below name the problem
    if version != COMMIT_VERSION:
        raise AuditFormatError(
            f"{COMMIT}: format version {version!r}; this securefl verifies version "
            f"{COMMIT_VERSION} only" + (" (version 1 COMMIT files are unsigned, so whether the "
                                         "run finished cannot be checked)" if version == 1
                                         else ""))
    try:
        ptr = msgspec.json.decode(data, type=CommitPointer)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{COMMIT}: malformed: {exc}") from exc
    if encode_commit(ptr) != data:
        raise AuditError(f"{COMMIT}: not in canonical form")
    return ptr


#: largest run-directory file read into memory; a larger one is refused before reading (issue 17)
MAX_FILE_BYTES = 4 << 30


def read_bytes(run_dir: Path, rel: str) -> bytes:
    try:
        with (run_dir / rel).open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise AuditError(f"{rel}: {size} bytes, more than {MAX_FILE_BYTES}; not read")
            return fh.read(size)  # read(n) allocates n bytes up front
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
