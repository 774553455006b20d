"""protocols/ledger: the committed JSON Schema and example stay in sync with the code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from securefl.dp.ledger import Ledger
from securefl.privacy import epsilon

ROOT = Path(__file__).resolve().parents[1] / "protocols" / "ledger"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ledger_generate", ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_schema_file_is_current() -> None:
    assert (ROOT / "ledger-entry.schema.json").read_text(encoding="utf-8") == \
        _generator().schema_text()


def test_example_ledger_is_current_and_verifies() -> None:
    data = (ROOT / "example.jsonl").read_bytes()
    assert data == _generator().example_ledger().to_bytes()
    led = Ledger.from_bytes(data)
    assert len(led) == 8
    schema = json.loads((ROOT / "ledger-entry.schema.json").read_text(encoding="utf-8"))
    required = set(schema["$defs"]["LedgerEntry"]["required"])
    for line in data.splitlines():
        assert required <= set(json.loads(line))
    # the dropout round: 2 of 3 survived with t = 2, so the sum carries exactly z = 1
    fed0 = [e for e in led.entries if e.party == "federation" and e.round == 0]
    assert epsilon(fed0, 1e-5) > 0
