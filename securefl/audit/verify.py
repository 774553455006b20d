"""Independent verification of a run directory, proofs for third parties, and a readable summary.

:func:`verify_run_dir` trusts nothing in the directory but the server key (from federation.json,
or pinned with ``pubkey``). It raises :class:`~securefl.errors.AuditError` naming the first bad
file and record; on success it returns a :class:`VerifyReport`, which says which key the log was
checked against and whether that key was pinned: without a pinned key, verification proves only
that the directory is consistent with itself (anyone can rewrite and re-sign it with a new key).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from securefl.audit import layout as L
from securefl.audit.claims import ClaimsChecked, check_result_claims
from securefl.audit.merkle import (
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from securefl.audit.note import (
    Checkpoint,
    NoteVerifier,
    b64decode_strict,
    b64encode,
    open_checkpoint,
)
from securefl.audit.records import GenesisRecord, LeafRecord, RoundRecord, decode_leaf
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.errors import AuditError, CryptoError, SecureFLError
from securefl.result import RunResult, decode_result

__all__ = ["VerifyReport", "prove", "show", "verify_proof", "verify_run_dir"]


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification established."""

    run_dir: str
    origin: str
    server_key: str  # verifier key string
    last_round: int
    tree_size: int
    root_hash: str  # base64
    rounds_committed: int
    rounds_aborted: int
    ledger_lines: int
    has_result: bool
    files_checked: list[str] = field(default_factory=list)
    key_fingerprint: str = ""  # first 16 hex digits of sha256(public key)
    key_pinned: bool = False
    #: where the trusted key came from ("federation.json in the run directory" when not pinned)
    key_source: str = "federation.json in the run directory (not pinned)"
    #: result.json claims re-derived from the log and ledger, and those present but not checkable
    claims_checked: list[str] = field(default_factory=list)
    claims_unchecked: list[str] = field(default_factory=list)
    commit_version: int = L.COMMIT_VERSION

    @property
    def assurance(self) -> str:
        """What the verification proves, in one sentence."""
        if self.key_pinned:
            return (f"the run directory is exactly what the pinned key {self.key_fingerprint} "
                    "signed")
        return ("internal consistency only: the key was taken from the directory itself, so "
                "a directory rewritten and re-signed with another key verifies too; pin the "
                "server key (--key or --manifest)")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__},
                "assurance": self.assurance}


def _fail(where: str, exc: SecureFLError | str) -> AuditError:
    msg = exc.message if isinstance(exc, SecureFLError) else exc
    return AuditError(f"{where}: {msg}")


def _load_federation(run_dir: Path, pubkey: VerifyKey | None) -> tuple[dict[str, Any], bytes,
                                                                        NoteVerifier]:
    data = L.read_bytes(run_dir, L.FEDERATION)
    fed = L.decode_json_canonical(data, L.FEDERATION)
    keys = {"version", "origin", "server_key", "server_key_file", "members"}
    if not isinstance(fed, dict) or set(fed) != keys or fed["version"] != 1:
        raise AuditError(f"{L.FEDERATION}: unexpected structure")
    if not isinstance(fed["origin"], str) or not isinstance(fed["server_key"], str):
        raise AuditError(f"{L.FEDERATION}: origin and server_key must be strings")
    if fed["server_key_file"] not in (None, L.SERVER_KEY):
        raise AuditError(f"{L.FEDERATION}: unexpected server_key_file")
    try:
        server = NoteVerifier.from_string(fed["server_key"])
    except AuditError as exc:
        raise _fail(f"{L.FEDERATION}: server_key", exc) from exc
    if server.name != fed["origin"]:
        raise AuditError(f"{L.FEDERATION}: server key name is not the log origin")
    if pubkey is not None and server.key != pubkey:
        raise AuditError(f"{L.FEDERATION}: server key {server.key.fingerprint()} is not the "
                         f"pinned key {pubkey.fingerprint()}")
    return fed, data, server


def _check_key_file(run_dir: Path, server: NoteVerifier) -> None:
    """A private key is only checkable against its public key: it must be the canonical PKCS#8
    PEM encoding of the key whose public half is the federation's server key."""
    data = L.read_bytes(run_dir, L.SERVER_KEY)
    try:
        key = SigningKey.from_pem(data)
    except CryptoError as exc:
        raise _fail(L.SERVER_KEY, exc) from exc
    except Exception as exc:  # from_pem lets cryptography's UnsupportedAlgorithm escape
        raise AuditError(f"{L.SERVER_KEY}: not an Ed25519 PKCS#8 PEM key") from exc
    if key.verify_key != server.key:
        raise AuditError(f"{L.SERVER_KEY}: does not match the server key in {L.FEDERATION}")
    if key.to_pem().expose() != data:
        raise AuditError(f"{L.SERVER_KEY}: not in canonical PEM form")


def _parse_checkpoint_file(data: bytes) -> list[bytes]:
    """Split audit/checkpoints into notes: each is 3 body lines, a blank line, 1 signature line."""
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise AuditError(f"{L.CHECKPOINTS}: last note is not terminated")
    lines = lines[:-1]
    if len(lines) % 5:
        raise AuditError(f"{L.CHECKPOINTS}: {len(lines)} lines is not a whole number of notes")
    return [b"".join(x + b"\n" for x in lines[i : i + 5]) for i in range(0, len(lines), 5)]


def _walk_files(run_dir: Path) -> set[str]:
    out: set[str] = set()
    for root, dirs, files in os.walk(run_dir):
        rel_root = Path(root).relative_to(run_dir)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            out.add((rel_root / name).as_posix())
        for d in dirs:
            rel = (rel_root / d).as_posix()
            if rel not in L.SUBDIRS:
                out.add(rel + "/")
    return out


def verify_run_dir(run_dir: Path, *, pubkey: VerifyKey | None = None,
                   key_source: str | None = None) -> VerifyReport:
    """Check everything in ``run_dir`` (see protocols/audit/spec.md, "Verification").
    ``pubkey`` pins the log key; ``key_source`` says where it came from (for the report)."""
    run_dir = Path(run_dir)
    checked: list[str] = []
    commit = L.decode_commit(L.read_bytes(run_dir, L.COMMIT))
    fed, fed_bytes, server = _load_federation(run_dir, pubkey)
    L.check_commit_signature(commit, server.key)
    checked += [L.COMMIT, L.FEDERATION]
    if fed["server_key_file"] is not None:
        _check_key_file(run_dir, server)
        checked.append(L.SERVER_KEY)
    config_bytes = L.read_bytes(run_dir, L.CONFIG)
    config_sha = L.sha256_hex(config_bytes)
    fed_sha = L.sha256_hex(fed_bytes)
    checked.append(L.CONFIG)
    sizes = commit.sizes.by_file()
    contents: dict[str, bytes] = {}
    for rel in L.APPEND_ONLY:
        contents[rel] = L.read_bytes(run_dir, rel)
        if len(contents[rel]) != sizes[rel]:
            raise AuditError(f"{rel}: {len(contents[rel])} bytes, but {L.COMMIT} says "
                             f"{sizes[rel]}", hint="run RunStore.open (resume) to recover, or "
                             "the file was altered")

    # ---- leaves: canonical records, chained, bound to config and federation
    leaves = L.split_lines(contents[L.LOG], L.LOG)
    if len(leaves) != commit.last_round + 1:
        raise AuditError(f"{L.LOG}: {len(leaves)} records for last round {commit.last_round}")
    records: list[LeafRecord] = []
    for i, line in enumerate(leaves):
        where = f"{L.LOG} record {i} (round {i})"
        try:
            rec = decode_leaf(line)
        except AuditError as exc:
            raise _fail(where, exc) from exc
        if i == 0:
            if not isinstance(rec, GenesisRecord):
                raise AuditError(f"{where}: first record is not the genesis record")
            if rec.origin != server.name:
                raise AuditError(f"{where}: origin is not the federation's")
            prev_model = rec.model_sha256
        else:
            if not isinstance(rec, RoundRecord) or rec.round != i:
                raise AuditError(f"{where}: expected the record of round {i}")
            if rec.model_sha256_before != prev_model:
                raise AuditError(f"{where}: model_sha256_before is not round {i - 1}'s model")
            prev_model = rec.model_sha256_after
        if rec.config_sha256 != config_sha:
            raise AuditError(f"{where}: config_sha256 does not match {L.CONFIG}")
        if rec.federation_sha256 != fed_sha:
            raise AuditError(f"{where}: federation_sha256 does not match {L.FEDERATION}")
        records.append(rec)
    checked.append(L.LOG)

    # ---- checkpoints: one per leaf, signed, matching the tree built from the leaves
    notes = _parse_checkpoint_file(contents[L.CHECKPOINTS])
    if len(notes) != len(leaves):
        raise AuditError(f"{L.CHECKPOINTS}: {len(notes)} checkpoints for {len(leaves)} records")
    tree = MerkleTree()
    cps: list[Checkpoint] = []
    for i, (leaf, note) in enumerate(zip(leaves, notes, strict=True)):
        where = f"{L.CHECKPOINTS} checkpoint {i + 1} (after round {i})"
        tree.append_data(leaf)
        try:
            cp, opened = open_checkpoint(note, server, origin=server.name)
        except SecureFLError as exc:
            raise _fail(where, exc) from exc
        if opened.unverified or len(opened.verified) != 1 or cp.extensions:
            raise AuditError(f"{where}: unexpected signature or extension lines")
        if cp.size != i + 1:
            raise AuditError(f"{where}: tree size {cp.size}, expected {i + 1}")
        if cp.root_hash != tree.root():
            raise AuditError(f"{where}: root hash does not match the records in {L.LOG}")
        cps.append(cp)
    final = cps[-1]
    if commit.root_hash != b64encode(final.root_hash):
        raise AuditError(f"{L.COMMIT}: root_hash is not the root of the records in {L.LOG}")
    for i, leaf in enumerate(leaves):  # RFC 9162 2.1.3: every record is in the final tree
        try:
            verify_inclusion(leaf_hash(leaf), i, final.size, tree.inclusion_proof(i, final.size),
                             final.root_hash)
        except AuditError as exc:
            raise _fail(f"{L.LOG} record {i}", exc) from exc
    for a, b in itertools.pairwise(cps):  # RFC 9162 2.1.4: no checkpoint was forked
        for c in (b, final):
            try:
                verify_consistency(a.size, c.size, a.root_hash, c.root_hash,
                                   tree.consistency_proof(a.size, c.size))
            except AuditError as exc:
                raise _fail(f"{L.CHECKPOINTS} checkpoint {a.size}", exc) from exc
    checked.append(L.CHECKPOINTS)

    # ---- models: one file per round, hashes as recorded
    for i, rec in enumerate(records):
        rel = L.model_name(i)
        want = rec.model_sha256 if isinstance(rec, GenesisRecord) else rec.model_sha256_after
        if L.sha256_hex(L.read_bytes(run_dir, rel)) != want:
            raise AuditError(f"{rel}: sha256 does not match record {i}")
        checked.append(rel)

    # ---- ledger: exactly the lines the records hash, in order
    ledger = L.split_lines(contents[L.LEDGER], L.LEDGER)
    pos = 0
    for rec in records[1:]:
        if not isinstance(rec, RoundRecord):
            raise AuditError(f"{L.LOG}: genesis record after leaf 0")
        for j, h in enumerate(rec.ledger_entries_sha256):
            if pos >= len(ledger):
                raise AuditError(f"{L.LEDGER}: missing line {pos + 1} (round {rec.round}, "
                                 f"entry {j})")
            if L.sha256_hex(ledger[pos]) != h:
                raise AuditError(f"{L.LEDGER} line {pos + 1}: does not match round {rec.round} "
                                 f"entry {j}")
            pos += 1
    if pos != len(ledger):
        raise AuditError(f"{L.LEDGER} line {pos + 1}: not in any record")
    checked.append(L.LEDGER)

    # ---- metrics: one canonical line per round, equal to the record's metrics
    mlines = L.split_lines(contents[L.METRICS], L.METRICS)
    if len(mlines) != len(records) - 1:
        raise AuditError(f"{L.METRICS}: {len(mlines)} lines for {len(records) - 1} rounds")
    for k, (line, rec) in enumerate(zip(mlines, records[1:], strict=True)):
        if not isinstance(rec, RoundRecord):
            raise AuditError(f"{L.LOG}: genesis record after leaf 0")
        want_line = msgspec.json.encode({"metrics": rec.metrics, "round": rec.round},
                                        order="sorted")
        if line != want_line:
            raise AuditError(f"{L.METRICS} line {k + 1}: does not match round {rec.round}")
    checked.append(L.METRICS)

    # ---- result.json: signed, bound to the last record and the final root
    has_result = commit.result_sha256 is not None
    claims = ClaimsChecked()
    if has_result:
        if L.sha256_hex(L.read_bytes(run_dir, L.RESULT)) != commit.result_sha256:
            raise AuditError(f"{L.RESULT}: sha256 does not match {L.COMMIT}")
        result = _check_result(run_dir, server, commit.last_round, prev_model, final)
        config = L.decode_json_canonical(config_bytes, L.CONFIG)
        claims = check_result_claims(result, records, ledger, config)
        checked.append(L.RESULT)

    # ---- nothing else (but the derived report, which is not evidence and not read)
    expected = {L.COMMIT, L.FEDERATION, L.CONFIG, L.REPORT, *L.APPEND_ONLY,
                *(L.model_name(i) for i in range(len(records)))}
    if fed["server_key_file"] is not None:
        expected.add(L.SERVER_KEY)
    if has_result:
        expected.add(L.RESULT)
    extra = sorted(_walk_files(run_dir) - expected)
    if extra:
        raise AuditError(f"{extra[0]}: unexpected file in the run directory")

    aborted = sum(1 for r in records[1:] if isinstance(r, RoundRecord) and r.status == "aborted")
    return VerifyReport(
        run_dir=str(run_dir), origin=server.name, server_key=server.to_string(),
        last_round=commit.last_round, tree_size=final.size, root_hash=b64encode(final.root_hash),
        rounds_committed=commit.last_round - aborted, rounds_aborted=aborted,
        ledger_lines=len(ledger), has_result=has_result, files_checked=checked,
        key_fingerprint=server.key.fingerprint(), key_pinned=pubkey is not None,
        key_source=(key_source or "pinned by the caller") if pubkey is not None
        else VerifyReport.key_source,
        claims_checked=claims.checked, claims_unchecked=claims.unchecked,
    )


def _check_result(run_dir: Path, server: NoteVerifier, last_round: int, model_sha: str,
                  final: Checkpoint) -> RunResult:
    """Check result.json's signature and binding; return its ``result`` object (the claims),
    decoded with the one result schema (securefl.result.decode_result)."""
    doc = L.decode_json_canonical(L.read_bytes(run_dir, L.RESULT), L.RESULT)
    if not isinstance(doc, dict) or set(doc) != {"body", "signature"}:
        raise AuditError(f"{L.RESULT}: unexpected structure")
    body = doc["body"]
    if not isinstance(body, dict) or set(body) != {"version", "last_round", "model_sha256",
                                                   "tree_size", "root_hash", "result"}:
        raise AuditError(f"{L.RESULT}: unexpected body structure")
    if not isinstance(doc["signature"], str):
        raise AuditError(f"{L.RESULT}: signature is not a string")
    sig = b64decode_strict(doc["signature"], what=f"{L.RESULT} signature")
    body_bytes = msgspec.json.encode(body, order="sorted")
    try:
        server.key.verify(sig, L.RESULT_DOMAIN + body_bytes)
    except CryptoError as exc:
        raise _fail(L.RESULT, exc) from exc
    want = {"version": 1, "last_round": last_round, "model_sha256": model_sha,
            "tree_size": final.size, "root_hash": b64encode(final.root_hash)}
    for k, v in want.items():
        if body[k] != v or type(body[k]) is not type(v):
            raise AuditError(f"{L.RESULT}: {k} does not match the last record")
    return decode_result(body["result"])


# ---------------------------------------------------------------------- proofs for third parties
def prove(run_dir: Path, round_: int, *, verify: bool = True) -> dict[str, Any]:
    """Inclusion proof of round ``round_``'s record (0 = genesis) in the run's latest checkpoint:
    a self-contained JSON object another party checks with :func:`verify_proof`. The directory is
    verified first unless ``verify=False`` (the proof is checked either way)."""
    run_dir = Path(run_dir)
    if verify:
        verify_run_dir(run_dir)
    fed = L.decode_json_canonical(L.read_bytes(run_dir, L.FEDERATION), L.FEDERATION)
    log_key = NoteVerifier.from_string(fed["server_key"])
    leaves = L.split_lines(L.read_bytes(run_dir, L.LOG), L.LOG)
    if not 0 <= round_ < len(leaves):
        raise AuditError(f"round {round_} is not in the log (last is {len(leaves) - 1})")
    notes = _parse_checkpoint_file(L.read_bytes(run_dir, L.CHECKPOINTS))
    tree = MerkleTree()
    for leaf in leaves:
        tree.append_data(leaf)
    proof = {
        "version": 1,
        "type": "securefl-audit-inclusion-proof",
        "log_key": log_key.to_string(),
        "leaf_index": round_,
        "record": leaves[round_].decode("utf-8"),
        "tree_size": tree.size,
        "inclusion_proof": [b64encode(h) for h in tree.inclusion_proof(round_)],
        "checkpoint": notes[-1].decode("utf-8"),
    }
    verify_proof(proof, log_key.key)
    return proof


def verify_proof(proof: dict[str, Any], pubkey: VerifyKey | str) -> RoundRecord | GenesisRecord:
    """Check a :func:`prove` object against the log's public key (a VerifyKey, or a verifier key
    string); return the proven record. Raises :class:`AuditError`."""
    want = {"version", "type", "log_key", "leaf_index", "record", "tree_size", "inclusion_proof",
            "checkpoint"}
    if not isinstance(proof, dict) or set(proof) != want or proof["version"] != 1 or (
        proof["type"] != "securefl-audit-inclusion-proof"
    ):
        raise AuditError("not a securefl audit inclusion proof (version 1)")
    try:
        log_key = NoteVerifier.from_string(proof["log_key"])
        if isinstance(pubkey, str):
            pinned = NoteVerifier.from_string(pubkey)
            if pinned != log_key:
                raise AuditError("proof is for another log key")
        elif log_key.key != pubkey:
            raise AuditError("proof is for another log key")
        cp, _ = open_checkpoint(proof["checkpoint"].encode("utf-8"), log_key,
                                origin=log_key.name)
        if cp.size != proof["tree_size"]:
            raise AuditError("proof tree size does not match its checkpoint")
        leaf = proof["record"].encode("utf-8")
        rec = decode_leaf(leaf)
        idx = proof["leaf_index"]
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise AuditError("leaf_index is not an integer")
        expected_idx = 0 if isinstance(rec, GenesisRecord) else rec.round
        if idx != expected_idx:
            raise AuditError("record round does not match its leaf index")
        path = [b64decode_strict(h, what="proof hash") for h in proof["inclusion_proof"]]
        verify_inclusion(leaf_hash(leaf), idx, cp.size, path, cp.root_hash)
    except (TypeError, AttributeError, KeyError) as exc:
        raise AuditError("malformed inclusion proof") from exc
    return rec


# ---------------------------------------------------------------------- for people
def show(run_dir: Path, round_: int | None = None) -> str:
    """A human-readable summary of a verified run directory, or of one round's record."""
    run_dir = Path(run_dir)
    report = verify_run_dir(run_dir)
    leaves = L.split_lines(L.read_bytes(run_dir, L.LOG), L.LOG)
    records = [decode_leaf(x) for x in leaves]
    out: list[str] = []
    if round_ is None:
        out.append(f"run directory {run_dir}: VERIFIED")
        out.append(f"log origin {report.origin}; key {report.server_key}")
        out.append(f"checked against key {report.key_fingerprint} from {report.key_source}: "
                   f"{report.assurance}")
        out.append(f"rounds: {report.last_round} ({report.rounds_aborted} aborted); "
                   f"tree size {report.tree_size}; root {report.root_hash}")
        out.append(f"ledger entries: {report.ledger_lines}; result.json: "
                   f"{'yes' if report.has_result else 'no'}")
        for rec in records[1:]:
            if isinstance(rec, RoundRecord):
                out.append(f"  round {rec.round:>5}  {rec.status:<9} {rec.aggregation:<8} "
                           f"survivors {len(rec.survivors)}/{len(rec.participants)}  "
                           f"model {rec.model_sha256_after[:12]}")
        return "\n".join(out)
    if not 0 <= round_ < len(records):
        raise AuditError(f"round {round_} is not in the log (last is {report.last_round})")
    rec = records[round_]
    for k, v in msgspec.to_builtins(rec).items():
        out.append(f"{k:>22}: {v}")
    return "\n".join(out)
