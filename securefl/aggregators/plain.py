"""The in-process ``plain`` driver: the server sees every update in the clear. INSECURE, for
comparison only."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from securefl.aggregators.base import AggregateOutcome, Aggregator, Inputs, RandomFactory
from securefl.dp.noise import gaussian
from securefl.errors import AggregationAbortedError

if TYPE_CHECKING:
    from securefl.protocol.plan import RoundSpec

__all__ = ["PlainAggregator"]


class PlainAggregator(Aggregator):
    """Sums float updates with no protection. Each client still adds its DP noise share."""

    name = "plain"
    secure = False

    def run_round(self, spec: RoundSpec, inputs: Inputs, dim: int, *, random: RandomFactory,
                  dropouts: dict[int, str]) -> AggregateOutcome:
        survivors = tuple(c for c in spec.participants if c not in dropouts)
        if len(survivors) < spec.threshold:
            raise AggregationAbortedError(
                f"only {len(survivors)} of {len(spec.participants)} clients survived; "
                f"threshold is {spec.threshold}"
            )
        total = np.zeros(dim, dtype=np.float64)
        share_std = 0.0
        if spec.noise is not None and spec.noise.noise_multiplier > 0:
            share_std = spec.noise.share_std(spec.clip_norm)  # z C / sqrt(honest floor)
        digests: dict[str, str] = {}
        for cid in survivors:
            vec = np.asarray(inputs[cid], dtype=np.float64)
            if share_std > 0:
                vec = vec + gaussian(dim, share_std, random(cid, "noise"))
            digests[f"input/{cid}"] = hashlib.sha256(vec.tobytes()).hexdigest()
            total += vec
        digests["aggregate"] = hashlib.sha256(total.tobytes()).hexdigest()
        return AggregateOutcome(
            total=total,
            survivors=survivors,
            dropouts=dropouts,
            noise_std=share_std * float(np.sqrt(len(survivors))),
            digests=digests,
            bytes_sent={f"client/{c}": 8 * dim for c in survivors},
        )
