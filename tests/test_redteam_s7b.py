"""Red team s7b (rt4): re-checking the S7-1 / S7-2 fixes and h18b (issue 18: a DP-noised,
accounted round 0 in the deployment and, by default, in the simulation). Each test asserts the
secure behaviour; the ones marked "(fails now)" fail on rt4 at 0aeba14.

S7b-6 (fixed; tests in tests/test_redteam_s7b6.py): on the CKKS path nothing bound the Hello
across banks (SecAgg binds its digest into every plan digest), so a server could sign the victim a
plan with z = 4 and every other bank one with dp False and z = 0: the victim's round-0 share, sized
z sqrt(1 + 2g) / sqrt(T - c) for T - c honest shares, was then the only noise in the sum. Now the
key holder binds the session's one Hello into every round key's signed public context and each
bank refuses a key bound to another Hello than its own (PlanMismatchError, SFL309)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from deploy_helpers import identity_keys, signed_federation, write_csv, write_key

from securefl.deploy.messages import Hello, TrainPlan
from securefl.errors import SecureFLError
from securefl.federation import ProtocolParams


def _plan(**kw: Any) -> TrainPlan:
    base: dict[str, Any] = dict(model="logreg", hidden=[], task="binary", loss="bce",
                                local_epochs=1, batch_size=32, lr=0.1, optimizer="sgd",
                                prox_mu=0.0, rounds=2, dp=False, record_epsilon=1.0,
                                record_noise_multiplier=None, record_clip=1.0, delta=1e-5,
                                aggregation="secagg")
    base.update(kw)
    return TrainPlan(**base)


def _bank(tmp_path: Path) -> tuple[Any, Any]:
    """One bank node (no budget caps: a bank of a federation run without DP) and its manifest."""
    from securefl.deploy.client import BankNode

    banks = ["b0", "b1", "b2"]
    keys = identity_keys(banks)
    fed = signed_federation(banks, keys, ProtocolParams(aggregation="secagg", threshold=2,
                                                        noise_multiplier=0.0))
    rng = np.random.default_rng(0)
    write_csv(tmp_path / "rows.csv", rng.normal(size=(50, 3)), rng.integers(0, 2, 50))
    node = BankNode(member="b0", key_path=write_key(tmp_path / "b0.key", keys["b0"]),
                    manifest_path=tmp_path / "unused.json", data_path=tmp_path / "rows.csv")
    return node, fed


# --- S7b-1: a tiny-but-positive stats_noise_multiplier escapes the S7-1 noiseless rule ------------
@pytest.mark.parametrize("dp", [False, True])
def test_s7b_1_a_negligible_round0_noise_multiplier_is_not_a_noised_release(
        tmp_path: Path, dp: bool) -> None:
    """(fails now; High) S7-1 keeps a noiseless round 0 to one set of banks across manifests, but
    "noiseless" is decided as ``hello.plan.stats_noise_multiplier <= 0`` (deploy/client.py
    _step/_ckks_protocol, deploy/ckks.py KeyHolderNode._decrypt), and z is the server's choice
    (signed in the Hello, msgspec bound ge=0 only; the manifest pins no floor). A server signs
    z = 1e-9: every bank and the key holder then treat round 0 as a "noised DP release" and skip
    ``round0-noiseless.json``, so under a new manifest round 0 runs over another set (and a
    noised release is not even checked against an earlier noiseless record): the difference of
    the two sums is the victim's moments plus noise of std 1e-9 * sqrt(1 + 2g), i.e. exact.
    Nothing else stops it for a bank without a record cap: with ``dp`` False the bank accepts
    any z > 0 (it refuses only z = 0 with DP on) and charges nothing; with ``dp`` True and an
    explicit record_noise_multiplier (also the server's choice) no calibration runs either.
    (A bank WITH a record cap is safe: its RDP charge for z = 1e-9 is 5.5e17 and is refused.)
    Secure: a round-0 multiplier below a floor the manifest pins (or a fixed minimum such as
    0.5) is refused, or treated as noiseless (S7-1 record) everywhere; with DP off, z must be 0."""
    node, fed = _bank(tmp_path)
    plan = _plan(dp=dp, record_noise_multiplier=1.0 if dp else None,
                 stats_noise_multiplier=1e-9)
    hello = Hello(session=b"\x01" * 16, federation=fed.digest, plan=plan, counter=1)
    with pytest.raises(SecureFLError):
        node._bank_info(fed, hello)


# --- S7b-2: the key holder's floor (S7-2) follows the server-signed clients_per_round -------------
def test_s7b_2_the_key_holders_floor_does_not_follow_a_plan_fraction_the_banks_would_refuse(
        ) -> None:
    """(fails now; Medium: it undoes S7-2) ``KeyHolderNode.release_floor`` recomputes the public
    draw with ``plan.clients_per_round`` of the Hello the key holder got, and
    ``KeyHolderNode._check_plan`` never compares it with the manifest's (banks do,
    client._check_hello_plan). The Hello is sent to the key holder separately (every
    key-holder payload carries one) and nothing binds it to the banks' Hello, so the server
    signs the key holder a plan with clients_per_round 0.01: its draw shrinks to the floor
    max(2, threshold) and its release floor falls back to the manifest's threshold (4 here),
    while the banks noised for round_threshold(20) = T. The same with ``task=FLOWER_APP`` in the
    key holder's Hello (the floor is then the manifest's by design). Secure: the key holder
    takes the fraction from the manifest (or refuses a plan whose fraction differs), and only a
    manifest-level switch (not a server-signed task name) selects the Flower floor."""
    from securefl.deploy.ckks import KeyHolderNode

    banks = [f"b{i}" for i in range(20)]
    keys = identity_keys(banks)
    params = ProtocolParams(aggregation="ckks", threshold=4, noise_multiplier=1.0)
    fed = signed_federation(banks, keys, params)
    t_round = params.round_threshold(20)
    assert t_round > params.threshold
    honest = _plan(dp=True, aggregation="ckks", stats_noise_multiplier=4.0)
    assert KeyHolderNode.release_floor(fed, b"\x01" * 16, 1, honest) >= t_round
    forged = msgspec.structs.replace(honest, clients_per_round=0.01)
    node = KeyHolderNode(member="kh", key_path=Path("kh.key"), manifest_path=Path("m.json"))
    hello = Hello(session=b"\x01" * 16, federation=fed.digest, plan=forged, counter=1)
    # a deployment's key holder refuses a Flower app's plan (its floor would be the manifest's)
    from securefl.deploy.messages import FLOWER_APP

    flower = Hello(session=b"\x01" * 16, federation=fed.digest,
                   plan=msgspec.structs.replace(honest, task=FLOWER_APP), counter=1)
    with pytest.raises(SecureFLError):
        node._check_plan(flower, fed)
    try:
        node._check_plan(hello, fed)
    except SecureFLError:
        return  # refused: the forged fraction never reaches the floor
    floor = KeyHolderNode.release_floor(fed, b"\x01" * 16, 1, forged)
    assert floor >= t_round, (
        f"the key holder decrypts sums of {floor} contributions under a plan fraction the "
        f"banks refuse; they noised their shares for T = {t_round}")


# --- S7b-3: round 0's ledger events are lost when round 1 does not commit them ----------------------
@pytest.mark.slow  # a deployment that crashes in round 1 and its resume: about a minute, loaded
def test_s7b_3_round0_is_in_the_ledger_after_a_crash_and_resume(tmp_path: Path) -> None:
    """(fails now; Medium: the run's ledger and audit understate the spend) Round 0's release
    (every bank's noised moments, DP by default since h18b) is drafted into the run's ledger only
    with round 1's outcome (deploy/server.py ``_outcome``: ``r == 1 and rs.stats_drafts``;
    runtime.rounds ``if round_ == 1``), while the release itself is durable at round 0 (its sum
    is in the run store's federation.json, created by ``_finish``). The server dies in round 1
    before committing it; ``resume`` continues after round 0 (the stored sum, no second round
    0), but ``_resume`` never restores ``rs.stats_drafts`` (``_round0_release`` is not re-run),
    so the resumed round 1 commits without them: the finished run's ledger has no round-0 event
    although round 0 was released and every bank charged it to its own caps. Secure: the
    round-0 events are committed with the release (the store's creation, or a round-0 ledger
    commit), or re-derived on resume from the stored facts (z, sensitivity, the banks in the
    sum)."""
    from deploy_helpers import make_federation

    from securefl.audit.store import RunStore
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    run = {"rounds": 1, "seed": 5}
    f = make_federation(tmp_path / "fed", run)
    run_dir = tmp_path / "run"

    def banks() -> dict[int, Any]:
        return {i: BankNode.from_node_config(f.node_config(b, sim_seed=run["seed"]))
                for i, b in enumerate(f.banks)}

    class Crashing(DeployServer):
        def _outcome(self, rs: Any, done: Any) -> Any:
            raise RuntimeError("the server process died before committing round 1")

    srv = Crashing(ServerSettings.load(f.server_file(run_dir)))
    link = LocalLink(banks(), srv.fed.digest)
    with pytest.raises(RuntimeError, match="died"):
        srv.run(link, link.names())
    assert RunStore.open(run_dir).last_round == 0
    facts = json.loads((run_dir / "federation.json").read_text())["members"]
    assert facts["standardisation"]["noise_multiplier"] > 0, "round 0 was released, noised"

    cfg = ServerSettings.load(f.server_file(run_dir))
    again = DeployServer(ServerSettings(**{**vars(cfg), "resume": True}))
    link = LocalLink(banks(), again.fed.digest)
    again.run(link, link.names())
    lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    round0 = [e for e in map(json.loads, lines) if e.get("round") == 0]
    assert [e["party"] for e in round0] == [f"bank:{b}" for b in f.banks], (
        "round 0's DP release happened (the resumed run standardised with its stored sum) but "
        "the ledger records no round-0 event")


# --- S7b-4: a CKKS bank reveals its round-0 ciphertext under a set smaller than its noise's T -----
def test_s7b_4_a_ckks_bank_reveals_round0_only_under_a_set_of_its_planned_threshold(
        tmp_path: Path) -> None:
    """(fails now; Low, defence in depth as S7-2) Since h18b a bank's round-0 noise share is
    z * sqrt(1 + 2g) / sqrt(T - c) with T = the round's signed threshold (every drawn bank with a
    signed size). On the CKKS path the bank reveals its ciphertext under any server-signed
    commitment set that holds its own commitment (``bank_step`` -> ``CKKSClient.reveal``: no
    size check), and the key holder's round-0 floor is the manifest's threshold
    (``release_floor``: "the verifiers check it"). A server that closes round 0 over 2 of 5
    commitments therefore gets 2 revealed ciphertexts carrying 2/5 of the planned noise variance,
    stopped only by the honest verifiers (min_clients=start.threshold). The bank itself knows
    T: secure is to refuse, before revealing, a commitment set with fewer than
    ``start.threshold`` entries (every round, not only round 0)."""
    from securefl.deploy.ckks import bank_commit, bank_step, federation_keys
    from securefl.deploy.common import Round0Survivors
    from securefl.deploy.messages import RoundStart
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.protocol import wire
    from securefl.protocol.ckks import CKKSKeyHolder, CKKSServer, accept_public_context
    from securefl.protocol.ckks_messages import Commitment

    banks = [f"b{i}" for i in range(5)]
    keys = identity_keys(banks)
    fed = signed_federation(banks, keys, ProtocolParams(aggregation="ckks", threshold=2,
                                                        noise_multiplier=0.0))
    session, dim = b"\x02" * 16, 7
    holder = CKKSKeyHolder(keys["kh"], None, federation_keys(fed), min_clients=2, verifiers=2,
                           server_key=keys["agg"].verify_key, params=DEFAULT_PARAMS)
    plan = bytes([3]) * 32  # the digest of the session's signed hello (S7b-6)
    signed = holder.round_context(session, 0, plan)
    context = wire.encode(signed)
    public = accept_public_context(signed, keys["kh"].verify_key, DEFAULT_PARAMS,
                                   session_id=session, round_=0)
    start = RoundStart(session=session, round=0, task="moments", participants=banks,
                       threshold=5, clip_norm=1.0, noise_multiplier=0.0, min_survivors=5,
                       degree=4, precision_bits=16, dim=dim)
    server = CKKSServer(public, federation_keys(fed), keys["agg"], session_id=session, round_=0,
                        num_values=dim, participants=tuple(range(5)), min_clients=2, verifiers=2)
    states = {}
    for b in banks[:2]:
        states[b], item = bank_commit(fed=fed, identity=keys[b], member=b, context=context,
                                      hello=plan, start=start, values=np.zeros(dim), sim_seed=0,
                                      signed_plan=wire.encode(start))
        server.receive_commitment(wire.decode(item.data, Commitment))
    cset = server.close_commitments()
    assert len(cset.entries) == 2 < start.threshold
    with pytest.raises(SecureFLError):
        bank_step(fed=fed, identity=keys["b0"], member="b0", context=context, hello=plan,
                  start=start,
                  state=states["b0"], data=wire.encode(cset), verifiers=2, verifier_skips=2,
                  round0=Round0Survivors(tmp_path, fed, noiseless=False))


# --- S7b-5: a noised round 0 re-run over the same set draws fresh noise (averaging) ----------------
def test_s7b_5_repeated_noised_round0s_are_each_charged_and_a_cap_stops_them(tmp_path: Path) -> None:
    """(fails now; Medium for banks without caps) Round0Survivors lets round 0 re-run over the
    same set "since it releases the same sum for unchanged data" (common.py docstring, spec 12.1).
    With h18b's noise that no longer holds: each session's ``_round0_input`` draws a fresh OS
    CSPRNG share, so a server that opens up to ``max_sessions`` (default 256) sessions over the
    same banks and stops each after round 0 averages 256 noised releases: the noise std falls by
    16 (z = 4 -> 0.25), while each run's ledger shows one event at z = 4 and a bank without a
    record cap charges nothing. Secure: a bank's repeated round-0 input over the same set and
    data is the same vector (noise from a bank-secret seed kept in its state dir, keyed by the
    manifest's identity keys and its data digest), or a second noised round 0 is refused unless
    a cap meters it."""

    # Not fixed, a stated limit (spec 12.1): reusing the vector of an identical round 0 was tried
    # and let other differences isolate one bank's own noise share (tests/test_redteam_s7c.py's
    # findings), so each noised round 0 draws fresh noise and is a new release. What bounds the
    # averaging is the bank's caps: every repeat is charged, and a capped bank refuses the one
    # that passes its cap. This test shows both sides of the limit.
    from securefl.dp.bank_budget import BankBudget, BudgetCaps

    node, fed = _bank(tmp_path)
    plan = _plan(dp=True, record_noise_multiplier=1.0, stats_noise_multiplier=4.0)
    outs = []
    for counter, session in ((1, b"\x01" * 16), (2, b"\x02" * 16)):
        hello = Hello(session=session, federation=fed.digest, plan=plan, counter=counter)
        outs.append(node._round0_input(fed, hello, _round0_start(session, fed)))
    assert not np.array_equal(outs[0], outs[1]), "each noised round 0 draws fresh noise"
    # the same two releases at a capped bank: each charged, and the cap stops the averaging
    capped = dataclasses.replace(node, budget=BankBudget(
        tmp_path / "budget", "b0", BudgetCaps(record_epsilon_cap=2.0)))
    refused = 0
    for counter in range(1, 40):
        session = counter.to_bytes(16, "big")
        hello = Hello(session=session, federation=fed.digest, plan=plan, counter=counter)
        try:
            capped._round0_input(fed, hello, _round0_start(session, fed))
        except SecureFLError:
            refused += 1
            break
    assert refused == 1, "the cap refuses a repeat before 40 noised round-0 releases"
    assert capped.budget is not None and len(capped.budget.charges()) == counter - 1


def _round0_start(session: bytes, fed: Any) -> Any:
    from securefl.deploy.messages import RoundStart

    return RoundStart(session=session, round=0, task="moments", participants=fed.clients,
                      threshold=3, clip_norm=1.0, noise_multiplier=0.0, min_survivors=3,
                      degree=2, precision_bits=16, dim=7,
                      stats_ranges=[(-4.0, 4.0)] * 3, stats_groups=[[0], [1], [2]])


def test_s7b_1_the_config_floor_is_the_protocols() -> None:
    """securefl.config refuses the same round-0 multipliers the banks refuse (0 < z < 0.5)."""
    from securefl.config import from_mapping
    from securefl.errors import ConfigError
    from securefl.protocol.round0 import MIN_NOISED_Z

    assert MIN_NOISED_Z == 0.5
    with pytest.raises(ConfigError, match="stats_noise_multiplier"):
        from_mapping({"stats_noise_multiplier": 0.25})
    for z in (0.0, 0.5, 4.0):
        from_mapping({"stats_noise_multiplier": z})
