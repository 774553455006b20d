"""The federated view of a dataset: per-bank train/test splits plus a global test split.

:func:`build_federated_data` is what the training loop calls. Features come out raw-encoded (NOT
standardised): the loop sums ``bank.moments()`` through the secure aggregator and calls
``data.standardized(Standardizer.from_summed_moments(total))``. A regression target is already
standardised here (statistics of the training targets only) and ``target_scaler.inverse`` maps
predictions back to label units.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from securefl.data.encoding import (
    Task,
    binary_labels,
    credit_bounds,
    credit_groups,
    encode_features,
    infer_task,
)
from securefl.data.partition import (
    NaturalRule,
    dirichlet_partition,
    iid_partition,
    natural_groups,
    quantile_strata,
    stratified_split,
)
from securefl.data.standardize import Standardizer, TargetScaler, moments, target_values
from securefl.data.table import RawTable, load_embedded, load_table
from securefl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.data.schema import DataSchema, Imputation

__all__ = [
    "EMBEDDED_RULES",
    "MIN_CLASS_ROWS",
    "BankData",
    "FederatedData",
    "build_federated_data",
]

log = logging.getLogger(__name__)

Partition = Literal["natural", "iid", "dirichlet"]

#: every bank must hold at least this many rows of each class (classification), before its
#: local test split.
MIN_CLASS_ROWS = 5
#: quantile bins of a regression target, used as strata for splits and Dirichlet skew.
TARGET_BINS = 5

#: natural splits of the embedded table by number of banks (shared/data/README.md).
EMBEDDED_RULES: dict[tuple[str, int], NaturalRule] = {
    ("EDUCATION", 3): NaturalRule(
        column="EDUCATION", names=("graduate", "university", "highschool-other"),
        groups=((1.0,), (2.0,), (3.0, 0.0, 4.0, 5.0, 6.0))),
    ("AGE", 4): NaturalRule(column="AGE", names=("under30", "30-39", "40-49", "50plus"),
                            edges=(30.0, 40.0, 50.0)),
}
_EMBEDDED_DEFAULT_SPLIT = {3: "EDUCATION", 4: "AGE"}  # any other bank count: LIMIT_BAL quantiles


@dataclass(frozen=True, eq=False)
class BankData:
    """One bank's rows: float32 features (raw-encoded) and labels, train and local test."""

    name: str
    X_train: NDArray[np.float32]
    y_train: NDArray[np.float32]
    X_test: NDArray[np.float32]
    y_test: NDArray[np.float32]

    def moments(self) -> NDArray[np.float64]:
        """[count, column sums, column sums of squares] of X_train (float64, length 1 + 2d)."""
        return moments(self.X_train)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Banks, the global test split, and what the columns mean.

    ``label_classes[i]`` names class i (classification). ``partition`` describes the split rule.
    """

    banks: tuple[BankData, ...]
    X_test: NDArray[np.float32]
    y_test: NDArray[np.float32]
    feature_names: tuple[str, ...]
    task: Task
    label: str
    source: str
    target_scaler: TargetScaler | None = None
    label_classes: tuple[str, ...] | None = None
    partition: str = ""
    #: missing cells to fill from the released sums (a schema with missing = "impute")
    imputations: tuple[Imputation, ...] = ()
    #: each input's public range (rows [low, high]), and the groups of inputs of which a row has at
    #: most one non-zero (a one-hot block, or a single input): the DP sensitivity of the moments
    bounds: NDArray[np.float64] | None = None
    groups: tuple[tuple[int, ...], ...] = ()
    #: the data schema's digest (None: no schema, e.g. the embedded table)
    schema_digest: str | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def summed_moments(self) -> NDArray[np.float64]:
        """PLAINTEXT sum of the banks' moments: for single-process simulation and tests only. A
        deployment sums ``bank.moments()`` through the secure aggregator instead."""
        total: NDArray[np.float64] = np.sum([b.moments() for b in self.banks], axis=0)
        return total

    def standardized(self, standardizer: Standardizer) -> FederatedData:
        """A copy with every feature matrix (banks and global test) standardised."""
        banks = tuple(dataclasses.replace(b, X_train=standardizer.transform(b.X_train),
                                          X_test=standardizer.transform(b.X_test))
                      for b in self.banks)
        return dataclasses.replace(self, banks=banks, X_test=standardizer.transform(self.X_test))

    def prepared(self, total: NDArray[np.float64]) -> FederatedData:
        """A copy with missing cells filled from the released moment sum ``total`` (the
        federation's mean or mode, docs/data.md) and every feature matrix standardised."""
        if not self.imputations:
            return self.standardized(Standardizer.from_summed_moments(total))
        from securefl.data.schema import apply_fills, impute_from_moments

        filled, fills = impute_from_moments(total, self.imputations)

        def fill(X: NDArray[np.float32]) -> NDArray[np.float32]:
            return apply_fills(X, self.imputations, fills).astype(np.float32)

        banks = tuple(dataclasses.replace(b, X_train=fill(b.X_train), X_test=fill(b.X_test))
                      for b in self.banks)
        done = dataclasses.replace(self, banks=banks, X_test=fill(self.X_test), imputations=())
        return done.standardized(Standardizer.from_summed_moments(filled))


def _check_args(banks: int, partition: str, alpha: float, test_fraction: float,
                local_test_fraction: float) -> None:
    if banks < 1:
        raise ConfigError(f"banks must be >= 1, got {banks}")
    if partition not in ("natural", "iid", "dirichlet"):
        raise ConfigError(f"unknown partition {partition!r}", hint="use natural, iid or dirichlet")
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0 <= local_test_fraction < 1:
        raise ConfigError(f"local_test_fraction must be in [0, 1), got {local_test_fraction}")


def _natural(table: RawTable, rows: NDArray[np.int64], banks: int, split_by: str | None,
             embedded: bool) -> tuple[list[NDArray[np.int64]], tuple[str, ...], str]:
    if split_by is None:
        if not embedded:
            raise DataError("the natural partition needs a column to split by",
                            hint="pass --split-by COLUMN, or use --partition iid or dirichlet")
        split_by = _EMBEDDED_DEFAULT_SPLIT.get(banks, "LIMIT_BAL")
    rule = EMBEDDED_RULES.get((split_by, banks)) if embedded else None
    cats = table.categories.get(split_by)
    assign, names = natural_groups(table.column(split_by), banks, column=split_by,
                                   categories=cats, rule=rule)
    parts = [rows[assign[rows] == b] for b in range(banks)]
    return parts, names, f"natural by {split_by}"


def build_federated_data(*, data: str | Path | None = None, label: str | None = None,
                         task: str | None = None, split_by: str | None = None, banks: int = 3,
                         partition: Partition = "natural", alpha: float = 0.5,
                         test_fraction: float = 0.2, local_test_fraction: float = 0.1,
                         seed: int = 0, schema: DataSchema | None = None) -> FederatedData:
    """Load, encode and split a dataset into ``banks`` banks plus a global test split.

    ``data`` None means the embedded credit table (label ``default``; ``LIMIT_BAL`` is the
    regression example, modelled as standardised log1p). Order: global stratified test split
    (``test_fraction``), the rest partitioned into banks (``partition``), then each bank's local
    stratified test split (``local_test_fraction``). Deterministic for a given ``seed``.

    With a data ``schema`` (securefl.data.schema) a file is encoded by it: categorical strings,
    numeric strings, missing values imputed later (:meth:`FederatedData.prepared`), rare
    categories folded into "other" at each bank, never a dropped row (but one without a label).
    """
    _check_args(banks, partition, alpha, test_fraction, local_test_fraction)
    embedded = data is None
    encoder: _SchemaEncoder | None = None
    if schema is not None:
        if data is None:
            raise DataError("a data schema is for a data file", hint="pass --data FILE")
        if label is not None and label != schema.label:
            raise DataError(f"--label {label!r} is not the schema's label {schema.label!r}")
        encoder = _SchemaEncoder(data, schema, split_by)
        table, source, task = encoder.table, encoder.source, schema.task
    elif embedded:
        table = load_embedded(label=label or "default")
        source = table.source
    else:
        if label is None:
            raise DataError("a data file needs --label COLUMN", hint="name the label column")
        table = load_table(str(data), label=label, split_by=split_by)
        source = table.source
    if table.n_rows < banks:
        raise DataError(f"{table.n_rows} rows cannot be split into {banks} banks",
                        hint="lower --banks or use a larger dataset")

    y_raw = table.column(table.label)
    kind = infer_task(y_raw, task)
    label_classes: tuple[str, ...] | None = None
    if kind == "classification":
        y, (lo, hi) = binary_labels(y_raw)
        label_classes = table.label_classes or (f"{lo:g}", f"{hi:g}")
        if (lo, hi) != (0.0, 1.0):
            log.info("label %r: %s -> class 0, %s -> class 1", table.label, *label_classes)
        strata = y.astype(np.int64)
    else:
        y = y_raw.copy()
        strata = quantile_strata(y, TARGET_BINS)
    if encoder is None:
        X, names = encode_features(table, embedded=embedded)

    rng = np.random.default_rng(seed)
    rest, test = stratified_split(strata, test_fraction, rng)
    if partition == "natural":
        parts, bank_names, desc = _natural(table, rest, banks, split_by, embedded)
    elif partition == "iid":
        parts = [rest[p] for p in iid_partition(strata[rest], banks, rng)]
        bank_names, desc = tuple(f"bank{b}" for b in range(banks)), "iid (stratified)"
    else:
        parts = [rest[p] for p in dirichlet_partition(strata[rest], banks, alpha, rng)]
        bank_names, desc = tuple(f"bank{b}" for b in range(banks)), f"dirichlet alpha={alpha:g}"
    if split_by is not None and partition != "natural":
        log.warning("--split-by %s is ignored by the %s partition", split_by, partition)

    splits: list[tuple[NDArray[np.int64], NDArray[np.int64]]] = []
    for name, rows in zip(bank_names, parts, strict=True):
        if rows.size == 0:
            raise DataError(f"{name} gets no rows", hint="lower --banks or change the split")
        if kind == "classification":
            per_class = np.bincount(strata[rows], minlength=2)
            if per_class.min() < MIN_CLASS_ROWS:
                raise DataError(
                    f"{name} has {per_class[0]} rows of class 0 and {per_class[1]} of class 1; "
                    f"every bank needs at least {MIN_CLASS_ROWS} of each",
                    hint="use fewer banks, another --split-by, --partition iid, or a larger "
                         "--alpha")
        tr, te = stratified_split(strata[rows], local_test_fraction, rng)
        splits.append((rows[tr], rows[te]))
    extra: dict[str, object] = {}
    if encoder is not None:
        X, names, extra = encoder.encode([np.concatenate(s) for s in splits], test, bank_names)
    elif embedded:
        extra = {"bounds": credit_bounds(names), "groups": credit_groups(names)}

    scaler: TargetScaler | None = None
    if kind == "regression":
        # identity: squared error in label units, and a linear, stable inverse for reporting
        # (a log target made exp() of noisy DP predictions dominate RMSE and R^2)
        tname: Literal["identity", "signed_log1p"] = "identity"
        f = target_values(y, tname)
        total = np.sum([moments(f[tr][:, None]) for tr, _ in splits], axis=0)
        scaler = TargetScaler.from_summed_moments(total, tname)
        y = scaler.transform(y).astype(np.float64)

    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    bank_data = tuple(BankData(name=n, X_train=X32[tr], y_train=y32[tr], X_test=X32[te],
                               y_test=y32[te])
                      for n, (tr, te) in zip(bank_names, splits, strict=True))
    return FederatedData(banks=bank_data, X_test=X32[test], y_test=y32[test], feature_names=names,
                         task=kind, label=table.label, source=source, target_scaler=scaler,
                         label_classes=label_classes, partition=desc,
                         **extra)  # type: ignore[arg-type]


class _SchemaEncoder:
    """A data file read as text cells and encoded by a data schema, one holder (bank, or the
    global test split) at a time, so that rare categories fold per bank."""

    def __init__(self, data: str | Path, schema: DataSchema, split_by: str | None) -> None:
        from securefl.data.schema import label_values, read_cells
        from securefl.data.table import _codes, _parse_strings

        cells, self.source = read_cells(data)
        y, keep = label_values(cells, schema)
        n = len(cells[schema.label])
        if keep.size < n:
            log.warning("%s: %d of %d rows have no label and are left out (no other row is "
                        "dropped: missing features are imputed)", data, n - keep.size, n)
        self.cells = {k: [v[int(i)] for i in keep] for k, v in cells.items()}
        self.schema = schema
        columns: dict[str, NDArray[np.float64]] = {schema.label: y}
        categories: dict[str, tuple[str, ...]] = {}
        if split_by is not None:
            if split_by not in self.cells:
                raise DataError(f"split column {split_by!r} not found in {data}",
                                hint=f"pass --split-by with one of: {', '.join(self.cells)}")
            col = self.cells[split_by]
            parsed = _parse_strings(col)
            if parsed is None:
                parsed, categories[split_by] = _codes(col)
            if np.isnan(parsed).any():
                raise DataError(f"split column {split_by!r} has missing values",
                                hint="every row needs a bank: fill the split column")
            columns[split_by] = parsed
        self.table = RawTable(columns=tuple(columns), label=schema.label, source=self.source,
                              values=np.column_stack(list(columns.values())),
                              label_classes=tuple(schema.label_classes or ()) or None,
                              categories=categories)

    def encode(self, bank_rows: list[NDArray[np.int64]], test: NDArray[np.int64],
               bank_names: tuple[str, ...]) -> tuple[NDArray[np.float64], tuple[str, ...],
                                                     dict[str, object]]:
        from securefl.data.schema import encode, schema_digest

        X: NDArray[np.float64] | None = None
        out = None
        for name, rows in [*zip(bank_names, bank_rows, strict=True), ("global test", test)]:
            out = encode(self.cells, self.schema, rows)
            if X is None:
                X = np.zeros((self.table.n_rows, out.X.shape[1]))
            X[rows] = out.X
            for what, table in (("rare categories folded into 'other'", out.folded),
                                ("categories outside the vocabulary -> 'other'", out.unknown)):
                for col, counts in table.items():
                    log.info("%s: %s: %s: %d values", name, col, what, len(counts))
            for col, k in out.missing.items():
                log.info("%s: %s: %d missing cells imputed", name, col, k)
        if X is None or out is None:  # pragma: no cover - there is always a test split
            raise DataError("nothing to encode")
        return X, out.names, {"imputations": out.imputations, "bounds": out.bounds,
                              "groups": out.groups,
                              "schema_digest": schema_digest(self.schema)}
