"""SecAgg+ Harary graph: k-regular, symmetric, and the ordering re-derived independently."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigError
from securefl.protocol.graph import default_degree, harary_neighbours


def test_default_degree_hand_values() -> None:
    # 2 * ceil(log2 n), capped at n - 1
    assert [default_degree(n) for n in (1, 2, 3, 10, 100, 1000)] == [0, 1, 2, 8, 14, 20]


@settings(max_examples=50, deadline=None)
@given(m=st.integers(3, 60), half=st.integers(1, 10), seed=st.binary(max_size=32))
def test_regular_symmetric_and_independently_ordered(m: int, half: int, seed: bytes) -> None:
    k = 2 * half
    nodes = [3 * c + 1 for c in range(m)]
    graph = harary_neighbours(nodes, k, seed)
    k_eff = min(k, m - 1)
    for c, nb in graph.items():
        assert c not in nb and len(nb) == k_eff
        for other in nb:
            assert c in graph[other]
    if k < m - 1:
        order = sorted(
            nodes,
            key=lambda c: hashlib.sha256(
                b"securefl/secagg/v1/graph\x00" + seed + c.to_bytes(4, "big")
            ).digest(),
        )
        for pos, c in enumerate(order):
            ring = {order[(pos + d) % m] for d in range(1, half + 1)}
            ring |= {order[(pos - d) % m] for d in range(1, half + 1)}
            assert graph[c] == ring


def test_seed_changes_the_graph_and_odd_degree_is_refused() -> None:
    nodes = list(range(50))
    assert harary_neighbours(nodes, 6, b"a") != harary_neighbours(nodes, 6, b"b")
    assert harary_neighbours(nodes, 6, b"a") == harary_neighbours(nodes, 6, b"a")
    with pytest.raises(ConfigError):
        harary_neighbours(nodes, 7, b"a")
    complete = harary_neighbours(list(range(5)), 4, b"a")
    assert complete[0] == frozenset({1, 2, 3, 4})
