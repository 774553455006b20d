"""The deployment's server and bank handlers over the in-process link (same envelopes, state
bytes and encodings as over Flower): equivalence with ``securefl run``'s simulation, dropouts,
the round-trip count, and the refusals (typed and logged)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import SERVER, Fed, forget_round0, make_federation, write_key
from hypothesis import given, settings
from hypothesis import strategies as st
from result_helpers import check_result_json

from securefl.crypto.signing import SigningKey
from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.server import TRIPS_PER_ROUND, DeployServer, ServerSettings, trips_for
from securefl.errors import AggregationAbortedError, ConfigError, SignatureError

RUN: dict[str, Any] = {"rounds": 1, "seed": 3}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_federation(tmp_path_factory.mktemp("fed"), RUN)


def _banks(f: Fed, **over: BankNode) -> dict[int, BankNode]:
    return {i: over.get(b, BankNode.from_node_config(f.node_config(b, sim_seed=RUN["seed"])))
            for i, b in enumerate(f.banks)}


def _server(f: Fed, run_dir: Path) -> DeployServer:
    return DeployServer(ServerSettings.load(f.server_file(run_dir)))


def test_matches_simulation_with_a_dropout_and_verifies(fed: Fed, tmp_path: Path) -> None:
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    srv = _server(fed, tmp_path / "run")
    # trip 1 hello, 2-5 round 0, 6 advertise of round 1, 7 share, 8 masked: bank 2 dies there
    link = LocalLink(_banks(fed), srv.fed.digest, kill=lambda trip, nid: trip >= 8 and nid == 2)
    res = srv.run(link, link.names())
    assert link.trips == trips_for(1) == 2 + 2 * TRIPS_PER_ROUND
    rec = RunStore.open(tmp_path / "run").records[1]
    assert rec.dropouts == {fed.banks[2]: "masked"}
    assert sorted(rec.survivors) == sorted(fed.banks[:2])
    checked = verify_run_dir(tmp_path / "run").claims_checked
    # result.json: the one schema (protocols/audit/result.schema.json), and what run() returned;
    # with DP the deployment states its privacy report too, re-derived from the ledger
    assert check_result_json(tmp_path / "run") == res and res["dp"] and res["privacy"]
    assert {"final_metrics", "history", "rounds_completed", "privacy"} <= set(checked)
    assert (res["transport"], res["manifest_sha256"], res["round_trips"]) == (
        "flower", srv.fed.digest, len(res["trips"]))
    report = (tmp_path / "run" / "report.html").read_text()  # written by the server (issue 20)
    assert 'data-status="verified' in report and 'alt="participation per round"' in report

    class Replay(Engine):  # the simulation, told who dropped where
        def _simulated_dropouts(self, round_: int, participants: tuple[int, ...],
                                stages: tuple[str, ...]) -> dict[int, str]:
            return {2: "masked"}

    sim = Replay(RunConfig(**RUN, out=str(tmp_path / "sim"))).run()
    assert res["model_sha256"] == sim.model_sha256
    assert res["final_metrics"] == sim.final_metrics


def test_manifest_missing_a_signature_is_refused(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    f = make_federation(tmp_path / "fed", RUN, signers=[SERVER])
    with pytest.raises(SignatureError, match="lacks the signature"):
        _server(f, tmp_path / "run")
    node = BankNode.from_node_config(f.node_config(f.banks[0]))
    with pytest.raises(SignatureError):
        node.federation()


def test_hello_signed_by_a_key_outside_the_manifest_is_refused(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(fed, tmp_path / "run")
    srv.key = SigningKey.generate()  # a server key the manifest does not list
    link = LocalLink(_banks(fed), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="only 0 banks"):
        srv.run(link, link.names())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and all("SFL401" in m for m in refusals)
    assert not (tmp_path / "run").exists()  # nothing was committed


def test_bank_whose_identity_is_not_in_the_manifest_refuses_to_run(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bank = fed.banks[1]
    stranger = write_key(tmp_path / "stranger.key", SigningKey.generate())
    cfg = {**fed.node_config(bank, sim_seed=RUN["seed"]), "key": str(stranger)}
    node = BankNode.from_node_config(cfg)
    with pytest.raises(SignatureError, match="not the key the manifest lists"):
        node.identity(node.federation())
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(_banks(fed, **{bank: node}), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())  # the two others go on without it
    # it stays in the public draw (spec 12.1) as a SecAgg dropout: it contributes nothing
    assert res["rounds_completed"] == 1
    assert all(bank in h["participants"] and bank not in h["survivors"] for h in res["history"])
    assert any("SFL401" in r.getMessage() and bank in r.getMessage() for r in caplog.records)


def test_advertisement_signed_by_a_foreign_key_is_refused_by_the_server(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bank = fed.banks[0]
    foreign = SigningKey.generate()

    class Impostor(BankNode):
        def identity(self, fed_: Any) -> SigningKey:  # skips its own check: a hostile bank
            return foreign

    node = Impostor(**vars(BankNode.from_node_config(fed.node_config(bank, RUN["seed"]))))
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(_banks(fed, **{bank: node}), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())  # the two others go on without it
    # its first signed message, the BankInfo, is refused: it never takes part
    assert srv.refused[bank].startswith("SFL401") and "BankInfo" in srv.refused[bank]
    assert res["rounds_completed"] == 1  # drawn, but a dropout that contributes nothing
    assert all(bank in h["participants"] and bank not in h["survivors"] for h in res["history"])
    assert any("SFL401" in r.getMessage() and bank in r.getMessage() for r in caplog.records)


def test_node_not_in_the_manifest_is_refused(fed: Fed, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(fed, tmp_path / "run")
    banks = _banks(fed)
    link = LocalLink(banks, srv.fed.digest)
    nodes = {**link.names(), "mallory": 99}
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        srv.run(link, nodes)
    assert srv.refused["mallory"].startswith("SFL401")
    assert any("mallory" in r.getMessage() for r in caplog.records)


def test_plan_weaker_than_the_manifest_is_refused_and_the_round_aborts(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from securefl.audit.verify import verify_run_dir

    # the manifest says noise multiplier 0.02; this server plans 0.01
    run_dir = tmp_path / "run"
    cfg = ServerSettings.load(fed.server_file(run_dir))
    weak = ServerSettings(**{**vars(cfg), "run": {**cfg.run, "noise_multiplier": 0.01}})
    srv = DeployServer(weak)
    link = LocalLink(_banks(fed), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    refusals = [r.getMessage() for r in caplog.records if "refused the plan of round 1" in
                r.getMessage()]
    assert len(refusals) == 3 and all("SFL100" in m for m in refusals)
    # round 0 (standardisation) still completed: its unmask rode with the refused plan
    assert res["rounds_completed"] == 0 and res["history"][0]["aborted"] == "SFL310"
    verify_run_dir(run_dir)


class _Recording:
    """A bank node whose every (envelope, state) is kept."""

    def __init__(self, node: BankNode) -> None:
        self.node, self.member = node, node.member
        self.seen: list[tuple[Any, bytes | None]] = []

    def handle(self, env: Any, state: bytes | None) -> tuple[bytes, bytes]:
        self.seen.append((env, state))
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        return out


def _recorded_run(fed: Fed, tmp_path: Path) -> tuple[_Recording, DeployServer]:
    """One run in which bank 0's every (envelope, state) is kept."""
    nodes = _banks(fed)
    rec = _Recording(nodes[0])
    nodes[0] = rec  # type: ignore[assignment]
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(nodes, srv.fed.digest)
    srv.run(link, link.names())
    return rec, srv


def test_node_state_is_sealed_with_a_node_local_key(fed: Fed, tmp_path: Path) -> None:
    """The state Flower keeps for a bank between messages is AES-GCM ciphertext under a 0600 key
    file on the bank's machine, bound to federation, member and session: a modified state, one
    replayed into another session, or one opened with another node's key is refused."""
    import dataclasses

    import msgspec

    from securefl.deploy.client import NodeMemo
    from securefl.errors import ConfigError, IntegrityError, MessageError
    from securefl.protocol import wire

    rec, _ = _recorded_run(fed, tmp_path)
    key_file = rec.node.state_key_path
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_bytes()) == 32
    states = [s for _, s in rec.seen if s]
    assert len(states) == len(rec.seen) - 1  # every message after the first came with a state
    for s in states:  # ciphertext, not the msgpack NodeMemo
        with pytest.raises(MessageError):
            wire.decode(s, NodeMemo)
        assert b"rounds" not in s and b"hello" not in s
    env, state = next((e, s) for e, s in reversed(rec.seen) if s)
    assert state is not None
    tampered = bytearray(state)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(IntegrityError):
        rec.node.handle(env, bytes(tampered))
    with pytest.raises(IntegrityError):
        rec.node.handle(msgspec.structs.replace(env, session=b"\x00" * 16), state)
    other = dataclasses.replace(rec.node, state_key_file=tmp_path / "other.state-key")
    with pytest.raises(IntegrityError):
        other.handle(env, state)
    key_file.chmod(0o644)
    try:
        with pytest.raises(ConfigError, match="permissions 644"):
            rec.node.handle(env, state)
    finally:
        key_file.chmod(0o600)


def _resigned(srv: DeployServer, rs: Any, start: Any, participants: list[str],
              **fields: Any) -> tuple[list[str], Any, Any]:
    """A hostile server's plan: ``start`` with other participants (and their weights) and
    ``fields``, signed with the server's key."""
    import msgspec

    from securefl.deploy.messages import START_DOMAIN
    from securefl.protocol import wire

    start = msgspec.structs.replace(start, participants=participants,
                                    weights={b: rs.weights[b] for b in participants}, **fields)
    return participants, start, srv._sign(wire.encode(start), START_DOMAIN, start.round)


def test_a_round_shrunk_below_the_manifest_threshold_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Manifest threshold 3 of 3 banks: a hostile server that leaves one bank out of round 1 (to
    isolate another bank's update with a single colluder) gets no bank to take part."""
    from securefl.federation import ProtocolParams

    f = make_federation(tmp_path / "fed", RUN, params=ProtocolParams(
        aggregation="secagg", threshold=3, clip_norm=1.0, noise_multiplier=0.02))

    class Shrinking(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            if r == 0:
                return super()._next_round(rs, r)
            start = super()._next_round(rs, r)[1]
            return _resigned(self, rs, start, rs.banks[:2], threshold=2, min_survivors=2)

    srv = Shrinking(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    refusals = [r.getMessage() for r in caplog.records
                if "fewer than the manifest's threshold 3" in r.getMessage()]
    assert len(refusals) == 2 and all("SFL100" in m for m in refusals)
    assert res["rounds_completed"] == 0
    # an honest server stops instead of planning such a round: bank 2 dies in round 1 (trip 7,
    # share), round 1 aborts below the threshold, and round 2 is never planned with 2 banks
    cfg = ServerSettings.load(f.server_file(tmp_path / "run2"))
    honest = DeployServer(ServerSettings(**{**vars(cfg), "run": {**cfg.run, "rounds": 2}}))
    link = LocalLink(_banks(f), honest.fed.digest, kill=lambda trip, nid: trip >= 7 and nid == 2)
    with pytest.raises(AggregationAbortedError, match="round 2: 2 banks left, fewer than the "
                                                      "manifest's threshold 3"):
        honest.run(link, link.names())


def test_client_sampling_is_the_public_draw_and_matches_the_simulation(tmp_path: Path) -> None:
    """clients_per_round < 1: each training round takes max(threshold, round(q n)) banks, drawn
    from the public randomness (session, round) every bank recomputes; told the same
    banks, the simulation ends in the same model; the ledger records fixed-size sampling (no
    amplification claimed)."""
    import hashlib
    import json

    from securefl.config import RunConfig
    from securefl.runtime import Engine

    run = {"rounds": 3, "seed": 3, "clients_per_round": 0.6}
    f = make_federation(tmp_path / "fed", run)
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink({i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
                      for i, b in enumerate(f.banks)}, srv.fed.digest)
    res = srv.run(link, link.names())
    got = [h["participants"] for h in res["history"]]
    session = bytes.fromhex(res["session_id"])

    def rank(r: int, name: str) -> bytes:  # the draw, recomputed from the spec's definition
        dom = b"securefl/deploy/participants/v1"
        return hashlib.sha256(len(dom).to_bytes(2, "big") + dom + session + r.to_bytes(8, "big")
                              + name.encode()).digest()

    want = [sorted(sorted(f.banks, key=lambda b: rank(r, b))[:2], key=f.banks.index)
            for r in (1, 2, 3)]
    assert got == want and all(len(p) == 2 for p in got)

    class Told(Engine):  # the simulation, told the deployment's participants
        def _sample(self, round_: int, n_banks: int) -> tuple[int, ...]:
            return tuple(f.banks.index(b) for b in got[round_ - 1])

    sim = Told(RunConfig(**run, out=str(tmp_path / "sim"))).run()
    assert res["model_sha256"] == sim.model_sha256
    lines = [json.loads(x) for x in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    client = [x for x in lines if x.get("level") == "client"]
    assert client and all(x["sampling"] == "fixed_size" for x in client)


def test_a_crashed_server_resumes_after_its_last_committed_round(tmp_path: Path) -> None:
    """The server process dies during round 2 (its link raises mid-trip); a new server with
    ``resume`` continues the run directory after round 1: new hello, no second standardisation,
    the stored model, optimizer state and ledger. The final model is bit-identical to the
    uninterrupted simulation's and the run directory verifies."""
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    run = {"rounds": 2, "seed": 3, "server_optimizer": "fedadam", "server_lr": 0.01}
    f = make_federation(tmp_path / "fed", run)
    run_dir = tmp_path / "run"

    class Crashing(LocalLink):
        def round_trip(self, payloads: Any, timeout_s: float) -> dict[int, bytes]:
            if self.trips == 10:  # trip 11: round 2's share (round 1 was committed in trip 10)
                raise RuntimeError("the server process died")
            return super().round_trip(payloads, timeout_s)

    srv = DeployServer(ServerSettings.load(f.server_file(run_dir)))
    link = Crashing(_banks(f), srv.fed.digest)
    with pytest.raises(RuntimeError, match="died"):
        srv.run(link, link.names())
    assert RunStore.open(run_dir).last_round == 1

    cfg = ServerSettings.load(f.server_file(run_dir))
    again = DeployServer(ServerSettings(**{**vars(cfg), "resume": True}))
    link = LocalLink(_banks(f), again.fed.digest)  # the banks' nodes restarted too
    res = again.run(link, link.names())
    assert [t["stage"] for t in res["trips"]][:2] == ["hello", "advertise"]
    assert all(t["round"] == 2 for t in res["trips"][1:])  # no second standardisation round
    verify_run_dir(run_dir)
    store = RunStore.open(run_dir)
    assert [r.round for r in store.records[1:]] == [1, 2]
    sim = Engine(RunConfig(**run, out=str(tmp_path / "sim"))).run()
    assert res["model_sha256"] == sim.model_sha256
    # round 0's events (committed with round 1, before the crash) are in the ledger once
    round0 = [[x for x in d.joinpath("ledger.jsonl").read_text().splitlines()
               if json.loads(x)["round"] == 0] for d in (run_dir, tmp_path / "sim")]
    assert len(round0[0]) == len(f.banks) and round0[0] == round0[1]
    # a finished run is not resumed
    with pytest.raises(ConfigError, match="finished"):
        DeployServer(ServerSettings(**{**vars(cfg), "resume": True})).run(
            LocalLink(_banks(f), again.fed.digest), link.names())


def test_regression_deployment_standardises_the_target_federatedly(tmp_path: Path) -> None:
    """Regression (LIMIT_BAL): round 0 also sums the moments of target / 2^k (k the largest power
    of two the banks report), the banks train on the standardised target and the server reports
    metrics in label units. securefl run sums the target moments outside SecAgg (and, with DP
    on, without the noise a deployment adds to them), so the two runs, without DP, differ only by
    that sum's quantization: R^2 and RMSE must agree closely."""
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    run = {"rounds": 2, "seed": 3, "label": "LIMIT_BAL", "task": "regression", "dp": False}
    f = make_federation(tmp_path / "fed", run)
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink({i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
                      for i, b in enumerate(f.banks)}, srv.fed.digest)
    res = srv.run(link, link.names())
    verify_run_dir(tmp_path / "run")
    sim = Engine(RunConfig(**run, out=str(tmp_path / "sim"))).run()
    got, want = res["final_metrics"], sim.final_metrics
    assert set(got) == {"rmse", "mae", "r2"} == set(want)
    assert abs(got["r2"] - want["r2"]) < 0.002, (got, want)
    assert abs(got["rmse"] - want["rmse"]) / want["rmse"] < 0.002, (got, want)
    assert got["r2"] > 0.1  # it learned something in label units (R^2 of a mean predictor: 0)


def _round_1_aborted(server_cls: type[DeployServer], fed: Fed, tmp_path: Path) -> str:
    """Run one training round with a hostile server; the round must abort, nothing be released,
    and the run directory still verify. Returns the abort's error code."""
    from securefl.audit.verify import verify_run_dir

    run_dir = tmp_path / "run"
    srv = server_cls(ServerSettings.load(fed.server_file(run_dir)))
    link = LocalLink(_banks(fed), srv.fed.digest)
    res = srv.run(link, link.names())
    assert res["rounds_completed"] == 0
    assert res["history"][0]["round"] == 1
    verify_run_dir(run_dir)
    code: str = res["history"][0]["aborted"]
    return code


def _tailored_model(srv: DeployServer, round_: int, payloads: Any) -> Any:
    """The share trip's payloads with a different signed global model for the first bank."""
    import msgspec
    import numpy as np

    from securefl.deploy.messages import MODEL_DOMAIN, GlobalModel
    from securefl.protocol import wire

    victim = sorted(payloads)[0]
    p = payloads[victim]
    gm = wire.decode(p.model.body, GlobalModel)
    w = np.frombuffer(gm.weights, dtype="<f8").copy()
    w[0] += 1.0
    gm = msgspec.structs.replace(gm, weights=w.astype("<f8").tobytes())
    return {**payloads, victim: msgspec.structs.replace(
        p, model=srv._sign(wire.encode(gm), MODEL_DOMAIN, round_))}


def test_a_model_tailored_to_one_bank_aborts_the_round_before_unmasking(
        fed: Fed, tmp_path: Path) -> None:
    """Pasquini et al. (CCS 2022): a server that sends one bank a different global model can
    isolate its update even through perfect secure aggregation. The model each bank trained from is
    the input binding it signs with the survivor set, so no bank reveals a share and the round
    aborts; the run directory still verifies."""


    class Tailoring(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if round_ == 1 and stage == "share":
                payloads = _tailored_model(self, round_, payloads)
            return super()._trip(ex, round_, stage, payloads)

    # the victim's survivor-set signature covers the model it got: the server's machine refuses it
    # (SignatureError), and no honest bank reveals a share without every survivor's signature
    assert _round_1_aborted(Tailoring, fed, tmp_path) == "SFL401"


@pytest.mark.parametrize("partial", [False, True], ids=["other-values", "own-weight-only"])
def test_fedavg_weights_tailored_per_bank_abort_the_round(
        fed: Fed, tmp_path: Path, partial: bool) -> None:
    """A server that signs each bank a different weight vector (the victim 1, every other bank
    ~0, so the sum is the victim's update) is caught: the weights are in every bank's SecAgg plan
    digest, and a plan that omits the other banks' weights is refused outright (red-team finding)."""
    import msgspec

    from securefl.deploy.messages import START_DOMAIN, RoundStart
    from securefl.protocol import wire

    class Tailoring(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if round_ == 1 and stage == "advertise":
                banks = sorted(payloads)
                out = dict(payloads)
                for b in banks if partial else banks[1:]:
                    p = payloads[b]
                    start = wire.decode(p.start.body, RoundStart)
                    # partial: every bank sees only its own weight (the victim 1, the others ~0),
                    # which before the fix left the weights out of every plan digest alike
                    w = ({b: 1.0 if b == banks[0] else 1e-9} if partial else
                         {n: (1.0 if n == banks[0] else 1e-9) for n in start.weights})
                    start = msgspec.structs.replace(start, weights=w)
                    out[b] = msgspec.structs.replace(
                        p, start=self._sign(wire.encode(start), START_DOMAIN, round_))
                payloads = out
            return super()._trip(ex, round_, stage, payloads)

    assert _round_1_aborted(Tailoring, fed, tmp_path)


# -- issue 14 on the deployment path: public randomness the banks check -------------------------------
def _session_hex(digest: str, counter: int) -> str:
    """The session id recomputed from the spec (section 12), independently of the code."""
    import hashlib

    dom = b"securefl/deploy/session/v2"
    return hashlib.sha256(len(dom).to_bytes(2, "big") + dom + bytes.fromhex(digest)
                          + counter.to_bytes(8, "big")).digest()[:16].hex()


def _hello_only(srv: DeployServer, f: Fed) -> None:
    """Send the hello, then every bank goes silent (the run aborts before round 0 releases)."""
    link = LocalLink(_banks(f), srv.fed.digest, kill=lambda trip, nid: trip >= 2)
    with pytest.raises(AggregationAbortedError):
        srv.run(link, link.names())


def test_a_session_id_the_server_chose_or_a_reused_counter_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The session id (the graph's public randomness) is H(domain | manifest digest | counter):
    a server that picks its own random session id (the old behaviour), or restarts a session
    with a counter a bank already accepted (to draw fresh graphs), gets no bank to answer."""
    import json
    import os

    f = make_federation(tmp_path / "fed", RUN)
    honest = _server(f, tmp_path / "run0")
    assert honest.session.hex() == _session_hex(honest.fed.digest, honest.counter)
    _hello_only(honest, f)
    state = f.keys[f.banks[0]].with_name(f.keys[f.banks[0]].name + ".state")
    saved = json.loads((state / f"session-{honest.fed.digest}.json").read_text())
    assert saved["highest"] == honest.counter

    class OwnSession(DeployServer):
        def __init__(self, settings: ServerSettings) -> None:
            super().__init__(settings)
            self.session = os.urandom(16)

    # the same counter again: a server whose state was reset to just below it
    replay_dir = tmp_path / "server-state"
    replay_dir.mkdir()
    (replay_dir / f"session-{honest.fed.digest}.json").write_text(
        json.dumps({"highest": honest.counter - 1}))
    cfg = ServerSettings.load(f.server_file(tmp_path / "run"))
    for cls, server_settings, why in [
            (OwnSession, cfg, "not derived from the manifest"),
            (DeployServer, ServerSettings(**{**vars(cfg), "state_dir": replay_dir}),
             f"session counter {honest.counter} is not above {honest.counter}")]:
        srv = cls(server_settings)
        link = LocalLink(_banks(f), srv.fed.digest)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
                pytest.raises(AggregationAbortedError, match="only 0 banks answered the hello"):
            srv.run(link, link.names())
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 3 and all("SFL307" in m and why in m for m in refusals)


def _plan_refused(server_cls: type[DeployServer], f: Fed, tmp_path: Path,
                  caplog: pytest.LogCaptureFixture, round_: int) -> tuple[dict[str, Any], list[str]]:
    """Run a hostile server; its result and the banks' logged refusals of round ``round_``'s
    plan."""
    srv = server_cls(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    return res, [r.getMessage() for r in caplog.records
                 if f"refused the plan of round {round_}" in r.getMessage()]


def test_participants_the_server_chose_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """clients_per_round < 1: a server that picks round 1's banks itself (and with them the
    graph) instead of the public draw is refused by every bank it picked."""
    run = {"rounds": 1, "seed": 3, "clients_per_round": 0.6}
    f = make_federation(tmp_path / "fed", run)

    class Choosing(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            participants, start, signed = super()._next_round(rs, r)
            if r == 0:
                return participants, start, signed
            left_out = next(b for b in rs.banks if b not in participants)
            chosen = [b for b in rs.banks if b != participants[0]]  # swaps in left_out
            assert left_out in chosen
            return _resigned(self, rs, start, chosen)

    res, refusals = _plan_refused(Choosing, f, tmp_path, caplog, 1)
    assert len(refusals) == 2 and all("SFL307" in m and "public draw" in m for m in refusals)
    assert res["rounds_completed"] == 0 and res["history"][0]["aborted"] == "SFL310"


def test_omitting_a_banks_signed_size_to_swap_it_out_and_back_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Red-team finding H2: instead of declaring a bank silent, the server leaves its signed
    BankInfo out of round 1's plan (so the public draw runs over the others) and would forward it
    again later, choosing each round's participants and graph. The draw's bank set is fixed by
    the session's first plan: the banks refuse the changed set. (Since the draw is over the
    manifest's clients, the omission no longer changes the participants either.)"""
    run = {"rounds": 2, "seed": 3, "banks": 4}
    f = make_federation(tmp_path / "fed", run)

    class Omitting(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            if not hasattr(self, "_all"):
                self._all = (list(rs.banks), list(rs.signed_infos))
            banks, infos = self._all
            top = max(banks, key=lambda b: rs.infos[b].n_train)  # weights n_i / max n unchanged
            out = next(b for b in banks if b != top)
            if r == 1:
                rs.banks = [b for b in banks if b != out]
                rs.signed_infos = [s for s in infos if s.member != out]
            else:
                rs.banks, rs.signed_infos = list(banks), list(infos)
            return super()._next_round(rs, r)

    res, refusals = _plan_refused(Omitting, f, tmp_path, caplog, 1)
    # all four refuse, the omitted bank too: it stays drawn (spec 12.1) and gets the plan
    assert len(refusals) == 4 and all("SFL307" in m and "fixed for the session" in m
                                      for m in refusals)
    assert res["history"][0]["round"] == 1 and res["history"][0]["aborted"] == "SFL310"


def test_a_common_weight_vector_that_shrinks_the_other_banks_is_refused(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every bank gets the same signed weights, the victim 1 and the others a tiny but valid
    1e-9, so the released sum is about the victim's update alone: each bank checks every
    participant's weight against n_i / max n of the sizes the banks signed themselves."""
    import msgspec

    from securefl.deploy.messages import START_DOMAIN, RoundStart
    from securefl.protocol import wire

    class Shrinking(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if round_ == 1 and stage == "advertise":
                victim = sorted(payloads)[0]
                out = {}
                for b, p in payloads.items():
                    start = wire.decode(p.start.body, RoundStart)
                    w = {n: 1.0 if n == victim else 1e-9 for n in start.weights}
                    start = msgspec.structs.replace(start, weights=w)
                    out[b] = msgspec.structs.replace(
                        p, start=self._sign(wire.encode(start), START_DOMAIN, round_))
                payloads = out
            return super()._trip(ex, round_, stage, payloads)

    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        assert _round_1_aborted(Shrinking, fed, tmp_path) == "SFL310"
    refusals = [r.getMessage() for r in caplog.records if "refused the plan of round 1" in
                r.getMessage()]
    assert len(refusals) == 3 and all("SFL307" in m and "FedAvg weights" in m for m in refusals)


def test_bank_sizes_the_server_altered_are_refused(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The weights follow from sizes each bank signed itself: a server that forwards the others'
    sizes as 1 (weights consistent with them) breaks those banks' signatures."""
    import msgspec

    from securefl.errors import SecureFLError

    class Resizing(DeployServer):
        def _bank_infos(self, replies: Any) -> Any:
            infos = super()._bank_infos(replies)
            victim = sorted(infos)[0]
            fake = {b: msgspec.structs.replace(i, n_train=1) if b != victim else i
                    for b, i in infos.items()}
            replies.update({b: msgspec.structs.replace(r, info=fake[b])
                            for b, r in replies.items() if b in fake})
            return fake

    srv = Resizing(ServerSettings.load(fed.server_file(tmp_path / "run")))
    link = LocalLink(_banks(fed), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(SecureFLError):
        srv.run(link, link.names())  # round 0 gets no bank: no standardisation, no run
    refusals = [r.getMessage() for r in caplog.records
                if "refused the plan of round 0" in r.getMessage()]
    assert len(refusals) == 3 and all("SFL401" in m for m in refusals)


def test_attempts_at_one_global_model_are_bounded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that aborts rounds on purpose (a tailored model each time) retries the same
    global model with a fresh participant draw and graph per round. The banks join at most
    MAX_ATTEMPTS rounds in a row from one model and refuse the next, even from a server that
    ignores the bound; an honest server stops there. Every attempt is an aborted record in the
    audit log, which verifies."""

    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir
    from securefl.deploy.common import MAX_ATTEMPTS

    run = {"rounds": MAX_ATTEMPTS + 1, "seed": 3}
    f = make_federation(tmp_path / "fed", run)

    class Retrying(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if 1 <= round_ <= MAX_ATTEMPTS and stage == "share":  # abort rounds 1..MAX_ATTEMPTS
                payloads = _tailored_model(self, round_, payloads)
            return super()._trip(ex, round_, stage, payloads)

    class Unbounded(Retrying):
        def _aborted_in_a_row(self) -> int:
            return 0  # ignores the bound

    def records(run_dir: Path) -> list[Any]:
        verify_run_dir(run_dir)
        recs = RunStore.open(run_dir).records[1:]
        assert all(r.status == "aborted" and r.model_sha256_before == r.model_sha256_after
                   for r in recs)
        return [r.round for r in recs]

    srv = Unbounded(ServerSettings.load(f.server_file(tmp_path / "bad")))
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    assert res["rounds_completed"] == 0
    # the two banks that got the common model each time refuse the 4th attempt at it (the victim
    # got a different, tailored model in the first three)
    late = f"round {MAX_ATTEMPTS + 1}: attempt {MAX_ATTEMPTS + 1} at the same global model"
    refusals = [r.getMessage() for r in caplog.records if late in r.getMessage()]
    assert len(refusals) == 2 and all("SFL307" in m for m in refusals)
    assert records(tmp_path / "bad") == list(range(1, MAX_ATTEMPTS + 2))

    honest = Retrying(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(_banks(f), honest.fed.digest)
    with pytest.raises(AggregationAbortedError, match=f"round {MAX_ATTEMPTS + 1}: the last "
                                                      f"{MAX_ATTEMPTS} rounds aborted"):
        honest.run(link, link.names())
    assert records(tmp_path / "run") == list(range(1, MAX_ATTEMPTS + 1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=12),
       st.integers(min_value=1, max_value=40))
def test_session_counters_are_accepted_once_in_order_and_up_to_the_cap(
        counters: list[int], cap: int) -> None:
    """A bank accepts a session counter only if it is at most the manifest's max_sessions, above
    every counter it accepted before and at most MAX_COUNTER_STEP above it (red-team finding H1:
    a free choice of a larger counter lets the server grind the session id), also after a
    restart (a fresh SessionCounter reading the same state directory); the server's next
    counter stops at the cap."""
    import tempfile

    from securefl.deploy.common import MAX_COUNTER_STEP, ServerFaultError, SessionCounter

    with tempfile.TemporaryDirectory() as d:
        highest = 0
        for c in counters:
            counter = SessionCounter(Path(d) / "state", "ab" * 32, cap)  # a restarted node
            if c > cap:
                with pytest.raises(ServerFaultError, match=f"above the manifest's max_sessions "
                                                           f"= {cap}"):
                    counter.accept(c)
            elif highest < c <= highest + MAX_COUNTER_STEP:
                counter.accept(c)
                highest = c
            elif c <= highest:
                with pytest.raises(ServerFaultError, match="not above"):
                    counter.accept(c)
            else:
                with pytest.raises(ServerFaultError, match="grind the session id"):
                    counter.accept(c)
        server = SessionCounter(Path(d) / "state", "ab" * 32, cap)
        if highest < cap:
            assert server.next() == highest + 1
        else:
            with pytest.raises(ConfigError, match=f"max_sessions = {cap}"):
                server.next()


def test_a_counter_jump_the_server_could_grind_is_refused(tmp_path: Path) -> None:
    """Red-team finding H1: the server searched counters offline for a session id whose draw it
    liked (14 tries for 5 banks) and jumped to it; a bank accepts only a small step (here with
    a cap too large to matter)."""
    from securefl.deploy.common import MAX_COUNTER_STEP, ServerFaultError, SessionCounter

    counter = SessionCounter(tmp_path / "state", "cd" * 32, 2**62)
    counter.accept(1)
    with pytest.raises(ServerFaultError, match="grind"):
        counter.accept(1_000_013)
    with pytest.raises(ServerFaultError, match="grind"):
        counter.accept(2**61)
    counter.accept(1 + MAX_COUNTER_STEP)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=12).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(min_value=2, max_value=n), st.integers(min_value=0, max_value=2**20),
    st.binary(min_size=16, max_size=16))))
def test_the_participant_draw_is_the_specified_public_function(
        case: tuple[int, int, int, bytes]) -> None:
    """round_participants is exactly the spec's algorithm (recomputed here with hashlib): the
    first k of the manifest's clients ranked by SHA-256(domain | session | round | name), in
    manifest order."""
    import hashlib

    from securefl.deploy.common import round_participants

    n, k, round_, session = case
    banks = [f"bank{i}" for i in range(n)]
    dom = b"securefl/deploy/participants/v1"
    ranked = sorted((hashlib.sha256(len(dom).to_bytes(2, "big") + dom + session
                                    + round_.to_bytes(8, "big") + b.encode()).digest(), b)
                    for b in banks)
    chosen = {b for _, b in ranked[:k]}
    got = round_participants(session, round_, banks, k)
    assert got == [b for b in banks if b in chosen]
    assert len(got) == k


def test_a_round_runs_once_per_session(fed: Fed, tmp_path: Path) -> None:
    """A server that replays a round's signed plan later in the session (to draw its graph and
    participants again) is refused: each round runs once, in order, up to the plan's count."""
    import msgspec

    from securefl.deploy.common import ServerFaultError
    from securefl.deploy.messages import START_DOMAIN, RoundStart, decode_server
    from securefl.protocol import wire

    rec, srv = _recorded_run(fed, tmp_path)
    first = next(e for e, _ in rec.seen if e.stage == "advertise" and e.round == 0)
    last_state = rec.seen[-1][1]
    with pytest.raises(ServerFaultError, match="rounds run once each, in order"):
        rec.node.handle(first, last_state)
    # nor a round beyond the signed plan's round count
    payload = decode_server(first.payload)
    late = msgspec.structs.replace(wire.decode(payload.start.body, RoundStart),
                                   round=RUN["rounds"] + 1)
    signed = srv._sign(wire.encode(late), START_DOMAIN, late.round)
    env = msgspec.structs.replace(first, payload=wire.encode(
        msgspec.structs.replace(payload, start=signed)))
    with pytest.raises(ServerFaultError, match=f"up to the plan's {RUN['rounds']}"):
        rec.node.handle(env, last_state)


def test_a_model_moved_by_one_ulp_per_retry_does_not_reset_the_attempt_bound(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Red-team finding M3: the per-model attempt count was reset by sending M, M', M, M', ...
    (M' = M moved by one ULP), so one input met unboundedly many graphs. A bank also counts the
    rounds since its last unmask that took its masked input and never unmasked it."""
    import numpy as np

    from securefl.deploy.common import MAX_ATTEMPTS
    from securefl.deploy.messages import MODEL_DOMAIN, GlobalModel
    from securefl.protocol import wire

    rounds = MAX_ATTEMPTS + 4
    f = make_federation(tmp_path / "fed", {"rounds": rounds, "seed": 3})

    class Alternating(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> Any:
            if round_ >= 1 and stage == "share":  # every training round aborts after the input
                payloads = _tailored_model(self, round_, payloads)
            return super()._trip(ex, round_, stage, payloads)

        def _aborted_in_a_row(self) -> int:
            return 0  # a server that ignores its own bound

        def _model_message(self, rs: Any, r: int) -> Any:
            if r == 0:
                return None
            w = rs.w.astype("<f8").copy()
            if r % 2 == 0:
                w[-1] = np.nextafter(w[-1], np.inf)
            gm = GlobalModel(round=r, weights=w.tobytes(), moments_total=rs.moments_total,
                             target_scale_log2=rs.target_scale_log2)
            return self._sign(wire.encode(gm), MODEL_DOMAIN, r)

    srv = Alternating(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="banks left"):
        srv.run(link, link.names())  # every bank refuses: the run cannot go on
    bound = [r.getMessage() for r in caplog.records if "never unmasked" in r.getMessage()]
    # rounds 1..MAX_ATTEMPTS + 1 took masked inputs (the last may await a pipelined unmask); the
    # next one is refused by all three banks
    assert len(bound) == 3 and all("SFL307" in m and f"round {MAX_ATTEMPTS + 2}:" in m
                                   for m in bound)


# -- issue 14: the server cannot shape the draw by removing banks; sessions are capped --------------
def _graph_seed_hex(session: bytes, round_: int, ids: list[int]) -> str:
    """Spec section 4.3's graph seed, recomputed with hashlib (independently of the code)."""
    import hashlib

    body = (b"securefl/secagg/v2/graph-seed\x00" + session + round_.to_bytes(8, "big")
            + len(ids).to_bytes(4, "big") + b"".join(i.to_bytes(4, "big") for i in sorted(ids)))
    return hashlib.sha256(body).hexdigest()


class _Seen(DeployServer):
    """Keeps every round's plan and the graph seed its SecAgg machine uses."""

    def _flight(self, start: Any) -> Any:
        fl = super()._flight(start)
        seen = self.__dict__.setdefault("seen", {})
        seen[start.round] = (start, fl.machine.config.graph_seed.hex())
        return fl


@pytest.fixture(scope="module")
def fed4(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_federation(tmp_path_factory.mktemp("fed4"), {"rounds": 1, "seed": 3, "banks": 4})


@pytest.mark.parametrize("silenced", [1, 2])
def test_banks_the_server_declares_silent_stay_in_the_draw_and_the_graph(
        fed4: Fed, tmp_path: Path, silenced: int) -> None:
    """Open item 1 of the last session: the server declared live banks silent to drop them from
    the draw and so choose among the graphs of the participant sets left. Now the participants
    and the graph seed are those of (manifest, session, round) whatever it declares: the silenced
    banks are SecAgg dropouts, the threshold is that of all 4 drawn banks (T = 3), so one
    silenced bank leaves a round that completes with 3 survivors and two make it abort (before,
    the draw shrank to 2 banks with T = 2 and the round completed)."""
    victims = fed4.banks[:silenced]

    class Silencing(_Seen):
        def _next_round(self, rs: Any, r: int) -> Any:
            if r == 1:
                rs.silent |= set(victims)  # live banks, declared silent
            return super()._next_round(rs, r)

    srv = Silencing(ServerSettings.load(fed4.server_file(tmp_path / "run")))
    link = LocalLink(_banks(fed4), srv.fed.digest)
    res = srv.run(link, link.names())
    start, seed = srv.seen[1]  # type: ignore[attr-defined]
    assert start.participants == fed4.banks  # q = 1: every manifest client is drawn
    assert seed == _graph_seed_hex(srv.session, 1, list(range(4)))
    assert start.threshold == 3
    h = res["history"][-1]
    if silenced == 1:
        assert res["rounds_completed"] == 1
        assert h["participants"] == fed4.banks and sorted(h["survivors"]) == fed4.banks[1:]
    else:
        assert res["rounds_completed"] == 0 and h["aborted"] == "SFL310"


def test_a_plan_that_leaves_the_silenced_banks_out_of_the_draw_is_refused(
        fed4: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The old behaviour, as a hostile server: round 1's signed plan lists only the banks it did
    not silence (a smaller set, another graph). Every bank recomputes the draw over the
    manifest's clients and refuses it."""

    class Shrinking(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            participants, start, signed = super()._next_round(rs, r)
            if r == 0:
                return participants, start, signed
            rs.silent.add(rs.banks[0])
            return _resigned(self, rs, start, rs.banks[1:], threshold=2, min_survivors=2)

    res, refusals = _plan_refused(Shrinking, fed4, tmp_path, caplog, 1)
    assert len(refusals) == 3 and all("SFL307" in m and "public draw" in m for m in refusals)
    assert res["rounds_completed"] == 0 and res["history"][0]["aborted"] == "SFL310"


def test_a_bank_whose_signed_size_the_server_withholds_stays_drawn_and_contributes_nothing(
        fed4: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Open item 1, second form: the server does not forward one bank's BankInfo at the hello,
    to run the draw over the others. The bank stays a participant of every round (same graph
    seed as with its size), gets no FedAvg weight, refuses the plan that lacks its own size (it
    does not contribute) and is a dropout; the other three complete both rounds."""
    victim = fed4.banks[2]

    class Withholding(_Seen):
        def _bank_infos(self, replies: Any) -> Any:
            infos = super()._bank_infos(replies)
            return {b: i for b, i in infos.items() if b != victim}

        def _live(self, rs: Any, participants: list[str]) -> list[str]:
            return [p for p in participants if p not in rs.silent]  # sends the victim too

    srv = Withholding(ServerSettings.load(fed4.server_file(tmp_path / "run")))
    link = LocalLink(_banks(fed4), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    assert res["rounds_completed"] == 1
    for r in (0, 1):
        start, seed = srv.seen[r]  # type: ignore[attr-defined]
        assert start.participants == fed4.banks
        assert seed == _graph_seed_hex(srv.session, r, list(range(4)))
    assert sorted(srv.seen[1][0].weights) == sorted(set(fed4.banks) - {victim})  # type: ignore[attr-defined]
    assert victim not in res["history"][-1]["survivors"]
    own = [r.getMessage() for r in caplog.records if "refused the plan of round 0" in
           r.getMessage()]
    assert len(own) == 1 and victim in own[0] and "SFL307" in own[0] and "signed size" in own[0]


def test_a_session_counter_beyond_max_sessions_is_refused_by_every_bank(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Open item 2: sessions per manifest are capped. With max_sessions = 2 and two sessions
    used, the honest server refuses to open a third (ConfigError), and a server that signs
    counter 3 anyway (a step of 1, which the old rules accepted) gets no bank to answer: each
    names the bound."""
    import json

    from securefl.deploy.common import session_id
    from securefl.federation import ProtocolParams

    f = make_federation(tmp_path / "fed", RUN, params=ProtocolParams(
        aggregation="secagg", threshold=2, clip_norm=1.0, noise_multiplier=0.02,
        max_sessions=2))
    for i in (1, 2):
        srv = _server(f, tmp_path / f"run{i}")
        assert srv.counter == i
        _hello_only(srv, f)
    with pytest.raises(ConfigError, match="max_sessions = 2"):
        _server(f, tmp_path / "run3")

    class Beyond(DeployServer):
        def __init__(self, settings: ServerSettings) -> None:
            super().__init__(settings)  # a fresh state directory: its own counter says 1
            self.counter = 3
            self.session = session_id(self.fed.digest, 3)

    cfg = ServerSettings.load(f.server_file(tmp_path / "run4"))
    srv = Beyond(ServerSettings(**{**vars(cfg), "state_dir": tmp_path / "fresh-state"}))
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="only 0 banks answered the hello"):
        srv.run(link, link.names())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and all("SFL307" in m and "max_sessions = 2" in m
                                      for m in refusals)
    state = f.keys[f.banks[0]].with_name(f.keys[f.banks[0]].name + ".state")
    assert json.loads((state / f"session-{srv.fed.digest}.json").read_text())["highest"] == 2


_PROP_KEYS: dict[int, list[SigningKey]] = {}


def _prop_federation(n: int, q: float = 1.0) -> tuple[Any, list[SigningKey]]:
    """A signed manifest of a server and ``n`` banks drawing ``q`` of them per round, any round
    count (keys kept per n, made once)."""
    from securefl.federation import (
        Member,
        ProtocolParams,
        create_manifest,
        sign_manifest,
        verify_manifest,
    )

    keys = _PROP_KEYS.setdefault(n, [SigningKey.generate() for _ in range(n + 1)])
    names = ["srv", *(f"b{i}" for i in range(n))]
    members = [Member(name=nm, role="server" if i == 0 else "client",
                      public_key=k.verify_key.raw.hex())
               for i, (nm, k) in enumerate(zip(names, keys, strict=True))]
    m = create_manifest("prop", members, ProtocolParams(aggregation="secagg", threshold=2,
                                                        noise_multiplier=0.02,
                                                        clients_per_round=q,
                                                        max_rounds=100_000))
    for nm, k in zip(names, keys, strict=True):
        m = sign_manifest(m, nm, k)
    return verify_manifest(m), keys


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=3, max_value=10).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.sampled_from(["silent", "withheld", None]), min_size=n, max_size=n).filter(
        lambda xs: sum(x is None for x in xs) >= 2),
    st.sampled_from([1.0, 0.5, 0.3]), st.integers(min_value=0, max_value=100_000),
    st.binary(min_size=16, max_size=16))))
def test_silence_and_withheld_sizes_leave_the_draw_and_the_graph_unchanged(
        case: tuple[int, list[str | None], float, int, bytes]) -> None:
    """The property behind spec 12.1's proof: for any set of banks the honest server counts as
    silent or holds no signed size for, its round plan has the participants, threshold and
    SecAgg graph seed of the same (manifest, session, round) with no removal; the participants
    are the spec's draw (recomputed with hashlib); every bank with a forwarded size accepts the
    plan's draw and weights, and a bank whose size was withheld refuses to contribute."""
    import hashlib
    from types import SimpleNamespace

    import numpy as np

    from securefl.config import RunConfig
    from securefl.crypto.signing import sign_bound
    from securefl.deploy.client import NodeMemo
    from securefl.deploy.common import MAX_ATTEMPTS, ServerFaultError, bank_ids, fedavg_weights
    from securefl.deploy.messages import BANK_INFO_DOMAIN, BankInfo, Hello, SignedBankInfo
    from securefl.engine import RoundEngine
    from securefl.protocol import wire

    n, removal, q, round_, session = case
    fed, keys = _prop_federation(n, q)
    banks = list(fed.clients)
    sizes = {b: 10 + 7 * i for i, b in enumerate(banks)}
    srv = DeployServer.__new__(DeployServer)
    srv.fed, srv.config = fed, RunConfig(banks=n, clients_per_round=q, rounds=100_000)
    srv.session, srv.sim_stream, srv.key, srv.ids = session, None, keys[0], bank_ids(fed)
    srv.engine = RoundEngine(lambda: None, max_aborted=MAX_ATTEMPTS)  # type: ignore[arg-type,return-value]
    srv._hello_digest = bytes(32)

    def plan(silent: set[str], withheld: set[str]) -> tuple[Any, str]:
        sized = [b for b in banks if b not in withheld]
        rs = SimpleNamespace(banks=sized, silent=silent, target_scale_log2=None, n_features=2,
                             w=np.zeros(7), bound=1.0, stats_ranges=None, stats_groups=(),
                             weights=fedavg_weights({b: sizes[b] for b in sized}))
        start = srv._next_round(rs, round_)[1]  # type: ignore[arg-type]
        seed = srv._flight(start).machine.config.graph_seed.hex() if round_ > 0 else ""
        return start, seed

    silent = {b for b, x in zip(banks, removal, strict=True) if x == "silent"}
    withheld = {b for b, x in zip(banks, removal, strict=True) if x == "withheld"}
    start, seed = plan(silent, withheld)
    base, base_seed = plan(set(), set())
    dom = b"securefl/deploy/participants/v1"
    k = n if q >= 1 or round_ == 0 else min(n, max(2, round(q * n)))
    ranked = sorted(banks, key=lambda b: hashlib.sha256(
        len(dom).to_bytes(2, "big") + dom + session + round_.to_bytes(8, "big")
        + b.encode()).digest())
    assert start.participants == base.participants == [b for b in banks if b in ranked[:k]]
    assert seed == base_seed
    if round_ > 0:
        assert start.threshold == base.threshold
        assert seed == _graph_seed_hex(session, round_, [srv.ids[p] for p in start.participants])
    infos = []
    for b in banks:
        if b in withheld:
            continue
        info = BankInfo(n_train=sizes[b], n_features=2, moments_norm_log2=1,
                        record_noise_multiplier=None)
        infos.append(SignedBankInfo(member=b, info=info, signature=sign_bound(
            keys[1 + banks.index(b)], domain=BANK_INFO_DOMAIN, session_id=session, round_=0,
            message=wire.encode(info))))
    hello = Hello(session=session, federation=fed.digest, plan=srv.plan(), counter=1)
    for b in start.participants:
        node = BankNode(member=b, key_path=Path("-"), manifest_path=Path("-"),
                        data_path=Path("-"))
        if b in withheld:
            with pytest.raises(ServerFaultError, match="signed size"):
                node._check_draw(fed, NodeMemo(), hello, start, infos)
        else:
            node._check_draw(fed, NodeMemo(), hello, start, infos)


@pytest.mark.parametrize(("cap", "dp"), [("record-epsilon-cap", True),
                                         ("client-epsilon-cap", False)])
def test_a_deployed_banks_own_cap_refuses_the_round_before_its_update_leaves(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, cap: str, dp: bool) -> None:
    """Each bank's node config caps its epsilon (securefl.dp.bank_budget): a round that would pass
    the cap (a record cap of 1e-3, which round 0's noised statistics already pass; or any client
    cap on a run without DP, whose client-level epsilon is unbounded) is refused by every bank
    before its input leaves, so the round aborts (round 0: the run stops, nothing standardised)
    and nothing is charged."""
    from securefl.dp.bank_budget import BankBudget, BudgetCaps

    f = make_federation(tmp_path / "fed", {**RUN, "dp": dp})
    banks = {i: BankNode.from_node_config({**f.node_config(b, sim_seed=RUN["seed"]),
                                           cap: "0.001", "budget-dir": str(tmp_path / b)})
             for i, b in enumerate(f.banks)}
    srv = _server(f, tmp_path / "run")
    link = LocalLink(banks, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        if dp:
            with pytest.raises(AggregationAbortedError):
                srv.run(link, link.names())
        else:
            assert srv.run(link, link.names())["rounds_completed"] == 0
    refused = [r.getMessage() for r in caplog.records if "SFL501" in r.getMessage()]
    assert {b for b in f.banks if any(m.startswith(b) for m in refused)} == set(f.banks)
    assert all(f"round {0 if dp else 1}" in m for m in refused), refused
    for b in f.banks:
        assert BankBudget(tmp_path / b, b, BudgetCaps()).spent() == {"record": 0.0, "client": 0.0}


def test_a_bank_over_its_round_byte_limit_is_refused(fed: Fed, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A bank that sends its round-1 masked input three times (each copy valid, under the
    per-message limit) goes over the bytes the round's plan allows one bank
    (protocol.secagg.limits): the server refuses it (ByteLimitError, SFL308) before its machine
    sees a copy; the run directory verifies."""
    from securefl.audit.verify import verify_run_dir
    from securefl.protocol.messages import MaskedInput, decode_message

    bank = fed.banks[1]

    class Flooder(BankNode):
        def _step(self, *args: Any, **kwargs: Any) -> Any:
            out = super()._step(*args, **kwargs)
            if any(i.round >= 1 and isinstance(decode_message(i.data), MaskedInput) for i in out):
                return out * 3
            return out

    node = Flooder(**vars(BankNode.from_node_config(fed.node_config(bank, RUN["seed"]))))
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(_banks(fed, **{bank: node}), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    assert srv.refused[bank].startswith("SFL308")
    assert any("SFL308" in r.getMessage() and "limit of" in r.getMessage()
               for r in caplog.records)
    verify_run_dir(tmp_path / "run")
    # its first copy is in the masked sum and it signs nothing more: the round aborts, typed;
    # the round engine scores the unchanged model on the server's test file, as securefl run does
    [h] = res["history"]
    assert (h["round"], h["aborted"], h["epsilon"]) == (1, "SFL310", {})
    assert bank in h["participants"] and h["error"]  # error: the message, aborted: its code
    assert 0.0 < h["metrics"]["roc_auc"] < 1.0


def test_a_server_that_floods_a_bank_across_messages_is_refused_by_its_round_limit(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server sends one bank a round-1 key roster of twelve times the honest entries (each
    entry valid, the payload under the per-message limit). The bank keeps the round's server
    messages in its sealed node state and counts them: this one would take it past the plan's
    per-round limit (protocol.secagg.limits, from_server), so it is refused before it is decoded
    (ByteLimitError, SFL308, logged by the bank); the bank is a dropout at the share stage, the
    round commits over the others and the run directory verifies."""
    import msgspec

    from securefl.audit.verify import verify_run_dir
    from securefl.protocol.messages import KeyRoster, decode_message, encode_message

    victim = fed.banks[2]

    def flood(item: Any) -> Any:
        roster = decode_message(item.data)
        if not isinstance(roster, KeyRoster):
            return item
        big = KeyRoster(session_id=roster.session_id, round=roster.round,
                        entries=list(roster.entries) * 12)
        return msgspec.structs.replace(item, data=encode_message(big))

    class Flooding(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if round_ == 1 and victim in payloads:
                p = payloads[victim]
                payloads = {**payloads, victim: msgspec.structs.replace(
                    p, protocol=[flood(i) if i.round == 1 else i for i in p.protocol])}
            return super()._trip(ex, round_, stage, payloads)

    srv = Flooding(ServerSettings.load(fed.server_file(tmp_path / "run")))
    link = LocalLink(_banks(fed), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        res = srv.run(link, link.names())
    refusals = [r.getMessage() for r in caplog.records if "SFL308" in r.getMessage()]
    assert refusals and all(victim in m and "limit of" in m for m in refusals)
    (rep,) = res["history"]
    assert res["rounds_completed"] == 1 and rep["dropouts"] == {victim: "share"}
    assert victim not in rep["survivors"]
    verify_run_dir(tmp_path / "run")


def test_a_deployment_with_a_data_schema_pinned_in_the_manifest(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    """The manifest (version 3) pins the data schema's digest: banks that encode their table with
    that schema run the round; a bank without the schema, or with another one, refuses
    (SchemaPinError, SFL202) and is a dropout (the two others still meet the threshold)."""
    from securefl.config import RunConfig
    from securefl.data.schema import DataSchema, draft_schema, dumps_toml, read_cells, schema_digest
    from securefl.federation import ProtocolParams

    probe = make_federation(tmp_path / "probe", RUN)
    cells, _ = read_cells(probe.data[probe.banks[0]])
    schema = draft_schema(cells, label="default")
    path = tmp_path / "schema.toml"
    path.write_text(dumps_toml(schema))
    other = tmp_path / "other.toml"
    other.write_text(dumps_toml(DataSchema(**{**{k: getattr(schema, k) for k in
                                                  DataSchema.__struct_fields__},
                                               "min_category_count": schema.min_category_count
                                               + 1})))
    f = make_federation(tmp_path / "fed", RUN,
                        params=ProtocolParams(aggregation="secagg", threshold=2,
                                              clip_norm=RunConfig().clip_norm,
                                              noise_multiplier=RunConfig().noise_multiplier,
                                              data_schema=schema_digest(schema)))

    def banks(schemas: dict[str, Path | None]) -> dict[int, BankNode]:
        return {i: BankNode.from_node_config({**f.node_config(b, sim_seed=RUN["seed"]),
                                              **({"schema": str(schemas[b])} if schemas[b]
                                                 else {})})
                for i, b in enumerate(f.banks)}

    def server(run_dir: Path) -> DeployServer:  # round 0's public ranges: the pinned schema's
        return DeployServer(ServerSettings.load(f.server_file(run_dir, schema=str(path))))

    with pytest.raises(ConfigError, match="pins a data schema and the server has none"):
        _server(f, tmp_path / "run").run(LocalLink({}, f.manifest.name), {})
    srv = server(tmp_path / "run")
    link = LocalLink(banks(dict.fromkeys(f.banks, path)), srv.fed.digest)
    res = srv.run(link, link.names())
    assert res["rounds_completed"] == 1
    # the server encodes its evaluation table with the same schema (no pre-encoded copy needed;
    # another width would fail its standardisation): one DP round scores above chance (0.566
    # measured)
    assert res["final_metrics"]["roc_auc"] > 0.52, res["final_metrics"]
    for bad in (None, other):
        # a fresh deployment each time: the banks' round-0 survivor record of the run above would
        # otherwise (rightly) refuse a round 0 over the smaller set (spec 12.1, S6-5)
        forget_round0()
        srv = server(tmp_path / f"run-{bad is None}")
        link = LocalLink(banks({**dict.fromkeys(f.banks, path), f.banks[0]: bad}), srv.fed.digest)
        with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
            caplog.clear()
            res = srv.run(link, link.names())
        assert f.banks[0] in res["history"][-1]["dropouts"]
        assert f.banks[0] not in res["history"][-1]["survivors"]
        assert any("SFL202" in r.getMessage() and f.banks[0] in r.getMessage()
                   for r in caplog.records)
