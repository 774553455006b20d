"""Local training of one bank's model on its own rows (plain, non-private; DP-SGD is in securefl.dp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "LocalTrainSpec",
    "local_train",
    "loss_function",
    "make_optimizer",
    "predict",
]

LOSSES = {"classification": ("bce",), "regression": ("mse", "huber")}
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class LocalTrainSpec:
    """How a bank trains in one round."""

    task: str = "classification"
    loss: str = "bce"
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    #: FedProx proximal term mu/2 * ||w - w_global||^2 (0 = plain FedAvg local objective)
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in LOSSES:
            raise ConfigError(f"task must be one of {sorted(LOSSES)}")
        if self.loss not in LOSSES[self.task]:
            raise ConfigError(f"loss {self.loss!r} does not fit task {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError("lr must be a positive finite number")
        if self.prox_mu < 0:
            raise ConfigError("prox_mu must be >= 0")


def loss_function(task: str, loss: str) -> torch.nn.Module:
    import torch

    if task == "classification":
        return torch.nn.BCEWithLogitsLoss()
    if loss == "huber":
        return torch.nn.HuberLoss(delta=1.0)
    return torch.nn.MSELoss()


def make_optimizer(name: str, params: object, lr: float) -> torch.optim.Optimizer:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)  # type: ignore[arg-type]
    return torch.optim.Adam(params, lr=lr)  # type: ignore[arg-type]


def local_train(
    model: torch.nn.Module,
    X: NDArray[np.float32],
    y: NDArray[np.float32],
    spec: LocalTrainSpec,
    *,
    seed: int,
    loss_fn: torch.nn.Module | None = None,
) -> int:
    """Train ``model`` in place for ``spec.epochs`` epochs; returns the number of optimizer steps.
    ``loss_fn`` (any torch loss module) replaces the spec's built-in loss."""
    import torch

    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).reshape(-1, 1)
    gen = torch.Generator().manual_seed(seed)
    if loss_fn is None:
        loss_fn = loss_function(spec.task, spec.loss)
    opt = make_optimizer(spec.optimizer, model.parameters(), spec.lr)
    anchor = [p.detach().clone() for p in model.parameters()] if spec.prox_mu > 0 else None
    model.train()
    steps = 0
    n = Xt.shape[0]
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = order[start : start + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            out, yb = model(Xt[idx]), yt[idx]
            loss = loss_fn(out.reshape(yb.shape) if out.numel() == yb.numel() else out, yb)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                strict=True))
                loss = loss + 0.5 * spec.prox_mu * prox
            loss.backward()
            opt.step()
            steps += 1
    return steps


def predict(model: torch.nn.Module, X: NDArray[np.float32], task: str) -> NDArray[np.float64]:
    """Probabilities of class 1 (classification) or standardised predictions (regression)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))).reshape(-1)
        if task == "classification":
            out = torch.sigmoid(out)
    result: NDArray[np.float64] = out.double().numpy()
    return result
