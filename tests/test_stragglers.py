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


def test_stage_deadlines_are_refused_where_no_transport_enforces_them() -> None:
    """plain and ckks run in process without a staged transport: a stage deadline there would be
    silently ignored, so it is refused (the training deadline applies to every mode)."""
    from securefl.aggregators import make_aggregator

    for name in ("plain", "ckks"):
        with pytest.raises(ConfigError, match="training_s"):
            make_aggregator(name, deadlines=Deadlines(stage_s=5.0))
        assert make_aggregator(name, deadlines=Deadlines(training_s=5.0)).name == name


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
    assert result.rounds_completed == 0 and "missed a deadline" in str(result.history[0].aborted)
    verify_run_dir(tmp_path / "run")
    (rec,) = _records(tmp_path / "run")
    assert rec["status"] == "aborted" and rec["error_code"] == "SFL311"
    store = RunStore.open(tmp_path / "run")
    assert store.model_sha256(1) == store.model_sha256(0)
