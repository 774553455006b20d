"""The in-process drivers of the aggregation modes: every party of the protocol (the banks, the
server, the CKKS key holder) in this process, each seeing only its own messages. They drive
``securefl run``, :func:`securefl.train` and :func:`securefl.simulate_secure_sum`; a deployment runs
the same protocols (securefl.protocol) over Flower instead.

One interface (:class:`~securefl.aggregators.base.Aggregator`): ``aggregate(spec, inputs, *, random,
dropouts) -> AggregateOutcome``, the sum of the survivors' inputs and nothing else.

- :mod:`securefl.aggregators.base`    the interface, :class:`AggregateOutcome`, shared helpers
- :mod:`securefl.aggregators.plain`   ``plain``: no protection (INSECURE, for comparison)
- :mod:`securefl.aggregators.secagg`  ``secagg``: SecAgg / SecAgg+ masking
- :mod:`securefl.aggregators.ckks`    ``ckks``: CKKS homomorphic sum with a separate key holder

Each driver's module is imported only when :func:`make_aggregator` builds it (``ckks`` loads
TenSEAL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefl.aggregators.base import AggregateOutcome, Aggregator, RandomFactory
from securefl.errors import ConfigError

if TYPE_CHECKING:
    from securefl.transport.policy import Deadlines

__all__ = ["MODES", "AggregateOutcome", "Aggregator", "RandomFactory", "make_aggregator"]

#: the aggregation modes, by name
MODES = ("secagg", "ckks", "plain")


def make_aggregator(name: str, *, neighbours: int | None = None, precision_bits: int = 16,
                    colluders: int = 0, deadlines: Deadlines | None = None) -> Aggregator:
    """The in-process driver of the mode called ``name`` (imports its module lazily):
    ``neighbours`` is SecAgg+'s expected degree (None: derived from the bounds), ``colluders`` the
    banks assumed to collude with the server (SecAgg's thresholds and noise shares follow),
    ``deadlines`` the in-process transport's per-stage deadlines (secagg and ckks;
    securefl.transport.policy)."""
    if name == "plain" and deadlines is not None and (
            deadlines.stage_s is not None or deadlines.bank_wait_s is not None):
        raise ConfigError("plain runs no staged protocol, so it has no stage deadlines; it takes "
                          "only Deadlines.training_s")
    if name == "plain":
        from securefl.aggregators.plain import PlainAggregator

        return PlainAggregator()
    if name == "secagg":
        from securefl.aggregators.secagg import SecAggAggregator
        from securefl.protocol.secagg import Assumptions

        return SecAggAggregator(degree=neighbours, precision_bits=precision_bits,
                                assumptions=Assumptions(colluders=colluders),
                                deadlines=deadlines)
    if name == "ckks":
        from securefl.aggregators.ckks import CKKSAggregator

        return CKKSAggregator(deadlines=deadlines)
    raise ConfigError(f"unknown aggregation {name!r}; use {', '.join(repr(m) for m in MODES)}")
