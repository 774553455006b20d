"""Property tests: random dropouts at every stage, and a hostile server tampering with any field."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.aggregators.ckks import CKKSAggregator
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import AggregationAbortedError, SecureFLError
from securefl.he.context import generate_context
from securefl.he.flooding import release_error_bound
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol.ckks import (
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    accept_public_context,
)
from securefl.protocol.ckks_messages import ContributionEntry, DecryptionRequest
from securefl.protocol.plan import RoundSpec

D = 64
ROUNDS = itertools.count()
STAGES = st.sampled_from([None, "contribution", "reveal", "verification"])


def _rf(cid: int, purpose: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x09" * 32), f"{cid}/{purpose}")


@pytest.fixture(scope="module")
def agg():
    # every contributor may verify (skips >= n): which ones are drawn is tested in test_ckks_protocol
    return CKKSAggregator(verifiers=2, verifier_skips=6)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(2, 6), threshold=st.integers(1, 6), data=st.data())
def test_random_dropouts(agg, n, threshold, data):
    threshold = min(threshold, n)
    stages = [data.draw(STAGES) for _ in range(n)]
    dropouts = {i: s for i, s in enumerate(stages) if s is not None}
    rng = np.random.default_rng(n * 7 + threshold)
    inputs = {i: (lambda v: 0.5 * v / np.linalg.norm(v))(rng.normal(size=D)) for i in range(n)}
    rnd = next(ROUNDS)  # a fresh round: the key holder decrypts each round once
    spec = RoundSpec(
        session_id=b"P" * 16,
        round=rnd,
        participants=tuple(range(n)),
        clip_norm=1.0,
        threshold=threshold,
    )
    contributors = [i for i in range(n) if stages[i] in (None, "verification")]
    verifiers = [i for i in contributors if stages[i] is None]
    if len(contributors) < threshold or len(verifiers) < 2:
        with pytest.raises(AggregationAbortedError):
            agg.aggregate(spec, inputs, random=_rf, dropouts=dropouts)
        return
    out = agg.aggregate(spec, inputs, random=_rf, dropouts=dropouts)
    assert list(out.survivors) == contributors
    exact = np.sum([inputs[i] for i in contributors], axis=0)
    bound = release_error_bound(len(contributors), 8192, DEFAULT_PARAMS.scale, D)
    assert np.max(np.abs(out.total - exact)) <= bound


@pytest.fixture(scope="module")
def honest_request():
    session = b"Q" * 16
    keys = {i: SigningKey.from_seed(Secret(bytes([40 + i]) * 32)) for i in range(4)}
    fed = {i: k.verify_key for i, k in keys.items()}
    secret = generate_context(DEFAULT_PARAMS)
    hk = SigningKey.from_seed(Secret(b"\x31" * 32))
    sk = SigningKey.from_seed(Secret(b"\x32" * 32))
    holder = CKKSKeyHolder(hk, secret, fed, min_clients=3, verifiers=2, server_key=sk.verify_key)
    public = accept_public_context(
        holder.public_context_message(), holder.verify_key, DEFAULT_PARAMS
    )
    server = CKKSServer(
        public,
        fed,
        sk,
        session_id=session,
        round_=1,
        num_values=D,
        participants=(0, 1, 2, 3),
        min_clients=3,
    )
    clients = {i: CKKSClient(i, keys[i], public, sk.verify_key) for i in range(4)}
    for i, c in clients.items():
        server.receive_commitment(
            c.commit(
                session_id=session,
                round_=1,
                values=np.full(D, 0.1),
                clip_norm=1.0,
                num_participants=4,
                noise_std=0.0,
                plan_digest=bytes(32), random=_rf(i, "noise"),
            )
        )
    cset = server.close_commitments()
    for c in clients.values():
        server.receive_contribution(c.reveal(cset))
    server.close()
    req = server.verify_request()
    for v in server.verifier_ranking()[:2]:
        server.receive_cosignature(
            CKKSVerifier(v, keys[v], public, fed, sk.verify_key, min_clients=3).verify(
                req,
                session_id=session,
                round_=1,
                revealed_under=clients[v].revealed_under[(session, 1)],
            )
        )
    return (hk, secret, fed, sk.verify_key), server.decryption_request()


def _tamper(req: DecryptionRequest, what: str, k: int) -> DecryptionRequest:
    m = req.manifest
    rep = msgspec.structs.replace
    if what == "aggregate_byte":
        chunk = bytearray(req.aggregate[0])
        chunk[k % len(chunk)] ^= 0x01
        return rep(req, aggregate=[bytes(chunk)])
    if what == "round":
        return rep(req, manifest=rep(m, round=m.round + 1 + k))
    if what == "num_values":
        return rep(req, manifest=rep(m, num_values=m.num_values + 1))
    if what == "drop_entry":
        return rep(req, manifest=rep(m, entries=m.entries[: k % 4] + m.entries[k % 4 + 1 :]))
    if what == "entry_digest":
        e = m.entries[k % 4]
        bad = ContributionEntry(client_id=e.client_id, digest=bytes(32), signature=e.signature)
        entries = list(m.entries)
        entries[k % 4] = bad
        return rep(req, manifest=rep(m, entries=entries))
    if what == "cosig_byte":
        cs = req.cosignatures[k % 2]
        sig = bytearray(cs.signature)
        sig[k % 64] ^= 0x80
        css = list(req.cosignatures)
        css[k % 2] = rep(cs, signature=bytes(sig))
        return rep(req, cosignatures=css)
    if what == "set_entry":  # the server drops a commitment from the closed set afterwards
        cset = m.commitment_set
        entries = cset.entries[: k % 4] + cset.entries[k % 4 + 1 :]
        return rep(req, manifest=rep(m, commitment_set=rep(cset, entries=entries)))
    if what == "set_signature":
        sig = bytearray(m.commitment_set.signature)
        sig[k % 64] ^= 0x04
        return rep(req, manifest=rep(m, commitment_set=rep(m.commitment_set, signature=bytes(sig))))
    if what == "cosig_verifier":
        css = list(req.cosignatures)
        css[k % 2] = rep(css[k % 2], verifier_id=(css[k % 2].verifier_id + 1 + k % 3) % 4)
        return rep(req, cosignatures=css)
    raise AssertionError(what)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    what=st.sampled_from(
        [
            "aggregate_byte",
            "round",
            "num_values",
            "drop_entry",
            "entry_digest",
            "cosig_byte",
            "cosig_verifier",
            "set_entry",
            "set_signature",
        ]
    ),
    k=st.integers(0, 10_000),
)
def test_hostile_server_any_tampering_is_refused(honest_request, what, k):
    (hk, secret, fed, server_key), req = honest_request
    holder = CKKSKeyHolder(hk, secret, fed, min_clients=3, verifiers=2, server_key=server_key)
    with pytest.raises(SecureFLError):
        holder.decrypt(_tamper(req, what, k), _rf(-1, "flood"))
    assert holder.queries_used == 0  # nothing decrypted
    holder.decrypt(req, _rf(-1, "flood"))  # the untampered request still works afterwards
