"""Fixtures shared by every test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _fresh_round0_records() -> Iterator[None]:
    """Each deployment test starts without the round-0 survivor records an earlier test's banks
    kept in a shared (module-scoped) federation's state dirs (tests/deploy_helpers.py)."""
    helpers = sys.modules.get("deploy_helpers")
    if helpers is not None:
        helpers.forget_round0()
    yield
