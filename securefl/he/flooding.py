"""Noise flooding of a decrypted CKKS aggregate before release (no tenseal; pure arithmetic).

Why: a CKKS decryption returns m + e, and e together with the public ciphertext reveals the secret
key
(Li and Micciancio, "On the Security of Homomorphic Encryption on Approximate Numbers", EUROCRYPT
2021). The fix is to add fresh noise to the decryption ("noise flooding"; Li, Micciancio, Schultz,
Sorrell, "Securing Approximate Homomorphic Encryption Using Differential Privacy", CRYPTO 2022).

Sizing, as OpenFHE documents it (``src/pke/examples/CKKS_NOISE_FLOODING.md``): a Gaussian over the
coefficient embedding with standard deviation

    sigma_coeff = sqrt(12 * tau) * 2^(s/2) * t

where ``tau`` is the number of decryption queries an adversary may see under this key, ``s`` the
statistical security parameter (>= 30) and ``t`` a bound on the ciphertext's coefficient error.

Slot domain: TenSEAL only returns the real parts of the decoded slots, r = Re(U c) / scale with
U U^* = (N/2) I for the N/2 canonical-embedding rows. Adding i.i.d. N(0, sigma_slot^2) to r with
sigma_slot = sigma_coeff * sqrt(N/2) / scale is exactly R(c + g)/scale for a spherical Gaussian g of
std sigma_coeff over the coefficients, followed by a projection (post-processing). So flooding the
released slots is the OpenFHE mechanism followed by public post-processing.

Error bound ``t``: SEAL encrypts with the public key at the key level and divides by the special
prime
(``encrypt_zero_asymmetric``), leaving coefficient error r0 + r1*s + (encoding rounding), with r0,
r1
rounding errors in [-1/2, 1/2] and s ternary. Under the usual independence heuristic (Costache et
al.,
ePrint 2022/162) r1*s is a sum of N bounded terms per coefficient, so by Hoeffding, for a sum of n
ciphertexts, |error| <= sqrt(n*N*(ln(2N) + 40 ln 2)/2) + 2n for every coefficient except with
probability 2^-40. The rest of the encryption error (e*u/P, P ~ 2^60) is below 1 per ciphertext and
is covered by the 2n term.
"""

from __future__ import annotations

import math

__all__ = [
    "DEFAULT_MAX_QUERIES",
    "DEFAULT_STATISTICAL_SECURITY",
    "coefficient_error_bound",
    "flooding_std",
    "release_error_bound",
    "release_grid",
    "tail_factor",
]

#: statistical security parameter s (OpenFHE recommends at least 30 bits)
DEFAULT_STATISTICAL_SECURITY = 30
#: tau: ciphertext decryptions (chunks x rounds) one key may serve before it must be rotated
DEFAULT_MAX_QUERIES = 2**16
#: failure probability exponent used for high-probability bounds (2^-40)
_TAIL_BITS = 40


def tail_factor(count: int, bits: int = _TAIL_BITS) -> float:
    """t such that ``count`` N(0,1) draws all stay within +-t except with probability 2^-bits.

    From Pr[|X| > t] <= 2 exp(-t^2/2) and a union bound over ``count`` draws.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    return math.sqrt(2.0 * (math.log(2.0 * count) + bits * math.log(2.0)))


def coefficient_error_bound(num_summands: int, poly_modulus_degree: int) -> float:
    """High-probability bound (2^-40) of each coefficient's error in a sum of fresh ciphertexts.

    Units: coefficient units (the plaintext scaled by ``scale``). See the module docstring.
    """
    if num_summands < 1:
        raise ValueError("num_summands must be >= 1")
    n, big_n = num_summands, poly_modulus_degree
    hoeffding = math.sqrt(n * big_n * (math.log(2 * big_n) + _TAIL_BITS * math.log(2)) / 2)
    return hoeffding + 2.0 * n


def flooding_std(
    num_summands: int,
    poly_modulus_degree: int,
    scale: float,
    *,
    max_queries: int = DEFAULT_MAX_QUERIES,
    statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
) -> float:
    """Std of the Gaussian added to each released slot (input units).

    sigma_slot = sqrt(12 tau) 2^(s/2) t * sqrt(N/2) / scale (OpenFHE's sizing, moved to the slots).
    """
    if statistical_security < 30:
        raise ValueError("statistical security below 30 bits is not allowed")
    if max_queries < 1:
        raise ValueError("max_queries must be >= 1")
    t = coefficient_error_bound(num_summands, poly_modulus_degree)
    sigma_coeff = math.sqrt(12.0 * max_queries) * 2.0 ** (statistical_security / 2) * t
    return float(sigma_coeff * math.sqrt(poly_modulus_degree / 2) / scale)


def release_grid(flood_std: float) -> float:
    """Rounding step of the released values: the largest power of two <= flood_std / 16.

    Rounding to a grid well below the flooding noise costs nothing in accuracy and removes the
    low-order floating-point bits of the Gaussian sample (Mironov, CCS 2012).
    """
    if not flood_std > 0:
        raise ValueError("flood_std must be > 0")
    return float(2.0 ** math.floor(math.log2(flood_std / 16.0)))


def release_error_bound(
    num_summands: int,
    poly_modulus_degree: int,
    scale: float,
    num_values: int,
    *,
    max_queries: int = DEFAULT_MAX_QUERIES,
    statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
) -> float:
    """Bound on |released - exact sum| per coordinate, holding for all coordinates w.p. >= 1-2^-39.

    Three parts (input units): the CKKS error (a real slot is sum_j e_j cos(theta j) / scale, of std
    sqrt(N/2) * per-coefficient std; the coefficient bound is > 8 per-coefficient stds, so
    sqrt(N/2) * coefficient_error_bound / scale is a > 8-sigma bound, heuristic as in the module
    docstring), the flooding noise (tail_factor(num_values) * flood_std, which dominates by ~2^15)
    and half a rounding step.
    """
    flood = flooding_std(
        num_summands,
        poly_modulus_degree,
        scale,
        max_queries=max_queries,
        statistical_security=statistical_security,
    )
    ckks = (
        math.sqrt(poly_modulus_degree / 2)
        * coefficient_error_bound(num_summands, poly_modulus_degree)
        / scale
    )
    return ckks + tail_factor(max(1, num_values)) * flood + release_grid(flood) / 2
