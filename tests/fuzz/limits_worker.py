"""Hostile inputs that would allocate gigabytes if believed, each run in this child process under
the RLIMIT_AS the parent set (tests/test_resource_limits.py; issue 17, item 3).

    python tests/fuzz/limits_worker.py DIR CASE...   # prints {case: outcome} as one JSON line

An outcome is ``typed:<ErrorClass>``, ``accepted`` or ``untyped:<ExceptionClass>`` (MemoryError
when the child hit its memory limit). DIR is a scratch directory for sparse files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from securefl.errors import SecureFLError

GB = 1 << 30
ARRAY32 = b"\xdd\xff\xff\xff\xff"  # msgpack: an array of 2^32 - 1 items follows
BIN32 = b"\xc6\xff\xff\xff\xff"  # msgpack: 2^32 - 1 bytes follow


def _mp(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def _with_huge(obj: dict[str, Any], key: str, header: bytes) -> bytes:
    """``obj`` encoded with ``key``'s value replaced by ``header`` (a declared 4 GiB length) and
    a few bytes: the peer declares far more than it sends."""
    marker = b"\xa8MARKER!!"  # fixstr of 8 bytes, unique in the encoding
    enc = _mp({**obj, key: "MARKER!!"})
    return enc.replace(marker, header + bytes(8))


def _sparse(scratch: Path, name: str, size: int = 8 * GB, head: bytes = b"") -> Path:
    p = scratch / name
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    p.chmod(0o600)
    return p


def _secagg_header() -> dict[str, Any]:
    return {"session_id": bytes(16), "round": 1}


def cases(scratch: Path) -> dict[str, Callable[[], object]]:
    from securefl import config, federation
    from securefl.dp.ledger import Ledger
    from securefl.fl.params import from_bytes
    from securefl.protocol import ckks_messages as cm
    from securefl.protocol import messages as sm
    from securefl.protocol import wire
    from securefl.transport import flower as tf

    share = {"owner": 1, "share": bytes(66)}
    ckks_max = cm.max_message_bytes(cm.MAX_CHUNK_BYTES, 4)
    out: dict[str, Callable[[], object]] = {
        # the limit is real: this allocation must fail inside the child
        "control.allocate_1gb": lambda: bytearray(GB),
        # --- SecAgg: clients, shares, vector length, message bytes
        "secagg.roster_declares_4g_entries": lambda: sm.decode_message(_with_huge(
            {"type": "secagg.roster.v1", **_secagg_header(), "entries": []}, "entries", ARRAY32)),
        "secagg.share_keys_declares_4g_shares": lambda: sm.decode_message(_with_huge(
            {"type": "secagg.share-keys.v1", **_secagg_header(), "sender": 1,
             "self_mask_commitment": bytes(32), "shares": []}, "shares", ARRAY32)),
        "secagg.unmask_with_max_clients_plus_one_shares": lambda: sm.decode_message(_mp(
            {"type": "secagg.unmask-shares.v1", **_secagg_header(), "sender": 1,
             "self_mask_shares": [share] * (sm.MAX_CLIENTS + 1), "mask_key_shares": []})),
        "secagg.masked_input_declares_4g_bytes": lambda: sm.decode_message(_with_huge(
            {"type": "secagg.masked-input.v1", **_secagg_header(), "sender": 1, "bits": 32,
             "dim": sm.MAX_DIM, "data": b""}, "data", BIN32)),
        "secagg.masked_input_dim_2_40": lambda: sm.decode_message(_mp(
            {"type": "secagg.masked-input.v1", **_secagg_header(), "sender": 1, "bits": 32,
             "dim": 1 << 40, "data": b""})),
        "secagg.message_over_byte_limit": lambda: sm.decode_message(
            bytes(sm.MAX_MESSAGE_BYTES + 1)),
        # --- CKKS: contributions (clients), chunks (vector length), values, bytes
        "ckks.verify_request_declares_4g_contributions": lambda: wire.decode(_with_huge(
            {"type": "ckks.verify_request", "manifest": {}, "contributions": []},
            "contributions", ARRAY32), cm.CKKSMessage, max_bytes=ckks_max),
        "ckks.contribution_declares_4g_chunks": lambda: wire.decode(_with_huge(
            {"type": "ckks.contribution", "chunks": []}, "chunks", ARRAY32),
            cm.CKKSMessage, max_bytes=ckks_max),
        "ckks.decrypt_result_declares_4g_values": lambda: wire.decode(_with_huge(
            {"type": "ckks.decrypt_result", "values": b""}, "values", BIN32),
            cm.CKKSMessage, max_bytes=ckks_max),
        "ckks.commitment_set_over_max_clients": lambda: wire.decode(_mp(
            {"type": "ckks.commitment_set", "session_id": bytes(16), "round": 1, "num_values": 1,
             "key_digest": bytes(32), "signature": bytes(64),
             "entries": [{"client_id": 1, "commitment": bytes(32), "signature": bytes(64)}]
             * (cm.MAX_CLIENTS + 1)}), cm.CKKSMessage, max_bytes=ckks_max),
        # --- transport envelope
        "envelope.payload_declares_4g_bytes": lambda: tf.decode_envelope(_with_huge(
            {"type": "securefl.envelope.v1", "federation": "0" * 64, "session": bytes(16),
             "round": 0, "stage": "a", "sender": "a", "receiver": "b", "payload": b""},
            "payload", BIN32)),
        # --- files an auditor or a bank is handed (8 GiB sparse: the size is declared by stat)
        "manifest.8gb_file": lambda: federation.load_manifest(_sparse(scratch, "fed.json")),
        "manifest.over_max_members": lambda: federation.decode_manifest(json.dumps(
            {"body": {"members": [{}] * (federation.MAX_MEMBERS + 1)}}).encode()),
        "identity.8gb_file": lambda: federation.load_identity(_sparse(scratch, "id.json")),
        "config.8gb_file": lambda: config.load_toml(_sparse(scratch, "run.toml", head=b"a=1\n")),
        "ledger.8gb_file": lambda: Ledger.load(_sparse(scratch, "ledger.jsonl")),
        "ledger.missing_file": lambda: Ledger.load(scratch / "no-such-ledger.jsonl"),
        "audit.8gb_log": lambda: _verify_with_huge_log(scratch),
        # --- safetensors: declared header length and tensor sizes
        "safetensors.header_declares_2_40": lambda: from_bytes((1 << 40).to_bytes(8, "little")
                                                               + b"{}"),
        "safetensors.tensor_declares_64gb": lambda: from_bytes(_safetensors_huge()),
    }
    return out


def _safetensors_huge() -> bytes:
    header = json.dumps({"w": {"dtype": "F64", "shape": [1 << 33],
                               "data_offsets": [0, 8 << 33]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(64)


def _verify_with_huge_log(scratch: Path) -> object:
    import shutil

    from securefl.audit.verify import verify_run_dir

    src = Path(__file__).resolve().parents[2] / "protocols" / "audit" / "vectors" / "securefl_run"
    run = scratch / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(src, run)
    log = run / "audit" / "log.jsonl"
    _sparse(run / "audit", "log.jsonl", head=log.read_bytes())
    return verify_run_dir(run)


def run(name: str, fn: Callable[[], object]) -> str:
    try:
        fn()
    except SecureFLError as exc:
        return f"typed:{type(exc).__name__}"
    except BaseException as exc:  # the outcome is what the parent asserts on
        return f"untyped:{type(exc).__name__}"
    return "accepted"


if __name__ == "__main__":
    scratch = Path(sys.argv[1])
    table = cases(scratch)
    names = sys.argv[2:] or sorted(table)
    print(json.dumps({n: run(n, table[n]) for n in names}))
