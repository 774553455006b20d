"""The protocol machines' handlers as fuzz targets (issue 17): not only is every decoder fuzzed
(tests/fuzz/targets.py), the SecAgg server and client machines are fed hostile messages at every
point of an honest round.

An honest SecAgg round (3 clients, threshold 2, deterministic keys: tests/secagg_helpers.py) is
recorded once: every input each machine received, in order (peer messages as wire bytes, and the
local Start / Deadline events). A target's input is a message's bytes: the machine is driven
through the honest inputs before the one of the hostile message's type and sender (or before a
position drawn from its bytes), then gets the hostile message in its place, then the honest rest.
The oracle (shared with the decoder targets): only SecureFLError comes out; and once the machine
refused an input it accepts nothing more of the round (SecAgg's FAILED state: an abort, never a
half-updated round that goes on), which :func:`feed_rest` checks.

Used by tests/test_fuzz_decoders.py (every target, hypothesis), tests/fuzz/fuzz_messages.py
(atheris) and tests/test_fuzz_machines.py (rule-based: reordered, duplicated, mutated and
truncated messages over many steps, with the machine state checked after each).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secagg_helpers import Round, make_round

from securefl.errors import SecureFLError
from securefl.protocol.messages import decode_message, encode_message
from securefl.protocol.secagg import Deadline, Start
from securefl.transport.inprocess import InProcessDriver

N, THRESHOLD = 3, 2


@dataclass(frozen=True)
class Input:
    """One input a machine received in the honest round: a peer's message as wire bytes, or a
    local event (``data`` None)."""

    label: str
    data: bytes | None = None
    local: object = None

    def message(self) -> Any:
        return decode_message(self.data) if self.data is not None else self.local


@dataclass(frozen=True)
class Transcript:
    server: tuple[Input, ...]
    #: client id -> its inputs, and the wire bytes it sent in answer to each (b"" for none)
    client: dict[int, tuple[Input, ...]]
    client_out: dict[int, tuple[bytes, ...]]
    #: the honest round's field sum
    field_sum: bytes


def new_round() -> Round:
    return make_round(N, threshold=THRESHOLD)


@functools.cache
def transcript() -> Transcript:
    """Record the honest round (the same keys as every :func:`new_round`)."""
    r = new_round()
    server: list[Input] = []
    client: dict[int, list[Input]] = {c: [] for c in r.clients}
    client_out: dict[int, list[bytes]] = {c: [] for c in r.clients}

    def wrap_server(receive: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
        def rec(msg: Any) -> list[Any]:
            local = isinstance(msg, Deadline)
            server.append(Input(f"server <- {type(msg).__name__}",
                                None if local else encode_message(msg), msg if local else None))
            return receive(msg)
        return rec

    def wrap_client(cid: int, receive: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
        def rec(msg: Any) -> list[Any]:
            local = isinstance(msg, Start)
            client[cid].append(Input(f"client {cid} <- {type(msg).__name__}",
                                     None if local else encode_message(msg),
                                     msg if local else None))
            out = receive(msg)
            client_out[cid].append(b"".join(encode_message(m) for m in out))
            return out
        return rec

    r.server.receive = wrap_server(r.server.receive)  # type: ignore[method-assign]
    for cid, c in r.clients.items():
        c.receive = wrap_client(cid, c.receive)  # type: ignore[method-assign]
    result = InProcessDriver(r.server, r.clients).run()
    return Transcript(tuple(server), {c: tuple(v) for c, v in client.items()},
                      {c: tuple(v) for c, v in client_out.items()}, result.field_sum.tobytes())


def feed_rest(machine: Any, inputs: tuple[Input, ...]) -> None:
    """Feed ``inputs`` in order. After the first refusal (a SecureFLError, re-raised) the machine
    must refuse the next input too: a refused message ends the round cleanly (FAILED), it never
    leaves a half-updated machine that goes on. An AssertionError (untyped) if it does not."""
    for i, inp in enumerate(inputs):
        try:
            machine.receive(inp.message())
        except SecureFLError as refusal:
            probe = inputs[i + 1].message() if i + 1 < len(inputs) else Deadline()
            try:
                machine.receive(probe)
            except SecureFLError:
                raise refusal from None
            raise AssertionError(
                f"{type(machine).__name__} accepted input after a refusal") from refusal


def _place(honest: tuple[Input, ...], msg: Any, data: bytes) -> int:
    """Where a hostile message goes: in place of the honest input of the same type and sender
    (so a mutated field reaches the handler in the state that expects it), else at a position
    drawn from its bytes (an out-of-order message)."""
    key = (type(msg), getattr(msg, "sender", None))
    for i, inp in enumerate(honest):
        if inp.data is not None:
            m = inp.message()
            if (type(m), getattr(m, "sender", None)) == key:
                return i
    return zlib.crc32(data) % len(honest)


def _target(build: Callable[[], Any], inputs: Callable[[], tuple[Input, ...]]
            ) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        msg = decode_message(data)  # a MessageError (typed) for bytes that are no message
        honest = inputs()
        k = _place(honest, msg, data)
        machine = build()
        for inp in honest[:k]:
            machine.receive(inp.message())
        feed_rest(machine, (Input("fuzz", data), *honest[k + 1:]))
        return machine
    return decode


def machine_targets() -> list[Any]:
    """The SecAgg server and client 0 as fuzz targets; seeds: every honest message (each replays
    the honest round exactly)."""
    from fuzz.targets import Target

    out = []
    for name, build, inputs in (
        ("machine.secagg.server", lambda: new_round().server, lambda: transcript().server),
        ("machine.secagg.client", lambda: new_round().clients[0], lambda: transcript().client[0]),
    ):
        seeds = tuple(inp.data for inp in inputs() if inp.data is not None)
        out.append(Target(name, _target(build, inputs), seeds, "msgpack",
                          "a hostile message in place of the honest one in a live round"))
    return out
