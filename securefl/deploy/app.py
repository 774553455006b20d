"""The Flower apps of a securefl deployment and the app directory ``flwr run`` takes.

ServerApp: reads the server deployment file named by the run config key ``securefl-server``
(``flwr run APP CONN --run-config 'securefl-server="/path/server.json"'``, or the default written
into the app by :func:`write_app`), waits for the manifest's banks to connect, and runs
:class:`securefl.deploy.server.DeployServer`. ClientApp: one per bank, configured by its
SuperNode's ``--node-config`` (member, key, manifest, data-path; see
:class:`securefl.deploy.client.BankNode`), and, with aggregation ``ckks``, one for the key holder
(``role="ckks-key-holder"``; see :class:`securefl.deploy.ckks.KeyHolderNode`).
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["client_app", "server_app", "write_app"]

log = logging.getLogger("securefl.deploy")
CONFIG_KEY = "securefl-server"


def _server_main(grid: Any, context: Any) -> None:
    from securefl.deploy.guard import OpenGuard
    from securefl.deploy.server import DeployServer, ServerSettings
    from securefl.errors import SecureFLError
    from securefl.transport.flower import GridLink

    path = str(context.run_config[CONFIG_KEY])
    raw = json.loads(Path(path).read_text("utf-8"))
    guard = None
    if raw.get("forbid_paths"):
        guard = OpenGuard(raw["forbid_paths"], raw.get("opens_log")).install()
    settings = ServerSettings.load(path)
    status: dict[str, Any] = {"status": "running"}
    try:
        server = DeployServer(settings)
        link = GridLink(grid)
        wanted = set(server.fed.clients)
        if server.ckks and server.fed.key_holder is not None:
            wanted.add(server.fed.key_holder)
        deadline = time.monotonic() + settings.wait_nodes_s
        nodes = link.node_names()
        while not wanted <= set(nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = link.node_names()
        result = server.run(link, nodes)
        status = {"status": "done", "round_trips": result["round_trips"]}
    except SecureFLError as err:
        log.error("deployment failed: %s %s", err.code, err.message)
        status = {"status": "failed", "error": f"{err.code}: {err.message}"}
    except Exception as exc:  # reported in the status file: flwr run exits 0 regardless
        log.exception("deployment failed")
        status = {"status": "failed", "error": repr(exc)}
    finally:
        if guard is not None:
            guard.write()
        if settings.progress is not None:
            with settings.progress.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(status) + "\n")


def server_app() -> Any:
    """The securefl ServerApp (flwr imported here, lazily)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(_server_main)
    return app


def _node_handler(cfg: Mapping[str, Any]) -> tuple[str, str, Any]:
    """A bank's node, or the CKKS key holder's (``--node-config 'role="ckks-key-holder" ...'``)."""
    from securefl.deploy.ckks import KeyHolderNode
    from securefl.deploy.client import BankNode
    from securefl.errors import ConfigError

    role = str(cfg.get("role", "client"))
    node: BankNode | KeyHolderNode
    if role == "client":
        node = BankNode.from_node_config(cfg)
    elif role == "ckks-key-holder":
        node = KeyHolderNode.from_node_config(cfg)
    else:
        raise ConfigError(f"node config role {role!r}: expected client or ckks-key-holder")
    return node.member, node.federation().digest, node.handle


def client_app() -> Any:
    """The securefl ClientApp (one per bank's SuperNode)."""
    from securefl.transport.flower import make_node_client_app

    logging.basicConfig(level=logging.INFO)
    return make_node_client_app(_node_handler)


def write_app(directory: str | Path, server_config: str | Path | None = None) -> Path:
    """Write the Flower App directory ``flwr run`` needs (pyproject + two one-line modules that
    import the apps above from the installed securefl). Returns its path."""
    app = Path(directory)
    pkg = app / "securefl_flower"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server_app.py").write_text(
        "from securefl.deploy.app import server_app\n\napp = server_app()\n")
    (pkg / "client_app.py").write_text(
        "from securefl.deploy.app import client_app\n\napp = client_app()\n")
    default = json.dumps(str(server_config) if server_config is not None else "")
    (app / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "securefl-flower"
        version = "1.0.0"
        description = "securefl secure aggregation over Flower"
        license = "Apache-2.0"
        dependencies = ["flwr==1.42.0"]

        [tool.hatch.build.targets.wheel]
        packages = ["."]

        [tool.flwr.app]
        publisher = "securefl"

        [tool.flwr.app.components]
        serverapp = "securefl_flower.server_app:app"
        clientapp = "securefl_flower.client_app:app"

        [tool.flwr.app.config]
        {CONFIG_KEY} = {default}
        """))
    return app
