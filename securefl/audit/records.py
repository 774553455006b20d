"""Audit log records (the Merkle leaves) and their canonical encoding.

A leaf is one of two frozen, tagged, versioned msgspec structs that reject unknown fields:

- :class:`GenesisRecord` (leaf 0): the run's origin, config, federation and initial model hashes;
- :class:`RoundRecord` (leaf r, for round r >= 1): who took part and who dropped at which stage,
  the digests of the inputs and of the aggregate, the model hashes before and after, the sha256 of
  each privacy-ledger line added this round, the metrics, and whether the round committed.

Leaf bytes are the canonical JSON encoding: sorted keys, no whitespace, UTF-8, floats in shortest
round-trip form (:func:`encode_leaf`). A record holds digests and identifiers only: never a secret,
a raw update or a data row.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec

from securefl.errors import AuditError
from securefl.schema import (
    ClientId,
    ErrorCode,
    MetricName,
    Mode,
    SessionId,
    Sha256Hex,
    Stage,
    Version,
    json_schema,
)

__all__ = [
    "LEAF_TYPE",
    "RECORD_VERSION",
    "GenesisRecord",
    "LeafRecord",
    "RoundRecord",
    "canonical_json",
    "decode_leaf",
    "encode_leaf",
    "leaf_json_schema",
    "validate_record",
]

RECORD_VERSION: Literal[1] = 1



class GenesisRecord(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="genesis", tag_field="type"
):
    """Leaf 0: binds the log to its run's configuration, federation and initial model."""

    version: Literal[1]
    origin: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    config_sha256: Sha256Hex
    federation_sha256: Sha256Hex
    model_sha256: Sha256Hex
    software_version: Version


class RoundRecord(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="round", tag_field="type"
):
    """Leaf r: what happened in round r (r >= 1). Lists are sorted; dicts are keyed by client id."""

    version: Literal[1]
    session_id: SessionId
    round: Annotated[int, msgspec.Meta(ge=1, le=10**9)]
    config_sha256: Sha256Hex
    federation_sha256: Sha256Hex
    aggregation: Mode
    participants: list[ClientId]
    survivors: list[ClientId]
    dropouts: dict[ClientId, Stage]
    input_digests: dict[ClientId, Sha256Hex]
    aggregate_digest: Sha256Hex | None
    model_sha256_before: Sha256Hex
    model_sha256_after: Sha256Hex
    ledger_entries_sha256: list[Sha256Hex]
    metrics: dict[MetricName, float]
    software_version: Version
    status: Literal["committed", "aborted"]
    error_code: ErrorCode | None = None


LeafRecord = GenesisRecord | RoundRecord
LEAF_TYPE: Any = LeafRecord

_decoder = msgspec.json.Decoder(LEAF_TYPE)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; NaN/inf refused."""
    _reject_nonfinite(obj)
    try:
        return msgspec.json.encode(obj, order="sorted")
    except TypeError as exc:
        raise AuditError(f"not JSON-serialisable: {exc}") from exc


def _reject_nonfinite(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise AuditError("NaN and infinity have no canonical JSON encoding")
    if isinstance(obj, dict):
        for v in obj.values():
            _reject_nonfinite(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _reject_nonfinite(v)
    elif isinstance(obj, msgspec.Struct):
        for f in obj.__struct_fields__:
            _reject_nonfinite(getattr(obj, f))


def validate_record(rec: LeafRecord) -> None:
    """Cross-field rules the types cannot express; raise :class:`AuditError` naming the rule."""
    if isinstance(rec, GenesisRecord):
        return
    where = f"round {rec.round}"
    for name, lst in (("participants", rec.participants), ("survivors", rec.survivors)):
        if lst != sorted(set(lst)):
            raise AuditError(f"{where}: {name} must be sorted and unique")
    parts = set(rec.participants)
    surv = set(rec.survivors)
    if not surv <= parts:
        raise AuditError(f"{where}: survivors must be participants")
    if set(rec.dropouts) != parts - surv:
        raise AuditError(f"{where}: dropouts must be exactly the participants that did not survive")
    if not set(rec.input_digests) <= parts:
        raise AuditError(f"{where}: input digests only for participants")
    for k, v in rec.metrics.items():
        if not math.isfinite(v):
            raise AuditError(f"{where}: metric {k} is not finite")
    if rec.status == "committed":
        if rec.error_code is not None:
            raise AuditError(f"{where}: a committed round has no error code")
    else:
        if rec.error_code is None:
            raise AuditError(f"{where}: an aborted round needs an error code")
        if rec.model_sha256_after != rec.model_sha256_before:
            raise AuditError(f"{where}: an aborted round must not change the model")
        if rec.aggregate_digest is not None:
            raise AuditError(f"{where}: an aborted round releases no aggregate")


def encode_leaf(rec: LeafRecord) -> bytes:
    """Validate a record and return its canonical leaf bytes (checked to round-trip exactly)."""
    try:
        checked: LeafRecord = msgspec.convert(msgspec.to_builtins(rec), LEAF_TYPE)
    except msgspec.ValidationError as exc:
        raise AuditError(f"invalid audit record: {exc}") from exc
    validate_record(checked)
    data = canonical_json(checked)
    if canonical_json(_decoder.decode(data)) != data:
        raise AuditError("audit record does not round-trip canonically")
    return data


def decode_leaf(data: bytes) -> LeafRecord:
    """Decode leaf bytes; raise :class:`AuditError` unless they are valid AND canonical."""
    try:
        rec: LeafRecord = _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"malformed audit record: {exc}") from exc
    validate_record(rec)
    if msgspec.json.encode(rec, order="sorted") != data:  # JSON cannot carry NaN/inf
        raise AuditError("audit record is not in canonical form")
    return rec


def leaf_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a leaf, generated from the structs (protocols/audit/)."""
    schema: dict[str, Any] = json_schema(LEAF_TYPE)
    return schema
