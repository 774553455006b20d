"""CKKS aggregation in a deployment (server, banks and the key holder as separate nodes) over the
in-process link: same envelopes, state bytes and encodings as over Flower. Checks agreement with
``securefl run --aggregation ckks`` under the same seed, dropouts at the reveal, the audit log,
and the key holder's refusals (a second release of a round, also after a restart; a key that is
not the manifest's; a public context signed by someone else)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy_helpers import KEY_HOLDER, Fed, final_weights, make_federation, write_key
from result_helpers import check_result_json

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
    assert link.trips == trips_for(1, "ckks") == 2 + 4 * 2
    assert [t["stage"] for t in res["trips"]] == ["hello", "key"] + ["commit", "reveal", "verify",
                                                                     "decrypt"] * 2
    # the key holder only ever received the hello, round 0's key request and one decryption
    # request per round (round 0's carried the key request of round 1)
    assert [e.stage for e, _ in kh.seen] == ["hello", "key", "decrypt", "decrypt"]
    verify_run_dir(tmp_path / "run")
    assert check_result_json(tmp_path / "run") == res  # the one result.json schema
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

    # usage file: both rounds released and keyed, one key per round
    used = json.loads(usage.read_text())
    session = res["session_id"]
    assert sorted(map(tuple, used["decrypted"])) == [(session, 0), (session, 1)]
    assert used["keyed"] == {session: 1} and used["version"] == 2
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
    # trip 1 hello, 2 round 0's key, 3-6 round 0, 7 commit of round 1, 8 reveal: bank 2 dies
    link = LocalLink(_nodes(fed, usage=tmp_path / "usage.json"), srv.fed.digest,
                     kill=lambda trip, nid: trip >= 8 and nid == 2)
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


def test_a_public_context_not_signed_by_the_manifests_key_holder_or_for_this_round_is_refused(
        fed: Fed) -> None:
    from securefl.deploy.ckks import bank_round_context
    from securefl.deploy.messages import ProtocolItem
    from securefl.errors import RemoteProtocolError
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.protocol import wire
    from securefl.protocol.ckks import CKKSKeyHolder

    fed_obj = BankNode.from_node_config(fed.node_config(fed.banks[0])).federation()
    session, other = bytes(range(16)), bytes(16)
    forged = CKKSKeyHolder(SigningKey.generate(), None, {}, params=DEFAULT_PARAMS,
                           min_clients=1, verifiers=1)
    with pytest.raises(SignatureError):
        public_context(fed_obj, wire.encode(forged.round_context(session, 1)), session, 1)
    genuine = CKKSKeyHolder(SigningKey.from_pem(fed.keys[KEY_HOLDER].read_bytes()), None, {},
                            params=DEFAULT_PARAMS, min_clients=1, verifiers=1)
    plan = bytes([7]) * 32  # the digest of the session's signed hello (S7b-6)
    r1 = wire.encode(genuine.round_context(session, 1, plan))
    public_context(fed_obj, r1, session, 1, plan)  # accepted for exactly (session, 1)
    assert bank_round_context(fed_obj, ProtocolItem(round=1, data=r1), session, plan) == r1
    # a bank refuses it for another round (a replay into round 2) or another session
    for s_, r_ in ((session, 2), (other, 1), (session, 0)):
        with pytest.raises(RemoteProtocolError, match="not the key for this round"):
            bank_round_context(fed_obj, ProtocolItem(round=r_, data=r1), s_, plan)
    # and a long-lived key (no session, no round) is no round's key
    long_lived = CKKSKeyHolder(SigningKey.from_pem(fed.keys[KEY_HOLDER].read_bytes()),
                               _secret(), {}, min_clients=1, verifiers=1)
    with pytest.raises(RemoteProtocolError, match="not the key for this round"):
        public_context(fed_obj, wire.encode(long_lived.public_context_message()), session, 1)


def _secret() -> Any:
    from securefl.he.context import generate_context
    from securefl.he.params import DEFAULT_PARAMS

    return generate_context(DEFAULT_PARAMS)


def test_key_holder_node_config_errors(fed: Fed, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lacks 'manifest'"):
        KeyHolderNode.from_node_config({k: v for k, v in fed.key_holder_config().items()
                                        if k != "manifest"})
    with pytest.raises(ConfigError, match="verifiers must be >= 1"):
        KeyHolderNode.from_node_config({**fed.key_holder_config(), "verifiers": 0})
    # without ckks-keys the usage file sits beside the identity key
    node = KeyHolderNode.from_node_config({k: v for k, v in fed.key_holder_config().items()
                                           if k != "ckks-keys"})
    assert node.usage_path == fed.keys[KEY_HOLDER].with_name(
        fed.keys[KEY_HOLDER].name + ".ckks-usage.json")
    bad = tmp_path / "usage.json"
    bad.write_text('{"version": 7, "decrypted": []}')
    with pytest.raises(ConfigError, match="unknown usage file version"):
        KeyHolderNode.from_node_config({**fed.key_holder_config(),
                                        "usage-file": str(bad)}).read_usage()


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


# --- a fresh key per round in the key holder node ---------------------------------------------------
def _payload(env: Envelope) -> Any:
    from securefl.deploy.messages import decode_server

    return decode_server(env.payload)


def _with_payload(env: Envelope, payload: Any) -> Envelope:
    import msgspec

    from securefl.protocol import wire

    return msgspec.structs.replace(env, payload=wire.encode(payload))


class ReplayingServer:
    """A bank's node behind a malicious server: round 1's commit trip carries round 0's public
    context (as the server saw it in round 0) in place of round 1's."""

    def __init__(self, node: Any, seen: dict[int, bytes]) -> None:
        self.node, self.member, self.seen = node, node.member, seen

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        import msgspec

        if env.stage == "commit":
            msg = _payload(env)
            ctx = [i for i in msg.protocol if i.round == env.round]
            self.seen.setdefault(env.round, ctx[0].data)
            if env.round == 1:
                replayed = [msgspec.structs.replace(i, data=self.seen[0]) for i in ctx]
                env = _with_payload(env, msgspec.structs.replace(msg, protocol=replayed))
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        return out


def test_banks_refuse_a_public_context_replayed_from_an_earlier_round(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from securefl.audit.store import RunStore

    seen: dict[int, bytes] = {}
    nodes = _nodes(fed, usage=tmp_path / "usage.json")
    nodes = {nid: ReplayingServer(n, seen) if nid != KH_NODE else n for nid, n in nodes.items()}
    srv = _server(fed, tmp_path / "run")
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        srv.run(link, link.names())
    store = RunStore.open(tmp_path / "run")
    assert store.records[1].status == "aborted"  # no bank encrypted under round 0's key
    refusals = [r.getMessage() for r in caplog.records
                if "refused round 1 stage commit" in r.getMessage()]
    assert len(refusals) == len(fed.banks)
    assert all("not the key for this round" in m for m in refusals)
    used = json.loads((tmp_path / "usage.json").read_text())
    assert [r for _, r in used["decrypted"]] == [0]  # round 1 was never decrypted


class KeyHolderSpy:
    """The key holder's node, with what a leak would expose: every round key its sealed state
    held (read with the node's own state key), the contexts it published, and its state after
    each message. ``lose_state_at`` (stage, round): that message finds the node restarted with
    its Flower node state lost."""

    def __init__(self, node: KeyHolderNode, lose_state_at: tuple[str, int] | None = None) -> None:
        self.node, self.member, self.lose = node, node.member, lose_state_at
        self.keys: dict[int, Any] = {}
        self.held: list[tuple[str, int, list[int]]] = []
        self.contexts: dict[int, Any] = {}
        self.envs: list[Envelope] = []

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        from securefl.crypto.aead import open_sealed
        from securefl.crypto.secret import Secret
        from securefl.deploy.ckks import KeyHolderMemo, contexts_in
        from securefl.deploy.messages import decode_client
        from securefl.he.context import load_secret_context
        from securefl.he.params import DEFAULT_PARAMS
        from securefl.protocol import wire
        from securefl.protocol.ckks_messages import SignedPublicContext

        self.envs.append(env)
        if self.lose == (env.stage, env.round):
            state = None
        reply, new = self.node.handle(env, state)
        memo = wire.decode(open_sealed(self.node._state_key(), new,
                                       aad=self.node._state_context(env)), KeyHolderMemo)
        self.held.append((env.stage, env.round, sorted(memo.keys)))
        for r, k in memo.keys.items():
            self.keys[r] = load_secret_context(Secret(k.secret), DEFAULT_PARAMS)
        for r, data in contexts_in(decode_client(reply)).items():
            self.contexts[r] = wire.decode(data, SignedPublicContext)
        return reply, new


class BankSpy:
    """A bank's node whose replies are kept (what the server sees: the ciphertexts it reveals)."""

    def __init__(self, node: Any) -> None:
        self.node, self.member = node, node.member
        self.replies: dict[tuple[str, int], bytes] = {}

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        self.replies[(env.stage, env.round)] = out[0]
        return out

    def ciphertext(self, round_: int) -> Any:
        from securefl.deploy.messages import decode_client
        from securefl.protocol import wire
        from securefl.protocol.ckks_messages import Contribution

        items = decode_client(self.replies[("reveal", round_)]).protocol
        return wire.decode(items[0].data, Contribution)


@pytest.mark.slow
def test_round_keys_in_the_key_holder_node_leak_one_round_and_survive_a_restart(
        fed: Fed, tmp_path: Path) -> None:
    """Three rounds (0, 1, 2). The key holder makes each round's key, keeps it sealed in its node
    state and erases it at the release. Its node restarts with the node state lost before round
    1's decryption: round 1 (its key lost) aborts, round 2 gets a new key and commits, and round
    1's key is never made again. A leaked round key (read out of the sealed state, as a
    malformed ciphertext could extract it) opens its own round's ciphertexts only. (~40 s)"""
    import dataclasses

    import msgspec

    from securefl.audit import layout as L
    from securefl.audit.store import RunStore
    from securefl.deploy.ckks import key_request
    from securefl.errors import StateError
    from securefl.he.vectors import decrypt_chunks

    two = dataclasses.replace(fed, run={**RUN, "rounds": 2})
    usage = tmp_path / "usage.json"
    kh = KeyHolderSpy(KeyHolderNode.from_node_config(
        {**fed.key_holder_config(sim_seed=RUN["seed"]), "usage-file": str(usage)}),
        lose_state_at=("decrypt", 1))
    nodes = _nodes(fed, kh=kh)
    spies = {nid: BankSpy(n) for nid, n in nodes.items() if nid != KH_NODE}
    srv = _server(two, tmp_path / "run")
    link = LocalLink({**nodes, **spies}, srv.fed.digest)
    res = srv.run(link, link.names())
    session = bytes.fromhex(res["session_id"])
    assert [(t["stage"], t["round"]) for t in res["trips"] if t["stage"] in ("key", "decrypt")] \
        == [("key", 0), ("decrypt", 0), ("decrypt", 1), ("key", 2), ("decrypt", 2)]
    store = RunStore.open(tmp_path / "run")
    assert [store.records[r].status for r in (1, 2)] == ["aborted", "committed"]

    # one fresh key per round, each signed for its own (session, round); never one reused
    assert sorted(kh.contexts) == [0, 1, 2]
    assert len({c.key_id for c in kh.contexts.values()}) == 3
    assert all((c.session_id, c.round) == (session, r) for r, c in kh.contexts.items())
    # the sealed state holds at most the waiting round key; a release erases it
    assert ("decrypt", 0, [1]) in kh.held and ("decrypt", 2, []) in kh.held
    used = json.loads(usage.read_text())
    assert used["keyed"] == {session.hex(): 2}
    assert sorted(r for _, r in used["decrypted"]) == [0, 2]
    # the restarted key holder never makes round 1's key again
    env = kh.envs[-1]
    again = msgspec.structs.replace(_payload(env), protocol=[key_request(session, 1)])
    with pytest.raises(StateError, match="a key is made once per round"):
        kh.node.handle(_with_payload(env, again), None)

    # round 0's key, leaked, opens round 0: the banks' ciphertexts decrypt to the released sum
    leaked = kh.keys[0]
    banks = list(spies.values())
    n0 = banks[0].ciphertext(0).num_values
    opened = sum(decrypt_chunks(leaked, b.ciphertext(0).chunks, n0) for b in banks)
    # (with DP on the banks sum noised moments in the public ranges: the server unscales them)
    from securefl.data.encoding import embedded_inputs
    from securefl.data.standardize import unscale_moments

    opened = unscale_moments(opened, embedded_inputs()[0])
    facts = json.loads(L.read_bytes(tmp_path / "run", L.FEDERATION))["members"]
    released = np.asarray(facts["standardisation"]["moments_total"])
    assert np.max(np.abs(opened - released)) < 1e-3 * max(1.0, float(np.max(np.abs(released))))
    # ... but not round 2: under round 0's key a round-2 ciphertext decrypts to noise, while
    # round 2's own key (erased after its release; read here before that) gives the update
    ct2 = banks[0].ciphertext(2)
    honest = decrypt_chunks(kh.keys[2], ct2.chunks, ct2.num_values)
    wrong = decrypt_chunks(leaked, ct2.chunks, ct2.num_values)
    assert np.max(np.abs(honest)) < 10
    assert np.max(np.abs(wrong - honest)) > 1e6
