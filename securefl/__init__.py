"""securefl: federated training across institutions with secure aggregation, DP and an audit log.

Importing securefl is cheap: torch, tenseal and opacus load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from securefl.errors import SecureFLError

if TYPE_CHECKING:
    pass

__all__ = ["SecureFLError", "__version__"]


def __getattr__(name: str) -> Any:  # PEP 562 lazy public API
    raise AttributeError(f"module 'securefl' has no attribute {name!r}")
