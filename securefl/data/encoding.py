"""Feature encoding and task inference.

The embedded credit table uses a FIXED schema, so every bank encodes identically without looking at
any other bank's data: one-hot over the full documented category sets of ``PAY_0``, ``PAY_2``..
``PAY_6`` (codes -2..8), ``SEX`` (1, 2), ``EDUCATION`` (0..6) and ``MARRIAGE`` (0..3); signed
``log1p`` for the bill and payment amounts (bills can be negative); ``log1p`` for ``LIMIT_BAL``;
``AGE`` as is. That gives 93 inputs with all 23 features (79 one-hot + 14 numeric). A user's table
is used as is (numeric columns, booleans as 0/1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np

from securefl.errors import DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.data.table import RawTable

__all__ = [
    "CREDIT_AMOUNTS",
    "CREDIT_CATEGORIES",
    "Task",
    "binary_labels",
    "credit_bounds",
    "credit_groups",
    "embedded_inputs",
    "encode_credit",
    "encode_features",
    "infer_task",
    "signed_log1p",
]

Task = Literal["classification", "regression"]

_PAY_CODES = tuple(range(-2, 9))
#: full category set of each categorical column of the embedded table (UCI schema + observed codes).
CREDIT_CATEGORIES: Mapping[str, tuple[int, ...]] = {
    "SEX": (1, 2),
    "EDUCATION": tuple(range(0, 7)),
    "MARRIAGE": tuple(range(0, 4)),
    **{c: _PAY_CODES for c in ("PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6")},
}
_SIGNED_LOG = frozenset([f"{p}{i}" for p in ("BILL_AMT", "PAY_AMT") for i in range(1, 7)])
_LOG = frozenset({"LIMIT_BAL"})
#: amount columns of the embedded table: as a regression target they are modelled on a log scale.
CREDIT_AMOUNTS = _SIGNED_LOG | _LOG

#: a label with 3..AMBIGUOUS_MAX_VALUES distinct integer values could be classes or a count.
AMBIGUOUS_MAX_VALUES = 10


def signed_log1p(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """sign(x) * log1p(|x|): a log scale that keeps the sign of negative amounts."""
    return np.sign(x) * np.log1p(np.abs(x))


def encode_credit(table: RawTable, columns: tuple[str, ...]) -> tuple[NDArray[np.float64],
                                                                      tuple[str, ...]]:
    """Encode the named columns of the embedded table with the fixed schema (module docstring)."""
    blocks: list[NDArray[np.float64]] = []
    names: list[str] = []
    for col in columns:
        x = table.column(col)
        if col in CREDIT_CATEGORIES:
            cats = CREDIT_CATEGORIES[col]
            unknown = np.setdiff1d(np.unique(x), np.asarray(cats, dtype=np.float64))
            if unknown.size:
                raise DataError(f"column {col} has codes {unknown.tolist()} outside the schema "
                                f"{list(cats)}")
            blocks.append((x[:, None] == np.asarray(cats, dtype=np.float64)[None, :])
                          .astype(np.float64))
            names.extend(f"{col}={c}" for c in cats)
        elif col in _SIGNED_LOG:
            blocks.append(signed_log1p(x)[:, None])
            names.append(f"slog1p({col})")
        elif col in _LOG:
            if (x < 0).any():
                raise DataError(f"column {col} has negative values")
            blocks.append(np.log1p(x)[:, None])
            names.append(f"log1p({col})")
        else:
            blocks.append(x[:, None].astype(np.float64))
            names.append(col)
    return np.hstack(blocks), tuple(names)


#: public ranges of the embedded table's numeric inputs (the DP sensitivity of the released
#: moments): ages 18..100; log amounts of at most 10^7 NT$ (log1p(1e7) = 16.1)
_CREDIT_RANGE = {"AGE": (18.0, 100.0), "log1p(LIMIT_BAL)": (0.0, 17.0)}
_CREDIT_LOG_RANGE = (-17.0, 17.0)


def credit_bounds(names: tuple[str, ...]) -> NDArray[np.float64]:
    """The public range [low, high] of each embedded-table input (one-hot inputs: [0, 1])."""
    out = [(0.0, 1.0) if "=" in n else _CREDIT_RANGE.get(n, _CREDIT_LOG_RANGE) for n in names]
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def credit_groups(names: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Inputs of which a row has at most one non-zero: each one-hot block, each other input."""
    groups: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        groups.setdefault(n.split("=", 1)[0] if "=" in n else f"#{j}", []).append(j)
    return tuple(tuple(g) for g in groups.values())


def embedded_inputs(label: str = "default") -> tuple[NDArray[np.float64],
                                                     tuple[tuple[int, ...], ...]]:
    """The embedded table's encoded inputs (label ``label`` left out) as round 0's noised
    statistics need them: each input's public range and the groups of inputs of which a row has
    at most one non-zero (:func:`credit_bounds`, :func:`credit_groups`)."""
    from securefl.data.table import load_embedded

    _, names = encode_features(load_embedded(label=label), embedded=True)
    return credit_bounds(names), credit_groups(names)


def encode_features(table: RawTable, *, embedded: bool) -> tuple[NDArray[np.float64],
                                                                  tuple[str, ...]]:
    """(feature matrix, feature names) for every feature column of ``table`` (label excluded)."""
    cols = table.feature_columns
    if not cols:
        raise DataError(f"{table.source} has no feature columns besides the label")
    if embedded:
        return encode_credit(table, cols)
    idx = [table.columns.index(c) for c in cols]
    return np.array(table.values[:, idx], dtype=np.float64), cols


def infer_task(y: NDArray[np.float64], task: str | None = None) -> Task:
    """``"classification"`` for a two-valued label, ``"regression"`` for a numeric one.

    Two distinct values -> classification. More than two -> regression, except 3 to
    :data:`AMBIGUOUS_MAX_VALUES` distinct integers (classes or a count?), which raise
    :class:`DataError` asking for an explicit task. An explicit ``task`` is checked instead:
    classification needs exactly two values (only binary classification is supported).
    """
    values = np.unique(y[~np.isnan(y)])
    k = int(values.size)
    if k < 2:
        raise DataError(f"the label is constant ({k} distinct value)",
                        hint="choose another --label column; a model needs two classes or a "
                             "varying target")
    if task is not None:
        if task == "classification":
            if k != 2:
                raise DataError(f"classification needs a binary label; this one has {k} values",
                                hint="binarize the label (e.g. y > threshold) or use "
                                     "--task regression")
            return "classification"
        if task == "regression":
            return "regression"
        raise DataError(f"unknown task {task!r}", hint="use classification or regression")
    if k == 2:
        return "classification"
    if k <= AMBIGUOUS_MAX_VALUES and bool(np.all(values == np.round(values))):
        raise DataError(f"cannot tell the task: the label has {k} distinct integer values "
                        "(classes or a quantity?); pass --task",
                        hint="pass --task regression (or binarize it for --task classification)")
    return "regression"


def binary_labels(y: NDArray[np.float64]) -> tuple[NDArray[np.float64], tuple[float, float]]:
    """Map a two-valued label to {0, 1}: the smaller value -> 0, the larger -> 1.

    Returns (labels, (value coded 0, value coded 1)); {0, 1} labels come back unchanged.
    """
    values = np.unique(y)
    if values.size != 2:
        raise DataError(f"expected a binary label, got {values.size} distinct values")
    lo, hi = float(values[0]), float(values[1])
    return (y == hi).astype(np.float64), (lo, hi)
