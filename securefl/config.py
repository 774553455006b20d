"""Typed, validated run configuration: defaults < TOML file (``--config``) < CLI flags.

Unknown keys, wrong types and out-of-range values raise :class:`~securefl.errors.ConfigError` naming
the key. The resolved configuration is written to the run directory and hashed into every audit record.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from securefl.errors import ConfigError

AGGREGATIONS = ("secagg", "ckks", "plain")
PARTITIONS = ("natural", "iid", "dirichlet")
TASKS = ("auto", "classification", "regression")
#: per-bank record-level (DP-SGD) epsilon over the whole run when DP is on and none is given
DEFAULT_RECORD_EPSILON = 8.0
#: record-level noise multiplier of the round-0 statistics (standardisation, imputation) of a
#: --data table when DP is on and none is given
DEFAULT_STATS_NOISE = 4.0


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. Field docs are the CLI's help texts."""

    # data
    data: str | None = None  # CSV/Parquet path; None = the embedded Taiwan credit-default data
    label: str | None = None  # label column (embedded data: "default")
    task: str = "auto"  # classification | regression | auto (inferred from the label)
    split_by: str | None = None  # column for the natural split (embedded: EDUCATION)
    schema: str | None = None  # data schema file for --data (None: drafted in memory, and said so)
    banks: int = 3
    partition: str = "natural"  # natural | iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration (smaller = more label skew)
    test_fraction: float = 0.2  # global test split for reporting
    local_test_fraction: float = 0.1  # each bank's own held-out split
    # model and local training
    model: str = "mlp"  # mlp | logreg (custom: your own torch model, securefl.train only)
    hidden: tuple[int, ...] = (64, 32)
    loss: str = "auto"  # bce (classification); mse | huber (regression); auto picks bce / mse
    local_epochs: int = 1
    batch_size: int = 256
    lr: float = 3e-3
    optimizer: str = "adam"  # local optimizer: sgd | adam
    # federation
    rounds: int = 20
    clients_per_round: float = 1.0  # fraction of banks sampled each round
    server_optimizer: str = "fedavg"  # fedavg | fedadam | fedprox
    server_lr: float = 1.0
    prox_mu: float = 0.01  # FedProx only
    aggregation: str = "secagg"  # secagg | ckks | plain (INSECURE, for comparison)
    threshold: int | None = None  # survivors needed (default: the bound 2T > n + c, T >= c + 2)
    neighbours: int | None = None  # SecAgg+ expected degree k (default: derived from the bounds)
    colluders: int = 0  # banks assumed to collude with the server (SecAgg thresholds follow)
    dropout: float = 0.0  # simulated probability that a bank drops in a round
    # differential privacy
    dp: bool = True  # --no-dp for comparison only
    clip_norm: float = 1.0  # client-level L2 clip of each bank's update
    noise_multiplier: float = 0.02  # client-level z: the sum carries noise std z * clip_norm
    record_epsilon: float | None = None  # per-bank DP-SGD target epsilon (default 8.0)
    record_noise_multiplier: float | None = None
    record_clip: float = 10.0  # DP-SGD per-example gradient clip (1.0 biased the default model)
    dp_backend: str = "auto"  # DP-SGD: auto | ghost (exact, fast, MLPs) | opacus (PrivacyEngine)
    secure_mode: bool = False  # DP-SGD noise and sampling from the OS CSPRNG (not reproducible)
    delta: float = 1e-5
    #: record-level noise multiplier of the round-0 release (the moments that standardise and
    #: impute); None: 4.0 with DP on (a --data table or the embedded one), 0 without DP
    stats_noise_multiplier: float | None = None
    target_epsilon: float | None = None  # budget (client level); refuse/stop when exceeded
    # run
    seed: int = 0
    baselines: bool = False  # also train centralized and bank-alone baselines
    out: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def replace(self, **changes: Any) -> RunConfig:
        return from_mapping({**self.to_dict(), **changes}, source="override")

    def loss_for(self, task: str) -> str:
        """The local training loss: ``loss``, or with "auto" bce for classification, mse for
        regression (every driver and a deployment's training plan resolve it here)."""
        if self.loss != "auto":
            return self.loss
        return "bce" if task == "classification" else "mse"


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _validate(c: RunConfig) -> None:
    _need(c.task in TASKS, "task", f"must be one of {', '.join(TASKS)}")
    _need(2 <= c.banks <= 1000, "banks", "must be between 2 and 1000")
    _need(c.partition in PARTITIONS, "partition", f"must be one of {', '.join(PARTITIONS)}")
    _need(0 < c.alpha < math.inf, "alpha", "must be a positive number")
    _need(0 < c.test_fraction < 0.9, "test_fraction", "must be in (0, 0.9)")
    _need(0 <= c.local_test_fraction < 0.9, "local_test_fraction", "must be in [0, 0.9)")
    _need(c.model in ("mlp", "logreg", "custom"), "model",
          "must be mlp or logreg (custom: a torch model given to securefl.train)")
    _need(len(c.hidden) >= 1 and all(1 <= h <= 4096 for h in c.hidden), "hidden",
          "must be a list of 1..4096 layer widths")
    _need(c.loss in ("auto", "bce", "mse", "huber"), "loss", "must be auto, bce, mse or huber")
    _need(1 <= c.local_epochs <= 1000, "local_epochs", "must be between 1 and 1000")
    _need(1 <= c.batch_size <= 1_000_000, "batch_size", "must be between 1 and 1e6")
    _need(0 < c.lr <= 10, "lr", "must be in (0, 10]")
    _need(c.optimizer in ("sgd", "adam"), "optimizer", "must be sgd or adam")
    _need(1 <= c.rounds <= 100_000, "rounds", "must be between 1 and 100000")
    _need(0 < c.clients_per_round <= 1, "clients_per_round", "must be in (0, 1]")
    _need(c.server_optimizer in ("fedavg", "fedadam", "fedprox"), "server_optimizer",
          "must be fedavg, fedadam or fedprox")
    _need(0 < c.server_lr <= 100, "server_lr", "must be in (0, 100]")
    _need(0 <= c.prox_mu <= 100, "prox_mu", "must be in [0, 100]")
    _need(c.aggregation in AGGREGATIONS, "aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
    _need(c.threshold is None or 1 <= c.threshold <= c.banks, "threshold",
          f"must be between 1 and banks ({c.banks})")
    _need(c.neighbours is None or 1 <= c.neighbours < c.banks, "neighbours",
          f"must be between 1 and banks-1 ({c.banks - 1})")
    _need(0 <= c.dropout < 1, "dropout", "must be in [0, 1)")
    _need(0 <= c.colluders <= max(0, c.banks - 2), "colluders",
          f"must be between 0 and banks - 2 ({c.banks - 2}): every sum needs two honest inputs")
    _need(c.colluders == 0 or c.aggregation != "ckks", "colluders",
          "must be 0 with aggregation ckks: ckks protects updates only while every bank encrypts "
          "honestly (a malformed ciphertext can extract the key holder's key); use secagg")
    _need(0 < c.clip_norm < math.inf, "clip_norm", "must be a positive number")
    _need(0 <= c.noise_multiplier < math.inf, "noise_multiplier", "must be >= 0")
    _need(c.record_epsilon is None or 0 < c.record_epsilon < math.inf, "record_epsilon",
          "must be a positive number")
    _need(c.stats_noise_multiplier is None or c.stats_noise_multiplier == 0
          or 0.5 <= c.stats_noise_multiplier < math.inf,  # protocol.round0.MIN_NOISED_Z (S7b-1)
          "stats_noise_multiplier", "must be 0 (no noise) or a number >= 0.5 (a DP release)")
    _need(c.schema is None or c.data is not None, "schema", "a data schema needs --data FILE")
    _need(c.record_noise_multiplier is None or 0 < c.record_noise_multiplier < math.inf,
          "record_noise_multiplier", "must be a positive number")
    _need(0 < c.record_clip < math.inf, "record_clip", "must be a positive number")
    _need(0 < c.delta < 1, "delta", "must be in (0, 1)")
    _need(c.dp_backend in ("auto", "ghost", "opacus"), "dp_backend",
          "must be auto, ghost or opacus")
    _need(c.target_epsilon is None or 0 < c.target_epsilon < math.inf, "target_epsilon",
          "must be a positive number")
    _need(0 <= c.seed < 2**63, "seed", "must be a non-negative integer")


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Strict type check (no silent str->int conversions); ints are accepted for floats."""
    t = str(typ)
    optional = "None" in t
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be empty")
    if "tuple[int" in t:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{name}: must be a list of integers")
        return tuple(value)
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
        return value
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{name}: must be finite")
        return float(value)
    if t.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type")  # pragma: no cover


FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in fields(RunConfig)}


def from_mapping(values: dict[str, Any], *, source: str = "config") -> RunConfig:
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {source}: {', '.join(unknown)}",
            hint=f"valid keys: {', '.join(sorted(FIELD_TYPES))}",
        )
    coerced = {k: _coerce(k, FIELD_TYPES[k], v) for k, v in values.items()}
    return RunConfig(**coerced)


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(1_000_001)  # bounded: a larger file is refused, never read whole
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    if len(raw) > 1_000_000:
        raise ConfigError(f"config file {p} is larger than 1 MB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    return data


def resolve(config_file: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults < file < overrides (``None`` overrides mean 'not given')."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_toml(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(values, source=str(config_file) if config_file else "arguments")


__all__ = ["AGGREGATIONS", "DEFAULT_RECORD_EPSILON", "DEFAULT_STATS_NOISE", "FIELD_TYPES",
           "RunConfig", "from_mapping", "load_toml", "resolve"]
