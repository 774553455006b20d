"""An in-process :class:`~securefl.transport.flower.Link`: the banks' ClientApp handlers called
directly, with the same envelopes, encodings and per-node state bytes as over Flower (each call
starts from the stored state bytes, like a fresh ClientApp process). For tests, benchmarks and
rehearsing a deployment on one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from securefl.errors import SecureFLError
from securefl.transport.flower import ClientHandler, handle_client_message

__all__ = ["LocalLink"]


class Node(Protocol):
    """A bank's or the key holder's node (securefl.deploy.client / securefl.deploy.ckks)."""

    @property
    def member(self) -> str: ...

    @property
    def handle(self) -> ClientHandler: ...


@dataclass
class LocalLink:
    """``banks[node_id]`` answers messages for that node; ``kill(trip, node_id)`` returning True
    makes the node silent from that trip on (a crashed SuperNode)."""

    banks: Mapping[int, Node]
    federation: str
    kill: Callable[[int, int], bool] | None = None
    states: dict[int, bytes] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    trips: int = 0

    def names(self) -> dict[str, int]:
        return {b.member: nid for nid, b in self.banks.items()}

    def round_trip(self, payloads: Mapping[int, bytes], timeout_s: float) -> dict[int, bytes]:
        self.trips += 1
        out: dict[int, bytes] = {}
        for nid, data in payloads.items():
            if self.kill is not None and self.kill(self.trips, nid):
                self.dead.add(nid)
            if nid in self.dead or nid not in self.banks:
                continue
            bank = self.banks[nid]
            try:
                reply, state = handle_client_message(
                    data, self.states.get(nid), member=bank.member, federation=self.federation,
                    handler=bank.handle)
            except SecureFLError:
                continue  # the ClientApp failed: no reply (logged by the bank)
            self.states[nid] = state
            out[nid] = reply
        return out
