"""Spec vectors (protocol v2): the package regenerates them exactly, and the independent verifier
(which does not import securefl) re-derives every value; the verifier also rejects corrupted vectors.
The bounds table in spec.md is the generator's output."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECAGG = ROOT / "protocols" / "secagg"
VECTORS = sorted((SECAGG / "vectors").glob("*.json"))

Vector = dict[str, Any]


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


def _load(name: str) -> Vector:
    vec: Vector = json.loads((SECAGG / "vectors" / f"{name}.json").read_text())
    return vec


def test_there_are_vectors_with_and_without_dropouts_colluders_and_graphs() -> None:
    names = {p.stem for p in VECTORS}
    assert names == {
        "classic-n4-no-dropout", "classic-n5-dropouts", "classic-n5-c1-dropout",
        "plus-n30-dropouts",
    }
    plus = _load("plus-n30-dropouts")
    n = len(plus["params"]["participants"])
    assert plus["params"]["degree"] < n - 1  # a real G(n, p), not the complete graph
    assert plus["guarantee"]["log2_failure"] <= -41
    assert _load("classic-n5-c1-dropout")["params"]["assumptions"]["colluders"] == 1


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


def _bump_sum(v: Vector) -> None:
    v["sum"][0] = (v["sum"][0] + 1) % (1 << v["params"]["bits"])


def _flip_hex(value: str) -> str:
    return f"{int(value[:2], 16) ^ 1:02x}" + value[2:]


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Vector], None]:
    def corrupt(v: Vector) -> None:
        node: Any = v
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value

    return corrupt


def _swap_consistency_signature(v: Vector) -> None:
    sigs = v["consistency_signatures"]
    a, b = sorted(sigs)[:2]
    sigs[a] = sigs[b]


def _double_reveal(v: Vector) -> None:
    holder = next(iter(v["revealed"]))
    survivor = str(v["survivors"][0])
    v["revealed"][holder]["mask_key"][survivor] = v["shares"][survivor][str(int(holder) + 1)][
        "mask_key_share"]


def _drop_edge(v: Vector) -> None:
    i = next(c for c, nb in v["graph"].items() if nb)
    j = v["graph"][i].pop()
    v["graph"][str(j)].remove(int(i))


def _tailored_plan(v: Vector) -> None:
    """Another application plan with its consistent protocol plan digest: the advertise signatures,
    made over the original plan, no longer verify (spec.md 2.6)."""
    app = bytes(32 - 1) + b"\x01"
    v["application_plan_digest"] = app.hex()
    v["plan_digest"] = _verifier().protocol_plan(v["params"], app).hex()


N5_CORRUPTIONS: list[Callable[[Vector], None]] = [
    _bump_sum,
    _set(("pairwise", 0, "first_words", 0), lambda w: w ^ 1),
    _set(("roster_digest",), "00" * 32),
    _set(("clients", "0", "advertise_signature"), "11" * 64),
    _set(("sealed_share", "ciphertext"), _flip_hex),
    _set(("sealed_share", "binding"), "00" * 32),
    _set(("sealed_share", "aad"), _flip_hex),
    _set(("clients", "0", "input"), lambda x: [w ^ 1 for w in x]),
    _set(("plan_digest",), _flip_hex),
    _set(("application_plan_digest",), _flip_hex),
    _tailored_plan,
    _set(("params", "threshold"), 2),  # below 2T > n + c
    _set(("params", "neighbour_threshold"), 2),  # t lowered
    _set(("params", "assumptions", "colluders"), 1),
    _set(("params", "assumptions", "dropout_fraction"), 0.1),
    _set(("graph_seed",), _flip_hex),
    _swap_consistency_signature,
    _set(("survivors",), lambda u: u[1:]),
    _set(("unmask_request", "dropped"), []),
    _double_reveal,
    _set(("revealed", "0", "self_mask"), lambda r: {k: r[k] for k in list(r)[1:]}),
]

PLUS_CORRUPTIONS: list[Callable[[Vector], None]] = [
    _drop_edge,
    _set(("params", "degree"), lambda k: k - 1),
    _set(("guarantee", "log2_failure"), lambda x: x + 1),
    _set(("graph_seed",), _flip_hex),
    _bump_sum,
]


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [("classic-n5-dropouts", c) for c in N5_CORRUPTIONS]
    + [("plus-n30-dropouts", c) for c in PLUS_CORRUPTIONS],
)
def test_verifier_rejects_corrupted_vectors(name: str, corrupt: Callable[[Vector], None]) -> None:
    verifier = _verifier()
    vec = _load(name)
    verifier.verify(copy.deepcopy(vec))  # the original passes
    corrupt(vec)
    with pytest.raises(Exception):  # noqa: B017 - any failure type (Failed, InvalidTag, ...) is a pass
        verifier.verify(vec)


def test_verifier_command_fails_loudly_on_a_tampered_file(tmp_path: Path) -> None:
    vec = _load("classic-n4-no-dropout")
    _bump_sum(vec)
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(vec))
    proc = _run("verify_vectors.py", str(bad))
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL tampered.json")


def test_verifier_derives_the_same_parameters_as_the_package() -> None:
    """The verifier's bounds (written from spec.md section 2) agree with bounds.table() row by row."""
    from securefl.protocol.secagg.bounds import table

    verifier = _verifier()
    for row in table(ns=(3, 5, 10, 30, 100)):
        a = {"colluders": row["c"], "dropout_fraction": row["dropout_fraction"],
             "security_bits": 40, "alpha": 0.5}
        if "refused" in row:
            with pytest.raises(verifier.Failed):
                verifier.derive(row["n"], a)
            continue
        d = verifier.derive(row["n"], a)
        assert (d["T"], d["k"], d["t"], d["min_honest_sum"]) == (
            row["T"], row["k"], row["t"], row["min_honest_sum"]), row
        fail = d["log2_failure"]
        assert (None if fail is None else round(fail, 1)) == row["log2_failure"], row


def test_diagram_in_spec_is_generated_from_the_tables() -> None:
    proc = _run("gen_diagram.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bounds_table_in_spec_is_generated() -> None:
    proc = _run("gen_table.py", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = (SECAGG / "spec.md").read_text()
    body = spec[spec.index("<!-- table:begin -->"):spec.index("<!-- table:end -->")]
    assert "| 1000 |" in body and "refused" in body


def test_bounds_table_check_detects_an_edited_table(tmp_path: Path) -> None:
    gen = importlib.util.spec_from_file_location("secagg_gen_table", SECAGG / "gen_table.py")
    assert gen is not None and gen.loader is not None
    mod = importlib.util.module_from_spec(gen)
    gen.loader.exec_module(mod)
    fresh = mod.render()  # computed once: bounds.table() is the slow part
    mod.render = lambda: fresh
    spec = (SECAGG / "spec.md").read_text()
    edited = spec.replace("| 0 | none stated (max) | 3 | 2 |", "| 0 | none stated (max) | 3 | 1 |")
    assert edited != spec
    copy_path = tmp_path / "spec.md"
    copy_path.write_text(edited)
    mod.SPEC = copy_path
    assert mod.main(["--check"]) == 1
    mod.main(["--write"])
    assert copy_path.read_text() == spec
    assert mod.main(["--check"]) == 0
