"""X25519 + HKDF-SHA256 (securefl.crypto.kdf) against RFC 7748 and an independent HKDF in hmac."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from securefl.crypto.kdf import (
    X25519KeyPair,
    agree,
    derive_pair_key,
    pair_info,
    x25519_public_from_private,
)
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError

# RFC 7748 section 6.1
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_x25519_rfc7748_vector() -> None:
    assert x25519_public_from_private(Secret(ALICE_SK)) == ALICE_PK
    assert x25519_public_from_private(Secret(BOB_SK)) == BOB_PK
    assert agree(Secret(ALICE_SK), BOB_PK).expose() == SHARED
    assert agree(Secret(BOB_SK), ALICE_PK).expose() == SHARED


def test_low_order_point_is_rejected() -> None:
    with pytest.raises(CryptoError):
        agree(Secret(ALICE_SK), bytes(32))  # the identity point: all-zero shared secret
    with pytest.raises(CryptoError):
        agree(Secret(ALICE_SK), b"short")


def _hkdf_independent(ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()  # RFC 5869: no salt = HashLen zeros
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def test_hkdf_rfc5869_case3_independent_impl_is_right() -> None:
    # RFC 5869 A.3 (empty salt and info), checks the helper the next test relies on
    okm = _hkdf_independent(b"\x0b" * 22, b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_pair_info_layout_and_derivation() -> None:
    session = bytes(range(16))
    expected_info = (
        b"securefl/secagg/v1\x00"
        + b"\x00\x04mask"
        + b"\x00\x10"
        + session
        + (7).to_bytes(8, "big")
        + (3).to_bytes(4, "big")
        + (9).to_bytes(4, "big")
    )
    assert pair_info("mask", session, 7, 9, 3) == expected_info
    assert pair_info("mask", session, 7, 3, 9) == expected_info  # both ends agree
    key = derive_pair_key(Secret(SHARED), purpose="mask", session_id=session, round_=7, i=9, j=3)
    assert key.expose() == _hkdf_independent(SHARED, expected_info, 32)


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "share"},
        {"session_id": bytes(16)},
        {"round_": 8},
        {"i": 4},
    ],
)
def test_every_info_field_changes_the_key(change: dict[str, object]) -> None:
    base: dict[str, object] = {
        "purpose": "mask",
        "session_id": bytes(range(16)),
        "round_": 7,
        "i": 9,
        "j": 3,
    }
    k1 = derive_pair_key(Secret(SHARED), **base)  # type: ignore[arg-type]
    k2 = derive_pair_key(Secret(SHARED), **{**base, **change})  # type: ignore[arg-type]
    assert k1.expose() != k2.expose()


def test_pair_info_rejects_same_ids_and_large_ids() -> None:
    with pytest.raises(CryptoError):
        pair_info("mask", bytes(16), 0, 5, 5)
    with pytest.raises(CryptoError):
        pair_info("mask", bytes(16), 0, 5, 2**32)


def test_keypair_generation_is_deterministic_from_source_and_redacted() -> None:
    a = X25519KeyPair.generate(SeededRandomSource(Secret(b"s" * 32), "x"))
    b = X25519KeyPair.generate(SeededRandomSource(Secret(b"s" * 32), "x"))
    assert a.public == b.public
    assert a.private.expose().hex() not in repr(a)
    assert struct.calcsize(">I") == 4
