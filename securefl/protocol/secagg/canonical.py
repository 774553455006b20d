"""The canonical byte strings SecAgg signs, hashes and seals (protocols/secagg/spec.md lists
them), the pairwise mask sign, and the header and ordering checks on peer messages."""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any

from securefl.crypto import shamir
from securefl.errors import IntegrityError, RemoteProtocolError
from securefl.protocol.messages import RosterEntry
from securefl.protocol.secagg.config import COMMIT_DOMAIN, PLAN_DOMAIN, ROSTER_DOMAIN, SecAggConfig

__all__ = [
    "advertise_message",
    "consistency_message",
    "pair_sign",
    "plan_digest",
    "roster_digest",
    "self_mask_commitment",
    "share_plaintext",
]


# --- canonical byte strings (spec.md lists them) --------------------------------------------------
def plan_digest(cfg: SecAggConfig) -> bytes:
    """SHA-256 of everything a client acts on in this round (spec.md, "Plan digest"):
    ``PLAN_DOMAIN | session | u64 round | u32 n | u32 ids.. | u32 T | u32 k | u32 t | u32 bits |
    u32 dim | u32 c | f64 dropout_fraction (NaN when unset) | u32 security_bits | f64 alpha |
    32-byte application plan digest`` (big-endian, IEEE 754 binary64). Signed with the advertised
    keys and with the survivor set, so every client whose signature counts saw the same plan."""
    a = cfg.assumptions
    n = len(cfg.participants)
    drop = math.nan if a.dropout_fraction is None else a.dropout_fraction
    return hashlib.sha256(
        PLAN_DOMAIN + cfg.session_id
        + struct.pack(f">QI{n}I", cfg.round, n, *cfg.participants)
        + struct.pack(">IIIIIIdId", cfg.threshold, cfg.degree, cfg.neighbour_threshold, cfg.bits,
                      cfg.dim, a.colluders, drop, a.security_bits, a.alpha)
        + cfg.plan_digest
    ).digest()


def advertise_message(sender: int, cipher_pk: bytes, mask_pk: bytes, plan: bytes) -> bytes:
    """What a client signs in stage 0 (sign_bound, domain ADVERTISE_DOMAIN): u32 sender | cipher_pk
    | mask_pk | plan digest. Every client verifies every roster entry against its own plan."""
    return struct.pack(">I", sender) + cipher_pk + mask_pk + plan


def roster_digest(session_id: bytes, round_: int, entries: Sequence[RosterEntry]) -> bytes:
    """SHA-256 over the whole signed roster: the public seed of the SecAgg+ graph."""
    h = hashlib.sha256(ROSTER_DOMAIN + session_id + struct.pack(">QI", round_, len(entries)))
    for e in entries:
        h.update(struct.pack(">I", e.sender) + e.cipher_pk + e.mask_pk + e.signature)
    return h.digest()


def consistency_message(plan: bytes, digest: bytes, survivors: Sequence[int],
                        binding: bytes = bytes(32)) -> bytes:
    """What a client signs in the consistency check: plan digest | roster digest | input binding
    (32 bytes: the digest of what the input was computed from, e.g. a global model that arrived
    after the keys were advertised; zeros when unused) | u32 |U3| | u32 ids (sorted)."""
    return (plan + digest + binding
            + struct.pack(f">I{len(survivors)}I", len(survivors), *survivors))


def self_mask_commitment(session_id: bytes, round_: int, sender: int, seed: bytes) -> bytes:
    return hashlib.sha256(
        COMMIT_DOMAIN + session_id + struct.pack(">QI", round_, sender) + seed
    ).digest()


def share_plaintext(sender: int, receiver: int, key_share: int, mask_share: int) -> bytes:
    """u32 sender | u32 receiver | 66-byte mask-key share | 66-byte self-mask share."""
    return (
        struct.pack(">II", sender, receiver)
        + shamir.encode_share(key_share)
        + shamir.encode_share(mask_share)
    )


def _parse_share_plaintext(data: bytes, sender: int, receiver: int) -> tuple[int, int]:
    if len(data) != 8 + 2 * shamir.SHARE_SIZE:
        raise IntegrityError("share payload has the wrong length")
    s, r = struct.unpack(">II", data[:8])
    if (s, r) != (sender, receiver):
        raise RemoteProtocolError(f"share payload names {s}->{r}, expected {sender}->{receiver}")
    return (
        shamir.decode_share(data[8 : 8 + shamir.SHARE_SIZE]),
        shamir.decode_share(data[8 + shamir.SHARE_SIZE :]),
    )


def pair_sign(me: int, peer: int) -> int:
    """Bonawitz et al. section 4: client u adds PRG(s_uv) for v > u and subtracts it for v < u."""
    return 1 if me < peer else -1


def _check_header(msg: Any, session_id: bytes, round_: int, who: str) -> None:
    if msg.session_id != session_id or msg.round != round_:
        raise RemoteProtocolError(
            f"{type(msg).__name__} from {who} belongs to another session or round (replay?)"
        )


def _sorted_unique(ids: Sequence[int], what: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise RemoteProtocolError(f"{what} must be sorted and without duplicates")
