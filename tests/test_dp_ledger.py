"""Privacy ledger: strict decoding, hash chain, check-before-commit, schema evolution."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.dp.events import (
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.dp.ledger import GENESIS_HASH, Draft, Ledger, LedgerEntry
from securefl.errors import LedgerError, PrivacyError


def _sgd_draft(rnd: int, bank: str = "a", steps: int = 10) -> Draft:
    ev = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), steps)
    return Draft(round=rnd, level="record", party=f"bank:{bank}", event=ev, clip_norm=1.0,
                 participants=1, survivors=1, steps=steps)


def _fed_draft(rnd: int, survivors: int = 3) -> Draft:
    return Draft(round=rnd, level="client", party="federation", event=GaussianEvent(1.5),
                 clip_norm=0.5, participants=3, survivors=survivors, sampling="all")


def _ledger(rounds: int = 3) -> Ledger:
    led = Ledger()
    for r in range(rounds):
        led.record([_sgd_draft(r, "a"), _sgd_draft(r, "b"), _fed_draft(r)])
    return led


def test_round_trip_and_chain() -> None:
    led = _ledger()
    data = led.to_bytes()
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 9
    # independent check of the chain: prev_hash of line i = sha256(line i-1)
    prev = GENESIS_HASH
    for i, line in enumerate(lines):
        obj = json.loads(line)
        assert obj["seq"] == i and obj["prev_hash"] == prev
        assert list(obj) == sorted(obj)  # canonical: sorted keys
        prev = hashlib.sha256(line).hexdigest()
    again = Ledger.from_bytes(data)
    assert again.entries == led.entries and again.head_hash == prev == led.head_hash
    assert again.to_bytes() == data


def _lines(led: Ledger) -> list[bytes]:
    return led.to_bytes().split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(x + b"\n" for x in lines)


def test_tampered_value_detected_at_next_entry() -> None:
    lines = _lines(_ledger())
    lines[4] = lines[4].replace(b'"noise_multiplier":1.1', b'"noise_multiplier":9.9')
    with pytest.raises(LedgerError, match="seq=5: prev_hash"):
        Ledger.from_bytes(_join(lines))


def test_missing_entry_detected() -> None:
    lines = _lines(_ledger())
    del lines[3]
    with pytest.raises(LedgerError, match="seq=4: expected seq=3"):
        Ledger.from_bytes(_join(lines))


def test_out_of_order_detected() -> None:
    lines = _lines(_ledger())
    lines[2], lines[3] = lines[3], lines[2]
    with pytest.raises(LedgerError, match="seq=3: expected seq=2"):
        Ledger.from_bytes(_join(lines))


def test_duplicate_detected() -> None:
    lines = _lines(_ledger())
    lines.insert(5, lines[4])
    with pytest.raises(LedgerError, match="seq=4: expected seq=5 \\(duplicated"):
        Ledger.from_bytes(_join(lines))


def test_renumbered_and_rechained_reorder_still_caught_by_round_order() -> None:
    led = Ledger()
    led.record([_sgd_draft(2)])
    with pytest.raises(LedgerError, match="round 1 after round 2"):
        led.record([_sgd_draft(1)])


def test_truncated_last_line() -> None:
    data = _ledger().to_bytes()
    with pytest.raises(LedgerError, match="torn"):
        Ledger.from_bytes(data[:-5])


@pytest.mark.parametrize(("old", "new", "match"), [
    (b'"type":"gaussian"', b'"type":"laplace"', "line 2: .*laplace"),
    (b'"clip_norm":1.0,', b'"clip_norm":1.0,"epsilon":0.1,', "line 2: .*unknown field `epsilon`"),
    (b'"noise_multiplier":1.1', b'"noise_multiplier":-1.1', "line 2: .*noise_multiplier"),
    (b'"rate":0.01', b'"rate":1.5', "line 2: .*rate"),
    (b'"clip_norm":1.0', b'"clip_norm":-1.0', "line 2: .*clip_norm"),
    (b'"survivors":1', b'"survivors":5', "line 2: .*survivors"),
    (b'"party":"bank:b"', b'"party":"mallory"', "line 2: .*party"),
    (b'"version":1', b'"version":7', "line 2: .*version 7"),
    (b'"noise_multiplier":1.1', b'"noise_multiplier":NaN', "line 2"),
])
def test_invalid_entries_name_the_line(old: bytes, new: bytes, match: str) -> None:
    lines = _lines(_ledger(1))
    assert old in lines[1]
    lines[1] = lines[1].replace(old, new, 1)
    with pytest.raises(LedgerError, match=match):
        Ledger.from_bytes(_join(lines))


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_events_validate_at_construction(bad: float) -> None:
    with pytest.raises(PrivacyError, match=r"GaussianEvent\.noise_multiplier"):
        GaussianEvent(bad)
    with pytest.raises(PrivacyError, match=r"PoissonSampledEvent\.rate"):
        PoissonSampledEvent(bad, GaussianEvent(1.0))
    with pytest.raises(PrivacyError, match=r"DistributedDiscreteGaussianEvent\.sigma_int"):
        DistributedDiscreteGaussianEvent(sigma_int=bad, survivors=2, sensitivity_int=1.0, dim=3)


def test_event_field_validation_names_the_field() -> None:
    with pytest.raises(PrivacyError, match=r"SelfComposedEvent\.count"):
        SelfComposedEvent(GaussianEvent(1.0), -1)
    with pytest.raises(PrivacyError, match="survivors"):
        DistributedDiscreteGaussianEvent(sigma_int=3.0, survivors=0, sensitivity_int=1.0, dim=3)
    with pytest.raises(PrivacyError, match=r"sigma_int must be >= 0\.5"):
        DistributedDiscreteGaussianEvent(sigma_int=0.4, survivors=2, sensitivity_int=1.0, dim=3)


def test_append_checks_everything_before_commit() -> None:
    led = _ledger(1)
    before = led.to_bytes()
    good = led.seal([_sgd_draft(1)])[0]
    bad = msgspec.structs.replace(good, seq=good.seq + 1)
    with pytest.raises(LedgerError):
        led.append([good, bad])
    assert led.to_bytes() == before  # nothing recorded
    with pytest.raises(LedgerError, match="seq=4: record-level entries belong to a bank"):
        led.record([_sgd_draft(1), Draft(round=1, level="record", party="federation",
                                         event=GaussianEvent(1.0), clip_norm=1.0,
                                         participants=1, survivors=1)])
    assert led.to_bytes() == before


def test_forged_entry_with_wrong_prev_hash() -> None:
    led = _ledger(1)
    forged = LedgerEntry(seq=3, round=1, level="client", party="federation",
                         event=GaussianEvent(100.0), clip_norm=1.0, participants=3, survivors=3,
                         prev_hash="ab" * 32)
    with pytest.raises(LedgerError, match="seq=3: prev_hash"):
        led.append([forged])


def test_old_line_without_new_optional_field_still_verifies() -> None:
    # a DDG event written before `sensitivity_l1_int` existed (field absent) decodes and chains
    led = Ledger()
    led.record([Draft(round=0, level="client", party="federation",
                      event=DistributedDiscreteGaussianEvent(sigma_int=40.0, survivors=3,
                                                             sensitivity_int=100.0, dim=10),
                      clip_norm=1.0, participants=3, survivors=3, sampling="all")])
    line = _lines(led)[0].replace(b'"sensitivity_l1_int":null,', b"")
    old = Ledger.from_bytes(line + b"\n")
    assert old.entries[0].event == led.entries[0].event
    nxt = old.record([_fed_draft(1)])[0]
    assert nxt.prev_hash == hashlib.sha256(line).hexdigest()
    assert Ledger.from_bytes(old.to_bytes()).head_hash == old.head_hash


def test_entry_rejects_non_event() -> None:
    with pytest.raises(LedgerError, match="seq=0: event must be"):
        LedgerEntry(seq=0, round=0, level="client", party="federation",
                    event={"noise_multiplier": 1.0},  # type: ignore[arg-type]
                    clip_norm=1.0, participants=1, survivors=1, prev_hash=GENESIS_HASH)


def test_save_load(tmp_path: Path) -> None:
    led = _ledger(2)
    path = tmp_path / "run" / "ledger.jsonl"
    led.save(path)
    assert Ledger.load(path).entries == led.entries


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 50)), min_size=1, max_size=12),
       st.data())
def test_any_single_byte_flip_is_detected_or_harmless(spec: list[tuple[int, int]],
                                                      data: st.DataObject) -> None:
    led = Ledger()
    for rnd, (_kind, steps) in enumerate(spec):
        led.record([_sgd_draft(rnd, steps=steps)])
    raw = bytearray(led.to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        again = Ledger.from_bytes(bytes(raw))
    except LedgerError:
        return
    # only a change in the last line can escape the chain; it must then still be a valid entry
    # that differs from the original only in that last entry
    assert again.entries[:-1] == led.entries[:-1]
