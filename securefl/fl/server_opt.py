"""Server optimizers applied to the averaged client update (pseudo-gradient).

FedAvg (McMahan et al., AISTATS 2017): w <- w + eta * mean_update.
FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2):
m <- b1 m + (1-b1) D;  v <- b2 v + (1-b2) D^2;  w <- w + eta * m / (sqrt(v) + tau).
FedProx (Li et al., MLSys 2020) changes the clients' local objective (a proximal term, see
securefl.fl.train) and uses FedAvg on the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer"]

SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedprox")


@dataclass
class ServerOptimizer:
    kind: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: NDArray[np.float64] | None = field(default=None, repr=False)
    v: NDArray[np.float64] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ConfigError(f"server optimizer must be one of {SERVER_OPTIMIZERS}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError("server lr must be a positive finite number")

    def step(self, weights: NDArray[np.float64], mean_update: NDArray[np.float64]
             ) -> NDArray[np.float64]:
        if self.kind in ("fedavg", "fedprox"):
            return weights + self.lr * mean_update
        if self.m is None or self.v is None:
            self.m = np.zeros_like(weights)
            self.v = np.zeros_like(weights)
        self.m = self.beta1 * self.m + (1 - self.beta1) * mean_update
        self.v = self.beta2 * self.v + (1 - self.beta2) * mean_update**2
        return weights + self.lr * self.m / (np.sqrt(self.v) + self.tau)

    def state(self) -> dict[str, NDArray[np.float64]]:
        """Tensors to checkpoint so a resumed run continues identically."""
        if self.m is None or self.v is None:
            return {}
        return {"server_opt.m": self.m, "server_opt.v": self.v}

    def load_state(self, tensors: dict[str, NDArray[np.float64]]) -> None:
        if self.kind != "fedadam":
            return
        if ("server_opt.m" in tensors) != ("server_opt.v" in tensors):
            raise IntegrityError("checkpoint holds only half of the FedAdam state")
        if "server_opt.m" in tensors:
            self.m = np.asarray(tensors["server_opt.m"], dtype=np.float64)
            self.v = np.asarray(tensors["server_opt.v"], dtype=np.float64)
