"""In-process driver for SecAgg: N client machines and one server machine in one process.

Every message is encoded to bytes, optionally passed through a tamper hook (tests play a hostile
network or server with it), counted, size-checked and decoded again before delivery, exactly as
over a network. Dropout injection: ``dropouts[client] = stage`` makes the client vanish just
before it would send its message of that stage (advertise, share, masked, consistency, unmask).

Faults a real network adds (securefl.transport.policy): with ``deadlines``, a client whose reply
of a stage is delivered more than ``stage_s`` after the stage's message reached it (its own
compute plus the tamper hook, the simulated network, on its clock) is a dropout at that stage and
its late message is discarded unread; a client that waits more than ``bank_wait_s`` for the
server's next message gives up (``SecAggClient.give_up``: it accepts nothing more) and is a
dropout too. Byte caps: the server takes at most ``round_byte_limits(config).from_client`` bytes
from each client per round and a client at most ``.from_server`` from the server; a peer over its
cap is refused (ByteLimitError, kept in ``refused``) and is a dropout. A round that loses more
clients than its threshold tolerates aborts (AggregationAbortedError; DeadlineError when a missed
deadline was among the causes).

This is transport code, not protocol code: it reads the process CPU clock to report per-party
CPU time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from securefl.errors import (
    AggregationAbortedError,
    ByteLimitError,
    ConfigError,
    DeadlineError,
    SecureFLError,
)
from securefl.protocol.messages import MaskedInput, decode_message, encode_message
from securefl.protocol.secagg import (
    STAGES,
    Deadline,
    SecAggClient,
    SecAggServer,
    ServerResult,
    Start,
)
from securefl.protocol.secagg.limits import round_byte_limits
from securefl.transport.policy import ByteMeter, Deadlines, deadline_abort

__all__ = ["InProcessDriver", "RunStats", "Tamper"]

#: tamper(stage, sender, recipient, data) -> data to deliver; sender/recipient -1 means the server
Tamper = Callable[[str, int, int, bytes], bytes]
SERVER = -1


@dataclass
class RunStats:
    """Bytes each party sent ("server", "client/<id>") and CPU seconds per party ("server",
    "client/<id>") and per stage ("server/<stage>", "clients/<stage>": all clients together)."""

    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class InProcessDriver:
    """Runs one SecAgg round to completion (or to the first error, which propagates)."""

    def __init__(
        self,
        server: SecAggServer,
        clients: Mapping[int, SecAggClient],
        *,
        dropouts: Mapping[int, str] | None = None,
        tamper: Tamper | None = None,
        deadlines: Deadlines | None = None,
        byte_limits: bool = True,
    ) -> None:
        self.server = server
        self.clients = dict(clients)
        self.dropouts = dict(dropouts or {})
        for c, stage in self.dropouts.items():
            if c not in self.clients:
                raise ConfigError(f"dropout for unknown client {c}")
            if stage not in STAGES:
                raise ConfigError(f"unknown dropout stage {stage!r}; stages are {STAGES}")
        self.tamper = tamper
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self.stats = RunStats()
        #: client id -> the masked input vector (``MaskedInput.data``) as delivered to the server,
        #: after the tamper hook and decoding; the first one per sender
        self.masked_inputs: dict[int, bytes] = {}
        #: client id -> stage at which a fault (late reply, gave up, byte cap) made it a dropout
        self.faults: dict[int, str] = {}
        #: client id -> the typed error of its fault (DeadlineError, ByteLimitError)
        self.refused: dict[int, SecureFLError] = {}
        limits = round_byte_limits(server.config, server.graph) if byte_limits else None
        self._from_client = ByteMeter(limits.from_client, "the server") if limits else None
        self._from_server = {c: ByteMeter(limits.from_server, f"client {c}")
                             for c in self.clients} if limits else {}

    def _alive(self, client: int, stage: str) -> bool:
        if client in self.faults:
            return False
        drop = self.dropouts.get(client)
        return drop is None or STAGES.index(drop) > STAGES.index(stage)

    def _fault(self, client: int, stage: str, err: SecureFLError) -> None:
        self.faults.setdefault(client, stage)
        self.refused.setdefault(client, err)

    def _encode(self, stage: str, sender: int, recipient: int, msg: Any) -> bytes:
        data = encode_message(msg)
        if self.tamper is not None:
            data = self.tamper(stage, sender, recipient, data)
        self.stats.bytes_sent["server" if sender == SERVER else f"client/{sender}"] += len(data)
        return data

    def _deliver(self, recipient: int, data: bytes) -> Any:
        delivered = decode_message(data)
        if recipient == SERVER and isinstance(delivered, MaskedInput):
            self.masked_inputs.setdefault(delivered.sender, delivered.data)
        return delivered

    def _client_step(self, cid: int, event: Any, stage: str) -> list[Any]:
        t0 = time.process_time()
        out = self.clients[cid].receive(event)
        spent = time.process_time() - t0
        self.stats.cpu_seconds[f"client/{cid}"] += spent
        self.stats.cpu_seconds[f"clients/{stage}"] += spent
        return out

    def _server_step(self, event: Any, stage: str) -> list[Any]:
        t0 = time.process_time()
        out = self.server.receive(event)
        spent = time.process_time() - t0
        self.stats.cpu_seconds["server"] += spent
        self.stats.cpu_seconds[f"server/{stage}"] += spent
        return out

    def _client_turn(self, cid: int, events: list[Any], stage: str) -> None:
        """One client's turn in ``stage``: its replies reach the server unless they are late or
        over its byte cap (then it is a dropout and the message is discarded unread)."""
        clock, limit = self.deadlines.clock, self.deadlines.stage_s
        t0 = clock()
        for event in events:
            for msg in self._client_step(cid, event, stage):
                data = self._encode(stage, cid, SERVER, msg)
                if Deadlines.late(clock() - t0, limit):
                    self._fault(cid, stage, DeadlineError(
                        f"client {cid}'s {stage} reply missed the {limit:g} s deadline"))
                    return
                try:
                    if self._from_client is not None:
                        self._from_client.take(f"client {cid}", len(data))
                except ByteLimitError as err:
                    self._fault(cid, stage, err)
                    return
                self._server_step(self._deliver(SERVER, data), stage)

    def _close(self, stage: str) -> dict[int, list[Any]]:
        """The server's deadline for ``stage``: its messages of the next stage, delivered to each
        recipient unless the recipient gave up waiting or the message is over its byte cap."""
        clock, wait = self.deadlines.clock, self.deadlines.bank_wait_s
        nxt = STAGES[min(STAGES.index(stage) + 1, len(STAGES) - 1)]
        t0 = clock()
        try:
            outs = self._server_step(Deadline(), stage)
        except AggregationAbortedError as err:
            aborted = deadline_abort(err, [c for c, e in self.refused.items()
                                           if isinstance(e, DeadlineError)])
            if aborted is err:
                raise
            raise aborted from err
        inbox: dict[int, list[Any]] = defaultdict(list)
        for out in outs:
            r = out.recipient
            if r in self.faults:
                continue  # a dropout is sent nothing more
            data = self._encode(nxt, SERVER, r, out.message)
            if Deadlines.late(clock() - t0, wait):
                self.clients[r].give_up()
                self._fault(r, nxt, DeadlineError(
                    f"client {r} waited more than {wait:g} s for the server's {nxt} message and "
                    "gave up the round"))
                continue
            try:
                if r in self._from_server:
                    self._from_server[r].take("the server", len(data))
            except ByteLimitError as err:
                self.clients[r].give_up()
                self._fault(r, nxt, err)
                continue
            inbox[r].append(self._deliver(r, data))
        return inbox

    def run(self) -> ServerResult:
        inbox: dict[int, list[Any]] = {c: [Start()] for c in sorted(self.clients)}
        for stage in STAGES:
            for cid in sorted(inbox):
                if self._alive(cid, stage):
                    self._client_turn(cid, inbox[cid], stage)
            inbox = self._close(stage)
        if self.server.result is None:  # pragma: no cover - _finish always sets it or raises
            raise ConfigError("the round ended without a result")
        return self.server.result
