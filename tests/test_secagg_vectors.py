"""Spec vectors: the package regenerates them exactly, and the independent verifier (which does not
import securefl) re-derives every value; the verifier also rejects corrupted vectors."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECAGG = ROOT / "protocols" / "secagg"
VECTORS = sorted((SECAGG / "vectors").glob("*.json"))


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SECAGG / script), *args], capture_output=True, text=True, check=False
    )


def _verifier() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "secagg_verify_vectors", SECAGG / "verify_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_there_are_vectors_with_and_without_dropouts() -> None:
    names = {p.stem for p in VECTORS}
    assert {"classic-n4-no-dropout", "classic-n5-dropouts", "plus-n8-k4-dropouts"} <= names


def test_package_regenerates_the_vectors_exactly() -> None:
    proc = _run("gen_vectors.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_independent_verifier_accepts_the_vectors() -> None:
    proc = _run("verify_vectors.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == len(VECTORS)


def test_verifier_does_not_import_securefl() -> None:
    tree = ast.parse((SECAGG / "verify_vectors.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules, "the parser found no imports at all"
    assert not any(mod.split(".")[0] == "securefl" for mod in modules)
    assert "cryptography.hazmat.primitives.ciphers.aead" in modules


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda v: v["sum"].__setitem__(0, (v["sum"][0] + 1) % (1 << v["params"]["bits"])),
        lambda v: v["pairwise"][0]["first_words"].__setitem__(
            0, v["pairwise"][0]["first_words"][0] ^ 1
        ),
        lambda v: v.__setitem__("roster_digest", "00" * 32),
        lambda v: v["clients"]["0"].__setitem__("advertise_signature", "11" * 64),
        lambda v: v["sealed_share"].__setitem__(
            "ciphertext", "00" + v["sealed_share"]["ciphertext"][2:]
        ),
        lambda v: v["clients"]["0"].__setitem__(
            "input", [x ^ 1 for x in v["clients"]["0"]["input"]]
        ),
    ],
)
def test_verifier_rejects_corrupted_vectors(corrupt) -> None:  # type: ignore[no-untyped-def]
    verifier = _verifier()
    vec = json.loads((SECAGG / "vectors" / "classic-n5-dropouts.json").read_text())
    verifier.verify(copy.deepcopy(vec))  # the original passes
    corrupt(vec)
    with pytest.raises(Exception):  # noqa: B017 - any failure type (Failed, InvalidTag, ...) is a pass
        verifier.verify(vec)


def test_diagram_in_spec_is_generated_from_the_tables() -> None:
    proc = _run("gen_diagram.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
