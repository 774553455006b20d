"""A CKKS key holder's key files: ``securefl keys ckks --out DIR`` writes them
(:func:`create_key_holder_keys`), a key holder loads them (:func:`load_key_holder`), every member
reads the exported signed public context (:func:`load_signed_public_context`). File names:
:data:`KEY_FILES`; secrets are written 0600 and read only from private files, size-limited."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.federation import load_signing_key, read_private_file
from securefl.he.context import generate_context, load_secret_context
from securefl.he.params import DEFAULT_PARAMS, CKKSParams
from securefl.protocol import wire
from securefl.protocol.ckks import CKKSKeyHolder
from securefl.protocol.ckks_messages import SignedPublicContext
from securefl.storage import atomic_write_bytes

__all__ = [
    "KEY_FILES",
    "KeyHolderKeys",
    "create_key_holder_keys",
    "load_key_holder",
    "load_signed_public_context",
]

#: the largest secret context and signed public context file read (bytes)
MAX_SECRET_CONTEXT_BYTES = 2**30
MAX_PUBLIC_CONTEXT_BYTES = 32 * 2**20

#: file names written by `securefl keys ckks --out DIR`
KEY_FILES = {
    "signing_key": "keyholder-ed25519.pem",  # 0600
    "secret_context": "ckks-secret-context.bin",  # 0600
    "public_context": "ckks-public-context.msgpack",  # 0644, SignedPublicContext
    "verify_key": "keyholder-ed25519.pub",  # 0644, raw 32 bytes hex
}




@dataclass(frozen=True)
class KeyHolderKeys:
    """Paths of a key holder's key files."""

    signing_key: Path
    secret_context: Path
    public_context: Path
    verify_key: Path


def create_key_holder_keys(
    out_dir: str | os.PathLike[str],
    params: CKKSParams = DEFAULT_PARAMS,
    passphrase: bytes | None = None,
) -> KeyHolderKeys:
    """Create a key holder's Ed25519 key and CKKS keys in ``out_dir``; export the signed public
    context.

    Secret files are written atomically with mode 0o600 and never logged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sk = SigningKey.generate()
    secret = generate_context(params)
    holder = CKKSKeyHolder(sk, secret, {}, min_clients=1, verifiers=1)
    paths = KeyHolderKeys(
        *(
            out / KEY_FILES[k]
            for k in ("signing_key", "secret_context", "public_context", "verify_key")
        )
    )
    atomic_write_bytes(paths.signing_key, sk.to_pem(passphrase).expose(), mode=0o600)
    atomic_write_bytes(paths.secret_context, secret.export_secret().expose(), mode=0o600)
    atomic_write_bytes(paths.public_context, wire.encode(holder.public_context_message()))
    atomic_write_bytes(paths.verify_key, (sk.verify_key.raw.hex() + "\n").encode())
    return paths


def load_key_holder(
    key_dir: str | os.PathLike[str],
    federation: Mapping[int, VerifyKey],
    *,
    params: CKKSParams = DEFAULT_PARAMS,
    min_clients: int,
    verifiers: int = 2,
    passphrase: bytes | None = None,
    server_key: VerifyKey | None = None,
) -> CKKSKeyHolder:
    """Load a key holder from files written by :func:`create_key_holder_keys`; ``server_key`` is
    the aggregation server's enrolled identity (needed before anything is decrypted)."""
    d = Path(key_dir)
    sk = load_signing_key(d / KEY_FILES["signing_key"], passphrase)
    secret = load_secret_context(
        Secret(read_private_file(d / KEY_FILES["secret_context"], MAX_SECRET_CONTEXT_BYTES,
                                 "CKKS secret context"), label="ckks-secret-context"), params)
    return CKKSKeyHolder(
        sk,
        secret,
        federation,
        min_clients=min_clients,
        verifiers=verifiers,
        server_key=server_key,
    )


def load_signed_public_context(path: str | os.PathLike[str]) -> SignedPublicContext:
    """Read the exported SignedPublicContext (verify it with accept_public_context)."""
    data = Path(path).read_bytes()
    return wire.decode(data, SignedPublicContext, max_bytes=MAX_PUBLIC_CONTEXT_BYTES)
