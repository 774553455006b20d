"""What the securefl client mod and server workflow share: the payloads they exchange inside a
Flower TRAIN message, the signed round plan and the rules both sides apply to it.

With a manifest whose aggregation is ``ckks`` the same plan drives securefl's CKKS protocol
(protocols/ckks/spec.md) instead, over :data:`CKKS_STAGES`, with the manifest's key holder as its
own Flower node running :class:`securefl.deploy.ckks.KeyHolderNode` (securefl.flower.mod routes
a node whose config says ``role = "ckks-key-holder"`` there); see securefl.flower.workflow.

Wire format: every securefl message is a :class:`securefl.transport.flower.Envelope` (routing:
manifest digest, session, round, stage, sender, receiver) carried as a uint8 array in the
``ArrayRecord`` named :data:`RECORD` of a ``MessageType.TRAIN`` message. The envelope's payload is
a :class:`ServerMsg` (server -> bank) or a :class:`ClientMsg` (bank -> server). The masked-input
stage's message additionally carries the strategy's ``FitIns`` records, which the mod hands to the
user's ClientApp (``call_next``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from securefl.deploy.common import bank_ids, check_plan_threshold, round_spec
from securefl.deploy.messages import RoundStart, Signed
from securefl.dp.ledger import Draft
from securefl.errors import ConfigError
from securefl.protocol import wire

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.federation import Federation
    from securefl.protocol.plan import RoundSpec

__all__ = [
    "ARRAY",
    "CKKS_STAGES",
    "INFO_DOMAIN",
    "PLAN_DOMAIN",
    "RECORD",
    "STAGES",
    "STATE",
    "BankInfo",
    "ClientMsg",
    "FlowerPlan",
    "ServerMsg",
    "config_digest",
    "flatten",
    "params_digest",
    "round_spec_for",
    "round_start",
    "unflatten",
]

#: ArrayRecord (in the Flower message content) holding the securefl envelope, and its array
RECORD = "securefl"
ARRAY = "envelope"
#: ArrayRecord in the node's ``context.state`` holding the mod's sealed state
STATE = "securefl-flower-state"
PLAN_DOMAIN = "securefl/flower/v1/round-plan"
INFO_DOMAIN = "securefl/flower/v1/bank-info"
#: Flower round trips of one securefl round (a run adds one "hello" trip before its first round)
STAGES = ("advertise", "share", "masked", "consistency", "unmask")
#: the banks' Flower round trips of one CKKS round (securefl.deploy.ckks: the key holder's
#: "decrypt" trip, and a "key" trip when no round key came with the last release, go to it alone)
CKKS_STAGES = ("commit", "reveal", "verify")
MAX_PAYLOAD_BYTES = 255 * 1024 * 1024

Digest = Annotated[bytes, Meta(min_length=32, max_length=32)]
Session = Annotated[bytes, Meta(min_length=16, max_length=16)]


class BankInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bank's public size for one session, signed by its manifest identity key
    (:data:`INFO_DOMAIN`, the session, round 0, over ``msgpack([member, n_examples])``); the server
    forwards every bank's with each plan so each bank re-checks the public FedAvg weights."""

    member: str
    n_examples: Annotated[int, Meta(ge=1)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]

    def message(self) -> bytes:
        return wire.encode(_InfoBody(member=self.member, n_examples=self.n_examples))


class _InfoBody(msgspec.Struct, frozen=True, array_like=True):
    member: str
    n_examples: int


class FlowerPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One round's public plan, signed by the manifest's server key (:data:`PLAN_DOMAIN`).

    ``model_digest`` is :func:`params_digest` of the global parameters in the strategy's FitIns and
    ``config_digest`` :func:`config_digest` of its config: both enter the SecAgg plan digest (via
    the SHA-256 of this body), so a server that sends one bank another model or training config is
    caught before anything is unmasked."""

    session: Session
    #: the session counter the session id derives from (securefl.deploy.common.session_id)
    counter: Annotated[int, Meta(ge=1)]
    round: Annotated[int, Meta(ge=1)]
    participants: list[str]
    threshold: Annotated[int, Meta(ge=2)]
    clip_norm: Annotated[float, Meta(gt=0)]
    noise_multiplier: Annotated[float, Meta(ge=0)]
    min_survivors: Annotated[int, Meta(ge=2)]
    degree: int | None
    precision_bits: Annotated[int, Meta(ge=1, le=30)]
    dim: Annotated[int, Meta(ge=1)]
    weights: dict[str, float]
    model_digest: Digest
    config_digest: Digest
    #: ckks: the co-signatures the key holder needs and how many ranked verifiers may be skipped
    #: (each bank checks its own place in the verifier window with them; unused by secagg)
    verifiers: Annotated[int, Meta(ge=0)] = 0
    verifier_skips: Annotated[int, Meta(ge=0)] = 0


class ServerMsg(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                tag="securefl.flower.server.v1", tag_field="type"):
    """Server -> bank, one per trip: ``hello`` asks for the bank's signed size; ``advertise``
    (secagg) or ``commit`` (ckks) carries the signed plan and every bank's signed size; later
    stages one protocol message (ckks ``commit``: the key holder's public context signed for the
    plan's session and round)."""

    stage: str
    counter: int = 0
    plan: Signed | None = None
    infos: list[BankInfo] = []
    protocol: bytes | None = None
    #: ckks ``commit``: the signed hello the key holder keys the session for; the bank checks
    #: the key holder bound the round's context to it and that it matches the plan (S7b-6)
    hello: Signed | None = None


class ClientMsg(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                tag="securefl.flower.client.v1", tag_field="type"):
    """Bank -> server, one per trip."""

    stage: str
    info: BankInfo | None = None
    protocol: list[bytes] = []
    #: record-level DP-SGD the bank's own loop declares (recorded as declared, not verified)
    drafts: list[Draft] = []
    clipped: bool = False


def decode_server(data: bytes) -> ServerMsg:
    out: ServerMsg = wire.decode(data, ServerMsg, max_bytes=MAX_PAYLOAD_BYTES)
    return out


def decode_client(data: bytes) -> ClientMsg:
    out: ClientMsg = wire.decode(data, ClientMsg, max_bytes=MAX_PAYLOAD_BYTES)
    return out


# --- parameters -------------------------------------------------------------------------------------
def params_digest(arrays: Sequence[NDArray[Any]]) -> bytes:
    """SHA-256 over each array's dtype, shape and little-endian bytes, in order."""
    h = hashlib.sha256(b"securefl/flower/v1/params\x00")
    for a in arrays:
        arr = np.ascontiguousarray(a)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        head = f"{arr.dtype.str}|{','.join(str(s) for s in arr.shape)}|".encode()
        h.update(len(head).to_bytes(4, "big") + head + arr.tobytes())
    return h.digest()


def config_digest(config: Mapping[str, Any]) -> bytes:
    """SHA-256 of the strategy's fit config (msgpack of the sorted (key, value) pairs)."""
    return hashlib.sha256(msgspec.msgpack.encode(sorted(config.items()))).digest()


def flatten(arrays: Sequence[NDArray[Any]]) -> NDArray[np.float64]:
    """The parameters as one float64 vector (array order, C order)."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vec: NDArray[np.float64], like: Sequence[NDArray[Any]]) -> list[NDArray[Any]]:
    """``vec`` cut back into arrays of ``like``'s shapes and dtypes."""
    out: list[NDArray[Any]] = []
    i = 0
    for a in like:
        n = int(np.asarray(a).size)
        out.append(vec[i:i + n].reshape(np.shape(a)).astype(np.asarray(a).dtype))
        i += n
    if i != vec.size:
        raise ConfigError(f"{vec.size} values for parameters of {i}")
    return out


def round_start(plan: FlowerPlan) -> RoundStart:
    """The plan as securefl.deploy's RoundStart, so both sides derive the round's RoundSpec, encoding
    and SecAgg config with the deployment's own functions (securefl.deploy.common)."""
    return RoundStart(session=plan.session, round=plan.round, task="train",
                      participants=list(plan.participants), threshold=plan.threshold,
                      clip_norm=plan.clip_norm, noise_multiplier=plan.noise_multiplier,
                      min_survivors=plan.min_survivors, degree=plan.degree,
                      precision_bits=plan.precision_bits, dim=plan.dim,
                      weights=dict(plan.weights))


def round_spec_for(plan: FlowerPlan, fed: Federation, context: bytes = bytes(32)) -> RoundSpec:
    """The round's RoundSpec as both sides derive it: securefl.deploy.common.round_spec, its
    client-level noise plan sized for the manifest's colluders as ``securefl run`` sizes it."""
    return round_spec(round_start(plan), bank_ids(fed), context, fed.params)


def fedavg_weights(infos: Sequence[BankInfo]) -> dict[str, float]:
    """The public FedAvg weight n_i / max n of every bank whose signed size the session holds."""
    top = max(i.n_examples for i in infos)
    return {i.member: i.n_examples / top for i in infos}


def check_plan(fed: Federation, plan: FlowerPlan, infos: Sequence[BankInfo]) -> None:
    """The rules a bank applies to a signed plan (and the server to its own): participants in the
    manifest, at least the manifest's threshold of them, the threshold and min_survivors the
    manifest fixes for n (ServerFaultError otherwise), clip, noise and precision no weaker than
    the manifest's, the weights n_i / max n of the forwarded signed sizes.
    ConfigError otherwise (signatures are checked by the caller)."""
    p = fed.params
    if len(set(plan.participants)) != len(plan.participants) or \
            not set(plan.participants) <= set(fed.clients):
        raise ConfigError(f"round {plan.round}: participants outside the manifest or repeated")
    if len(plan.participants) < max(2, p.threshold):
        raise ConfigError(f"round {plan.round} has {len(plan.participants)} participants, fewer "
                          f"than the manifest's threshold {p.threshold}")
    if plan.threshold < p.threshold or plan.min_survivors < p.threshold:
        raise ConfigError(f"round {plan.round}: threshold {plan.threshold} is below the "
                          f"manifest's {p.threshold}")
    if plan.clip_norm > p.clip_norm * (1 + 1e-12) or plan.noise_multiplier < p.noise_multiplier:
        raise ConfigError(f"round {plan.round}: clip norm or noise weaker than the manifest's")
    if plan.round > p.max_rounds:
        raise ConfigError(f"round {plan.round} is above the manifest's max_rounds = "
                          f"{p.max_rounds} (spec section 12.1)")
    if plan.min_survivors > len(plan.participants):
        raise ConfigError(f"round {plan.round}: min_survivors {plan.min_survivors} must be in "
                          f"[threshold, participants = {len(plan.participants)}]")
    # one threshold per round, fixed by the manifest and n (deployment's rule, spec 12.1, S6b-4)
    check_plan_threshold(p, round_start(plan), ())
    if plan.precision_bits != p.precision_bits or plan.degree != p.neighbours:
        raise ConfigError(f"round {plan.round}: precision or graph degree differ from the "
                          "manifest's")
    if p.aggregation == "ckks" and plan.verifiers < 1:
        raise ConfigError(f"round {plan.round}: a CKKS plan needs at least one verifier")
    from securefl.protocol.secagg import derive

    if p.aggregation == "secagg" and not derive(len(plan.participants), p.assumptions(),
                                                threshold=plan.threshold,
                                                degree=plan.degree).classic:
        raise ConfigError(
            f"round {plan.round}: the Flower path runs classic SecAgg (a complete graph) only: "
            "the Flower strategy, not public randomness, picks the participants, so a server "
            "could grind a sparse SecAgg+ graph (set the manifest's neighbours to n - 1)")
    w = fedavg_weights(infos)
    if set(plan.weights) != set(plan.participants) or \
            any(plan.weights[m] != w.get(m) for m in plan.participants):
        raise ConfigError(f"round {plan.round}: the FedAvg weights are not n_i / max n of the "
                          "sizes the banks signed")
