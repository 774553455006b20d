"""SecAgg round parameters: domain-separation strings, seed size and stage names, the federation
manifest (:class:`Federation`) and the public round parameters (:class:`SecAggConfig`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from securefl.crypto.signing import VerifyKey
from securefl.errors import ConfigError, SignatureError
from securefl.protocol import quantize
from securefl.protocol.graph import default_degree
from securefl.protocol.messages import MAX_CLIENTS

__all__ = [
    "ADVERTISE_DOMAIN",
    "COMMIT_DOMAIN",
    "CONSISTENCY_DOMAIN",
    "MASK_PURPOSE",
    "ROSTER_DOMAIN",
    "SEED_SIZE",
    "SHARE_PURPOSE",
    "STAGES",
    "Federation",
    "SecAggConfig",
]

ADVERTISE_DOMAIN = "securefl/secagg/v1/advertise"
CONSISTENCY_DOMAIN = "securefl/secagg/v1/consistency"
ROSTER_DOMAIN = b"securefl/secagg/v1/roster\x00"
COMMIT_DOMAIN = b"securefl/secagg/v1/self-mask-commit\x00"
MASK_PURPOSE = "mask"
SHARE_PURPOSE = "share"
SEED_SIZE = 32

#: stage names, in order (the ``dropouts`` mapping uses them)
STAGES = ("advertise", "share", "masked", "consistency", "unmask")


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Federation:
    """The PKI for one session: enrolled client id -> Ed25519 identity key (the federation
    manifest)."""

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


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one SecAgg round, agreed before it starts.

    ``threshold``: the minimum number of clients in U3 (whose inputs enter the sum) and of valid
    consistency signatures. ``neighbour_threshold`` (t): Shamir threshold among a client's k + 1
    share holders (its k neighbours and itself); it must be a strict majority of the holders so that
    two disjoint sets of t holders cannot exist (a server cannot collect b_i from one set and the
    mask key of i from another). ``degree`` (k): k = n - 1 is classic SecAgg.
    """

    session_id: bytes
    round: int
    participants: tuple[int, ...]
    threshold: int
    degree: int
    neighbour_threshold: int
    dim: int
    bits: int

    def __post_init__(self) -> None:
        n = len(self.participants)
        if len(self.session_id) != 16:
            raise ConfigError("session_id must be 16 bytes")
        if not 0 <= self.round < 2**63:
            raise ConfigError("round out of range")
        if n < 2 or n > MAX_CLIENTS or len(set(self.participants)) != n:
            raise ConfigError(f"SecAgg needs 2..{MAX_CLIENTS} distinct participants")
        if any(not 0 <= c < 2**32 - 1 for c in self.participants):
            raise ConfigError("client ids must be in [0, 2^32 - 1)")
        if not 1 <= self.threshold <= n:
            raise ConfigError(f"threshold must be in [1, {n}]")
        if not 1 <= self.degree <= n - 1 or (self.degree < n - 1 and self.degree % 2):
            raise ConfigError(
                f"degree k = {self.degree} must be even and < n - 1, or n - 1 = {n - 1}"
            )
        holders = self.degree + 1
        if not holders // 2 + 1 <= self.neighbour_threshold <= holders:
            raise ConfigError(
                f"neighbour threshold {self.neighbour_threshold} must be a strict majority of the "
                f"{holders} share holders: in [{holders // 2 + 1}, {holders}]"
            )
        if not 1 <= self.bits <= quantize.MAX_BITS or self.dim < 1:
            raise ConfigError("bits must be in [1, 32] and dim >= 1")

    @classmethod
    def build(
        cls,
        *,
        session_id: bytes,
        round: int,
        participants: Sequence[int],
        threshold: int,
        dim: int,
        bits: int,
        degree: int | None = None,
        neighbour_threshold: int | None = None,
    ) -> SecAggConfig:
        """Fill safe defaults: k = min(n - 1, 2 ceil(log2 n)); t = max(majority of k + 1 holders,
        ``threshold`` when classic)."""
        n = len(participants)
        k = default_degree(n) if degree is None else degree
        if neighbour_threshold is None:
            majority = (k + 1) // 2 + 1
            neighbour_threshold = max(majority, threshold) if k == n - 1 else majority
            neighbour_threshold = min(neighbour_threshold, k + 1)
        return cls(
            session_id=session_id,
            round=round,
            participants=tuple(sorted(participants)),
            threshold=threshold,
            degree=k,
            neighbour_threshold=neighbour_threshold,
            dim=dim,
            bits=bits,
        )
