"""A run's result: the one typed object every driver returns and writes to ``result.json``.

``securefl run`` / :func:`securefl.train` (in process), a deployment's server (``securefl deploy``)
and the Flower workflow (``SecureFLWorkflow`` inside a user's Flower app) all build one
:class:`RunResult` and write :meth:`RunResult.to_dict` (signed and bound to the audit log by
``securefl.audit.store.RunStore.finish``). Its JSON Schema, generated from these structs, is
``protocols/audit/result.schema.json`` (a test keeps the two in sync); the auditor decodes a
result.json with :func:`decode_result` before it re-derives the claims (``securefl.audit.claims``).

Every field is always present. A fact a driver does not have is explicit:

===================== ============================================================================
field                 when it is empty
===================== ============================================================================
``task``              None on the Flower workflow (the user's ClientApps own the data and loss)
``dp``                always set: record-level DP-SGD in process and in a deployment; on the Flower
                      workflow, whether the manifest plans client-level noise
``manifest_sha256``   None in process (no federation manifest)
``final_metrics``     {} when the driver evaluates no model (the Flower workflow without
                      evaluation, a deployment without a test table)
``baselines``         {} unless ``securefl run --baselines`` (in process only)
``privacy``           {} without DP in process and in a deployment; the Flower workflow always
                      reports its ledger (a bank's own DP-SGD may be declared there)
``seconds``           None on the Flower workflow (Flower's own loop runs the rounds)
``stopped_early``     None unless the in-process run stopped before its last round (budget)
``round_trips``,      None unless a deployment (``transport == "flower"``): its Flower round trips
``round_trips_per_round``, ``trips``
``refused``           {} unless a deployment refused a node or a message
===================== ============================================================================
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
    "MAX_TEXT",
    "TRANSPORTS",
    "RoundReport",
    "RunResult",
    "Trip",
    "decode_result",
    "result_json_schema",
]

#: who wrote a result.json: securefl run / securefl.train, a deployment, the Flower workflow
TRANSPORTS = ("in-process", "flower", "flower-app")
Transport = Literal["in-process", "flower", "flower-app"]
#: the longest free text a result carries (an error's message, a drop or refusal reason)
MAX_TEXT = 2048
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**9)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0)]
#: lists long enough for any run (max_rounds is at most 10**6 rounds; trips are a few per round)
MAX_ITEMS = 10**7


class RoundReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What one round released and measured: the engine's report of a settled round (the
    progress callbacks get it), a line of metrics.jsonl and an entry of result.json's
    ``history``. Parties are named as the run directory names them (bank names)."""

    round: Annotated[int, msgspec.Meta(ge=1, le=10**9)]
    participants: tuple[ClientId, ...]
    survivors: tuple[ClientId, ...]
    #: who dropped, at which protocol stage
    dropouts: dict[ClientId, Stage]
    metrics: dict[MetricName, float]
    #: how many participants' updates were clipped
    update_norms_clipped: Count = msgspec.field(name="clipped")
    seconds: Seconds
    #: the running epsilon after this round (``client``, ``record(max bank)``; {} without DP)
    epsilon: dict[Annotated[str, msgspec.Meta(max_length=64)], float]
    #: the error code (SFLnnn) when the round aborted (nothing released, model unchanged); the
    #: audit record's ``error_code``
    aborted: ErrorCode | None
    #: the aborted round's error message (None: released, or a round read back from the audit
    #: log, which records the code only)
    error: Text | None


class Trip(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One Flower round trip of a deployment (also a line of its progress file)."""

    round: Annotated[int, msgspec.Meta(ge=0, le=10**9)]
    stage: Stage
    seconds: Seconds
    sent: list[ClientId]
    replied: list[ClientId]
    dropped: dict[ClientId, Text]


class RunResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The outcome of a run, whoever drove it (module docstring: which fields a driver leaves
    empty). ``to_dict()`` is result.json's ``result`` object."""

    securefl_version: Version
    #: which driver wrote it (:data:`TRANSPORTS`)
    transport: Transport
    session_id: SessionId
    aggregation: Mode
    #: True only for ``plain``: the server saw every update
    insecure: bool
    dp: bool
    task: Annotated[str, msgspec.Meta(max_length=64)] | None
    manifest_sha256: Sha256Hex | None
    #: the run directory as the writer saw it (a local path, not a claim anyone checks)
    run_dir: Annotated[str, msgspec.Meta(max_length=4096)]
    rounds_completed: Count
    final_metrics: dict[MetricName, float]
    history: Annotated[list[RoundReport], msgspec.Meta(max_length=MAX_ITEMS)]
    #: centralized and bank-alone models' test metrics (not re-derivable from the log)
    baselines: dict[Annotated[str, msgspec.Meta(max_length=128)], dict[MetricName, float]]
    #: securefl.dp.report.privacy_report of the ledger at config.json's delta (rdp); {} without DP
    privacy: dict[str, Any]
    model_sha256: Sha256Hex
    seconds: Seconds | None
    stopped_early: Text | None
    round_trips: Count | None
    round_trips_per_round: Count | None
    trips: Annotated[list[Trip], msgspec.Meta(max_length=MAX_ITEMS)] | None
    refused: dict[Annotated[str, msgspec.Meta(max_length=256)], Text]

    def to_dict(self) -> dict[str, Any]:
        """result.json's ``result`` object (JSON types only: lists, not tuples)."""
        _check_finite(msgspec.to_builtins(self), "result")  # JSON would turn NaN/inf into null
        out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(self))
        decode_result(out)  # what is written is what an auditor decodes
        return out


def _check_finite(node: Any, where: str) -> None:
    if isinstance(node, float) and not math.isfinite(node):
        raise AuditError(f"{where}: {node} has no JSON encoding",
                         hint="a metric or epsilon of the run is not finite")
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}[{i}]")


def decode_result(obj: Any) -> RunResult:
    """A result.json ``result`` object (parsed JSON) as a :class:`RunResult`; AuditError naming the
    first field that is missing, unknown or of the wrong type."""
    try:
        return msgspec.convert(obj, RunResult)
    except msgspec.ValidationError as exc:
        raise AuditError(f"result.json: not a securefl result ({exc})",
                         hint="result.json follows protocols/audit/result.schema.json; a run "
                              "directory written by another securefl version may not (see its "
                              "securefl_version)") from exc


def result_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of result.json's ``result`` object (protocols/audit/)."""
    schema: dict[str, Any] = json_schema(RunResult)
    return schema
