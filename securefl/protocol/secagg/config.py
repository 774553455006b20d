"""SecAgg round parameters: domain-separation strings, seed size and stage names, the session's
roster of enrolled identity keys (:class:`IdentityRoster`) and the public round parameters
(:class:`SecAggConfig`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from securefl.crypto.signing import VerifyKey
from securefl.errors import ConfigError, SignatureError
from securefl.protocol import quantize
from securefl.protocol.graph import graph_seed
from securefl.protocol.messages import MAX_CLIENTS
from securefl.protocol.secagg.bounds import Assumptions, Derived, derive

__all__ = [
    "ADVERTISE_DOMAIN",
    "COMMIT_DOMAIN",
    "CONSISTENCY_DOMAIN",
    "MASK_PURPOSE",
    "PLAN_DOMAIN",
    "ROSTER_DOMAIN",
    "SEED_SIZE",
    "SHARE_PURPOSE",
    "STAGES",
    "IdentityRoster",
    "SecAggConfig",
]

ADVERTISE_DOMAIN = "securefl/secagg/v2/advertise"
CONSISTENCY_DOMAIN = "securefl/secagg/v2/consistency"
ROSTER_DOMAIN = b"securefl/secagg/v2/roster\x00"
PLAN_DOMAIN = b"securefl/secagg/v2/plan\x00"
COMMIT_DOMAIN = b"securefl/secagg/v1/self-mask-commit\x00"
MASK_PURPOSE = "mask"
SHARE_PURPOSE = "share"
SEED_SIZE = 32

#: stage names, in order (the ``dropouts`` mapping uses them)
STAGES = ("advertise", "share", "masked", "consistency", "unmask")


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityRoster:
    """The PKI for one session: enrolled client id -> Ed25519 identity key, taken from the
    federation manifest (:class:`securefl.federation.Federation`)."""

    session_id: bytes
    identities: Mapping[int, VerifyKey]

    def __post_init__(self) -> None:
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")

    def verify_key(self, client_id: int) -> VerifyKey:
        key = self.identities.get(client_id)
        if key is None:
            raise SignatureError(f"client {client_id} is not enrolled in the federation manifest")
        return key


_DEFAULT_ASSUMPTIONS = Assumptions()


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg round, agreed before it starts; each party builds it from its
    own copy of the signed manifest (``assumptions``) and the server's round plan.

    ``threshold`` (T): the minimum number of clients in U3 (whose inputs enter the sum) and of valid
    consistency signatures. ``degree`` (k): expected neighbours on the round's random graph;
    k = n - 1 is classic SecAgg. ``neighbour_threshold`` (t): Shamir threshold among a client's
    holders (its neighbours and itself). All three are checked against the bounds that
    :mod:`securefl.protocol.secagg.bounds` derives from ``assumptions``: a plan below them is
    refused with the bound in the error. ``plan_digest`` (32 bytes): the application's digest of
    what else every client must agree on (global model, public FedAvg weights, DP parameters); it is
    signed with the advertised keys and the survivor set, so a server that tailors the model or a
    weight to one client is caught before anything is unmasked (Pasquini et al., CCS 2022).
    """

    session_id: bytes
    round: int
    participants: tuple[int, ...]
    threshold: int
    degree: int
    neighbour_threshold: int
    dim: int
    bits: int
    assumptions: Assumptions = _DEFAULT_ASSUMPTIONS
    plan_digest: bytes = bytes(32)

    def __post_init__(self) -> None:
        n = len(self.participants)
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        if not 0 <= self.round < 2**63:
            raise ConfigError("round out of range")
        if n < 2 or n > MAX_CLIENTS or len(set(self.participants)) != n:
            raise ConfigError(f"SecAgg needs 2..{MAX_CLIENTS} distinct participants")
        if tuple(sorted(self.participants)) != tuple(self.participants):
            raise ConfigError("participants must be sorted")
        if any(not 0 <= c < 2**32 - 1 for c in self.participants):
            raise ConfigError("client ids must be in [0, 2^32 - 1)")
        if not 1 <= self.bits <= quantize.MAX_BITS or self.dim < 1:
            raise ConfigError("bits must be in [1, 32] and dim >= 1")
        if len(self.plan_digest) != 32:
            raise ConfigError("plan_digest must be 32 bytes")
        _derive(n, self.assumptions, self.threshold, self.degree, self.neighbour_threshold)

    @property
    def graph_seed(self) -> bytes:
        """The round's public graph randomness (securefl.protocol.graph.graph_seed)."""
        return graph_seed(self.session_id, self.round, self.participants)

    @property
    def guarantee(self) -> Derived:
        """What this round's parameters guarantee under its assumptions (bounds.Derived)."""
        return _derive(len(self.participants), self.assumptions, self.threshold, self.degree,
                       self.neighbour_threshold)

    @classmethod
    def build(
        cls,
        *,
        session_id: bytes,
        round: int,
        participants: Sequence[int],
        dim: int,
        bits: int,
        assumptions: Assumptions | None = None,
        threshold: int | None = None,
        degree: int | None = None,
        neighbour_threshold: int | None = None,
        plan_digest: bytes = bytes(32),
    ) -> SecAggConfig:
        """Derive T, k and t from ``assumptions`` (bounds.derive); explicit values are checked."""
        a = assumptions if assumptions is not None else Assumptions()
        d = _derive(len(participants), a, threshold, degree, neighbour_threshold)
        return cls(
            session_id=session_id,
            round=round,
            participants=tuple(sorted(participants)),
            threshold=d.threshold,
            degree=d.degree,
            neighbour_threshold=d.neighbour_threshold,
            dim=dim,
            bits=bits,
            assumptions=a,
            plan_digest=plan_digest,
        )


@functools.lru_cache(maxsize=256)
def _derive(n: int, a: Assumptions, threshold: int | None, degree: int | None,
            neighbour_threshold: int | None) -> Derived:
    return derive(n, a, threshold=threshold, degree=degree,
                  neighbour_threshold=neighbour_threshold)
