"""What both SecAgg state machines share: the local events (:class:`Start`, :class:`Deadline`),
the addressed server message (:class:`Outgoing`), the transition-table entry (:class:`Transition`)
and the table-driven dispatcher."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from securefl.errors import RemoteProtocolError, StateError

__all__ = ["Deadline", "Handler", "Outgoing", "Start", "Transition"]


# --- local events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Local event: the client begins the round."""


@dataclass(frozen=True)
class Deadline:
    """Local event: the server closes the current stage (the transport's clock fired)."""


@dataclass(frozen=True)
class Outgoing:
    """A server message for one recipient."""

    recipient: int
    message: Any


S = TypeVar("S", bound=Enum)
Handler = Callable[[Any, Any], list[Any]]


@dataclass(frozen=True)
class Transition(Generic[S]):
    handler: str
    next_state: S


def _dispatch(
    table: Mapping[tuple[Any, type], Transition[Any]],
    machine: Any,
    msg: Any,
    local_types: tuple[type, ...],
    who: str,
) -> list[Any]:
    """Look (state, type(msg)) up in ``table`` and run its handler. A pair not in the table, or an
    error in the handler, moves the machine to FAILED (like h11's ERROR state): no further input is
    accepted in this round. Local events out of order are the caller's fault (StateError); peer
    messages out of order are the peer's (RemoteProtocolError)."""
    key = (machine.state, type(msg))
    tr = table.get(key)
    if tr is None:
        text = f"{who} cannot accept {type(msg).__name__} in state {machine.state.value}"
        machine.state = machine.failed_state
        if isinstance(msg, local_types):
            raise StateError(text)
        raise RemoteProtocolError(text + " (out of order, replayed or unexpected)")
    try:
        out: list[Any] = getattr(machine, tr.handler)(msg)
    except BaseException:
        machine.state = machine.failed_state
        raise
    machine.state = tr.next_state
    return out
