"""The import rules of docs/architecture.md, checked on the source: every package imports only from
lower layers (lazy imports inside functions count; ``if TYPE_CHECKING:`` imports do not)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "securefl"

#: the layer table of docs/architecture.md, lowest first; a part may import from lower layers only
LAYERS: list[set[str]] = [
    {"errors"},
    {"crypto", "config", "data", "fl", "schema", "storage"},
    {"he", "dp"},
    {"protocol"},
    {"transport", "federation", "result"},
    {"aggregators", "keyholder", "audit", "bank", "committer", "engine"},
    {"runtime", "simulate", "privacy", "report"},
    {"deploy"},
    {"flower"},
    {"cli"},
    {"__main__"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, names, line) of every runtime import of securefl in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                re.match(r"^securefl(\.|$)", node.module):
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if re.match(r"^securefl(\.|$)", alias.name):
                    yield alias.name, [], node.lineno


def _root_attributes(path: Path) -> list[str]:
    """The ``securefl.<name>`` attributes a module that does ``import securefl`` uses."""
    tree = ast.parse(path.read_text("utf-8"))
    return sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id == "securefl"})


def _part(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_every_part_has_a_layer() -> None:
    parts = {_part(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYER), f"parts without a layer in docs/architecture.md: {parts - set(LAYER)}"
    doc = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    for part in parts:
        assert f"`{part}" in doc, f"docs/architecture.md does not describe {part}"


def test_imports_go_down_the_layers_only() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _part(path)
        if src == "__init__":
            continue
        for module, names, line in _imports(path):
            target = module.split(".")[1] if "." in module else "__init__"
            if target == src:
                continue
            if target == "__init__":
                # the package root: only its version string (the lazy public names sit above all)
                if not names:  # `import securefl`: then only securefl.__version__ is used
                    names = _root_attributes(path)
                if set(names) != {"__version__"}:
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports securefl {names}")
                continue
            if LAYER[target] >= LAYER[src]:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {src} (layer {LAYER[src]}) "
                                  f"imports {module} (layer {LAYER[target]})")
    assert not violations, "\n".join(violations)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule above can fail: an import from a higher layer is reported."""
    bad = tmp_path / "x.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from securefl.runtime import run\n"
                   "def f():\n    from securefl.deploy.server import DeployServer\n")
    found = [(m, line) for m, _, line in _imports(bad)]
    assert found == [("securefl.deploy.server", 5)]
    assert LAYER["deploy"] > LAYER["crypto"]


def _public_names(module: str) -> set[str] | None:
    import importlib

    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    return set(names) if names is not None else None


def _is_submodule(module: str, name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{module}.{name}") is not None if \
        hasattr(__import__(module, fromlist=["_"]), "__path__") else False


def test_deployment_and_flower_import_only_public_names() -> None:
    """deploy/ and flower/ build on the public API of the parts below them: every name they import
    from another part is in that module's ``__all__`` (issue 15)."""
    private = []
    for part in ("deploy", "flower"):
        for path in sorted((PACKAGE / part).rglob("*.py")):
            for module, names, line in _imports(path):
                if module.startswith(f"securefl.{part}") or module == "securefl":
                    continue
                public = _public_names(module)
                for name in names:
                    if _is_submodule(module, name):
                        continue
                    if public is None or name not in public:
                        private.append(f"{path.relative_to(ROOT)}:{line}: {module}.{name}")
    assert not private, "\n".join(private)
