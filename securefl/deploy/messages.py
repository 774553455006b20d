"""Deployment-layer payloads carried inside a :class:`securefl.transport.flower.Envelope`.

One Flower round trip carries, per bank, one :class:`ServerPayload` and returns one
:class:`ClientPayload`. The SecAgg messages themselves are the protocol's own encoded bytes
(securefl.protocol.messages), wrapped in :class:`ProtocolItem` with the round they belong to, so two
rounds can share a trip (pipelining: round r's unmask rides with round r + 1's start).

Everything the server dictates (the round plan, the global model) is signed with the server's
Ed25519 identity key from the federation manifest (``sign_bound``, domain-separated), so a bank
refuses a plan or a model the manifest's server did not sign.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from securefl.dp.ledger import Draft
from securefl.protocol import wire

__all__ = [
    "BANK_INFO_DOMAIN",
    "FLOWER_APP",
    "HELLO_DOMAIN",
    "MAX_PAYLOAD_BYTES",
    "MODEL_DOMAIN",
    "START_DOMAIN",
    "BankInfo",
    "ClientPayload",
    "GlobalModel",
    "Hello",
    "ProtocolItem",
    "RoundStart",
    "ServerPayload",
    "Signed",
    "SignedBankInfo",
    "TrainPlan",
    "decode_client",
    "decode_server",
]

START_DOMAIN = "securefl/deploy/v1/round-start"
MODEL_DOMAIN = "securefl/deploy/v1/global-model"
HELLO_DOMAIN = "securefl/deploy/v1/hello"
#: a bank's signature over its own BankInfo (bound to the session)
BANK_INFO_DOMAIN = "securefl/deploy/v1/bank-info"
MAX_PAYLOAD_BYTES = 255 * 1024 * 1024
#: TrainPlan.task (and model, loss, optimizer) of a plan the Flower workflow signs for the CKKS key
#: holder: the user's app trains, and its strategy, not the public draw, picks the participants
FLOWER_APP = "flower-app"

Task = Literal["moments", "train"]


class TrainPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How every bank trains locally (public, identical for all banks; from the run config)."""

    model: str
    hidden: list[int]
    task: str
    loss: str
    local_epochs: Annotated[int, Meta(ge=1)]
    batch_size: Annotated[int, Meta(ge=1)]
    lr: Annotated[float, Meta(gt=0)]
    optimizer: str
    prox_mu: float
    rounds: Annotated[int, Meta(ge=1)]
    dp: bool
    record_epsilon: float
    record_noise_multiplier: float | None
    record_clip: float
    delta: float
    #: secagg | ckks (must equal the manifest's)
    aggregation: Literal["secagg", "ckks"] = "secagg"
    #: ckks: co-signatures the key holder requires, and how many ranked verifiers may be skipped
    ckks_verifiers: Annotated[int, Meta(ge=1)] = 2
    ckks_verifier_skips: Annotated[int, Meta(ge=0)] = 2
    #: fraction of the manifest's clients each training round draws (1: all); the draw is public
    #: randomness every bank recomputes (securefl.deploy.common.round_participants)
    clients_per_round: Annotated[float, Meta(gt=0, le=1)] = 1.0
    #: record-level noise multiplier of the round-0 statistics (securefl.protocol.round0): each
    #: bank noises its moments; with ``dp`` every bank refuses 0 (nothing released unaccounted)
    stats_noise_multiplier: Annotated[float, Meta(ge=0, le=1e3)] = 0.0


class Hello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The first message of a run: the session, the manifest digest and the plan. Signed.
    ``session`` must be securefl.deploy.common.session_id(federation, counter), and each bank
    accepts a counter only above every counter it accepted before (spec section 12)."""

    session: Annotated[bytes, Meta(min_length=16, max_length=16)]
    federation: str
    plan: TrainPlan
    #: the session counter the session id is derived from
    counter: Annotated[int, Meta(ge=1)]
    #: INSECURE tests only: the simulation's stream id that nodes with an insecure-sim-seed key
    #: their random streams by (securefl.runtime.stream_id_for); None in a real deployment
    sim_stream: Annotated[bytes, Meta(min_length=16, max_length=16)] | None = None


class BankInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Public metadata a bank reveals once (DESIGN.md section 6: example counts are public):
    training rows, feature count, the power of two above the L2 norm of its moment vector
    (< 7 bits of scale, as in ``securefl run``) and its DP-SGD noise multiplier (None without DP)."""

    n_train: Annotated[int, Meta(ge=1)]
    n_features: Annotated[int, Meta(ge=1)]
    moments_norm_log2: int
    record_noise_multiplier: float | None
    #: regression: the power of two above the bank's largest |target| (< 7 bits of scale), so the
    #: round-0 sum can carry the target's moments scaled into the features' range
    target_abs_log2: Annotated[int, Meta(ge=0, le=1023)] | None = None


class SignedBankInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bank's BankInfo with the bank's own ``sign_bound`` signature (its manifest key,
    ``BANK_INFO_DOMAIN``, the session, round 0) over ``msgpack(info)``: the server forwards every
    bank's with each plan, so each bank checks the participants and FedAvg weights against
    sizes the other banks signed themselves."""

    member: str
    info: BankInfo
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class RoundStart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The public plan of one aggregation round (DESIGN.md section 3 step 1). Bank ids in the
    SecAgg machines are indices into the manifest's client list. ``participants`` is the public
    draw over the manifest's clients (securefl.deploy.common.round_participants), whoever the
    server reports silent; ``weights`` covers the participants with a forwarded signed size."""

    session: Annotated[bytes, Meta(min_length=16, max_length=16)]
    round: Annotated[int, Meta(ge=0)]
    task: Task
    participants: list[str]
    threshold: Annotated[int, Meta(ge=1)]
    clip_norm: Annotated[float, Meta(gt=0)]
    noise_multiplier: Annotated[float, Meta(ge=0)]
    min_survivors: Annotated[int, Meta(ge=1)]
    degree: int | None
    precision_bits: Annotated[int, Meta(ge=1, le=30)]
    dim: Annotated[int, Meta(ge=1)]
    #: public FedAvg weight n_i / max n per participant with a signed size (train rounds)
    weights: dict[str, float] = {}
    #: the released sum of the banks' moment vectors (train rounds: every bank standardises with it)
    moments_total: list[float] = []
    #: regression: the round-0 vector carries the moments of target / 2^target_scale_log2
    target_scale_log2: Annotated[int, Meta(ge=0, le=1023)] | None = None
    #: INSECURE tests only: as Hello.sim_stream
    sim_stream: Annotated[bytes, Meta(min_length=16, max_length=16)] | None = None
    #: round 0 with noised statistics: each feature's public range [low, high] and the groups of
    #: inputs of which a row has at most one non-zero (each bank checks them on its own rows);
    #: a regression round 0 adds the scaled target itself (securefl.protocol.round0.with_target)
    stats_ranges: list[tuple[float, float]] = []
    stats_groups: list[list[int]] = []


class Signed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``body`` (msgpack of a Hello / RoundStart, or sha256 of a model) and the server's
    ``sign_bound`` signature over it."""

    body: bytes
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class GlobalModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The global weights a bank trains from in ``round`` (float64 little-endian, ``get_flat``
    order) and the released sum of the banks' moment vectors (standardisation, docs/data.md)."""

    round: Annotated[int, Meta(ge=1)]
    weights: bytes
    moments_total: list[float]
    #: regression: moments_total ends with the moments of target / 2^target_scale_log2
    target_scale_log2: Annotated[int, Meta(ge=0, le=1023)] | None = None


class ProtocolItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One encoded securefl.protocol message and the round it belongs to."""

    round: Annotated[int, Meta(ge=0)]
    data: bytes


class ServerPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                    tag="securefl.deploy.server.v1", tag_field="type"):
    """Server -> bank, one per trip: protocol messages first (oldest round first), then an
    optional signed Hello / RoundStart, and the signed global model when the bank must train."""

    protocol: list[ProtocolItem] = []
    hello: Signed | None = None
    start: Signed | None = None
    #: a signed :class:`GlobalModel` (train rounds, with the key roster)
    model: Signed | None = None
    #: every bank's self-signed BankInfo (with each RoundStart)
    banks: list[SignedBankInfo] = []


class ClientPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                    tag="securefl.deploy.client.v1", tag_field="type"):
    """Bank -> server, one per trip."""

    protocol: list[ProtocolItem] = []
    info: BankInfo | None = None
    #: the bank's signature over ``info`` (SignedBankInfo)
    info_signature: Annotated[bytes, Meta(min_length=64, max_length=64)] | None = None
    #: record-level DP-SGD ledger drafts of this bank's local training (train rounds)
    drafts: list[Draft] = []
    clipped: bool = False


def decode_server(data: bytes) -> ServerPayload:
    """Size-checked strict decode (MessageError on anything off)."""
    out: ServerPayload = wire.decode(data, ServerPayload, max_bytes=MAX_PAYLOAD_BYTES)
    return out


def decode_client(data: bytes) -> ClientPayload:
    """Size-checked strict decode (MessageError on anything off)."""
    out: ClientPayload = wire.decode(data, ClientPayload, max_bytes=MAX_PAYLOAD_BYTES)
    return out
