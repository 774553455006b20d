"""Wire messages: strict decoding (unknown type, unknown field, oversized, over-long fields) and the
JSON Schemas in protocols/secagg kept in sync with the types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from secagg_helpers import make_round

from securefl.errors import MessageError
from securefl.protocol import messages as m
from securefl.transport.inprocess import InProcessDriver

ROOT = Path(__file__).resolve().parents[1]
ADV = m.AdvertiseKeys(
    session_id=b"S" * 16,
    round=1,
    sender=3,
    cipher_pk=b"c" * 32,
    mask_pk=b"m" * 32,
    signature=b"s" * 64,
)


def _as_dict(msg: object) -> dict[str, object]:
    d = msgspec.msgpack.decode(m.encode_message(msg))  # type: ignore[arg-type]
    assert isinstance(d, dict)
    return d


def test_roundtrip_and_tag() -> None:
    assert m.decode_message(m.encode_message(ADV)) == ADV
    assert _as_dict(ADV)["type"] == "secagg.advertise.v1"


@pytest.mark.parametrize(
    "change",
    [
        {"type": "secagg.bogus.v1"},
        {"type": "secagg.advertise.v2"},
        {"extra": 1},
        {"session_id": b"S" * 17},
        {"signature": b"s" * 63},
        {"sender": -1},
        {"round": "1"},
    ],
)
def test_invalid_messages_are_rejected(change: dict[str, object]) -> None:
    d = {**_as_dict(ADV), **change}
    with pytest.raises(MessageError):
        m.decode_message(msgspec.msgpack.encode(d))


def test_oversized_and_garbage_are_rejected_before_decoding() -> None:
    data = m.encode_message(ADV)
    with pytest.raises(MessageError, match="exceeds the limit"):
        m.decode_message(data, max_bytes=len(data) - 1)
    with pytest.raises(MessageError):
        m.decode_message(b"\xc1garbage")
    with pytest.raises(MessageError):
        m.decode_message("not bytes")  # type: ignore[arg-type]


def test_unknown_message_injected_in_a_round_aborts_it() -> None:
    r = make_round(4, degree=3)

    def inject(stage: str, sender: int, to: int, data: bytes) -> bytes:
        if stage == "masked" and sender == 2:
            return msgspec.msgpack.encode({"type": "secagg.evil.v1", "payload": b"x"})
        return data

    with pytest.raises(MessageError):
        InProcessDriver(r.server, r.clients, tamper=inject).run()


def test_schemas_are_in_sync_with_the_types() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "protocols/secagg/gen_schemas.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
