"""A hostile server or network must make honest clients fail loudly, with typed errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from secagg_helpers import expected_sum, make_round

from securefl.crypto.signing import VerifyKey
from securefl.errors import IntegrityError, MessageError, RemoteProtocolError, SignatureError
from securefl.protocol import messages as m
from securefl.protocol.secagg import DoubleRevealError, SecAggServer, Start
from securefl.transport.inprocess import InProcessDriver, Tamper


def on(typ: type, recipient: int, fn: Callable[[Any], Any]) -> Tamper:
    """Rewrite messages of type ``typ`` sent to ``recipient`` (-1: the server)."""

    def tamper(stage: str, sender: int, to: int, data: bytes) -> bytes:
        msg = m.decode_message(data)
        if isinstance(msg, typ) and to == recipient:
            out = fn(msg)
            return out if isinstance(out, bytes) else m.encode_message(out)
        return data

    return tamper


def run(r, tamper: Tamper | None = None, server: SecAggServer | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    return InProcessDriver(server or r.server, r.clients, tamper=tamper, **kw).run()


def test_honest_baseline_passes_through_the_tamper_hook() -> None:
    r = make_round(5, degree=4)
    res = run(r, on(m.KeyRoster, 0, lambda msg: msg))
    assert (res.field_sum == expected_sum(r, res.survivors)).all()


def test_victim_listed_alive_and_dropped_is_refused() -> None:
    r = make_round(5, degree=4, threshold=3)

    def both(msg: m.UnmaskRequest) -> m.UnmaskRequest:
        return msgspec.structs.replace(msg, dropped=sorted({*msg.dropped, msg.alive[1]}))

    with pytest.raises(DoubleRevealError):
        run(r, on(m.UnmaskRequest, 0, both), dropouts={4: "masked"})
    assert r.clients[0].revealed == {}  # nothing was revealed


def test_alive_set_differing_from_signed_set_is_refused() -> None:
    r = make_round(5, degree=4, threshold=3)

    def shrink(msg: m.UnmaskRequest) -> m.UnmaskRequest:
        return msgspec.structs.replace(msg, alive=msg.alive[:-1], dropped=[msg.alive[-1]])

    with pytest.raises(RemoteProtocolError, match="differs from the survivor set"):
        run(r, on(m.UnmaskRequest, 0, shrink))


def test_substituted_public_key_of_a_peer_is_detected() -> None:
    r = make_round(5, degree=4)
    attacker = make_round(5, degree=4, seed=b"attacker")

    def swap(msg: m.KeyRoster) -> m.KeyRoster:
        entries = list(msg.entries)
        fake = attacker.clients[2].receive(Start())[0]
        entries[2] = msgspec.structs.replace(entries[2], mask_pk=fake.mask_pk)
        return msgspec.structs.replace(msg, entries=entries)

    with pytest.raises(SignatureError):
        run(r, on(m.KeyRoster, 0, swap))


def test_substituted_own_key_is_detected() -> None:
    r = make_round(5, degree=4)

    def swap_own(msg: m.KeyRoster) -> m.KeyRoster:
        entries = list(msg.entries)
        entries[0] = msgspec.structs.replace(entries[0], cipher_pk=entries[1].cipher_pk)
        return msgspec.structs.replace(msg, entries=entries)

    with pytest.raises(RemoteProtocolError, match="own keys"):
        run(r, on(m.KeyRoster, 0, swap_own))


def test_key_signed_by_the_wrong_identity_is_detected() -> None:
    r = make_round(4, degree=3)
    # the manifest says client 1's key is client 2's: its genuine signature must not verify
    r.federation.identities[1] = r.federation.identities[2]  # type: ignore[index]
    with pytest.raises(SignatureError):
        run(r)
    assert isinstance(r.federation.identities[1], VerifyKey)


def _capture(r, typ: type, recipient: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []

    def tamper(stage: str, sender: int, to: int, data: bytes) -> bytes:
        if to == recipient and isinstance(m.decode_message(data), typ):
            seen.append(data)
        return data

    run(r, tamper)
    return seen


@pytest.mark.parametrize("other", [{"round_": 2}, {"session": b"T" * 16}])
def test_replay_from_another_round_or_session_is_refused(other: dict[str, Any]) -> None:
    old = make_round(5, degree=4)
    old_roster = _capture(old, m.KeyRoster, 0)[0]
    new = make_round(5, degree=4, **other)
    with pytest.raises(RemoteProtocolError, match="another session or round"):
        run(new, on(m.KeyRoster, 0, lambda _msg: old_roster))


def test_replayed_share_with_rewritten_header_fails_authentication() -> None:
    old = make_round(5, degree=4)
    old_shares = m.decode_message(_capture(old, m.ForwardedShares, 0)[0])
    new = make_round(5, degree=4, round_=2)

    def replay(msg: m.ForwardedShares) -> m.ForwardedShares:
        return msgspec.structs.replace(msg, shares=old_shares.shares)  # type: ignore[union-attr]

    with pytest.raises(IntegrityError):
        run(new, on(m.ForwardedShares, 0, replay))


@pytest.mark.parametrize("cut", ["flip", "truncate"])
def test_forged_or_truncated_share_fails_authentication(cut: str) -> None:
    r = make_round(5, degree=4)

    def forge(msg: m.ForwardedShares) -> m.ForwardedShares:
        ct = msg.shares[0].ciphertext
        ct = ct[:20] + bytes([ct[20] ^ 1]) + ct[21:] if cut == "flip" else ct[:40]
        shares = [msgspec.structs.replace(msg.shares[0], ciphertext=ct), *msg.shares[1:]]
        return msgspec.structs.replace(msg, shares=shares)

    with pytest.raises(IntegrityError):
        run(r, on(m.ForwardedShares, 0, forge))


def test_share_truncated_below_the_wire_minimum_is_rejected_before_use() -> None:
    r = make_round(5, degree=4)

    def cut(msg: m.ForwardedShares) -> bytes:
        raw = msgspec.msgpack.encode(msgspec.to_builtins(msg))
        obj = msgspec.msgpack.decode(raw)
        obj["shares"][0]["ciphertext"] = b"short"
        return msgspec.msgpack.encode(obj)

    with pytest.raises(MessageError):
        run(r, on(m.ForwardedShares, 0, cut))


def test_forged_unmask_share_from_a_client_is_detected_by_the_server() -> None:
    r = make_round(4, threshold=3)

    def forge(msg: m.UnmaskShares) -> m.UnmaskShares:
        if msg.sender != 1:
            return msg
        bad = [msgspec.structs.replace(s, share=bytes(65) + b"\x07") for s in msg.self_mask_shares]
        return msgspec.structs.replace(msg, self_mask_shares=bad)

    with pytest.raises(IntegrityError):
        run(r, on(m.UnmaskShares, -1, forge))


class _ForwardingServer(SecAggServer):
    """A malicious server that forwards consistency signatures without checking them."""

    def _on_signature(self, msg: m.ConsistencySignature) -> list[Any]:
        self._signatures[msg.sender] = msg.signature
        return []


def test_different_survivor_sets_for_different_clients_are_detected() -> None:
    r = make_round(5, degree=4, threshold=3)
    server = _ForwardingServer(r.config, r.federation)

    def other_view(msg: m.SurvivorList) -> m.SurvivorList:
        return msgspec.structs.replace(msg, survivors=msg.survivors[:-1])

    # client 0 signs {0..3}, the others sign {0..4}; client 0's unmask request shows their
    # signatures, which do not verify on the set client 0 saw
    def request_for_zero(msg: m.UnmaskRequest) -> m.UnmaskRequest:
        return msgspec.structs.replace(msg, alive=msg.alive[:-1], dropped=[msg.alive[-1]])

    def tamper(stage: str, sender: int, to: int, data: bytes) -> bytes:
        data = on(m.SurvivorList, 0, other_view)(stage, sender, to, data)
        return on(m.UnmaskRequest, 0, request_for_zero)(stage, sender, to, data)

    with pytest.raises(SignatureError):
        run(r, tamper, server=server)
    assert r.clients[0].revealed == {}


def test_too_few_signatures_on_the_clients_set_aborts() -> None:
    from securefl.errors import AggregationAbortedError

    r = make_round(5, degree=4, threshold=4)

    def only_own(msg: m.UnmaskRequest) -> m.UnmaskRequest:
        return msgspec.structs.replace(msg, signatures=msg.signatures[:1])

    with pytest.raises(AggregationAbortedError, match="valid consistency signatures"):
        run(r, on(m.UnmaskRequest, 0, only_own))


def test_server_withholding_neighbours_shares_is_refused() -> None:
    # without pairwise masks, y_0 = x_0 + PRG(b_0), and b_0 is revealed at unmask: client 0 must
    # refuse to send its masked input
    from securefl.errors import AggregationAbortedError

    r = make_round(5, degree=4, threshold=3)

    def withhold(msg: m.ForwardedShares) -> m.ForwardedShares:
        return msgspec.structs.replace(msg, shares=msg.shares[:1])

    with pytest.raises(AggregationAbortedError, match="holds shares of 2 clients"):
        run(r, on(m.ForwardedShares, 0, withhold))
    assert r.clients[0].state.value == "failed"
