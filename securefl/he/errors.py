"""Typed errors of the CKKS backend (subclasses of securefl.errors)."""

from __future__ import annotations

from securefl.errors import ConfigError, CryptoError, MessageError

__all__ = ["InsecureParametersError", "MalformedCiphertextError", "SecretKeyExposureError"]


class SecretKeyExposureError(CryptoError):
    """A CKKS context that carries the secret key reached a party that must only hold the public
    one."""

    code = "SFL410"
    default_hint = (
        "only the key holder may hold the secret key; export the public context with "
        "`securefl keys ckks` and distribute that file instead"
    )


class InsecureParametersError(ConfigError):
    """CKKS parameters below 128-bit security (HE standard) or otherwise unsupported."""

    code = "SFL110"
    default_hint = (
        "use N=8192 with [60, 60] (default) or a validated alternative such as [60, 40, 40, 60]"
    )


class MalformedCiphertextError(MessageError):
    """A serialized CKKS ciphertext does not parse or does not match the session's parameters."""

    code = "SFL411"
    default_hint = (
        "the ciphertext was corrupted or produced under other parameters; it was rejected"
    )
