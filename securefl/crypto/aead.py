"""Authenticated encryption of client-to-client payloads routed through the server.

AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce generated INSIDE :func:`seal` from the injected
randomness source: a caller cannot pass, hence cannot reuse, a nonce (the Tink AEAD interface).
Associated data is mandatory and always the :class:`AeadContext` (session, round, sender, receiver,
purpose), so a ciphertext cannot be replayed in another session or round, nor redirected to another
pair of clients (Bonawitz et al., CCS 2017, section 6: shares travel encrypted under c_{u,v}).

Keys are fresh per (session, round, pair) from :func:`securefl.crypto.kdf.derive_pair_key`, and each
key seals at most a handful of messages, so random nonces are far from the 2^32 bound of SP 800-38D
section 8.3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefl.crypto.random import RandomSource
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError, IntegrityError

__all__ = ["AEAD_OVERHEAD", "NONCE_SIZE", "TAG_SIZE", "AeadContext", "open_sealed", "seal"]

NONCE_SIZE = 12
TAG_SIZE = 16
AEAD_OVERHEAD = NONCE_SIZE + TAG_SIZE


@dataclass(frozen=True)
class AeadContext:
    """What a sealed payload is bound to. Encoded as the associated data of AES-GCM."""

    session_id: bytes
    round: int
    sender: int
    receiver: int
    purpose: str = "share"
    #: further public context the payload is bound to (SecAgg v2: the round's roster digest);
    #: appended as ``u16 len | binding`` only when non-empty, so v1 encodings are unchanged
    binding: bytes = b""

    def encode(self) -> bytes:
        """``b"securefl/aead/v1" 0x00 | u16 len | purpose | u16 len | session | u64 round |
        u32 sender | u32 receiver [| u16 len | binding]`` (big-endian)."""
        p = self.purpose.encode("ascii")
        if not (
            0 <= self.sender < 2**32 and 0 <= self.receiver < 2**32 and 0 <= self.round < 2**64
            and len(self.binding) < 2**16
        ):
            raise CryptoError("AEAD context fields out of range")
        return (
            b"securefl/aead/v1\x00"
            + struct.pack(">H", len(p))
            + p
            + struct.pack(">H", len(self.session_id))
            + self.session_id
            + struct.pack(">QII", self.round, self.sender, self.receiver)
            + (struct.pack(">H", len(self.binding)) + self.binding if self.binding else b"")
        )


def _cipher(key: Secret) -> AESGCM:
    raw = key.expose()
    if len(raw) != 32:
        raise CryptoError("the AEAD key must be 32 bytes (AES-256-GCM)")
    return AESGCM(raw)


def seal(key: Secret, plaintext: bytes, *, aad: AeadContext, random: RandomSource) -> bytes:
    """Encrypt and authenticate; returns ``nonce (12) | ciphertext | tag (16)``."""
    if not isinstance(aad, AeadContext):
        raise CryptoError("associated data must be an AeadContext")
    nonce = random.random_bytes(NONCE_SIZE)
    return nonce + _cipher(key).encrypt(nonce, plaintext, aad.encode())


def open_sealed(key: Secret, sealed: bytes, *, aad: AeadContext) -> bytes:
    """Decrypt a :func:`seal` output; raise :class:`IntegrityError` on any tampering or mismatch of
    key, context, truncation or nonce."""
    if not isinstance(aad, AeadContext):
        raise CryptoError("associated data must be an AeadContext")
    if len(sealed) < AEAD_OVERHEAD:
        raise IntegrityError(f"sealed payload of {len(sealed)} bytes is truncated")
    try:
        return _cipher(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad.encode())
    except InvalidTag as exc:
        raise IntegrityError(
            f"sealed payload from client {aad.sender} to {aad.receiver} failed authentication"
        ) from exc
