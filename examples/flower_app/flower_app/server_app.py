"""ServerApp: Flower's FedAvg strategy; securefl runs each fit round as its SecAgg workflow."""

from __future__ import annotations

import torch
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid

from flower_app.task import FraudNet, get_weights
from securefl.flower import SecureFLWorkflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.manual_seed(0)
    initial = ndarrays_to_parameters(get_weights(FraudNet(int(cfg["n-features"]))))
    epochs = int(cfg["local-epochs"])
    # no plain evaluate round: securefl_mod refuses it unless a bank sets allow-plain-evaluate=true
    # (its metrics on the bank's own data would leave unprotected; docs/flower.md)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0,
                      min_available_clients=int(cfg["min-clients"]),
                      initial_parameters=initial,
                      on_fit_config_fn=lambda _: {"local-epochs": epochs})
    legacy = LegacyContext(context=context,
                           config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecureFLWorkflow(
        manifest=str(cfg["manifest"]), server_key=str(cfg["server-key"]),
        run_dir=str(cfg["run-dir"]), state_dir=str(cfg["server-state"]) or None))
    workflow(grid, legacy)
