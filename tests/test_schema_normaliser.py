"""Committed JSON Schemas must not depend on how msgspec turns docstrings into descriptions."""

from __future__ import annotations

import msgspec

from securefl.schema import json_schema, normalise, render


class Indented(msgspec.Struct):
    """Packed integers.

    Each coordinate takes ceil(bits/8)
        B/coord. when packed.
    """

    x: int


class Dedented(msgspec.Struct):
    """Packed integers.

Each coordinate takes ceil(bits/8)
    B/coord. when packed.
"""

    x: int


def _renamed(schema: dict[str, object], old: str, new: str) -> str:
    return render(schema).replace(old, new)


def test_indented_and_dedented_docstrings_give_identical_bytes() -> None:
    a = _renamed(json_schema(Indented), "Indented", "T")
    b = _renamed(json_schema(Dedented), "Dedented", "T")
    assert a == b
    assert "ceil(bits/8)\\n    B/coord." in a  # relative indentation inside the text is kept


def test_raw_docstring_as_old_msgspec_emitted_it_is_normalised() -> None:
    # msgspec 0.18 copied __doc__ verbatim; newer releases dedent it. Both must render the same.
    raw = {"$defs": {"T": {"description": "Packed.\n\n    Each\n        B/coord.\n    ", "type": "object"}},
           "anyOf": [{"description": "  one line\n"}]}
    dedented = {"$defs": {"T": {"description": "Packed.\n\nEach\n    B/coord.", "type": "object"}},
                "anyOf": [{"description": "one line"}]}
    assert render(normalise(raw)) == render(normalise(dedented))
    assert normalise(normalise(raw)) == normalise(raw)  # idempotent


def test_non_description_strings_are_untouched() -> None:
    node = {"title": "  T  ", "enum": ["  a  "], "description": 3}
    assert normalise(node) == node
