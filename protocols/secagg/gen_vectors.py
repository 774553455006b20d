"""Generate SecAgg test vectors by running the securefl implementation with seeded randomness.

Each vector records every value a second implementation needs to re-derive: identity and ephemeral
keys, signatures, the roster digest and graph, pairwise mask seeds and first mask words, Shamir
shares, one sealed share, masked inputs and the final sum. ``verify_vectors.py`` checks them without
importing securefl.protocol.

Usage: python protocols/secagg/gen_vectors.py [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from securefl.crypto.kdf import agree, derive_pair_key
from securefl.crypto.prg import expand_mask
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.protocol import messages as m
from securefl.protocol.secagg import Federation, SecAggClient, SecAggConfig, SecAggServer
from securefl.transport.inprocess import InProcessDriver

OUT = Path(__file__).parent / "vectors"

CASES: list[dict[str, Any]] = [
    {
        "name": "classic-n4-no-dropout",
        "n": 4,
        "dim": 8,
        "bits": 20,
        "threshold": 3,
        "degree": 3,
        "neighbour_threshold": 3,
        "dropouts": {},
    },
    {
        "name": "classic-n5-dropouts",
        "n": 5,
        "dim": 6,
        "bits": 32,
        "threshold": 3,
        "degree": 4,
        "neighbour_threshold": 3,
        "dropouts": {1: "masked", 3: "unmask"},
    },
    {
        "name": "plus-n8-k4-dropouts",
        "n": 8,
        "dim": 5,
        "bits": 11,
        "threshold": 4,
        "degree": 4,
        "neighbour_threshold": 3,
        "dropouts": {2: "masked", 5: "share", 7: "unmask"},
    },
]


T = TypeVar("T")


def _of(seen: list[m.SecAggMessage], typ: type[T]) -> list[T]:
    return [msg for msg in seen if isinstance(msg, typ)]


def build(case: dict[str, Any]) -> dict[str, Any]:
    master = Secret(("vector/" + case["name"]).encode().ljust(32, b"\x00")[:32])
    session = bytes.fromhex("00112233445566778899aabbccddeeff")
    round_ = 7
    ids = list(range(case["n"]))
    id_seeds = {c: SeededRandomSource(master, f"id/{c}").random_bytes(32) for c in ids}
    identities = {c: SigningKey.from_seed(Secret(s)) for c, s in id_seeds.items()}
    fed = Federation(session, {c: k.verify_key for c, k in identities.items()})
    cfg = SecAggConfig(
        session_id=session,
        round=round_,
        participants=tuple(ids),
        threshold=case["threshold"],
        degree=case["degree"],
        neighbour_threshold=case["neighbour_threshold"],
        dim=case["dim"],
        bits=case["bits"],
    )
    mod = 1 << cfg.bits
    inputs = {
        c: (SeededRandomSource(master, f"x/{c}").uint64(cfg.dim) % np.uint64(mod)).astype(np.uint32)
        for c in ids
    }
    clients = {
        c: SecAggClient(
            cfg, fed, c, identities[c], inputs[c], SeededRandomSource(master, f"keys/{c}")
        )
        for c in ids
    }
    server = SecAggServer(cfg, fed)
    seen: list[m.SecAggMessage] = []

    def record(stage: str, sender: int, to: int, data: bytes) -> bytes:
        seen.append(m.decode_message(data))
        return data

    result = InProcessDriver(server, clients, dropouts=case["dropouts"], tamper=record).run()
    graph = server._graph
    masked_with = server._masked_with
    out_clients: dict[str, Any] = {}
    for c in ids:
        cl = clients[c]
        entry: dict[str, Any] = {
            "identity_seed": id_seeds[c].hex(),
            "identity_public": identities[c].verify_key.raw.hex(),
            "input": [int(v) for v in inputs[c]],
        }
        if cl._cipher is not None and cl._mask is not None:
            entry |= {
                "cipher_sk": cl._cipher.private.expose().hex(),
                "cipher_pk": cl._cipher.public.hex(),
                "mask_sk": cl._mask.private.expose().hex(),
                "mask_pk": cl._mask.public.hex(),
            }
        if cl._self_seed is not None:
            entry["self_mask_seed"] = cl._self_seed.expose().hex()
        out_clients[str(c)] = entry
    roster = _of(seen, m.KeyRoster)[0]
    for e in roster.entries:
        out_clients[str(e.sender)]["advertise_signature"] = e.signature.hex()
    pairs = []
    for i in sorted(graph):
        for j in sorted(graph[i]):
            if i < j and i in server._share_msgs and j in server._share_msgs:
                mask_i, mask_j = clients[i]._mask, clients[j]._mask
                if mask_i is None or mask_j is None:
                    raise SystemExit("a client in U2 has no mask key")
                seed = derive_pair_key(
                    agree(mask_i.private, mask_j.public),
                    purpose="mask",
                    session_id=session,
                    round_=round_,
                    i=i,
                    j=j,
                )
                pairs.append(
                    {
                        "i": i,
                        "j": j,
                        "mask_seed": seed.expose().hex(),
                        "first_words": [int(w) for w in expand_mask(seed, 4)],
                    }
                )
    shares: dict[str, Any] = {}
    for holder in ids:
        for owner, held in clients[holder]._held.items():
            shares.setdefault(str(owner), {})[str(holder + 1)] = {
                "mask_key_share": hex(held.key_share),
                "self_mask_share": hex(held.mask_share),
            }
    # one sealed share whose receiver opened it (so the verifier can compare with its shares)
    sealed, first = next(
        (msg, sh)
        for msg in _of(seen, m.ShareKeys)
        for sh in msg.shares
        if str(sh.peer + 1) in shares.get(str(msg.sender), {})
    )
    masked = {str(msg.sender): msg.data.hex() for msg in _of(seen, m.MaskedInput)}
    return {
        "description": "SecAgg round generated by protocols/secagg/gen_vectors.py; see spec.md",
        "name": case["name"],
        "params": {
            "session_id": session.hex(),
            "round": round_,
            "participants": ids,
            "threshold": cfg.threshold,
            "degree": cfg.degree,
            "neighbour_threshold": cfg.neighbour_threshold,
            "dim": cfg.dim,
            "bits": cfg.bits,
        },
        "dropouts": {str(k): v for k, v in case["dropouts"].items()},
        "clients": out_clients,
        "roster_digest": server._digest.hex(),
        "graph": {str(c): sorted(nb) for c, nb in sorted(graph.items())},
        "masked_with": {str(c): sorted(v) for c, v in sorted(masked_with.items())},
        "pairwise": pairs,
        "shares": shares,
        "sealed_share": {
            "sender": sealed.sender,
            "receiver": first.peer,
            "ciphertext": first.ciphertext.hex(),
        },
        "self_mask_commitments": {
            str(c): msg.self_mask_commitment.hex() for c, msg in sorted(server._share_msgs.items())
        },
        "masked_inputs_packed": masked,
        "survivors": list(result.survivors),
        "dropped": sorted(set(server._share_msgs) - set(result.survivors)),
        "sum": [int(v) for v in result.field_sum],
    }


def render(case: dict[str, Any]) -> str:
    return json.dumps(build(case), indent=1, sort_keys=True) + "\n"


def main() -> int:
    check = "--check" in sys.argv
    bad = 0
    for case in CASES:
        path = OUT / f"{case['name']}.json"
        text = render(case)
        if check:
            if not path.exists() or path.read_text() != text:
                print(f"{path} differs from what the package generates")
                bad += 1
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
