"""Continuous Gaussian noise drawn from a cryptographic randomness source.

Box-Muller over 53-bit uniforms from a CSPRNG (never numpy's generators). Floating-point Gaussian
samplers leak through their low-order bits (Mironov, "On significance of the least significant bits
for differential privacy", CCS 2012); for the masked (integer) path securefl uses the exact discrete
Gaussian instead (securefl.dp.discrete). This sampler serves the plain and CKKS modes, where the
released aggregate is itself rounded (CKKS adds flooding noise and rounds before release).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource


def gaussian(n: int, std: float, random: RandomSource) -> NDArray[np.float64]:
    """``n`` independent N(0, std^2) samples."""
    if std < 0 or not np.isfinite(std):
        raise ValueError("std must be finite and >= 0")
    if n == 0 or std == 0:
        return np.zeros(n, dtype=np.float64)
    m = (n + 1) // 2
    u1 = 1.0 - random.uniform(m)  # in (0, 1]: log is finite
    u2 = random.uniform(m)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    out = np.empty(2 * m, dtype=np.float64)
    out[0::2] = r * np.cos(theta)
    out[1::2] = r * np.sin(theta)
    return out[:n] * std
