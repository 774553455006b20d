"""securefl's cryptography layer: the only package that imports ``cryptography``.

Recipes on top (sign, verify, seal, open, derive, expand), primitives from pyca/cryptography
underneath. Secrets are held in :class:`Secret`, whose ``repr`` is redacted; exporting the bytes is an
explicit, greppable call (:meth:`Secret.expose`).
"""

from securefl.crypto.secret import Secret
from securefl.crypto.signing import (
    SigningKey,
    VerifyKey,
    sign_bound,
    verify_bound,
)

__all__ = ["Secret", "SigningKey", "VerifyKey", "sign_bound", "verify_bound"]
