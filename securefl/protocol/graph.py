"""SecAgg+ communication graph: a Harary graph H(k, m) over randomly permuted clients.

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020,
section 3: each client shares its secrets with, and masks against, only its k = O(log n)
neighbours on a random k-regular graph. We use the Harary construction (clients on a cycle, each
linked to the k/2 nearest on either side) over a uniformly random ordering of the clients, the
ordering being public randomness the server cannot bias once keys are committed:
``order = sort clients by SHA-256(GRAPH_DOMAIN | seed | u32 id)`` where ``seed`` is the SHA-256
digest of the whole signed key roster (see secagg.roster_digest).

``k = m - 1`` is the complete graph, i.e. classic SecAgg (Bonawitz et al., CCS 2017).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

from securefl.errors import ConfigError

__all__ = ["GRAPH_DOMAIN", "default_degree", "harary_neighbours", "permutation_order"]

GRAPH_DOMAIN = b"securefl/secagg/v1/graph\x00"


def default_degree(n: int) -> int:
    """k = min(n - 1, 2 * ceil(log2 n)): even, O(log n) (Bell et al. section 3); 14 for n = 100."""
    if n < 1:
        raise ConfigError("n must be >= 1")
    if n == 1:
        return 0
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def permutation_order(nodes: Sequence[int], seed: bytes) -> list[int]:
    """The nodes sorted by SHA-256(GRAPH_DOMAIN | seed | u32 id): a uniformly random ordering."""
    return sorted(
        nodes, key=lambda c: hashlib.sha256(GRAPH_DOMAIN + seed + struct.pack(">I", c)).digest()
    )


def harary_neighbours(nodes: Sequence[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Neighbour sets of the Harary graph H(k, m) on the randomly ordered ``nodes``.

    If k >= m - 1 the graph is complete. Otherwise k must be even (H(k, m) for odd k needs a
    diameter matching; we do not need it, the default degree is even).
    """
    m = len(nodes)
    if len(set(nodes)) != m:
        raise ConfigError("graph nodes must be distinct")
    if k < 0:
        raise ConfigError("degree k must be >= 0")
    if k >= m - 1:
        everyone = frozenset(nodes)
        return {c: everyone - {c} for c in nodes}
    if k % 2:
        raise ConfigError(f"degree k = {k} must be even (or n - 1 for classic SecAgg)")
    order = permutation_order(nodes, seed)
    half = k // 2
    out: dict[int, frozenset[int]] = {}
    for pos, c in enumerate(order):
        out[c] = frozenset(order[(pos + d) % m] for d in range(-half, half + 1) if d != 0)
    return out
