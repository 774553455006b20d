"""The SecAgg+ degree a manifest derives covers every graph of the manifest's life (red-team
finding S6-1, protocols/secagg/spec.md section 12.1, "The bound").

The expected values are recomputed here from the formulas of spec section 2.2 (bound 4, the
alpha-summation union bound) with the standard library only, not with securefl's bounds module.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.federation import ProtocolParams
from securefl.protocol.secagg import derive


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _bound4_log2(n: int, k: int, removed: int, s_min: int) -> float:
    """log2 of sum_{s=1}^{s_min-1} C(n, s) P[Bin(n - s, 1 - (1 - p)^s) <= removed], with the
    graph's edge probability p = floor(k 2^64 / (n - 1)) / 2^64 (spec section 4.3)."""
    p = ((k << 64) // (n - 1)) / 2.0**64
    terms = []
    for s in range(1, s_min):
        m = n - s
        miss = s * math.log1p(-p)  # log P[an outside node has no edge into S]
        touch = math.log(-math.expm1(miss))
        tail = _logsumexp([_log_binom(m, j) + j * touch + (m - j) * miss
                           for j in range(min(removed, m) + 1)])
        terms.append(_log_binom(n, s) + tail)
    return _logsumexp(terms) / math.log(2)


@pytest.mark.parametrize(("n", "dropout", "colluders"), [(1000, None, 0), (100, 0.1, 1)])
def test_the_derived_degree_is_the_smallest_meeting_the_lifetime_union_bound(
        n: int, dropout: float | None, colluders: int) -> None:
    """Default manifest: 256 sessions of rounds 0..1000, so 256 * 1001 graphs; each must fail with
    probability <= 2^-(40 + log2(256 * 1001) + 1) so that all of them together stay <= 2^-40."""
    params = ProtocolParams(aggregation="secagg", threshold=2, dropout_fraction=dropout,
                            colluders=colluders)
    graphs = 256 * 1001
    sigma_prime = 40 + math.log2(graphs)
    d = derive(n, params.assumptions())
    T = n - math.floor(dropout * n) if dropout is not None else (n + colluders) // 2 + 1
    removed = n - T + colluders
    s_min = max(2, math.ceil(0.5 * (T - colluders)))
    assert (d.threshold, d.min_honest_sum) == (T, s_min)
    assert not d.classic
    limit = -(sigma_prime + 1)
    assert _bound4_log2(n, d.degree, removed, s_min) <= limit
    assert _bound4_log2(n, d.degree - 1, removed, s_min) > limit
    # the whole life: G graphs times the per-graph bound stays within 2^-40
    assert math.log2(graphs) + _bound4_log2(n, d.degree, removed, s_min) <= -40
    # one graph alone (the previous rule) allowed a sparser graph
    single = ProtocolParams(aggregation="secagg", threshold=2, dropout_fraction=dropout,
                            colluders=colluders, max_sessions=1, max_rounds=1).assumptions()
    assert derive(n, single).degree < d.degree


@pytest.mark.parametrize("n", [3, 5, 10, 30, 100])
def test_defaults_up_to_100_banks_stay_the_complete_graph(n: int) -> None:
    """Spec section 2.4's table with the lifetime bound: no dropout fraction, c = 0 and c = 1."""
    for c in (0, 1):
        if n - c < 3:
            continue
        a = ProtocolParams(aggregation="secagg", threshold=2, colluders=c).assumptions()
        assert derive(n, a).degree == n - 1


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=65536), st.integers(min_value=1, max_value=100_000))
def test_the_manifest_assumptions_cover_every_session_and_round(sessions: int,
                                                                rounds: int) -> None:
    """graphs = max_sessions * (max_rounds + 1), and the per-graph security adds its log2."""
    p = ProtocolParams(aggregation="secagg", threshold=2, max_sessions=sessions,
                       max_rounds=rounds)
    a = p.assumptions()
    assert a.graphs == sessions * (rounds + 1)
    assert a.graph_bits == pytest.approx(40 + math.log2(sessions) + math.log2(rounds + 1))


def test_more_sessions_or_rounds_never_give_a_sparser_graph() -> None:
    ks = [derive(1000, ProtocolParams(aggregation="secagg", threshold=2, max_sessions=s,
                                      max_rounds=r).assumptions()).degree
          for s, r in [(1, 1), (256, 1000), (65536, 100_000)]]
    assert ks == sorted(ks) and ks[0] < ks[-1]
