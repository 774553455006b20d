"""Raw tables: the embedded credit dataset and a user's CSV or Parquet file, as float64 matrices.

A :class:`RawTable` holds every usable column as float64 (booleans become 0/1; a binary string label
and a non-numeric ``split_by`` column become integer codes, with the code -> string mapping kept).
Missing values: rows with a missing label, feature or split value are dropped and counted; if more
than :data:`MAX_DROP_FRACTION` of the rows would be dropped, loading raises :class:`DataError`
instead (see docs/data.md, "Missing values").
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from securefl.errors import DataError, IntegrityError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "EMBEDDED_NAME",
    "EMBEDDED_SHA256",
    "MAX_DROP_FRACTION",
    "RawTable",
    "load_embedded",
    "load_table",
]

log = logging.getLogger(__name__)

EMBEDDED_NAME = "taiwan_default_credit"
#: sha256 of the gzip file shipped in securefl/data/resources (shared/data/README.md).
EMBEDDED_SHA256 = "342d140fd4f45c0bfdc044360374d172d52b72f28732545a7c1a8dbd9d450f22"
EMBEDDED_ROWS = 30_000
EMBEDDED_COLUMNS = (
    "ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE",
    "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6",
    "BILL_AMT1", "BILL_AMT2", "BILL_AMT3", "BILL_AMT4", "BILL_AMT5", "BILL_AMT6",
    "PAY_AMT1", "PAY_AMT2", "PAY_AMT3", "PAY_AMT4", "PAY_AMT5", "PAY_AMT6", "default",
)  # fmt: skip

#: more dropped rows than this fraction (missing values) is an error, not a silent drop.
MAX_DROP_FRACTION = 0.05

_MISSING = frozenset({"", "na", "nan", "null", "none", "n/a", "?"})
_TRUE = frozenset({"true", "t", "yes"})
_FALSE = frozenset({"false", "f", "no"})


@dataclass(frozen=True, eq=False)
class RawTable:
    """A loaded table: ``values[:, j]`` is column ``columns[j]`` as float64, one row per record.

    ``label`` names the label column. ``label_classes`` is set when the label was a two-valued
    string column: code ``i`` means ``label_classes[i]``. ``categories`` maps a non-numeric split
    column to its code -> value table; such a column is a split key only, never a feature.
    ``dropped_rows`` counts rows removed for missing values.
    """

    columns: tuple[str, ...]
    values: NDArray[np.float64]
    label: str
    source: str
    label_classes: tuple[str, ...] | None = None
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dropped_rows: int = 0

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> NDArray[np.float64]:
        """The float64 values of column ``name`` (a view)."""
        try:
            j = self.columns.index(name)
        except ValueError:
            raise DataError(f"no column {name!r} in {self.source}",
                            hint=f"columns are: {', '.join(self.columns)}") from None
        return self.values[:, j]

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Every column except the label and non-numeric split keys."""
        return tuple(c for c in self.columns if c != self.label and c not in self.categories)


# --- the embedded dataset ------------------------------------------------------------------------
def _embedded_bytes(path: str | Path | None) -> bytes:
    if path is not None:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None
    ref = resources.files("securefl.data").joinpath("resources", f"{EMBEDDED_NAME}.csv.gz")
    return ref.read_bytes()


def open_embedded() -> io.BytesIO:
    """The embedded table's gzip-compressed CSV bytes, checksum-verified (IntegrityError on a
    mismatch), as a binary file object: ``pandas.read_csv(open_embedded(), compression="gzip")``.
    Its columns are ``ID``, the 23 features and the label ``default``."""
    blob = _embedded_bytes(None)
    if hashlib.sha256(blob).hexdigest() != EMBEDDED_SHA256:
        raise IntegrityError("embedded dataset checksum mismatch",
                             hint="reinstall securefl; the packaged data file was altered")
    return io.BytesIO(blob)


def load_embedded(path: str | Path | None = None, *, label: str = "default") -> RawTable:
    """Load the embedded UCI "Default of Credit Card Clients" table (30,000 rows, ``ID`` dropped).

    With another ``label`` than ``default`` (e.g. the regression example ``LIMIT_BAL``) the
    ``default`` column is dropped too: it is next month's outcome, not an input. Verifies the
    sha256 of the gzip file against :data:`EMBEDDED_SHA256` before parsing and raises
    :class:`IntegrityError` on mismatch. ``path`` overrides the packaged file (used by tests).
    """
    blob = _embedded_bytes(path)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != EMBEDDED_SHA256:
        raise IntegrityError(
            f"embedded dataset checksum mismatch: sha256 {digest[:16]}..., expected "
            f"{EMBEDDED_SHA256[:16]}...",
            hint="reinstall securefl; the packaged data file was altered or corrupted")
    text = gzip.decompress(blob).decode("ascii")
    header = text.split("\n", 1)[0].strip().split(",")
    if tuple(header) != EMBEDDED_COLUMNS:  # unreachable with a matching checksum; kept as a guard
        raise IntegrityError("embedded dataset has an unexpected header")
    values = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64)
    if values.shape != (EMBEDDED_ROWS, len(EMBEDDED_COLUMNS)):
        raise IntegrityError(f"embedded dataset has shape {values.shape}")
    if label not in EMBEDDED_COLUMNS or label == "ID":
        raise DataError(f"no label column {label!r} in the embedded dataset",
                        hint="use --label default (classification) or --label LIMIT_BAL "
                             "(regression example)")
    dropped = {"ID"} if label == "default" else {"ID", "default"}
    keep = [j for j, c in enumerate(EMBEDDED_COLUMNS) if c not in dropped]
    return RawTable(columns=tuple(EMBEDDED_COLUMNS[j] for j in keep),
                    values=np.ascontiguousarray(values[:, keep]), label=label,
                    source=f"embedded:{EMBEDDED_NAME}")


# --- user files ----------------------------------------------------------------------------------
def _parse_strings(strings: list[str | None]) -> NDArray[np.float64] | None:
    """Parse one column of text cells to float64 (missing -> NaN, true/false -> 1/0).

    Returns None when some non-missing cell is neither a number nor a boolean.
    """
    cells = np.array([("" if s is None else s) for s in strings], dtype=str)
    lower = np.char.lower(np.char.strip(cells))
    missing = np.isin(lower, list(_MISSING))
    is_true = np.isin(lower, list(_TRUE))
    is_false = np.isin(lower, list(_FALSE))
    numeric = ~(missing | is_true | is_false)
    out = np.full(cells.shape[0], np.nan, dtype=np.float64)
    out[is_true] = 1.0
    out[is_false] = 0.0
    if is_true.any() or is_false.any():
        if numeric.any():  # mixing booleans and numbers: not a boolean column
            return None
        return out
    try:
        out[numeric] = lower[numeric].astype(np.float64)
    except ValueError:
        return None
    return out


def _no_duplicates(names: list[str], path: Path) -> None:
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"duplicate column names in {path}: {', '.join(dup)}")


def read_csv_cells(path: Path) -> dict[str, list[str | None]]:
    """Every column of a CSV file as its text cells (header names stripped)."""
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path} is empty") from None
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    rows = [r for r in rows if r]  # blank lines
    header = [h.strip() for h in header]
    for lineno, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise DataError(f"{path}: row {lineno} has {len(r)} fields, the header has "
                            f"{len(header)}", hint="fix the CSV (quoting, separators)")
    _no_duplicates(header, path)
    return {name: [r[j] for r in rows] for j, name in enumerate(header)}


def _parsed(cells: dict[str, list[str | None]]) -> dict[str, NDArray[np.float64] | list[str | None]]:
    out: dict[str, NDArray[np.float64] | list[str | None]] = {}
    for name, col in cells.items():
        parsed = _parse_strings(col)
        out[name] = parsed if parsed is not None else col
    return out


def _read_csv(path: Path) -> dict[str, NDArray[np.float64] | list[str | None]]:
    return _parsed(read_csv_cells(path))


def _parquet_table(path: Path) -> Any:
    try:
        import pyarrow as pa  # lazy: optional dependency
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow, which is not installed",
                        hint="pip install 'securefl[parquet]' (or pip install pyarrow), "
                             "or convert the file to CSV") from None
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None


def _cell_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def read_parquet_cells(path: Path) -> dict[str, list[str | None]]:
    """Every column of a Parquet file as text cells (integral floats without ".0")."""
    table = _parquet_table(path)
    names = list(table.column_names)
    _no_duplicates(names, path)
    return {name: [_cell_text(v) for v in table.column(name).to_pylist()] for name in names}


def _read_parquet(path: Path) -> dict[str, NDArray[np.float64] | list[str | None]]:
    table = _parquet_table(path)
    import pyarrow as pa  # importable: _parquet_table checked it

    out: dict[str, NDArray[np.float64] | list[str | None]] = {}
    for name in table.column_names:
        col = table.column(name)
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
                or pa.types.is_decimal(t):
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            out[name] = np.asarray(arr, dtype=np.float64)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            cells: list[str | None] = col.to_pylist()
            parsed = _parse_strings(cells)
            out[name] = parsed if parsed is not None else cells
        else:
            out[name] = [str(v) if v is not None else None for v in col.to_pylist()]
    return out


def _codes(cells: list[str | None]) -> tuple[NDArray[np.float64], tuple[str, ...]]:
    """Integer codes (as float64, NaN for missing) by sorted distinct value."""
    present = [c for c in cells if c is not None and c.strip().lower() not in _MISSING]
    classes = tuple(sorted({c.strip() for c in present}))
    index = {c: float(i) for i, c in enumerate(classes)}
    codes = np.array([index.get(c.strip(), np.nan) if c is not None else np.nan for c in cells],
                     dtype=np.float64)
    return codes, classes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_format(p: Path) -> Literal["csv", "parquet"]:
    """The format of a user's data file by its name; DataError if it is missing or unknown."""
    if not p.is_file():
        raise DataError(f"data file not found: {p}", hint="check the --data path")
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(f"unknown data format: {p.name}",
                    hint="use a .csv, .csv.gz, .parquet or .pq file")


def load_table(path: str | Path, *, label: str, split_by: str | None = None) -> RawTable:
    """Load a user's CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) file.

    Every column except ``label`` and ``split_by`` must be numeric or boolean. The label may also be
    a string column with exactly two values (coded 0/1 in sorted order, kept in ``label_classes``);
    ``split_by`` may be any column (a non-numeric one becomes a split key only, never a feature).
    Rows with a missing value in any used column are dropped and counted; more than
    :data:`MAX_DROP_FRACTION` of the rows dropped raises :class:`DataError`.
    """
    p = Path(path)
    raw = _read_csv(p) if data_format(p) == "csv" else _read_parquet(p)
    source = f"{p} sha256:{file_sha256(p)}"
    names = list(raw)
    _no_duplicates(names, p)
    if label not in raw:
        raise DataError(f"label column {label!r} not found in {p}",
                        hint=f"pass --label with one of: {', '.join(names)}")
    if split_by is not None and split_by not in raw:
        raise DataError(f"split column {split_by!r} not found in {p}",
                        hint=f"pass --split-by with one of: {', '.join(names)}")

    label_classes: tuple[str, ...] | None = None
    categories: dict[str, tuple[str, ...]] = {}
    columns: dict[str, NDArray[np.float64]] = {}
    bad: list[str] = []
    for col, data in raw.items():
        if isinstance(data, np.ndarray):
            columns[col] = data
            continue
        codes, classes = _codes(data)
        if col == label:
            if len(classes) != 2:
                raise DataError(
                    f"label column {label!r} is non-numeric with {len(classes)} distinct values",
                    hint="only a binary string label (two values) or a numeric label is "
                         "supported; encode the label as numbers first")
            label_classes = classes
            columns[col] = codes
        elif col == split_by:
            categories[col] = classes
            columns[col] = codes
        else:
            bad.append(col)
    if bad:
        raise DataError(f"non-numeric columns in {p}: {', '.join(bad)}",
                        hint="encode them as numbers first (e.g. one-hot) or remove them; "
                             "booleans (true/false) are accepted as 0/1")

    col_names = tuple(columns)
    n = len(columns[label])
    if n == 0:
        raise DataError(f"{p} has no data rows")
    values = np.column_stack([columns[c] for c in col_names])
    values[~np.isfinite(values)] = np.nan  # +-inf counts as missing
    bad_rows = np.isnan(values).any(axis=1)
    dropped = int(bad_rows.sum())
    if dropped:
        label_missing = int(np.isnan(columns[label]).sum())
        msg = (f"{p}: {dropped} of {n} rows have missing values ({label_missing} in the label "
               f"column)")
        if dropped > MAX_DROP_FRACTION * n:
            per_col = {c: int(np.isnan(values[:, j]).sum()) for j, c in enumerate(col_names)}
            worst = ", ".join(f"{c} ({k})" for c, k in sorted(per_col.items(),
                              key=lambda kv: -kv[1]) if k)
            raise DataError(
                f"{msg}, more than {MAX_DROP_FRACTION:.0%} would be dropped; missing per "
                f"column: {worst}",
                hint="impute or remove the missing values, or drop the worst columns")
        log.warning("%s; dropping those rows", msg)
        values = values[~bad_rows]
    for col in col_names:
        if col != label and col not in categories and col.lower() == "id":
            j = col_names.index(col)
            if np.unique(values[:, j]).size == values.shape[0]:
                log.warning("column %r looks like a row identifier and is used as a feature; "
                            "remove it from the file if it is one", col)
    return RawTable(columns=col_names, values=np.ascontiguousarray(values), label=label,
                    source=source, label_classes=label_classes, categories=categories,
                    dropped_rows=dropped)
