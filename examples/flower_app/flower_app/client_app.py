"""ClientApp: a plain Flower NumPyClient; securefl enters through one mod."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from flower_app.task import FraudNet, evaluate, get_weights, load_rows, set_weights, train
from securefl.flower import securefl_mod


class BankClient(NumPyClient):
    def __init__(self, X: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.X, self.y, self.seed = X, y, seed
        self.net = FraudNet(X.shape[1])

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.net, parameters)
        train(self.net, self.X, self.y, epochs=int(config["local-epochs"]), seed=self.seed)
        return get_weights(self.net), len(self.X), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.net, parameters)
        loss, acc = evaluate(self.net, self.X, self.y)
        return loss, len(self.X), {"accuracy": acc}


def client_fn(context: Context) -> Any:
    X, y = load_rows(str(context.node_config["data-path"]))
    return BankClient(X, y, seed=int(context.node_config.get("seed", 0))).to_client()


app = ClientApp(client_fn=client_fn, mods=[securefl_mod])
