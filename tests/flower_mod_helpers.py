"""In-process Flower for tests of securefl.flower: a federation on disk (identity keys, a manifest
signed by every member), a fake Flower ``Grid`` that delivers each message to a node's real
``ClientApp`` (with its mods) and a per-node ``Context``, and a NumPyClient whose fit is a known
function of the global parameters, so a test knows the plain FedAvg result without securefl."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefl.crypto.signing import SigningKey
from securefl.federation import (
    Member,
    ProtocolParams,
    create_manifest,
    encode_manifest,
    sign_manifest,
)
from securefl.flower.common import ARRAY, CKKS_STAGES, RECORD, STAGES
from tests.deploy_helpers import write_key

SERVER = "agg"
#: a ckks federation's key holder (its own Flower node)
KEY_HOLDER = "keyholder"


@dataclass
class FlowerFed:
    root: Path
    banks: list[str]
    manifest: Path
    keys: dict[str, Path]

    def node_config(self, bank: str, n_examples: int, **extra: Any) -> dict[str, Any]:
        return {"member": bank, "key": str(self.keys[bank]), "manifest": str(self.manifest),
                "state-dir": str(self.root / "state" / bank), "num-examples": n_examples,
                **extra}

    def key_holder_config(self, **extra: Any) -> dict[str, Any]:
        """A ckks federation's key holder node (its usage file beside its key)."""
        return {"role": "ckks-key-holder", "member": KEY_HOLDER,
                "key": str(self.keys[KEY_HOLDER]), "manifest": str(self.manifest), **extra}


def make_flower_federation(root: Path, banks: list[str], params: ProtocolParams,
                           signers: list[str] | None = None) -> FlowerFed:
    root.mkdir(parents=True, exist_ok=True)
    (root / "keys").mkdir()
    holder = [KEY_HOLDER] if params.aggregation == "ckks" else []
    keys = {n: SigningKey.generate() for n in [SERVER, *banks, *holder]}
    paths = {n: write_key(root / "keys" / f"{n}.key", k) for n, k in keys.items()}
    members = [Member(name=SERVER, role="server", public_key=keys[SERVER].verify_key.raw.hex())]
    members += [Member(name=b, role="client", public_key=keys[b].verify_key.raw.hex())
                for b in banks]
    members += [Member(name=h, role="ckks-key-holder", public_key=keys[h].verify_key.raw.hex())
                for h in holder]
    m = create_manifest("flower-fed", members, params)
    for n in (signers if signers is not None else [SERVER, *banks, *holder]):
        m = sign_manifest(m, n, keys[n])
    manifest = root / "manifest.json"
    manifest.write_bytes(encode_manifest(m))
    return FlowerFed(root=root, banks=banks, manifest=manifest, keys=paths)


def known_delta(bank_index: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Bank ``bank_index``'s update, a fixed function of its index (seeded numpy, float32)."""
    rng = np.random.default_rng(1000 + bank_index)
    return [(0.02 * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def known_client_fn(bank_index: dict[str, int], n_examples: dict[str, int],
                    calls: list[str] | None = None) -> Callable[[Any], Any]:
    """A NumPyClient per node: fit returns global + known_delta(bank), its n_examples and a
    metric (and appends the bank to ``calls``); the bank is the node config's ``member``."""
    from flwr.client import NumPyClient

    class Known(NumPyClient):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self.name = name

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
                ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            if calls is not None:
                calls.append(self.name)
            d = known_delta(bank_index[self.name], [p.shape for p in parameters])
            return ([(p + x).astype(p.dtype) for p, x in zip(parameters, d, strict=True)],
                    n_examples[self.name], {"seen": float(config.get("epochs", 0))})

    def client_fn(context: Any) -> Any:
        return Known(str(context.node_config["member"])).to_client()

    return client_fn


class FakeGrid:
    """A Flower ``Grid`` without processes: ``send_and_receive`` runs each message through the
    destination node's ClientApp (mods included) with that node's persistent Context; a node in
    ``silent`` (node id -> first stage it ignores) stops answering from that securefl stage on; a
    node in ``late`` (node id -> stage) answers that stage after the deadline: its reply is held
    back and handed over with the next ``send_and_receive`` (what a straggler's reply looks like
    to the server). ``timeouts`` records the timeout of every call."""

    def __init__(self, apps: dict[int, Any], configs: dict[int, dict[str, Any]],
                 names: dict[int, str], silent: dict[int, str] | None = None,
                 tamper: Callable[[int, Any], None] | None = None,
                 tamper_reply: Callable[[int, Any], Any] | None = None,
                 late: dict[int, str] | None = None) -> None:
        from flwr.app import Context, RecordDict

        self.apps = apps
        self.silent = silent or {}
        self.late = late or {}
        self.held: list[Any] = []
        self.timeouts: list[float | None] = []
        #: (node id, message) -> None, may change the message: a hostile server's hand
        self.tamper = tamper
        #: (node id, reply) -> reply: a bank's hand on what it sends
        self.tamper_reply = tamper_reply
        self.names = names
        self.contexts = {nid: Context(run_id=1, node_id=nid, node_config=cfg,
                                      state=RecordDict(), run_config={})
                         for nid, cfg in configs.items()}
        self.sent: list[Any] = []

    # the Grid interface the workflows use
    @property
    def run(self) -> Any:
        from flwr.supercore.run import Run

        return Run.create_empty(run_id=1)

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in-process
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def get_nodes(self) -> Iterable[Any]:
        from flwr.proto.node_pb2 import NodeInfo

        return [NodeInfo(node_id=nid, name=self.names.get(nid, "")) for nid in self.apps]

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None
                         ) -> Iterable[Any]:
        from flwr.app import Error, Message

        out, self.held = self.held, []
        self.timeouts.append(timeout)
        for msg in messages:
            self.sent.append(msg)
            nid = msg.metadata.dst_node_id
            if nid in self.silent and stage_index(msg) >= _position(self.silent[nid]):
                continue  # this node went away: no reply
            if self.tamper is not None:
                self.tamper(nid, msg)
            try:
                reply = self.apps[nid](msg, self.contexts[nid])
                if nid in self.late and stage_index(msg) == _position(self.late[nid]):
                    self.held.append(reply)  # after the deadline: the next call sees it
                    continue
                out.append(self.tamper_reply(nid, reply) if self.tamper_reply else reply)
            except Exception as exc:  # a failing ClientApp: Flower replies with an error
                out.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"),
                                   reply_to=msg))
        return out


def _position(stage: str) -> int:
    """A stage's place in its round (SecAgg's or CKKS's banks' stages; -1: any other)."""
    for order in (STAGES, CKKS_STAGES):
        if stage in order:
            return order.index(stage)
    return -1


def stage_index(msg: Any) -> int:
    """The securefl stage a message carries (-1: not a securefl message, the hello, or a trip to
    the key holder alone)."""
    from securefl.protocol import wire
    from securefl.transport.flower import Envelope

    if RECORD not in msg.content.array_records:
        return -1
    env = wire.decode(msg.content.array_records[RECORD][ARRAY].numpy().tobytes(), Envelope)
    return _position(env.stage)


@contextlib.contextmanager
def server_identity() -> Iterator[None]:
    """Flower's TaskIdentity, which Message() reads for instruction messages (a ServerApp
    process sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old
