"""Red team s8b (rt7): a re-check of the S8-1 fix (every CKKS commitment signs the bank's
round-plan digest: RoundSpec.plan_digest() -- model digest, Hello digest, clip, T, noise plan,
weights -- and the SHA-256 of the signed round-plan body; banks reveal, verifiers co-sign and
the key holder decrypts only a set naming one digest).

What was checked (see the report): every field a CKKS deployment bank reads to size its input or
noise share -- RoundStart's clip_norm, noise_multiplier, min_survivors, threshold, weights, dim,
precision_bits, degree, participants, stats_ranges/stats_groups, target_scale_log2 (all in the
signed RoundStart body, hashed whole), the Hello's training plan and stats noise multiplier (Hello
digest, also the round key's binding) and the GlobalModel's weights, moments_total and
target_scale_log2 (the SHA-256 of the signed GlobalModel body, the spec's model digest) -- is
covered; the Flower bank signs the one FlowerPlan body the workflow signs for all banks (model
and fit-config digests inside). The regression test below exercises the one field the digest
covers only through the model digest: the train-round standardisation moments
(GlobalModel.moments_total). It PASSES on the code under review (the fix holds); it is kept as a
guard so that a later change computing the digest from another copy of the plan (e.g. the
RoundStart's own moments_total, which the bank does not train with) is caught.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from deploy_helpers import SERVER, Fed, make_federation

from securefl.crypto.signing import SigningKey, sign_bound
from securefl.deploy.ckks import KeyHolderNode
from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.messages import MODEL_DOMAIN, GlobalModel, Signed, decode_server
from securefl.deploy.server import DeployServer, ServerSettings
from securefl.errors import AggregationAbortedError, SecureFLError
from securefl.protocol import wire
from securefl.transport.flower import Envelope

KH_NODE = 99
#: the factor the malicious server scales the non-victims' sums of squares by (their standardised
#: features shrink by ~1e6: their updates carry ~nothing while the victim's is full size)
INFLATE = 1e12


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    return make_federation(tmp_path_factory.mktemp("fed"), {"rounds": 1, "seed": 3,
                                                            "aggregation": "ckks"})


def _inflated(f: Fed, signed: Signed, session: bytes) -> Signed:
    """The malicious server's own GlobalModel for one bank: the honest one with the sums of
    squares of round 0's released moments ([n, sums, sums of squares]) inflated, re-signed with the
    server's manifest key for (session, round) (a bank cannot tell: it sees round 0's release only
    through the signed model)."""
    gm: GlobalModel = wire.decode(signed.body, GlobalModel)
    m = np.asarray(gm.moments_total, dtype=np.float64)
    d = (m.size - 1) // 2
    m[1 + d:1 + 2 * d] *= INFLATE
    body = wire.encode(msgspec.structs.replace(gm, moments_total=[float(v) for v in m]))
    key = SigningKey.from_pem(f.keys[SERVER].read_bytes())
    return Signed(body=body, signature=sign_bound(key, domain=MODEL_DOMAIN, session_id=session,
                                                  round_=gm.round, message=body))


class ModelTailoring:
    """A bank's node behind the malicious server: its GlobalModel is replaced by ``_inflated``'s
    when ``tailor`` (every bank but the victim). Keeps the moments each bank accepted."""

    def __init__(self, f: Fed, node: Any, tailor: bool) -> None:
        self.f, self.node, self.member, self.tailor = f, node, node.member, tailor
        self.moments: dict[int, list[float]] = {}

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        msg = decode_server(env.payload)
        if msg.model is not None:
            signed = _inflated(self.f, msg.model, env.session) if self.tailor else msg.model
            if self.tailor:
                msg = msgspec.structs.replace(msg, model=signed)
                env = msgspec.structs.replace(env, payload=wire.encode(msg))
            gm: GlobalModel = wire.decode(signed.body, GlobalModel)
            self.moments[gm.round] = list(gm.moments_total)
        out: tuple[bytes, bytes] = self.node.handle(env, state)
        return out


def _released_rounds(usage: Path) -> set[int]:
    return {int(r) for _, r in json.loads(usage.read_text())["decrypted"]}


def test_s8b_banks_given_different_standardisation_moments_release_nothing(
        fed: Fed, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server signs every bank but the victim a round-1 GlobalModel whose moments_total
    standardises its rows to ~0 (its update carries ~nothing; the victim's is full size). The
    moments are not in the RoundStart; they reach the round-plan digest only through the model
    digest (SHA-256 of the signed GlobalModel body). Secure behaviour: the commitment set names two
    plans, every bank refuses to reveal (SFL309) and round 1 is not released. PASSES today."""
    victim = 1
    srv = DeployServer(ServerSettings.load(fed.server_file(tmp_path / "run")))
    usage = tmp_path / "usage.json"
    nodes: dict[int, Any] = {
        i: ModelTailoring(fed, BankNode.from_node_config(
            {**fed.node_config(b, sim_seed=None), "state-dir": str(tmp_path / "banks" / b)}),
            tailor=i != victim)
        for i, b in enumerate(fed.banks)}
    nodes[KH_NODE] = KeyHolderNode.from_node_config(
        {**fed.key_holder_config(sim_seed=None), "usage-file": str(usage),
         "state-dir": str(tmp_path / "kh")})
    link = LocalLink(nodes, srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"):
        try:
            srv.run(link, link.names())
            outcome = "finished"
        except (AggregationAbortedError, SecureFLError) as exc:
            outcome = f"aborted: {exc}"
    banks = {i: n for i, n in nodes.items() if i != KH_NODE}
    # the premise: every bank accepted a round-1 model, the others' moments differ
    assert all(1 in n.moments for n in banks.values()), outcome
    assert all(n.moments[1] != banks[victim].moments[1] for i, n in banks.items() if i != victim)
    assert 0 in _released_rounds(usage)
    assert 1 not in _released_rounds(usage), outcome
    assert "stage reveal: SFL309" in caplog.text, outcome


def test_s8b_every_round_start_field_and_the_model_enter_the_bank_plan_digest(fed: Fed) -> None:
    """Field coverage of the digest a deployment (and Flower) bank signs: changing any field of
    the signed RoundStart a CKKS bank reads (clip, z, T, min_survivors, participants, weights,
    dim, precision, degree, stats ranges and groups, target scale, moments_total), the Hello
    digest or the signed model's digest changes :func:`bank_plan_digest`, and the digest is that
    of the RoundStart the bank acts on (its signed body). PASSES today (guard)."""
    from securefl.deploy.ckks import bank_plan_digest
    from securefl.deploy.messages import RoundStart
    from securefl.federation import load_manifest, verify_manifest

    f = verify_manifest(load_manifest(fed.manifest))
    banks = list(f.clients)
    base = RoundStart(session=bytes(range(16)), round=1, task="train", participants=banks,
                      threshold=len(banks), clip_norm=1.0, noise_multiplier=1.0,
                      min_survivors=len(banks), degree=None, precision_bits=20, dim=10,
                      weights={b: 1.0 for b in banks})
    hello, model = bytes([1]) * 32, bytes([2]) * 32

    def digest(start: RoundStart, h: bytes = hello, m: bytes = model) -> bytes:
        return bank_plan_digest(f, h, start, wire.encode(start), m)

    ref = digest(base)
    changes: dict[str, Any] = {
        "clip_norm": 1e-6, "noise_multiplier": 2.0, "threshold": len(banks) - 1,
        "min_survivors": len(banks) - 1, "participants": banks[:-1],
        "weights": {**{b: 1.0 for b in banks}, banks[0]: 0.5}, "dim": 11,
        "precision_bits": 21, "degree": 2, "stats_ranges": [(0.0, 1.0)],
        "stats_groups": [[0]], "target_scale_log2": 3, "moments_total": [1.0, 2.0, 3.0]}
    same = [k for k, v in changes.items()
            if digest(msgspec.structs.replace(
                base, **({k: v, "weights": {b: 1.0 for b in banks[:-1]},
                          "threshold": len(banks) - 1, "min_survivors": len(banks) - 1}
                         if k == "participants" else {k: v}))) == digest(msgspec.structs.replace(
                base, **({"threshold": len(banks) - 1, "min_survivors": len(banks) - 1}
                         if k == "participants" else {})))]
    assert same == [], f"RoundStart fields outside the bank's round-plan digest: {same}"
    assert digest(base, h=bytes(32)) != ref, "the Hello digest is outside the round-plan digest"
    assert digest(base, m=bytes(32)) != ref, "the model digest is outside the round-plan digest"


# --- a bank checks every entry's signature before it reveals (rt7's informational note 1) ---------
def test_s8b_a_bank_reveals_only_under_a_set_whose_every_entry_is_signed(tmp_path: Path) -> None:
    """rt7 noted that a CKKS bank, at reveal, compared the plan digests the other entries name but
    not their signatures: a server that gave bank b1 another plan (here a clip norm shrunk 1e-6
    times) could rewrite b1's entry to name b0's plan digest, re-sign the set with its own key, and
    b0 would reveal (the key holder and the verifiers would refuse the set later). b0 now checks
    every entry's signature first and reveals nothing; the honest set (control) is revealed."""
    from deploy_helpers import identity_keys, signed_federation

    from securefl.deploy.ckks import bank_commit, bank_step, federation_keys
    from securefl.deploy.messages import RoundStart
    from securefl.federation import ProtocolParams
    from securefl.he.params import DEFAULT_PARAMS
    from securefl.protocol.ckks import (
        DOMAIN_COMMITMENT_SET,
        CKKSKeyHolder,
        CKKSServer,
        accept_public_context,
        commitment_set_digest,
    )
    from securefl.protocol.ckks_messages import Commitment

    banks = ["b0", "b1", "b2"]
    keys = identity_keys(banks)
    fed = signed_federation(banks, keys, ProtocolParams(aggregation="ckks", threshold=2,
                                                        noise_multiplier=0.0))
    session, dim, hello = b"\x05" * 16, 7, bytes([9]) * 32  # dim + 1 slots: the FedAvg weight
    holder = CKKSKeyHolder(keys["kh"], None, federation_keys(fed), min_clients=2, verifiers=2,
                           server_key=keys["agg"].verify_key, params=DEFAULT_PARAMS)
    signed = holder.round_context(session, 1, hello)
    context = wire.encode(signed)
    public = accept_public_context(signed, keys["kh"].verify_key, DEFAULT_PARAMS,
                                   session_id=session, round_=1)
    start = RoundStart(session=session, round=1, task="train", participants=banks, threshold=2,
                       clip_norm=1.0, noise_multiplier=0.0, min_survivors=2, degree=None,
                       precision_bits=16, dim=dim, weights={b: 1.0 for b in banks})
    tailored = msgspec.structs.replace(start, clip_norm=1e-6)  # the plan the server signed b1 alone

    def commit_all(plans: dict[str, RoundStart]) -> tuple[dict[str, bytes], Any]:
        server = CKKSServer(public, federation_keys(fed), keys["agg"], session_id=session,
                            round_=1, num_values=dim + 1, participants=(0, 1, 2), min_clients=2,
                            verifiers=2)
        states = {}
        for b in banks:
            states[b], item = bank_commit(fed=fed, identity=keys[b], member=b, context=context,
                                          hello=hello, start=plans[b], values=np.zeros(dim),
                                          sim_seed=0, signed_plan=wire.encode(plans[b]))
            server.receive_commitment(wire.decode(item.data, Commitment))
        return states, server.close_commitments()

    def reveal_b0(states: dict[str, bytes], cset: Any) -> Any:
        return bank_step(fed=fed, identity=keys["b0"], member="b0", context=context, hello=hello,
                         start=start, state=states["b0"], data=wire.encode(cset), verifiers=2,
                         verifier_skips=1)

    # control: one plan for every bank, the set as the server closed it: b0 reveals
    states, honest = commit_all({b: start for b in banks})
    _, out = reveal_b0(states, honest)
    assert len(out) == 1

    # attack: b1 committed under the tailored plan; the server rewrites b1's entry to name b0's
    # plan digest and re-signs the set
    states, cset = commit_all({"b0": start, "b1": tailored, "b2": start})
    entries = list(cset.entries)
    assert entries[1].plan_digest != entries[0].plan_digest  # the plans really differ
    entries[1] = msgspec.structs.replace(entries[1], plan_digest=entries[0].plan_digest)
    forged = msgspec.structs.replace(cset, entries=entries, signature=bytes(64))
    sig = sign_bound(keys["agg"], domain=DOMAIN_COMMITMENT_SET, session_id=session, round_=1,
                     message=commitment_set_digest(forged))
    forged = msgspec.structs.replace(forged, signature=sig)
    with pytest.raises(SecureFLError):
        reveal_b0(states, forged)
