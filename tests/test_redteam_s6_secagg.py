"""Red team s6 (rt14): the Flower deployment's SecAgg against a malicious server (spec 12.1).

Each test drives the REAL bank-side code (securefl.deploy.client.BankNode.handle, or the Flower
mod's FlowerBank) with messages a hostile server crafts and signs with the manifest's server key,
and asserts the SECURE behaviour: a test fails while the hole it names exists. All six are fixed
(issue 14) and kept as regression tests; protocols/secagg/spec.md section 12.1 names each one:
S6-1 max_rounds and clients_per_round in the signed manifest and the degree derived for every
graph of its life; S6-2 the bank checks the degree against the manifest; S6-3 a bank refuses a
manifest that pins a data schema it cannot check; S6-4 the Flower mod counts plans since the last
unmask (securefl.deploy.common.check_pending); S6-5 a bank unmasks round 0 over one survivor set
per manifest (securefl.deploy.common.Round0Survivors); S6-6 an explicit min_survivors check.

Findings (see the report on branch rt14):
- S6-1 the round number, hence the graph and the participant draw, is an unbounded server choice:
  R in the spec's bound ``max_sessions * (R + 1) * K * 2^-sigma`` is the server's own signed
  ``plan.rounds`` (no cap), and a bank accepts any round above its last up to it;
- S6-2 the SecAgg+ degree is a server choice the deployment's banks never check against the
  manifest: a federation whose assumptions give the complete graph (classic SecAgg, "nothing
  probabilistic") can be downgraded to a sparse graph with half the guaranteed honest sum;
- S6-3 ``data_schema`` is "checked by banks when set" (protocols/federation/README.md) but no bank
  code reads it;
- S6-4 the Flower mod keeps only the per-model attempt count: the M3 one-ULP trick still resets it;
- S6-5 round 0 (moments, no noise) runs again in every session over the same inputs: two sessions,
  the victim cut off in the second, give the victim bank's exact moments;
- S6-6 (holds) min_survivors above the participants, which would shrink every noise share and the
  budget charge, is refused by bounds.derive inside noise_plan.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from deploy_helpers import SERVER, Fed, make_federation, round0_differencing

from securefl.crypto.signing import SigningKey, sign_bound
from securefl.deploy.client import BankNode
from securefl.deploy.common import (
    ServerFaultError,
    draw_size,
    fedavg_weights,
    round_participants,
)
from securefl.deploy.messages import (
    BANK_INFO_DOMAIN,
    HELLO_DOMAIN,
    START_DOMAIN,
    Hello,
    ServerPayload,
    SignedBankInfo,
    decode_client,
)
from securefl.deploy.server import DeployServer, ServerSettings
from securefl.errors import AggregationAbortedError, ConfigError, SecureFLError
from securefl.federation import DEFAULT_MAX_ROUNDS, ProtocolParams, load_signing_key
from securefl.protocol import wire
from securefl.transport.flower import Envelope


# --- a hostile server's session against real bank nodes ------------------------------------------
class _Session:
    """A session opened by a hostile server: the real server object (for its key, counter,
    session id and plan builder), a Hello it signed with ``plan_over`` applied, and every bank's
    answer to it (the bank's own signed BankInfo and its sealed node state)."""

    def __init__(self, f: Fed, tmp: Path, banks: list[str] | None = None,
                 **plan_over: Any) -> None:
        self.f = f
        self.srv = DeployServer(ServerSettings.load(f.server_file(
            tmp / "run", state_dir=str(tmp / "server-state"))))
        self.plan = msgspec.structs.replace(self.srv.plan(), **plan_over)
        hello = Hello(session=self.srv.session, federation=self.srv.fed.digest, plan=self.plan,
                      counter=self.srv.counter, sim_stream=self.srv.sim_stream)
        self.hello = self.srv._sign(wire.encode(hello), HELLO_DOMAIN, 0)
        self.srv._hello_digest = hashlib.sha256(self.hello.body).digest()
        self.nodes: dict[str, BankNode] = {}
        self.states: dict[str, bytes] = {}
        self.infos: dict[str, SignedBankInfo] = {}
        answering = banks if banks is not None else f.banks
        for b in f.banks:
            cfg = {**f.node_config(b, sim_seed=None), "state-dir": str(tmp / "bank-state" / b)}
            self.nodes[b] = BankNode.from_node_config(cfg)
            if b in answering:
                reply, state = self.nodes[b].handle(self._env(b, 0, "hello",
                                                              ServerPayload(hello=self.hello)),
                                                    None)
                cp = decode_client(reply)
                assert cp.info is not None and cp.info_signature is not None
                self.infos[b] = SignedBankInfo(member=b, info=cp.info,
                                               signature=cp.info_signature)
                self.states[b] = state
            else:  # the hostile server signs nothing for a bank; the bank itself signs its info
                key = load_signing_key(f.keys[b])
                info = next(iter(self.infos.values())).info
                self.infos[b] = _self_signed(key, b, self.srv.session, info)

    def _env(self, bank: str, round_: int, stage: str, payload: ServerPayload) -> Envelope:
        return Envelope(federation=self.srv.fed.digest, session=self.srv.session, round=round_,
                        stage=stage, sender=SERVER, receiver=bank, payload=wire.encode(payload))

    def draw(self, round_: int) -> list[str]:
        """The public draw every bank recomputes for a training round of this session."""
        clients = self.srv.fed.clients
        k = draw_size(len(clients), self.plan.clients_per_round,
                      max(2, self.srv.fed.params.threshold))
        return round_participants(self.srv.session, round_, clients, k)

    def start(self, round_: int, participants: list[str] | None = None, **over: Any) -> Any:
        """A training round's plan as the honest server builds it (``over`` applied, then
        re-signed), for the public draw of ``round_`` unless ``participants`` is given."""
        parts = participants if participants is not None else self.draw(round_)
        sizes = {b: si.info.n_train for b, si in self.infos.items()}
        start, _ = self.srv._start(round_, parts, 7, clip=1.0, weights=fedavg_weights(sizes))
        start = msgspec.structs.replace(start, **over)
        return start, self.srv._sign(wire.encode(start), START_DOMAIN, start.round)

    def send_start(self, bank: str, signed: Any, round_: int) -> list[Any]:
        """The bank's answer to the plan: its advertisement (it accepted) or a typed refusal."""
        payload = ServerPayload(start=signed, banks=[self.infos[b] for b in self.srv.fed.clients
                                                     if b in self.infos])
        reply, state = self.nodes[bank].handle(self._env(bank, round_, "advertise", payload),
                                               self.states[bank])
        self.states[bank] = state
        return list(decode_client(reply).protocol)


def _self_signed(key: SigningKey, member: str, session: bytes, info: Any) -> SignedBankInfo:
    sig = sign_bound(key, domain=BANK_INFO_DOMAIN, session_id=session, round_=0,
                     message=wire.encode(info))
    return SignedBankInfo(member=member, info=info, signature=sig)


# --- S6-1: the round number is an unbounded server choice -----------------------------------------
@pytest.fixture(scope="module")
def fed5(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_federation(tmp_path_factory.mktemp("fed5"),
                           {"rounds": 3, "seed": 3, "banks": 5, "clients_per_round": 0.6})


def test_s6_1_the_server_cannot_pick_a_round_number_offline_to_choose_the_draw(
        fed5: Fed, tmp_path: Path) -> None:
    """Spec 12.1 bounds the graphs an input can meet by ``max_sessions * (R + 1) * K`` with R "the
    signed plan's round count". But R is the server's own field (TrainPlan.rounds, no cap, not in
    the manifest), and a bank accepts any round above its last one up to it, as its FIRST round
    too. So the server signs rounds = 2^62 and searches round numbers offline for the public draw
    (and the graph seed, a function of the same (session, round, participants)) it wants: here
    the 3-of-5 subset it names, found among a few hundred round numbers and jumped to directly.
    Secure behaviour: a bank refuses a round number the server could have ground (e.g. rounds
    run 0, 1, 2, ... with no gap, a manifest cap on R), so this plan is refused."""
    with pytest.raises(ServerFaultError, match="max_rounds"):  # fixed: refused at the Hello
        _Session(fed5, tmp_path / "hostile", rounds=2**62, record_noise_multiplier=1.0)
    # the most the manifest allows: the round numbers the server may choose among are
    # 0..max_rounds, every one of them in the union bound the degree is derived for
    s = _Session(fed5, tmp_path / "capped", rounds=DEFAULT_MAX_ROUNDS, record_noise_multiplier=1.0)
    victim = fed5.banks[0]
    wanted = [fed5.banks[0], fed5.banks[3], fed5.banks[4]]  # the server's chosen participants
    r = next(r for r in range(10**6, 10**6 + 5000) if s.draw(r) == wanted)
    _, signed = s.start(r)
    # the real bank answers with its advertisement: it joined the round the server ground
    with pytest.raises(SecureFLError):
        out = s.send_start(victim, signed, r)
        assert not out, f"bank accepted round {r} of a session whose plan says 2^62 rounds"


def test_s6_1b_a_server_signed_round_count_has_no_cap(fed5: Fed, tmp_path: Path) -> None:
    """The same hole at the Hello: the round count that enters the spec's bound is whatever the
    server signs. Secure behaviour: the bank refuses a Hello whose round count is not bounded by
    something the members signed (the manifest)."""
    with pytest.raises(SecureFLError):
        _Session(fed5, tmp_path, banks=[fed5.banks[0]], rounds=2**62,
                 record_noise_multiplier=1.0)


def test_s6_1c_a_hello_with_another_sampling_fraction_is_refused(fed5: Fed, tmp_path: Path
                                                                  ) -> None:
    """q = clients_per_round sets the draw size, hence the graph: it is the manifest's (0.6
    here), and a bank refuses a Hello that signs another (the server used to pick it per
    session, one more factor in the spec's bound)."""
    with pytest.raises(ServerFaultError, match="clients_per_round"):
        _Session(fed5, tmp_path, banks=[fed5.banks[0]], clients_per_round=1.0,
                 record_noise_multiplier=1.0)
    s = _Session(fed5, tmp_path / "ok", banks=[fed5.banks[0]], record_noise_multiplier=1.0)
    assert s.plan.clients_per_round == 0.6  # the honest server signs the manifest's


# --- S6-2: the SecAgg+ degree is an unchecked server choice ----------------------------------------
@pytest.fixture(scope="module")
def fed30(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    """30 banks, the default assumptions (c = 0, no dropout fraction, sigma = 40): the table of
    spec section 2.4 gives the complete graph (classic SecAgg), T = 16, min honest sum 16."""
    return make_federation(tmp_path_factory.mktemp("fed30"), {"rounds": 1, "seed": 3,
                                                               "banks": 30, "partition": "iid"})


def test_s6_2_a_sparse_degree_cannot_replace_the_manifests_complete_graph(
        fed30: Fed, tmp_path: Path) -> None:
    """For n = 30 and the default assumptions, bounds.derive gives k = n - 1: classic SecAgg,
    every released sum holds all T - c = 16 honest survivors, nothing probabilistic (spec 2.4,
    12.1: "no bound is spent"). The server signs degree k = 28 instead. derive(degree=28)
    accepts it (its alpha-summation bound alone holds), so the bank advertises on a sparse
    G(30, 28/29) graph that guarantees only 8 honest inputs per released sum, and puts the round
    in the probabilistic regime the server can grind (S6-1). The deployment's banks never compare
    start.degree with the manifest (the Flower path does: plan.degree != p.neighbours).
    Secure behaviour: the bank refuses a degree other than the manifest's (neighbours, or the
    degree derived from its assumptions)."""
    import dataclasses

    from securefl.protocol.secagg import derive

    a = ProtocolParams(aggregation="secagg", threshold=2).assumptions()
    assert derive(30, a).classic and derive(30, a).min_honest_sum == 16
    # fixed (S6-1): the manifest's bound now covers every graph of its life, so derive alone
    # refuses k = 28 for it; per single graph (the finding's setting) k = 28 still passes
    with pytest.raises(ConfigError, match="alpha-summation"):
        derive(30, a, degree=28)
    sparse = derive(30, dataclasses.replace(a, graphs=1), degree=28)
    assert not sparse.classic and sparse.min_honest_sum == 8
    s = _Session(fed30, tmp_path, banks=[fed30.banks[0]])
    _, signed = s.start(1, degree=28)
    with pytest.raises(SecureFLError):
        out = s.send_start(fed30.banks[0], signed, 1)
        assert not out, "bank advertised on a sparse graph the manifest's assumptions exclude"


# --- S6-3: data_schema is never checked --------------------------------------------------------------
def test_s6_3_a_manifest_data_schema_is_checked_by_the_bank(tmp_path: Path) -> None:
    """protocols/federation/README.md: ``data_schema`` is "the SHA-256 of the federation's data
    schema, checked by banks when set". No code reads it (grep securefl/ for data_schema). A
    manifest pinning a schema no bank's data has (64 x 'ab') is answered like any other.
    Secure behaviour: the bank refuses (or at least checks) its data against the pinned schema."""
    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3}, params=ProtocolParams(
        aggregation="secagg", threshold=2, clip_norm=1.0, noise_multiplier=0.02,
        data_schema="ab" * 32))
    with pytest.raises((ConfigError, SecureFLError)):
        _Session(f, tmp_path, banks=[f.banks[0]])


def test_s6_3_a_flower_bank_refuses_a_pinned_data_schema_it_cannot_check(tmp_path: Path) -> None:
    """On the Flower mod path the user's app loads the bank's data, so the mod cannot check it
    against a pinned schema: the bank refuses the manifest instead of claiming a check."""
    from flower_mod_helpers import make_flower_federation

    from securefl.flower.mod import FlowerBank

    ff = make_flower_federation(tmp_path / "fed", ["b0", "b1", "b2"], ProtocolParams(
        aggregation="secagg", threshold=2, clip_norm=1.0, noise_multiplier=0.0,
        data_schema="ab" * 32))
    with pytest.raises(ConfigError, match="cannot check it against the schema"):
        FlowerBank.from_node_config(ff.node_config("b0", 100)).federation()


# --- S6-4: the Flower mod's attempt bound is reset by a one-ULP model change ------------------------
def test_s6_4_the_flower_mods_attempt_bound_survives_a_one_ulp_model_change(
        tmp_path: Path) -> None:
    """The deployment fixed red-team finding M3 (a model moved by one ULP per retry reset the
    per-model attempt count) by also counting masked inputs never unmasked. The Flower mod
    (securefl/flower/mod.py) counts only plans in a row naming the same model digest, so a server
    alternating M and M + 1 ULP gets a bank to advertise (and then mask an input) for as many
    aborted rounds as it likes. Secure behaviour: the (MAX_ATTEMPTS + 1)-th plan in a row with
    no unmask is refused, whatever the model digest."""
    from flower_mod_helpers import make_flower_federation

    from securefl.deploy.common import MAX_ATTEMPTS, session_id
    from securefl.deploy.messages import Signed
    from securefl.flower.common import PLAN_DOMAIN, BankInfo, FlowerPlan, ServerMsg
    from securefl.flower.mod import FlowerBank

    banks = ["b0", "b1", "b2"]
    ff = make_flower_federation(tmp_path / "fed", banks, ProtocolParams(
        aggregation="secagg", threshold=2, clip_norm=1.0, noise_multiplier=0.0))
    sizes = {b: 100 for b in banks}
    node = FlowerBank.from_node_config(ff.node_config("b0", sizes["b0"]))
    fed = node.federation()
    server_key = load_signing_key(ff.keys[SERVER])
    session = session_id(fed.digest, 1)

    def info(b: str) -> BankInfo:
        unsigned = BankInfo(member=b, n_examples=sizes[b], signature=bytes(64))
        sig = sign_bound(load_signing_key(ff.keys[b]), domain="securefl/flower/v1/bank-info",
                         session_id=session, round_=0, message=unsigned.message())
        return msgspec.structs.replace(unsigned, signature=sig)

    infos = [info(b) for b in banks]
    state: bytes | None = None
    accepted = 0
    for r in range(1, MAX_ATTEMPTS + 3):
        digest = hashlib.sha256(b"model" + bytes([r % 2])).digest()  # M, M', M, M', ...
        plan = FlowerPlan(session=session, counter=1, round=r, participants=banks, threshold=2,
                          clip_norm=1.0, noise_multiplier=0.0, min_survivors=2, degree=None,
                          precision_bits=fed.params.precision_bits, dim=4,
                          weights={b: 1.0 for b in banks}, model_digest=digest,
                          config_digest=hashlib.sha256(b"cfg").digest())
        body = wire.encode(plan)
        signed = Signed(body=body, signature=sign_bound(server_key, domain=PLAN_DOMAIN,
                                                        session_id=session, round_=r,
                                                        message=body))
        msg = ServerMsg(stage="advertise", counter=1, plan=signed, infos=infos)
        env = Envelope(federation=fed.digest, session=session, round=r, stage="advertise",
                       sender=SERVER, receiver="b0", payload=wire.encode(msg))
        try:
            _, state = node.handle(env, state)
        except SecureFLError:
            break
        accepted += 1
    # rounds 1..MAX_ATTEMPTS + 1 may run without an unmask (as in the deployment); no more
    assert accepted <= MAX_ATTEMPTS + 1, (
        f"the Flower mod advertised for {accepted} rounds in a row with no unmask")


# --- S6-5: round 0's moments carry no noise and run again in every session ---------------------------
# two deployment sessions: 12 s measured (46 s with the other engineers' suites running)
def test_s6_5_two_sessions_do_not_reveal_one_banks_exact_moments(tmp_path: Path) -> None:
    """docs/data.md section 5: round 0 releases only federation-wide moment totals, "No bank's own
    moments are revealed", a "one-off release ... outside the DP accounting". In a deployment it
    is not one-off: every session (up to max_sessions) runs round 0 again over the same inputs
    (a bank's moments are a deterministic function of its rows), with noise_multiplier 0 and a
    threshold the server sets to the banks with a signed size (>= the manifest's). So the server
    runs session 1 with every bank, and session 2 with the victim cut off at the hello (it stays
    drawn as a dropout; the round completes with the others): the difference of the two released
    totals is the victim's own [count, per-feature sums, per-feature sums of squares], exact up
    to SecAgg's quantization. No colluder is needed, and an honest server does the same when a
    bank happens to be offline in one session. Spec 2.7's mitigation for differencing is the DP
    noise in every release, which round 0 does not have.
    Secure behaviour: the victim's moments are not recoverable (round 0 noised and accounted, or
    run at most once per manifest, or refused by a bank that already contributed its moments)."""
    import numpy as np

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3})
    victim = 2
    # fixed: every bank that revealed for session 1's round 0 refuses to unmask a round 0 over
    # another survivor set, so session 2 releases no moments at all
    totals, own = round0_differencing(f, tmp_path, victim, refused=(AggregationAbortedError,))
    assert totals, "session 1 released its round 0"
    if len(totals) == 1:
        return
    diff = totals[0] - totals[1]
    assert diff[0] == pytest.approx(own[0])  # the row count (public anyway)
    recovered = np.allclose(diff, own, rtol=1e-4, atol=0.5)
    assert not recovered, (
        "the difference of two sessions' round-0 releases is the victim bank's own moments "
        f"(max abs error {float(np.max(np.abs(diff - own))):.3g} over {own.size} values)")


# --- S6-6 (holds): min_survivors above the participants is refused -------------------------------
def test_s6_6_min_survivors_above_the_participants_is_refused(fed5: Fed, tmp_path: Path) -> None:
    """Checked and found fine. A bank sizes its noise share for h = min_survivors - c and charges
    its budget for survivor counts in range(min_survivors, n + 1): min_survivors = 10^6 in a
    3-bank round would shrink every share's std ~577x and charge nothing. The bank's own check is
    only min_survivors >= the manifest's threshold, but noise_plan derives the isolatable set
    with T = min_survivors, and bounds.derive refuses T > n (ConfigError) before any key."""
    s = _Session(fed5, tmp_path, banks=[fed5.banks[0]])
    r = next(r for r in range(1, 100) if fed5.banks[0] in s.draw(r))  # a round it is drawn in
    _, signed = s.start(r, min_survivors=10**6)
    with pytest.raises(ConfigError, match="must be in"):
        s.send_start(fed5.banks[0], signed, r)
