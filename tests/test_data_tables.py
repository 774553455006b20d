"""A user's CSV and Parquet files: round trips, the missing-value policy and every typed error."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa  # the test extra installs it; securefl itself imports it lazily
import pyarrow.parquet as pq
import pytest

from securefl.data import build_federated_data, load_table
from securefl.data.table import MAX_DROP_FRACTION
from securefl.errors import DataError


def _frame(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.integers(0, 5, size=n).astype(np.float64)
    flag = rng.integers(0, 2, size=n).astype(bool)
    y = (x1 + 0.3 * rng.normal(size=n) > 0.5).astype(np.float64)
    region = np.array(["north", "south", "east", "west"])[rng.integers(0, 4, size=n)]
    return {"x1": x1, "x2": x2, "flag": flag, "y": y, "region": region}


def _numeric(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in cols.items() if k != "region"}


def _write_csv(path: Path, cols: dict[str, np.ndarray], *, gz: bool = False) -> Path:
    names = list(cols)
    lines = [",".join(names)]
    for i in range(len(cols[names[0]])):
        cells = []
        for c in names:
            v = cols[c][i]
            cells.append(("true" if v else "false") if isinstance(v, np.bool_) else
                         (repr(float(v)) if isinstance(v, np.floating) else str(v)))
        lines.append(",".join(cells))
    text = "\n".join(lines) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_csv_round_trip(tmp_path: Path) -> None:
    cols = _frame()
    p = _write_csv(tmp_path / "d.csv", cols)
    t = load_table(p, label="y", split_by="region")
    assert t.n_rows == 400 and t.dropped_rows == 0
    np.testing.assert_array_equal(t.column("x1"), cols["x1"])  # repr(float) round-trips exactly
    np.testing.assert_array_equal(t.column("flag"), cols["flag"].astype(np.float64))
    assert t.categories["region"] == ("east", "north", "south", "west")
    codes = t.column("region").astype(int)
    assert [t.categories["region"][c] for c in codes] == cols["region"].tolist()
    assert t.feature_columns == ("x1", "x2", "flag")  # string split key is not a feature
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert t.source == f"{p} sha256:{digest}"


def test_csv_gz_round_trip(tmp_path: Path) -> None:
    cols = _frame()
    t = load_table(_write_csv(tmp_path / "d.csv.gz", cols, gz=True), label="y", split_by="region")
    np.testing.assert_array_equal(t.column("x2"), cols["x2"])


def test_parquet_round_trip(tmp_path: Path) -> None:
    cols = _frame()
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), p)
    t = load_table(p, label="y", split_by="region")
    np.testing.assert_array_equal(t.column("x1"), cols["x1"])
    np.testing.assert_array_equal(t.column("flag"), cols["flag"].astype(np.float64))
    assert t.categories["region"] == ("east", "north", "south", "west")


def test_parquet_nulls_are_missing(tmp_path: Path) -> None:
    n = 100
    x = pa.array([None if i == 3 else float(i) for i in range(n)])
    y = pa.array([i % 2 for i in range(n)], type=pa.int64())
    p = tmp_path / "d.pq"
    pq.write_table(pa.table({"x": x, "y": y}), p)
    t = load_table(p, label="y")
    assert t.n_rows == 99 and t.dropped_rows == 1
    assert 3.0 not in t.column("x")


def test_build_from_user_csv_natural_and_dirichlet(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _frame(n=2000))
    fd = build_federated_data(data=str(p), label="y", split_by="region", banks=4)
    assert [b.name for b in fd.banks] == ["bank0-region-east", "bank1-region-north",
                                          "bank2-region-south", "bank3-region-west"]
    assert fd.feature_names == ("x1", "x2", "flag") and fd.task == "classification"
    assert fd.source.startswith(str(p))
    total = fd.y_test.size + sum(b.y_train.size + b.y_test.size for b in fd.banks)
    assert total == 2000
    fd2 = build_federated_data(data=str(p), label="y", split_by="region", partition="dirichlet",
                               banks=3, alpha=1.0)
    assert fd2.feature_names == ("x1", "x2", "flag")
    assert len(fd2.banks) == 3


def test_numeric_split_column_stays_a_feature_and_splits_by_quantiles(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _numeric(_frame(n=2000)))
    fd = build_federated_data(data=str(p), label="y", split_by="x1", banks=2, seed=1)
    assert "x1" in fd.feature_names
    j = fd.feature_names.index("x1")
    # the two banks are the lower and upper halves of x1
    assert fd.banks[0].X_train[:, j].max() <= fd.banks[1].X_train[:, j].min()


def test_string_label_with_two_values_is_mapped(tmp_path: Path) -> None:
    cols = _numeric(_frame())
    cols["y"] = np.where(cols["y"] > 0, "good", "bad")
    p = _write_csv(tmp_path / "d.csv", cols)
    fd = build_federated_data(data=str(p), label="y", partition="iid", banks=2)
    assert fd.label_classes == ("bad", "good")  # sorted order: bad -> 0, good -> 1
    t = load_table(p, label="y")
    np.testing.assert_array_equal(t.column("y"), (cols["y"] == "good").astype(np.float64))


def test_two_valued_numeric_label_is_mapped_to_0_1(tmp_path: Path) -> None:
    cols = _numeric(_frame())
    cols["y"] = np.where(cols["y"] > 0, 2.0, 1.0)
    p = _write_csv(tmp_path / "d.csv", cols)
    fd = build_federated_data(data=str(p), label="y", partition="iid", banks=2)
    assert fd.label_classes == ("1", "2")
    y = np.concatenate([b.y_train for b in fd.banks] + [b.y_test for b in fd.banks] + [fd.y_test])
    assert set(np.unique(y)) == {0.0, 1.0}
    assert y.sum() == (cols["y"] == 2.0).sum()


def test_user_regression(tmp_path: Path) -> None:
    cols = _numeric(_frame())
    cols["y"] = cols["x1"] * 3 + 100.0
    p = _write_csv(tmp_path / "d.csv", cols)
    fd = build_federated_data(data=str(p), label="y", partition="iid", banks=2)
    assert fd.task == "regression" and fd.target_scaler is not None
    assert fd.target_scaler.transform_name == "identity"
    assert fd.target_scaler.mean == pytest.approx(100.0, abs=0.5)


# --- typed errors ------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "nope.csv", label="y")


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "d.xlsx"
    p.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown data format"):
        load_table(p, label="y")


def test_corrupt_parquet(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        load_table(p, label="y")


def test_missing_label_column(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _frame())
    with pytest.raises(DataError, match="label column 'target' not found") as ei:
        load_table(p, label="target")
    assert "x1" in ei.value.hint


def test_missing_split_column(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _frame())
    with pytest.raises(DataError, match="split column"):
        load_table(p, label="y", split_by="nope")


def test_constant_label(tmp_path: Path) -> None:
    cols = _frame()
    cols["y"] = np.ones_like(cols["y"])
    p = _write_csv(tmp_path / "d.csv", cols)
    with pytest.raises(DataError, match="constant"):
        build_federated_data(data=str(p), label="y", partition="iid")


def test_non_numeric_columns_are_listed(tmp_path: Path) -> None:
    cols = _frame()
    cols["name"] = np.array([f"n{i}" for i in range(400)])
    p = _write_csv(tmp_path / "d.csv", cols)
    with pytest.raises(DataError, match="non-numeric columns") as ei:
        load_table(p, label="y")  # region is not the split key here
    assert "region" in ei.value.message and "name" in ei.value.message
    assert "encode" in ei.value.hint and "x1" not in ei.value.message


def test_string_label_with_many_values(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _frame())
    with pytest.raises(DataError, match="non-numeric with 4"):
        load_table(p, label="region")


def test_ragged_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("a,b,y\n1,2,0\n3,1\n")
    with pytest.raises(DataError, match="row 3"):
        load_table(p, label="y")


def test_empty_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_table(p, label="y")
    p.write_text("a,y\n")
    with pytest.raises(DataError, match="no data rows"):
        load_table(p, label="y")


def test_few_missing_values_are_dropped_and_logged(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cols = {k: v.astype(object) for k, v in _frame(n=200).items()}
    cols["x1"][5] = ""
    cols["x2"][7] = "NaN"
    cols["y"][9] = "NA"
    p = tmp_path / "d.csv"
    lines = ["x1,x2,y"] + [f"{cols['x1'][i]},{cols['x2'][i]},{cols['y'][i]}" for i in range(200)]
    p.write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="securefl.data.table"):
        t = load_table(p, label="y")
    assert t.n_rows == 197 and t.dropped_rows == 3
    assert "3 of 200 rows" in caplog.text and "1 in the label" in caplog.text


def test_too_many_missing_values_raise(tmp_path: Path) -> None:
    n = 200
    k = int(MAX_DROP_FRACTION * n) + 1  # one row over the limit
    rows = ["x,y"] + [("" if i < k else str(i)) + f",{i % 2}" for i in range(n)]
    p = tmp_path / "d.csv"
    p.write_text("\n".join(rows))
    with pytest.raises(DataError, match=f"{k} of {n} rows") as ei:
        load_table(p, label="y")
    assert "x (11)" in ei.value.message
    rows = ["x,y"] + [("" if i < k - 1 else str(i)) + f",{i % 2}" for i in range(n)]
    p.write_text("\n".join(rows))
    assert load_table(p, label="y").n_rows == n - (k - 1)  # exactly 5 %: dropped


def test_fewer_rows_than_banks(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("x,y\n1,0\n2,1\n")
    with pytest.raises(DataError, match="cannot be split into 3 banks"):
        build_federated_data(data=str(p), label="y", partition="iid", banks=3)


def test_too_few_of_a_class_per_bank(tmp_path: Path) -> None:
    n = 200
    rows = ["x,y"] + [f"{i},{1 if i < 12 else 0}" for i in range(n)]
    p = tmp_path / "d.csv"
    p.write_text("\n".join(rows))
    with pytest.raises(DataError, match="at least 5 of each") as ei:
        build_federated_data(data=str(p), label="y", partition="iid", banks=4)
    assert "fewer banks" in ei.value.hint


def test_user_data_needs_label_and_split_column(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _numeric(_frame()))
    with pytest.raises(DataError, match="--label"):
        build_federated_data(data=str(p))
    with pytest.raises(DataError, match="split by") as ei:
        build_federated_data(data=str(p), label="y", split_by=None, partition="natural")
    assert "--split-by" in ei.value.hint


def test_too_few_distinct_split_values(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "d.csv", _frame(n=1000))
    with pytest.raises(DataError, match="fewer than 5 banks"):
        build_federated_data(data=str(p), label="y", split_by="region", banks=5)


def test_missing_pyarrow_gives_install_hint(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [0, 1]}), p)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match="pyarrow") as ei:
        load_table(p, label="y")
    assert "pip install" in ei.value.hint
