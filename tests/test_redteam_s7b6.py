"""Red team s7b, finding S7b-6, from the adversary's side: on the CKKS path a malicious server signs
each bank its own training plan (Hello): the victim z = 4 (DP), every other bank dp False, z = 0.
Nothing bound the Hello across CKKS banks, so the released round-0 sum carried only the victim's
noise share. Now the key holder (non-colluding) accepts one signed Hello per session, binds its
digest into every round key's signed public context, and every bank encrypts, reveals and
co-signs only under a context bound to its own Hello (PlanMismatchError, SFL309, otherwise).
The whole file: 21.7 s on the shared 2-core machine (load 4; each test under 8 s)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from deploy_helpers import KEY_HOLDER, SERVER, Fed, make_federation

from securefl.crypto.signing import SigningKey, sign_bound
from securefl.deploy.ckks import KeyHolderNode, contexts_in, hello_digest, key_request
from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.messages import (
    HELLO_DOMAIN,
    Hello,
    ServerPayload,
    Signed,
    decode_client,
    decode_server,
)
from securefl.deploy.server import DeployServer, ServerSettings
from securefl.errors import (
    AggregationAbortedError,
    PlanMismatchError,
    RemoteProtocolError,
    SignatureError,
)
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol import wire
from securefl.protocol.ckks import CKKSKeyHolder, accept_public_context
from securefl.protocol.ckks_messages import Contribution, SignedPublicContext
from securefl.transport.flower import Envelope

KH_NODE = 99


class _Round0Done(Exception):
    """Ends a test deployment after its round 0 was released."""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    # DP on (the default): the honest plan has dp True and round-0 noise z = 4
    return make_federation(tmp_path_factory.mktemp("fed"), {"rounds": 1, "seed": 3,
                                                            "aggregation": "ckks"})


def _resign(f: Fed, signed: Signed, **plan: Any) -> Signed:
    """The malicious server's own Hello for one bank: the honest one with ``plan`` changed,
    signed with the server's manifest key (which the server holds)."""
    hello: Hello = wire.decode(signed.body, Hello)
    body = wire.encode(msgspec.structs.replace(
        hello, plan=msgspec.structs.replace(hello.plan, **plan)))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=HELLO_DOMAIN, session_id=hello.session,
                                                  round_=0, message=body))


class Tailoring:
    """A bank's (or the key holder's) node behind the malicious server: every payload carrying the
    signed Hello carries ``plan`` changes instead (None: the honest Hello). Keeps the replies."""

    def __init__(self, f: Fed, node: Any, plan: dict[str, Any] | None) -> None:
        self.f, self.node, self.member, self.plan = f, node, node.member, plan
        self.replies: dict[tuple[str, int], bytes] = {}

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        msg = decode_server(env.payload)
        if msg.hello is not None and self.plan is not None:
            msg = msgspec.structs.replace(msg, hello=_resign(self.f, msg.hello, **self.plan))
            env = msgspec.structs.replace(env, payload=wire.encode(msg))
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        self.replies[(env.stage, env.round)] = out[0]
        return out


NO_DP = {"dp": False, "stats_noise_multiplier": 0.0}


def _run(f: Fed, tmp: Path, victim: int, kh_plan: dict[str, Any] | None,
         caplog: pytest.LogCaptureFixture) -> tuple[str, list[Any], dict[int, Tailoring], Path]:
    """One deployment session up to its round 0: the victim gets the honest (DP, z = 4) Hello, every
    other bank a re-signed one without DP; the key holder gets ``kh_plan``'s."""
    released: list[Any] = []

    class Round0Only(DeployServer):
        def _finish(self, rs: Any, done: Any) -> None:
            super()._finish(rs, done)
            released.append(np.asarray(rs.moments_total, dtype=np.float64))
            raise _Round0Done

    srv = Round0Only(ServerSettings.load(f.server_file(tmp / "run")))
    usage = tmp / "usage.json"
    nodes: dict[int, Tailoring] = {
        i: Tailoring(f, BankNode.from_node_config({**f.node_config(b, sim_seed=None),
                                                   "state-dir": str(tmp / "banks" / b)}),
                     None if i == victim else NO_DP)
        for i, b in enumerate(f.banks)}
    nodes[KH_NODE] = Tailoring(f, KeyHolderNode.from_node_config(
        {**f.key_holder_config(sim_seed=None), "usage-file": str(usage),
         "state-dir": str(tmp / "kh")}), kh_plan)
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        try:
            srv.run(link, link.names())
            outcome = "finished"
        except _Round0Done:
            outcome = "released"
        except AggregationAbortedError:
            outcome = "aborted"
    return outcome, released, nodes, usage


def _refused_sfl309(caplog: pytest.LogCaptureFixture) -> set[str]:
    return {m.split(" ")[0] for m in (r.getMessage() for r in caplog.records)
            if "SFL309" in m and "round 0" in m}


def test_s7b6_banks_given_different_dp_plans_release_nothing(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The key holder keys the session for the victim's (honest) Hello: every other bank, shown
    a Hello without DP, refuses round 0's key (SFL309) before it encrypts; the victim commits
    alone, below the plan's threshold, so its ciphertext is never revealed and the key holder
    releases nothing."""
    victim = 1
    outcome, released, nodes, usage = _run(fed, tmp_path, victim, None, caplog)
    assert outcome != "released" and released == []
    others = sorted(b for i, b in enumerate(fed.banks) if i != victim)
    assert sorted(_refused_sfl309(caplog)) == others
    # no bank revealed a ciphertext (the victim's least of all), and nothing was decrypted
    assert not [k for n in nodes.values() for k in n.replies if k[0] == "reveal"]
    assert ("decrypt", 0) not in nodes[KH_NODE].replies
    assert '"decrypted": []' in usage.read_text()


def test_s7b6_a_key_holder_keyed_for_the_no_dp_plan_never_gets_the_victims_input(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server gives the key holder the no-DP Hello instead: the victim refuses round 0's key
    (bound to a plan it never accepted), so whatever is released is the sum of banks that all
    accepted the same no-DP plan, and never carries the victim's input."""
    victim = 1
    outcome, released, nodes, _ = _run(fed, tmp_path, victim, NO_DP, caplog)
    assert _refused_sfl309(caplog) == {fed.banks[victim]}
    # the victim refused round 0's key before it encrypted: it answered nothing of round 0
    assert [k for k in nodes[victim].replies if k[1] == 0 and k[0] != "hello"] == []
    if outcome == "released":  # the others' own no-DP sum, which they all agreed to
        revealed: set[int] = {wire.decode(decode_client(n.replies[("reveal", 0)]).protocol[0].data,
                                Contribution).client_id
                    for i, n in nodes.items() if i != KH_NODE and ("reveal", 0) in n.replies}
        assert victim not in revealed and revealed
    else:  # here the manifest's threshold needs every bank: nothing is released at all
        assert outcome == "aborted" and released == []


def test_s7b6_the_honest_path_still_releases(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every party gets the same Hello: round 0 is released, nobody refuses."""
    released: list[Any] = []

    class Round0Only(DeployServer):
        def _finish(self, rs: Any, done: Any) -> None:
            super()._finish(rs, done)
            released.append(np.asarray(rs.moments_total, dtype=np.float64))
            raise _Round0Done

    srv = Round0Only(ServerSettings.load(fed.server_file(tmp_path / "run")))
    nodes: dict[int, Any] = {i: BankNode.from_node_config(
        {**fed.node_config(b, sim_seed=None), "state-dir": str(tmp_path / "banks" / b)})
        for i, b in enumerate(fed.banks)}
    nodes[KH_NODE] = KeyHolderNode.from_node_config(
        {**fed.key_holder_config(sim_seed=None), "usage-file": str(tmp_path / "usage.json"),
         "state-dir": str(tmp_path / "kh")})
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(_Round0Done):
        srv.run(link, link.names())
    assert len(released) == 1 and released[0].size > 0
    assert not _refused_sfl309(caplog)


# --- the key holder: one Hello per session --------------------------------------------------------
def _key_env(f: Fed, hello: Signed, round_: int) -> Envelope:
    h: Hello = wire.decode(hello.body, Hello)
    payload = ServerPayload(hello=hello, protocol=[key_request(h.session, round_)])
    return Envelope(federation=h.federation, session=h.session, round=round_, stage="key",
                    sender=SERVER, receiver=KEY_HOLDER, payload=wire.encode(payload))


def _honest_hello(f: Fed, tmp: Path, counter: int = 1) -> Signed:
    srv = DeployServer(ServerSettings.load(f.server_file(tmp / f"hello-{counter}")))
    body = wire.encode(Hello(session=srv.session, federation=srv.fed.digest, plan=srv.plan(),
                             counter=srv.counter))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=HELLO_DOMAIN,
                                                  session_id=srv.session, round_=0,
                                                  message=body))


def test_s7b6_the_key_holder_refuses_a_second_different_hello_in_a_session(
        fed: Fed, tmp_path: Path) -> None:
    kh = KeyHolderNode.from_node_config({**fed.key_holder_config(sim_seed=None),
                                         "usage-file": str(tmp_path / "usage.json"),
                                         "state-dir": str(tmp_path / "kh")})
    honest = _honest_hello(fed, tmp_path)
    reply, state = kh.handle(_key_env(fed, honest, 0), None)
    ctx: SignedPublicContext = wire.decode(contexts_in(decode_client(reply))[0],
                                           SignedPublicContext)
    assert ctx.hello_digest == hello_digest(honest.body)  # round 0's key is bound to the Hello
    # the same Hello again (a restarted server, a retried trip): the same key, still bound to it
    again, state = kh.handle(_key_env(fed, honest, 0), state)
    assert contexts_in(decode_client(again))[0] == contexts_in(decode_client(reply))[0]
    # another plan for the same session: refused, nothing keyed for it
    forged = _resign(fed, honest, **NO_DP)
    with pytest.raises(PlanMismatchError):
        kh.handle(_key_env(fed, forged, 1), state)
    with pytest.raises(PlanMismatchError):
        kh.handle(_key_env(fed, forged, 0), state)


# --- a context replayed from another session or bound to another Hello -----------------------------
def test_s7b6_a_context_of_another_hello_or_session_or_unbound_is_refused(fed: Fed) -> None:
    from securefl.federation import load_manifest, verify_manifest

    kh_key = SigningKey.from_pem(fed.keys[KEY_HOLDER].read_bytes())
    holder = CKKSKeyHolder(kh_key, None, {}, params=DEFAULT_PARAMS, min_clients=1, verifiers=1)
    vk = verify_manifest(load_manifest(fed.manifest)).verify_key(KEY_HOLDER)
    session, other = bytes(range(16)), bytes(16)
    mine, theirs = bytes([1]) * 32, bytes([2]) * 32
    bound = holder.round_context(session, 0, mine)
    accept_public_context(bound, vk, DEFAULT_PARAMS, session_id=session, round_=0,
                          hello_digest=mine)  # accepted: my plan, my (session, round)
    with pytest.raises(PlanMismatchError):  # a key bound to another plan
        accept_public_context(bound, vk, DEFAULT_PARAMS, session_id=session, round_=0,
                              hello_digest=theirs)
    with pytest.raises(RemoteProtocolError, match="not the key for this round"):
        accept_public_context(bound, vk, DEFAULT_PARAMS, session_id=other, round_=0,
                              hello_digest=mine)  # replayed into another session
    # the server relabels the context's plan digest: the key holder's signature covers it
    relabelled = msgspec.structs.replace(bound, hello_digest=theirs)
    with pytest.raises(SignatureError):
        accept_public_context(relabelled, vk, DEFAULT_PARAMS, session_id=session, round_=0,
                              hello_digest=theirs)
    # a round key bound to no plan (or stripped of its digest) is no deployment bank's key
    with pytest.raises(PlanMismatchError, match="no signed plan"):
        accept_public_context(holder.round_context(session, 1), vk, DEFAULT_PARAMS,
                              session_id=session, round_=1, hello_digest=mine)
    stripped = msgspec.structs.replace(bound, hello_digest=None)
    with pytest.raises(PlanMismatchError):
        accept_public_context(stripped, vk, DEFAULT_PARAMS, session_id=session, round_=0,
                              hello_digest=mine)
    # the key holder never re-binds a keyed round to another plan
    with pytest.raises(PlanMismatchError):
        holder.round_context(session, 0, theirs)
    assert holder.round_context(session, 0, mine) == bound
