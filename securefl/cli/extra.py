"""Subcommands beyond ``run``: audit, privacy, keys (registered lazily)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the audit / privacy / keys subcommands to ``sub``."""
    _ = argparse
