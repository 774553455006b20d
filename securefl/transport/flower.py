"""Carry securefl protocol messages over Flower's deployment runtime (flwr 1.42).

No protocol logic lives here: securefl/deploy/ drives the SecAgg machines and uses this module to
move opaque bytes. What is settled, and measured with tests/flower_harness.py:

- One protocol stage = one Flower round trip: the ServerApp sends each member an opaque securefl
  payload in an :class:`Envelope`, carried as raw bytes in an ``ArrayRecord`` (uint8 array), and
  gets one reply per member. ``Grid.send_and_receive(msgs, timeout=T)`` returns whatever arrived
  after ``T`` seconds; every member without a valid reply is a dropout for that stage.
- Each message runs in a fresh ClientApp process: Python globals do not persist; the client's
  protocol state travels in ``context.state`` (per node, per run) as bytes.
- Routing: Flower node id <-> manifest member name comes from ``NodeInfo.name`` (set by
  ``flwr supernode register --name``). That mapping is chosen by the SuperLink operator, so it is a
  ROUTING HINT only: authenticity comes from securefl's end-to-end layer (manifest keys sign the
  key advertisements; every client-to-client payload is AEAD-sealed and bound to session, round,
  sender and receiver). The envelope fields are checked for routing consistency, not trusted.

``flwr`` is imported lazily, only inside :func:`make_server_app` / :func:`make_client_app` and the
:class:`GridLink` methods, so ``import securefl`` never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec
from msgspec import Meta

from securefl.errors import ConfigError, MessageError, SecureFLError
from securefl.protocol import wire

__all__ = [
    "ENVELOPE_ACTION",
    "ENVELOPE_MESSAGE_TYPE",
    "MAX_ENVELOPE_BYTES",
    "ClientHandler",
    "Envelope",
    "GridLink",
    "Link",
    "ServerStages",
    "StageExchange",
    "StageResult",
    "handle_client_message",
    "make_client_app",
    "make_node_client_app",
    "make_server_app",
    "run_round",
]

#: Flower action of securefl messages; the message type is ``query.securefl`` so one ClientApp can
#: serve securefl stages next to other handlers.
ENVELOPE_ACTION = "securefl"
ENVELOPE_MESSAGE_TYPE = f"query.{ENVELOPE_ACTION}"
#: upper bound of one envelope on the wire (bytes): the largest SecAgg message plus headers.
MAX_ENVELOPE_BYTES = 256 * 1024 * 1024
_RECORD = "securefl"  # ArrayRecord name in the Flower RecordDict
_ARRAY = "envelope"  # Array name inside it
_STATE = "securefl-state"  # ArrayRecord name in context.state holding the client machine's state

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
               tag="securefl.envelope.v1", tag_field="type"):
    """Routing header + opaque payload of one stage message (server -> client or the reply).

    ``federation`` is the manifest digest (sha256 hex of the canonical body), so a node configured
    for another federation rejects the message before the protocol sees it.
    """

    federation: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    session: Annotated[bytes, Meta(min_length=16, max_length=16)]
    round: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    stage: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    sender: Name
    receiver: Name
    payload: Annotated[bytes, Meta(max_length=MAX_ENVELOPE_BYTES - 4096)]


def encode_envelope(env: Envelope) -> bytes:
    return wire.encode(env)


def decode_envelope(data: bytes) -> Envelope:
    """Size check, then strict decode; :class:`MessageError` on anything off."""
    env: Envelope = wire.decode(data, Envelope, max_bytes=MAX_ENVELOPE_BYTES)
    return env


# --- server side ---------------------------------------------------------------------------------
class Link(Protocol):
    """One Flower round trip: send ``payloads[node_id]`` to each node, return the replies that
    arrived within ``timeout_s`` seconds (a node absent from the result did not answer)."""

    def round_trip(self, payloads: Mapping[int, bytes], timeout_s: float) -> dict[int, bytes]: ...


@dataclass(frozen=True)
class StageResult:
    """Replies of one stage by member name; ``dropped`` maps each silent/invalid member to why."""

    stage: str
    replies: dict[str, bytes]
    dropped: dict[str, str]


@dataclass
class StageExchange:
    """Runs protocol stages over a :class:`Link`: names <-> node ids, envelopes, dropouts.

    ``nodes`` maps manifest member names to Flower node ids (from ``NodeInfo.name``).
    """

    link: Link
    federation: str
    session: bytes
    server: str
    nodes: Mapping[str, int]
    timeout_s: float
    log: list[StageResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.nodes.values())) != len(self.nodes):
            raise ConfigError("two members are mapped to the same Flower node")

    def exchange(self, round_: int, stage: str, outgoing: Mapping[str, bytes]) -> StageResult:
        """One round trip for ``stage``: each named member gets its payload; replies by name."""
        unknown = sorted(set(outgoing) - set(self.nodes))
        by_node: dict[int, bytes] = {}
        for name, payload in outgoing.items():
            if name in self.nodes:
                by_node[self.nodes[name]] = encode_envelope(Envelope(
                    federation=self.federation, session=self.session, round=round_, stage=stage,
                    sender=self.server, receiver=name, payload=payload))
        raw = self.link.round_trip(by_node, self.timeout_s) if by_node else {}
        names = {nid: name for name, nid in self.nodes.items()}
        replies: dict[str, bytes] = {}
        dropped: dict[str, str] = {n: "not connected" for n in unknown}
        for nid, data in raw.items():
            member = names.get(nid)
            if member is None or member not in outgoing:
                continue  # a reply we did not ask for: ignored
            try:
                env = decode_envelope(data)
            except MessageError as exc:
                dropped[member] = f"malformed reply ({exc.code})"
                continue
            expected = (self.federation, self.session, round_, stage, member, self.server)
            got = (env.federation, env.session, env.round, env.stage, env.sender, env.receiver)
            if got != expected:
                dropped[member] = "reply for another federation, session, round, stage or member"
                continue
            replies[member] = env.payload
        for name in outgoing:
            if name not in replies and name not in dropped:
                dropped[name] = f"no reply within {self.timeout_s:g} s"
        result = StageResult(stage=stage, replies=replies, dropped=dropped)
        self.log.append(result)
        return result


class ServerStages(Protocol):
    """What the adapter needs from a server-side protocol machine (securefl.deploy.server drives
    SecAgg; CKKS over Flower is open)."""

    def next_stage(self) -> tuple[str, Mapping[str, bytes]] | None:
        """The next stage's name and payload per member, or None when the round is over."""
        ...

    def receive(self, stage: str, replies: Mapping[str, bytes],
                dropped: Collection[str]) -> None:
        """Feed the replies of ``stage``; members in ``dropped`` are dropouts for this stage."""
        ...


def run_round(exchange: StageExchange, machine: ServerStages, round_: int,
              max_stages: int = 16) -> list[StageResult]:
    """Drive one round: one Flower round trip per stage until the machine says it is over."""
    results: list[StageResult] = []
    for _ in range(max_stages):
        step = machine.next_stage()
        if step is None:
            return results
        stage, outgoing = step
        res = exchange.exchange(round_, stage, outgoing)
        machine.receive(stage, res.replies, tuple(res.dropped))
        results.append(res)
    raise ConfigError(f"round {round_} did not finish within {max_stages} stages")


class GridLink:
    """:class:`Link` over a Flower ``Grid`` (inside a ServerApp): payloads as uint8 ArrayRecords."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid

    def node_names(self) -> dict[str, int]:
        """Member name -> node id, from the names given at ``flwr supernode register --name``."""
        out: dict[str, int] = {}
        for info in self._grid.get_nodes():
            if info.name:
                if info.name in out:
                    raise ConfigError(f"two Flower nodes are registered as {info.name!r}")
                out[str(info.name)] = int(info.node_id)
        return out

    def round_trip(self, payloads: Mapping[int, bytes], timeout_s: float) -> dict[int, bytes]:
        import numpy as np
        from flwr.app import Array, ArrayRecord, Message, RecordDict

        msgs = [Message(RecordDict({_RECORD: ArrayRecord(
                    {_ARRAY: Array(np.frombuffer(data, dtype=np.uint8))})}),
                        dst_node_id=nid, message_type=ENVELOPE_MESSAGE_TYPE)
                for nid, data in payloads.items()]
        out: dict[int, bytes] = {}
        for reply in self._grid.send_and_receive(msgs, timeout=timeout_s):
            if reply.has_error():
                continue  # the ClientApp failed: the member is a dropout for this stage
            try:
                data = reply.content[_RECORD][_ARRAY].numpy().tobytes()
            except (KeyError, TypeError, ValueError):
                continue
            out[int(reply.metadata.src_node_id)] = data
        return out


def make_server_app(main: Callable[[StageExchange, Any], None], *, federation: str,
                    session: bytes, server: str, timeout_s: float) -> Any:
    """A Flower ``ServerApp`` whose main builds a :class:`StageExchange` and calls ``main``.

    The securefl deployment's own ServerApp (securefl.deploy.app) loads its manifest and run
    directory from ``context.run_config`` and waits for the manifest's nodes; this one is the bare
    adapter (tests/test_flower_runtime.py).
    """
    from flwr.serverapp import ServerApp

    app = ServerApp()

    def _main(grid: Any, context: Any) -> None:
        link = GridLink(grid)
        exchange = StageExchange(link=link, federation=federation, session=session,
                                 server=server, nodes=link.node_names(), timeout_s=timeout_s)
        main(exchange, context)

    app.main()(_main)  # called, not used as a decorator: typed the same with or without flwr
    return app


# --- client side ---------------------------------------------------------------------------------
#: (envelope from the server, this node's saved state or None) -> (reply payload, new state)
ClientHandler = Callable[[Envelope, bytes | None], tuple[bytes, bytes]]


def handle_client_message(data: bytes, state: bytes | None, *, member: str, federation: str,
                          handler: ClientHandler) -> tuple[bytes, bytes]:
    """Pure core of the ClientApp: check the envelope's routing, run ``handler``, wrap the reply.

    Raises :class:`MessageError` when the envelope is malformed or addressed to another member or
    federation (the ClientApp then returns a Flower error reply; the server counts a dropout).
    A refusal by ``handler`` leaves the node as the same error type carrying only its code:
    Flower sends an exception's text to the server, and a message may quote the node's own data
    (the node's log keeps the whole message).
    """
    env = decode_envelope(data)
    if env.receiver != member or env.federation != federation:
        raise MessageError("envelope addressed to another member or federation")
    try:
        reply, new_state = handler(env, state)
    except SecureFLError as err:
        raise type(err)(f"refused ({err.code}); the reason is in the node's log") from None
    out = Envelope(federation=federation, session=env.session, round=env.round, stage=env.stage,
                   sender=member, receiver=env.sender, payload=reply)
    return encode_envelope(out), new_state


#: node_config -> (member name, manifest digest, handler) for that node
NodeHandlerFactory = Callable[[Mapping[str, Any]], tuple[str, str, ClientHandler]]


def make_node_client_app(factory: NodeHandlerFactory, *, app: Any = None) -> Any:
    """A Flower ``ClientApp`` around :func:`handle_client_message`; the member, the federation
    digest and the handler come from ``factory(context.node_config)`` (securefl.deploy.app: from
    the node's manifest). The protocol state is kept in ``context.state`` between messages."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    if app is None:
        app = ClientApp()

    def _query(msg: Any, context: Any) -> Any:
        member, federation, handler = factory(context.node_config)
        data = msg.content[_RECORD][_ARRAY].numpy().tobytes()
        saved = context.state.array_records.get(_STATE)
        state = saved[_ARRAY].numpy().tobytes() if saved is not None else None
        reply, new_state = handle_client_message(data, state, member=member,
                                                 federation=federation, handler=handler)
        context.state.array_records[_STATE] = ArrayRecord(
            {_ARRAY: Array(np.frombuffer(new_state, dtype=np.uint8))})
        return Message(RecordDict({_RECORD: ArrayRecord(
            {_ARRAY: Array(np.frombuffer(reply, dtype=np.uint8))})}), reply_to=msg)

    app.query(ENVELOPE_ACTION)(_query)
    return app


def make_client_app(handler: ClientHandler, *, member_key: str = "member",
                    federation_key: str = "federation", app: Any = None) -> Any:
    """A Flower ``ClientApp`` around :func:`handle_client_message` with one fixed handler.

    The member name and manifest digest come from ``--node-config`` (``member=...``,
    ``federation=...``); the protocol state is kept in ``context.state`` between messages. Pass
    ``app`` to register the handler on an existing ``ClientApp``.
    The state bytes are stored as the handler returns them: securefl's own nodes
    (securefl.deploy.common.NodeHandler) return them sealed under a node-local key.
    """

    def factory(node_config: Mapping[str, Any]) -> tuple[str, str, ClientHandler]:
        return str(node_config[member_key]), str(node_config[federation_key]), handler

    return make_node_client_app(factory, app=app)
