"""Timeouts, stragglers and per-round byte limits in the in-process SecAgg driver and the library
API (issue 17, items 3 and the per-round byte limits). A straggler is made deterministic with a
fake clock (securefl.transport.policy.FakeClock) advanced inside the tamper hook (the simulated
network) or inside a bank's training: no sleeping, no wall-clock asserts. Expected sums come from
tests/secagg_helpers.expected_sum (Python integers, independent of the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.errors import (
    AggregationAbortedError,
    ByteLimitError,
    ConfigError,
    DeadlineError,
    SecureFLError,
)
from securefl.protocol.messages import KeyRoster, decode_message, encode_message
from securefl.protocol.secagg import ClientState, ServerState
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.transport.inprocess import SERVER, InProcessDriver
from securefl.transport.policy import ByteMeter, Deadlines, FakeClock
from tests.secagg_helpers import expected_sum, make_round


def _slow(clock: FakeClock, stage: str, who: int, seconds: float = 10.0) -> Any:
    """A tamper hook that delays ``who``'s messages of ``stage`` (``SERVER``: the server's
    messages of that stage, to every client) by ``seconds`` on ``clock``; bytes unchanged."""

    def tamper(st: str, sender: int, recipient: int, data: bytes) -> bytes:
        if st == stage and sender == who:
            clock.advance(seconds)
        return data

    return tamper


@pytest.mark.parametrize("stage", ["advertise", "share", "masked", "unmask"])
def test_a_late_reply_is_a_dropout_at_its_stage(stage: str) -> None:
    """Client 2's reply of ``stage`` arrives 10 s after the stage's message, the deadline is 5 s:
    its message is discarded unread, it is a dropout at that stage, and the round releases the
    survivors' exact sum (SecAgg's dropout handling; the threshold 3 of 5 is kept)."""
    r = make_round(5, threshold=3)
    clock = FakeClock()
    driver = InProcessDriver(r.server, r.clients, tamper=_slow(clock, stage, 2),
                             deadlines=Deadlines(stage_s=5.0, clock=clock))
    result = driver.run()
    assert driver.faults == {2: stage}
    assert isinstance(driver.refused[2], DeadlineError)
    assert "5 s deadline" in driver.refused[2].message
    assert result.dropped_at[2] == stage
    # a late unmask reply is past the masked input: client 2 is in the sum, unmasked by the others
    summed = (0, 1, 2, 3, 4) if stage == "unmask" else (0, 1, 3, 4)
    assert result.survivors == summed
    assert (result.field_sum == expected_sum(r, summed)).all()
    if stage == "masked":
        assert 2 not in driver.masked_inputs  # the late masked input never reached the server


def test_without_deadlines_the_same_delay_is_waited_for() -> None:
    """The control: with no deadline the slow client is waited for and summed."""
    r = make_round(5, threshold=3)
    clock = FakeClock()
    result = InProcessDriver(r.server, r.clients, tamper=_slow(clock, "masked", 2),
                             deadlines=Deadlines(clock=clock)).run()
    assert result.survivors == (0, 1, 2, 3, 4) and clock() == 10.0


def test_a_late_signature_aborts_the_round_with_a_deadline_error() -> None:
    """A survivor that misses the consistency deadline cannot be unmasked safely (every survivor
    must sign the survivor set): the round aborts, typed, with nothing released."""
    r = make_round(5, threshold=3)
    clock = FakeClock()
    driver = InProcessDriver(r.server, r.clients, tamper=_slow(clock, "consistency", 1),
                             deadlines=Deadlines(stage_s=5.0, clock=clock))
    with pytest.raises(DeadlineError, match="did not sign") as info:
        driver.run()
    assert info.value.code == "SFL311" and isinstance(info.value, AggregationAbortedError)
    assert r.server.result is None and r.server.state is ServerState.FAILED


def test_more_stragglers_than_tolerated_abort_and_nothing_is_released() -> None:
    """Three of five late at the masked stage, threshold 3: two survivors are too few; the round
    aborts with DeadlineError naming the stragglers; the threshold is not lowered."""
    r = make_round(5, threshold=3)
    clock = FakeClock()
    slow = {0, 2, 4}

    def tamper(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if stage == "masked" and sender in slow:
            clock.advance(6.0)
        return data

    driver = InProcessDriver(r.server, r.clients, tamper=tamper,
                             deadlines=Deadlines(stage_s=5.0, clock=clock))
    with pytest.raises(DeadlineError, match=r"only 2 clients sent masked inputs.*\[0, 2, 4\]"):
        driver.run()
    assert r.server.result is None and r.server.config.threshold == 3


def test_a_server_that_does_not_answer_makes_the_banks_give_up() -> None:
    """The server takes 30 s to forward the shares; the banks wait 20 s: each gives up
    (FAILED: it accepts nothing more of the round, so no share leaves it later, even when the
    server's message finally arrives), and the round aborts with DeadlineError."""
    r = make_round(4, threshold=3)
    clock = FakeClock()
    forwarded: dict[int, bytes] = {}

    def tamper(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if stage == "masked" and sender == SERVER:
            if not forwarded:
                clock.advance(30.0)
            forwarded[recipient] = data
        return data

    driver = InProcessDriver(r.server, r.clients, tamper=tamper,
                             deadlines=Deadlines(bank_wait_s=20.0, clock=clock))
    with pytest.raises(DeadlineError, match="only 0 clients sent masked inputs"):
        driver.run()
    assert set(driver.faults) == {0, 1, 2, 3}
    assert all("gave up" in e.message for e in driver.refused.values())
    for cid, client in r.clients.items():
        assert client.state is ClientState.FAILED
        with pytest.raises(SecureFLError):  # the late ForwardedShares is refused, typed
            client.receive(decode_message(forwarded[cid]))
        assert client.revealed == {}


def test_deadlines_are_validated() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="stage_s"):
            Deadlines(stage_s=bad)
    with pytest.raises(ConfigError):
        FakeClock().advance(-1.0)


# --- per-round byte limits --------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "dim", "bits", "dropout_fraction"),
                         [(4, 8, 20, 0.0), (6, 300, 32, 0.0), (30, 50, 24, 0.1)])
def test_honest_rounds_fit_the_byte_limits_derived_from_the_plan(
        n: int, dim: int, bits: int, dropout_fraction: float) -> None:
    """Every byte an honest round carries, counted per peer by a tamper hook, is within the
    limits; and the limits are not loose: within 2x + 2 KiB of the most an honest peer sent
    (the slack is the schema's 256-byte sealed share against an honest 168-byte one)."""
    from securefl.protocol.secagg import Assumptions

    r = make_round(n, dim=dim, bits=bits, assumptions=Assumptions(dropout_fraction=dropout_fraction))
    sent_by: dict[int, int] = {}
    sent_to: dict[int, int] = {}

    def count(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if sender == SERVER:
            sent_to[recipient] = sent_to.get(recipient, 0) + len(data)
        else:
            sent_by[sender] = sent_by.get(sender, 0) + len(data)
        return data

    driver = InProcessDriver(r.server, r.clients, tamper=count)
    assert driver.run().survivors == tuple(range(n))
    limits = round_byte_limits(r.config)
    assert max(sent_by.values()) <= limits.from_client <= 2 * max(sent_by.values()) + 2048
    assert max(sent_to.values()) <= limits.from_server <= 2 * max(sent_to.values()) + 2048
    # the masked input dominates: the client limit grows with dim * bits
    assert limits.from_client >= dim * bits // 8


def test_a_server_that_floods_a_bank_is_refused_by_the_banks_limit() -> None:
    """The server sends client 0 a key roster of 60 entries (each a valid entry; the message is
    under the per-message limit): over client 0's per-round limit, so client 0 refuses it
    (ByteLimitError naming the limit), gives up, and is a dropout; the others finish."""
    r = make_round(5, threshold=3)
    limit = round_byte_limits(r.config).from_server

    def flood(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if stage == "share" and sender == SERVER and recipient == 0:
            roster = decode_message(data)
            assert isinstance(roster, KeyRoster)
            return encode_message(KeyRoster(session_id=roster.session_id, round=roster.round,
                                            entries=list(roster.entries) * 12))
        return data

    driver = InProcessDriver(r.server, r.clients, tamper=flood)
    result = driver.run()
    err = driver.refused[0]
    assert isinstance(err, ByteLimitError) and err.code == "SFL308"
    assert f"limit of {limit} bytes" in err.message
    assert r.clients[0].state is ClientState.FAILED and driver.faults == {0: "share"}
    assert result.survivors == (1, 2, 3, 4)
    assert (result.field_sum == expected_sum(r, (1, 2, 3, 4))).all()


def test_a_client_over_its_round_limit_is_refused_before_the_machine_sees_it() -> None:
    """A client that sends its masked input twice goes over the server's per-round limit for it
    (dim 400: the masked input is most of the limit): the second copy is refused by the byte cap
    (ByteLimitError), not fed to the machine; the client is a dropout, and since its first copy
    is in the sum and it never signs, the round aborts, typed, releasing nothing."""
    r = make_round(5, dim=400, bits=32, threshold=3)
    honest = r.clients[3].receive

    def twice(msg: Any) -> list[Any]:
        out = honest(msg)
        return out * 2 if r.clients[3].state is ClientState.MASKED else out

    r.clients[3].receive = twice  # type: ignore[method-assign]
    driver = InProcessDriver(r.server, r.clients)
    with pytest.raises(AggregationAbortedError, match="did not sign"):
        driver.run()
    assert isinstance(driver.refused[3], ByteLimitError) and driver.faults == {3: "masked"}
    assert r.server.result is None


def test_the_byte_meter_remembers_a_refused_peer() -> None:
    meter = ByteMeter(100, "the server")
    meter.take("a", 60)
    with pytest.raises(ByteLimitError, match="101 bytes this round, over the round's limit of 100"):
        meter.take("a", 41)
    with pytest.raises(ByteLimitError):  # refused once, refused for the rest of the round
        meter.take("a", 1)
    meter.take("b", 100)


# --- the library API ----------------------------------------------------------------------------------
def _lib_banks(clock: FakeClock, slow: set[str]) -> list[Any]:
    import securefl

    class SlowBank(securefl.Bank):  # type: ignore[misc]
        def update(self, *args: Any, **kwargs: Any) -> Any:
            if self.name in slow:
                clock.advance(100.0)  # this bank's training takes 100 s
            return super().update(*args, **kwargs)

    rng = np.random.default_rng(5)
    out = []
    for i in range(4):
        X = rng.normal(size=(60, 3)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.float32)
        out.append(SlowBank(f"bank{i}", X, y))
    return out


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "audit" / "log.jsonl").read_text().splitlines()][1:]


def test_train_a_bank_slower_than_the_training_deadline_is_a_dropout(tmp_path: Path) -> None:
    """securefl.train with a 60 s training deadline on a fake clock: bank2 trains for 100 s and is
    a dropout at the first SecAgg stage; the round completes over the other three, the audit
    record says so and the run directory verifies."""
    import torch

    import securefl
    from securefl.audit.verify import verify_run_dir

    clock = FakeClock()
    torch.manual_seed(0)
    result = securefl.train(
        torch.nn.Sequential(torch.nn.Linear(3, 1)), _lib_banks(clock, {"bank2"}),
        securefl.RunConfig(rounds=1, batch_size=16, out=str(tmp_path / "run"), threshold=3, dp=False,
                           aggregation="secagg"),
        deadlines=securefl.Deadlines(training_s=60.0, clock=clock))
    assert result.rounds_completed == 1
    (rep,) = result.history
    assert rep.dropouts == {"bank2": "advertise"} and "bank2" not in rep.survivors
    verify_run_dir(tmp_path / "run")
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "committed" and rec["dropouts"] == {"bank2": "advertise"}


def test_train_too_many_stragglers_abort_the_round_safely(tmp_path: Path) -> None:
    """Two of four banks overrun the training deadline, threshold 3: the round aborts (typed
    code in the record), the model is unchanged, the run directory verifies."""
    import torch

    import securefl
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir

    clock = FakeClock()
    torch.manual_seed(0)
    result = securefl.train(
        torch.nn.Sequential(torch.nn.Linear(3, 1)), _lib_banks(clock, {"bank0", "bank3"}),
        securefl.RunConfig(rounds=1, batch_size=16, out=str(tmp_path / "run"), threshold=3, dp=False,
                           aggregation="secagg"),
        deadlines=Deadlines(training_s=60.0, clock=clock))
    assert result.rounds_completed == 0 and result.history[0].aborted is not None
    verify_run_dir(tmp_path / "run")
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL310"
    store = RunStore.open(tmp_path / "run")
    assert store.model_sha256(1) == store.model_sha256(0)


def test_stage_deadlines_are_refused_where_no_protocol_has_stages() -> None:
    """plain runs no staged protocol: a stage deadline there would be silently ignored, so it is
    refused (the training deadline applies to every mode); secagg and ckks take them."""
    from securefl.aggregators import make_aggregator

    with pytest.raises(ConfigError, match="training_s"):
        make_aggregator("plain", deadlines=Deadlines(stage_s=5.0))
    assert make_aggregator("plain", deadlines=Deadlines(training_s=5.0)).name == "plain"
    for name in ("secagg", "ckks"):
        d = Deadlines(stage_s=5.0, bank_wait_s=5.0)
        agg: Any = make_aggregator(name, deadlines=d)
        assert agg.deadlines is d


class _Ticking:
    """A fake clock that moves ``step`` seconds each time it is read: every wait is long."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_train_banks_give_up_on_a_server_that_does_not_answer(tmp_path: Path) -> None:
    """securefl.train where every wait for the server overruns bank_wait_s (a clock that moves
    10 s per reading, the banks wait 5 s): each bank gives up at the server's first message, the
    round aborts with DeadlineError (SFL311 in the audit record), the model is unchanged and the
    run directory verifies."""
    import torch

    import securefl
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir

    torch.manual_seed(0)
    result = securefl.train(
        torch.nn.Sequential(torch.nn.Linear(3, 1)), _lib_banks(FakeClock(), set()),
        securefl.RunConfig(rounds=1, batch_size=16, out=str(tmp_path / "run"), threshold=3,
                           dp=False, aggregation="secagg"),
        deadlines=securefl.Deadlines(bank_wait_s=5.0, clock=_Ticking(10.0)))
    assert result.rounds_completed == 0 and "missed a deadline" in str(result.history[0].error)
    verify_run_dir(tmp_path / "run")
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL311"
    store = RunStore.open(tmp_path / "run")
    assert store.model_sha256(1) == store.model_sha256(0)


# --- CKKS: the in-process driver's stage deadlines ----------------------------------------------------
# Stages (securefl.aggregators.ckks): "contribution" (a bank's commitment), "reveal" (the server's
# closed commitment set, then the bank's ciphertext), "verification" (request, co-signature),
# "context" and "release" (the key holder's round key and its decryption). Expected sums are numpy
# sums of the inputs, compared within the documented release bound (he.flooding).
CKKS_D = 8


def _ckks_spec(n: int = 5, threshold: int = 3, noise: Any = None, round_: int = 0,
               d: int = CKKS_D) -> tuple[Any, dict[int, np.ndarray]]:
    from securefl.protocol.plan import RoundSpec

    rng = np.random.default_rng(round_)
    inputs = {}
    for i in range(n):
        v = rng.normal(size=d)
        inputs[i] = 0.5 * v / np.linalg.norm(v)  # clipped to C = 1
    spec = RoundSpec(session_id=b"K" * 16, round=round_, participants=tuple(range(n)),
                     clip_norm=1.0, threshold=threshold, noise=noise)
    return spec, inputs


def _ckks_random() -> Any:
    from securefl.crypto.random import SeededRandomSource
    from securefl.crypto.secret import Secret

    return lambda cid, purpose: SeededRandomSource(Secret(b"\x07" * 32), f"{cid}/{purpose}")


class _Net:
    """The simulated network of a CKKS round: logs (stage, sender, recipient) of every message
    and, on ``clock``, makes chosen parties late: ``late[bank]`` = the stage whose reply of that
    bank takes 10 s (``"verification"``: only if it is asked), ``slow_set`` = banks the server's
    closed commitment set reaches 30 s late, ``late_cosignatures`` = how many of the first
    co-signatures take 10 s, ``key_holder`` = the key holder's slow stage."""

    def __init__(self, clock: FakeClock, *, late: dict[int, str] | None = None,
                 slow_set: set[int] | None = None, late_cosignatures: int = 0,
                 key_holder: str | None = None) -> None:
        self.clock, self.late = clock, dict(late or {})
        self.slow_set, self.late_cosignatures = set(slow_set or ()), late_cosignatures
        self.key_holder = key_holder
        self.log: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        from securefl.transport.inprocess_ckks import KEY_HOLDER

        self.log.append((stage, sender, recipient))
        cosig = stage == "verification" and sender >= 0
        if self.late.get(sender) == stage and (stage != "reveal" or recipient == SERVER):
            self.clock.advance(10.0)
        elif cosig and self.late_cosignatures > 0:
            self.late_cosignatures -= 1
            self.clock.advance(10.0)
        elif stage == "reveal" and sender == SERVER and recipient in self.slow_set:
            self.clock.advance(30.0)
        elif sender == KEY_HOLDER and stage == self.key_holder:
            self.clock.advance(10.0)
        return data

    def sent(self, stage: str, sender: int) -> bool:
        return any(stg == stage and s == sender for stg, s, _ in self.log)


def _ckks(net: _Net, **kw: Any) -> Any:
    from securefl.aggregators.ckks import CKKSAggregator

    return CKKSAggregator(deadlines=Deadlines(stage_s=5.0, bank_wait_s=20.0, clock=net.clock),
                          tamper=net, **kw)


def _assert_sum(out: Any, inputs: dict[int, np.ndarray], summed: tuple[int, ...]) -> None:
    from securefl.he.flooding import release_error_bound
    from securefl.he.params import DEFAULT_PARAMS

    assert out.survivors == summed
    exact = np.sum([inputs[i] for i in summed], axis=0)  # independent numpy sum
    assert np.max(np.abs(out.total - exact)) <= release_error_bound(
        len(summed), 8192, DEFAULT_PARAMS.scale, len(exact))


@pytest.mark.parametrize("stage", ["contribution", "reveal", "verification"])
def test_ckks_a_late_reply_is_a_dropout_at_its_stage(stage: str) -> None:
    """One bank's reply of ``stage`` arrives 10 s after the stage's message, the deadline is 5 s:
    it is discarded unread and the bank is a dropout at that stage. A late commitment or reveal
    leaves the bank out of the sum; a late co-signature (the first verifier asked, whoever it is)
    only skips that verifier for the next drawn one: its ciphertext stays in the sum."""
    clock = FakeClock()
    net = _Net(clock, late={2: stage} if stage != "verification" else None,
               late_cosignatures=1 if stage == "verification" else 0)
    spec, inputs = _ckks_spec()
    out = _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    if stage == "verification":
        late = next(s for stg, s, _ in net.log if stg == "verification" and s >= 0)
        assert out.dropouts == {late: "verification"}
        _assert_sum(out, inputs, (0, 1, 2, 3, 4))
        return
    assert out.dropouts == {2: stage}
    _assert_sum(out, inputs, (0, 1, 3, 4))
    assert "input/2" not in out.digests


def test_ckks_without_deadlines_the_same_delay_is_waited_for() -> None:
    """The control: no deadline, the same 10 s delay: bank 2 is summed."""
    from securefl.aggregators.ckks import CKKSAggregator

    clock = FakeClock()
    net = _Net(clock, late={2: "reveal"})
    spec, inputs = _ckks_spec()
    out = CKKSAggregator(deadlines=Deadlines(clock=clock), tamper=net).aggregate(
        spec, inputs, random=_ckks_random())
    assert out.dropouts == {} and clock() == 10.0
    _assert_sum(out, inputs, (0, 1, 2, 3, 4))


def test_ckks_a_bank_that_waits_too_long_gives_up_and_its_ciphertext_never_leaves() -> None:
    """The closed commitment set reaches bank 1 after 30 s; it waits 20 s: it gives up (FAILED),
    is a dropout at "reveal" (in the closed set, not in the sum), and no ciphertext of it is ever
    sent (the network log has no reveal from bank 1)."""
    clock = FakeClock()
    net = _Net(clock, slow_set={1})
    spec, inputs = _ckks_spec()
    out = _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    assert out.dropouts == {1: "reveal"}
    assert net.sent("contribution", 1) and not net.sent("reveal", 1)
    _assert_sum(out, inputs, (0, 2, 3, 4))


def test_a_ckks_client_that_gave_up_accepts_nothing_more() -> None:
    """The client machine: after give_up the round's closed set is refused (typed), no commitment
    can be made, and its state cannot be exported (the unrevealed ciphertext is gone)."""
    from securefl.crypto.signing import SigningKey
    from securefl.errors import RemoteProtocolError, StateError
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.protocol.ckks import CKKSClient, CKKSKeyHolder, ClientState, accept_public_context

    holder = CKKSKeyHolder(SigningKey.generate(), None, {}, params=DEFAULT_PARAMS, min_clients=1,
                           verifiers=1)
    sid = b"G" * 16
    public = accept_public_context(holder.round_context(sid, 0), holder.verify_key,
                                   DEFAULT_PARAMS, session_id=sid, round_=0)
    server = SigningKey.generate()
    client = CKKSClient(1, SigningKey.generate(), public, server.verify_key)
    client.commit(session_id=sid, round_=0, values=np.full(4, 0.1), clip_norm=1.0,
                  num_participants=3, noise_std=0.0, plan_digest=bytes(32), random=_ckks_random()(1, "noise"))
    client.give_up(sid, 0)
    assert client.state(sid, 0) is ClientState.FAILED
    from securefl.protocol.ckks_messages import CommitmentSet

    cset = CommitmentSet(session_id=sid, round=0, num_values=4, key_digest=public.digest,
                         entries=[], signature=bytes(64))
    with pytest.raises(RemoteProtocolError, match="cannot accept CommitmentSet while gave up"):
        client.reveal(cset)
    with pytest.raises(StateError, match="gave up"):
        client.export_round(sid, 0)
    with pytest.raises(StateError, match="cannot accept CommitRequest"):
        client.commit(session_id=sid, round_=0, values=np.full(4, 0.1), clip_norm=1.0,
                      num_participants=3, noise_std=0.0, plan_digest=bytes(32),
                      random=_ckks_random()(1, "noise"))


def test_ckks_too_many_late_banks_abort_before_anything_is_decrypted() -> None:
    """Three of five commitments late, threshold 3: the commitment set cannot close; the round
    aborts with DeadlineError (SFL311) naming them, and the key holder is never asked."""
    clock = FakeClock()
    net = _Net(clock, late={0: "contribution", 2: "contribution", 4: "contribution"})
    spec, inputs = _ckks_spec()
    with pytest.raises(DeadlineError, match=r"only 2 commitments.*\[0, 2, 4\] missed") as info:
        _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    assert info.value.code == "SFL311"
    assert not any(stg == "release" for stg, _, _ in net.log)


def test_ckks_too_few_timely_verifiers_abort() -> None:
    """Two co-signatures needed from the first four drawn contributors; three are late: the
    round aborts (DeadlineError) and nothing is decrypted."""
    clock = FakeClock()
    net = _Net(clock, late_cosignatures=3)
    spec, inputs = _ckks_spec()
    with pytest.raises(DeadlineError, match="only 1 of the 4 drawn verifiers answered"):
        _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    assert not any(stg == "release" for stg, _, _ in net.log)


@pytest.mark.parametrize("stage", ["context", "release"])
def test_ckks_a_late_key_holder_aborts_the_round(stage: str) -> None:
    """The key holder answers 10 s late (round key, or release): the round aborts with
    DeadlineError; a late release is discarded unread (no survivor set is released)."""
    clock = FakeClock()
    net = _Net(clock, key_holder=stage)
    spec, inputs = _ckks_spec()
    with pytest.raises(DeadlineError,
                       match=r"the key holder's \w+ reply missed the 5 s deadline") as info:
        _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    assert info.value.code == "SFL311"
    # a late round key: nothing was encrypted, no bank sent anything
    assert any(stg == "contribution" for stg, _, _ in net.log) is (stage == "release")


def test_ckks_a_release_always_carries_the_planned_noise() -> None:
    """Threshold 2 but the noise plan needs 4 survivors (z = 1, C = 1: each share has std
    1/sqrt(4)). One bank late: 4 survivors, the released sum carries noise of std >= z C = 1
    (measured on 4000 coordinates of zero inputs). Two banks late: 3 survivors would carry only
    sqrt(3)/2 of it, so the round aborts (DeadlineError) although 3 >= the threshold 2."""
    from securefl.protocol.plan import NoisePlan

    noise = NoisePlan(noise_multiplier=1.0, min_survivors=4)
    spec, inputs = _ckks_spec(threshold=2, noise=noise, d=4000)
    inputs = {i: np.zeros(4000) for i in inputs}
    out = _ckks(_Net(FakeClock(), late={3: "reveal"})).aggregate(spec, inputs,
                                                                 random=_ckks_random())
    assert out.survivors == (0, 1, 2, 4)
    assert float(np.std(out.total)) == pytest.approx(1.0, rel=0.05)  # 4 shares of std 1/2
    spec2, _ = _ckks_spec(threshold=2, noise=noise, d=4000, round_=1)
    net = _Net(FakeClock(), late={3: "reveal", 1: "contribution"})
    with pytest.raises(DeadlineError, match=r"only 3 contributions; at least 4 needed"):
        _ckks(net).aggregate(spec2, inputs, random=_ckks_random())
    assert not any(stg == "release" for stg, _, _ in net.log)


_FATES = (None, "contribution", "reveal", "gave_up", "verification")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fates=st.lists(st.sampled_from(_FATES), min_size=5, max_size=5))
def test_ckks_any_pattern_of_late_banks_releases_exactly_the_timely_sum_or_aborts_typed(
        fates: list[str | None]) -> None:
    """Each of five banks is on time, late at one stage (10 s against a 5 s deadline; a
    "verification" straggler only if it is asked to verify) or gives up waiting for the closed
    set (30 s against 20 s); threshold 3, two co-signatures from the first four drawn. Either the
    round releases exactly the sum of the banks whose ciphertext arrived in time, with every
    late bank a dropout at its stage, or it aborts with DeadlineError (SFL311): because fewer than
    3 ciphertexts arrived, or because fewer than 2 drawn verifiers answered in time."""
    late = {b: f for b, f in enumerate(fates) if f in ("contribution", "reveal", "verification")}
    gave_up = {b for b, f in enumerate(fates) if f == "gave_up"}
    net = _Net(FakeClock(), late=late, slow_set=gave_up)
    spec, inputs = _ckks_spec()
    summed = tuple(b for b, f in enumerate(fates) if f in (None, "verification"))
    try:
        out = _ckks(net).aggregate(spec, inputs, random=_ckks_random())
    except DeadlineError as err:
        assert err.code == "SFL311"
        asked_late = {s for stg, s, _ in net.log if stg == "verification" and s in late}
        timely = {s for stg, s, _ in net.log if stg == "verification" and s >= 0} - asked_late
        assert len(summed) < 3 or (len(timely) < 2 and asked_late), (fates, err.message)
        assert not any(stg == "release" for stg, _, _ in net.log)  # nothing was decrypted
        return
    assert len(summed) >= 3
    _assert_sum(out, inputs, summed)
    asked_late = {s for stg, s, _ in net.log if stg == "verification" and s in late}
    expected = {b: ("reveal" if b in gave_up else f) for b, f in enumerate(fates)
                if f in ("contribution", "reveal", "gave_up")}
    expected.update({b: "verification" for b in asked_late})
    assert out.dropouts == expected
    for b in gave_up:  # a bank that gave up never sent its ciphertext
        assert not net.sent("reveal", b)


# --- CKKS through the library API (securefl.train), each run directory checked by the CLI -----------
def _ckks_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadlines: Deadlines,
                net: Any = None, *, dp: bool = False) -> Any:
    """securefl.train over 4 banks with aggregation "ckks", threshold 3; ``net`` (a tamper hook,
    the simulated network) is handed to the CKKS driver the run builds."""
    import torch

    import securefl
    import securefl.runtime as runtime

    if net is not None:
        build = runtime.make_aggregator

        def with_net(*args: Any, **kwargs: Any) -> Any:
            agg = build(*args, **kwargs)
            agg.tamper = net
            return agg

        monkeypatch.setattr(runtime, "make_aggregator", with_net)
    torch.manual_seed(0)
    extra = {"noise_multiplier": 1.0, "record_noise_multiplier": 1.0} if dp else {"dp": False}
    return securefl.train(
        torch.nn.Sequential(torch.nn.Linear(3, 1)), _lib_banks(FakeClock(), set()),
        securefl.RunConfig(rounds=1, batch_size=16, out=str(tmp_path / "run"), threshold=3,
                           aggregation="ckks", **extra),
        deadlines=deadlines)


def _audit_verify(run_dir: Path) -> None:
    """`securefl audit verify RUN_DIR` exits 0 (the CLI, in process)."""
    from securefl.cli.main import main

    assert main(["audit", "verify", str(run_dir)]) == 0


def _client_events(run_dir: Path) -> list[tuple[int, float]]:
    """(survivors, noise multiplier) of each client-level event in the ledger file (JSON lines)."""
    out = []
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["level"] == "client":
            out.append((int(entry["survivors"]), float(entry["event"]["noise_multiplier"])))
    return out


def test_train_ckks_a_bank_late_at_reveal_is_a_dropout_and_the_ledger_counts_the_survivors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """securefl.train, ckks with DP: bank2's ciphertext arrives 10 s after the closed set, the
    deadline is 5 s: it is a dropout at "reveal", the round commits over the other three, the
    record and the ledger's client-level event count three survivors, and the run directory
    passes `securefl audit verify`."""
    clock = FakeClock()
    result = _ckks_train(tmp_path, monkeypatch, Deadlines(stage_s=5.0, clock=clock),
                         _Net(clock, late={2: "reveal"}), dp=True)
    assert result.rounds_completed == 1
    (rep,) = result.history
    assert rep.dropouts == {"bank2": "reveal"} and sorted(rep.survivors) == ["bank0", "bank1",
                                                                             "bank3"]
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "committed" and rec["dropouts"] == {"bank2": "reveal"}
    # three shares of std z C / sqrt(3) (the plan's min_survivors is the threshold 3): z = 1
    assert _client_events(tmp_path / "run") == [(3, pytest.approx(1.0))]
    _audit_verify(tmp_path / "run")


def test_train_ckks_too_many_late_banks_abort_with_sfl311(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two of four banks late at "reveal" with DP on: two ciphertexts are fewer than the three the
    noise plan needs, so nothing is decrypted; the round aborts with DeadlineError (SFL311 in the
    record), the model is unchanged and the run directory verifies."""
    from securefl.audit.store import RunStore

    clock = FakeClock()
    net = _Net(clock, late={0: "reveal", 3: "reveal"})
    result = _ckks_train(tmp_path, monkeypatch, Deadlines(stage_s=5.0, clock=clock), net, dp=True)
    assert result.rounds_completed == 0 and "missed a deadline" in str(result.history[0].error)
    assert not any(stg == "release" for stg, _, _ in net.log)
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL311"
    store = RunStore.open(tmp_path / "run")
    assert store.model_sha256(1) == store.model_sha256(0)
    _audit_verify(tmp_path / "run")


@pytest.mark.parametrize(("wait", "reason"), [
    ("bank_wait_s", "only 0 contributions"),
    ("stage_s", "the key holder's context reply missed the 5 s deadline"),
])
def test_train_ckks_an_unanswering_server_or_key_holder_aborts_the_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait: str, reason: str) -> None:
    """A clock that moves 10 s per reading against 5 s deadlines. ``bank_wait_s``: every bank
    waits too long for the server's closed set and gives up before revealing, so no ciphertext
    is summed. ``stage_s``: the key holder's round key arrives late, so nothing is encrypted.
    Either way the round aborts with DeadlineError (SFL311 in the record) and the run directory
    verifies."""
    result = _ckks_train(tmp_path, monkeypatch, Deadlines(**{wait: 5.0}, clock=_Ticking(10.0)))
    assert result.rounds_completed == 0 and reason in str(result.history[0].error)
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL311"
    _audit_verify(tmp_path / "run")
