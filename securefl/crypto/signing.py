"""Ed25519 identity keys (RFC 8032) for institutions, the server and the CKKS key holder.

Verification raises :class:`~securefl.errors.SignatureError`; it never returns a bool.
:func:`sign_bound`/:func:`verify_bound` sign a message only together with its context (a domain
label, session id and round), so a signature cannot be replayed in another protocol, session or round.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NoReturn

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.crypto.secret import Secret
from securefl.errors import CryptoError, SignatureError

__all__ = ["PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "SigningKey", "VerifyKey", "sign_bound", "verify_bound"]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_SIZE:
            raise CryptoError("an Ed25519 public key is exactly 32 bytes")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise CryptoError("invalid Ed25519 public key") from exc
        self.raw = raw

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid for ``message``."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise SignatureError("signature must be 64 bytes")
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureError(f"invalid signature for key {self.fingerprint()}") from exc

    @classmethod
    def from_pem(cls, pem: bytes) -> VerifyKey:
        """An Ed25519 public key from a PEM ``PUBLIC KEY`` block (CryptoError otherwise)."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise CryptoError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CryptoError("not an Ed25519 public key")
        return cls(key.public_bytes_raw())

    def fingerprint(self) -> str:
        """First 16 hex digits of sha256(public key): safe to log."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.fingerprint()})"


class SigningKey:
    """An Ed25519 private key. Its repr is redacted."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: Secret) -> SigningKey:
        """Deterministic key from a 32-byte seed (test vectors and reproducible simulations only)."""
        raw = seed.expose()
        if len(raw) != 32:
            raise CryptoError("an Ed25519 seed is exactly 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key().public_bytes_raw())

    def to_pem(self, passphrase: bytes | None = None) -> Secret:
        """PKCS#8 PEM, encrypted with ``passphrase`` when one is given."""
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )
        return Secret(pem, label="ed25519-pem")

    @classmethod
    def from_pem(cls, pem: bytes, passphrase: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CryptoError(
                "cannot load the private key (wrong passphrase or not a PKCS#8 PEM key)"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise CryptoError("the private key is not an Ed25519 key")
        return cls(key)

    def __repr__(self) -> str:
        return f"SigningKey({self.verify_key.fingerprint()}, <redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SigningKey cannot be pickled")


def _bound_message(domain: str, session_id: bytes, round_: int, message: bytes) -> bytes:
    d = domain.encode()
    return (
        b"securefl-sig-v1\x00"
        + struct.pack(">H", len(d)) + d
        + struct.pack(">H", len(session_id)) + session_id
        + struct.pack(">Q", round_)
        + message
    )


def sign_bound(
    key: SigningKey, *, domain: str, session_id: bytes, round_: int, message: bytes
) -> bytes:
    """Sign ``message`` bound to a domain label, a session and a round (length-prefixed, unambiguous)."""
    return key.sign(_bound_message(domain, session_id, round_, message))


def verify_bound(
    key: VerifyKey,
    signature: bytes,
    *,
    domain: str,
    session_id: bytes,
    round_: int,
    message: bytes,
) -> None:
    """Verify a :func:`sign_bound` signature; raise :class:`SignatureError` if it does not match."""
    key.verify(signature, _bound_message(domain, session_id, round_, message))
