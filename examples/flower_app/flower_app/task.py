"""The bank's own model and training: nothing securefl-specific here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class FraudNet(nn.Module):
    """The bank's own model: a small tabular network with a residual block."""

    def __init__(self, n_features: int, hidden: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h)).squeeze(-1)


def load_rows(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The bank's rows: a CSV with a header, numeric features, the 0/1 label last."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return data[:, :-1].astype(np.float32), data[:, -1].astype(np.float32)


def get_weights(net: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


def set_weights(net: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(net.state_dict().keys())
    net.load_state_dict({k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)})


def train(net: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, lr: float = 0.05,
          seed: int = 0) -> None:
    """Mini-batch SGD on BCE, shuffled by a seeded generator (deterministic on CPU)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(Xt), generator=g).split(32):
            opt.zero_grad()
            loss_fn(net(Xt[idx]), yt[idx]).backward()
            opt.step()


def evaluate(net: nn.Module, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(X))
        loss = float(nn.BCEWithLogitsLoss()(logits, torch.from_numpy(y)))
        acc = float(((logits > 0).float() == torch.from_numpy(y)).float().mean())
    return loss, acc
