"""Chunked CKKS vectors: encrypt, validate, sum homomorphically, decrypt; canonical digest.

A float vector of d values becomes ceil(d / (N/2)) ciphertexts ("chunks"), each a TenSEAL
``CKKSVector`` serialized to bytes. The last chunk holds the remainder.

Digest: ``ciphertext_digest(chunks)`` = SHA-256("securefl-ckks-ct-v1" || u32 count || for each
chunk: u64 length || bytes). SEAL's homomorphic addition is exact modular arithmetic on the RNS
coefficients, and TenSEAL's serialization of a ciphertext is a deterministic function of its
coefficients (public-key encryption produces no seeded ciphertexts; compression is deterministic),
so
every party that adds the same contributions, in any order, obtains byte-identical serialized sums
(checked in tests/test_ckks_he.py). Verifiers therefore compare digests of the serialized sum.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.errors import LocalProtocolError, OverflowRiskError
from securefl.he.context import PublicContext, SecretContext
from securefl.he.errors import MalformedCiphertextError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "check_no_overflow",
    "ciphertext_digest",
    "decrypt_chunks",
    "encrypt_chunks",
    "load_chunks",
    "sum_chunks",
]

_DIGEST_LABEL = b"securefl-ckks-ct-v1"


def ciphertext_digest(chunks: Sequence[bytes]) -> bytes:
    """SHA-256 over the length-prefixed chunk list (32 bytes)."""
    h = hashlib.sha256(_DIGEST_LABEL)
    h.update(struct.pack(">I", len(chunks)))
    for chunk in chunks:
        h.update(struct.pack(">Q", len(chunk)))
        h.update(chunk)
    return h.digest()


def check_no_overflow(
    ctx: PublicContext, num_summands: int, max_abs: float, *, error_margin: float
) -> None:
    """Raise OverflowRiskError unless num_summands * max_abs * scale < Q/2 - margin."""
    limit = ctx.params.sum_limit(ctx.half_modulus, error_margin)
    worst = float(num_summands) * float(max_abs) * ctx.params.scale
    if not np.isfinite(worst) or worst >= limit:
        raise OverflowRiskError(
            f"a sum of {num_summands} vectors with |x| <= {max_abs:.4g} at scale "
            f"2^{ctx.params.scale_bits} could reach 2^{np.log2(max(worst, 1.0)):.2f}, at or above "
            f"the limit 2^{np.log2(limit):.2f}: CKKS would wrap silently"
        )


def encrypt_chunks(ctx: PublicContext, values: NDArray[np.float64]) -> list[bytes]:
    """Encrypt ``values`` with the public key into N/2-slot chunks; return their serializations."""
    import tenseal as ts

    x = np.ascontiguousarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise LocalProtocolError("encrypt_chunks takes a non-empty 1-D vector")
    if not np.all(np.isfinite(x)):
        raise LocalProtocolError("the vector to encrypt has NaN or infinite entries")
    slots = ctx.params.slots
    out: list[bytes] = []
    for start in range(0, x.size, slots):
        vec = ts.ckks_vector(ctx.raw, x[start : start + slots])
        out.append(bytes(vec.serialize()))
    return out


def _expected_sizes(num_values: int, slots: int) -> list[int]:
    full, rest = divmod(num_values, slots)
    return [slots] * full + ([rest] if rest else [])


def load_chunks(
    ctx: PublicContext | SecretContext, chunks: Sequence[bytes], num_values: int
) -> list[Any]:
    """Parse and validate serialized chunks for a d=num_values vector; return TenSEAL vectors.

    Rejects (MalformedCiphertextError): wrong chunk count, oversized or unparsable bytes, a chunk
    with
    the wrong number of values, more than one ciphertext per chunk, a ciphertext that is not a fresh
    2-polynomial NTT-form one at the top data level with the agreed scale.
    """
    import tenseal as ts

    params = ctx.params
    sizes = _expected_sizes(num_values, params.slots)
    if num_values < 1 or len(chunks) != len(sizes):
        raise MalformedCiphertextError(
            f"expected {len(sizes)} ciphertext chunks for {num_values} values, got {len(chunks)}"
        )
    limit = params.ciphertext_max_bytes()
    first_parms = ctx.raw.seal_context().data.first_parms_id()
    out: list[Any] = []
    for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True)):
        if not isinstance(chunk, bytes | bytearray) or not 0 < len(chunk) <= limit:
            raise MalformedCiphertextError(f"chunk {i} is empty or larger than {limit} bytes")
        try:
            vec = ts.ckks_vector_from(ctx.raw, bytes(chunk))
            cts = vec.ciphertext()
        except (ValueError, RuntimeError, TypeError) as exc:
            raise MalformedCiphertextError(f"chunk {i} is not a valid CKKS ciphertext") from exc
        if vec.size() != size or len(cts) != 1:
            raise MalformedCiphertextError(f"chunk {i} holds {vec.size()} values, expected {size}")
        ct = cts[0]
        if (
            ct.size() != 2
            or not ct.is_ntt_form()
            or ct.parms_id() != first_parms
            or ct.scale != params.scale
        ):
            raise MalformedCiphertextError(f"chunk {i} does not match the session's parameters")
        out.append(vec)
    return out


def sum_chunks(
    ctx: PublicContext, contributions: Sequence[Sequence[bytes]], num_values: int
) -> list[bytes]:
    """Homomorphic sum of validated contributions (each a chunk list); return the serialized sum."""
    if not contributions:
        raise LocalProtocolError("nothing to sum")
    acc = load_chunks(ctx, contributions[0], num_values)
    for contribution in contributions[1:]:
        for a, b in zip(acc, load_chunks(ctx, contribution, num_values), strict=True):
            a.add_(b)
    return [bytes(v.serialize()) for v in acc]


def decrypt_chunks(
    ctx: SecretContext, chunks: Sequence[bytes], num_values: int
) -> NDArray[np.float64]:
    """Decrypt a validated chunk list (key holder only). No flooding: see securefl.he.flooding."""
    vecs = load_chunks(ctx, chunks, num_values)
    parts = [np.asarray(v.decrypt(), dtype=np.float64) for v in vecs]
    return np.concatenate(parts)
