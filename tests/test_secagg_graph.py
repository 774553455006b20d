"""SecAgg+ graph G(n, p) from public randomness: re-derived independently from the spec, symmetric,
fixed by (session, round, participants) alone, with the edge frequency p = k / (n - 1)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigError
from securefl.protocol.graph import graph_seed, neighbours_of, random_graph


def _spec_seed(session: bytes, round_: int, ids: list[int]) -> bytes:
    """protocols/secagg/spec.md, "Graph", written from the text."""
    ids = sorted(ids)
    data = b"securefl/secagg/v2/graph-seed\x00" + session + struct.pack(">Q", round_)
    data += struct.pack(">I", len(ids)) + b"".join(struct.pack(">I", i) for i in ids)
    return hashlib.sha256(data).digest()


def _spec_graph(ids: list[int], k: int, seed: bytes) -> dict[int, set[int]]:
    n = len(ids)
    cutoff = k * 2**64 // (n - 1)
    out: dict[int, set[int]] = {i: set() for i in ids}
    for i in ids:
        for j in ids:
            if i < j:
                h = hashlib.sha256(b"securefl/secagg/v2/graph-edge\x00" + seed
                                   + i.to_bytes(4, "big") + j.to_bytes(4, "big")).digest()
                if int.from_bytes(h[:8], "big") < cutoff:
                    out[i].add(j)
                    out[j].add(i)
    return out


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 40), kf=st.floats(0.01, 1.0), session=st.binary(min_size=16, max_size=16),
       round_=st.integers(0, 2**63 - 1))
def test_matches_the_spec_and_is_symmetric(m: int, kf: float, session: bytes, round_: int) -> None:
    nodes = [3 * c + 1 for c in range(m)]
    k = max(1, min(m - 1, round(kf * (m - 1))))
    seed = graph_seed(session, round_, list(reversed(nodes)))
    assert seed == _spec_seed(session, round_, nodes)
    graph = random_graph(nodes, k, seed)
    expected = _spec_graph(nodes, k, seed) if k < m - 1 else {
        i: set(nodes) - {i} for i in nodes}
    assert {c: set(v) for c, v in graph.items()} == expected
    for c, nb in graph.items():
        assert c not in nb and all(c in graph[o] for o in nb)
        assert neighbours_of(c, nodes, k, seed) == nb  # a client's own row


def test_edge_frequency_is_k_over_n_minus_1() -> None:
    # 200 nodes, 19,900 pairs: the edge count is Binomial(19900, p); 5 sigma bounds (false failure
    # probability < 1e-6).
    n, k = 200, 30
    graph = random_graph(list(range(n)), k, graph_seed(b"S" * 16, 1, list(range(n))))
    edges = sum(len(v) for v in graph.values()) // 2
    pairs, p = n * (n - 1) // 2, k / (n - 1)
    sd = (pairs * p * (1 - p)) ** 0.5
    assert abs(edges - pairs * p) < 5 * sd


def test_only_public_inputs_change_the_graph() -> None:
    ids = list(range(40))
    a = random_graph(ids, 10, graph_seed(b"A" * 16, 3, ids))
    assert a == random_graph(ids, 10, graph_seed(b"A" * 16, 3, ids))
    assert a != random_graph(ids, 10, graph_seed(b"B" * 16, 3, ids))
    assert a != random_graph(ids, 10, graph_seed(b"A" * 16, 4, ids))
    assert random_graph(list(range(5)), 4, b"x")[0] == frozenset({1, 2, 3, 4})
    with pytest.raises(ConfigError):
        random_graph(ids, 0, b"x")
    with pytest.raises(ConfigError):
        random_graph(ids, 40, b"x")
