"""Red team s8 (rt6): a re-check of the S7b-6 fix (the CKKS key holder binds the session's one
signed Hello into every round key; banks refuse a key bound to another Hello).

The Hello binding holds, but the Hello is not the whole plan a CKKS bank acts on. Each round's
plan (a deployment's signed RoundStart, the Flower path's signed FlowerPlan) is signed by the
server PER BANK and nothing binds it across CKKS banks: SecAgg puts it in the plan digest every
advertise signature covers, the CKKS path has no such digest. A bank's Gaussian share is
``z * clip_norm / sqrt(min_survivors)`` from that per-bank plan, and a bank only refuses a clip
norm ABOVE the manifest's, so a malicious server signs the victim the manifest's clip norm C and
every other bank C * 1e-6: the others' updates and noise shares shrink to ~0 and the released sum
carries the victim's update (norm <= C) with only the victim's own noise share z C / sqrt(T)
instead of z C sqrt(s / T) -- the S7b-6 outcome through a field outside the Hello digest.

S8-1 (High): the deployment (`test_s8_1_...`); S8-1b: the same on the Flower path (in-process
Flower). Each test asserts the secure behaviour and FAILED on the code under review (f8's base).
Fixed (f8): each CKKS bank signs a round-plan digest into its commitment
(securefl.protocol.ckks.canonical.round_plan_digest: RoundSpec.plan_digest() -- model digest,
Hello digest, clip norm, threshold, noise plan, FedAvg weights -- and the signed RoundStart or
FlowerPlan body, round 0's stats ranges and groups included), the closed CommitmentSet carries
each entry's digest, and a bank reveals, a verifier co-signs and the key holder decrypts only a
set in which every entry names the same digest (the bank: its own; PlanMismatchError SFL309).
Same root cause, a smaller, data-dependent lever (the same fix closes it: round 0's RoundStart
body is in the digest; `test_s8_1_banks_given_different_round0_stats_groups_...`): round 0's per-bank
``stats_groups`` (a one-hot group claimed to the banks whose rows satisfy it and not to the victim
lowers their sensitivity sqrt(1 + 2 groups), hence their shares, below the victim's)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from deploy_helpers import SERVER, Fed, make_federation

from securefl.crypto.signing import SigningKey, sign_bound
from securefl.deploy.ckks import KeyHolderNode, noise_share_std
from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.messages import START_DOMAIN, RoundStart, Signed, decode_server
from securefl.deploy.server import DeployServer, ServerSettings
from securefl.errors import AggregationAbortedError, SecureFLError
from securefl.protocol import wire
from securefl.transport.flower import Envelope

KH_NODE = 99
#: the factor the malicious server scales every non-victim bank's signed clip norm by
SHRINK = 1e-6


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    # DP on (the default): client-level noise z > 0 in every training round
    return make_federation(tmp_path_factory.mktemp("fed"), {"rounds": 1, "seed": 3,
                                                            "aggregation": "ckks"})


def _shrunk(f: Fed, signed: Signed) -> Signed:
    """The malicious server's own RoundStart for one bank: the honest one of a training round with
    a clip norm SHRINK times the manifest's, re-signed with the server's manifest key."""
    start: RoundStart = wire.decode(signed.body, RoundStart)
    if start.task != "train":
        return signed
    body = wire.encode(msgspec.structs.replace(start, clip_norm=start.clip_norm * SHRINK))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=START_DOMAIN,
                                                  session_id=start.session, round_=start.round,
                                                  message=body))


def _ungrouped(f: Fed, signed: Signed) -> Signed:
    """The malicious server's own round-0 RoundStart for one bank: the honest one with its last
    one-hot stats group of several inputs split into single inputs (a bank accepts it: the groups
    still partition the inputs and a single input claims nothing; the bank's sensitivity
    sqrt(1 + 2 groups) and share differ from a bank that got the group), re-signed with the
    server's manifest key."""
    start: RoundStart = wire.decode(signed.body, RoundStart)
    if start.task != "moments":
        return signed
    k = max(i for i, g in enumerate(start.stats_groups) if len(g) > 1)
    split = [*start.stats_groups[:k], *[[x] for x in start.stats_groups[k]],
             *start.stats_groups[k + 1:]]
    body = wire.encode(msgspec.structs.replace(start, stats_groups=split))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=START_DOMAIN,
                                                  session_id=start.session, round_=start.round,
                                                  message=body))


class Tailoring:
    """A bank's node behind the malicious server (``shrink``: its RoundStarts are replaced by
    ``tailor``'s, by default the training RoundStart with the shrunk clip norm). Keeps every
    RoundStart the node accepted and its replies."""

    def __init__(self, f: Fed, node: Any, shrink: bool,
                 tailor: Callable[[Fed, Signed], Signed] = _shrunk) -> None:
        self.f, self.node, self.member, self.shrink = f, node, node.member, shrink
        self.tailor = tailor
        self.starts: dict[int, RoundStart] = {}
        self.replies: dict[tuple[str, int], bytes] = {}

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        msg = decode_server(env.payload)
        signed = msg.start
        if signed is not None:
            if self.shrink:
                signed = self.tailor(self.f, signed)
                msg = msgspec.structs.replace(msg, start=signed)
                env = msgspec.structs.replace(env, payload=wire.encode(msg))
            start: RoundStart = wire.decode(signed.body, RoundStart)
            self.starts[start.round] = start
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        self.replies[(env.stage, env.round)] = out[0]
        return out


def _deploy(f: Fed, tmp: Path, victim: int, caplog: pytest.LogCaptureFixture,
            tailor: Callable[[Fed, Signed], Signed] = _shrunk
            ) -> tuple[str, dict[int, Tailoring], Path]:
    srv = DeployServer(ServerSettings.load(f.server_file(tmp / "run")))
    usage = tmp / "usage.json"
    nodes: dict[int, Any] = {
        i: Tailoring(f, BankNode.from_node_config({**f.node_config(b, sim_seed=None),
                                                   "state-dir": str(tmp / "banks" / b)}),
                     shrink=victim >= 0 and i != victim, tailor=tailor)
        for i, b in enumerate(f.banks)}
    nodes[KH_NODE] = KeyHolderNode.from_node_config(
        {**f.key_holder_config(sim_seed=None), "usage-file": str(usage),
         "state-dir": str(tmp / "kh")})
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        try:
            srv.run(link, link.names())
            outcome = "finished"
        except (AggregationAbortedError, SecureFLError) as exc:
            outcome = f"aborted: {exc}"
    return outcome, nodes, usage


def _released_rounds(usage: Path) -> set[int]:
    return {int(r) for _, r in json.loads(usage.read_text())["decrypted"]}


def test_s8_1_control_the_honest_deployment_releases_round_1(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The harness without tailoring: the key holder releases round 0 and round 1 (so the
    failing test below is not vacuous). Passes today."""
    outcome, _, usage = _deploy(fed, tmp_path, -1, caplog)
    assert outcome == "finished", outcome
    assert _released_rounds(usage) == {0, 1}


def test_s8_1_banks_given_different_clip_norms_release_nothing(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """S8-1 (High). The server signs the victim the manifest's clip norm and every other bank
    one 1e-6 times smaller (allowed: a bank refuses a LARGER clip norm only). The round key is
    bound to the one Hello all of them verified, so every check passes: the others' Gaussian
    shares shrink by 1e-6 and the released round-1 sum carries the victim's update with only its
    own noise share. Secure behaviour: banks given different round plans release nothing in
    that round (the key holder never decrypts round 1). FAILS today: round 1 is released."""
    victim = 1
    outcome, nodes, usage = _deploy(fed, tmp_path, victim, caplog)
    banks = {i: n for i, n in nodes.items() if i != KH_NODE}
    # the attack's premise: every bank accepted its round-1 plan, and the others' noise shares
    # are 1e-6 of the victim's (all encrypt under the one round key bound to the one Hello)
    shares = {i: noise_share_std(n.starts[1]) for i, n in banks.items() if 1 in n.starts}
    assert shares[victim] > 0
    assert all(s <= shares[victim] * SHRINK * 1.0001 for i, s in shares.items() if i != victim)
    # secure behaviour: no round-1 release over banks that acted on different signed plans
    assert 1 not in _released_rounds(usage), (
        f"round 1 was released ({outcome}); noise std per bank {shares}: the sum carries the "
        f"victim's update with ~{shares[victim]:.3g} noise instead of "
        f"~{shares[victim] * len(shares) ** 0.5:.3g}")
    # ... because every bank refused to reveal under a set of commitments made under two plans
    assert "stage reveal: SFL309" in caplog.text, outcome


def test_s8_1_banks_given_different_round0_stats_groups_release_no_round0(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """S8-1, round 0: the server signs every bank but the victim a round-0 RoundStart with one
    one-hot stats group split up (the red team's stats_groups lever; each bank accepts its
    own). The
    round-plan digest covers
    the signed RoundStart body, so the commitment set names two plans and no bank reveals its
    round-0 moments: the key holder decrypts no round 0 (SFL309 at every bank's reveal)."""
    victim = 1
    outcome, nodes, usage = _deploy(fed, tmp_path, victim, caplog, tailor=_ungrouped)
    banks = {i: n for i, n in nodes.items() if i != KH_NODE}
    # the premise: every bank accepted its round-0 plan, the others more (smaller) groups
    assert all(0 in n.starts for n in banks.values())
    groups = len(banks[victim].starts[0].stats_groups)
    assert all(len(n.starts[0].stats_groups) > groups for i, n in banks.items() if i != victim)
    released = _released_rounds(usage) if usage.exists() else set()
    assert 0 not in released, outcome
    assert "stage reveal: SFL309" in caplog.text, outcome


def test_s8_1b_flower_banks_given_different_clip_norms_release_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """S8-1b (High, the Flower path), in-process Flower (tests/test_flower_mod.py's harness):
    the server re-signs every bank but the victim the round's FlowerPlan with the clip norm
    shrunk 1e-6 times (check_plan bounds it above only, so each bank accepts its plan and runs
    its fit). Fix under test: each bank signs the digest of the round plan it received into its
    CKKS commitment, and a bank shown a CommitmentSet naming another plan digest than its own
    refuses to reveal (PlanMismatchError SFL309): the round aborts, the key holder decrypts
    nothing and the model stays."""
    import msgspec
    from flwr.app import Array, ArrayRecord

    from securefl.flower.common import ARRAY, PLAN_DOMAIN, RECORD, FlowerPlan, decode_server
    from tests.flower_mod_helpers import SERVER as FLOWER_SERVER
    from tests.flower_mod_helpers import make_flower_federation
    from tests.test_flower_mod import (
        BANKS,
        _ckks_params,
        _flat,
        _holder_usage,
        _initial,
        _records,
        _run,
    )

    params = _ckks_params(z=1.0)
    flower_fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    key = SigningKey.from_pem(flower_fed.keys[FLOWER_SERVER].read_bytes())
    victim = BANKS[0]
    clips: dict[str, float] = {}

    def tailor(name: str, msg: Any) -> None:
        if RECORD not in msg.content.array_records:
            return
        env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
        if env.stage != "commit":
            return
        body = decode_server(env.payload)
        assert body.plan is not None
        plan: FlowerPlan = wire.decode(body.plan.body, FlowerPlan)
        if name != victim:
            plan = msgspec.structs.replace(plan, clip_norm=plan.clip_norm * SHRINK)
            signed_body = wire.encode(plan)
            signed = Signed(body=signed_body, signature=sign_bound(
                key, domain=PLAN_DOMAIN, session_id=env.session, round_=env.round,
                message=signed_body))
            data = wire.encode(msgspec.structs.replace(env, payload=wire.encode(
                msgspec.structs.replace(body, plan=signed))))
            msg.content.array_records[RECORD] = ArrayRecord(
                {ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})
        clips[name] = plan.clip_norm

    calls: list[str] = []
    with caplog.at_level(logging.WARNING):
        final, _, _ = _run(tmp_path, params, fed=flower_fed, tamper=tailor, calls=calls)
    # the attack's premise: every bank accepted its plan and ran its fit (so committed), the
    # others under a clip norm (hence a noise share) 1e-6 of the victim's
    assert sorted(calls) == sorted(BANKS)
    assert all(clips[b] <= clips[victim] * SHRINK * 1.0001 for b in BANKS if b != victim)
    # secure behaviour: no bank reveals under a set of two plans, nothing is decrypted
    refused = [r.getMessage() for r in caplog.records if "SFL309" in r.getMessage()]
    assert sorted({m.split()[0] for m in refused}) == BANKS, refused
    assert all("stage reveal" in m for m in refused), refused
    assert [r["status"] for r in _records(tmp_path / "run")] == ["aborted"]
    assert _holder_usage(tmp_path / "fed").get("decrypted", []) == []
    assert np.array_equal(_flat(final), _flat(_initial()))


def test_s8_low_the_key_holder_keeps_hellos_only_for_sessions_the_manifest_allows(
        fed: Fed, tmp_path: Path) -> None:
    """Low (the key holder's per-session Hello record, KeyHolderMemo.hellos, grew without
    bound): the key holder accepts a signed Hello only for a session id derived from a counter in
    1..max_sessions (ServerFaultError otherwise, nothing recorded), so the record holds at most
    max_sessions sessions. Control: the honest Hello (counter 1) is accepted and recorded."""
    from securefl.deploy.ckks import KeyHolderMemo, key_request
    from securefl.deploy.common import ServerFaultError, session_id
    from securefl.deploy.messages import HELLO_DOMAIN, Hello, ServerPayload
    from securefl.federation import load_manifest, verify_manifest
    from securefl.transport.flower import Envelope as Env

    manifest = verify_manifest(load_manifest(fed.manifest))
    limit = manifest.params.max_sessions
    srv = DeployServer(ServerSettings.load(fed.server_file(tmp_path / "srv")))
    key = SigningKey.from_pem(fed.keys[SERVER].read_bytes())

    def env_for(counter: int, session: bytes, request: bool = True) -> Env:
        body = wire.encode(Hello(session=session, federation=srv.fed.digest, plan=srv.plan(),
                                 counter=counter))
        hello = Signed(body=body, signature=sign_bound(key, domain=HELLO_DOMAIN,
                                                       session_id=session, round_=0,
                                                       message=body))
        payload = ServerPayload(hello=hello,
                                protocol=[key_request(session, 0)] if request else [])
        return Env(federation=srv.fed.digest, session=session, round=0, stage="key",
                   sender=SERVER, receiver="keyholder", payload=wire.encode(payload))

    kh = KeyHolderNode.from_node_config({**fed.key_holder_config(sim_seed=None),
                                         "usage-file": str(tmp_path / "usage.json"),
                                         "state-dir": str(tmp_path / "kh")})
    first = session_id(srv.fed.digest, 1)
    # the node's unsealed memo (NodeHandler.handle seals it around _handle)
    _, state = kh._handle(env_for(1, first), None)
    memo: KeyHolderMemo = wire.decode(state, KeyHolderMemo)
    assert list(memo.hellos) == [first.hex()]
    # a counter above max_sessions (its session id correctly derived): refused
    with pytest.raises(ServerFaultError, match="the manifest allows counters"):
        kh._handle(env_for(limit + 1, session_id(srv.fed.digest, limit + 1)), state)
    # a session id not derived from its counter (any 16 bytes): refused
    with pytest.raises(ServerFaultError, match="derived"):
        kh._handle(env_for(2, bytes(range(16))), state)
    # a second honest session (counter 2, its hello alone) is accepted: the record grows by one
    _, state = kh._handle(env_for(2, session_id(srv.fed.digest, 2), request=False), state)
    assert len(wire.decode(state, KeyHolderMemo).hellos) == 2
