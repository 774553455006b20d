"""result.json against its committed JSON Schema (protocols/audit/result.schema.json).

:func:`schema_errors` is a small validator of the JSON Schema 2020-12 keywords that schema uses,
written here from the specification (jsonschema is not a dependency), so a writer's result.json is
checked against the committed file itself, not only decoded by the struct it was generated from.
:func:`check_result_json` does both for a run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "protocols/audit/result.schema.json"

#: the keywords :func:`schema_errors` understands; a schema using another one fails the test
KNOWN = {"$defs", "$ref", "additionalProperties", "anyOf", "description", "enum", "items",
         "maxItems", "maxLength", "maximum", "minLength", "minimum", "pattern", "properties",
         "propertyNames", "required", "title", "type"}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, node: dict[str, Any], root: dict[str, Any],
                  where: str = "result") -> list[str]:
    """Every way ``value`` breaks ``node`` (a subschema of ``root``); [] when it is valid."""
    unknown = set(node) - KNOWN
    if unknown:
        return [f"{where}: schema keywords this validator does not know: {sorted(unknown)}"]
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/"):
            return [f"{where}: unsupported $ref {ref}"]
        return schema_errors(value, root["$defs"][ref.removeprefix("#/$defs/")], root, where)
    if "anyOf" in node:
        branches = [schema_errors(value, sub, root, where) for sub in node["anyOf"]]
        return [] if any(not b for b in branches) else [f"{where}: matches no anyOf branch"]
    errs: list[str] = []
    t = node.get("type")
    if t is not None and not _is_type(value, t):
        return [f"{where}: {type(value).__name__} is not {t}"]
    if "enum" in node and value not in node["enum"]:
        errs.append(f"{where}: {value!r} not in {node['enum']}")
    if isinstance(value, str):
        if len(value) > node.get("maxLength", len(value)) or \
                len(value) < node.get("minLength", 0):
            errs.append(f"{where}: length {len(value)} out of bounds")
        if "pattern" in node and re.search(node["pattern"], value) is None:
            errs.append(f"{where}: {value!r} does not match {node['pattern']}")
    if _is_type(value, "number"):
        if "minimum" in node and value < node["minimum"]:
            errs.append(f"{where}: {value} < {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errs.append(f"{where}: {value} > {node['maximum']}")
    if isinstance(value, list):
        if len(value) > node.get("maxItems", len(value)):
            errs.append(f"{where}: {len(value)} items, more than {node['maxItems']}")
        for i, item in enumerate(value):
            errs += schema_errors(item, node.get("items", {}), root, f"{where}[{i}]")
    if isinstance(value, dict):
        props = node.get("properties", {})
        errs += [f"{where}: {k} missing" for k in node.get("required", []) if k not in value]
        for k, v in value.items():
            if "propertyNames" in node:
                errs += schema_errors(k, node["propertyNames"], root, f"{where} key {k!r}")
            if k in props:
                errs += schema_errors(v, props[k], root, f"{where}.{k}")
            elif node.get("additionalProperties") is False:
                errs.append(f"{where}: unknown field {k}")
            elif isinstance(node.get("additionalProperties"), dict):
                errs += schema_errors(v, node["additionalProperties"], root, f"{where}.{k}")
    return errs


def committed_schema() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return out


def check_result_json(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s result.json: valid against the committed schema (every field present, no
    other) and decoded by securefl.result; returns its ``result`` object."""
    from securefl.result import decode_result

    result: dict[str, Any] = json.loads((run_dir / "result.json").read_bytes())["body"]["result"]
    schema = committed_schema()
    assert schema_errors(result, schema, schema) == []
    decoded = decode_result(result)
    assert decoded.to_dict() == result
    return result
