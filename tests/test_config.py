"""Configuration: defaults, TOML files, CLI overrides, typed errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefl.config import RunConfig, from_mapping, resolve
from securefl.errors import ConfigError


def test_defaults_are_valid() -> None:
    c = RunConfig()
    assert c.banks == 3 and c.model == "mlp" and c.hidden == (64, 32)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text("rounds = 3\nroundz = 4\n")
    with pytest.raises(ConfigError, match="roundz"):
        resolve(f, {})


@pytest.mark.parametrize(
    ("key", "value"),
    [("rounds", "3"), ("rounds", 2.5), ("dp", 1), ("lr", "fast"), ("hidden", [64, "x"]),
     ("alpha", float("nan")), ("banks", True)],
)
def test_bad_types(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        from_mapping({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [("rounds", 0), ("banks", 1), ("lr", 0.0), ("dropout", 1.0), ("threshold", 9),
     ("aggregation", "rot13"), ("partition", "random"), ("delta", 1.0), ("clip_norm", -1.0),
     ("test_fraction", 0.95), ("neighbours", 3)],
)
def test_out_of_range(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        from_mapping({key: value})


def test_cli_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('rounds = 3\nmodel = "logreg"\nhidden = [128, 64]\n')
    c = resolve(f, {"rounds": 7, "model": None})
    assert (c.rounds, c.model, c.hidden) == (7, "logreg", (128, 64))


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(f, {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        resolve(tmp_path / "nope.toml", {})


def test_colluders_bound_and_ckks_refusal() -> None:
    with pytest.raises(ConfigError, match="colluders"):
        from_mapping({"colluders": 2})  # 3 banks: a sum would hold fewer than 2 honest inputs
    with pytest.raises(ConfigError, match="ckks protects updates only while every bank"):
        from_mapping({"colluders": 1, "aggregation": "ckks"})
    assert from_mapping({"colluders": 1}).colluders == 1


def test_secagg_threshold_below_the_bound_is_refused_before_the_run(tmp_path: Path) -> None:
    """3 banks, 1 colluder: 2T > n + c needs T = 3; T = 2 is refused, naming the bound, before
    anything is trained or written."""
    from securefl.runtime import run

    cfg = from_mapping({"colluders": 1, "threshold": 2, "rounds": 1, "out": str(tmp_path / "r")})
    with pytest.raises(ConfigError, match=r"2T > n \+ c"):
        run(cfg)
    assert not (tmp_path / "r" / "ledger.jsonl").exists()
