"""SecAgg+ communication graph: an Erdős–Rényi graph G(n, p) drawn from public randomness.

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020: each
client shares its secrets with, and masks against, only its neighbours on a random graph whose
expansion (every small set of clients has many neighbours outside it) is what stops a server that
declares clients dropped from isolating a small set of honest inputs. A ring-like Harary layout,
used before protocol v2, has no such expansion: declaring two arcs of k/2 clients dropped cut the
ring and unmasked the sum of one arc (issue 14, finding 3).

Construction (language-neutral; protocols/secagg/spec.md, "Graph"):

- ``seed = SHA-256(GRAPH_SEED_DOMAIN | session_id | u64 round | u32 n | u32 id_1 .. u32 id_n)``
  over the round's sorted participants, so the seed is fixed before any key is advertised: neither
  declaring clients dropped nor re-keying changes the graph (issue 14, finding 4). Open item: in a
  deployment the session id is still the server's choice; deriving it from the signed manifest
  and a counter each bank persists (so a server cannot draw fresh graphs at will) is not built
  yet (protocols/secagg/spec.md, section 12).
- an edge {i, j} (i < j) is present iff ``u64_be(SHA-256(GRAPH_DOMAIN | seed | u32 i | u32 j)[:8])
  < floor(k * 2^64 / (n - 1))``: each edge independently with probability p = k / (n - 1), so the
  expected degree is k. ``k = n - 1`` is the complete graph, i.e. classic SecAgg (Bonawitz et al.,
  CCS 2017).

The degree k is not chosen here: :mod:`securefl.protocol.secagg.bounds` derives it from the
federation's stated assumptions.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from securefl.errors import ConfigError

__all__ = ["GRAPH_DOMAIN", "GRAPH_SEED_DOMAIN", "edge_cutoff", "graph_seed", "neighbours_of",
           "random_graph"]

GRAPH_DOMAIN = b"securefl/secagg/v2/graph-edge\x00"
GRAPH_SEED_DOMAIN = b"securefl/secagg/v2/graph-seed\x00"


def graph_seed(session_id: bytes, round_: int, participants: Sequence[int]) -> bytes:
    """The public randomness of one round's graph (fixed before any key exists)."""
    ids = sorted(participants)
    if len(set(ids)) != len(ids):
        raise ConfigError("graph participants must be distinct")
    return hashlib.sha256(
        GRAPH_SEED_DOMAIN + session_id + struct.pack(f">QI{len(ids)}I", round_, len(ids), *ids)
    ).digest()


def edge_cutoff(n: int, k: int) -> int:
    """floor(k * 2^64 / (n - 1)); an edge is present when its 64-bit hash is below this."""
    if n < 2 or not 1 <= k <= n - 1:
        raise ConfigError(f"degree k = {k} must be in [1, n - 1 = {n - 1}]")
    return (k << 64) // (n - 1)


def _edge(prefix: bytes, i: int, j: int, cutoff: int) -> bool:
    a, b = (i, j) if i < j else (j, i)
    h = hashlib.sha256(prefix + struct.pack(">II", a, b)).digest()
    return int.from_bytes(h[:8], "big") < cutoff


def neighbours_of(node: int, nodes: Sequence[int], k: int, seed: bytes) -> frozenset[int]:
    """``random_graph(nodes, k, seed)[node]`` with n - 1 hashes instead of n(n - 1)/2 (a client
    needs only its own row)."""
    ids = sorted(nodes)
    n = len(ids)
    if len(set(ids)) != n or node not in ids:
        raise ConfigError("graph nodes must be distinct and include the node")
    if n == 1:
        return frozenset()
    cutoff = edge_cutoff(n, k)
    if k == n - 1:
        return frozenset(ids) - {node}
    prefix = GRAPH_DOMAIN + seed
    return frozenset(j for j in ids if j != node and _edge(prefix, node, j, cutoff))


def random_graph(nodes: Sequence[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Neighbour sets of G(n, k / (n - 1)) on ``nodes`` drawn from ``seed`` (complete if k = n - 1)."""
    ids = sorted(nodes)
    n = len(ids)
    if len(set(ids)) != n:
        raise ConfigError("graph nodes must be distinct")
    if n == 1:
        return {ids[0]: frozenset()}
    cutoff = edge_cutoff(n, k)
    adj: dict[int, set[int]] = {c: set() for c in ids}
    if k == n - 1:
        return {c: frozenset(ids) - {c} for c in ids}
    prefix = GRAPH_DOMAIN + seed
    for a, i in enumerate(ids):
        for j in ids[a + 1 :]:
            if _edge(prefix, i, j, cutoff):
                adj[i].add(j)
                adj[j].add(i)
    return {c: frozenset(v) for c, v in adj.items()}
