"""securefl's cryptography layer: the only package that imports ``cryptography``.

Recipes on top (sign, verify, seal, open, derive, expand), primitives from pyca/cryptography
underneath. Secrets are held in :class:`Secret`, whose ``repr`` is redacted; exporting the bytes
is an explicit, greppable call (:meth:`Secret.expose`).
"""

from securefl.crypto.aead import AeadContext, open_sealed, seal
from securefl.crypto.kdf import X25519KeyPair, agree, derive_pair_key
from securefl.crypto.prg import accumulate_mask, expand_mask
from securefl.crypto.secret import Secret
from securefl.crypto.signing import (
    SigningKey,
    VerifyKey,
    sign_bound,
    verify_bound,
)

__all__ = [
    "AeadContext",
    "Secret",
    "SigningKey",
    "VerifyKey",
    "X25519KeyPair",
    "accumulate_mask",
    "agree",
    "derive_pair_key",
    "expand_mask",
    "open_sealed",
    "seal",
    "sign_bound",
    "verify_bound",
]
