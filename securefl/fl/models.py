"""Models for tabular credit-risk and fraud tasks: logistic regression and an MLP.

Both end in one output unit: a logit for classification (trained with BCE-with-logits) or the
standardised target for regression (trained with MSE or Huber). torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from securefl.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_KINDS", "build_model"]

MODEL_KINDS = ("mlp", "logreg")


def build_model(kind: str, n_features: int, hidden: Sequence[int] = (64, 32)) -> torch.nn.Module:
    """A fresh model; parameters come from torch's default init under the caller's seed."""
    import torch

    if n_features < 1:
        raise ConfigError("a model needs at least one input feature")
    if kind == "logreg":
        return torch.nn.Sequential(torch.nn.Linear(n_features, 1))
    if kind == "mlp":
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError("hidden layer sizes must be positive integers")
        layers: list[torch.nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        return torch.nn.Sequential(*layers)
    raise ConfigError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
