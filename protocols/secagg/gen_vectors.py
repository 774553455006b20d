"""Generate SecAgg (protocol v2) test vectors by running the securefl implementation with seeded
randomness.

Each vector records every value a second implementation needs to re-derive a round (spec.md,
"Byte encodings"): the parameters with the federation's stated assumptions and what the bounds
guarantee for them, the application and protocol plan digests, the graph seed and the G(n, p)
graph, identity and ephemeral keys, advertise signatures, the roster digest, pairwise mask seeds
and their first mask words, Shamir shares, one sealed share with its associated data (roster digest
binding), self-mask commitments, masked inputs, the survivor set with every consistency signature,
the unmask request, the shares each holder revealed and the final sum. ``verify_vectors.py``
checks them without importing securefl.

Every case satisfies the bounds (SecAggConfig refuses a plan below them): T, k and t are derived
from the case's assumptions, never given.

Usage: python protocols/secagg/gen_vectors.py [--check]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from securefl.crypto.aead import AeadContext
from securefl.crypto.kdf import agree, derive_pair_key
from securefl.crypto.prg import expand_mask
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.protocol import messages as m
from securefl.protocol.secagg import (
    Assumptions,
    IdentityRoster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    plan_digest,
)
from securefl.transport.inprocess import InProcessDriver

OUT = Path(__file__).parent / "vectors"

#: the input binding signed with the survivor set (SecAggClient.input_binding: a deployment's
#: global-model digest); bytes 0xC0..0xDF
INPUT_BINDING = bytes(range(0xC0, 0xE0))
#: the application's plan digest (RoundSpec.plan_digest in securefl/protocol/plan.py: model digest,
#: clip, threshold, noise, FedAvg weights); any fixed non-zero 32 bytes serve for the vectors
APPLICATION_PLAN = bytes(range(0xA0, 0xC0))
SESSION = bytes.fromhex("00112233445566778899aabbccddeeff")
ROUND = 7

CASES: list[dict[str, Any]] = [
    {  # c = 0, no dropout tolerated beyond the default bound: T = floor(n / 2) + 1 = 3
        "name": "classic-n4-no-dropout",
        "n": 4,
        "dim": 8,
        "bits": 20,
        "assumptions": Assumptions(),
        "dropouts": {},
    },
    {  # T = t = 3: client 1 drops before masking (its mask key is reconstructed), 3 before unmask
        "name": "classic-n5-dropouts",
        "n": 5,
        "dim": 6,
        "bits": 32,
        "assumptions": Assumptions(),
        "dropouts": {1: "masked", 3: "unmask"},
    },
    {  # one colluder: 2T > n + c gives T = t = 4, one dropout tolerated
        "name": "classic-n5-c1-dropout",
        "n": 5,
        "dim": 4,
        "bits": 16,
        "assumptions": Assumptions(colluders=1),
        "dropouts": {4: "masked"},
    },
    {  # SecAgg+ on G(n, p): T = 27, k = 23, t = 2; three dropouts before the sum, one after
        "name": "plus-n30-dropouts",
        "n": 30,
        "dim": 3,
        "bits": 12,
        "assumptions": Assumptions(dropout_fraction=0.1),
        "dropouts": {3: "advertise", 8: "share", 21: "masked", 14: "unmask"},
    },
]


T = TypeVar("T")


def _of(seen: list[m.SecAggMessage], typ: type[T]) -> list[T]:
    return [msg for msg in seen if isinstance(msg, typ)]


def _assumptions(a: Assumptions) -> dict[str, Any]:
    return {
        "colluders": a.colluders,
        "dropout_fraction": a.dropout_fraction,
        "security_bits": a.security_bits,
        "alpha": a.alpha,
    }


def build(case: dict[str, Any]) -> dict[str, Any]:
    master = Secret(("vector/" + case["name"]).encode().ljust(32, b"\x00")[:32])
    ids = list(range(case["n"]))
    id_seeds = {c: SeededRandomSource(master, f"id/{c}").random_bytes(32) for c in ids}
    identities = {c: SigningKey.from_seed(Secret(s)) for c, s in id_seeds.items()}
    fed = IdentityRoster(SESSION, {c: k.verify_key for c, k in identities.items()})
    cfg = SecAggConfig.build(
        session_id=SESSION,
        round=ROUND,
        participants=ids,
        dim=case["dim"],
        bits=case["bits"],
        assumptions=case["assumptions"],
        plan_digest=APPLICATION_PLAN,
    )
    guarantee = cfg.guarantee
    mod = 1 << cfg.bits
    inputs = {
        c: (SeededRandomSource(master, f"x/{c}").uint64(cfg.dim) % np.uint64(mod)).astype(np.uint32)
        for c in ids
    }
    clients = {
        c: SecAggClient(
            cfg, fed, c, identities[c], inputs[c], SeededRandomSource(master, f"keys/{c}"),
            input_binding=INPUT_BINDING,
        )
        for c in ids
    }
    server = SecAggServer(cfg, fed, input_binding=INPUT_BINDING)
    seen: list[m.SecAggMessage] = []

    def record(stage: str, sender: int, to: int, data: bytes) -> bytes:
        seen.append(m.decode_message(data))
        return data

    result = InProcessDriver(server, clients, dropouts=case["dropouts"], tamper=record).run()
    graph = server._graph
    masked_with = server._masked_with
    roster = _of(seen, m.KeyRoster)[0]
    digest = server._digest
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
                    session_id=SESSION,
                    round_=ROUND,
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
    aad = AeadContext(SESSION, ROUND, sealed.sender, first.peer, binding=digest)
    masked = {str(msg.sender): msg.data.hex() for msg in _of(seen, m.MaskedInput)}
    consistency = {str(s.sender): s.signature.hex() for s in _of(seen, m.ConsistencySignature)}
    requests = _of(seen, m.UnmaskRequest)
    if any(r != requests[0] for r in requests):
        raise SystemExit("the honest server sent different unmask requests")
    request = requests[0]
    revealed: dict[str, Any] = {}
    for u in _of(seen, m.UnmaskShares):
        revealed[str(u.sender)] = {
            "self_mask": {str(r.owner): r.share.hex() for r in u.self_mask_shares},
            "mask_key": {str(r.owner): r.share.hex() for r in u.mask_key_shares},
        }
    return {
        "description": "SecAgg v2 round generated by protocols/secagg/gen_vectors.py; see spec.md",
        "name": case["name"],
        "params": {
            "session_id": SESSION.hex(),
            "round": ROUND,
            "participants": list(cfg.participants),
            "threshold": cfg.threshold,
            "degree": cfg.degree,
            "neighbour_threshold": cfg.neighbour_threshold,
            "dim": cfg.dim,
            "bits": cfg.bits,
            "assumptions": _assumptions(cfg.assumptions),
        },
        "guarantee": {
            "min_honest_sum": guarantee.min_honest_sum,
            "dropouts_tolerated": guarantee.dropouts_tolerated,
            "log2_failure": (
                None if math.isinf(guarantee.log2_failure) else round(guarantee.log2_failure, 6)
            ),
        },
        "application_plan_digest": APPLICATION_PLAN.hex(),
        "input_binding": INPUT_BINDING.hex(),
        "plan_digest": plan_digest(cfg).hex(),
        "graph_seed": cfg.graph_seed.hex(),
        "graph": {str(c): sorted(nb) for c, nb in sorted(graph.items())},
        "dropouts": {str(k): v for k, v in case["dropouts"].items()},
        "clients": out_clients,
        "roster": [e.sender for e in roster.entries],
        "roster_digest": digest.hex(),
        "masked_with": {str(c): sorted(v) for c, v in sorted(masked_with.items())},
        "pairwise": pairs,
        "shares": shares,
        "sealed_share": {
            "sender": sealed.sender,
            "receiver": first.peer,
            "binding": digest.hex(),
            "aad": aad.encode().hex(),
            "ciphertext": first.ciphertext.hex(),
        },
        "self_mask_commitments": {
            str(c): msg.self_mask_commitment.hex() for c, msg in sorted(server._share_msgs.items())
        },
        "masked_inputs_packed": masked,
        "survivors": list(result.survivors),
        "consistency_signatures": consistency,
        "unmask_request": {
            "alive": list(request.alive),
            "dropped": list(request.dropped),
            "signers": [s.sender for s in request.signatures],
        },
        "revealed": revealed,
        "dropped": sorted(set(server._share_msgs) - set(result.survivors)),
        "sum": [int(v) for v in result.field_sum],
    }


def render(case: dict[str, Any]) -> str:
    return json.dumps(build(case), indent=1, sort_keys=True) + "\n"


def main() -> int:
    check = "--check" in sys.argv
    bad = 0
    names = {f"{case['name']}.json" for case in CASES}
    stale = sorted(p for p in OUT.glob("*.json") if p.name not in names)
    for path in stale:
        if check:
            print(f"{path} is not generated by any case (stale vector)")
            bad += 1
        else:
            path.unlink()
            print(f"removed stale {path}")
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
