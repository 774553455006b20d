"""Audit records: canonical leaf encoding (hand-worked example), validation rules, schema sync."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.records import (
    GenesisRecord,
    RoundRecord,
    decode_leaf,
    encode_leaf,
    leaf_json_schema,
)
from securefl.errors import AuditError

ROOT = Path(__file__).resolve().parents[1]
H = {c: c * 64 for c in "0123456789abcdef"}


def _round(**over: Any) -> RoundRecord:
    fields: dict[str, Any] = dict(
        version=1, session_id="0a1b", round=1, config_sha256=H["1"], federation_sha256=H["2"],
        aggregation="secagg+", participants=["a", "b"], survivors=["a"], dropouts={"b": "unmask"},
        input_digests={"a": H["3"]}, aggregate_digest=H["4"], model_sha256_before=H["5"],
        model_sha256_after=H["6"], ledger_entries_sha256=[H["7"]], metrics={"loss": 0.25},
        software_version="0.1.0", status="committed", error_code=None,
    )
    fields.update(over)
    return RoundRecord(**fields)


def test_genesis_leaf_bytes_hand_worked() -> None:
    g = GenesisRecord(version=1, origin="o", config_sha256=H["a"], federation_sha256=H["b"],
                      model_sha256=H["c"], software_version="0.1.0")
    want = ('{"config_sha256":"' + H["a"] + '","federation_sha256":"' + H["b"]
            + '","model_sha256":"' + H["c"] + '","origin":"o","software_version":"0.1.0",'
            '"type":"genesis","version":1}').encode()
    assert encode_leaf(g) == want
    assert decode_leaf(want) == g


def test_round_leaf_bytes_hand_worked() -> None:
    want = (
        '{"aggregate_digest":"' + H["4"] + '","aggregation":"secagg+","config_sha256":"' + H["1"]
        + '","dropouts":{"b":"unmask"},"error_code":null,"federation_sha256":"' + H["2"]
        + '","input_digests":{"a":"' + H["3"] + '"},"ledger_entries_sha256":["' + H["7"]
        + '"],"metrics":{"loss":0.25},"model_sha256_after":"' + H["6"]
        + '","model_sha256_before":"' + H["5"] + '","participants":["a","b"],"round":1,'
        '"session_id":"0a1b","software_version":"0.1.0","status":"committed",'
        '"survivors":["a"],"type":"round","version":1}'
    ).encode()
    assert encode_leaf(_round()) == want
    assert decode_leaf(want) == _round()


@pytest.mark.parametrize("over", [
    {"participants": ["b", "a"], "dropouts": {"b": "unmask"}},  # unsorted
    {"survivors": ["a", "c"]},  # survivor not a participant
    {"dropouts": {}},  # dropout missing
    {"input_digests": {"z": H["1"]}},
    {"status": "aborted"},  # no error code
    {"status": "aborted", "error_code": "SFL310"},  # model changed / aggregate released
    {"error_code": "SFL310"},  # committed with an error code
    {"metrics": {"loss": float("nan")}},
    {"session_id": "0A1B"},  # uppercase hex
    {"model_sha256_after": "A" * 64},
    {"round": 0},
])
def test_invalid_records_are_refused(over: dict[str, Any]) -> None:
    with pytest.raises(AuditError):
        encode_leaf(_round(**over))


def test_aborted_round_is_valid_when_nothing_is_released() -> None:
    rec = _round(status="aborted", error_code="SFL310", aggregate_digest=None,
                 model_sha256_after=H["5"])
    assert decode_leaf(encode_leaf(rec)) == rec


@pytest.mark.parametrize("mutate", [
    lambda s: s.replace(b'"round":1', b'"round": 1'),  # whitespace
    lambda s: s.replace(b'"loss":0.25', b'"loss":2.5e-1'),  # other float spelling
    lambda s: s[:-1] + b',"extra":1}',  # unknown field
    lambda s: s.replace(b'"version":1', b'"version":2'),
    lambda s: s.replace(b'{"aggregate_digest"', b'{"type":"round","aggregate_digest"', 1),
    lambda s: s + b"\n",
])
def test_non_canonical_or_unknown_leaves_are_refused(mutate: Any) -> None:
    good = encode_leaf(_round())
    bad = mutate(good)
    assert bad != good
    with pytest.raises(AuditError):
        decode_leaf(bad)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
                       st.floats(allow_nan=False, allow_infinity=False), max_size=5))
def test_metrics_round_trip_canonically(metrics: dict[str, float]) -> None:
    rec = _round(metrics=metrics)
    data = encode_leaf(rec)
    assert decode_leaf(data) == rec
    assert json.loads(data)["metrics"] == metrics  # an independent JSON parser agrees


def test_committed_schema_is_in_sync() -> None:
    committed = json.loads((ROOT / "protocols/audit/record.schema.json").read_text())
    assert committed == leaf_json_schema()
    spec = importlib.util.spec_from_file_location("gen", ROOT / "protocols/audit/generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render() == (ROOT / "protocols/audit/record.schema.json").read_text()


def test_schema_describes_both_leaf_types() -> None:
    schema = leaf_json_schema()
    assert set(schema["$defs"]) == {"GenesisRecord", "RoundRecord"}
    rr = schema["$defs"]["RoundRecord"]
    assert rr["additionalProperties"] is False
    assert "model_sha256_after" in rr["required"]
    assert msgspec.json.decode(json.dumps(schema)) == schema
