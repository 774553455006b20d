"""SecAgg's encoding rules, shared by every party that runs the protocol (the in-process driver,
a deployment's bank and server, the Flower mod and workflow): the field and step of a round
(:meth:`SecAggEncoder.encoding_for`), the noise-share size under the stated colluders
(:meth:`SecAggEncoder.noise_variance_int`, :meth:`SecAggEncoder.isolatable_honest`), the protocol
threshold (:meth:`SecAggEncoder.min_survivors`), one client's field input (:func:`encode_input`)
and the released sum back in input units (:func:`decode_sum`). protocols/secagg/spec.md,
"Quantization":

  gamma = clip_norm / 2^precision_bits (or given), stochastic rounding with uniforms from the
  client's "rounding" source, integer DP noise from its "noise" source (Kairouz, Liu, Steinke,
  ICML 2021: the distributed discrete Gaussian), field Z_{2^b} with b chosen so the sum of all
  participants cannot wrap (securefl.protocol.quantize).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import ConfigError, OverflowRiskError
from securefl.protocol import quantize
from securefl.protocol.plan import check_release, min_survivors
from securefl.protocol.secagg.bounds import Assumptions, derive

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.protocol.plan import RoundSpec
    from securefl.protocol.quantize import Encoding

__all__ = ["SecAggEncoder", "check_release", "decode_sum", "encode_input", "moments_precision_bits"]


class SecAggEncoder:
    """A round's SecAgg encoding from its public plan. Thresholds and graph degree follow from
    ``assumptions`` (protocol.secagg.bounds): classic SecAgg where a graph would not save much,
    SecAgg+ on G(n, p) otherwise; explicit ``degree`` and ``neighbour_threshold`` are checked
    against the bounds."""

    def __init__(
        self,
        *,
        degree: int | None = None,
        neighbour_threshold: int | None = None,
        precision_bits: int = 16,
        gamma: float | None = None,
        tail_log2: int = 40,
        assumptions: Assumptions | None = None,
    ) -> None:
        if not 1 <= precision_bits <= 30:
            raise ConfigError("precision_bits must be in [1, 30]")
        if gamma is not None and not (gamma > 0 and math.isfinite(gamma)):
            raise ConfigError("gamma must be a positive finite number")
        self.degree = degree
        self.neighbour_threshold = neighbour_threshold
        self.precision_bits = precision_bits
        self.gamma = gamma
        self.tail_log2 = tail_log2
        #: the federation's stated assumptions (colluders, dropouts): thresholds follow from them
        self.assumptions = assumptions if assumptions is not None else Assumptions()

    def noise_variance_int(self, spec: RoundSpec, gamma: float) -> float:
        """Per-client integer noise variance (z C / gamma)^2 / h, h the honest floor of the noise
        plan (min_survivors - colluders, or SecAgg+'s isolatable honest set); 0 without noise."""
        if spec.noise is None or spec.noise.noise_multiplier == 0:
            return 0.0
        return (
            spec.noise.noise_multiplier * spec.clip_norm / gamma
        ) ** 2 / spec.noise.honest_floor

    def isolatable_honest(self, n: int, threshold: int) -> int | None:
        """The fewest honest inputs a released sum can hold under these assumptions when that is
        fewer than all honest survivors (SecAgg+ on a sparse graph: the bounds'
        ``min_honest_sum``); None for classic SecAgg, which releases one sum."""
        d = derive(n, self.assumptions, threshold=threshold, degree=self.degree,
                   neighbour_threshold=self.neighbour_threshold)
        return None if d.classic else d.min_honest_sum

    def check_noise_plan(self, spec: RoundSpec) -> None:
        """Refuse (ConfigError) a noise plan sized for fewer colluders, or a larger honest set, than
        these assumptions guarantee: its honest shares would carry less than the planned noise."""
        if spec.noise is None or spec.noise.noise_multiplier == 0:
            return
        n, c = len(spec.participants), self.assumptions.colluders
        isolatable = self.isolatable_honest(n, self.min_survivors(spec))
        guaranteed = isolatable if isolatable is not None else spec.noise.min_survivors - c
        if spec.noise.colluders < c or spec.noise.honest_floor > guaranteed:
            raise ConfigError(
                f"the noise plan splits the noise over {spec.noise.honest_floor} honest shares "
                f"(colluders {spec.noise.colluders}), but with c = {c} colluding banks a released "
                f"sum may hold only {guaranteed} honest inputs",
                hint="size the noise plan with the aggregator's assumptions (NoisePlan colluders, "
                     "isolatable_honest)")

    @staticmethod
    def min_survivors(spec: RoundSpec) -> int:
        """The protocol threshold (securefl.protocol.plan.min_survivors): ``spec.threshold``,
        raised to ``noise.min_survivors``."""
        return min_survivors(spec)

    def encoding_for(self, spec: RoundSpec, dim: int) -> Encoding:
        """gamma (input units per integer step), field bits b, and the L2 sensitivity of one client
        in integer units including stochastic-rounding inflation, C / gamma + sqrt(dim)."""
        gamma = self.gamma if self.gamma is not None else spec.clip_norm / 2**self.precision_bits
        return quantize.choose_encoding(
            len(spec.participants),
            dim,
            spec.clip_norm,
            gamma,
            self.noise_variance_int(spec, gamma),
            self.tail_log2,
        )


def encode_input(x: NDArray[np.float64], *, clip_norm: float, encoding: Encoding,
                 rounding: RandomSource, noise: RandomSource, who: str = "client"
                 ) -> NDArray[np.uint32]:
    """One client's field input (protocols/secagg/spec.md, "Quantization"): check the clip,
    stochastic rounding to multiples of gamma, this client's discrete Gaussian noise share (when the
    encoding carries noise), then Z_2^b. OverflowRiskError if the input breaks the field bound."""
    x = np.asarray(x, dtype=np.float64)
    # NaN or +-inf anywhere makes the norm NaN or inf, which fails this test too
    if not float(np.linalg.norm(x)) <= clip_norm * (1 + 1e-9):
        raise OverflowRiskError(f"input of {who} is not finite or exceeds the clip norm")
    q_noise = None
    if encoding.noise_sigma2_int > 0:
        from securefl.dp.discrete import discrete_gaussian

        q_noise = discrete_gaussian(x.size, encoding.noise_sigma2_int, noise)
    try:  # one blocked pass: round, check |q| <= ceil(C / gamma), add the noise, reduce
        return quantize.round_to_field(x, encoding.gamma, encoding.bits,
                                       math.ceil(clip_norm / encoding.gamma), rounding, q_noise)
    except OverflowRiskError as exc:
        raise OverflowRiskError(f"input of {who} exceeds the per-coordinate bound") from exc


def decode_sum(field_sum: NDArray[np.uint32], encoding: Encoding) -> NDArray[np.float64]:
    """The released field sum in input units: its centred integers (quantize.from_field) times
    gamma."""
    out: NDArray[np.float64] = quantize.from_field(field_sum, encoding.bits).astype(np.float64) \
        * encoding.gamma
    return out


def moments_precision_bits(n: int) -> int:
    """Round 0's precision (federated standardisation: the banks' moment vectors summed): sums of
    squares span many orders of magnitude, so quantize as finely as a field of 32 bits still holds
    the sum of ``n`` inputs, 29 - max(1, ceil(log2 n)) bits."""
    return 29 - max(1, math.ceil(math.log2(n)))
