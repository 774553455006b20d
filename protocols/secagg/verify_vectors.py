"""Independent verifier of the SecAgg (protocol v2) test vectors: re-derives every value from the
text of spec.md using only the Python standard library, numpy and pyca/cryptography (it does NOT
import securefl).

What it checks, in order (spec.md section in brackets):

1. the parameters against the bounds and their defaults, re-derived from the stated assumptions,
   and the guarantee they give ["Threat model and bounds"];
2. the protocol plan digest ["Plan digest"], the graph seed and every G(n, p) edge ["Graph"];
3. identity and ephemeral keys, every advertise signature over the v2 message (sign_bound framing)
   and the roster digest ["Byte encodings"];
4. every client's share holders (>= t, t never lowered), the Shamir shares (all on one polynomial
   of degree t - 1 through the secret), self-mask commitments, pairwise mask seeds and words;
5. one sealed share, opened with the v2 associated data (roster digest binding), and refused
   under the v1 associated data;
6. masked inputs, the survivor set and the client-side view checks, every consistency signature
   over plan | roster digest | u32 |U3| | ids, the unmask request;
7. the revealed shares (only the kind each honest holder may reveal, never both for one client),
   Shamir reconstruction with threshold t from the revealed shares, the commitments and advertised
   keys they must match, the unmasked sum, and the sum of the survivors' inputs.

Usage: python protocols/secagg/verify_vectors.py [vector.json ...]   (default: vectors/*.json)
Exit status 0 when every check passes; prints the first failing check and exits 1 otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

P521 = 2**521 - 1
PLAN_DOMAIN = b"securefl/secagg/v2/plan\x00"
ROSTER_DOMAIN = b"securefl/secagg/v2/roster\x00"
GRAPH_SEED_DOMAIN = b"securefl/secagg/v2/graph-seed\x00"
GRAPH_EDGE_DOMAIN = b"securefl/secagg/v2/graph-edge\x00"
ADVERTISE_DOMAIN = "securefl/secagg/v2/advertise"
CONSISTENCY_DOMAIN = "securefl/secagg/v2/consistency"
COMMIT_DOMAIN = b"securefl/secagg/v1/self-mask-commit\x00"
KDF_ID = b"securefl/secagg/v1\x00"
AEAD_ID = b"securefl/aead/v1\x00"
SIG_ID = b"securefl-sig-v1\x00"
#: the f64 written for an unset dropout_fraction (quiet NaN, spec.md "Plan digest")
NAN_BYTES = bytes.fromhex("7ff8000000000000")
GRAPH_MAX_FRACTION = 0.8


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def u32(*xs: int) -> bytes:
    return b"".join(struct.pack(">I", x) for x in xs)


def u64(x: int) -> bytes:
    return struct.pack(">Q", x)


def f64(x: float | None) -> bytes:
    return NAN_BYTES if x is None else struct.pack(">d", x)


# --- bounds (spec.md "Threat model and bounds") ---------------------------------------------------
def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _lse(xs: list[float]) -> float:
    xs = [x for x in xs if x != -math.inf]
    if not xs:
        return -math.inf
    mx = max(xs)
    return mx + math.log(sum(math.exp(x - mx) for x in xs))


def edge_p(n: int, k: int) -> float:
    return ((k << 64) // (n - 1)) / 2.0**64


def isolation_log2(n: int, k: int, removed: int, s_min: int) -> float:
    """log2 of sum_{s=1}^{s_min-1} C(n, s) P[Bin(n - s, 1 - (1 - p)^s) <= removed] (bound 4)."""
    if k >= n - 1:
        return -math.inf
    p = edge_p(n, k)
    per_s = []
    for s in range(1, s_min):
        m = n - s
        log_miss = s * math.log1p(-p)
        log_q = math.log(-math.expm1(log_miss))
        terms = [_log_binom(m, j) + j * log_q + (m - j) * log_miss
                 for j in range(min(removed, m) + 1)]
        per_s.append(_log_binom(n, s) + _lse(terms))
    return _lse(per_s) / math.log(2)


def colluder_log2(n: int, k: int, c: int, t: int) -> float:
    """log2 of n P[Bin(c, p) >= t] (bound 3)."""
    if t > c:
        return -math.inf
    p = 1.0 if k >= n - 1 else edge_p(n, k)
    if p >= 1.0:
        return 0.0
    terms = [_log_binom(c, j) + j * math.log(p) + (c - j) * math.log1p(-p) for j in range(t, c + 1)]
    return (math.log(n) + _lse(terms)) / math.log(2)


def derive(n: int, a: dict[str, Any]) -> dict[str, Any]:
    """The default T, k, t and the guarantee for n participants under assumptions ``a``."""
    c, df, sigma, alpha = a["colluders"], a["dropout_fraction"], a["security_bits"], a["alpha"]
    limit_log2 = -(sigma + 1)
    T = max((n + c) // 2 + 1, c + 2) if df is None else n - math.floor(df * n)
    check(1 <= T <= n and n + c < 2 * T and T - c >= 2, f"the bounds refuse the default T = {T}")
    honest, removed = T - c, n - T + c
    target = max(2, math.ceil(alpha * honest))

    def ok(k: int) -> bool:
        return bool(isolation_log2(n, k, removed, target) <= limit_log2)

    k = n - 1
    cap = math.floor(GRAPH_MAX_FRACTION * (n - 1))
    if cap >= 2 and ok(cap):
        k = next(d for d in range(2, cap + 1) if ok(d))  # the bound is monotone in k
    if k == n - 1:
        return {"T": T, "k": k, "t": T, "min_honest_sum": honest, "log2_failure": None}
    t = 2
    while colluder_log2(n, k, c, t) > limit_log2:
        t += 1
    fail = max(isolation_log2(n, k, removed, target), colluder_log2(n, k, c, t))
    check(fail <= limit_log2, "the graph bounds fail for the default k and t")
    return {"T": T, "k": k, "t": t, "min_honest_sum": target, "log2_failure": fail}


def check_bounds(n: int, T: int, k: int, t: int, a: dict[str, Any]) -> None:
    """The given parameters against bounds 1-4 (whatever their defaults)."""
    c, sigma = a["colluders"], a["security_bits"]
    check(1 <= T <= n, f"T = {T} outside [1, n = {n}]")
    check(n + c < 2 * T, f"bound 1 (2T > n + c) fails: T = {T}, n = {n}, c = {c}")
    check(T - c >= 2, f"bound 2 (T - c >= 2) fails: T = {T}, c = {c}")
    check(1 <= k <= n - 1, f"degree k = {k} outside [1, n - 1]")
    check(t <= min(T, k + 1), f"t = {t} exceeds min(T, k + 1)")
    if k == n - 1:
        check(t >= c + 1, f"bound 3 (classic: t > c) fails: t = {t}, c = {c}")
        return
    check(t >= 2, f"SecAgg+ needs t >= 2, got {t}")
    check(colluder_log2(n, k, c, t) <= -(sigma + 1), f"bound 3 fails for t = {t}")
    target = max(2, math.ceil(a["alpha"] * (T - c)))
    check(isolation_log2(n, k, n - T + c, target) <= -(sigma + 1),
          f"bound 4 (alpha-summation) fails for k = {k}")


def check_params(v: dict[str, Any]) -> None:
    prm = v["params"]
    n, T, k, t = len(prm["participants"]), prm["threshold"], prm["degree"], prm["neighbour_threshold"]
    a = prm["assumptions"]
    check_bounds(n, T, k, t, a)
    d = derive(n, a)
    check((T, k, t) == (d["T"], d["k"], d["t"]),
          f"params (T, k, t) = {(T, k, t)} are not the defaults {(d['T'], d['k'], d['t'])}")
    g = v["guarantee"]
    check(g["min_honest_sum"] == d["min_honest_sum"], "guarantee: min_honest_sum")
    check(g["dropouts_tolerated"] == n - T, "guarantee: dropouts_tolerated")
    if d["log2_failure"] is None:
        check(g["log2_failure"] is None, "guarantee: a complete graph has no failure probability")
    else:
        check(g["log2_failure"] is not None
              and abs(g["log2_failure"] - d["log2_failure"]) < 1e-4, "guarantee: log2_failure")


# --- primitives (spec.md "Key derivation, AEAD and PRG", "Shamir") -------------------------------
def hkdf_sha256(ikm: bytes, info: bytes) -> bytes:  # RFC 5869 with an empty salt, L = 32
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def pair_info(purpose: str, session: bytes, rnd: int, i: int, j: int) -> bytes:
    p = purpose.encode()
    return (KDF_ID + struct.pack(">H", len(p)) + p + struct.pack(">H", len(session)) + session
            + u64(rnd) + u32(min(i, j), max(i, j)))


def x25519(sk_hex: str, pk_hex: str) -> bytes:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(sk_hex)).exchange(
        X25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex))
    )


def prg(seed: bytes, n: int) -> np.ndarray:
    """AES-256-CTR, initial counter block 0^128, little-endian uint32 words."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint64)


def bound(domain: str, session: bytes, rnd: int, msg: bytes) -> bytes:
    """sign_bound framing: what Ed25519 actually signs."""
    d = domain.encode()
    return (SIG_ID + struct.pack(">H", len(d)) + d + struct.pack(">H", len(session)) + session
            + u64(rnd) + msg)


def ed25519_verify(public_hex: str, signature: bytes, message: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(signature, message)
    except InvalidSignature:
        raise Failed(f"{what}: invalid Ed25519 signature") from None


def lagrange_at(points: dict[int, int], x: int) -> int:
    """The polynomial through ``points`` (mod p = 2^521 - 1) evaluated at x."""
    acc = 0
    for xk, yk in points.items():
        num, den = 1, 1
        for xm in points:
            if xm != xk:
                num = num * (x - xm) % P521
                den = den * (xk - xm) % P521
        acc = (acc + yk * num * pow(den, -1, P521)) % P521
    return acc


def reconstruct(points: dict[int, int], t: int, what: str) -> bytes:
    """The secret from the t smallest points (spec.md "Shamir"); fewer than t points fail."""
    check(len(points) >= t, f"{what}: {len(points)} shares, threshold t = {t}")
    s = lagrange_at({x: points[x] for x in sorted(points)[:t]}, 0)
    check(s < 2**256, f"{what}: reconstructed value does not fit 32 bytes")
    return s.to_bytes(32, "big")


def protocol_plan(prm: dict[str, Any], app: bytes) -> bytes:
    """spec.md "Plan digest": what every client acts on in the round."""
    ids, a = prm["participants"], prm["assumptions"]
    return hashlib.sha256(
        PLAN_DOMAIN + bytes.fromhex(prm["session_id"]) + u64(prm["round"]) + u32(len(ids), *ids)
        + u32(prm["threshold"], prm["degree"], prm["neighbour_threshold"], prm["bits"], prm["dim"],
              a["colluders"])
        + f64(a["dropout_fraction"]) + u32(a["security_bits"]) + f64(a["alpha"]) + app
    ).digest()


# --- the round -------------------------------------------------------------------------------------
def verify(v: dict[str, Any]) -> None:
    check_params(v)
    prm = v["params"]
    session, rnd, bits, dim = (bytes.fromhex(prm["session_id"]), prm["round"], prm["bits"],
                               prm["dim"])
    ids = prm["participants"]
    n, T, k, t = len(ids), prm["threshold"], prm["degree"], prm["neighbour_threshold"]
    check(ids == sorted(set(ids)), "participants sorted and distinct")
    check(len(session) == 16, "session id is 16 bytes")
    mod = 1 << bits
    cl = {int(c): e for c, e in v["clients"].items()}
    check(sorted(cl) == ids, "one client record per participant")

    # plan digest
    app = bytes.fromhex(v["application_plan_digest"])
    check(len(app) == 32 and app != bytes(32), "application plan digest: 32 non-zero bytes")
    plan = protocol_plan(prm, app)
    check(plan.hex() == v["plan_digest"], "plan digest")

    # graph: seed over (session, round, sorted participants), edge iff u64(H[:8]) < floor(k 2^64/(n-1))
    seed = hashlib.sha256(GRAPH_SEED_DOMAIN + session + u64(rnd) + u32(n, *ids)).digest()
    check(seed.hex() == v["graph_seed"], "graph seed")
    cutoff = (k << 64) // (n - 1)
    graph: dict[int, set[int]] = {c: set() for c in ids}
    for x, i in enumerate(ids):
        for j in ids[x + 1:]:
            edge = hashlib.sha256(GRAPH_EDGE_DOMAIN + seed + u32(i, j)).digest()
            if int.from_bytes(edge[:8], "big") < cutoff:
                graph[i].add(j)
                graph[j].add(i)
    check({str(c): sorted(nb) for c, nb in graph.items()} == v["graph"], "graph edges")
    if k == n - 1:
        check(all(len(nb) == n - 1 for nb in graph.values()), "k = n - 1 is the complete graph")

    # identities, advertised keys, advertise signatures over the v2 message, roster digest
    u1 = v["roster"]
    check(u1 == sorted(set(u1)) and set(u1) <= set(ids), "roster sorted, participants only")
    check(len(u1) >= T, f"|U1| = {len(u1)} < T")
    check(sorted(c for c, e in cl.items() if "advertise_signature" in e) == u1,
          "advertise signatures = roster")
    digest = hashlib.sha256(ROSTER_DOMAIN + session + u64(rnd) + u32(len(u1)))
    for c in ids:
        e = cl[c]
        ident = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(e["identity_seed"]))
        check(ident.public_key().public_bytes_raw().hex() == e["identity_public"], f"identity {c}")
    for c in u1:
        e = cl[c]
        for kind in ("cipher", "mask"):
            pub = X25519PrivateKey.from_private_bytes(bytes.fromhex(e[f"{kind}_sk"])).public_key()
            check(pub.public_bytes_raw().hex() == e[f"{kind}_pk"], f"{kind} key of {c}")
        keys = bytes.fromhex(e["cipher_pk"]) + bytes.fromhex(e["mask_pk"])
        sig = bytes.fromhex(e["advertise_signature"])
        # every client verifies EVERY roster entry against its own plan digest
        ed25519_verify(e["identity_public"], sig,
                       bound(ADVERTISE_DOMAIN, session, rnd, u32(c) + keys + plan),
                       f"advertise signature of {c} over the v2 message and this plan")
        digest.update(u32(c) + keys + sig)
    D = digest.digest()
    check(D.hex() == v["roster_digest"], "roster digest")

    # holders, shares, commitments (U2 = clients whose shares arrived)
    u2 = sorted(int(c) for c in v["self_mask_commitments"])
    check(set(u2) <= set(u1), "U2 within U1")
    check(len(u2) >= T, f"|U2| = {len(u2)} < T")
    holders = {i: (graph[i] & set(u1)) | {i} for i in u2}
    for i in u2:
        check(len(holders[i]) >= t, f"client {i} has {len(holders[i])} holders < t = {t}")
    check(set(v["shares"]) == {str(i) for i in u2}, "shares exist exactly for U2")
    held: dict[int, dict[int, tuple[int, int]]] = {}
    for i in u2:
        pts = {int(x): (int(h["mask_key_share"], 16), int(h["self_mask_share"], 16))
               for x, h in v["shares"][str(i)].items()}
        # an honest server forwards i's shares to every neighbour in U2 and i keeps its own; a
        # client that dropped before stage 2 never opened them, every survivor did
        may = {h + 1 for h in (graph[i] & set(u2)) | {i}}
        must = {h + 1 for h in (graph[i] & set(v["survivors"])) | {i}}
        check(must <= set(pts) <= may, f"holders of client {i}'s shares")
        held[i] = pts
        for idx, secret_key in ((0, "mask_sk"), (1, "self_mask_seed")):
            col = {x: pts[x][idx] for x in pts}
            base = {x: col[x] for x in sorted(col)[:t]}  # t points define the polynomial
            check(lagrange_at(base, 0) == int(cl[i][secret_key], 16), f"{secret_key} of {i}")
            for x, y in col.items():
                check(lagrange_at(base, x) == y, f"share of {secret_key} of {i} at x = {x} is "
                      f"not on the degree-{t - 1} polynomial")
        commit = hashlib.sha256(COMMIT_DOMAIN + session + u64(rnd) + u32(i)
                                + bytes.fromhex(cl[i]["self_mask_seed"])).hexdigest()
        check(commit == v["self_mask_commitments"][str(i)], f"commitment of {i}")

    # masked_with: the peers whose shares each client in U2 received
    masked_with = {i: sorted(graph[i] & set(u2)) for i in u2}
    check({str(c): nb for c, nb in masked_with.items()} == v["masked_with"], "masked_with")
    for i in u2:
        check(len(masked_with[i]) + 1 >= t, f"client {i} holds shares of < t clients")

    # one sealed share: AES-256-GCM under k_ij with the v2 AAD (roster digest bound)
    ss = v["sealed_share"]
    snd, rcv = ss["sender"], ss["receiver"]
    check(rcv in graph[snd] and snd in u2 and rcv in u2, "sealed share between U2 neighbours")
    check(ss["binding"] == D.hex(), "AAD binding is the roster digest")
    key = hkdf_sha256(x25519(cl[snd]["cipher_sk"], cl[rcv]["cipher_pk"]),
                      pair_info("share", session, rnd, snd, rcv))
    check(key == hkdf_sha256(x25519(cl[rcv]["cipher_sk"], cl[snd]["cipher_pk"]),
                             pair_info("share", session, rnd, rcv, snd)), "share key symmetry")
    aad_v1 = (AEAD_ID + struct.pack(">H", 5) + b"share" + struct.pack(">H", 16) + session
              + u64(rnd) + u32(snd, rcv))
    aad = aad_v1 + struct.pack(">H", len(D)) + D
    check(aad.hex() == ss["aad"], "sealed share AAD")
    ct = bytes.fromhex(ss["ciphertext"])
    try:
        pt = AESGCM(key).decrypt(ct[:12], ct[12:], aad)
    except InvalidTag:
        raise Failed(f"sealed share {snd}->{rcv} fails AES-GCM under the v2 AAD") from None
    mk, sm = held[snd][rcv + 1]
    check(pt == u32(snd, rcv) + mk.to_bytes(66, "big") + sm.to_bytes(66, "big"),
          "sealed share plaintext")
    try:
        AESGCM(key).decrypt(ct[:12], ct[12:], aad_v1)
    except InvalidTag:
        pass
    else:
        raise Failed("the sealed share opens without the roster-digest binding")

    # pairwise seeds and their first words
    def pair_seed(i: int, j: int, sk_hex: str | None = None) -> bytes:
        return hkdf_sha256(x25519(sk_hex or cl[i]["mask_sk"], cl[j]["mask_pk"]),
                           pair_info("mask", session, rnd, i, j))

    expect_pairs = [(i, j) for i in u2 for j in masked_with[i] if i < j]
    check([(p["i"], p["j"]) for p in v["pairwise"]] == expect_pairs, "pairwise list")
    for p in v["pairwise"]:
        i, j = p["i"], p["j"]
        s = pair_seed(i, j)
        check(s == pair_seed(j, i), f"X25519 symmetry {i},{j}")
        check(s.hex() == p["mask_seed"], f"mask seed {i},{j}")
        check([int(w) for w in prg(s, 4)] == p["first_words"], f"first words {i},{j}")

    # masked inputs y_i = x_i + PRG(b_i) + sum_j sign(i, j) PRG(s_ij)   mod 2^b
    u3 = v["survivors"]
    check(u3 == sorted(set(u3)) and set(u3) <= set(u2), "U3 sorted, within U2")
    check(sorted(int(c) for c in v["masked_inputs_packed"]) == u3, "masked inputs = U3")
    w = (bits + 7) // 8
    ys = {}
    for c in u3:
        raw = np.frombuffer(bytes.fromhex(v["masked_inputs_packed"][str(c)]), dtype=np.uint8)
        check(raw.size == w * dim, f"packed length of {c}")
        full = np.zeros((dim, 4), dtype=np.uint8)
        full[:, :w] = raw.reshape(dim, w)
        y_c = full.view("<u4").reshape(dim).astype(np.uint64)
        exp = np.array(cl[c]["input"], dtype=np.uint64) + prg(bytes.fromhex(cl[c]["self_mask_seed"]),
                                                               dim)
        for j in masked_with[c]:
            mask = prg(pair_seed(c, j), dim) % np.uint64(mod)
            exp = exp + mask if c < j else exp + (np.uint64(mod) - mask)
        check(np.array_equal(exp % np.uint64(mod), y_c), f"masked input of {c}")
        ys[c] = y_c

    # survivors: client-side checks, consistency signatures
    check(len(u3) >= T, f"|U3| = {len(u3)} < T = {T}")
    for i in u3:
        unseen = (set(u3) & graph[i]) - set(masked_with[i])
        check(not unseen, f"view check: survivors {sorted(unseen)} never shared with {i}")
    signed = plan + D + bytes.fromhex(v["input_binding"]) + u32(len(u3), *u3)
    sigs = {int(c): bytes.fromhex(s) for c, s in v["consistency_signatures"].items()}
    check(set(sigs) == set(u3), "every member of U3 signed U3 (spec 2.6)")
    check(len(sigs) >= T, f"{len(sigs)} consistency signatures < T = {T}")
    for c, sig in sigs.items():
        ed25519_verify(cl[c]["identity_public"], sig, bound(CONSISTENCY_DOMAIN, session, rnd, signed),
                       f"consistency signature of {c} over (plan, D, U3)")
    dropped = sorted(set(u2) - set(u3))
    check(v["dropped"] == dropped, "dropped = U2 \\ U3")
    req = v["unmask_request"]
    check(req["alive"] == u3 and req["dropped"] == dropped and req["signers"] == sorted(sigs),
          "unmask request")

    # revealed shares: self-mask shares for survivors, mask-key shares for dropped peers the holder
    # masked with, never both kinds for one client
    revealed = {int(h): r for h, r in v["revealed"].items()}
    check(set(revealed) <= set(sigs), "only signers reveal")
    kinds: dict[int, set[str]] = {}
    self_pts: dict[int, dict[int, int]] = {i: {} for i in u3}
    key_pts: dict[int, dict[int, int]] = {j: {} for j in dropped}
    for h, r in revealed.items():
        owns = {i for i in u2 if h + 1 in held[i]}
        check({int(o) for o in r["self_mask"]} == owns & set(u3),
              f"holder {h} reveals self-mask shares for exactly the survivors it holds")
        check({int(o) for o in r["mask_key"]} == set(dropped) & set(masked_with[h]),
              f"holder {h} reveals mask-key shares for exactly the dropped peers it masked with")
        for kind, store, idx in (("self_mask", self_pts, 1), ("mask_key", key_pts, 0)):
            for o_s, share in r[kind].items():
                o = int(o_s)
                kinds.setdefault(o, set()).add(kind)
                check(int(share, 16) == held[o][h + 1][idx], f"revealed {kind} share {o}@{h}")
                store[o][h + 1] = int(share, 16)
    check(all(len(x) == 1 for x in kinds.values()), "both kinds revealed for one client")

    # the sum: directly, and by unmasking with secrets reconstructed (threshold t) from U5's shares
    direct = np.zeros(dim, np.uint64)
    for c in u3:
        direct = direct + np.array(cl[c]["input"], dtype=np.uint64)
    check([int(x) for x in direct % np.uint64(mod)] == v["sum"], "sum of survivors' inputs")
    acc = np.zeros(dim, np.uint64)
    for c in u3:
        acc = acc + ys[c]
    for i in u3:
        b = reconstruct(self_pts[i], t, f"self-mask seed of {i}")
        commit = hashlib.sha256(COMMIT_DOMAIN + session + u64(rnd) + u32(i) + b).hexdigest()
        check(commit == v["self_mask_commitments"][str(i)], f"reconstructed self mask of {i}")
        acc = acc + (np.uint64(mod) - prg(b, dim) % np.uint64(mod))
    for j in dropped:
        partners = [i for i in u3 if j in masked_with[i]]
        if not partners:
            continue
        sk = reconstruct(key_pts[j], t, f"mask key of dropped {j}")
        pk = X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()
        check(pk.hex() == cl[j]["mask_pk"], f"reconstructed mask key of {j}")
        for i in partners:
            mask = prg(pair_seed(j, i, sk_hex=sk.hex()), dim) % np.uint64(mod)
            acc = acc + (np.uint64(mod) - mask if i < j else mask)
    check([int(x) for x in acc % np.uint64(mod)] == v["sum"], "unmasked sum")


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((Path(__file__).parent / "vectors").glob("*.json"))
    if not paths:
        print("FAIL no vectors found")
        return 1
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
