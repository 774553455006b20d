"""In-process driver for SecAgg: N client machines and one server machine in one process.

Every message is encoded to bytes, optionally passed through a tamper hook (tests play a hostile
network or server with it), counted, size-checked and decoded again before delivery, exactly as
over a network. Dropout injection: ``dropouts[client] = stage`` makes the client vanish just
before it would send its message of that stage (advertise, share, masked, consistency, unmask).

This is transport code, not protocol code: it reads the process CPU clock to report per-party
CPU time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from securefl.errors import ConfigError
from securefl.protocol.messages import MaskedInput, decode_message, encode_message
from securefl.protocol.secagg import (
    STAGES,
    Deadline,
    SecAggClient,
    SecAggServer,
    ServerResult,
    Start,
)

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
        self.stats = RunStats()
        #: client id -> the masked input vector (``MaskedInput.data``) as delivered to the server,
        #: after the tamper hook and decoding; the first one per sender
        self.masked_inputs: dict[int, bytes] = {}

    def _alive(self, client: int, stage: str) -> bool:
        drop = self.dropouts.get(client)
        return drop is None or STAGES.index(drop) > STAGES.index(stage)

    def _wire(self, stage: str, sender: int, recipient: int, msg: Any) -> Any:
        data = encode_message(msg)
        if self.tamper is not None:
            data = self.tamper(stage, sender, recipient, data)
        self.stats.bytes_sent["server" if sender == SERVER else f"client/{sender}"] += len(data)
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

    def run(self) -> ServerResult:
        inbox: dict[int, list[Any]] = {c: [Start()] for c in sorted(self.clients)}
        for stage in STAGES:
            for cid in sorted(inbox):
                if not self._alive(cid, stage):
                    continue
                for event in inbox[cid]:
                    for msg in self._client_step(cid, event, stage):
                        self._server_step(self._wire(stage, cid, SERVER, msg), stage)
            inbox = defaultdict(list)
            for out in self._server_step(Deadline(), stage):
                nxt = STAGES[min(STAGES.index(stage) + 1, len(STAGES) - 1)]
                inbox[out.recipient].append(self._wire(nxt, SERVER, out.recipient, out.message))
        if self.server.result is None:  # pragma: no cover - _finish always sets it or raises
            raise ConfigError("the round ended without a result")
        return self.server.result
