"""The bank's side of a round, as a library: your own torch model, your own rows, and (optionally)
your own training loop.

A :class:`Bank` holds one institution's training rows and how it trains. Each round it receives the
global model and the round's public :class:`LocalPlan` and returns a :class:`LocalUpdate`: securefl
does what is protocol and privacy around the bank's training:

* **record-level DP-SGD** (Abadi et al., CCS 2016) with exact per-example clipping: ghost clipping
  for ``nn.Sequential`` MLPs, Opacus' ``PrivacyEngine`` for any other model Opacus supports
  (:mod:`securefl.dp.dpsgd`), and the ledger draft of exactly the mechanism that ran;
* the update (new weights minus the global weights), the **client-level L2 clip** and the public
  FedAvg weight.

The client-level noise share and the protection (SecAgg masking or CKKS encryption) come after this,
in the aggregation mode: an in-process driver (:mod:`securefl.runtime`, :func:`securefl.train`) or a
deployed bank's protocol machine (:mod:`securefl.deploy`).

A bank that trains with its **own loop** (``train_fn``) trains outside securefl's DP-SGD: with DP on
it must declare its record-level mechanism (:class:`DeclaredDpSgd`), which the ledger records as
declared, not verified; securefl's clip, noise share and secure aggregation still apply to its update.

torch is imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

    from securefl.dp.ledger import Draft

__all__ = ["Bank", "DeclaredDpSgd", "LocalPlan", "LocalUpdate", "TrainFn", "clip_update"]

#: ``train_fn(model, X, y, plan)``: train ``model`` in place on the bank's rows for one round
TrainFn = Callable[["torch.nn.Module", "torch.Tensor", "torch.Tensor", "LocalPlan"], None]

_TASKS = ("classification", "regression")


@dataclass(frozen=True)
class LocalPlan:
    """What one round asks of a bank; every field is public and part of the signed round plan."""

    round: int
    #: the client-level L2 bound of the update (before the FedAvg weight)
    clip_norm: float
    #: the bank's public FedAvg weight w = n_bank / max_j n_j, in (0, 1]
    weight: float
    epochs: int = 1
    batch_size: int = 256
    lr: float = 3e-3
    optimizer: str = "adam"
    #: record-level DP-SGD noise multiplier z; None: no record-level DP this round
    record_noise_multiplier: float | None = None
    #: DP-SGD per-example gradient clip (RunConfig's default; see README "Privacy defaults")
    record_clip: float = 10.0
    #: "auto" (ghost where the model allows it, Opacus otherwise), "ghost" or "opacus"
    dp_backend: str = "auto"
    #: DP-SGD sampling and noise from the OS CSPRNG; False: a seeded generator (reproducible
    #: simulation only)
    secure_randomness: bool = False
    #: a deployed bank: ghost DP-SGD always draws from the OS CSPRNG, and the Opacus backend is
    #: refused unless ``accept_prng_noise`` (its noise would come from torch's Mersenne Twister;
    #: securefl.dp.dpsgd.noise_source_for). The ledger records the noise source either way.
    deployed: bool = False
    accept_prng_noise: bool = False
    #: FedProx proximal term mu/2 ||w - w_global||^2 in the built-in local loop (0: FedAvg)
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ConfigError("round must be >= 0")
        if not (0 < self.clip_norm < math.inf):
            raise ConfigError("clip_norm must be a positive finite number")
        if not (0 < self.weight <= 1):
            raise ConfigError(f"weight must be in (0, 1], got {self.weight!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not (0 < self.lr < math.inf):
            raise ConfigError("lr must be a positive finite number")
        if self.record_noise_multiplier is not None and not (
                0 <= self.record_noise_multiplier < math.inf):
            raise ConfigError("record_noise_multiplier must be a finite number >= 0")


@dataclass(frozen=True)
class DeclaredDpSgd:
    """The record-level mechanism a bank's own training loop runs, as the bank declares it (the
    ledger records it as declared: securefl cannot verify a loop it does not run). Opacus' names:
    ``steps`` Poisson-sampled steps at ``sample_rate`` with noise multiplier ``noise_multiplier``
    and per-example clip ``max_grad_norm``."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (0 <= self.noise_multiplier < math.inf):
            raise ConfigError("declared noise_multiplier must be a finite number >= 0")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError("declared sample_rate must be in (0, 1]")
        if self.steps < 1:
            raise ConfigError("declared steps must be >= 1")
        if not (0 < self.max_grad_norm < math.inf):
            raise ConfigError("declared max_grad_norm must be a positive finite number")

    def draft(self, *, round: int, bank: str) -> Draft:
        from securefl.dp.dpsgd import DpSgdRun

        return DpSgdRun(steps=self.steps, sample_rate=self.sample_rate,
                        noise_multiplier=self.noise_multiplier,
                        max_grad_norm=self.max_grad_norm, backend="declared",
                        noise_source="declared").draft(round=round, bank=bank)


@dataclass(frozen=True)
class LocalUpdate:
    """What a bank hands to the aggregation mode: ``weight * clip(new - global)`` and the ledger
    drafts of the record-level mechanism it ran. Never logged or persisted: it is the secret the
    protocols protect."""

    vector: NDArray[np.float64]
    clipped: bool
    drafts: tuple[Draft, ...]

    def __repr__(self) -> str:  # the update itself is secret
        return (f"LocalUpdate(dim={self.vector.size}, clipped={self.clipped}, "
                f"drafts={len(self.drafts)})")


def clip_update(vec: NDArray[np.float64], bound: float) -> tuple[NDArray[np.float64], bool]:
    """``vec`` scaled to L2 norm ``bound`` when longer (DP-FedAvg's client clip, McMahan et al.,
    ICLR 2018); returns (vector, whether it was clipped)."""
    norm = float(np.linalg.norm(vec))
    if norm > bound:
        return vec * (bound / norm), True
    return vec, False


class Bank:
    """One institution's rows and how it trains (see the module docstring).

    ``X`` is a 2-D float array or tensor (rows x features), ``y`` the labels (one per row).
    ``loss`` is any torch loss module with a ``reduction`` attribute (DP-SGD sums per-example
    losses); by default ``BCEWithLogitsLoss`` for classification and ``MSELoss`` for regression.
    ``train_fn`` replaces securefl's local loop (then, with DP on, ``declared_dpsgd`` is required).
    """

    def __init__(self, name: str, X: Any, y: Any, *, task: str = "classification",
                 loss: torch.nn.Module | None = None, train_fn: TrainFn | None = None,
                 declared_dpsgd: DeclaredDpSgd | None = None) -> None:
        from securefl.federation import valid_name

        if not valid_name(name):
            raise ConfigError(f"bank name {name!r} is not valid",
                              hint="use letters, digits, '.', '_' or '-' (at most 64)")
        if task not in _TASKS:
            raise ConfigError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
        if declared_dpsgd is not None and train_fn is None:
            raise ConfigError("declared_dpsgd describes a bank's own training loop: give train_fn")
        self.name = name
        self.task = task
        self.X = _as_features(X, name)
        self.y = _as_labels(y, self.X.shape[0], name)
        self.loss = loss
        self.train_fn = train_fn
        self.declared_dpsgd = declared_dpsgd

    def __repr__(self) -> str:
        return (f"Bank({self.name!r}, rows={self.n_train}, features={self.n_features}, "
                f"task={self.task!r}, own_loop={self.train_fn is not None})")

    @classmethod
    def from_frame(cls, name: str, frame: Any, label: str, *,
                   features: list[str] | None = None, **kwargs: Any) -> Bank:
        """A bank from a pandas (or any ``to_numpy``-able) DataFrame: ``label`` is the label
        column, ``features`` the feature columns (default: every other column). Columns must be
        numeric already (DataError naming the first that is not)."""
        columns = [str(c) for c in getattr(frame, "columns", [])]
        if label not in columns:
            raise DataError(f"bank {name}: no label column {label!r}",
                            hint=f"columns: {', '.join(columns[:10])}")
        cols = features if features is not None else [c for c in columns if c != label]
        missing = [c for c in cols if c not in columns]
        if missing or not cols:
            raise DataError(f"bank {name}: feature columns {missing or cols} not in the frame")
        X = np.empty((len(frame), len(cols)), dtype=np.float32)
        for j, col in enumerate(cols):
            try:
                X[:, j] = np.asarray(frame[col].to_numpy(), dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise DataError(f"bank {name}: column {col!r} is not numeric",
                                hint="encode it as numbers first (e.g. one-hot)") from exc
        y = np.asarray(frame[label].to_numpy(), dtype=np.float32)
        return cls(name, X, y, **kwargs)

    @property
    def n_train(self) -> int:
        """Training rows (public metadata: the FedAvg weight and DP-SGD's schedule use it)."""
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def loss_fn(self) -> torch.nn.Module:
        """The loss this bank trains with."""
        if self.loss is not None:
            return self.loss
        from securefl.fl.train import loss_function

        return loss_function(self.task, "bce" if self.task == "classification" else "mse")

    def update(self, model: torch.nn.Module, global_weights: NDArray[np.float64],
               plan: LocalPlan, *, seed: int) -> LocalUpdate:
        """Train from ``global_weights`` (loaded into ``model``, which is left holding the trained
        weights) and return the clipped, weighted update. ``seed`` keys the local loop's
        shuffling, and DP-SGD's sampling and noise unless ``plan.secure_randomness``."""
        from securefl.fl.params import get_flat, set_flat

        set_flat(model, global_weights)
        model.train()
        drafts: tuple[Draft, ...] = ()
        if self.train_fn is not None:
            drafts = self._own_loop(model, plan)
        elif plan.record_noise_multiplier is not None:
            drafts = (self._dpsgd(model, plan, seed),)
        else:
            self._plain(model, plan, seed)
        new = get_flat(model)
        if new.shape != global_weights.shape or not np.all(np.isfinite(new)):
            raise DataError(f"bank {self.name}: training produced non-finite or reshaped weights")
        delta, clipped = clip_update(new - global_weights, plan.clip_norm)
        return LocalUpdate(vector=plan.weight * delta, clipped=clipped, drafts=drafts)

    # -- the three ways a bank trains ----------------------------------------------------------------
    def _dpsgd(self, model: torch.nn.Module, plan: LocalPlan, seed: int) -> Draft:
        import torch

        from securefl.dp.dpsgd import dp_train_epochs

        try:
            state, ran = dp_train_epochs(
                model, torch.from_numpy(self.X), torch.from_numpy(self.y),
                loss_fn=self.loss_fn(), epochs=plan.epochs, batch_size=plan.batch_size,
                lr=plan.lr, optimizer=plan.optimizer,
                noise_multiplier=plan.record_noise_multiplier, max_grad_norm=plan.record_clip,
                random_seed=seed, backend=plan.dp_backend,  # type: ignore[arg-type]
                secure_mode=plan.secure_randomness, deployed=plan.deployed,
                accept_prng_noise=plan.accept_prng_noise)
        except Exception as exc:
            from opacus.validators.errors import UnsupportedModuleError

            if not isinstance(exc, UnsupportedModuleError):
                raise
            raise ConfigError(f"bank {self.name}: Opacus cannot run DP-SGD on this model: {exc}",
                              hint="replace unsupported layers (e.g. BatchNorm -> GroupNorm; "
                                   "opacus.validators.ModuleValidator.fix)") from exc
        model.load_state_dict(state)
        return ran.draft(round=plan.round, bank=self.name)

    def _plain(self, model: torch.nn.Module, plan: LocalPlan, seed: int) -> None:
        from securefl.fl.train import LocalTrainSpec, local_train

        spec = LocalTrainSpec(task=self.task,
                              loss="bce" if self.task == "classification" else "mse",
                              epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr,
                              optimizer=plan.optimizer, prox_mu=plan.prox_mu)
        local_train(model, self.X, self.y, spec, seed=seed, loss_fn=self.loss)

    def _own_loop(self, model: torch.nn.Module, plan: LocalPlan) -> tuple[Draft, ...]:
        import torch

        if plan.record_noise_multiplier is not None and self.declared_dpsgd is None:
            raise ConfigError(
                f"bank {self.name} trains with its own loop while the round asks for "
                "record-level DP-SGD",
                hint="declare the loop's mechanism (declared_dpsgd=DeclaredDpSgd(...)), or let "
                     "securefl run DP-SGD (no train_fn)")
        if self.train_fn is None:  # pragma: no cover - guarded by the caller
            raise ConfigError("no train_fn")
        self.train_fn(model, torch.from_numpy(self.X), torch.from_numpy(self.y), plan)
        if plan.record_noise_multiplier is None or self.declared_dpsgd is None:
            return ()
        return (self.declared_dpsgd.draft(round=plan.round, bank=self.name),)


def _as_features(X: Any, name: str) -> NDArray[np.float32]:
    arr = np.ascontiguousarray(_numpy(X), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"bank {name}: features must be a non-empty 2-D array, got shape "
                        f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"bank {name}: features contain NaN or infinity",
                        hint="impute or drop missing values first")
    return arr


def _as_labels(y: Any, rows: int, name: str) -> NDArray[np.float32]:
    arr = np.ascontiguousarray(_numpy(y), dtype=np.float32).reshape(-1)
    if arr.shape[0] != rows:
        raise DataError(f"bank {name}: {arr.shape[0]} labels for {rows} rows")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"bank {name}: labels contain NaN or infinity")
    return arr


def _numpy(a: Any) -> Any:
    """numpy view of an array-like or a (CPU) torch tensor, without importing torch."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    return a
