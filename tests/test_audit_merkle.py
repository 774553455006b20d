"""RFC 9162 Merkle tree: published transparency-dev vectors, and properties against a naive
recursive implementation of the RFC's definitions written here (independent of the package)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.merkle import (
    MerkleTree,
    empty_root,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from securefl.errors import AuditError

VECTORS = Path(__file__).resolve().parents[1] / "protocols" / "audit" / "vectors"
TD = VECTORS / "transparency-dev-merkle"


def _b(x: str | None) -> bytes:
    return base64.b64decode(x) if x else b""


def _proof(x: list[str] | None) -> list[bytes]:
    return [_b(p) for p in (x or [])]


def _probes(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted(p for p in (TD / kind).rglob("*.json"))
    return [(p.relative_to(TD).as_posix(), json.loads(p.read_text())) for p in files]


INCLUSION = _probes("inclusion")
CONSISTENCY = _probes("consistency")
REF = json.loads((VECTORS / "reference_tree.json").read_text())
REF_LEAVES = [bytes.fromhex(x) for x in REF["leaf_inputs_hex"]]
REF_ROOTS = [bytes.fromhex(x) for x in REF["root_hashes_hex_by_size"]]


def test_vector_counts() -> None:
    assert len(INCLUSION) >= 80 and len(CONSISTENCY) >= 90
    assert any(not v["wantErr"] for _, v in INCLUSION)
    assert any(v["wantErr"] for _, v in CONSISTENCY)


@pytest.mark.parametrize(("name", "v"), INCLUSION, ids=[n for n, _ in INCLUSION])
def test_transparency_dev_inclusion_vectors(name: str, v: dict[str, Any]) -> None:
    args = (_b(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b(v["root"]))
    if v["wantErr"]:
        with pytest.raises(AuditError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(("name", "v"), CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_transparency_dev_consistency_vectors(name: str, v: dict[str, Any]) -> None:
    args = (v["size1"], v["size2"], _b(v["root1"]), _b(v["root2"]), _proof(v["proof"]))
    if v["wantErr"]:
        with pytest.raises(AuditError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_reference_roots_for_sizes_0_to_8() -> None:
    tree = MerkleTree()
    assert tree.root() == REF_ROOTS[0] == empty_root()
    for i, leaf in enumerate(REF_LEAVES):
        tree.append_data(leaf)
        assert tree.leaf_hash_at(i).hex() == REF["level0_leaf_hashes_hex"][i]
        assert tree.root() == REF_ROOTS[i + 1]
    for size in range(9):  # past sizes from the full tree
        assert tree.root(size) == REF_ROOTS[size]


def _ref_tree() -> MerkleTree:
    tree = MerkleTree()
    for leaf in REF_LEAVES:
        tree.append_data(leaf)
    return tree


def test_generated_proofs_equal_published_happy_paths() -> None:
    """Happy-path vectors over the reference leaves: our generated proofs are those bytes."""
    tree = _ref_tree()
    by_root = {r: n for n, r in enumerate(REF_ROOTS)}
    matched = 0
    for _, v in INCLUSION:
        root = _b(v["root"])
        if not v["wantErr"] and by_root.get(root) == v["treeSize"] and v["treeSize"] <= 8 and (
            _b(v["leafHash"]) == tree.leaf_hash_at(v["leafIdx"])
        ):
            assert tree.inclusion_proof(v["leafIdx"], v["treeSize"]) == _proof(v["proof"])
            matched += 1
    for _, v in CONSISTENCY:
        if not v["wantErr"] and by_root.get(_b(v["root2"])) == v["size2"] and (
            by_root.get(_b(v["root1"])) == v["size1"]
        ):
            assert tree.consistency_proof(v["size1"], v["size2"]) == _proof(v["proof"])
            matched += 1
    assert matched >= 8


# ---- naive recursive definitions of RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1 (test-only reference)
def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return _h(b"")
    if len(d) == 1:
        return _h(b"\x00" + d[0])
    k = _k(len(d))
    return _h(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) <= 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


leaves_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=60, deadline=None)
@given(leaves_st, st.data())
def test_tree_matches_rfc_definitions(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree()
    for x in leaves:
        tree.append_data(x)
    n = data.draw(st.integers(1, len(leaves)))
    m = data.draw(st.integers(0, n - 1))
    old = data.draw(st.integers(1, n))
    assert tree.root(n) == mth(leaves[:n])
    assert tree.inclusion_proof(m, n) == path(m, leaves[:n])
    want = [] if old == n else subproof(old, leaves[:n], True)
    assert tree.consistency_proof(old, n) == want
    verify_inclusion(leaf_hash(leaves[m]), m, n, tree.inclusion_proof(m, n), tree.root(n))
    verify_consistency(old, n, tree.root(old), tree.root(n), tree.consistency_proof(old, n))


@settings(max_examples=60, deadline=None)
@given(leaves_st, st.data())
def test_any_altered_proof_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree()
    for x in leaves:
        tree.append_data(x)
    n = len(leaves)
    m = data.draw(st.integers(0, n - 1))
    proof = tree.inclusion_proof(m, n)
    root = tree.root()
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(AuditError):
            verify_inclusion(tree.leaf_hash_at(m), m, n, bad, root)
        with pytest.raises(AuditError):
            verify_inclusion(tree.leaf_hash_at(m), m, n, proof[:-1], root)
    with pytest.raises(AuditError):
        verify_inclusion(leaf_hash(leaves[m] + b"x"), m, n, proof, root)
    old = data.draw(st.integers(1, n))
    cproof = tree.consistency_proof(old, n)
    other = MerkleTree()  # a fork: same size, one leaf changed
    for j, x in enumerate(leaves[:old]):
        other.append_data(x + b"!" if j == old - 1 else x)
    with pytest.raises(AuditError):
        verify_consistency(old, n, other.root(), root, cproof)


def test_second_preimage_leaf_vs_node() -> None:
    """An inner node's preimage presented as a leaf gives a different hash (0x00/0x01 prefixes)."""
    tree = MerkleTree()
    tree.append_data(b"a")
    tree.append_data(b"b")
    forged = tree.leaf_hash_at(0) + tree.leaf_hash_at(1)
    assert leaf_hash(forged) != tree.root()


def test_bad_arguments() -> None:
    tree = _ref_tree()
    for call in (lambda: tree.root(9), lambda: tree.inclusion_proof(8, 8),
                 lambda: tree.consistency_proof(5, 4), lambda: tree.append_hash(b"short")):
        with pytest.raises(AuditError):
            call()
    with pytest.raises(AuditError):
        verify_consistency(5, 4, REF_ROOTS[5], REF_ROOTS[4], [])
