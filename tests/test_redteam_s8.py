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

S8-1 (High): the deployment (`test_s8_1_...`); S8-1b: the same on the Flower path's plan checks.
Each test asserts the secure behaviour and FAILS on the code under review. Same root cause, a
smaller, data-dependent lever (no separate test; the same fix closes it): round 0's per-bank
``stats_groups`` (a one-hot group claimed to the banks whose rows satisfy it and not to the victim
lowers their sensitivity sqrt(1 + 2 groups), hence their shares, below the victim's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import msgspec
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


class Tailoring:
    """A bank's node behind the malicious server (``shrink``: its training RoundStart carries the
    shrunk clip norm). Keeps every RoundStart the node accepted and its replies."""

    def __init__(self, f: Fed, node: Any, shrink: bool) -> None:
        self.f, self.node, self.member, self.shrink = f, node, node.member, shrink
        self.starts: dict[int, RoundStart] = {}
        self.replies: dict[tuple[str, int], bytes] = {}

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        msg = decode_server(env.payload)
        signed = msg.start
        if signed is not None:
            if self.shrink:
                signed = _shrunk(self.f, signed)
                msg = msgspec.structs.replace(msg, start=signed)
                env = msgspec.structs.replace(env, payload=wire.encode(msg))
            start: RoundStart = wire.decode(signed.body, RoundStart)
            self.starts[start.round] = start
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        self.replies[(env.stage, env.round)] = out[0]
        return out


def _deploy(f: Fed, tmp: Path, victim: int, caplog: pytest.LogCaptureFixture
            ) -> tuple[str, dict[int, Tailoring], Path]:
    srv = DeployServer(ServerSettings.load(f.server_file(tmp / "run")))
    usage = tmp / "usage.json"
    nodes: dict[int, Any] = {
        i: Tailoring(f, BankNode.from_node_config({**f.node_config(b, sim_seed=None),
                                                   "state-dir": str(tmp / "banks" / b)}),
                     shrink=victim >= 0 and i != victim)
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


def test_s8_1b_flower_ckks_bank_accepts_a_clip_norm_below_the_manifest(fed: Fed) -> None:
    """S8-1b (High, the Flower path): a CKKS bank behind the mod checks each round's signed
    FlowerPlan with check_plan (clip norm only bounded above) and _check_plan_against_hello
    (verifiers, round, DP on/off): nothing compares its clip norm (nor anything else of the round
    plan) across banks, so the same per-bank shrink works. Secure behaviour asserted here: a
    CKKS bank's plan checks refuse a clip norm (hence a noise share) other than the manifest's,
    the quantity every other bank of the sum uses. FAILS today (the plan is accepted).
    (A fix that instead binds the round plan's digest across banks, e.g. in the key holder's
    signed context or in every Commitment checked by the key holder, should replace this test
    by a Flower end-to-end one.)"""
    from securefl.deploy.messages import FLOWER_APP, Hello, TrainPlan
    from securefl.federation import load_manifest, verify_manifest
    from securefl.flower.common import BankInfo, FlowerPlan, check_plan
    from securefl.flower.mod import _check_plan_against_hello

    f = verify_manifest(load_manifest(fed.manifest))
    p = f.params
    assert p.aggregation == "ckks" and p.noise_multiplier > 0
    members = list(f.clients)
    infos = [BankInfo(member=m, n_examples=100, signature=bytes(64)) for m in members]
    n = len(members)
    from securefl.deploy.common import plan_threshold

    t = plan_threshold(p, "train", members, ())
    session = bytes(range(16))
    plan = FlowerPlan(session=session, counter=1, round=1, participants=members, threshold=t,
                      clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier,
                      min_survivors=t, degree=p.neighbours, precision_bits=p.precision_bits,
                      dim=8, weights={m: 1.0 for m in members}, model_digest=bytes(32),
                      config_digest=bytes(32), verifiers=2, verifier_skips=2)
    tp = TrainPlan(model="logreg", hidden=[], task=FLOWER_APP, loss="bce", local_epochs=1,
                   batch_size=32, lr=0.1, optimizer="sgd", prox_mu=0.0, rounds=1, dp=True,
                   record_epsilon=0.0, record_noise_multiplier=None, record_clip=1.0, delta=1e-5,
                   aggregation="ckks", ckks_verifiers=2, ckks_verifier_skips=2)
    hello = Hello(session=session, federation=f.digest, plan=tp, counter=1)
    assert n >= t
    # control: the honest plan (the manifest's clip norm) passes both checks
    check_plan(f, plan, infos)
    _check_plan_against_hello(f, plan, hello)
    shrunk = msgspec.structs.replace(plan, clip_norm=p.clip_norm * SHRINK)
    with pytest.raises(SecureFLError):
        check_plan(f, shrunk, infos)
        _check_plan_against_hello(f, shrunk, hello)
