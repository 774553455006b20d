"""Red team s6b: re-checking the f14 / f16 fixes (issue 14 S6-1..S6-6, issue 16). Each test asserts
the secure behaviour and failed while the hole was open. All four are fixed: S6b-2 and S6b-3 (round 0
is classic SecAgg); S6b-1 (a CKKS round 0 over another set: the key holder and the banks refuse) and
S6b-4 (the threshold, hence the SecAgg+ graph, is fixed by the manifest and n), whose tests are
ported from branch rt2 (protocols/secagg/spec.md 12.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import make_federation, round0_differencing
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from securefl.errors import AggregationAbortedError, ConfigError, SecureFLError


# --- S6b-1 (High): the round-0 survivor rule (S6-5) is SecAgg-only; CKKS round 0 is differenced --
@pytest.mark.slow  # about 36 s on the loaded 2-core machine: two CKKS deployments
def test_s6b_1_ckks_round0_two_sessions_do_not_reveal_one_banks_exact_moments(
        tmp_path: Path) -> None:
    """f14's Round0Survivors is called only from BankNode._step (the SecAgg machine's
    UnmaskRequest). A CKKS deployment also runs round 0 (task "moments", no noise: the bank
    encrypts its exact moment vector, BankNode._submit), and the key holder decrypts the sum of
    whichever banks committed. So the S6-5 attack works unchanged against aggregation = "ckks":
    session 1 with every bank, session 2 with the victim cut off; the difference of the two
    released round-0 totals is the victim's own moments. Secure: a CKKS bank also refuses (or the
    key holder refuses to decrypt) a round 0 over another set of banks than the first one."""
    import numpy as np

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3, "aggregation": "ckks"})
    totals, own = round0_differencing(f, tmp_path, 2, key_holder=True,
                                      refused=(AggregationAbortedError, SecureFLError))
    assert totals, "session 1 released its round 0"
    if len(totals) == 1:
        return
    diff = totals[0] - totals[1]
    recovered = np.allclose(diff, own, rtol=1e-3, atol=0.5)
    assert not recovered, (
        "CKKS: the difference of two sessions' round-0 releases is the victim bank's own moments "
        f"(max abs error {float(np.max(np.abs(diff - own))):.3g} over {own.size} values)")


class _Round0Done(Exception):
    """Ends a test deployment after its round 0."""


@pytest.mark.slow  # about 28 s on the loaded 2-core machine: four CKKS round-0 sessions
def test_s6b_1_each_gate_alone_refuses_and_the_same_set_is_released_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Who gates a CKKS round 0 (spec 12.1, "Round 0 across sessions"): a bank reveals its
    ciphertext only under the closed commitment set of its first round 0, and the key holder,
    which alone releases and sees every session, decrypts a round-0 sum only over the
    contributors of its first one. Four sessions of round 0 only, the victim cut off in 2 and 3:
    in session 2 the banks keep their records and the key holder has none (a fresh state dir):
    the banks refuse. In session 3 the banks have no record (fresh state dirs) and the key holder
    keeps its own: it refuses. Session 4 runs over the first set again and is released (the same
    sum for unchanged data; docs/data.md section 5)."""
    import logging

    import numpy as np

    from securefl.deploy.ckks import KeyHolderNode
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    # without DP, so round 0 is exact and a release over the same set is the same sum (with DP each
    # noised round 0 draws fresh noise, spec 12.1 S7b-5)
    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3, "aggregation": "ckks",
                                           "dp": False})
    totals: list[Any] = []

    class Round0Only(DeployServer):
        def _finish(self, rs: Any, done: Any) -> None:
            super()._finish(rs, done)
            totals.append(np.asarray(rs.moments_total, dtype=np.float64))
            raise _Round0Done

    victim, kh_node = 2, 99
    cut = (lambda trip, nid: nid == victim)  # noqa: E731
    sessions = [("s1", None, "banks-a", "kh-a"), ("s2", cut, "banks-a", "kh-b"),
                ("s3", cut, "banks-b", "kh-a"), ("s4", None, "banks-a", "kh-a")]
    outcome: dict[str, str] = {}
    for run, kill, banks_dir, kh_dir in sessions:
        srv = Round0Only(ServerSettings.load(f.server_file(
            tmp_path / run, state_dir=str(tmp_path / "server-state"))))
        nodes: dict[int, Any] = {i: BankNode.from_node_config(
            {**f.node_config(b, sim_seed=None), "state-dir": str(tmp_path / banks_dir / b)})
            for i, b in enumerate(f.banks)}
        nodes[kh_node] = KeyHolderNode.from_node_config(
            {**f.key_holder_config(sim_seed=None), "usage-file": str(tmp_path / "usage.json"),
             "state-dir": str(tmp_path / kh_dir)})
        link = LocalLink(nodes, srv.fed.digest, kill=kill)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
            try:
                srv.run(link, link.names())
            except _Round0Done:
                outcome[run] = "released"
            except AggregationAbortedError:
                outcome[run] = "aborted"
        refusals = {m.split(" ")[0] for m in (r.getMessage() for r in caplog.records)
                    if "SFL307" in m and "round-0 release over another" in m}
        outcome[run] += f" {sorted(refusals)}"
    others = sorted(b for i, b in enumerate(f.banks) if i != victim)
    assert outcome == {"s1": "released []", "s2": f"aborted {others}",
                       "s3": "aborted ['kh']", "s4": "released []"}
    assert not list((tmp_path / "kh-b").glob("round0-*"))  # session 2 never reached it
    # the two releases are of one sum (each round key's flooding noise apart)
    assert len(totals) == 2 and np.allclose(totals[0], totals[1], rtol=1e-6, atol=1e-3)


# --- S6b-2 (High): SecAgg+ round 0: the survivor record is per bank, the reveals need not be ------
def test_s6b_2_round0_needs_reveals_from_more_than_half_the_banks(tmp_path: Path) -> None:
    """Spec 12.1's soundness argument for Round0Survivors needs every round-0 release to take
    reveals that no two disjoint sets of honest banks can both supply. A SecAgg+ round 0 (degree
    None: derived; n = 200, T = 101 gave k = 159, t = 2) did not: the server sent the unmask
    request to one half in session 1 and to the other half (victim cut off) in session 2, each bank
    revealed for one set only, and the totals differenced to the victim's moments. Now round 0 is
    classic SecAgg: the honest server signs degree n - 1 (t = T, 2T > n + c), and a bank refuses a
    round-0 plan with any other degree, and the task "moments" at any round but 0."""
    from types import SimpleNamespace

    import msgspec

    from securefl.deploy.client import BankNode
    from securefl.deploy.common import encoding_for, round_spec, secagg_config
    from securefl.deploy.messages import RoundStart
    from securefl.deploy.server import DeployServer, ServerSettings
    from securefl.federation import ProtocolParams

    n = 200
    p = ProtocolParams(aggregation="secagg", threshold=101)  # 2T > n + c
    names = [f"b{i}" for i in range(n)]
    ids = {b: i for i, b in enumerate(names)}
    start = RoundStart(session=bytes(16), round=0, task="moments", participants=names,
                       threshold=p.threshold, clip_norm=1.0, noise_multiplier=0.0,
                       min_survivors=p.threshold, degree=n - 1, precision_bits=21, dim=10)
    spec = round_spec(start, ids, params=p)
    enc, _ = encoding_for(start, spec)
    cfg = secagg_config(start, spec, enc, start.threshold, SimpleNamespace(params=p))  # type: ignore[arg-type]
    assert 2 * cfg.neighbour_threshold > n + p.colluders

    # the honest server signs round 0 as the complete graph; a bank refuses anything else
    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3})
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    sizes = {b: 1.0 for b in f.banks}
    honest, _ = srv._start(0, list(f.banks), 10, clip=1.0, weights=sizes)
    assert honest.degree == len(f.banks) - 1
    node = BankNode.from_node_config(f.node_config(f.banks[0], sim_seed=3))
    fed = node.federation()
    node._check_plan(fed, honest, srv.session)
    for bad in (msgspec.structs.replace(honest, degree=None),
                msgspec.structs.replace(honest, degree=1),
                msgspec.structs.replace(honest, round=1)):
        with pytest.raises(ConfigError, match=r"round 0|moments"):
            node._check_plan(fed, bad, srv.session)


# --- S6b-3 (Low): a manifest that states its degree cannot complete round 0 -----------------------
def test_s6b_3_a_manifest_with_an_explicit_degree_completes_a_deployment(tmp_path: Path) -> None:
    """f14: "banks check the plan's degree against the manifest" (BankNode._check_plan:
    ``start.degree != p.neighbours`` refuses). DeployServer._start signs round 0 with
    ``degree=None`` whatever the manifest says, so a manifest with neighbours set (even
    n - 1, the complete graph the Flower path asks for) is refused by every bank at round 0: the
    deployment never trains. Degree None vs stated: the two sides disagree. Secure and working:
    round 0's degree is the manifest's (or the check allows round 0's documented rule)."""
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3, "neighbours": 2})  # 3 banks
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    nodes = {i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
             for i, b in enumerate(f.banks)}
    link = LocalLink(nodes, srv.fed.digest)
    # before the fix every bank refused round 0 (degree None != 2) and the run never trained
    assert srv.run(link, link.names())["rounds_completed"] == 1


# --- S6b-4 (Medium): the server picks among ~n graphs per (session, round) via the threshold -----
def test_s6b_4_one_graph_per_session_and_round() -> None:
    """f14 derives the SecAgg+ degree so that the union bound over the manifest's lifetime graphs,
    max_sessions * (max_rounds + 1), one per (session, round), stays <= 2^-security_bits (spec
    12.1). The graph seed is (session, round, participants), all fixed by public randomness, but
    the degree k (the edge cutoff) and t follow from the threshold T, which the server signs in
    the RoundStart and a bank only checks to be >= the manifest's (BankNode._check_plan). For
    n = 200 and the manifest's T = 101, the admissible T in [101, 200] give ~94 different
    (k, t), i.e. ~94 different graphs from the same seed, among which the server picks the one
    that isolates a victim: ~6.5 bits of the union bound not counted in lifetime_graphs. Secure:
    one graph per (session, round) (T, hence k, fixed by the manifest and n, or the choices
    counted in Assumptions.graphs)."""
    from types import SimpleNamespace

    from securefl.deploy.common import (
        ServerFaultError,
        check_plan_threshold,
        encoding_for,
        round_spec,
        secagg_config,
    )
    from securefl.deploy.messages import RoundStart
    from securefl.federation import ProtocolParams

    n = 200
    p = ProtocolParams(aggregation="secagg", threshold=101)
    names = [f"b{i}" for i in range(n)]
    ids = {b: i for i, b in enumerate(names)}
    graphs = set()
    refused = 0
    for T in range(p.threshold, n + 1, 11):
        start = RoundStart(session=bytes(16), round=1, task="train", participants=names,
                           threshold=T, clip_norm=p.clip_norm,
                           noise_multiplier=p.noise_multiplier, min_survivors=T,
                           degree=p.neighbours, precision_bits=p.precision_bits, dim=10,
                           weights={b: 1.0 for b in names})
        # ported from branch rt2: the graph a bank builds for a plan it accepts. A bank runs
        # check_plan_threshold (BankNode._check_draw, the Flower mod's check_plan) and
        # secagg_config on every signed plan; a T it refuses is no graph the server can use.
        try:
            check_plan_threshold(p, start, names)
            spec = round_spec(start, ids, params=p)
            enc, thr = encoding_for(start, spec)
            cfg = secagg_config(start, spec, enc, thr, SimpleNamespace(params=p))  # type: ignore[arg-type]
        except ServerFaultError:
            refused += 1
            continue
        graphs.add((cfg.graph_seed, cfg.degree))
    assert refused == len(range(p.threshold, n + 1, 11)) - 1  # every T but the manifest's
    assert len(graphs) == 1 or p.assumptions().graphs >= p.lifetime_graphs * len(graphs), (
        f"the server chooses among {len(graphs)} SecAgg+ graphs (degree "
        f"{sorted(k for _, k in graphs)}) for one (session, round) by the threshold it signs; "
        f"the union bound counts one ({p.lifetime_graphs} lifetime graphs)")


def _resign(srv: Any, start: Any, **fields: Any) -> Any:
    """A hostile server's plan: ``start`` with ``fields`` replaced, signed with its own key."""
    import msgspec

    from securefl.deploy.messages import START_DOMAIN
    from securefl.protocol import wire

    start = msgspec.structs.replace(start, **fields)
    return start, srv._sign(wire.encode(start), START_DOMAIN, start.round)


@pytest.mark.parametrize("round_, fields", [
    (1, {"threshold": 3, "min_survivors": 3}),  # T above the manifest's rule (2 of 3 banks)
    (1, {"min_survivors": 3}),  # the protocol threshold is max(T, min_survivors): same choice
    (0, {"threshold": 2, "min_survivors": 2}),  # round 0 needs every bank with a signed size
])
def test_s6b_4_every_bank_refuses_a_threshold_the_manifest_does_not_fix(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, round_: int,
        fields: dict[str, int]) -> None:
    """S6b-4 in a deployment: a server that signs another T or min_survivors than the one the
    manifest and the plan fix (ProtocolParams.round_threshold(n) in a training round, every
    drawn bank with a signed size at round 0) gets no bank to take part: each logs the
    ServerFaultError (SFL307) and the round releases nothing. Before the fix each bank checked
    only T >= the manifest's threshold and accepted all three plans."""
    import logging

    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3})

    class Choosing(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            participants, start, signed = super()._next_round(rs, r)
            assert (start.threshold, start.min_survivors) == ((2, 2) if r else (3, 3))
            if r == round_:
                start, signed = _resign(self, start, **fields)
            return participants, start, signed

        def _flight(self, start: Any) -> Any:
            # a hostile server skips its own check (secagg_config refuses the plan it signed)
            import msgspec

            honest = (2, 2) if start.round else (3, 3)
            return super()._flight(msgspec.structs.replace(
                start, threshold=honest[0], min_survivors=honest[1]))

    srv = Choosing(ServerSettings.load(f.server_file(tmp_path / "run")))
    nodes = {i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
             for i, b in enumerate(f.banks)}
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        try:
            res = srv.run(link, link.names())
        except AggregationAbortedError:
            res = {"rounds_completed": 0}
    refusals = [r.getMessage() for r in caplog.records
                if "the manifest and the plan fix both" in r.getMessage()]
    assert {m.split(" ")[0] for m in refusals} == set(f.banks)  # each bank logs its refusal
    assert all("SFL307" in m for m in refusals)
    assert res["rounds_completed"] == 0


def test_s6b_4_the_honest_plans_threshold_is_the_one_every_bank_accepts(tmp_path: Path) -> None:
    """Clients_per_round < 1 (rounds of fewer banks than the manifest lists): the honest server's
    plan carries the T of its own n, which every bank accepts and no other. 5 banks, q = 0.6:
    rounds of 3, T = floor(3 / 2) + 1 = 2; round 0 (all 5, every one sized): T = 5."""
    import msgspec

    from securefl.deploy.client import BankNode
    from securefl.deploy.common import ServerFaultError, check_plan_threshold
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3, "banks": 5,
                                           "clients_per_round": 0.6})
    seen: list[tuple[int, int, int, int]] = []

    class Watching(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            participants, start, signed = super()._next_round(rs, r)
            seen.append((r, len(participants), start.threshold, start.min_survivors))
            for t in range(1, len(participants) + 1):
                other = msgspec.structs.replace(start, threshold=t, min_survivors=t)
                if t == start.threshold:
                    check_plan_threshold(self.fed.params, other, rs.weights)
                else:
                    with pytest.raises(ServerFaultError):
                        check_plan_threshold(self.fed.params, other, rs.weights)
            return participants, start, signed

    srv = Watching(ServerSettings.load(f.server_file(tmp_path / "run")))
    nodes = {i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
             for i, b in enumerate(f.banks)}
    link = LocalLink(nodes, srv.fed.digest)
    assert srv.run(link, link.names())["rounds_completed"] == 1
    assert seen == [(0, 5, 5, 5), (1, 3, 2, 2)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 300), threshold=st.integers(2, 300), colluders=st.integers(0, 20),
       drop=st.one_of(st.none(), st.floats(0.0, 0.45)))
def test_s6b_4_one_threshold_per_manifest_and_n(n: int, threshold: int, colluders: int,
                                                drop: float | None) -> None:
    """Property: for any manifest and any training round of n >= the manifest's threshold
    participants, exactly one signed T (with min_survivors = T) passes the banks' check; for a
    manifest with no dropout fraction it is max(manifest threshold, floor((n + c) / 2) + 1,
    c + 2), at most n (bounds 1 and 2 of spec section 3, written out here)."""
    from securefl.deploy.common import ServerFaultError, check_plan_threshold
    from securefl.deploy.messages import RoundStart
    from securefl.federation import ProtocolParams

    assume(threshold <= n and colluders + 2 <= threshold)
    p = ProtocolParams(aggregation="secagg", threshold=threshold, colluders=colluders,
                       dropout_fraction=drop)
    names = [f"b{i}" for i in range(n)]
    accepted = []
    for t in range(1, n + 1):
        start = RoundStart(session=bytes(16), round=1, task="train", participants=names,
                           threshold=t, clip_norm=1.0, noise_multiplier=1.0, min_survivors=t,
                           degree=None, precision_bits=16, dim=4, weights={})
        try:
            check_plan_threshold(p, start, names)
        except ServerFaultError:
            continue
        accepted.append(t)
    assert len(accepted) == 1
    if drop is None:
        assert accepted == [min(n, max(threshold, (n + colluders) // 2 + 1, colluders + 2))]
    else:
        assert accepted == [min(n, max(threshold, n - int(drop * n)))]
