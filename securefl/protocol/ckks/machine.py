"""The CKKS roles' transition tables: ``(state, input type) -> (handler, next state)``.

As in h11 (``h11/_state.py``), every role's behaviour is one table; an input whose (state, type)
pair is not in it is refused, and the diagram in protocols/ckks/spec.md is generated from the
tables (``protocols/ckks/gen_diagram.py``). Unlike SecAgg's machines, a CKKS role does not fail
its round when one message is refused: the server simply leaves a bad contribution out of the sum
(that bank is a dropout), so a refused input (a table miss or a handler error) leaves the state and
its data unchanged.

States are enums whose values say what the role is doing ("collecting reveals"), so a refusal
reads "the server cannot accept Commitment while commitments are closed, collecting reveals".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from securefl.errors import SecureFLError, StateError

__all__ = ["Transition", "TransitionTable", "refuse", "transition"]

S = TypeVar("S", bound=Enum)


@dataclass(frozen=True)
class Transition(Generic[S]):
    """One table entry: the handler run on the input (the role, the input, and any local
    arguments of the call, e.g. the key holder's randomness) and the next state."""

    handler: Callable[..., Any]
    next_state: S


#: (state, input type) -> transition
TransitionTable = Mapping[tuple[S, type], Transition[S]]


def refuse(
    state: Enum, msg: object, who: str, local: tuple[type, ...], remote_error: type[SecureFLError]
) -> SecureFLError:
    """The error for an input not in the table: StateError for the role's own (local) calls made
    out of order, ``remote_error`` for a peer's message that is not expected now."""
    text = f"{who} cannot accept {type(msg).__name__} while {state.value}"
    return StateError(text) if isinstance(msg, local) else remote_error(text)


def transition(
    table: TransitionTable[S],
    state: S,
    msg: object,
    who: str,
    *,
    local: tuple[type, ...],
    remote_error: type[SecureFLError],
) -> Transition[S]:
    """The table's entry for (state, type(msg)); raises :func:`refuse`'s error when there is none."""
    tr = table.get((state, type(msg)))
    if tr is None:
        raise refuse(state, msg, who, local, remote_error)
    return tr
