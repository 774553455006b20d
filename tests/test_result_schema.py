"""result.json has one schema (issue 15): securefl.result.RunResult, committed as
protocols/audit/result.schema.json. Here: the committed file is in sync with the struct, every field
is required and no other is allowed, ``securefl run`` writes it (the deployment's and the Flower
workflow's result.json are checked in tests/test_deploy_local.py, tests/test_deploy_ckks.py and
tests/test_flower_mod.py), and the independent validator (tests/result_helpers.py) and
securefl's decoder agree on broken documents."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from result_helpers import SCHEMA_PATH, check_result_json, committed_schema, schema_errors

from securefl.errors import AuditError
from securefl.result import RoundReport, RunResult, Trip, decode_result, result_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_committed_result_schema_is_in_sync() -> None:
    assert committed_schema() == result_json_schema()
    spec = importlib.util.spec_from_file_location("gen", ROOT / "protocols/audit/generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render_result() == SCHEMA_PATH.read_text("utf-8")


@pytest.mark.parametrize("name", ["RunResult", "RoundReport", "Trip"])
def test_every_field_is_required_and_no_other_is_allowed(name: str) -> None:
    """A fact a driver does not have is written as null or empty, never left out."""
    node = committed_schema()["$defs"][name]
    assert sorted(node["required"]) == sorted(node["properties"])
    assert node["additionalProperties"] is False


def _sample() -> RunResult:
    """A result with a released round, an aborted one and a trip (every nested type used)."""
    released = RoundReport(round=1, participants=("a", "b", "c"), survivors=("a", "b"),
                           dropouts={"c": "masked"}, metrics={"roc_auc": 0.71},
                           update_norms_clipped=1, seconds=0.5,
                           epsilon={"client": 1.5, "record(max bank)": 2.0}, aborted=None,
                           error=None)
    aborted = RoundReport(round=2, participants=("a", "b", "c"), survivors=(),
                          dropouts={"b": "share", "c": "share"}, metrics={"roc_auc": 0.71},
                          update_norms_clipped=0, seconds=0.25, epsilon={}, aborted="SFL310",
                          error="round 2: only 1 survivor")
    return RunResult(
        securefl_version="1.0", transport="flower", session_id="00ff", aggregation="secagg",
        insecure=False, dp=True, task="classification", manifest_sha256="a" * 64, run_dir="r",
        rounds_completed=1, final_metrics={"roc_auc": 0.71}, history=[released, aborted],
        baselines={}, privacy={"accountant": "rdp"}, model_sha256="b" * 64, seconds=3.0,
        stopped_early=None, round_trips=1, round_trips_per_round=2,
        trips=[Trip(round=0, stage="hello", seconds=0.1, sent=["a"], replied=["a"],
                    dropped={})], refused={"x": "SFL401: not in the manifest"})


def test_a_result_round_trips_and_is_valid() -> None:
    doc = json.loads(json.dumps(_sample().to_dict()))
    schema = committed_schema()
    assert schema_errors(doc, schema, schema) == []
    assert decode_result(doc) == _sample()
    assert doc["history"][0]["clipped"] == 1  # the wire name of update_norms_clipped


def test_a_result_with_a_non_finite_number_is_refused_before_it_is_written() -> None:
    """JSON has no NaN or infinity (msgspec would write null): to_dict refuses, naming where."""
    import msgspec

    bad = msgspec.structs.replace(_sample(), privacy={"federation": {"epsilon": float("inf")}})
    with pytest.raises(AuditError, match=r"result\.privacy\.federation\.epsilon: inf"):
        bad.to_dict()


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


_DOC = _sample().to_dict()
_PATHS = _paths(_DOC)
#: values that break any typed field (no field of the schema takes all of them)
_WRONG = [{"x": 1}, [1], "not-a-thing", -1, 1.5, True]


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(_PATHS), how=st.sampled_from(["drop", "extra", "retype"]),
       wrong=st.sampled_from(_WRONG))
def test_the_validator_and_the_decoder_agree_on_a_broken_document(
        path: tuple[Any, ...], how: str, wrong: Any) -> None:
    """Property: drop a field, add an unknown one or change a value anywhere in a valid result:
    the committed schema (independent validator) refuses it exactly when securefl's decoder
    does, and both refuse every dropped or unknown field of a struct."""
    doc = copy.deepcopy(_DOC)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    in_struct = isinstance(parent, dict) and _is_struct(path[:-1])
    if how == "drop":
        if not isinstance(parent, dict):
            return
        del parent[key]
    elif how == "extra":
        if not isinstance(parent, dict):
            return
        parent["zz_unknown"] = 1
    else:
        parent[key] = wrong
    schema = committed_schema()
    schema_ok = schema_errors(doc, schema, schema) == []
    try:
        decode_result(doc)
        decoder_ok = True
    except AuditError:
        decoder_ok = False
    assert schema_ok == decoder_ok, (path, how, wrong)
    if how in ("drop", "extra") and in_struct:
        assert not schema_ok


def _is_struct(path: tuple[Any, ...]) -> bool:
    """Whether the object at ``path`` of _DOC is a struct (RunResult, RoundReport, Trip), not a
    free mapping (metrics, dropouts, privacy, ...)."""
    return path == () or (len(path) == 2 and path[0] in ("history", "trips"))


def test_securefl_run_writes_the_one_schema(tmp_path: Path) -> None:
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import run

    out = tmp_path / "run"
    result = run(RunConfig(rounds=2, model="logreg", dp=True, aggregation="secagg", seed=5,
                           out=str(out)))
    written = check_result_json(out)
    assert written == result.to_dict()
    assert (written["transport"], written["manifest_sha256"], written["trips"],
            written["round_trips"], written["refused"]) == ("in-process", None, None, None, {})
    assert written["history"][-1]["epsilon"] and written["privacy"]
    report = verify_run_dir(out)
    assert set(report.claims_checked) == {"final_metrics", "model_sha256", "history",
                                          "history.epsilon", "rounds_completed", "privacy"}


def test_a_result_of_another_shape_is_refused_by_verification(tmp_path: Path) -> None:
    """An old-shape (or forged) result.json, re-signed with the server key: verification names
    the schema, it does not guess at the claims."""
    from audit_helpers import make_run, resign_result, server_key

    from securefl.audit.verify import verify_run_dir

    d = tmp_path / "run"
    make_run(d, 2)
    verify_run_dir(d)
    resign_result(d, server_key(), lambda res: res.pop("history"))
    with pytest.raises(AuditError, match=r"result\.json: not a securefl result .*history"):
        verify_run_dir(d)
