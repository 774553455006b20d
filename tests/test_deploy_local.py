"""The deployment's server and bank handlers over the in-process link (same envelopes, state
bytes and encodings as over Flower): equivalence with ``securefl run``'s simulation, dropouts,
the round-trip count, and the refusals (typed and logged)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import SERVER, Fed, make_federation, write_key
from hypothesis import given, settings
from hypothesis import strategies as st

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
    verify_run_dir(tmp_path / "run")
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
    assert all(bank not in h["participants"] for h in res["history"])
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
    assert all(bank not in h["participants"] for h in res["history"])
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
    # a finished run is not resumed
    with pytest.raises(ConfigError, match="finished"):
        DeployServer(ServerSettings(**{**vars(cfg), "resume": True})).run(
            LocalLink(_banks(f), again.fed.digest), link.names())


def test_regression_deployment_standardises_the_target_federatedly(tmp_path: Path) -> None:
    """Regression (LIMIT_BAL): round 0 also sums the moments of target / 2^k (k the largest power
    of two the banks report), the banks train on the standardised target and the server reports
    metrics in label units. securefl run sums the target moments outside SecAgg, so the two runs
    differ only by that sum's quantization: R^2 and RMSE must agree closely."""
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    run = {"rounds": 2, "seed": 3, "label": "LIMIT_BAL", "task": "regression"}
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
    the session's first plan: the banks refuse the changed set."""
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
    assert len(refusals) == 3 and all("SFL307" in m and "fixed for the session" in m
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
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=12))
def test_session_counters_are_accepted_once_and_in_order(counters: list[int]) -> None:
    """A bank accepts a session counter only above every counter it accepted before and at most
    MAX_COUNTER_STEP above it (red-team finding H1: a free choice of a larger counter lets the
    server grind the session id), also after a restart (a fresh SessionCounter reading the same
    state directory)."""
    import tempfile

    from securefl.deploy.common import MAX_COUNTER_STEP, ServerFaultError, SessionCounter

    with tempfile.TemporaryDirectory() as d:
        highest = 0
        for c in counters:
            counter = SessionCounter(Path(d) / "state", "ab" * 32)  # a restarted node each time
            if highest < c <= highest + MAX_COUNTER_STEP:
                counter.accept(c)
                highest = c
            elif c <= highest:
                with pytest.raises(ServerFaultError, match="not above"):
                    counter.accept(c)
            else:
                with pytest.raises(ServerFaultError, match="grind the session id"):
                    counter.accept(c)
        assert SessionCounter(Path(d) / "state", "ab" * 32).next() == highest + 1


def test_a_counter_jump_the_server_could_grind_is_refused(tmp_path: Path) -> None:
    """Red-team finding H1: the server searched counters offline for a session id whose draw it
    liked (14 tries for 5 banks) and jumped to it; a bank accepts only a small step."""
    from securefl.deploy.common import MAX_COUNTER_STEP, ServerFaultError, SessionCounter

    counter = SessionCounter(tmp_path / "state", "cd" * 32)
    counter.accept(1)
    with pytest.raises(ServerFaultError, match="grind"):
        counter.accept(1_000_013)
    with pytest.raises(ServerFaultError, match="grind"):
        counter.accept(2**64 - 1)  # would lock the bank out of the manifest for good
    counter.accept(1 + MAX_COUNTER_STEP)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=12).flatmap(lambda n: st.tuples(
    st.just(n), st.sets(st.integers(min_value=0, max_value=n - 1), max_size=n - 2),
    st.integers(min_value=2, max_value=n), st.integers(min_value=0, max_value=2**20),
    st.binary(min_size=16, max_size=16))))
def test_the_participant_draw_is_the_specified_public_function(
        case: tuple[int, set[int], int, int, bytes]) -> None:
    """round_participants is exactly the spec's algorithm (recomputed here with hashlib): the
    first k of the non-excluded banks ranked by SHA-256(domain | session | round | name), in
    manifest order."""
    import hashlib

    from securefl.deploy.common import round_participants

    n, excluded_ids, k, round_, session = case
    banks = [f"bank{i}" for i in range(n)]
    excluded = [banks[i] for i in sorted(excluded_ids)]
    dom = b"securefl/deploy/participants/v1"
    ranked = sorted((hashlib.sha256(len(dom).to_bytes(2, "big") + dom + session
                                    + round_.to_bytes(8, "big") + b.encode()).digest(), b)
                    for b in banks if b not in excluded)
    chosen = {b for _, b in ranked[:k]}
    got = round_participants(session, round_, banks, excluded, k)
    assert got == [b for b in banks if b in chosen]
    assert len(got) == min(k, n - len(excluded))


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


def test_a_bank_declared_silent_stays_silent_for_the_session(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server may declare banks silent (the draw then skips them); a bank it declared silent
    cannot come back later in the session, so the server cannot swap banks in and out to choose
    the graph: the banks that saw it excluded refuse the plan that brings it back."""
    run = {"rounds": 2, "seed": 3}
    f = make_federation(tmp_path / "fed", run)
    back = f.banks[2]

    class Swapping(DeployServer):
        def _next_round(self, rs: Any, r: int) -> Any:
            if r == 1:
                rs.silent.add(back)  # declared silent in round 1 ...
            if r == 2:
                rs.silent.discard(back)  # ... and back in round 2
            return super()._next_round(rs, r)

    res, refusals = _plan_refused(Swapping, f, tmp_path, caplog, 2)
    assert len(refusals) == 2 and all("SFL307" in m and "declared silent earlier" in m
                                      for m in refusals)
    assert [h.get("aborted") for h in res["history"]] == [None, "SFL310"]


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
