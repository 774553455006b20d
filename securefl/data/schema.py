"""The data schema: the federation's data contract (docs/data.md, "The data schema").

A :class:`DataSchema` says, for one table: the label and the task, each feature's kind (numeric,
categorical, boolean), a categorical column's vocabulary (declared and reviewed by people, never
learned from other banks' rows), the parsing of numeric strings ("13.5%", "36 months"), the
missing-value policy, and the transform (clip range, log). Every bank that encodes its table with
the same schema gets the same columns in the same order, so the shared model means one thing.

- :func:`load_schema` / :func:`dumps_toml` / :func:`dumps_json`: the file (TOML or JSON, size-limited,
  strictly typed, unknown keys refused); :func:`schema_digest`: the canonical SHA-256 a federation
  manifest pins; :func:`load_pinned_schema` refuses a file whose digest differs.
- :func:`draft_schema`: a first draft from one table, with review notes (vocabularies to review,
  high-cardinality columns with a suggested cap and an "other" bucket, identifier-like columns).
- :func:`read_cells` reads a CSV or Parquet file as text cells; :func:`encode` turns them into the
  feature matrix; :func:`check_table` reports what a table would lose, without training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import numpy as np

from securefl.errors import DataError, SchemaPinError, SchemaViolationError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "MAX_SCHEMA_BYTES",
    "OTHER",
    "SCHEMA_VERSION",
    "DataSchema",
    "Encoded",
    "Feature",
    "Imputation",
    "TableCheck",
    "apply_fills",
    "check_table",
    "draft_schema",
    "dumps_json",
    "dumps_toml",
    "encode",
    "impute_from_moments",
    "label_values",
    "load_pinned_schema",
    "load_schema",
    "parse_schema",
    "read_cells",
    "schema_digest",
    "schema_inputs",
]

SCHEMA_VERSION = 1
#: a schema file larger than this is refused before parsing
MAX_SCHEMA_BYTES = 1 << 20
#: the bucket of every categorical column: values outside the vocabulary and rare values
OTHER = "other"
#: the draft's cap on a vocabulary: more distinct values is flagged as high-cardinality
DRAFT_MAX_VOCABULARY = 30
#: the default minimum count of a category at a bank; rarer values fold into "other"
DEFAULT_MIN_CATEGORY_COUNT = 10
#: how many offending values an error or a check report quotes per column
MAX_QUOTED = 5
_MISSING = frozenset({"", "na", "nan", "null", "none", "n/a", "?"})
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNIT_RE = re.compile(rf"^\s*({_NUMBER})\s*([^\d\s.+-][^\d]*?)\s*$")
_NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_VALUE = Annotated[str, msgspec.Meta(max_length=256)]
_SCHEMA_DOMAIN = b"securefl-data-schema-v1\n"

Kind = Literal["numeric", "categorical", "boolean"]
Missing = Literal["impute", "reject"]
Transform = Literal["none", "log1p", "signed_log1p"]


class Feature(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
              omit_defaults=True):
    """One input column and how every bank encodes it.

    ``kind``: numeric (one input, ``clip`` then ``transform``), categorical (one-hot over
    ``vocabulary`` plus an "other" input for values outside it and rare values) or boolean (0/1:
    true/false, yes/no, 1/0). ``unit``: a numeric column's cells may carry this suffix ("%",
    "months"): "13.5%" reads 13.5, "36 months" reads 36. ``clip``: [low, high] in the column's own
    units, applied before the transform; it also bounds what one row adds to the federation's
    statistics (the sensitivity of their DP noise). ``missing``: "impute" (the federation's mean,
    or its mode for categorical and boolean columns, from the noised sums of round 0, plus a 0/1
    "missing" input) or "reject" (a missing cell is a schema violation).
    """

    name: _NAME
    kind: Kind
    vocabulary: list[_VALUE] | None = None
    unit: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    clip: tuple[float, float] | None = None
    transform: Transform = "none"
    missing: Missing = "impute"


class DataSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The federation's data contract for one table (module docstring).

    ``label_classes`` (classification): the label's two values, class 0 first. ``ignore``: columns
    a table may have that are not inputs (identifiers, the column that names the bank).
    ``min_category_count``: at each bank, a category seen fewer times than this folds into "other".
    ``review``: notes the draft leaves for the people who review the schema before it is pinned.
    """

    version: int = SCHEMA_VERSION
    label: _NAME
    task: Literal["classification", "regression"]
    label_classes: list[_VALUE] | None = None
    min_category_count: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MIN_CATEGORY_COUNT
    features: list[Feature]
    ignore: list[_NAME] = []
    review: list[Annotated[str, msgspec.Meta(max_length=1024)]] = []

    def __post_init__(self) -> None:
        _validate(self)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise DataError(f"no feature {name!r} in the schema")


def _validate(s: DataSchema) -> None:
    def bad(msg: str) -> DataError:
        return DataError(f"invalid data schema: {msg}", hint="fix the schema file (docs/data.md)")

    if s.version != SCHEMA_VERSION:
        raise bad(f"version {s.version} (this build reads version {SCHEMA_VERSION})")
    if not s.features:
        raise bad("no features")
    names = [f.name for f in s.features]
    for group, what in ((names, "feature"), (list(s.ignore), "ignored column")):
        dup = sorted({n for n in group if group.count(n) > 1})
        if dup:
            raise bad(f"duplicate {what} names: {', '.join(dup)}")
    clash = sorted((set(names) | set(s.ignore)) & {s.label} | set(names) & set(s.ignore))
    if clash:
        raise bad(f"a column is declared twice (label, feature or ignored): {', '.join(clash)}")
    if s.task == "classification":
        if s.label_classes is None or len(s.label_classes) != 2 or \
                s.label_classes[0] == s.label_classes[1]:
            raise bad("classification needs label_classes with two distinct values")
    elif s.label_classes is not None:
        raise bad("label_classes is for classification only")
    for f in s.features:
        where = f"feature {f.name!r}"
        if f.kind == "categorical":
            voc = f.vocabulary or []
            if not voc:
                raise bad(f"{where}: a categorical feature needs a vocabulary")
            if len(set(voc)) != len(voc) or OTHER in voc:
                raise bad(f"{where}: vocabulary values must be distinct and not {OTHER!r}")
            if f.unit is not None or f.clip is not None or f.transform != "none":
                raise bad(f"{where}: unit, clip and transform are for numeric features")
        elif f.vocabulary is not None:
            raise bad(f"{where}: only categorical features have a vocabulary")
        if f.kind == "boolean" and (f.unit is not None or f.clip is not None
                                    or f.transform != "none"):
            raise bad(f"{where}: unit, clip and transform are for numeric features")
        if f.kind == "numeric":
            if f.clip is None:
                raise bad(f"{where}: a numeric feature needs clip = [low, high] (it bounds the "
                          "statistics' DP sensitivity)")
            lo, hi = f.clip
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise bad(f"{where}: clip must be two finite numbers, low < high")
            if f.transform == "log1p" and lo < 0:
                raise bad(f"{where}: log1p needs clip low >= 0")


# --- the file ------------------------------------------------------------------------------------
def parse_schema(data: bytes, *, fmt: Literal["toml", "json"], source: str = "schema") -> DataSchema:
    """Decode a schema from TOML or JSON bytes (size-limited, strictly typed)."""
    if len(data) > MAX_SCHEMA_BYTES:
        raise DataError(f"{source}: {len(data)} bytes, more than {MAX_SCHEMA_BYTES}")
    try:
        if fmt == "json":
            return msgspec.json.decode(data, type=DataSchema)
        obj = tomllib.loads(data.decode("utf-8"))
        return msgspec.convert(obj, type=DataSchema)
    except (msgspec.ValidationError, msgspec.DecodeError, tomllib.TOMLDecodeError,
            UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not a valid data schema: {exc}",
                        hint="see docs/data.md for the format, or draft one with "
                             "`securefl data schema FILE --label COL`") from None


def load_schema(path: str | Path) -> DataSchema:
    """Read a ``.toml`` or ``.json`` schema file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SCHEMA_BYTES:
            raise DataError(f"{p}: {size} bytes, more than {MAX_SCHEMA_BYTES}")
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read schema {p}: {exc.strerror}") from None
    fmt: Literal["toml", "json"] = "json" if p.suffix.lower() == ".json" else "toml"
    return parse_schema(data, fmt=fmt, source=str(p))


def _canonical(schema: DataSchema) -> bytes:
    return msgspec.json.encode(msgspec.to_builtins(schema), order="sorted")


def schema_digest(schema: DataSchema) -> str:
    """Hex SHA-256 of ``"securefl-data-schema-v1\\n"`` + the schema's canonical JSON (keys sorted,
    no whitespace, every field written): a TOML file and a JSON file of the same schema have the
    same digest. This is what a federation manifest pins (``data_schema``)."""
    return hashlib.sha256(_SCHEMA_DOMAIN + _canonical(schema)).hexdigest()


def load_pinned_schema(path: str | Path, pinned: str | None) -> DataSchema:
    """The schema at ``path``, refused (:class:`SchemaPinError`) unless its digest equals the
    manifest's ``pinned`` digest; ``pinned`` None means the manifest pins no schema."""
    schema = load_schema(path)
    if pinned is not None and schema_digest(schema) != pinned:
        raise SchemaPinError(
            f"the data schema {path} has digest {schema_digest(schema)[:16]}..., the federation "
            f"manifest pins {pinned[:16]}...",
            hint="use the schema file the federation agreed on (its digest is in the manifest)")
    return schema


def dumps_json(schema: DataSchema) -> str:
    return json.dumps(msgspec.to_builtins(schema), indent=2, sort_keys=True) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        # a JSON string is a TOML basic string, once DEL (which JSON leaves raw) is escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise DataError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(schema: DataSchema) -> str:
    """The schema as TOML: top-level keys, then one ``[[features]]`` table per feature."""
    d = msgspec.to_builtins(schema)
    lines = ["# securefl data schema (docs/data.md). Review it, then pin its digest in the",
             "# federation manifest: every bank encodes its table with exactly this file."]
    for k in ("version", "label", "task", "label_classes", "min_category_count", "ignore",
              "review"):
        if d.get(k) is not None:
            lines.append(f"{k} = {_toml_value(d[k])}")
    for feat in d["features"]:
        lines += ["", "[[features]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in feat.items() if v is not None]
    return "\n".join(lines) + "\n"


# --- reading a table as cells ----------------------------------------------------------------------
Cells = dict[str, list[str | None]]


def read_cells(path: str | Path) -> tuple[Cells, str]:
    """Every column of a CSV (``.csv``, ``.csv.gz``) or Parquet file as text cells (None: a null),
    and the source string ``"<path> sha256:<hex>"``."""
    from securefl.data.table import data_format, file_sha256, read_csv_cells, read_parquet_cells

    p = Path(path)
    cells = read_csv_cells(p) if data_format(p) == "csv" else read_parquet_cells(p)
    if not cells or not next(iter(cells.values())):
        raise DataError(f"{p} has no data rows")
    return cells, f"{p} sha256:{file_sha256(p)}"


def _is_missing(cell: str | None) -> bool:
    return cell is None or cell.strip().lower() in _MISSING


def _number(cell: str, unit: str | None = None) -> float | None:
    """The bare number in ``cell``; None if it is not one."""
    text = cell.strip()
    return float(text) if re.fullmatch(_NUMBER, text) else None


def _parse_number(cell: str, unit: str | None) -> float | None:
    v = _number(cell, unit)
    if v is not None or unit is None:
        return v
    m = _UNIT_RE.match(cell)
    if m and m.group(2).strip() == unit.strip():
        return float(m.group(1))
    return None


def _quote(values: Sequence[str]) -> str:
    shown = [repr(v[:40]) for v in values[:MAX_QUOTED]]
    more = f" and {len(values) - MAX_QUOTED} more" if len(values) > MAX_QUOTED else ""
    return ", ".join(shown) + more


# --- encoding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Imputation:
    """How one feature's missing cells are filled once the federation's sums are released.

    ``columns``: the feature's encoded inputs (one for numeric/boolean, the one-hot block for a
    categorical); ``indicator``: its 0/1 missing input; ``rule``: "mean" (numeric) or "mode".
    """

    feature: str
    columns: tuple[int, ...]
    indicator: int
    rule: Literal["mean", "mode"]


@dataclass(frozen=True)
class Encoded:
    """One holder's encoded rows: ``X`` (missing cells 0 until imputed), the names of its inputs,
    each input's public range [low, high] (rows of ``bounds``: the DP sensitivity of the
    statistics), and what was lost."""

    X: NDArray[np.float64]
    names: tuple[str, ...]
    bounds: NDArray[np.float64]
    imputations: tuple[Imputation, ...]
    #: groups of inputs of which a row has at most one non-zero (a one-hot block; else one input)
    groups: tuple[tuple[int, ...], ...] = ()
    folded: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)


def _transform(x: NDArray[np.float64], name: Transform) -> NDArray[np.float64]:
    if name == "log1p":
        return np.log1p(x)
    if name == "signed_log1p":
        return np.sign(x) * np.log1p(np.abs(x))
    return x


def input_names(schema: DataSchema) -> tuple[str, ...]:
    """The encoded inputs, in order: fixed by the schema alone (never by a bank's rows)."""
    names: list[str] = []
    for f in schema.features:
        if f.kind == "categorical":
            names += [f"{f.name}={v}" for v in (f.vocabulary or [])] + [f"{f.name}={OTHER}"]
        elif f.kind == "numeric" and f.transform != "none":
            names.append(f"{'slog1p' if f.transform == 'signed_log1p' else 'log1p'}({f.name})")
        else:
            names.append(f.name)
        if f.missing == "impute":
            names.append(f"{f.name}:missing")
    return tuple(names)


def encode(cells: Mapping[str, Sequence[str | None]], schema: DataSchema,
           rows: NDArray[np.int64] | None = None, *, fold_rare: bool = True) -> Encoded:
    """Encode the ``rows`` (default all) of a table held by ONE bank with ``schema``.

    The inputs and their order depend on the schema only (:func:`input_names`). A categorical value
    outside the vocabulary goes to "other", and so does (``fold_rare``) a vocabulary value seen
    fewer than ``min_category_count`` times in these rows. A missing cell with policy "impute" is
    0 and its "missing" input 1 (the federation's mean or mode fills it later,
    :func:`impute_from_moments`). Anything the schema forbids raises
    :class:`SchemaViolationError` naming every offending column and (up to 5) values.
    """
    n_all = len(next(iter(cells.values()))) if cells else 0
    idx = np.arange(n_all) if rows is None else np.asarray(rows, dtype=np.int64)
    absent = [f.name for f in schema.features if f.name not in cells]
    if absent:
        raise SchemaViolationError(f"the table lacks the schema's columns: {', '.join(absent)}",
                                   columns={c: [] for c in absent})
    n = idx.size
    blocks: list[NDArray[np.float64]] = []
    bounds: list[tuple[float, float]] = []
    imputations: list[Imputation] = []
    groups: list[tuple[int, ...]] = []
    violations: dict[str, list[str]] = {}
    out = Encoded(X=np.zeros((0, 0)), names=(), bounds=np.zeros(0), imputations=())
    col = 0
    for f in schema.features:
        raw = [cells[f.name][int(i)] for i in idx]
        miss = np.array([_is_missing(c) for c in raw], dtype=bool)
        if miss.any():
            out.missing[f.name] = int(miss.sum())
            if f.missing == "reject":
                violations.setdefault(f.name, []).append(f"{int(miss.sum())} missing cells")
        present = [(i, c.strip()) for i, c in enumerate(raw) if not miss[i] and c is not None]
        if f.kind == "categorical":
            voc = list(f.vocabulary or [])
            counts = Counter(v for _, v in present)
            unknown = {v: k for v, k in counts.items() if v not in voc}
            if unknown:
                out.unknown[f.name] = dict(sorted(unknown.items(), key=lambda kv: -kv[1]))
            keep = set(voc)
            if fold_rare:
                rare = {v: counts[v] for v in voc if 0 < counts[v] < schema.min_category_count}
                if rare:
                    out.folded[f.name] = rare
                    keep -= set(rare)
            block = np.zeros((n, len(voc) + 1))
            pos = {v: j for j, v in enumerate(voc)}
            for i, v in present:
                block[i, pos[v] if v in keep else len(voc)] = 1.0
            width, rule = len(voc) + 1, "mode"
            bounds += [(0.0, 1.0)] * width
        elif f.kind == "boolean":
            block = np.zeros((n, 1))
            bad: list[str] = []
            for i, v in present:
                low = v.lower()
                if low in _TRUE:
                    block[i, 0] = 1.0
                elif low not in _FALSE:
                    bad.append(v)
            if bad:
                violations.setdefault(f.name, []).append(f"not boolean: {_quote(bad)}")
            width, rule = 1, "mode"
            bounds.append((0.0, 1.0))
        else:
            lo, hi = f.clip or (-math.inf, math.inf)
            x = np.zeros(n)
            bad = []
            for i, v in present:
                num = _parse_number(v, f.unit)
                if num is None or not math.isfinite(num):
                    bad.append(v)
                else:
                    x[i] = num
            if bad:
                unit = f" (unit {f.unit!r})" if f.unit else ""
                violations.setdefault(f.name, []).append(f"not a number{unit}: {_quote(bad)}")
            obs = ~miss
            outside = obs & ((x < lo) | (x > hi))
            if outside.any():
                out.clipped[f.name] = int(outside.sum())
            x = np.where(obs, np.clip(x, lo, hi), 0.0)
            t = _transform(x, f.transform)
            block = np.where(obs, t, 0.0)[:, None]
            ends = _transform(np.array([lo, hi], dtype=np.float64), f.transform)
            width, rule = 1, "mean"
            bounds.append((float(ends[0]), float(ends[1])))
        blocks.append(block)
        cols = tuple(range(col, col + width))
        groups.append(cols)
        col += width
        if f.missing == "impute":
            blocks.append(miss.astype(np.float64)[:, None])
            imputations.append(Imputation(f.name, cols, col, rule))  # type: ignore[arg-type]
            bounds.append((0.0, 1.0))
            groups.append((col,))
            col += 1
    if violations:
        detail = "; ".join(f"{c}: {', '.join(v)}" for c, v in violations.items())
        raise SchemaViolationError(f"the table does not fit the data schema: {detail}",
                                   columns=violations)
    X = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return Encoded(X=X, names=input_names(schema),
                   bounds=np.asarray(bounds, dtype=np.float64).reshape(-1, 2),
                   imputations=tuple(imputations), groups=tuple(groups), folded=out.folded,
                   unknown=out.unknown, missing=out.missing, clipped=out.clipped)


def schema_inputs(schema: DataSchema) -> tuple[NDArray[np.float64], tuple[tuple[int, ...], ...]]:
    """The public range of each input the schema encodes and its groups (one-hot blocks, else
    one input each): what :func:`encode` reports, from the schema alone (no row)."""
    out = encode({f.name: [] for f in schema.features}, schema, np.zeros(0, dtype=np.int64))
    return np.asarray(out.bounds, dtype=np.float64).reshape(-1, 2), out.groups


def impute_from_moments(total: NDArray[np.float64], imputations: Sequence[Imputation],
                        ) -> tuple[NDArray[np.float64], dict[int, float]]:
    """(the moment vector of the IMPUTED rows, column -> fill value), from the released sum of the
    banks' moments of the encoded rows (missing cells 0, indicator 1).

    For a "mean" column j with missing count M (the indicator's sum) of N rows: mean = S_j / (N - M)
    over the observed cells; filling M cells with it adds M mean and M mean^2 to the sums. A "mode"
    block fills its most frequent input (largest sum) with 1 in the M rows. No row is dropped.
    """
    v = np.array(total, dtype=np.float64)
    d = (v.size - 1) // 2
    n = float(v[0])
    fills: dict[int, float] = {}
    for imp in imputations:
        m = min(max(float(v[1 + imp.indicator]), 0.0), n)
        if imp.rule == "mean":
            j = imp.columns[0]
            mean = float(v[1 + j]) / max(n - m, 1.0)
            fills[j] = mean
            v[1 + j] += m * mean
            v[1 + d + j] += m * mean * mean
        else:
            sums = [float(v[1 + j]) for j in imp.columns]
            j = imp.columns[int(np.argmax(sums))]
            fills[j] = 1.0
            v[1 + j] += m
            v[1 + d + j] += m
    return v, fills


def apply_fills(X: NDArray[np.floating], imputations: Sequence[Imputation],
                fills: Mapping[int, float]) -> NDArray[np.float64]:
    """A copy of ``X`` with every missing cell filled (rows whose indicator is 1)."""
    out = np.array(X, dtype=np.float64)
    for imp in imputations:
        rows = out[:, imp.indicator] > 0.5
        for j in imp.columns:
            if j in fills:
                out[rows, j] = fills[j]
    return out


# --- drafting and checking -------------------------------------------------------------------------
def _kind_of(values: list[str]) -> tuple[Kind, str | None]:
    if not values:
        return "categorical", None
    low = {v.lower() for v in values}
    if low <= (_TRUE | _FALSE) - {"0", "1"}:
        return "boolean", None
    if all(_number(v, None) is not None for v in values):
        return "numeric", None
    units = {m.group(2).strip() for v in values if (m := _UNIT_RE.match(v))}
    if len(units) == 1 and all(_parse_number(v, next(iter(units))) is not None for v in values):
        return "numeric", next(iter(units))
    return "categorical", None


def draft_schema(cells: Mapping[str, Sequence[str | None]], *, label: str,
                 task: str | None = None, source: str = "the table",
                 min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT,
                 max_vocabulary: int = DRAFT_MAX_VOCABULARY,
                 exclude: Sequence[str] = ()) -> DataSchema:
    """A first schema for one table, to be reviewed by people before it is pinned.

    Kinds: booleans (true/false, yes/no), numbers (also with one common unit suffix, "13.5%",
    "36 months"), everything else categorical with its vocabulary from THIS table (flagged for
    review). A categorical column with more than ``max_vocabulary`` values keeps its
    ``max_vocabulary`` most frequent (the rest go to "other", flagged); one with a distinct value on
    (nearly) every row is put in ``ignore`` as a likely identifier. Clip ranges are this table's
    observed min and max (flagged: they reveal this bank's extremes and bound the DP noise).
    ``exclude``: columns to ignore (e.g. the column that names the bank).
    """
    if label not in cells:
        raise DataError(f"label column {label!r} not found in {source}",
                        hint=f"pass --label with one of: {', '.join(cells)}")
    review: list[str] = []
    yvals = [c.strip() for c in cells[label] if not _is_missing(c)]  # type: ignore[union-attr]
    distinct = sorted(set(yvals))
    if len(distinct) < 2:
        raise DataError(f"the label {label!r} is constant ({len(distinct)} distinct value)")
    numeric_label = all(_number(v, None) is not None for v in distinct)
    if task is None:
        task = "classification" if len(distinct) == 2 else (
            "regression" if numeric_label else "")
        if not task:
            raise DataError(f"the label {label!r} has {len(distinct)} non-numeric values",
                            hint="only a binary or a numeric label is supported")
    classes: list[str] | None = None
    if task == "classification":
        if len(distinct) != 2:
            raise DataError(f"classification needs a binary label; {label!r} has "
                            f"{len(distinct)} values")
        classes = sorted(distinct, key=lambda v: (float(v), v)) if numeric_label else distinct
        review.append(f"label {label!r}: class 1 is {classes[1]!r}; swap label_classes if the "
                      "event of interest (e.g. default) is the other value")
    features: list[Feature] = []
    ignore: list[str] = []
    n = len(cells[label])
    for name, col in cells.items():
        if name == label:
            continue
        if name in exclude:
            ignore.append(name)
            continue
        vals = [c.strip() for c in col if not _is_missing(c)]  # type: ignore[union-attr]
        has_missing = len(vals) < n
        missing: Missing = "impute" if has_missing else "reject"
        kind, unit = _kind_of(vals)
        if not vals:
            ignore.append(name)
            review.append(f"{name}: every cell is missing; ignored")
            continue
        if kind == "numeric":
            nums = np.array([_parse_number(v, unit) for v in vals], dtype=np.float64)
            if len(vals) >= 20 and np.unique(nums).size == len(vals) and \
                    bool(np.all(nums == np.round(nums))):
                ignore.append(name)
                review.append(f"{name}: a distinct integer on every row looks like an "
                              "identifier; ignored")
                continue
            lo, hi = float(nums.min()), float(nums.max())
            if lo == hi:
                hi = lo + 1.0
            transform: Transform = "none"
            if lo >= 0 and hi > 1000:
                transform = "log1p"
            elif hi - lo > 1000 and lo < 0:
                transform = "signed_log1p"
            features.append(Feature(name=name, kind="numeric", unit=unit, clip=(lo, hi),
                                    transform=transform, missing=missing))
            review.append(f"{name}: clip [{lo:g}, {hi:g}] is this table's min and max; widen it "
                          "to the values any bank may hold")
            continue
        if kind == "boolean":
            features.append(Feature(name=name, kind="boolean", missing=missing))
            continue
        counts = Counter(vals)
        if len(counts) >= 0.9 * len(vals) and len(counts) > max_vocabulary:
            ignore.append(name)
            review.append(f"{name}: {len(counts)} distinct values in {len(vals)} rows looks like "
                          "an identifier; ignored")
            continue
        ranked = sorted(counts, key=lambda v: (-counts[v], v))
        voc = sorted(ranked[:max_vocabulary])
        if len(counts) > max_vocabulary:
            review.append(f"{name}: high cardinality ({len(counts)} values); the draft keeps the "
                          f"{max_vocabulary} most frequent, the rest go to {OTHER!r}")
        voc = [v for v in voc if v != OTHER]
        review.append(f"{name}: vocabulary of {len(voc)} values drafted from {source}; review it")
        features.append(Feature(name=name, kind="categorical", vocabulary=voc, missing=missing))
    if not features:
        raise DataError(f"{source} has no feature columns besides the label")
    return DataSchema(label=label, task=task,  # type: ignore[arg-type]
                      label_classes=classes, min_category_count=min_category_count,
                      features=features, ignore=ignore, review=review)


@dataclass(frozen=True)
class TableCheck:
    """What a table would lose under a schema (``securefl data check``)."""

    rows: int
    label_missing: int
    encoded: Encoded
    undeclared: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        e = self.encoded
        return {"rows": self.rows, "label_missing": self.label_missing, "inputs": len(e.names),
                "missing": e.missing, "unknown_categories": e.unknown,
                "rare_categories_folded": e.folded, "out_of_range_clipped": e.clipped,
                "undeclared_columns": list(self.undeclared)}

    def lines(self) -> list[str]:
        e = self.encoded
        out = [f"{self.rows} rows, {len(e.names)} inputs; nothing is dropped"
               + (f" except {self.label_missing} rows without a label" if self.label_missing
                  else "")]
        for col, k in e.missing.items():
            out.append(f"{col}: {k} missing cells (imputed with the federation's "
                       "mean/mode, plus a missing indicator)")
        for what, table in (("unknown categories -> other", e.unknown),
                            ("rare categories -> other", e.folded)):
            for col, counts in table.items():
                items = list(counts.items())
                shown = ", ".join(f"{v[:40]!r} x{k}" for v, k in items[:MAX_QUOTED])
                more = f" and {len(items) - MAX_QUOTED} more" if len(items) > MAX_QUOTED else ""
                out.append(f"{col}: {what}: {shown}{more}")
        for col, k in e.clipped.items():
            out.append(f"{col}: {k} values outside the clip range (clipped)")
        if self.undeclared:
            out.append(f"not used (not in the schema): {', '.join(self.undeclared)}")
        return out


def check_table(cells: Mapping[str, Sequence[str | None]], schema: DataSchema) -> TableCheck:
    """Encode the whole table as one bank would and report what it loses (no training). A table
    that violates the schema raises :class:`SchemaViolationError`."""
    y, keep = label_values(cells, schema)
    enc = encode(cells, schema, keep)
    declared = {schema.label, *schema.ignore, *(f.name for f in schema.features)}
    return TableCheck(rows=len(y), label_missing=len(cells[schema.label]) - len(y), encoded=enc,
                      undeclared=tuple(c for c in cells if c not in declared))


def label_values(table: Mapping[str, Sequence[str | None]], schema: DataSchema,
                 ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """(label values, the rows that have one): classes coded 0/1 by ``label_classes``; a row
    without a label cannot be trained on or scored and is left out (and counted by the caller)."""
    if schema.label not in table:
        raise SchemaViolationError(f"the table lacks the label column {schema.label!r}",
                                   columns={schema.label: []})
    cells = table[schema.label]
    keep = np.array([i for i, c in enumerate(cells) if not _is_missing(c)], dtype=np.int64)
    vals = [str(cells[int(i)]).strip() for i in keep]
    if schema.task == "classification":
        classes = list(schema.label_classes or [])
        bad = sorted({v for v in vals if v not in classes})
        if bad:
            raise SchemaViolationError(
                f"label {schema.label!r} has values outside label_classes {classes}: "
                f"{_quote(bad)}", columns={schema.label: bad[:MAX_QUOTED]})
        return np.array([float(classes.index(v)) for v in vals]), keep
    nums = [_number(v, None) for v in vals]
    bad = [v for v, x in zip(vals, nums, strict=True) if x is None]
    if bad:
        raise SchemaViolationError(f"label {schema.label!r} is not numeric: {_quote(bad)}",
                                   columns={schema.label: bad[:MAX_QUOTED]})
    return np.array(nums, dtype=np.float64), keep
