"""``securefl data schema|check``: draft a data schema from a table, and report what a table would
lose under a schema, without training (docs/data.md, "The data schema")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register_data(sub: Any) -> None:
    p = sub.add_parser("data", help="draft a data schema, or check a table against one")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = dsub.add_parser(
        "schema", help="draft a data schema (TOML or JSON) from a table, for review",
        description="Vocabularies, clip ranges and kinds come from THIS table and are flagged "
        "for review; high-cardinality columns keep their most frequent values (the rest go to "
        "'other'), identifier-like columns are ignored.")
    s.add_argument("file", type=Path, help="CSV or Parquet table")
    s.add_argument("--label", required=True, help="the label column")
    s.add_argument("--task", choices=("classification", "regression"), default=None)
    s.add_argument("--ignore", action="append", default=[], metavar="COLUMN",
                   help="a column that is not an input (e.g. the one that names the bank); "
                        "repeatable")
    s.add_argument("--min-category-count", type=int, default=None,
                   help="at each bank, a category seen fewer times folds into 'other' "
                        "(default 10)")
    s.add_argument("--out", type=Path, help="write the schema here (.toml or .json); default: "
                   "print TOML")
    s.add_argument("--json", action="store_true", help="print the schema and its digest as JSON")
    s.set_defaults(handler=_schema)

    c = dsub.add_parser("check", help="report what a table would lose under a schema (unknown "
                        "and rare categories, missing and out-of-range values)")
    c.add_argument("file", type=Path, help="CSV or Parquet table")
    c.add_argument("--schema", type=Path, required=True, help="the data schema (.toml or .json)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=_check)


def _schema(args: argparse.Namespace) -> int:
    import msgspec

    from securefl.cli.main import print_json
    from securefl.data.schema import (
        DEFAULT_MIN_CATEGORY_COUNT,
        draft_schema,
        dumps_json,
        dumps_toml,
        read_cells,
        schema_digest,
    )

    cells, _ = read_cells(args.file)
    schema = draft_schema(cells, label=args.label, task=args.task, source=args.file.name,
                          exclude=tuple(args.ignore),
                          min_category_count=args.min_category_count or DEFAULT_MIN_CATEGORY_COUNT)
    digest = schema_digest(schema)
    if args.out is not None:
        from securefl.storage import atomic_write_bytes

        text = dumps_json(schema) if args.out.suffix.lower() == ".json" else dumps_toml(schema)
        atomic_write_bytes(args.out, text.encode("utf-8"))
    if args.json:
        print_json({"schema": msgspec.to_builtins(schema), "sha256": digest,
                    "out": str(args.out) if args.out else None})
        return 0
    if args.out is None:
        sys.stdout.write(dumps_toml(schema))
    else:
        print(f"wrote {args.out} ({len(schema.features)} features), sha256 {digest}")
    print(f"REVIEW before pinning ({len(schema.review)} notes):", file=sys.stderr)
    for note in schema.review:
        print(f"  - {note}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from securefl.cli.main import print_json
    from securefl.data.schema import check_table, load_schema, read_cells, schema_digest

    schema = load_schema(args.schema)
    cells, source = read_cells(args.file)
    report = check_table(cells, schema)
    if args.json:
        print_json({**report.to_dict(), "schema_sha256": schema_digest(schema),
                    "source": source})
        return 0
    print(f"{args.file} under {args.schema} (sha256 {schema_digest(schema)[:16]}...):")
    for line in report.lines():
        print(f"  {line}")
    return 0
