"""X25519 key agreement (RFC 7748) and HKDF-SHA256 (RFC 5869) key derivation for SecAgg.

Every derived key is bound, through HKDF's ``info``, to the protocol id, a purpose label, the
session id, the round and the ordered pair of client ids (smaller id first, so both ends derive
the same key). Bonawitz et al., CCS 2017, section 4 (pairwise seeds s_{u,v} = KA.agree(...)) and
section 6 (the authenticated-encryption keys c_{u,v}); info binding follows RFC 5869 section 3.2.

Exact byte layout of ``info`` (also in protocols/secagg/spec.md)::

    b"securefl/secagg/v1" 0x00 | u16 len(purpose) | purpose | u16 len(session) | session
    | u64 round | u32 min(i, j) | u32 max(i, j)          (all integers big-endian)
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.crypto.random import RandomSource
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError

__all__ = [
    "KDF_PROTOCOL_ID",
    "X25519_KEY_SIZE",
    "X25519KeyPair",
    "agree",
    "derive_pair_key",
    "pair_info",
    "x25519_public_from_private",
]

KDF_PROTOCOL_ID = b"securefl/secagg/v1"
X25519_KEY_SIZE = 32
_MAX_ID = 2**32 - 1


class X25519KeyPair:
    """An ephemeral X25519 key pair. The private half is a :class:`Secret` (redacted repr)."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Secret) -> None:
        raw = private.expose()
        if len(raw) != X25519_KEY_SIZE:
            raise CryptoError("an X25519 private key is exactly 32 bytes")
        self._private = private
        self.public: bytes = x25519_public_from_private(private)

    @classmethod
    def generate(cls, random: RandomSource) -> X25519KeyPair:
        """A fresh key pair from 32 bytes of the injected randomness source."""
        return cls(Secret(random.random_bytes(X25519_KEY_SIZE), label="x25519-private"))

    @property
    def private(self) -> Secret:
        return self._private

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self.public.hex()[:16]}..., <redacted>)"


def x25519_public_from_private(private: Secret) -> bytes:
    """The 32-byte public key of a 32-byte private scalar (clamped as RFC 7748 section 5 says)."""
    try:
        key = X25519PrivateKey.from_private_bytes(private.expose())
    except ValueError as exc:
        raise CryptoError("invalid X25519 private key") from exc
    return key.public_key().public_bytes_raw()


def agree(private: Secret, peer_public: bytes) -> Secret:
    """X25519(private, peer_public). Raises :class:`CryptoError` for a malformed or low-order peer
    key
    (the all-zero shared secret, RFC 7748 section 6.1)."""
    if not isinstance(peer_public, bytes) or len(peer_public) != X25519_KEY_SIZE:
        raise CryptoError("an X25519 public key is exactly 32 bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private.expose()).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:
        raise CryptoError("X25519 key agreement failed (low-order or invalid public key)") from exc
    if shared == bytes(X25519_KEY_SIZE):  # defence in depth; OpenSSL already rejects it
        raise CryptoError("X25519 key agreement produced the all-zero secret")
    return Secret(shared, label="x25519-shared")


def pair_info(purpose: str, session_id: bytes, round_: int, i: int, j: int) -> bytes:
    """HKDF ``info`` binding protocol, purpose, session, round and the ordered pair (min, max)."""
    if i == j:
        raise CryptoError("a pairwise key needs two distinct client ids")
    if not (0 <= i <= _MAX_ID and 0 <= j <= _MAX_ID):
        raise CryptoError("client ids must fit in 32 bits")
    if round_ < 0 or round_ >= 2**64:
        raise CryptoError("round must fit in 64 bits")
    p = purpose.encode("ascii")
    lo, hi = (i, j) if i < j else (j, i)
    return (
        KDF_PROTOCOL_ID
        + b"\x00"
        + struct.pack(">H", len(p))
        + p
        + struct.pack(">H", len(session_id))
        + session_id
        + struct.pack(">QII", round_, lo, hi)
    )


def derive_pair_key(
    shared: Secret, *, purpose: str, session_id: bytes, round_: int, i: int, j: int
) -> Secret:
    """32-byte key = HKDF-SHA256(ikm=shared, salt=none (RFC 5869: zeros), info=pair_info(...))."""
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=pair_info(purpose, session_id, round_, i, j),
    ).derive(shared.expose())
    return Secret(key, label=f"secagg-{purpose}-key")
