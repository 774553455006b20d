"""CKKS contexts: the key holder's secret context and everyone else's public context.

Only the key holder ever holds a :class:`SecretContext`. Clients, the server and verifiers load a
:class:`PublicContext` with :func:`load_public_context`, which REJECTS a context that carries the
secret key (:class:`~securefl.he.errors.SecretKeyExposureError`): receiving the secret key by
mistake
would make the receiver able to read every client's update.

The public context carries the public encryption key only (no relinearisation or Galois keys: a sum
needs neither).
"""

from __future__ import annotations

import hashlib
from typing import Any, NoReturn

from securefl.crypto.secret import Secret
from securefl.errors import CryptoError, MessageError
from securefl.he.errors import SecretKeyExposureError
from securefl.he.params import CKKSParams

__all__ = [
    "MAX_CONTEXT_BYTES",
    "PublicContext",
    "SecretContext",
    "generate_context",
    "load_public_context",
    "load_secret_context",
]

#: upper bound of a serialized context (public key of N=32768 with 15 primes is ~8 MiB)
MAX_CONTEXT_BYTES = 16 * 1024 * 1024


def _ts() -> Any:
    import tenseal  # lazy: keeps `import securefl` fast

    return tenseal


def _check_params(ctx: Any, params: CKKSParams) -> None:
    """Raise CryptoError unless the TenSEAL context was built with exactly ``params``."""
    seal = ctx.seal_context().data
    key_data = seal.key_context_data()
    first = seal.first_context_data()
    parms = key_data.parms()
    bits = params.coeff_mod_bit_sizes
    ok = (
        getattr(parms.scheme(), "name", "") == "CKKS"
        and parms.poly_modulus_degree() == params.poly_modulus_degree
        and key_data.total_coeff_modulus_bit_count() == sum(bits)
        and first.total_coeff_modulus_bit_count() == sum(bits[:-1])
        and first.chain_index() == len(bits) - 2
        and float(ctx.global_scale) == params.scale
    )
    if not ok:
        raise CryptoError("the CKKS context does not match the agreed parameters")


def _half_modulus_lower_bound(ctx: Any) -> int:
    """A lower bound of Q/2 for the data-level modulus Q (exact when Q is one prime)."""
    first = ctx.seal_context().data.first_context_data()
    bits = int(first.total_coeff_modulus_bit_count())
    if bits <= 62:
        q = first.total_coeff_modulus()
        q = int(q[0] if isinstance(q, list) else q)
        if q.bit_length() == bits:
            return q // 2
    return int(2 ** (bits - 2))  # a `bits`-bit modulus is >= 2^(bits-1)


class PublicContext:
    """A CKKS context with the public key only. Safe to give to clients, the server and
    verifiers."""

    __slots__ = ("_ctx", "digest", "half_modulus", "params")

    def __init__(self, ctx: Any, params: CKKSParams, digest: bytes | None = None) -> None:
        if ctx.is_private() or ctx.has_secret_key():
            raise SecretKeyExposureError(
                "this CKKS context carries the secret key; a client or server must only receive "
                "the public context"
            )
        _check_params(ctx, params)
        self._ctx = ctx
        self.params = params
        #: lower bound of Q/2 (coefficient units): the overflow limit of a sum
        self.half_modulus = _half_modulus_lower_bound(ctx)
        #: SHA-256 of the serialized public context (the bytes the key holder signed): the key
        #: digest every round binds (protocols/ckks/spec.md, "Keys")
        self.digest = digest if digest is not None else hashlib.sha256(self.to_bytes()).digest()

    @property
    def raw(self) -> Any:
        """The underlying TenSEAL context (for securefl.he.vectors)."""
        return self._ctx

    def to_bytes(self) -> bytes:
        return bytes(
            self._ctx.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def __repr__(self) -> str:
        return (
            f"PublicContext(N={self.params.poly_modulus_degree}, {self.params.coeff_mod_bit_sizes})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("contexts are serialized with to_bytes(), never pickled")


class SecretContext:
    """The key holder's CKKS context, including the secret key. Its repr is redacted."""

    __slots__ = ("_ctx", "params")

    def __init__(self, ctx: Any, params: CKKSParams) -> None:
        if not ctx.is_private():
            raise CryptoError("a SecretContext needs the secret key")
        _check_params(ctx, params)
        self._ctx = ctx
        self.params = params

    @property
    def raw(self) -> Any:
        return self._ctx

    def public(self) -> PublicContext:
        """The public part: what the key holder publishes (signed)."""
        return load_public_context(self.public_bytes(), self.params)

    def public_digest(self) -> bytes:
        """SHA-256 of the serialized public context (:attr:`PublicContext.digest`)."""
        return hashlib.sha256(self.public_bytes()).digest()

    def public_bytes(self) -> bytes:
        return bytes(
            self._ctx.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def export_secret(self) -> Secret:
        """Serialized context WITH the secret key. The one greppable export; store with mode
        0o600."""
        data = self._ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return Secret(bytes(data), label="ckks-secret-context")

    def __repr__(self) -> str:
        return f"SecretContext(N={self.params.poly_modulus_degree}, <redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretContext cannot be pickled")


def generate_context(params: CKKSParams) -> SecretContext:
    """Fresh CKKS keys (SEAL's CSPRNG) for ``params``; run by the key holder only."""
    ts = _ts()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = params.scale
    return SecretContext(ctx, params)


def _parse(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray) or not data:
        raise MessageError("a serialized CKKS context must be non-empty bytes")
    if len(data) > MAX_CONTEXT_BYTES:
        raise MessageError(f"CKKS context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
    ts = _ts()
    try:
        return ts.context_from(bytes(data))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise MessageError("malformed CKKS context") from exc


def load_public_context(data: bytes, params: CKKSParams) -> PublicContext:
    """Parse a public context; raise SecretKeyExposureError if it carries the secret key."""
    return PublicContext(_parse(data), params, hashlib.sha256(data).digest())


def load_secret_context(secret: Secret, params: CKKSParams) -> SecretContext:
    """Parse the key holder's exported context (see :meth:`SecretContext.export_secret`)."""
    return SecretContext(_parse(secret.expose()), params)
