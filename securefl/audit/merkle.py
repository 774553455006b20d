"""Merkle tree hashing of RFC 9162 (Certificate Transparency v2), section 2.1, with SHA-256.

- leaf hash   MTH({d}) = SHA-256(0x00 || d)                       (RFC 9162 2.1.1)
- node hash   MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])),
              k the largest power of two < n
- empty tree  MTH({}) = SHA-256("")
- inclusion proofs PATH(m, D[n]) and their verification              (RFC 9162 2.1.3.1, 2.1.3.2)
- consistency proofs PROOF(m, D[n]) and their verification          (RFC 9162 2.1.4.1, 2.1.4.2)

The distinct 0x00/0x01 prefixes are what stop a second-preimage attack that passes an inner node
off as a leaf (RFC 9162 2.1.1). :class:`MerkleTree` stores every complete, aligned subtree hash
(2n hashes of 32 bytes for n leaves), so an append costs amortised O(1) hashes, a root O(log n) and
a proof O(log^2 n) in the worst case; nothing is recomputed from the leaves.

Verification raises :class:`~securefl.errors.AuditError`; it never returns a bool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from securefl.errors import AuditError

__all__ = [
    "HASH_SIZE",
    "MerkleTree",
    "empty_root",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 2.1.1 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """Root of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1)."""
    return hashlib.sha256(b"").digest()


def _largest_pow2_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 tree over leaf hashes, with roots and proofs for any past size.

    ``_levels[j][i]`` is the hash of the complete subtree over leaves ``[i*2^j, (i+1)*2^j)``.
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append_data(self, data: bytes) -> int:
        """Append a leaf given its data; return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        """Append a leaf given its leaf hash; return its index. Amortised O(1) hashes."""
        if len(h) != HASH_SIZE:
            raise AuditError("a leaf hash is 32 bytes")
        index = self.size
        self._levels[0].append(h)
        j = 0
        while len(self._levels[j]) % 2 == 0:
            level = self._levels[j]
            if j + 1 == len(self._levels):
                self._levels.append([])
            self._levels[j + 1].append(node_hash(level[-2], level[-1]))
            j += 1
        return index

    def leaf_hash_at(self, index: int) -> bytes:
        self._check_size(index + 1)
        return self._levels[0][index]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise AuditError(f"tree size {size} is outside 0..{self.size}")

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for 0 <= lo < hi <= size, from stored complete subtrees."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            level = n.bit_length() - 1
            return self._levels[level][lo >> level]
        k = _largest_pow2_below(n)
        return node_hash(self._range_hash(lo, lo + k), self._range_hash(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the tree of the first ``size`` leaves (default: all)."""
        n = self.size if size is None else size
        self._check_size(n)
        if n == 0:
            return empty_root()
        return self._range_hash(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 2.1.3.1, leaf-side first."""
        n = self.size if size is None else size
        self._check_size(n)
        if not 0 <= index < n:
            raise AuditError(f"leaf index {index} is not in a tree of size {n}")
        path: list[bytes] = []
        lo, hi, m = 0, n, index
        while hi - lo > 1:
            k = _largest_pow2_below(hi - lo)
            if m < k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo, m = lo + k, m - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) of RFC 9162 2.1.4.1 (empty when the sizes are equal);
        0 < old_size <= new_size."""
        n = self.size if new_size is None else new_size
        self._check_size(n)
        if not 0 < old_size <= n:
            raise AuditError(f"cannot prove consistency from size {old_size} to size {n}")
        if old_size == n:
            return []
        proof: list[bytes] = []
        lo, hi, m, whole = 0, n, old_size, True
        # SUBPROOF(m, D[lo:hi], whole), unrolled; the recursion appends after descending.
        while m != hi - lo:
            k = _largest_pow2_below(hi - lo)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        if not whole:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof


def _check_hashes(name: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise AuditError(f"{name}[{i}] is not a 32-byte hash")


def verify_inclusion(
    leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: raise :class:`AuditError` unless ``proof`` puts the leaf at ``index``
    of the tree of ``size`` leaves whose root is ``root``."""
    _check_hashes("proof", proof)
    _check_hashes("hash", [leaf_hash_, root])
    if not 0 <= index < size:
        raise AuditError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf_hash_
    for p in proof:
        if sn == 0:
            raise AuditError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("inclusion proof is too short")
    if r != root:
        raise AuditError(
            f"inclusion proof of leaf {index} does not lead to the root of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: raise :class:`AuditError` unless the tree of ``new_size`` leaves with
    ``new_root`` extends the tree of ``old_size`` leaves with ``old_root``."""
    _check_hashes("proof", proof)
    if not 0 <= old_size <= new_size:
        raise AuditError(f"a log cannot shrink from size {old_size} to {new_size}")
    if old_size == 0:  # as transparency-dev/merkle: every tree extends the empty one
        raise AuditError("a consistency proof from the empty tree is meaningless")
    if old_size == new_size:
        if proof:
            raise AuditError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise AuditError(f"two different roots for the same tree size {old_size} (fork)")
        return
    _check_hashes("root", [old_root, new_root])  # equal sizes only compare the roots' bytes
    if not proof:
        raise AuditError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError("consistency proof is too short")
    if fr != old_root:
        raise AuditError(f"consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise AuditError(f"consistency proof does not lead to the new root (size {new_size})")
