"""Rule-based fuzzing of the protocol machines' handlers (issue 17): hypothesis stateful tests drive
the SecAgg server, a SecAgg client and the CKKS server with valid messages of an honest round
delivered in order, out of order, duplicated, mutated (tests/fuzz/mutate.py: truncations, bit
flips, wrong types, huge lengths, a field replaced) and with early deadlines.

Properties, checked after every step and at the end:
- only securefl's typed errors (SecureFLError) come out of a handler (anything else fails);
- SecAgg: a refused input ends the round cleanly: the machine is FAILED, refuses every later
  input, and the server releases nothing; a machine that only ever accepted honest messages and
  finishes gives the exact result (the survivors' sum, independent of the package:
  tests/secagg_helpers.expected_sum; a client's replies byte-equal to the honest round's);
- CKKS: a refused input changes nothing (same state, same data, the running sum untouched), so the
  honest rest of the round still publishes the honest round's exact manifest.

CI budget: a few seconds per machine (``SECUREFL_FUZZ_EXAMPLES`` scales it, as for the decoders).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import msgspec
import numpy as np
import pytest
from fuzz import mutate
from fuzz.machines import Input, feed_rest, new_round, transcript
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from securefl.errors import SecureFLError
from securefl.protocol.messages import decode_message, encode_message
from securefl.protocol.secagg import ClientState, Deadline, ServerState
from tests.secagg_helpers import expected_sum

EXAMPLES = int(os.environ.get("SECUREFL_FUZZ_EXAMPLES", "100"))
STATEFUL = settings(max_examples=max(10, EXAMPLES // 4), stateful_step_count=20, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much])


def _live(machine: Any) -> bool:
    return not machine.refused


class _Replay(RuleBasedStateMachine):
    """The rules every machine gets: an honest prefix of its round's inputs (``inputs``) first,
    so hostile inputs meet every state, then the next input in order, or any of them at the wrong
    time (early, late, again). Once a SecAgg machine refused an input (``refused``), only the
    probe rule runs: every further input must be refused too."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: tuple[Any, ...] = ()
        self.pos = 0  # the next honest input in order
        self.refused = False

    def feed(self, item: Any, *, genuine: bool) -> Any:
        raise NotImplementedError

    @initialize(k=st.integers(0, 63))
    def honest_prefix(self, k: int) -> None:
        for _ in range(k % (len(self.inputs) + 1)):
            self.next_in_order()

    @precondition(_live)
    @rule()
    def next_in_order(self) -> None:
        if self.pos < len(self.inputs):
            self.feed(self.inputs[self.pos], genuine=True)
            self.pos += 1

    @precondition(_live)
    @rule(i=st.integers(0, 63))
    def out_of_order_or_duplicate(self, i: int) -> None:
        self.feed(self.inputs[i % len(self.inputs)], genuine=True)

    @precondition(lambda self: self.refused)
    @rule(i=st.integers(0, 63))
    def after_a_refusal(self, i: int) -> None:
        self.feed(self.inputs[i % len(self.inputs)], genuine=True)  # feed asserts it is refused


class _SecAggMachine(_Replay):
    """Shared rules; subclasses pick the machine (server, client 0) and its honest inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.round = new_round()
        self.machine: Any = None
        self.accepted: list[bytes | None] = []  # every accepted input (None: a local event)
        self.tainted = False  # a message that is not an honest one was accepted

    def feed(self, inp: Input, *, genuine: bool) -> list[Any] | None:
        """One input; only SecureFLError may come out. Returns the machine's output, or None
        when it refused."""
        already = self.refused
        try:
            out: list[Any] = self.machine.receive(inp.message())
        except SecureFLError:
            self.refused = True
            return None
        assert not already, f"{inp.label} was accepted after the machine refused an input"
        self.tainted |= not genuine
        self.accepted.append(inp.data)
        return out

    @precondition(_live)
    @rule(data=st.data())
    def mutated(self, data: st.DataObject) -> None:
        msgs = [inp for inp in self.inputs if inp.data is not None]
        seed = data.draw(st.sampled_from(msgs))
        assert seed.data is not None
        raw = data.draw(mutate.hostile_inputs((seed.data,), "msgpack"))
        try:
            decode_message(raw)
        except SecureFLError:
            return  # the decoder refused it (typed): the machine never sees it
        self.feed(Input("mutated", raw), genuine=raw == seed.data)

    @precondition(_live)
    @rule()
    def early_deadline(self) -> None:
        """The transport's deadline at any time (for a client, a local event it never expects)."""
        self.feed(Input("deadline", local=Deadline()), genuine=True)

    @invariant()
    def refusal_is_final(self) -> None:
        if self.refused:
            assert self.machine.state.value == "failed"

    def check_end(self) -> None:
        self.refusal_is_final()

    def teardown(self) -> None:
        """The honest rest of the round: the machine finishes (the exact result) or aborts,
        typed, and accepts nothing after a refusal."""
        if not self.refused:
            try:
                feed_rest(self.machine, self.inputs[self.pos:])
            except SecureFLError:
                self.refused = True
        self.check_end()


class SecAggServerMachine(_SecAggMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = self.round.server
        self.inputs = transcript().server
        self.released: Any = None

    @invariant()
    def releases_only_exact_sums(self) -> None:
        """Nothing is released by a round that refused an input before it finished; a release
        is the survivors' exact sum (untainted rounds), and a later refusal (a stray input after
        DONE) neither takes it back nor changes it."""
        server = self.round.server
        if self.released is not None:
            assert server.result is self.released
            return
        if self.refused:
            assert server.result is None
        elif server.result is not None:
            assert server.state is ServerState.DONE
            self.released = server.result
            if not self.tainted:
                assert (server.result.field_sum
                        == expected_sum(self.round, server.result.survivors)).all()

    def check_end(self) -> None:
        self.releases_only_exact_sums()
        self.refusal_is_final()


class SecAggClientMachine(_SecAggMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = self.round.clients[0]
        self.inputs = transcript().client[0]
        self.finished = False

    def feed(self, inp: Input, *, genuine: bool) -> list[Any] | None:
        out = super().feed(inp, genuine=genuine)
        n = len(self.accepted)
        if out is not None and self.accepted == [h.data for h in self.inputs[:n]]:
            # the honest inputs in order: the honest round's replies, byte for byte
            assert b"".join(encode_message(m) for m in out) == transcript().client_out[0][n - 1]
        return out

    @invariant()
    def reveals_only_in_a_completed_honest_view(self) -> None:
        """A client reveals shares only in the step that completes its round (DONE): never
        from a refused input, never before."""
        client = self.round.clients[0]
        self.finished |= client.state is ClientState.DONE
        if not self.finished:
            assert client.revealed == {}



TestSecAggServerMachine = SecAggServerMachine.TestCase
TestSecAggServerMachine.settings = STATEFUL
TestSecAggClientMachine = SecAggClientMachine.TestCase
TestSecAggClientMachine.settings = STATEFUL


def test_a_mutated_share_message_is_refused_and_final() -> None:
    """A fixed case of the property (so it runs whatever hypothesis draws): client 1's ShareKeys
    with one share's receiver changed is refused, typed, and the server then accepts nothing."""
    from securefl.protocol.messages import SealedShare, ShareKeys

    t = transcript()
    server = new_round().server
    k = next(i for i, inp in enumerate(t.server) if "ShareKeys" in inp.label)
    for inp in t.server[:k]:
        server.receive(inp.message())
    msg = t.server[k].message()
    assert isinstance(msg, ShareKeys)
    bad = msgspec.structs.replace(msg, shares=[SealedShare(99, s.ciphertext) for s in msg.shares])
    with pytest.raises(SecureFLError):
        feed_rest(server, (Input("bad", encode_message(bad)), *t.server[k + 1:]))
    assert server.state is ServerState.FAILED and server.result is None


# --- CKKS server -------------------------------------------------------------------------------------
SESSION = b"fuzz-machines-16"
IDS = (1, 2, 3)
D = 6


@functools.cache
def _ckks_world() -> dict[str, Any]:
    """Keys, the round's public context, the honest inputs of the server (commitments, close,
    reveals, close), and the honest aggregate's and reveals' digests."""
    from securefl.crypto.random import SeededRandomSource
    from securefl.crypto.secret import Secret
    from securefl.crypto.signing import SigningKey
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.he.vectors import ciphertext_digest, load_chunks
    from securefl.protocol.ckks import CKKSClient, CKKSKeyHolder, accept_public_context
    from securefl.protocol.ckks.server import CloseCommitments, CloseReveals

    keys = {i: SigningKey.from_seed(Secret(bytes([70 + i]) * 32)) for i in IDS}
    fed = {i: k.verify_key for i, k in keys.items()}
    server_key = SigningKey.from_seed(Secret(b"\x71" * 32))
    holder = CKKSKeyHolder(SigningKey.from_seed(Secret(b"\x72" * 32)), None, fed, min_clients=2,
                           verifiers=1, server_key=server_key.verify_key, params=DEFAULT_PARAMS)
    public = accept_public_context(holder.round_context(SESSION, 0), holder.verify_key,
                                   DEFAULT_PARAMS, session_id=SESSION, round_=0)
    world: dict[str, Any] = {"fed": fed, "server_key": server_key, "public": public}
    clients = {i: CKKSClient(i, keys[i], public, server_key.verify_key) for i in IDS}
    commits = [c.commit(session_id=SESSION, round_=0, values=np.full(D, 0.1 * i), clip_norm=1.0,
                        num_participants=len(IDS), noise_std=0.0,
                        plan_digest=bytes(32), random=SeededRandomSource(Secret(b"\x73" * 32), f"noise/{i}"))
               for i, c in clients.items()]
    server = _ckks_server(world)
    for c in commits:
        server.receive_commitment(c)
    cset = server.close_commitments()
    reveals = [c.reveal(cset) for c in clients.values()]
    world["inputs"] = (*commits, CloseCommitments(), *reveals, CloseReveals())
    # the honest aggregate, summed here with TenSEAL (not by the server under test): addition of
    # ciphertexts is exact, so any order gives these bytes
    acc = load_chunks(public, reveals[0].chunks, D)
    for r in reveals[1:]:
        for a, b in zip(acc, load_chunks(public, r.chunks, D), strict=True):
            a.add_(b)
    world["aggregate_digest"] = ciphertext_digest([bytes(v.serialize()) for v in acc])
    world["digests"] = {r.client_id: ciphertext_digest(r.chunks) for r in reveals}
    return world


def _ckks_server(world: dict[str, Any]) -> Any:
    from securefl.protocol.ckks import CKKSServer

    return CKKSServer(world["public"], world["fed"], world["server_key"], session_id=SESSION,
                      round_=0, num_values=D, participants=IDS, min_clients=2, verifiers=1)


def _ckks_receive(server: Any, msg: Any) -> Any:
    from securefl.protocol.ckks.server import CloseCommitments, CloseReveals
    from securefl.protocol.ckks_messages import Commitment, Contribution

    handlers = {Commitment: server.receive_commitment, Contribution: server.receive_contribution,
                CloseCommitments: lambda _: server.close_commitments(),
                CloseReveals: lambda _: server.close()}
    return handlers[type(msg)](msg)


def _snapshot(server: Any) -> tuple[Any, ...]:
    """The server's state and every piece of its data a handler may change (the running sum by
    the digest of its serialization)."""
    data = server._data
    acc = getattr(data, "acc", None)
    return (server.state, id(data), tuple(sorted(getattr(data, "commitments", {}))),
            tuple(sorted(getattr(data, "contributions", {}))),
            tuple(sorted(getattr(data, "digests", {}).items())),
            None if acc is None else hashlib.sha256(
                b"".join(bytes(v.serialize()) for v in acc)).hexdigest())


def _ckks_mutations(msg: Any, other: Any) -> st.SearchStrategy[Any]:
    """A field of a commitment or reveal replaced by a hostile but well-typed value (the struct
    decodes; the handler must refuse it). Ciphertext bytes are only swapped, truncated or
    duplicated, never bit-flipped here: SEAL's parser is fuzzed in a child process
    (tests/test_fuzz_ckks.py)."""
    values: dict[str, list[Any]] = {
        "session_id": [b"x" * 16], "round": [1, 2**63 - 1], "client_id": [0, 2, 3, 4, 2**32 - 1],
        "num_values": [D - 1, D + 1, 1], "signature": [bytes(64), b"\xff" * 64],
        "commitment": [bytes(32)], "commitment_set_digest": [bytes(32)],
    }
    if hasattr(msg, "chunks"):
        values["chunks"] = [list(msg.chunks[:-1]) or [b""], list(msg.chunks) * 2,
                            list(getattr(other, "chunks", msg.chunks))]
    fields = [f for f in msg.__struct_fields__ if f in values]
    return st.sampled_from(fields).flatmap(
        lambda f: st.sampled_from(values[f]).map(
            lambda v: msgspec.structs.replace(msg, **{f: v})))


class CKKSServerMachine(_Replay):
    def __init__(self) -> None:
        super().__init__()
        self.world = _ckks_world()
        self.server = _ckks_server(self.world)
        self.inputs = self.world["inputs"]
        self.tainted = False

    def feed(self, msg: Any, *, genuine: bool) -> None:
        before = _snapshot(self.server)
        try:
            _ckks_receive(self.server, msg)
        except SecureFLError:
            assert _snapshot(self.server) == before, "a refused input changed the server"
            return
        self.tainted |= not genuine

    @rule(data=st.data())
    def mutated(self, data: st.DataObject) -> None:
        msgs = [m for m in self.inputs if hasattr(m, "client_id")]
        msg = data.draw(st.sampled_from(msgs))
        other = data.draw(st.sampled_from(msgs))
        self.feed(data.draw(_ckks_mutations(msg, other)), genuine=False)

    @rule(data=st.data())
    def mutated_bytes(self, data: st.DataObject) -> None:
        """Byte-level and structural mutations of a commitment (no ciphertext in it), decoded as
        the transport would."""
        from securefl.protocol import wire
        from securefl.protocol.ckks_messages import Commitment

        commits = [m for m in self.inputs if isinstance(m, Commitment)]
        seed = wire.encode(data.draw(st.sampled_from(commits)))
        raw = data.draw(mutate.hostile_inputs((seed,), "msgpack"))
        try:
            msg = wire.decode(raw, Commitment, max_bytes=4096)
        except SecureFLError:
            return
        self.feed(msg, genuine=raw == seed)

    def teardown(self) -> None:
        """The honest rest: a refused input changed nothing, so when every honest reveal got in
        and nothing hostile was accepted, the manifest holds exactly the honest reveals and their
        aggregate."""
        for msg in self.inputs[self.pos:]:
            self.feed(msg, genuine=True)
        manifest = getattr(self.server._data, "manifest", None)
        if manifest is not None and not self.tainted and len(manifest.entries) == len(IDS):
            assert {e.client_id: e.digest for e in manifest.entries} == self.world["digests"]
            assert manifest.aggregate_digest == self.world["aggregate_digest"]


TestCKKSServerMachine = CKKSServerMachine.TestCase
TestCKKSServerMachine.settings = settings(STATEFUL, max_examples=max(10, EXAMPLES // 5),
                                          stateful_step_count=15)
