"""SecAgg/SecAgg+ end to end: exactness under random dropouts at every stage, aborts below
threshold, and the transition table (every pair not in the table is rejected)."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from secagg_helpers import expected_sum, make_round

from securefl.errors import AggregationAbortedError, RemoteProtocolError, StateError
from securefl.protocol import messages as m
from securefl.protocol.secagg import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    STAGES,
    Assumptions,
    ClientState,
    Deadline,
    ServerState,
    Start,
    derive,
)
from securefl.protocol.secagg.bounds import min_threshold
from securefl.transport.inprocess import InProcessDriver


def _independent_outcome(r, dropouts: dict[int, str]) -> tuple[int, ...] | None:  # type: ignore[no-untyped-def]
    """Which clients end up in the sum, or None if the round must abort (the paper's rules, with
    the threshold t never lowered: a client with fewer than t share holders aborts)."""
    cfg = r.config
    t = cfg.neighbour_threshold

    def alive(stage: str) -> set[int]:
        return {
            c
            for c in cfg.participants
            if c not in dropouts or STAGES.index(dropouts[c]) > STAGES.index(stage)
        }

    u1, u2, u3, u4, u5 = (alive(s) for s in STAGES)
    if len(u1) < cfg.threshold:
        return None
    graph = r.server._graph  # the graph itself is tested independently in test_secagg_graph.py
    for i in u2:  # at the roster: holders among those who advertised
        if len((graph[i] & u1) | {i}) < t:
            return None
    if len(u2) < cfg.threshold:
        return None
    for i in u3:  # before masking: shares held from neighbours that shared, itself included
        if len(graph[i] & u2) + 1 < t:
            return None
    for u in (u3, u4):
        if len(u) < cfg.threshold:
            return None
    if u4 != u3:  # every survivor must sign the survivor set
        return None
    for i in u3:
        if len((graph[i] | {i}) & u5) < t:
            return None
    for j in u2 - u3:
        if any(j in graph[i] for i in u3) and len(graph[j] & u5) < t:
            return None
    return tuple(sorted(u3))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_exact_sum_under_random_dropouts(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 9), label="n")
    dim = data.draw(st.integers(1, 20), label="dim")
    bits = data.draw(st.integers(1, 32), label="bits")
    c = data.draw(st.integers(0, max(0, n - 3)), label="colluders")
    a = Assumptions(colluders=c)
    threshold = data.draw(st.integers(min(n, min_threshold(n, c)), n), label="threshold")
    if threshold - c < 2 or 2 * threshold <= n + c:
        return  # no configuration exists (n too small for c colluders)
    d = derive(n, a, threshold=threshold)
    nt = data.draw(st.integers(d.neighbour_threshold, min(threshold, d.degree + 1)), label="t")
    r = make_round(
        n,
        dim,
        bits,
        threshold=threshold,
        neighbour_threshold=nt,
        assumptions=a,
        seed=data.draw(st.binary(min_size=1, max_size=8), label="seed"),
    )
    dropouts = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n),
        label="dropouts",
    )
    driver = InProcessDriver(r.server, r.clients, dropouts=dropouts)
    try:
        result = driver.run()
    except AggregationAbortedError:
        result = None
    event("aborted" if result is None else "completed")
    if result is None:
        assert _independent_outcome(r, dropouts) is None
        return
    assert _independent_outcome(r, dropouts) == result.survivors
    assert (result.field_sum == expected_sum(r, result.survivors)).all()


def test_no_dropouts_classic_and_plus() -> None:
    for n, a in ((10, Assumptions()), (30, Assumptions(dropout_fraction=0.1))):
        r = make_round(n, dim=33, bits=32, assumptions=a)
        assert r.config.guarantee.classic == (n == 10)
        res = InProcessDriver(r.server, r.clients).run()
        assert res.survivors == tuple(range(n))
        assert (res.field_sum == expected_sum(r, res.survivors)).all()


@pytest.mark.parametrize("stage", ["advertise", "share", "masked", "consistency"])
def test_below_threshold_aborts_with_typed_error(stage: str) -> None:
    r = make_round(6, threshold=5)
    driver = InProcessDriver(r.server, r.clients, dropouts={0: stage, 1: stage})
    with pytest.raises(AggregationAbortedError):
        driver.run()
    assert r.server.result is None
    assert r.server.state == ServerState.FAILED


def test_too_few_share_holders_in_unmask_aborts() -> None:
    r = make_round(6, threshold=5, neighbour_threshold=5)
    with pytest.raises(AggregationAbortedError):
        InProcessDriver(r.server, r.clients, dropouts={3: "unmask", 4: "unmask"}).run()


def _sample_messages() -> list[object]:
    s, k, g = b"S" * 16, b"k" * 32, b"g" * 64
    return [
        Start(),
        Deadline(),
        m.AdvertiseKeys(session_id=s, round=1, sender=0, cipher_pk=k, mask_pk=k, signature=g),
        m.KeyRoster(session_id=s, round=1, entries=[]),
        m.ShareKeys(session_id=s, round=1, sender=0, self_mask_commitment=k, shares=[]),
        m.ForwardedShares(session_id=s, round=1, shares=[]),
        m.MaskedInput(session_id=s, round=1, sender=0, bits=20, dim=8, data=b""),
        m.SurvivorList(session_id=s, round=1, survivors=[]),
        m.ConsistencySignature(session_id=s, round=1, sender=0, signature=g),
        m.UnmaskRequest(session_id=s, round=1, alive=[], dropped=[], signatures=[]),
        m.UnmaskShares(session_id=s, round=1, sender=0, self_mask_shares=[], mask_key_shares=[]),
    ]


def test_every_pair_outside_the_client_table_is_rejected() -> None:
    for state in ClientState:
        for msg in _sample_messages():
            if (state, type(msg)) in CLIENT_TRANSITIONS:
                continue
            client = make_round(3).clients[0]
            client.state = state
            expected = StateError if isinstance(msg, Start | Deadline) else RemoteProtocolError
            with pytest.raises(expected) as info:
                client.receive(msg)
            assert state.value in str(info.value)
            assert client.state is ClientState.FAILED  # nothing more is accepted


def test_every_pair_outside_the_server_table_is_rejected() -> None:
    for state in ServerState:
        for msg in _sample_messages():
            if (state, type(msg)) in SERVER_TRANSITIONS:
                continue
            server = make_round(3).server
            server.state = state
            expected = StateError if isinstance(msg, Start | Deadline) else RemoteProtocolError
            with pytest.raises(expected):
                server.receive(msg)
            assert server.state is ServerState.FAILED


def test_faults_say_whose_fault() -> None:
    r = make_round(3)
    with pytest.raises(StateError) as local:
        r.clients[0].receive(Deadline())
    assert local.value.fault.value == "local"
    with pytest.raises(RemoteProtocolError) as remote:
        r.clients[0].receive(m.SurvivorList(session_id=b"S" * 16, round=1, survivors=[]))
    assert remote.value.fault.value == "remote"


def test_secrets_do_not_appear_in_reprs() -> None:
    r = make_round(3)
    InProcessDriver(r.server, r.clients).run()
    client = r.clients[0]
    held = client._held[1]
    assert str(held.key_share) not in repr(held) and "redacted" in repr(held)
    assert client._self_seed is not None
    assert client._self_seed.expose().hex() not in repr(client._self_seed)
    assert client._mask is not None
    assert client._mask.private.expose().hex() not in repr(client._mask)
