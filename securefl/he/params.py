"""Validated CKKS parameter sets and the overflow bound of a homomorphic sum.

Security: the total coefficient modulus log2(Q*P) must not exceed the Homomorphic Encryption
Standard's bound for 128-bit classical security with a ternary secret (Albrecht et al., "Homomorphic
Encryption Standard", 2018, Table 1; the same table SEAL enforces in ``CoeffModulus::MaxBitCount``):
109 bits for N=4096, 218 for N=8192, 438 for N=16384, 881 for N=32768.

Overflow: CKKS reduces modulo the data-level modulus Q without any error flag, so a sum whose
scaled magnitude reaches Q/2 wraps silently. A slot value z encodes to polynomial coefficients of
magnitude <= scale*max|z| (the inverse canonical embedding averages the N/2 slots), so a sum of n
vectors with |x| <= B stays exact when n*B*scale + error < Q/2. securefl requires
n*B*scale < Q/2 - error margin, with Q read from the context (exact for one data prime: for a 60-bit
prime this is the "n*max|x|*scale < 2^59" rule, made exact since q/2 is slightly below 2^59).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefl.he.errors import InsecureParametersError

__all__ = [
    "COMPACT_PARAMS",
    "DEFAULT_PARAMS",
    "MAX_TOTAL_BITS_128",
    "NVFLARE_PARAMS",
    "VALIDATED_PARAMS",
    "CKKSParams",
]

#: HE Standard (2018) Table 1, 128-bit classical security, ternary secret: N -> max log2(Q*P)
MAX_TOTAL_BITS_128: dict[int, int] = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree N, prime bit sizes (last one is the special prime), scale
    2^k."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    scale_bits: int = 60

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_TOTAL_BITS_128:
            raise InsecureParametersError(
                f"poly_modulus_degree {n} is not one of {sorted(MAX_TOTAL_BITS_128)}"
            )
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        if len(bits) < 2:
            raise InsecureParametersError(
                "coeff_mod_bit_sizes needs at least a data prime and the special prime"
            )
        if any(not 20 <= b <= 60 for b in bits):
            raise InsecureParametersError("every prime must have 20 to 60 bits (SEAL's range)")
        total = sum(bits)
        if total > MAX_TOTAL_BITS_128[n]:
            raise InsecureParametersError(
                f"total coefficient modulus of {total} bits exceeds the 128-bit-security bound of "
                f"{MAX_TOTAL_BITS_128[n]} bits for N={n} (HE Standard 2018, Table 1)"
            )
        if not 20 <= self.scale_bits < sum(bits[:-1]):
            raise InsecureParametersError("scale_bits must be >= 20 and below the data modulus")
        if self.scale_bits > bits[0]:
            raise InsecureParametersError("scale_bits must not exceed the first prime's bit size")

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def data_bits(self) -> int:
        """log2 of the data-level modulus Q (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    def num_chunks(self, num_values: int) -> int:
        """Ciphertexts needed for ``num_values`` values."""
        return max(1, math.ceil(num_values / self.slots))

    def ciphertext_max_bytes(self) -> int:
        """Upper bound of one serialized fresh ciphertext (2 polynomials, uncompressed, +
        framing)."""
        limbs = len(self.coeff_mod_bit_sizes) - 1
        return 2 * self.poly_modulus_degree * limbs * 8 + 4096

    def to_wire(self) -> tuple[int, tuple[int, ...], int]:
        return (self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes), self.scale_bits)

    def canonical_bytes(self) -> bytes:
        """Unambiguous encoding for signatures: N, count, primes, scale bits (big-endian u32s)."""
        parts = [
            self.poly_modulus_degree,
            len(self.coeff_mod_bit_sizes),
            *self.coeff_mod_bit_sizes,
            self.scale_bits,
        ]
        return b"".join(int(p).to_bytes(4, "big") for p in parts)

    def sum_limit(self, half_modulus_lower_bound: int, error_margin: float) -> float:
        """Largest admissible n*max|x|*scale: Q/2 - error margin (about 2^59 for one 60-bit
        prime)."""
        return float(half_modulus_lower_bound - error_margin)


#: default: two 60-bit data primes and scale 2^60, so that noise flooding at 30-bit statistical
#: security (securefl.he.flooding) still leaves ~2^-18 precision on the released sum; 64 B/param.
DEFAULT_PARAMS = CKKSParams(8192, (60, 60, 60), 60)
#: DESIGN.md's original sum-only choice (32 B/param); with flooding at s=30, tau=2^16 its released
#: sum carries noise of std ~3 per coordinate, so it is kept for comparison only.
COMPACT_PARAMS = CKKSParams(8192, (60, 60), 40)
#: the setting NVFlare and most frameworks use; ~2.5x larger ciphertexts, same sum
NVFLARE_PARAMS = CKKSParams(8192, (60, 40, 40, 60), 40)
VALIDATED_PARAMS: tuple[CKKSParams, ...] = (
    DEFAULT_PARAMS,
    COMPACT_PARAMS,
    NVFLARE_PARAMS,
    CKKSParams(16384, (60, 60), 40),
    CKKSParams(16384, (60, 40, 40, 60), 40),
)
