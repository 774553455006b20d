"""CKKS aggregation in a deployment (server, banks and the key holder as separate nodes) over the
in-process link: same envelopes, state bytes and encodings as over Flower. Checks agreement with
``securefl run --aggregation ckks`` under the same seed, dropouts at the reveal, the audit log,
and the key holder's refusals (a second release of a round, also after a restart; a key that is
not the manifest's; a public context signed by someone else)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy_helpers import KEY_HOLDER, Fed, final_weights, make_federation, write_key

from securefl.crypto.signing import SigningKey
from securefl.deploy.ckks import KeyHolderNode, public_context
from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.server import DeployServer, ServerSettings, trips_for
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    SignatureError,
)
from securefl.protocol.ckks import DecryptionRefusedError
from securefl.transport.flower import Envelope

RUN: dict[str, Any] = {"rounds": 1, "seed": 3, "aggregation": "ckks"}
KH_NODE = 99


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_federation(tmp_path_factory.mktemp("fed"), RUN)


class Recording:
    """A node whose every (envelope, state) is kept, to replay messages later."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.member = node.member
        self.seen: list[tuple[Envelope, bytes | None]] = []

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        self.seen.append((env, state))
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        return out


def _nodes(f: Fed, kh: Any = None, usage: Path | None = None) -> dict[int, Any]:
    nodes: dict[int, Any] = {i: BankNode.from_node_config(f.node_config(b, sim_seed=RUN["seed"]))
                             for i, b in enumerate(f.banks)}
    cfg = f.key_holder_config(sim_seed=RUN["seed"])
    if usage is not None:
        cfg["usage-file"] = str(usage)
    nodes[KH_NODE] = kh if kh is not None else KeyHolderNode.from_node_config(cfg)
    return nodes


def _server(f: Fed, run_dir: Path) -> DeployServer:
    return DeployServer(ServerSettings.load(f.server_file(run_dir)))


def _simulate(tmp: Path, dropouts: dict[int, str]) -> Any:
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    class Replay(Engine):  # the simulation, told who dropped where
        def _simulated_dropouts(self, round_: int, participants: tuple[int, ...],
                                stages: tuple[str, ...]) -> dict[int, str]:
            return dict(dropouts)

    return Replay(RunConfig(**RUN, out=str(tmp))).run()


def test_ckks_deployment_matches_simulation_verifies_and_refuses_a_replay(
        fed: Fed, tmp_path: Path) -> None:
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir

    usage = tmp_path / "kh-usage.json"
    kh = Recording(KeyHolderNode.from_node_config(
        {**fed.key_holder_config(sim_seed=RUN["seed"]), "usage-file": str(usage)}))
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(_nodes(fed, kh=kh), srv.fed.digest)
    res = srv.run(link, link.names())
    assert link.trips == trips_for(1, "ckks") == 1 + 4 * 2
    assert [t["stage"] for t in res["trips"]] == ["hello"] + ["commit", "reveal", "verify",
                                                              "decrypt"] * 2
    # the key holder only ever received the hello and one decryption request per round
    assert [e.stage for e, _ in kh.seen] == ["hello", "decrypt", "decrypt"]
    verify_run_dir(tmp_path / "run")
    rec = RunStore.open(tmp_path / "run").records[1]
    assert rec.aggregation == "ckks" and rec.status == "committed"
    assert sorted(rec.survivors) == sorted(fed.banks) and rec.dropouts == {}
    assert sorted(rec.input_digests) == sorted(fed.banks)

    # the same seed in `securefl run --aggregation ckks`: the same DP noise and flooding streams;
    # only CKKS's own encryption error differs (|error| ~ 2^-40, far below the release grid)
    sim = _simulate(tmp_path / "sim", {})
    got, want = final_weights(tmp_path / "run"), final_weights(tmp_path / "sim")
    assert got.shape == want.shape and np.max(np.abs(got - want)) < 1e-6
    for k, v in sim.final_metrics.items():
        assert abs(res["final_metrics"][k] - v) < 1e-6, k

    # usage file: both rounds released; the budget counts decrypted ciphertexts, one per 4096
    # slots (N = 8192): one for round 0's moment vector, ceil(d / 4096) for the model
    used = json.loads(usage.read_text())
    assert len(used["decrypted"]) == 2
    assert used["queries_used"] == 1 + math.ceil(got.size / 4096)
    assert usage.stat().st_mode & 0o777 == 0o600
    # replaying round 1's decryption request to a restarted key holder: refused, nothing released
    env, state = kh.seen[-1]
    restarted = KeyHolderNode.from_node_config(
        {**fed.key_holder_config(sim_seed=RUN["seed"]), "usage-file": str(usage)})
    with pytest.raises(DecryptionRefusedError, match="already decrypted"):
        restarted.handle(env, state)
    assert json.loads(usage.read_text()) == used


def test_ckks_deployment_with_a_dropout_at_the_reveal(fed: Fed, tmp_path: Path) -> None:
    from securefl.audit.store import RunStore

    srv = _server(fed, tmp_path / "run")
    # trip 1 hello, 2-5 round 0, 6 commit of round 1, 7 reveal: bank 2 dies there
    link = LocalLink(_nodes(fed, usage=tmp_path / "usage.json"), srv.fed.digest,
                     kill=lambda trip, nid: trip >= 7 and nid == 2)
    res = srv.run(link, link.names())
    rec = RunStore.open(tmp_path / "run").records[1]
    assert rec.status == "committed"
    assert rec.dropouts == {fed.banks[2]: "reveal"}
    assert sorted(rec.survivors) == sorted(fed.banks[:2])
    sim = _simulate(tmp_path / "sim", {2: "reveal"})
    for k, v in sim.final_metrics.items():
        assert abs(res["final_metrics"][k] - v) < 1e-6, k


def test_key_holder_with_a_key_outside_the_manifest_is_refused(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rogue = write_key(tmp_path / "rogue.key", SigningKey.generate())
    kh = KeyHolderNode.from_node_config({**fed.key_holder_config(), "key": str(rogue),
                                         "usage-file": str(tmp_path / "u.json")})
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(_nodes(fed, kh=kh), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="did not publish its public context"):
        srv.run(link, link.names())
    assert any("SFL4" in r.getMessage() and "identity key" in r.getMessage()
               for r in caplog.records)


def test_a_public_context_not_signed_by_the_manifests_key_holder_is_refused(fed: Fed) -> None:
    from securefl.crypto.secret import Secret
    from securefl.he.context import load_secret_context
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.keyholder import KEY_FILES
    from securefl.protocol import wire
    from securefl.protocol.ckks import CKKSKeyHolder

    assert fed.ckks_dir is not None
    secret = load_secret_context(Secret((fed.ckks_dir / KEY_FILES["secret_context"]).read_bytes()),
                                 DEFAULT_PARAMS)
    fed_obj = BankNode.from_node_config(fed.node_config(fed.banks[0])).federation()
    forged = CKKSKeyHolder(SigningKey.generate(), secret, {}, min_clients=1, verifiers=1)
    with pytest.raises(SignatureError):
        public_context(fed_obj, wire.encode(forged.public_context_message()))
    genuine = CKKSKeyHolder(SigningKey.from_pem(fed.keys[KEY_HOLDER].read_bytes()), secret, {},
                            min_clients=1, verifiers=1)
    public_context(fed_obj, wire.encode(genuine.public_context_message()))  # accepted


def test_key_holder_node_config_errors(fed: Fed, tmp_path: Path) -> None:
    from securefl.keyholder import KEY_FILES

    with pytest.raises(ConfigError, match="lacks 'ckks-keys'"):
        KeyHolderNode.from_node_config({k: v for k, v in fed.key_holder_config().items()
                                        if k != "ckks-keys"})
    with pytest.raises(ConfigError, match="verifiers must be >= 1"):
        KeyHolderNode.from_node_config({**fed.key_holder_config(), "verifiers": 0})
    # a secret context readable by others is refused before it is parsed
    assert fed.ckks_dir is not None
    exposed = tmp_path / "exposed"
    exposed.mkdir()
    secret = exposed / KEY_FILES["secret_context"]
    secret.write_bytes((fed.ckks_dir / KEY_FILES["secret_context"]).read_bytes())
    secret.chmod(0o644)
    node = KeyHolderNode.from_node_config({**fed.key_holder_config(), "ckks-keys": str(exposed)})
    fed_obj = node.federation()
    with pytest.raises(ConfigError, match="permissions 644"):
        node.load_holder(fed_obj, node.identity(fed_obj), 2)


def test_plan_weaker_than_the_key_holders_policy_is_refused(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kh = KeyHolderNode.from_node_config({**fed.key_holder_config(), "verifiers": 3,
                                         "usage-file": str(tmp_path / "u.json")})
    srv = _server(fed, tmp_path / "run")  # plans 2 verifiers
    link = LocalLink(_nodes(fed, kh=kh), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="did not publish its public context"):
        srv.run(link, link.names())
    assert any("requires at least 3 verifiers" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "u.json").exists()  # nothing was decrypted
