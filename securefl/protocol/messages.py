"""SecAgg / SecAgg+ wire messages: frozen, tagged (``secagg.<name>.v1``), strict msgspec Structs.

These types are both the in-memory protocol events and the network form (msgpack via
:mod:`securefl.protocol.wire`). Every variable-length field has a ``max_length``; unknown fields and
unknown tags are rejected. Decode only through :func:`decode_message`, which checks the byte size
before parsing. The JSON Schemas in protocols/secagg/schemas/ are generated from these types.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from securefl.protocol import wire

__all__ = [
    "MAX_CLIENTS",
    "MAX_DIM",
    "MAX_MESSAGE_BYTES",
    "AdvertiseKeys",
    "ClientMessage",
    "ConsistencySignature",
    "ForwardedShares",
    "KeyRoster",
    "MaskedInput",
    "RevealedShare",
    "RosterEntry",
    "SealedShare",
    "SecAggMessage",
    "ServerMessage",
    "ShareKeys",
    "SignedSurvivors",
    "SurvivorList",
    "UnmaskRequest",
    "UnmaskShares",
    "decode_message",
    "encode_message",
]

MAX_CLIENTS = 10_000
MAX_DIM = 1 << 24
MAX_MESSAGE_BYTES = 4 * MAX_DIM + 4096

ClientId = Annotated[int, Meta(ge=0, lt=2**32)]
Round = Annotated[int, Meta(ge=0, le=2**63 - 1)]
SessionId = Annotated[bytes, Meta(min_length=16, max_length=16)]
Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
Sig64 = Annotated[bytes, Meta(min_length=64, max_length=64)]
ShareBytes = Annotated[bytes, Meta(min_length=66, max_length=66)]
Sealed = Annotated[bytes, Meta(min_length=28, max_length=256)]
IdList = Annotated[list[ClientId], Meta(max_length=MAX_CLIENTS)]

_opts = {"frozen": True, "forbid_unknown_fields": True, "tag_field": "type"}


class RosterEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One client's signed ephemeral public keys (nested in AdvertiseKeys' roster)."""

    sender: ClientId
    cipher_pk: Key32
    mask_pk: Key32
    signature: Sig64


class SealedShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An AEAD-sealed share pair; ``peer`` is the receiver (in ShareKeys) or the sender
    (forwarded)."""

    peer: ClientId
    ciphertext: Sealed


class SignedSurvivors(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sender: ClientId
    signature: Sig64


class RevealedShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    owner: ClientId
    share: ShareBytes


# --- stage 0: advertise keys (client -> server) ---------------------------------------------------
class AdvertiseKeys(msgspec.Struct, tag="secagg.advertise.v1", **_opts):
    session_id: SessionId
    round: Round
    sender: ClientId
    cipher_pk: Key32
    mask_pk: Key32
    signature: Sig64


class KeyRoster(msgspec.Struct, tag="secagg.roster.v1", **_opts):
    """Server -> every client in U1: all advertised, signed keys, sorted by sender."""

    session_id: SessionId
    round: Round
    entries: Annotated[list[RosterEntry], Meta(max_length=MAX_CLIENTS)]


# --- stage 1: share keys --------------------------------------------------------------------------
class ShareKeys(msgspec.Struct, tag="secagg.share-keys.v1", **_opts):
    """Client -> server: one sealed share pair per neighbour, and a commitment to the self-mask
    seed."""

    session_id: SessionId
    round: Round
    sender: ClientId
    self_mask_commitment: Key32
    shares: Annotated[list[SealedShare], Meta(max_length=MAX_CLIENTS)]


class ForwardedShares(msgspec.Struct, tag="secagg.forwarded-shares.v1", **_opts):
    """Server -> client: the sealed shares addressed to it (``peer`` = sender)."""

    session_id: SessionId
    round: Round
    shares: Annotated[list[SealedShare], Meta(max_length=MAX_CLIENTS)]


# --- stage 2: masked input ------------------------------------------------------------------------
class MaskedInput(msgspec.Struct, tag="secagg.masked-input.v1", **_opts):
    """Client -> server: y = x + PRG(b) + sum_j +-PRG(s_ij) mod 2^bits, packed ceil(bits/8)
    B/coord."""

    session_id: SessionId
    round: Round
    sender: ClientId
    bits: Annotated[int, Meta(ge=1, le=32)]
    dim: Annotated[int, Meta(ge=1, le=MAX_DIM)]
    data: Annotated[bytes, Meta(max_length=4 * MAX_DIM)]


# --- stage 3: consistency check -------------------------------------------------------------------
class SurvivorList(msgspec.Struct, tag="secagg.survivors.v1", **_opts):
    """Server -> clients in U3: the set U3 whose masked inputs are in the sum."""

    session_id: SessionId
    round: Round
    survivors: IdList


class ConsistencySignature(msgspec.Struct, tag="secagg.consistency.v1", **_opts):
    """Client -> server: Ed25519 signature over (roster digest, U3)."""

    session_id: SessionId
    round: Round
    sender: ClientId
    signature: Sig64


# --- stage 4: unmask ------------------------------------------------------------------------------
class UnmaskRequest(msgspec.Struct, tag="secagg.unmask-request.v1", **_opts):
    session_id: SessionId
    round: Round
    alive: IdList
    dropped: IdList
    signatures: Annotated[list[SignedSurvivors], Meta(max_length=MAX_CLIENTS)]


class UnmaskShares(msgspec.Struct, tag="secagg.unmask-shares.v1", **_opts):
    """Client -> server: self-mask shares of alive peers, mask-key shares of dropped peers."""

    session_id: SessionId
    round: Round
    sender: ClientId
    self_mask_shares: Annotated[list[RevealedShare], Meta(max_length=MAX_CLIENTS)]
    mask_key_shares: Annotated[list[RevealedShare], Meta(max_length=MAX_CLIENTS)]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
ServerMessage = KeyRoster | ForwardedShares | SurvivorList | UnmaskRequest
SecAggMessage = ClientMessage | ServerMessage


def encode_message(msg: SecAggMessage) -> bytes:
    return wire.encode(msg)


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> SecAggMessage:
    """Size check, then strict decoding into one of the SecAgg message types (MessageError if
    not)."""
    return wire.decode(data, SecAggMessage, max_bytes=max_bytes)
