"""Regenerate protocols/data/data-schema.schema.json from securefl.data.schema (run from the repo
root):

    python protocols/data/generate.py

The JSON Schema of a securefl data schema file (the federation's data contract, docs/data.md).
tests/test_data_schema.py fails when the committed file drifts from the code.
"""

from __future__ import annotations

from pathlib import Path

from securefl.data.schema import DataSchema
from securefl.schema import json_schema
from securefl.schema import render as render_schema

HERE = Path(__file__).resolve().parent
TARGET = HERE / "data-schema.schema.json"


def render() -> str:
    return render_schema(json_schema(DataSchema))


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
