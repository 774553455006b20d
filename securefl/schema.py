"""One JSON Schema generator for every committed schema in ``protocols/``.

The schemas in ``protocols/`` are language-neutral contracts, so their bytes must not depend on the
version of the library that generates them. msgspec derives ``description`` from docstrings, and how
it does so changed between releases (0.18 copies ``__doc__`` verbatim, 0.19+ dedents it); other
fields are stable. :func:`json_schema` therefore normalises every description with
:func:`inspect.cleandoc` (idempotent: an already-dedented text is returned unchanged), so any
supported msgspec yields identical output. :func:`render` is the one canonical text form.
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import msgspec

__all__ = [
    "ClientId",
    "ErrorCode",
    "MetricName",
    "Mode",
    "SessionId",
    "Sha256Hex",
    "Stage",
    "Version",
    "json_schema",
    "normalise",
    "render",
]

# -- the field types every committed schema shares (audit records, result.json) ----------------------
Sha256Hex = Annotated[
    str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="lowercase hex SHA-256")
]
ClientId = Annotated[
    str, msgspec.Meta(pattern="^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$", description="client id")
]
SessionId = Annotated[
    str, msgspec.Meta(pattern="^([0-9a-f]{2}){1,64}$", description="lowercase hex")
]
Stage = Annotated[str, msgspec.Meta(pattern="^[a-z][a-z0-9_]{0,63}$", description="protocol stage")]
Mode = Annotated[
    str, msgspec.Meta(pattern="^[a-z][a-z0-9+_-]{0,31}$", description="aggregation mode")
]
MetricName = Annotated[str, msgspec.Meta(pattern="^[A-Za-z][A-Za-z0-9_./-]{0,63}$")]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[0-9A-Za-z.+_-]+$")]
ErrorCode = Annotated[str, msgspec.Meta(pattern="^SFL[0-9]{3}$")]


def normalise(node: Any) -> Any:
    """Return ``node`` with every ``description`` string cleaned the way :func:`inspect.cleandoc`
    cleans a docstring (leading/trailing blank lines dropped, common indentation removed)."""
    if isinstance(node, dict):
        return {k: (inspect.cleandoc(v) if k == "description" and isinstance(v, str) else normalise(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    return node


def json_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema (2020-12) of a msgspec type, independent of msgspec's docstring handling."""
    out: dict[str, Any] = normalise(msgspec.json.schema(tp))
    return out


def render(schema: Any) -> str:
    """The committed text form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
