"""AEAD recipe: no caller nonce, mandatory context, tamper detection, independent decryption."""

from __future__ import annotations

import inspect

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefl.crypto.aead import AeadContext, open_sealed, seal
from securefl.crypto.random import SeededRandomSource, SystemRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError, IntegrityError

KEY = Secret(bytes(range(32)))
CTX = AeadContext(session_id=b"S" * 16, round=5, sender=2, receiver=7)


def test_roundtrip_and_independent_decryption() -> None:
    sealed = seal(KEY, b"hello share", aad=CTX, random=SystemRandomSource())
    assert open_sealed(KEY, sealed, aad=CTX) == b"hello share"
    aad = (
        b"securefl/aead/v1\x00\x00\x05share\x00\x10"
        + b"S" * 16
        + (5).to_bytes(8, "big")
        + (2).to_bytes(4, "big")
        + (7).to_bytes(4, "big")
    )
    assert AESGCM(bytes(range(32))).decrypt(sealed[:12], sealed[12:], aad) == b"hello share"


def test_no_nonce_parameter_and_nonces_do_not_repeat() -> None:
    assert "nonce" not in inspect.signature(seal).parameters
    rnd = SystemRandomSource()
    nonces = {seal(KEY, b"x", aad=CTX, random=rnd)[:12] for _ in range(500)}
    assert len(nonces) == 500


@pytest.mark.parametrize(
    "other",
    [
        AeadContext(b"T" * 16, 5, 2, 7),
        AeadContext(b"S" * 16, 6, 2, 7),
        AeadContext(b"S" * 16, 5, 7, 2),
        AeadContext(b"S" * 16, 5, 2, 8),
        AeadContext(b"S" * 16, 5, 2, 7, purpose="other"),
    ],
)
def test_wrong_context_fails(other: AeadContext) -> None:
    sealed = seal(KEY, b"payload", aad=CTX, random=SeededRandomSource(Secret(b"n" * 32), "t"))
    with pytest.raises(IntegrityError):
        open_sealed(KEY, sealed, aad=other)


def test_tampering_truncation_and_wrong_key_fail() -> None:
    sealed = seal(KEY, b"payload", aad=CTX, random=SystemRandomSource())
    for pos in (0, 12, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(IntegrityError):
            open_sealed(KEY, bytes(bad), aad=CTX)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, sealed[:-1], aad=CTX)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, sealed[:20], aad=CTX)
    with pytest.raises(IntegrityError):
        open_sealed(Secret(bytes(32)), sealed, aad=CTX)


def test_context_is_mandatory() -> None:
    with pytest.raises(CryptoError):
        seal(KEY, b"x", aad=b"raw bytes", random=SystemRandomSource())  # type: ignore[arg-type]
