"""securefl: federated training across institutions with secure aggregation (SecAgg+, CKKS),
differential privacy and a tamper-evident audit log.

Importing securefl is cheap: torch, tenseal and opacus load only when a function needs them. The
public names below are resolved lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from securefl.errors import SecureFLError

if TYPE_CHECKING:
    from securefl import privacy
    from securefl.bank import Bank, DeclaredDpSgd, LocalPlan, LocalUpdate
    from securefl.config import RunConfig
    from securefl.runtime import RoundReport, RunResult, run, train
    from securefl.simulate import SecureSumResult, simulate_secure_sum
    from securefl.transport.policy import Deadlines

__all__ = [
    "Bank",
    "Deadlines",
    "DeclaredDpSgd",
    "LocalPlan",
    "LocalUpdate",
    "RoundReport",
    "RunConfig",
    "RunResult",
    "SecureFLError",
    "SecureSumResult",
    "__version__",
    "privacy",
    "run",
    "simulate_secure_sum",
    "train",
]

_LAZY = {
    "Bank": "securefl.bank",
    "DeclaredDpSgd": "securefl.bank",
    "LocalPlan": "securefl.bank",
    "LocalUpdate": "securefl.bank",
    "RunConfig": "securefl.config",
    "run": "securefl.runtime",
    "train": "securefl.runtime",
    "RunResult": "securefl.runtime",
    "RoundReport": "securefl.runtime",
    "simulate_secure_sum": "securefl.simulate",
    "SecureSumResult": "securefl.simulate",
    "Deadlines": "securefl.transport.policy",
}


def __getattr__(name: str) -> Any:
    if name == "privacy":
        return importlib.import_module("securefl.privacy")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securefl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
