"""securefl inside any Flower app: a client mod and a server fit workflow shaped like Flower's own
SecAgg+ pair (``secaggplus_mod`` + ``SecAggPlusWorkflow``).

Client: ``ClientApp(client_fn=..., mods=[securefl_mod])``. Server:
``DefaultWorkflow(fit_workflow=SecureFLWorkflow(manifest=..., server_key=..., run_dir=...))``.
See :mod:`securefl.flower.mod` and :mod:`securefl.flower.workflow` for what this path guarantees,
and docs/flower.md. flwr is imported only when a message or a round is handled.
"""

from __future__ import annotations

from securefl.flower.mod import securefl_mod
from securefl.flower.workflow import SecureFLWorkflow

__all__ = ["SecureFLWorkflow", "securefl_mod"]
