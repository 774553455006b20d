"""Red team s6 (rt16): per-round CKKS keys in the deployment's key holder node, and the bank's
budget caps on the Flower path. Each test asserts the SECURE behaviour, so it FAILS while the hole
it names exists (see the report on branch rt16)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")


# --- the Flower path: a plain TRAIN message goes around the mod -------------------------------------
def test_flower_plain_train_message_does_not_reach_the_users_fit(tmp_path: Path) -> None:
    """A malicious server sends a bank behind ``securefl_mod`` an ordinary Flower TRAIN message
    (FitIns, no securefl record). The mod passes it to the user's app: fit runs and the bank's
    raw parameters go back unmasked, unclipped, unnoised and never charged to the bank's caps.
    Secure: a node configured for securefl answers no TRAIN message outside the protocol."""
    from flwr.app import Context, Message, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.clientapp import ClientApp
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from securefl.federation import ProtocolParams
    from securefl.flower import securefl_mod
    from tests.flower_mod_helpers import (
        known_client_fn,
        make_flower_federation,
        server_identity,
    )

    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=1.0,
                            noise_multiplier=1.0)
    banks = ["bank-a", "bank-b", "bank-c"]
    fed = make_flower_federation(tmp_path / "fed", banks, params)
    calls: list[str] = []
    app = ClientApp(client_fn=known_client_fn({b: i for i, b in enumerate(banks)},
                                              {b: 100 for b in banks}, calls),
                    mods=[securefl_mod])
    cfg = fed.node_config("bank-a", 100, **{"client-epsilon-cap": 1.0,
                                            "budget-dir": str(tmp_path / "budget")})
    ctxt = Context(run_id=1, node_id=101, node_config=cfg, state=RecordDict(), run_config={})
    glob = [np.zeros((4, 3), dtype=np.float32)]
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(glob), {}),
                                          keep_input=True)
    with server_identity():
        msg = Message(content, dst_node_id=101, message_type=MessageType.TRAIN)
        try:
            reply = app(msg, ctxt)
        except Exception:  # refused: the secure outcome
            reply = None
    leaked = None
    if reply is not None and not reply.has_error():
        try:
            leaked = parameters_to_ndarrays(
                compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)
        except Exception:
            leaked = None
    assert "bank-a" not in calls, "the user's fit ran for a message outside securefl"
    assert leaked is None, "the bank's raw fit parameters left it in the clear"


# --- the key holder node: usage file ----------------------------------------------------------------
RUN: dict[str, Any] = {"rounds": 2, "seed": 3, "aggregation": "ckks"}


@pytest.fixture(scope="module")
def ckfed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from deploy_helpers import make_federation

    return make_federation(tmp_path_factory.mktemp("rtfed"), RUN)


def _fed_obj(f: Any) -> Any:
    from securefl.federation import load_manifest, verify_manifest

    return verify_manifest(load_manifest(f.manifest))


def _session(f: Any, counter: int) -> bytes:
    """The session id of ``counter`` under the manifest (securefl.deploy.common.session_id)."""
    from securefl.deploy.common import session_id

    return session_id(_fed_obj(f).digest, counter)


def _hello(f: Any, session: bytes, rounds: int = 4) -> Any:
    """The server's signed hello for ``session`` (a malicious server signs any session)."""
    from deploy_helpers import SERVER

    from securefl.crypto.signing import SigningKey, sign_bound
    from securefl.deploy.messages import HELLO_DOMAIN, Hello, Signed, TrainPlan
    from securefl.protocol import wire

    plan = TrainPlan(model="logreg", hidden=[], task="classification", loss="bce",
                     local_epochs=1, batch_size=32, lr=0.1, optimizer="sgd", prox_mu=0.0,
                     rounds=rounds, dp=False, record_epsilon=0.0, record_noise_multiplier=None,
                     record_clip=1.0, delta=1e-5, aggregation="ckks")
    # the key holder accepts a session derived from a counter the manifest allows (S8-1, Low)
    counter = next(c for c in range(1, 9) if _session(f, c) == session)
    body = wire.encode(Hello(session=session, federation=_fed_obj(f).digest, plan=plan,
                             counter=counter))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=HELLO_DOMAIN, session_id=session,
                                                  round_=0, message=body))


def _key_env(f: Any, session: bytes, round_: int) -> Any:
    """The server's "key" trip to the key holder for (session, round)."""
    from deploy_helpers import KEY_HOLDER, SERVER

    from securefl.deploy.ckks import key_request
    from securefl.deploy.messages import ServerPayload
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope

    payload = ServerPayload(hello=_hello(f, session), protocol=[key_request(session, round_)])
    return Envelope(federation=_fed_obj(f).digest, session=session, round=round_, stage="key",
                    sender=SERVER, receiver=KEY_HOLDER, payload=wire.encode(payload))


def _kh(f: Any, usage: Path) -> Any:
    from securefl.deploy.ckks import KeyHolderNode

    return KeyHolderNode.from_node_config({**f.key_holder_config(sim_seed=None),
                                           "usage-file": str(usage)})


def _context_of(reply: bytes, round_: int) -> Any:
    from securefl.deploy.ckks import contexts_in
    from securefl.deploy.messages import decode_client
    from securefl.protocol import wire
    from securefl.protocol.ckks_messages import SignedPublicContext

    return wire.decode(contexts_in(decode_client(reply))[round_], SignedPublicContext)


def test_key_holder_never_signs_a_second_key_for_a_round_after_its_usage_file_is_deleted(
        ckfed: Any, tmp_path: Path) -> None:
    """The key holder keys rounds 0 and 1 of a session (its sealed node state holds round 1's key
    and the hello: it has a history). Its usage file is then deleted (or rolled back to an older
    copy). Asked for round 0's key again it signs a SECOND, different key for (session, 0):
    a missing usage file reads as "nothing ever keyed or released". Secure: a node whose state
    shows history refuses to go on without its usage record (StateError/ConfigError), and never
    signs two keys for one (session, round)."""
    from securefl.errors import SecureFLError

    usage = tmp_path / "usage.json"
    kh = _kh(ckfed, usage)
    session = _session(ckfed, 1)
    reply0, state = kh.handle(_key_env(ckfed, session, 0), None)
    first = _context_of(reply0, 0)
    _, state = kh.handle(_key_env(ckfed, session, 1), state)
    with pytest.raises(SecureFLError):  # the secure behaviour today, with the file present
        kh.handle(_key_env(ckfed, session, 0), state)
    backup = usage.read_bytes()
    usage.unlink()
    second = None
    try:
        reply, state = kh.handle(_key_env(ckfed, session, 0), state)
        second = _context_of(reply, 0)
    except SecureFLError:
        pass
    assert second is None, (
        f"a second key for (session, 0): key ids {first.key_id.hex()[:16]} and "
        f"{second.key_id.hex()[:16]}, both signed for the same round")
    del backup


def test_key_holder_usage_updates_are_not_lost_by_concurrent_sessions(
        ckfed: Any, tmp_path: Path) -> None:
    """Two sessions served at once by the key holder (two Flower runs: a SuperNode may run their
    ClientApp processes concurrently; or a second key holder process on the same usage file). The
    usage file is read-modify-written without a lock: run B reads it while run A is between its
    read and its write, so one run's record is lost (here: session B's "keyed" high-water mark,
    overwritten by A's stale copy; a lost "decrypted" entry is lost the same way), and a restarted
    key holder would key that session's round again. Secure: every update survives
    (an exclusive lock around read-check-write, as BankBudget does)."""
    import json

    from securefl.deploy.ckks import KeyHolderNode

    usage = tmp_path / "usage.json"
    a, b = _kh(ckfed, usage), _kh(ckfed, usage)
    sa, sb = _session(ckfed, 1), _session(ckfed, 2)
    real_write = KeyHolderNode._write_usage
    fired: list[bool] = []

    def interleave(self: Any, u: Any) -> None:
        if self is a and not fired:  # A has read the file and checked; B runs now, to the end
            fired.append(True)
            b.handle(_key_env(ckfed, sb, 0), None)
        real_write(self, u)

    KeyHolderNode._write_usage = interleave  # type: ignore[method-assign]
    try:
        a.handle(_key_env(ckfed, sa, 0), None)
    finally:
        KeyHolderNode._write_usage = real_write  # type: ignore[method-assign]
    keyed = json.loads(usage.read_text())["keyed"]
    assert sorted(keyed) == sorted([sa.hex(), sb.hex()]), f"usage file lost an update: {keyed}"


# --- the deployed bank (securefl's own deployment, SecAgg or CKKS): a plan with dp=False ----------
def test_deployed_bank_caps_are_not_skipped_by_a_plan_that_says_dp_false(tmp_path: Path) -> None:
    """bank 0 runs with a record-epsilon cap and a client-epsilon cap. A malicious server signs a
    hello whose plan says ``dp = False`` (its own run config): BankNode._charge_budget returns
    at once (``not hello.plan.dp``), the bank trains WITHOUT DP-SGD (no record noise) and its
    update goes into the round, and nothing is charged. Secure (as securefl_mod does for a client
    cap): under a cap a plan without the mechanism the cap counts is refused, and every round the
    bank joins is charged before its update leaves."""
    import msgspec
    from deploy_helpers import make_federation

    from securefl.audit.store import RunStore
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings
    from securefl.dp.bank_budget import BUDGET_FILE
    from securefl.errors import AuditError

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3})  # manifest: DP on
    capped = f.banks[0]
    budget_dir = tmp_path / "budget"
    extra = {"record-epsilon-cap": "9", "client-epsilon-cap": "9",
             "budget-dir": str(budget_dir)}
    banks = {i: BankNode.from_node_config({**f.node_config(b, sim_seed=3),
                                           **(extra if b == capped else {})})
             for i, b in enumerate(f.banks)}
    class Evil(DeployServer):  # the signed plan says dp = False; the round noise stays z
        def plan(self) -> Any:
            # without DP round 0 is exact (S7b-1: every bank refuses a round-0 multiplier other
            # than 0 without DP), so the forged plan says that too, and only the caps can refuse
            return msgspec.structs.replace(super().plan(), dp=False, stats_noise_multiplier=0.0)

    srv = Evil(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(banks, srv.fed.digest)
    with contextlib.suppress(Exception):  # an abort is fine: the question is what bank 0 did
        srv.run(link, link.names())
    try:
        recs = RunStore.open(tmp_path / "run").records
    except AuditError:  # the capped bank refused the exact round 0: no run store, nobody joined
        recs = []
    joined = [i for i, rec in enumerate(recs)
              if i >= 1 and capped in (getattr(rec, "survivors", None) or [])]
    charged = (budget_dir / BUDGET_FILE).read_text().splitlines() \
        if (budget_dir / BUDGET_FILE).exists() else []
    assert not joined or len(charged) >= len(joined), (
        f"{capped} took part in training rounds {joined} under caps with nothing charged")


# --- the Flower path: a deleted (or truncated) budget file resets the lifetime caps ---------------
def test_flower_bank_cap_survives_its_budget_file_being_deleted(tmp_path: Path) -> None:
    """bank-a's record cap fits exactly one round (as in test_flower_mod's cap test). Run 1: it
    takes part and charges its ledger. Its budget file is then lost (deleted, a container
    redeploy of budget-dir, or truncated to an earlier prefix: the hash chain starts at genesis,
    so any prefix verifies). Run 2 (a new session): the bank reads "nothing spent" and takes part
    again, past its lifetime cap. Secure: a bank whose session-counter state shows it took part
    before refuses to charge against a missing or shorter ledger (anchor the ledger's head/seq in
    the state-dir next to the session counter)."""
    from securefl.dp.accountants import epsilon_of_events
    from securefl.dp.bank_budget import BUDGET_FILE
    from securefl.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
    from securefl.federation import ProtocolParams
    from tests.flower_mod_helpers import make_flower_federation
    from tests.test_flower_mod import BANKS, CLIP, DECLARED, _run

    one = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 100)
    cap = sum(epsilon_of_events([one] * k, 1e-5) for k in (1, 2)) / 2
    params = ProtocolParams(aggregation="secagg", threshold=2, clip_norm=CLIP,
                            noise_multiplier=0.0)
    fed = make_flower_federation(tmp_path / "fed", BANKS, params)
    budget_dir = tmp_path / "bank-a-budget"
    extra = {"bank-a": {**DECLARED, "record-epsilon-cap": cap, "budget-dir": str(budget_dir)}}
    calls: list[str] = []
    _run(tmp_path, params, extra_config=extra, calls=calls, fed=fed, run_name="run1")
    assert calls.count("bank-a") == 1
    assert (budget_dir / BUDGET_FILE).exists()
    (budget_dir / BUDGET_FILE).unlink()  # lost
    _run(tmp_path, params, extra_config=extra, calls=calls, fed=fed, run_name="run2")
    assert calls.count("bank-a") == 1, "bank-a spent past its lifetime record cap"


# --- the key holder's sealed round key: reprs ------------------------------------------------------
def test_round_key_memo_is_redacted_in_every_repr_rich_included() -> None:
    """RoundKeyMemo / KeyHolderMemo override __repr__, but msgspec.Struct also defines
    __rich_repr__, which yields every field: rich (a securefl dependency) pretty-printing, a rich
    traceback with locals, or a rich logging handler prints the round's CKKS secret key. Secure:
    the secret is redacted in every representation (override __rich_repr__ too, or hold the
    secret in a type whose every repr is redacted)."""
    from rich.pretty import pretty_repr

    from securefl.deploy.ckks import KeyHolderMemo, RoundKeyMemo

    marker = b"ROUND-KEY-SECRET-BYTES"
    memo = KeyHolderMemo(hello=None, keys={3: RoundKeyMemo(secret=marker, signed=b"pub")})
    for text in (repr(memo), str(memo), pretty_repr(memo), pretty_repr(memo.keys[3])):
        assert "ROUND-KEY-SECRET" not in text, text


# --- regressions beside the findings (fix of rt16) -------------------------------------------------
@pytest.mark.parametrize(("kind", "opt_in", "passes"), [
    ("evaluate", {}, False),
    ("evaluate", {"allow-plain-evaluate": "false"}, False),
    ("evaluate", {"allow-plain-evaluate": True}, True),
    ("evaluate", {"allow-plain-query": "true"}, False),
    ("query", {}, False),
    ("query", {"allow-plain-query": "true"}, True),
    ("train", {"allow-plain-evaluate": True, "allow-plain-query": True}, False),
    ("get_parameters", {"allow-plain-evaluate": True, "allow-plain-query": True}, False),
])
def test_flower_plain_messages_reach_the_users_app_only_by_the_nodes_opt_in(
        kind: str, opt_in: dict[str, Any], passes: bool) -> None:
    """Finding 1's rule for every plain message type: TRAIN never; EVALUATE (metrics on the bank's
    own data) and QUERY only with the node config's allow-plain-evaluate / allow-plain-query."""
    from flwr.app import Context, Message, RecordDict

    from securefl.errors import RemoteProtocolError
    from securefl.flower import securefl_mod
    from tests.flower_mod_helpers import server_identity

    calls: list[str] = []

    def call_next(msg: Any, ctxt: Any) -> Any:
        calls.append(msg.metadata.message_type)
        return Message(RecordDict(), reply_to=msg)

    ctxt = Context(run_id=1, node_id=7, node_config={"member": "bank-a", **opt_in},
                   state=RecordDict(), run_config={})
    with server_identity():
        msg = Message(RecordDict(), dst_node_id=7, message_type=kind)
    if passes:
        securefl_mod(msg, ctxt, call_next)
        assert calls == [kind]
    else:
        with pytest.raises(RemoteProtocolError):
            securefl_mod(msg, ctxt, call_next)
        assert calls == []


def test_key_holder_refuses_a_usage_file_rolled_back_behind_its_node_state(
        ckfed: Any, tmp_path: Path) -> None:
    """Finding 4, the rollback variant: the usage file is replaced by an older copy (round 0
    keyed) after round 1 was keyed; the sealed node state marks round 1, so the key holder
    refuses to go on (StateError) rather than key round 0 again. The usage file exists from the
    first use on."""
    from securefl.errors import StateError

    usage = tmp_path / "usage.json"
    kh = _kh(ckfed, usage)
    session = _session(ckfed, 3)
    _, state = kh.handle(_key_env(ckfed, session, 0), None)
    assert usage.exists()
    old = usage.read_bytes()
    _, state = kh.handle(_key_env(ckfed, session, 1), state)
    usage.write_bytes(old)
    with pytest.raises(StateError, match="behind this node's state"):
        kh.handle(_key_env(ckfed, session, 0), state)
    with pytest.raises(StateError, match="behind this node's state"):
        kh.handle(_key_env(ckfed, session, 2), state)
