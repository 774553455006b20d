"""The embedded credit table: checksum, contents (shared/data/README.md) and the fixed encoding."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from securefl.data.encoding import encode_credit, encode_features, signed_log1p
from securefl.data.table import load_embedded
from securefl.errors import DataError, IntegrityError

# shared/data/README.md, typed in independently of the package constant
README_SHA256 = "342d140fd4f45c0bfdc044360374d172d52b72f28732545a7c1a8dbd9d450f22"


@pytest.fixture(scope="module")
def table():  # type: ignore[no-untyped-def]
    return load_embedded()


def _packaged() -> bytes:
    ref = resources.files("securefl.data").joinpath("resources", "taiwan_default_credit.csv.gz")
    return ref.read_bytes()


def test_packaged_file_matches_readme_checksum() -> None:
    import hashlib

    assert hashlib.sha256(_packaged()).hexdigest() == README_SHA256


def test_tampered_copy_raises_integrity_error(tmp_path: Path) -> None:
    text = gzip.decompress(_packaged()).decode()
    # flip one label: still a valid CSV of the same shape, but not the published bytes
    lines = text.split("\n")
    lines[1] = lines[1][:-1] + ("0" if lines[1].endswith("1") else "1")
    bad = tmp_path / "tampered.csv.gz"
    bad.write_bytes(gzip.compress("\n".join(lines).encode(), mtime=0))
    with pytest.raises(IntegrityError):
        load_embedded(bad)


def test_truncated_copy_raises_integrity_error(tmp_path: Path) -> None:
    bad = tmp_path / "short.csv.gz"
    bad.write_bytes(_packaged()[:-10])
    with pytest.raises(IntegrityError):
        load_embedded(bad)


def test_untampered_copy_loads(tmp_path: Path) -> None:
    good = tmp_path / "copy.csv.gz"
    good.write_bytes(_packaged())
    assert load_embedded(good).n_rows == 30_000


def test_missing_override_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_embedded(tmp_path / "nope.csv.gz")


def test_rows_labels_and_columns(table) -> None:  # type: ignore[no-untyped-def]
    assert table.n_rows == 30_000
    assert "ID" not in table.columns
    assert len(table.columns) == 24  # 23 features + label
    y = table.column("default")
    assert int((y == 0).sum()) == 23_364
    assert int((y == 1).sum()) == 6_636
    assert table.source == "embedded:taiwan_default_credit"
    # first data row of the CSV: 1,20000,2,2,1,24,2,2,-1,-1,-2,-2,3913,...
    assert table.column("LIMIT_BAL")[0] == 20000
    assert table.column("BILL_AMT1")[0] == 3913


def test_unknown_label_is_data_error() -> None:
    with pytest.raises(DataError):
        load_embedded(label="ID")
    with pytest.raises(DataError):
        load_embedded(label="nope")


def test_other_label_drops_the_default_outcome() -> None:
    t = load_embedded(label="LIMIT_BAL")
    assert "default" not in t.columns
    assert "LIMIT_BAL" not in t.feature_columns


def test_encoding_width_and_names(table) -> None:  # type: ignore[no-untyped-def]
    X, names = encode_features(table, embedded=True)
    # 6 PAY_x x 11 codes (-2..8) + SEX 2 + EDUCATION 7 + MARRIAGE 4 = 79 one-hot,
    # + LIMIT_BAL, AGE, 6 BILL_AMT, 6 PAY_AMT = 14 numeric
    assert X.shape == (30_000, 93)
    assert len(names) == 93 and len(set(names)) == 93
    assert "PAY_5=1" in names and "EDUCATION=0" in names and "log1p(LIMIT_BAL)" in names
    onehot = [i for i, n in enumerate(names) if "=" in n]
    assert len(onehot) == 79
    # every row has exactly one 1 per categorical column: SEX, EDUCATION, MARRIAGE, 6 PAY_x
    np.testing.assert_array_equal(X[:, onehot].sum(axis=1), np.full(30_000, 9.0))
    # first row by hand: LIMIT_BAL 20000, AGE 24, PAY_0 = 2, SEX = 2, BILL_AMT1 3913
    row = dict(zip(names, X[0], strict=True))
    assert row["log1p(LIMIT_BAL)"] == pytest.approx(np.log(20001.0))
    assert row["AGE"] == 24
    assert row["PAY_0=2"] == 1 and row["PAY_0=0"] == 0
    assert row["SEX=2"] == 1 and row["SEX=1"] == 0
    assert row["slog1p(BILL_AMT1)"] == pytest.approx(np.log(3914.0))


def test_signed_log1p_hand_values() -> None:
    x = np.array([-(np.e - 1), 0.0, np.e**2 - 1])
    np.testing.assert_allclose(signed_log1p(x), [-1.0, 0.0, 2.0])


def test_encoding_is_row_local(table) -> None:  # type: ignore[no-untyped-def]
    # a bank encoding its own rows gets the same columns as the full encoding (fixed schema)
    X_all, _ = encode_credit(table, table.feature_columns)
    from securefl.data.table import RawTable

    sub = RawTable(columns=table.columns, values=table.values[table.column("EDUCATION") == 1],
                   label=table.label, source="x")
    X_sub, _ = encode_credit(sub, sub.feature_columns)
    np.testing.assert_array_equal(X_sub, X_all[table.column("EDUCATION") == 1])


def test_code_outside_schema_is_data_error(table) -> None:  # type: ignore[no-untyped-def]
    from securefl.data.table import RawTable

    vals = table.values[:10].copy()
    vals[0, table.columns.index("MARRIAGE")] = 9
    bad = RawTable(columns=table.columns, values=vals, label="default", source="x")
    with pytest.raises(DataError, match="MARRIAGE"):
        encode_credit(bad, bad.feature_columns)
