"""The deployment's server and bank handlers over the in-process link (same envelopes, state
bytes and encodings as over Flower): equivalence with ``securefl run``'s simulation, dropouts,
the round-trip count, and the refusals (typed and logged)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import SERVER, Fed, make_federation, write_key

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
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError):
        srv.run(link, link.names())
    assert srv.refused[bank].startswith("SFL401")
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


def test_node_state_is_sealed_with_a_node_local_key(fed: Fed, tmp_path: Path) -> None:
    """The state Flower keeps for a bank between messages is AES-GCM ciphertext under a 0600 key
    file on the bank's machine, bound to federation, member and session: a modified state, one
    replayed into another session, or one opened with another node's key is refused."""
    import dataclasses

    import msgspec

    from securefl.deploy.client import NodeMemo
    from securefl.errors import ConfigError, IntegrityError, MessageError
    from securefl.protocol import wire

    nodes = _banks(fed)
    rec = _Recording(nodes[0])
    nodes[0] = rec  # type: ignore[assignment]
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(nodes, srv.fed.digest)
    srv.run(link, link.names())
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
            import msgspec

            from securefl.deploy.messages import START_DOMAIN
            from securefl.protocol import wire

            participants = rs.banks[:2]
            start, _ = super()._next_round(rs, r)[1:]
            start = msgspec.structs.replace(start, participants=participants, threshold=2,
                                            min_survivors=2,
                                            weights={b: rs.weights[b] for b in participants})
            return participants, start, self._sign(wire.encode(start), START_DOMAIN, r)

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


def test_client_sampling_matches_the_simulation(tmp_path: Path) -> None:
    """clients_per_round < 1: each training round takes max(threshold, round(q n)) banks; with the
    simulation's seed the deployment draws the same banks as `securefl run` and ends in the same
    model; the ledger records fixed-size sampling (no amplification claimed)."""
    import json

    from securefl.config import RunConfig
    from securefl.runtime import Engine, sample_participants

    run = {"rounds": 3, "seed": 3, "clients_per_round": 0.6}
    f = make_federation(tmp_path / "fed", run)
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink({i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
                      for i, b in enumerate(f.banks)}, srv.fed.digest)
    res = srv.run(link, link.names())
    got = [h["participants"] for h in res["history"]]
    # the draw, recomputed from its definition: 2 of the 3 banks per round, keyed by (seed, round)
    want = [[f.banks[i] for i in sample_participants(3, r, 3, 0.6)] for r in (1, 2, 3)]
    assert got == want and all(len(p) == 2 for p in got)
    assert len({tuple(p) for p in got}) > 1  # the sample changes between rounds
    sim = Engine(RunConfig(**run, out=str(tmp_path / "sim"))).run()
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


def test_a_model_tailored_to_one_bank_aborts_the_round_before_unmasking(
        fed: Fed, tmp_path: Path) -> None:
    """Pasquini et al. (CCS 2022): a server that sends one bank a different global model can
    isolate its update even through perfect secure aggregation. The model each bank trained from is
    the input binding it signs with the survivor set, so no bank reveals a share and the round
    aborts; the run directory still verifies."""
    import msgspec
    import numpy as np

    from securefl.deploy.messages import MODEL_DOMAIN, GlobalModel
    from securefl.protocol import wire

    class Tailoring(DeployServer):
        def _trip(self, ex: Any, round_: int, stage: str, payloads: Any) -> dict[str, Any]:
            if round_ == 1 and stage == "share":
                victim = sorted(payloads)[0]
                p = payloads[victim]
                if p.model is not None:
                    gm = wire.decode(p.model.body, GlobalModel)
                    w = np.frombuffer(gm.weights, dtype="<f8").copy()
                    w[0] += 1.0
                    gm = msgspec.structs.replace(gm, weights=w.astype("<f8").tobytes())
                    payloads = {**payloads, victim: msgspec.structs.replace(
                        p, model=self._sign(wire.encode(gm), MODEL_DOMAIN, round_))}
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
