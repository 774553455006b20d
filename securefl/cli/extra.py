"""Subcommands beyond ``run``: keys, federation, audit, privacy, report, deploy, data (lazy
imports)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add the keys / federation / audit / privacy subcommands to ``sub``."""
    from securefl.cli.audit import register_audit, register_privacy, register_report
    from securefl.cli.data import register_data
    from securefl.cli.deploy import register_deploy
    from securefl.cli.keys import register_federation, register_keys

    register_keys(sub)
    register_federation(sub)
    register_audit(sub)
    register_privacy(sub)
    register_report(sub)
    register_deploy(sub)
    register_data(sub)
