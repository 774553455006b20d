"""Per-round byte limits of a SecAgg(+) round, derived from its public plan (issue 17).

Every message already has a size cap (``messages.MAX_MESSAGE_BYTES``, the schema's list and byte
limits), but a peer could still send many valid-sized messages in one round. A round's plan fixes
what each honest party sends: one message per stage, whose size follows from the participants,
the public graph (neighbour counts), the dimension and the field bits. :func:`round_byte_limits`
encodes the largest message of each stage the plan allows (every id the largest participant id,
every sealed share at the schema's 256-byte maximum, every list at its planned length) and sums
them: the most one peer can honestly send the other in one round. A transport counts the bytes it
takes from each peer per round and refuses (:class:`securefl.errors.ByteLimitError`) what goes
beyond, before decoding it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from securefl.protocol import quantize
from securefl.protocol.graph import random_graph
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RevealedShare,
    RosterEntry,
    SealedShare,
    ShareKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    encode_message,
)
from securefl.protocol.secagg.config import SecAggConfig

__all__ = ["MAX_SEALED_BYTES", "RoundByteLimits", "round_byte_limits"]

#: the schema's maximum sealed share (``messages.Sealed``); an honest one is 8 + 2 * 66 + 28 bytes
MAX_SEALED_BYTES = 256


@dataclass(frozen=True)
class RoundByteLimits:
    """Bytes one party accepts from one peer in one round: ``from_client`` is what the server takes
    from each client (advertise + share + masked + consistency + unmask), ``from_server`` what a
    client takes from the server (roster + forwarded shares + survivors + unmask request)."""

    from_client: int
    from_server: int


def round_byte_limits(cfg: SecAggConfig, graph: Mapping[int, frozenset[int]] | None = None
                      ) -> RoundByteLimits:
    """The per-peer, per-round byte caps of the round ``cfg`` plans (see the module docstring);
    ``graph``: the round's graph when the caller has it (``SecAggServer.graph``), else drawn."""
    sid, r = cfg.session_id, cfg.round
    n = len(cfg.participants)
    top = max(cfg.participants)
    if graph is None:
        graph = random_graph(cfg.participants, cfg.degree, cfg.graph_seed)
    k = max(len(v) for v in graph.values())  # the most neighbours any participant has
    key, sig, commit = b"\xff" * 32, b"\xff" * 64, b"\xff" * 32
    sealed = [SealedShare(top, b"\xff" * MAX_SEALED_BYTES)] * k
    revealed = [RevealedShare(top, b"\xff" * 66)] * (k + 1)
    ids = [top] * n
    from_client = (
        AdvertiseKeys(session_id=sid, round=r, sender=top, cipher_pk=key, mask_pk=key,
                      signature=sig),
        ShareKeys(session_id=sid, round=r, sender=top, self_mask_commitment=commit,
                  shares=sealed),
        MaskedInput(session_id=sid, round=r, sender=top, bits=cfg.bits, dim=cfg.dim,
                    data=b"\xff" * (quantize.bytes_per_coordinate(cfg.bits) * cfg.dim)),
        ConsistencySignature(session_id=sid, round=r, sender=top, signature=sig),
        UnmaskShares(session_id=sid, round=r, sender=top, self_mask_shares=revealed,
                     mask_key_shares=revealed),
    )
    from_server = (
        KeyRoster(session_id=sid, round=r, entries=[RosterEntry(top, key, key, sig)] * n),
        ForwardedShares(session_id=sid, round=r, shares=sealed),
        SurvivorList(session_id=sid, round=r, survivors=ids),
        UnmaskRequest(session_id=sid, round=r, alive=ids, dropped=ids,
                      signatures=[SignedSurvivors(top, sig)] * n),
    )
    return RoundByteLimits(
        from_client=sum(len(encode_message(m)) for m in from_client),
        from_server=sum(len(encode_message(m)) for m in from_server),
    )
