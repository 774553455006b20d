"""In-process link for a CKKS round (securefl.aggregators.ckks): the key holder, the server and the
banks in one process, every message encoded, passed through an optional tamper hook (tests play a
hostile or slow network with it), size-checked and decoded again before delivery, as over a
network.

Faults a real network adds (securefl.transport.policy), the same rules as SecAgg's
:class:`securefl.transport.inprocess.InProcessDriver`: with ``deadlines``, a party whose reply of a
stage is delivered more than ``stage_s`` after the stage's message reached it (its own compute
plus the tamper hook, the simulated network, on the deadlines' clock) missed the deadline and its
reply is discarded unread (:meth:`CKKSLink.reply` returns None; the bank is a dropout at that
stage, ``faults``); a bank that waits more than ``bank_wait_s`` for the server's next message gives
up (:meth:`CKKSLink.forward` calls its ``give_up``: the client machine moves to FAILED and accepts
nothing more of the round) and is a dropout too. What a dropout means at each CKKS stage, and that
a key holder that misses its deadline aborts the round, is the driver's (securefl.aggregators.ckks).

This is transport code, not protocol code: it decides nothing but whether a message arrived in
time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from securefl.errors import DeadlineError, SecureFLError
from securefl.protocol import wire
from securefl.transport.inprocess import SERVER, Tamper
from securefl.transport.policy import Deadlines

__all__ = ["KEY_HOLDER", "SERVER", "CKKSLink"]

T = TypeVar("T")

#: the key holder's party id in the tamper hook (the server is ``SERVER`` = -1, banks their ids)
KEY_HOLDER = -2


@dataclass
class CKKSLink:
    """Moves one CKKS round's messages between parties in this process, under ``deadlines``.

    ``tamper(stage, sender, recipient, data) -> data`` sees every message's bytes; stages are
    ``"context"`` (key holder -> all), ``"contribution"`` (bank -> server: its commitment),
    ``"reveal"`` (server -> bank: the closed commitment set; bank -> server: its ciphertext),
    ``"verification"`` (server -> verifier: the request; verifier -> server: its co-signature) and
    ``"release"`` (server -> key holder: the decryption request; key holder -> server: the
    release)."""

    deadlines: Deadlines = field(default_factory=Deadlines)
    tamper: Tamper | None = None
    #: party id -> stage at which a missed deadline made it a dropout
    faults: dict[int, str] = field(default_factory=dict)
    #: party id -> the typed error of its fault
    refused: dict[int, SecureFLError] = field(default_factory=dict)

    def now(self) -> float:
        return self.deadlines.clock()

    def _bytes(self, stage: str, sender: int, recipient: int, msg: Any) -> bytes:
        data = wire.encode(msg)
        if self.tamper is not None:
            data = self.tamper(stage, sender, recipient, data)
        return data

    def _fault(self, party: int, stage: str, err: SecureFLError) -> None:
        self.faults.setdefault(party, stage)
        self.refused.setdefault(party, err)

    def carry(self, stage: str, sender: int, recipient: int, msg: Any, typ: type[T],
              max_bytes: int) -> tuple[T, int]:
        """Deliver ``msg`` (no deadline applies): (the decoded message, bytes on the wire)."""
        data = self._bytes(stage, sender, recipient, msg)
        return wire.decode(data, typ, max_bytes=max_bytes), len(data)

    def reply(self, stage: str, sender: int, msg: Any, typ: type[T], max_bytes: int, *,
              since: float, recipient: int = SERVER) -> tuple[T | None, int]:
        """``sender``'s reply of ``stage``, whose request reached it at clock ``since``:
        (the decoded reply, bytes sent), or (None, bytes sent) when it arrives more than
        ``stage_s`` later: discarded unread, ``sender`` recorded in ``faults``."""
        data = self._bytes(stage, sender, recipient, msg)
        limit = self.deadlines.stage_s
        if Deadlines.late(self.now() - since, limit):
            who = "the key holder" if sender == KEY_HOLDER else f"client {sender}"
            self._fault(sender, stage, DeadlineError(
                f"{who}'s {stage} reply missed the {limit:g} s deadline"))
            return None, len(data)
        return wire.decode(data, typ, max_bytes=max_bytes), len(data)

    def forward(self, stage: str, recipient: int, msg: Any, typ: type[T], max_bytes: int, *,
                since: float, give_up: Callable[[], None]) -> tuple[T | None, int]:
        """The server's ``stage`` message to a bank that has waited for it since clock ``since``:
        (the decoded message, bytes sent), or (None, bytes sent) when it arrives more than
        ``bank_wait_s`` later: the bank gives up (``give_up``) and is recorded in ``faults``."""
        data = self._bytes(stage, SERVER, recipient, msg)
        wait = self.deadlines.bank_wait_s
        if Deadlines.late(self.now() - since, wait):
            give_up()
            self._fault(recipient, stage, DeadlineError(
                f"client {recipient} waited more than {wait:g} s for the server's {stage} message "
                "and gave up the round"))
            return None, len(data)
        return wire.decode(data, typ, max_bytes=max_bytes), len(data)

    def late(self) -> list[int]:
        """The parties that missed a deadline (for :func:`securefl.transport.policy.deadline_abort`)."""
        return sorted(p for p, e in self.refused.items() if isinstance(e, DeadlineError))
