"""The one interface of the in-process drivers (:class:`Aggregator`): ``plain`` (insecure, for
comparison), ``secagg`` (SecAgg/SecAgg+ masking) and ``ckks`` (homomorphic encryption), each running
every party of its protocol in this process.

The federated loop hands a driver the round's public plan (:class:`securefl.protocol.plan.RoundSpec`)
and the participants' clipped float updates (L2 norm <= ``clip_norm``, already multiplied by the
client's public weight in (0, 1]) and gets back only the SUM of the survivors' inputs
(:class:`AggregateOutcome`), plus the transcript facts the audit log and privacy ledger need.
Client-level DP noise is the mode's job, because where it is added differs: in the integer domain
after scaling for masking (distributed discrete Gaussian), as a Gaussian share before encryption for
CKKS and plain. The encoding rules a deployment shares with these drivers live in
:mod:`securefl.protocol` (``protocol.plan``, ``protocol.secagg.encoding``, ``protocol.ckks``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from securefl.errors import ConfigError, LocalProtocolError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.random import RandomSource
    from securefl.crypto.signing import SigningKey
    from securefl.protocol.plan import RoundSpec

__all__ = ["AggregateOutcome", "Aggregator", "Inputs", "RandomFactory", "check_inputs",
           "participant_identities"]

#: returns the randomness source for (client id, purpose), e.g. (2, "noise") or (2, "rounding").
RandomFactory = Callable[[int, str], "RandomSource"]
#: a round's inputs: participant id -> its clipped, weighted float update
Inputs = Mapping[int, "NDArray[np.float64]"]


@dataclass
class AggregateOutcome:
    """The only thing a round releases: the sum of the survivors' (noised) inputs."""

    total: NDArray[np.float64]
    survivors: tuple[int, ...]
    #: client id -> name of the stage at which it dropped
    dropouts: dict[int, str] = field(default_factory=dict)
    #: per-coordinate std of the DP noise actually present in ``total`` (input units); 0 if none
    noise_std: float = 0.0
    #: sha256 hex digests for the audit log: "input/<id>", "aggregate", ...; never raw values
    digests: dict[str, str] = field(default_factory=dict)
    #: bytes each party sent ("server", "client/<id>", ...)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    #: the released sum of the survivors' FedAvg weights, when the aggregation carries it beside
    #: the update (ckks: encrypted in the last slot); None: the public weights are summed
    weight_total: float | None = None


def check_inputs(spec: RoundSpec, inputs: Mapping[int, NDArray[np.float64]]) -> int:
    """The common dimension of the round's inputs; LocalProtocolError unless there is exactly one
    1-D input per participant, all of the same length."""
    if set(inputs) != set(spec.participants):
        raise LocalProtocolError("inputs must be given for exactly the round's participants")
    dims = {np.asarray(v).shape for v in inputs.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise LocalProtocolError("all inputs must be 1-D vectors of the same dimension")
    return int(next(iter(dims))[0])


def participant_identities(spec: RoundSpec, random: RandomFactory,
                           enrolled: Mapping[int, SigningKey] | None) -> dict[int, SigningKey]:
    """The participants' Ed25519 identity keys: the enrolled ones (a deployment's manifest), or for
    simulations keys drawn from ``random(client, "identity")``."""
    from securefl.crypto.secret import Secret
    from securefl.crypto.signing import SigningKey

    if enrolled is not None:
        missing = set(spec.participants) - set(enrolled)
        if missing:
            raise ConfigError(f"no identity key for participants {sorted(missing)[:5]}")
        return {c: enrolled[c] for c in spec.participants}
    return {c: SigningKey.from_seed(Secret(random(c, "identity").random_bytes(32)))
            for c in spec.participants}


class Aggregator(ABC):
    """A way to compute the sum of the survivors' inputs."""

    name: ClassVar[str]
    #: False only for ``plain``, which the server sees in the clear
    secure: ClassVar[bool]
    #: protocol stages at which a client can drop out (for dropout simulation), in order
    stages: ClassVar[tuple[str, ...]] = ("upload",)

    def isolatable_honest(self, n: int, threshold: int) -> int | None:
        """The fewest honest inputs a released sum can hold when that is fewer than all honest
        survivors (SecAgg+ overrides it); None: one sum of every survivor is released."""
        return None

    def aggregate(self, spec: RoundSpec, inputs: Inputs, *, random: RandomFactory,
                  dropouts: Mapping[int, str] | None = None) -> AggregateOutcome:
        """Run one round. ``dropouts`` maps client id -> stage name at which it disappears.

        The inputs are checked here, once for every mode (:func:`check_inputs`); the mode's
        protocol is :meth:`run_round`. Raises :class:`~securefl.errors.AggregationAbortedError` if
        too few survive; nothing is released then.
        """
        return self.run_round(spec, inputs, check_inputs(spec, inputs), random=random,
                              dropouts=dict(dropouts or {}))

    @abstractmethod
    def run_round(self, spec: RoundSpec, inputs: Inputs, dim: int, *, random: RandomFactory,
                  dropouts: dict[int, str]) -> AggregateOutcome:
        """The mode's round over the checked inputs of dimension ``dim``; ``dropouts`` is the
        caller's map, copied (the mode may extend it)."""
