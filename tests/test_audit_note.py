"""C2SP signed notes and checkpoints: the golang.org/x/mod/sumdb/note Ed25519 vectors, and
strict parsing (every non-canonical spelling is refused)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import AuditError, SignatureError

V = json.loads((Path(__file__).resolve().parents[1] / "protocols/audit/vectors/note_ed25519.json")
               .read_text(encoding="utf-8"))


def _peter() -> NoteSigner:
    return NoteSigner.from_private_key_string(Secret(V["private_key"].encode()))


def test_verifier_key_vector() -> None:
    v = NoteVerifier.from_string(V["verifier_key"])
    assert v.name == "PeterNeumann"
    assert v.key_hash.hex() == "c74f20a3"
    assert v.to_string() == V["verifier_key"]
    # key hash by hand: SHA-256(name || "\n" || 0x01 || pubkey)[:4]
    encoded = base64.b64decode(V["verifier_key"].split("+")[2])
    assert hashlib.sha256(b"PeterNeumann\n" + encoded).digest()[:4].hex() == "c74f20a3"


@pytest.mark.parametrize("bad", V["bad_verifier_keys"] + [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # hash off by one
    "PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # name changed
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase hex
    "PeterNeumann+c74f20a3",
])
def test_bad_verifier_keys(bad: str) -> None:
    with pytest.raises(AuditError):
        NoteVerifier.from_string(bad)


def test_sign_vector_is_reproduced_exactly() -> None:
    signer = _peter()
    assert signer.verifier.to_string() == V["verifier_key"]
    assert sign_note(V["text"], [signer]).decode("utf-8") == V["signed_note"]


def test_open_vector() -> None:
    peter = NoteVerifier.from_string(V["verifier_key"])
    enoch = NoteVerifier.from_string(V["second_verifier_key"])
    note = V["signed_note"].encode("utf-8")
    opened = open_note(note, [peter])
    assert opened.text == V["text"] and [s.name for s in opened.verified] == ["PeterNeumann"]
    both = (V["signed_note"] + V["second_signature_line"]).encode("utf-8")
    opened = open_note(both, [peter])
    assert [s.name for s in opened.unverified] == ["EnochRoot"]
    opened = open_note(both, [peter, enoch])
    assert [s.name for s in opened.verified] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(AuditError, match="not signed by any known key"):
        open_note(note, [enoch])


def test_every_byte_flip_of_the_vector_note_is_refused() -> None:
    peter = NoteVerifier.from_string(V["verifier_key"])
    note = V["signed_note"].encode("utf-8")
    for i in range(len(note)):
        for mask in (0x01, 0x20):
            b = bytearray(note)
            b[i] ^= mask
            with pytest.raises(AuditError):  # SignatureError is a CryptoError: caught below
                try:
                    open_note(bytes(b), [peter])
                except SignatureError as exc:
                    raise AuditError("signature") from exc


def test_non_canonical_base64_padding_bits_refused() -> None:
    peter = NoteVerifier.from_string(V["verifier_key"])
    note = V["signed_note"]
    sig = note.rsplit(" ", 1)[1].rstrip("\n")
    assert sig.endswith("M=")  # 68 bytes: the last character carries 2 unused bits
    alt = sig[:-2] + "N="  # same decoded bytes, different spelling
    assert base64.b64decode(alt) == base64.b64decode(sig)
    with pytest.raises(AuditError, match="canonical"):
        open_note(note.replace(sig, alt).encode(), [peter])


def test_checkpoint_round_trip_and_cosign() -> None:
    key = SigningKey.from_seed(Secret(bytes(range(32))))
    log = NoteSigner("example.com/log", key)
    root = hashlib.sha256(b"root").digest()
    cp = Checkpoint("example.com/log", 42, root)
    assert cp.body() == "example.com/log\n42\n" + base64.b64encode(root).decode() + "\n"
    note = cp.sign([log])
    got, _ = open_checkpoint(note, log.verifier, origin="example.com/log")
    assert got == cp
    with pytest.raises(AuditError, match="origin"):
        open_checkpoint(note, log.verifier, origin="other")
    witness = NoteSigner("bank0", SigningKey.from_seed(Secret(bytes(32))))
    cosigned = add_signatures(note, [witness])
    _, opened = open_checkpoint(cosigned, log.verifier, cosigners=[witness.verifier])
    assert [s.name for s in opened.verified] == ["example.com/log", "bank0"]
    with pytest.raises(AuditError, match="not signed by the log key"):
        open_checkpoint(sign_note(cp.body(), [witness]), log.verifier,
                        cosigners=[witness.verifier])


@pytest.mark.parametrize("body", [
    "o\n042\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",  # leading zero
    "o\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",  # non-zero padding bits
    "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n",  # 31 bytes
    "o\n1\n",
    "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # no final newline
])
def test_bad_checkpoint_bodies(body: str) -> None:
    with pytest.raises(AuditError):
        parse_checkpoint(body)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**63), st.binary(min_size=32, max_size=32),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz./-", min_size=1, max_size=40))
def test_checkpoint_parse_inverts_body(size: int, root: bytes, origin: str) -> None:
    cp = Checkpoint(origin, size, root)
    assert parse_checkpoint(cp.body()) == cp
