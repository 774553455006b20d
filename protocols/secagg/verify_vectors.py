"""Independent verifier of the SecAgg test vectors: re-derives everything from spec.md using only
the Python standard library, numpy and pyca/cryptography (it does NOT import securefl).

Usage: python protocols/secagg/verify_vectors.py [vector.json ...]   (default: vectors/*.json)
Exit status 0 when every check passes; prints the first failing check otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

P521 = 2**521 - 1


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def hkdf_sha256(ikm: bytes, info: bytes) -> bytes:  # RFC 5869 with an empty salt, L = 32
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def pair_info(purpose: str, session: bytes, rnd: int, i: int, j: int) -> bytes:
    p = purpose.encode()
    return (
        b"securefl/secagg/v1\x00"
        + struct.pack(">H", len(p))
        + p
        + struct.pack(">H", len(session))
        + session
        + struct.pack(">QII", rnd, min(i, j), max(i, j))
    )


def x25519(sk_hex: str, pk_hex: str) -> bytes:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(sk_hex)).exchange(
        X25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex))
    )


def prg(seed: bytes, n: int) -> np.ndarray:
    """AES-256-CTR, initial counter block 0^128, little-endian uint32 words."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint64)


def bound(domain: str, session: bytes, rnd: int, msg: bytes) -> bytes:
    d = domain.encode()
    return (
        b"securefl-sig-v1\x00"
        + struct.pack(">H", len(d))
        + d
        + struct.pack(">H", len(session))
        + session
        + struct.pack(">Q", rnd)
        + msg
    )


def lagrange0(points: dict[int, int]) -> int:
    acc = Fraction(0)
    for xk, yk in points.items():
        term = Fraction(yk)
        for xm in points:
            if xm != xk:
                term *= Fraction(xm, xm - xk)
        acc += term
    return acc.numerator * pow(acc.denominator, -1, P521) % P521


def harary(nodes: list[int], k: int, seed: bytes) -> dict[int, set[int]]:
    m = len(nodes)
    if k >= m - 1:
        return {c: set(nodes) - {c} for c in nodes}
    order = sorted(
        nodes,
        key=lambda c: hashlib.sha256(
            b"securefl/secagg/v1/graph\x00" + seed + struct.pack(">I", c)
        ).digest(),
    )
    return {
        c: {order[(p + d) % m] for d in range(-(k // 2), k // 2 + 1) if d}
        for p, c in enumerate(order)
    }


def verify(v: dict[str, Any]) -> None:
    prm = v["params"]
    session, rnd, bits, dim = (
        bytes.fromhex(prm["session_id"]),
        prm["round"],
        prm["bits"],
        prm["dim"],
    )
    mod = 1 << bits
    cl = {int(c): e for c, e in v["clients"].items()}
    # identities and signed ephemeral keys
    roster = sorted(c for c, e in cl.items() if "advertise_signature" in e)
    digest = hashlib.sha256(
        b"securefl/secagg/v1/roster\x00" + session + struct.pack(">QI", rnd, len(roster))
    )
    for c in roster:
        e = cl[c]
        ident = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(e["identity_seed"]))
        check(ident.public_key().public_bytes_raw().hex() == e["identity_public"], f"identity {c}")
        for kind in ("cipher", "mask"):
            pk = X25519PrivateKey.from_private_bytes(bytes.fromhex(e[f"{kind}_sk"])).public_key()
            check(pk.public_bytes_raw().hex() == e[f"{kind}_pk"], f"{kind} key of {c}")
        body = struct.pack(">I", c) + bytes.fromhex(e["cipher_pk"]) + bytes.fromhex(e["mask_pk"])
        sig = bytes.fromhex(e["advertise_signature"])
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(e["identity_public"])).verify(
            sig, bound("securefl/secagg/v1/advertise", session, rnd, body)
        )
        digest.update(body + sig)
    seed = digest.digest()
    check(seed.hex() == v["roster_digest"], "roster digest")
    graph = harary(roster, prm["degree"], seed)
    check({str(c): sorted(nb) for c, nb in graph.items()} == v["graph"], "graph")
    u2 = sorted(int(c) for c in v["self_mask_commitments"])
    u3 = v["survivors"]
    masked_with = {c: sorted(graph[c] & set(u2)) for c in u2}
    check({str(c): nb for c, nb in masked_with.items()} == v["masked_with"], "masked_with")

    # pairwise seeds and first mask words
    def pair_seed(i: int, j: int, sk_hex: str | None = None) -> bytes:
        shared = x25519(sk_hex or cl[i]["mask_sk"], cl[j]["mask_pk"])
        return hkdf_sha256(shared, pair_info("mask", session, rnd, i, j))

    for p in v["pairwise"]:
        i, j = p["i"], p["j"]
        s = pair_seed(i, j)
        check(s == pair_seed(j, i), f"X25519 symmetry {i},{j}")
        check(s.hex() == p["mask_seed"], f"mask seed {i},{j}")
        check([int(w) for w in prg(s, 4)] == p["first_words"], f"first words {i},{j}")
    # Shamir shares: any t of them give the mask key / self-mask seed; all lie on one polynomial
    t_nb = prm["neighbour_threshold"]
    for owner_s, held in v["shares"].items():
        owner = int(owner_s)
        t = min(t_nb, len(graph[owner]) + 1)
        for kind, secret_key in (
            ("mask_key_share", "mask_sk"),
            ("self_mask_share", "self_mask_seed"),
        ):
            pts = {int(x): int(h[kind], 16) for x, h in held.items()}
            if len(pts) < t:
                continue
            xs = sorted(pts)
            first = lagrange0({x: pts[x] for x in xs[:t]})
            last = lagrange0({x: pts[x] for x in xs[-t:]})
            check(first == last == int(cl[owner][secret_key], 16), f"{kind} of {owner}")
        commit = hashlib.sha256(
            b"securefl/secagg/v1/self-mask-commit\x00"
            + session
            + struct.pack(">QI", rnd, owner)
            + bytes.fromhex(cl[owner]["self_mask_seed"])
        ).hexdigest()
        check(commit == v["self_mask_commitments"][owner_s], f"commitment of {owner}")
    # one sealed share, opened with AES-256-GCM and the AAD of spec.md
    ss = v["sealed_share"]
    snd, rcv = ss["sender"], ss["receiver"]
    key = hkdf_sha256(
        x25519(cl[snd]["cipher_sk"], cl[rcv]["cipher_pk"]),
        pair_info("share", session, rnd, snd, rcv),
    )
    aad = (
        b"securefl/aead/v1\x00"
        + struct.pack(">H", 5)
        + b"share"
        + struct.pack(">H", 16)
        + session
        + struct.pack(">QII", rnd, snd, rcv)
    )
    ct = bytes.fromhex(ss["ciphertext"])
    pt = AESGCM(key).decrypt(ct[:12], ct[12:], aad)
    h = v["shares"][str(snd)][str(rcv + 1)]
    check(
        pt
        == struct.pack(">II", snd, rcv)
        + int(h["mask_key_share"], 16).to_bytes(66, "big")
        + int(h["self_mask_share"], 16).to_bytes(66, "big"),
        "sealed share plaintext",
    )
    # masked inputs
    w = (bits + 7) // 8
    ys = {}
    for c in u3:
        raw = np.frombuffer(bytes.fromhex(v["masked_inputs_packed"][str(c)]), dtype=np.uint8)
        full = np.zeros((dim, 4), dtype=np.uint8)
        full[:, :w] = raw.reshape(dim, w)
        y = full.view("<u4").reshape(dim).astype(np.uint64)
        exp = np.array(cl[c]["input"], dtype=np.uint64) + prg(
            bytes.fromhex(cl[c]["self_mask_seed"]), dim
        )
        for j in masked_with[c]:
            mask = prg(pair_seed(c, j), dim)
            exp = exp + mask if c < j else exp + (np.uint64(mod) - mask % np.uint64(mod))
        check(np.array_equal(exp % np.uint64(mod), y), f"masked input of {c}")
        ys[c] = y
    # the final sum: directly, and by unmasking with reconstructed secrets
    direct = sum((np.array(cl[c]["input"], dtype=np.uint64) for c in u3), np.zeros(dim, np.uint64))
    check([int(x) for x in direct % np.uint64(mod)] == v["sum"], "sum of survivors' inputs")
    acc = sum((ys[c] for c in u3), np.zeros(dim, np.uint64))
    for c in u3:
        acc = acc + (
            np.uint64(mod) - prg(bytes.fromhex(cl[c]["self_mask_seed"]), dim) % np.uint64(mod)
        )
    for j in v["dropped"]:
        pts = {int(x): int(h["mask_key_share"], 16) for x, h in v["shares"][str(j)].items()}
        t = min(t_nb, len(graph[j]) + 1)
        sk = lagrange0({x: pts[x] for x in sorted(pts)[:t]}).to_bytes(32, "big").hex()
        for i in u3:
            if j in masked_with[i]:
                mask = prg(pair_seed(j, i, sk_hex=sk), dim) % np.uint64(mod)
                acc = acc + (np.uint64(mod) - mask if i < j else mask)
    check([int(x) for x in acc % np.uint64(mod)] == v["sum"], "unmasked sum")


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((Path(__file__).parent / "vectors").glob("*.json"))
    for path in paths:
        try:
            verify(json.loads(path.read_text()))
        except Exception as exc:  # report any failure (including InvalidSignature/InvalidTag)
            print(f"FAIL {path.name}: {type(exc).__name__}: {exc}")
            return 1
        print(f"ok   {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
