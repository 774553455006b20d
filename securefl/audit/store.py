"""The crash-safe run directory: models, privacy ledger, audit log, checkpoints, metrics, COMMIT.

Commit protocol of one round (protocols/audit/spec.md, "Commit protocol"):

1. write ``models/round-NNNNN.safetensors`` atomically (temp file, fsync, rename, fsync dir);
2. append the round's ledger lines to ``ledger.jsonl`` (fsync);
3. append the round's leaf to ``audit/log.jsonl`` (fsync);
4. append the signed checkpoint to ``audit/checkpoints`` (fsync);
5. append the metrics line to ``metrics.jsonl`` (fsync);
6. atomically replace ``COMMIT`` (last committed round, committed size of each append-only file,
   the log's root hash; signed by the log key).

Step 6 is the commit point. :meth:`RunStore.open` cuts every append-only file back to its committed
size and deletes model files of uncommitted rounds, so a crash at any instant loses nothing that was
committed and duplicates nothing that was not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

import securefl
from securefl.audit import layout as L
from securefl.audit.log import AuditLog
from securefl.audit.note import Checkpoint, NoteVerifier, b64encode
from securefl.audit.records import (
    RECORD_VERSION,
    GenesisRecord,
    LeafRecord,
    RoundRecord,
    canonical_json,
    decode_leaf,
    encode_leaf,
)
from securefl.audit.verify import VerifyReport, prove, show, verify_proof, verify_run_dir
from securefl.crypto.signing import SigningKey
from securefl.errors import AuditError, StateError
from securefl.storage import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    from securefl.result import RunResult

__all__ = ["RunStore", "VerifyReport", "prove", "recover", "show", "verify_proof", "verify_run_dir"]

#: record fields the caller supplies to commit_round (the rest RunStore fills in).
CALLER_FIELDS = frozenset({
    "session_id", "aggregation", "participants", "survivors", "dropouts", "input_digests",
    "aggregate_digest", "status", "error_code",
})
_REQUIRED_FIELDS = frozenset({"session_id", "aggregation", "participants", "survivors"})


def _ids(xs: Any) -> list[str]:
    return sorted(str(x) for x in xs)


def _id_map(d: Any) -> dict[str, Any]:
    return {str(k): v for k, v in dict(d).items()}


def _check_public(obj: Any, where: str) -> None:
    """Refuse obvious private-key material in a file that must hold public data only."""
    if isinstance(obj, str):
        if "PRIVATE" in obj and ("-----BEGIN" in obj or obj.startswith("PRIVATE+KEY")):
            raise AuditError(f"{where} must hold public keys only")
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_public(v, where)
    elif isinstance(obj, list):
        for v in obj:
            _check_public(v, where)


class RunStore:
    """A run directory opened for appending rounds. Create with :meth:`create`, resume with
    :meth:`open`. Not thread-safe; one writer per directory."""

    def __init__(self, run_dir: Path, *, log: AuditLog, server_key: SigningKey | None,
                 records: list[LeafRecord], commit: L.CommitPointer, config_sha256: str,
                 federation_sha256: str) -> None:
        self.run_dir = run_dir
        self.log = log
        self._server_key = server_key
        self._records = records
        self._commit = commit
        self.config_sha256 = config_sha256
        self.federation_sha256 = federation_sha256
        self._broken = False

    # ------------------------------------------------------------------ properties
    @property
    def last_round(self) -> int:
        """Last committed round (0 = only the initial model)."""
        return self._commit.last_round

    @property
    def origin(self) -> str:
        return self.log.origin

    @property
    def verifier(self) -> NoteVerifier:
        return self.log.verifier

    @property
    def records(self) -> tuple[LeafRecord, ...]:
        """Leaf 0 (genesis) then one RoundRecord per committed round."""
        return tuple(self._records)

    @property
    def checkpoint(self) -> Checkpoint:
        return self.log.checkpoint()

    def signed_checkpoint(self) -> bytes:
        return self.log.signed_checkpoint()

    def model_sha256(self, round_: int) -> str:
        self._check_round(round_)
        rec = self._records[round_]
        return rec.model_sha256 if isinstance(rec, GenesisRecord) else rec.model_sha256_after

    def _check_round(self, round_: int) -> None:
        if not 0 <= round_ <= self.last_round:
            raise AuditError(f"round {round_} is not committed (last is {self.last_round})")

    def model_bytes(self, round_: int) -> bytes:
        """The model saved after ``round_`` (0 = initial), checked against its recorded sha256."""
        self._check_round(round_)
        data = L.read_bytes(self.run_dir, L.model_name(round_))
        if L.sha256_hex(data) != self.model_sha256(round_):
            raise AuditError(f"{L.model_name(round_)}: sha256 does not match the audit record")
        return data

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, run_dir: Path, *, config: dict[str, Any], server_key: SigningKey,
               origin: str, initial_model: bytes, federation: dict[str, Any],
               write_key_file: bool = True) -> RunStore:
        """Start a new run directory (must not exist or be empty) with the genesis leaf (leaf 0),
        its signed checkpoint and COMMIT at round 0. ``federation`` holds public keys only.
        Not resumable: if it crashes, delete the directory and create it again."""
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise AuditError(f"{run_dir} is not empty", hint="use RunStore.open to resume a run")
        verifier = NoteVerifier(origin, server_key.verify_key)
        _check_public(federation, L.FEDERATION)
        config_bytes = canonical_json(config)
        fed_doc = {
            "version": 1,
            "origin": origin,
            "server_key": verifier.to_string(),
            "server_key_file": L.SERVER_KEY if write_key_file else None,
            "members": federation,
        }
        fed_bytes = canonical_json(fed_doc)
        genesis = GenesisRecord(
            version=RECORD_VERSION, origin=origin, config_sha256=L.sha256_hex(config_bytes),
            federation_sha256=L.sha256_hex(fed_bytes), model_sha256=L.sha256_hex(initial_model),
            software_version=securefl.__version__,
        )
        leaf = encode_leaf(genesis)
        log = AuditLog(origin, server_key)
        log.append(leaf)
        note = log.signed_checkpoint()

        run_dir.mkdir(parents=True, exist_ok=True)
        for sub in L.SUBDIRS:
            (run_dir / sub).mkdir(exist_ok=True)
        atomic_write_bytes(run_dir / L.CONFIG, config_bytes)
        atomic_write_bytes(run_dir / L.FEDERATION, fed_bytes)
        if write_key_file:
            atomic_write_bytes(run_dir / L.SERVER_KEY, server_key.to_pem().expose(), mode=0o600)
        atomic_write_bytes(run_dir / L.model_name(0), initial_model)
        contents = {L.LEDGER: b"", L.LOG: leaf + b"\n", L.CHECKPOINTS: note, L.METRICS: b""}
        for rel, data in contents.items():
            atomic_write_bytes(run_dir / rel, data)
        commit = _sign_commit(log, server_key, last_round=0, sizes=L.CommitSizes(
            ledger=0, log=len(contents[L.LOG]), checkpoints=len(note), metrics=0),
            result_sha256=None)
        atomic_write_bytes(run_dir / L.COMMIT, L.encode_commit(commit))
        return cls(run_dir, log=log, server_key=server_key, records=[genesis], commit=commit,
                   config_sha256=genesis.config_sha256,
                   federation_sha256=genesis.federation_sha256)

    @classmethod
    def open(cls, run_dir: Path, *, server_key: SigningKey | None = None,
             verify: bool = True) -> RunStore:
        """Recover ``run_dir`` to its last committed round (cut torn appends, delete uncommitted
        model files and temp files), verify it (unless ``verify=False``) and open it for appending.
        ``server_key`` defaults to keys/server.key; when the directory has no key file (a
        deployment keeps it elsewhere) and none is given, the store is read-only (commit_round and
        finish raise StateError)."""
        run_dir = Path(run_dir)
        recover(run_dir)
        if verify:
            verify_run_dir(run_dir)
        commit = L.decode_commit(L.read_bytes(run_dir, L.COMMIT))
        origin, log_key = _federation_key(run_dir)
        if server_key is None and (run_dir / L.SERVER_KEY).exists():
            server_key = SigningKey.from_pem(L.read_bytes(run_dir, L.SERVER_KEY))
        if server_key is not None and log_key.key != server_key.verify_key:
            raise AuditError("the server key does not match federation.json")
        log = AuditLog(origin, server_key if server_key is not None else log_key)
        records: list[LeafRecord] = []
        for line in L.split_lines(L.read_bytes(run_dir, L.LOG), L.LOG):
            records.append(decode_leaf(line))
            log.append(line)
        if log.size != commit.last_round + 1 or not isinstance(records[0], GenesisRecord):
            raise AuditError(f"{L.LOG}: {log.size} leaves for last round {commit.last_round}")
        g = records[0]
        store = cls(run_dir, log=log, server_key=server_key, records=records, commit=commit,
                    config_sha256=g.config_sha256, federation_sha256=g.federation_sha256)
        return store

    # ------------------------------------------------------------------ commit
    def commit_round(self, *, round_: int, record_fields: dict[str, Any], model: bytes,
                     ledger_lines: list[bytes], metrics: dict[str, float]) -> Checkpoint:
        """Durably commit round ``round_`` (must be last_round + 1); return its checkpoint.

        ``record_fields``: session_id (hex), aggregation, participants, survivors, and optionally
        dropouts {client: stage}, input_digests {client: sha256 hex}, aggregate_digest,
        status ("committed" | "aborted") and error_code (e.g. "SFL310"). Client ids are turned into
        strings and lists sorted. Everything else (hashes, round, version) is filled in here.
        """
        key = self._check_writable()
        if round_ != self.last_round + 1:
            raise StateError(f"round {round_} cannot follow committed round {self.last_round}")
        unknown = set(record_fields) - CALLER_FIELDS
        missing = _REQUIRED_FIELDS - set(record_fields)
        if unknown or missing:
            raise AuditError(f"record_fields: unknown {sorted(unknown)}, missing {sorted(missing)}")
        for line in ledger_lines:
            if not isinstance(line, bytes) or b"\n" in line:
                raise AuditError("each ledger line is bytes without a newline")
        try:
            metrics_f = {str(k): float(v) for k, v in metrics.items()}
        except (TypeError, ValueError) as exc:
            raise AuditError(f"round {round_}: metrics must be numbers") from exc
        fields: dict[str, Any] = {
            "type": "round",
            "version": RECORD_VERSION,
            "session_id": record_fields["session_id"],
            "round": round_,
            "config_sha256": self.config_sha256,
            "federation_sha256": self.federation_sha256,
            "aggregation": record_fields["aggregation"],
            "participants": _ids(record_fields["participants"]),
            "survivors": _ids(record_fields["survivors"]),
            "dropouts": _id_map(record_fields.get("dropouts", {})),
            "input_digests": _id_map(record_fields.get("input_digests", {})),
            "aggregate_digest": record_fields.get("aggregate_digest"),
            "model_sha256_before": self.model_sha256(self.last_round),
            "model_sha256_after": L.sha256_hex(model),
            "ledger_entries_sha256": [L.sha256_hex(x) for x in ledger_lines],
            "metrics": metrics_f,
            "software_version": securefl.__version__,
            "status": record_fields.get("status", "committed"),
            "error_code": record_fields.get("error_code"),
        }
        try:
            record = msgspec.convert(fields, RoundRecord)
        except msgspec.ValidationError as exc:
            raise AuditError(f"round {round_}: invalid record: {exc}") from exc
        leaf = encode_leaf(record)
        leaf_line = leaf + b"\n"
        ledger_bytes = b"".join(x + b"\n" for x in ledger_lines)
        metrics_line = canonical_json({"metrics": metrics_f, "round": round_}) + b"\n"

        self._broken = True  # until COMMIT is replaced; memory and disk may disagree meanwhile
        self.log.append(leaf)
        note = self.log.signed_checkpoint()
        d = self.run_dir
        atomic_write_bytes(d / L.model_name(round_), model)
        appends = ((L.LEDGER, ledger_bytes), (L.LOG, leaf_line), (L.CHECKPOINTS, note),
                   (L.METRICS, metrics_line))
        for rel, data in appends:
            if data:
                L.append_bytes(d / rel, data)
        old = self._commit.sizes
        commit = _sign_commit(self.log, key, last_round=round_, sizes=L.CommitSizes(
            ledger=old.ledger + len(ledger_bytes), log=old.log + len(leaf_line),
            checkpoints=old.checkpoints + len(note), metrics=old.metrics + len(metrics_line)),
            result_sha256=None)
        atomic_write_bytes(d / L.COMMIT, L.encode_commit(commit))
        _remove(d / L.RESULT)  # a result of an earlier finish() no longer describes the run
        self._commit = commit
        self._records.append(record)
        self._broken = False
        return self.log.checkpoint()

    def finish(self, result: RunResult) -> None:
        """Write result.json atomically: ``result`` (the one result type every driver builds,
        securefl.result, protocols/audit/result.schema.json) bound to the last record and the log
        root, signed by the server key; then record its sha256 in COMMIT, signed too (the commit
        point). A later commit_round removes it. The claims verify_run_dir re-derives are listed
        in securefl.audit.claims."""
        key = self._check_writable()
        body = {
            "version": 1,
            "last_round": self.last_round,
            "model_sha256": self.model_sha256(self.last_round),
            "tree_size": self.log.size,
            "root_hash": b64encode(self.log.tree.root()),
            "result": result.to_dict(),
        }
        body_bytes = canonical_json(body)
        sig = key.sign(L.RESULT_DOMAIN + body_bytes)
        data = canonical_json({"body": body, "signature": b64encode(sig)})
        atomic_write_bytes(self.run_dir / L.RESULT, data)
        commit = _sign_commit(self.log, key, last_round=self.last_round, sizes=self._commit.sizes,
                              result_sha256=L.sha256_hex(data))
        atomic_write_bytes(self.run_dir / L.COMMIT, L.encode_commit(commit))
        self._commit = commit

    def _check_writable(self) -> SigningKey:
        if self._broken:
            raise StateError("a previous commit failed half-way; reopen with RunStore.open")
        if self._server_key is None:
            raise StateError("the run directory was opened without the server key: read-only",
                             hint="pass server_key to RunStore.open")
        return self._server_key


def _sign_commit(log: AuditLog, key: SigningKey, *, last_round: int, sizes: L.CommitSizes,
                 result_sha256: str | None) -> L.CommitPointer:
    ptr = L.CommitPointer(version=L.COMMIT_VERSION, last_round=last_round, sizes=sizes,
                          result_sha256=result_sha256, root_hash=b64encode(log.tree.root()))
    return L.sign_commit(ptr, key)


def _federation_key(run_dir: Path) -> tuple[str, NoteVerifier]:
    """The log origin and key federation.json names (checked in full by verify_run_dir)."""
    fed = L.decode_json_canonical(L.read_bytes(run_dir, L.FEDERATION), L.FEDERATION)
    if not isinstance(fed, dict) or not isinstance(fed.get("origin"), str) or not isinstance(
        fed.get("server_key"), str
    ):
        raise AuditError(f"{L.FEDERATION}: unexpected structure")
    return fed["origin"], NoteVerifier.from_string(fed["server_key"])


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        fsync_dir(path.parent)


def recover(run_dir: Path) -> L.CommitPointer:
    """Bring ``run_dir`` back to its COMMIT: truncate append-only files to their committed sizes,
    delete model files of later rounds and leftover temp files. Idempotent."""
    if not (run_dir / L.COMMIT).exists():
        raise AuditError(f"{run_dir}: no {L.COMMIT} file",
                         hint="not a run directory, or its creation did not finish: create it "
                         "again")
    commit = L.decode_commit(L.read_bytes(run_dir, L.COMMIT))
    # only a COMMIT the log key signed may cut files back (a forged one could erase rounds)
    L.check_commit_signature(commit, _federation_key(run_dir)[1].key)
    for rel, size in commit.sizes.by_file().items():
        path = run_dir / rel
        actual = path.stat().st_size if path.exists() else -1
        if actual < size:
            raise AuditError(f"{rel}: {actual} bytes, shorter than the committed {size}",
                             hint="committed data was lost; restore the run directory from a "
                             "backup")
        if actual > size:
            with open(path, "r+b") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())
    result = run_dir / L.RESULT
    if commit.result_sha256 is None and result.exists():
        _remove(result)  # written by a finish() whose COMMIT did not happen, or now stale
    for sub in ("", *L.SUBDIRS):
        directory = run_dir / sub if sub else run_dir
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                _remove(p)
            elif sub == L.MODELS_DIR:
                r = L.model_round(p.name)
                if r is not None and r > commit.last_round:
                    _remove(p)
    return commit
