"""CKKS protocol roles: the honest flow and every attack that must fail loudly."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import (
    AggregationAbortedError,
    IntegrityError,
    MessageError,
    OverflowRiskError,
    RemoteProtocolError,
    SignatureError,
)
from securefl.he.context import generate_context
from securefl.he.errors import SecretKeyExposureError
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol import wire
from securefl.protocol.ckks import (
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    DecryptionRefusedError,
    accept_public_context,
)
from securefl.protocol.ckks_messages import (
    Contribution,
    ContributionEntry,
    DecryptionRequest,
    Manifest,
    SignedPublicContext,
)

SESSION = bytes(range(16))
D = 300
IDS = (1, 2, 3, 4)


def _rand(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x07" * 32), label)


@pytest.fixture(scope="module")
def world():
    secret = generate_context(DEFAULT_PARAMS)
    keys = {i: SigningKey.from_seed(Secret(bytes([i]) * 32)) for i in IDS}
    fed = {i: k.verify_key for i, k in keys.items()}
    holder_key = SigningKey.from_seed(Secret(b"\xaa" * 32))
    holder = CKKSKeyHolder(holder_key, secret, fed, min_clients=3, verifiers=2)
    public = accept_public_context(
        holder.public_context_message(), holder.verify_key, DEFAULT_PARAMS
    )
    rng = np.random.default_rng(5)
    inputs = {}
    for i in IDS:
        v = rng.normal(size=D)
        inputs[i] = 0.8 * v / np.linalg.norm(v)
    return {
        "secret": secret,
        "keys": keys,
        "fed": fed,
        "holder_key": holder_key,
        "public": public,
        "inputs": inputs,
    }


def _holder(world, **kw):
    args = {"min_clients": 3, "verifiers": 2} | kw
    return CKKSKeyHolder(world["holder_key"], world["secret"], world["fed"], **args)


def _run_to_request(world, round_=0, ids=IDS):
    server = CKKSServer(
        world["public"],
        world["fed"],
        session_id=SESSION,
        round_=round_,
        num_values=D,
        participants=IDS,
        min_clients=3,
        verifiers=2,
    )
    contribs = {}
    for i in ids:
        c = CKKSClient(i, world["keys"][i], world["public"]).contribute(
            session_id=SESSION,
            round_=round_,
            values=world["inputs"][i],
            clip_norm=1.0,
            num_participants=len(IDS),
            noise_std=0.0,
            random=_rand(f"{i}"),
        )
        contribs[i] = c
        server.receive_contribution(wire.decode(wire.encode(c), Contribution))
    server.close()
    req = server.verify_request()
    for vid in ids[:2]:
        v = CKKSVerifier(vid, world["keys"][vid], world["public"], world["fed"], min_clients=3)
        server.receive_cosignature(v.verify(req, session_id=SESSION, round_=round_))
    return server, server.decryption_request(), contribs


def test_honest_round_releases_the_sum(world):
    server, dreq, _ = _run_to_request(world)
    holder = _holder(world)
    res = holder.decrypt(wire.decode(wire.encode(dreq), DecryptionRequest), _rand("flood"))
    total = server.receive_result(res, holder.verify_key)
    exact = sum(world["inputs"][i] for i in IDS)
    assert np.max(np.abs(total - exact)) < 1e-4
    assert np.max(np.abs(total - exact)) > 0  # flooding noise is really there
    assert np.allclose(total / res.grid, np.round(total / res.grid))  # rounded to the grid


def test_second_decryption_for_the_same_round_refused(world):
    _, dreq, _ = _run_to_request(world)
    holder = _holder(world)
    holder.decrypt(dreq, _rand("f1"))
    with pytest.raises(DecryptionRefusedError, match="already decrypted"):
        holder.decrypt(dreq, _rand("f2"))


def test_single_ciphertext_in_place_of_aggregate_refused(world):
    _, dreq, contribs = _run_to_request(world)
    swapped = msgspec.structs.replace(dreq, aggregate=contribs[1].chunks)
    with pytest.raises(DecryptionRefusedError, match="digest"):
        _holder(world).decrypt(swapped, _rand("f"))
    # the server also rewrites the manifest's aggregate digest: the co-signatures no longer match
    m = msgspec.structs.replace(
        dreq.manifest,
        aggregate_digest=__import__("securefl.he.vectors", fromlist=["x"]).ciphertext_digest(
            contribs[1].chunks
        ),
    )
    forged = msgspec.structs.replace(dreq, manifest=m, aggregate=contribs[1].chunks)
    with pytest.raises(DecryptionRefusedError, match="another manifest"):
        _holder(world).decrypt(forged, _rand("f"))


def test_verifier_refuses_to_cosign_a_wrong_sum(world):
    server, _, contribs = _run_to_request(world)
    req = server.verify_request()
    from securefl.he.vectors import ciphertext_digest

    bad = msgspec.structs.replace(
        req,
        manifest=msgspec.structs.replace(
            req.manifest, aggregate_digest=ciphertext_digest(contribs[1].chunks)
        ),
    )
    v = CKKSVerifier(1, world["keys"][1], world["public"], world["fed"], min_clients=3)
    with pytest.raises(IntegrityError):
        v.verify(bad, session_id=SESSION, round_=0)


def test_missing_cosignatures_refused(world):
    _, dreq, _ = _run_to_request(world)
    with pytest.raises(DecryptionRefusedError, match="co-signatures"):
        _holder(world).decrypt(
            msgspec.structs.replace(dreq, cosignatures=dreq.cosignatures[:1]), _rand("f")
        )
    with pytest.raises(DecryptionRefusedError, match="twice"):
        _holder(world).decrypt(
            msgspec.structs.replace(dreq, cosignatures=[dreq.cosignatures[0]] * 2), _rand("f")
        )


def test_too_few_or_duplicated_signers_refused(world):
    _, dreq, _ = _run_to_request(world)
    m = dreq.manifest
    few = msgspec.structs.replace(m, entries=m.entries[:2])
    with pytest.raises(DecryptionRefusedError, match="at least 3"):
        _holder(world).decrypt(msgspec.structs.replace(dreq, manifest=few), _rand("f"))
    dup = msgspec.structs.replace(m, entries=[m.entries[0], m.entries[0], m.entries[1]])
    with pytest.raises(DecryptionRefusedError, match="more than once"):
        _holder(world).decrypt(msgspec.structs.replace(dreq, manifest=dup), _rand("f"))
    e = m.entries[0]
    forged = ContributionEntry(client_id=e.client_id, digest=e.digest, signature=bytes(64))
    bad = msgspec.structs.replace(m, entries=[forged, *m.entries[1:]])
    with pytest.raises(SignatureError):
        _holder(world).decrypt(msgspec.structs.replace(dreq, manifest=bad), _rand("f"))


def test_nothing_released_after_refusal_then_valid_request_works(world):
    _, dreq, _ = _run_to_request(world, round_=7)
    holder = _holder(world)
    with pytest.raises(DecryptionRefusedError):
        holder.decrypt(
            msgspec.structs.replace(dreq, cosignatures=dreq.cosignatures[:1]), _rand("f")
        )
    assert holder.queries_used == 0
    holder.decrypt(dreq, _rand("f"))
    assert holder.queries_used == 1


def test_query_budget_enforced(world):
    holder = _holder(world, max_queries=1)  # tau = 1 ciphertext decryption for this key
    holder.decrypt(_run_to_request(world, round_=0)[1], _rand("a"))
    with pytest.raises(DecryptionRefusedError, match="budget"):
        holder.decrypt(_run_to_request(world, round_=1)[1], _rand("b"))


def test_secret_context_delivered_to_server_or_client_is_rejected(world):
    holder = _holder(world)
    msg = holder.public_context_message()
    leaked = world["secret"].export_secret().expose()
    # the key holder (or an attacker with its key) signs a context that carries the secret key
    from securefl.crypto.signing import sign_bound
    from securefl.protocol.ckks import DOMAIN_CONTEXT, context_message, key_id_for

    kid = key_id_for(leaked)
    sig = sign_bound(
        world["holder_key"],
        domain=DOMAIN_CONTEXT,
        session_id=kid,
        round_=0,
        message=context_message(DEFAULT_PARAMS, leaked),
    )
    bad = msgspec.structs.replace(msg, context=leaked, key_id=kid, signature=sig)
    with pytest.raises(SecretKeyExposureError):
        accept_public_context(bad, holder.verify_key, DEFAULT_PARAMS)


def test_public_context_signature_checked(world):
    msg = _holder(world).public_context_message()
    wrong = world["keys"][1].verify_key
    with pytest.raises(SignatureError):
        accept_public_context(msg, wrong, DEFAULT_PARAMS)
    with pytest.raises(IntegrityError):
        accept_public_context(
            msgspec.structs.replace(msg, key_id=bytes(16)),
            _holder(world).verify_key,
            DEFAULT_PARAMS,
        )


def test_server_rejects_bad_contributions(world):
    server = CKKSServer(
        world["public"],
        world["fed"],
        session_id=SESSION,
        round_=0,
        num_values=D,
        participants=IDS,
        min_clients=3,
    )
    c = CKKSClient(1, world["keys"][1], world["public"]).contribute(
        session_id=SESSION,
        round_=0,
        values=world["inputs"][1],
        clip_norm=1.0,
        num_participants=4,
        noise_std=0.0,
        random=_rand("1"),
    )
    with pytest.raises(SignatureError):  # signature by client 1, claimed by client 2
        server.receive_contribution(msgspec.structs.replace(c, client_id=2))
    with pytest.raises(SignatureError):  # a chunk swapped after signing
        server.receive_contribution(msgspec.structs.replace(c, chunks=[c.chunks[0][:-1] + b"\x00"]))
    server.receive_contribution(c)
    with pytest.raises(RemoteProtocolError, match="already"):
        server.receive_contribution(c)
    with pytest.raises(AggregationAbortedError):
        server.close()


def test_oversized_and_malformed_messages_rejected(world):
    _, dreq, contribs = _run_to_request(world)
    data = wire.encode(contribs[1])
    with pytest.raises(MessageError):
        wire.decode(data, Contribution, max_bytes=len(data) - 1)
    with pytest.raises(MessageError):
        wire.decode(data[:-5], Contribution)
    with pytest.raises(MessageError):  # unknown field
        raw = msgspec.msgpack.decode(data)
        raw["extra"] = 1
        wire.decode(msgspec.msgpack.encode(raw), Contribution)
    with pytest.raises(MessageError):  # wrong tag
        wire.decode(data, SignedPublicContext)
    with pytest.raises(MessageError):  # short session id
        raw = msgspec.msgpack.decode(data)
        raw["session_id"] = b"x"
        wire.decode(msgspec.msgpack.encode(raw), Contribution)
    assert isinstance(wire.decode(wire.encode(dreq.manifest), Manifest), Manifest)


def test_overflow_prone_inputs_refused(world):
    client = CKKSClient(1, world["keys"][1], world["public"])
    with pytest.raises(OverflowRiskError):  # huge clip norm: the sum could wrap
        client.contribute(
            session_id=SESSION,
            round_=0,
            values=world["inputs"][1],
            clip_norm=2.0**57,
            num_participants=4,
            noise_std=0.0,
            random=_rand("x"),
        )
    with pytest.raises(OverflowRiskError):  # input not clipped
        client.contribute(
            session_id=SESSION,
            round_=0,
            values=world["inputs"][1] * 10,
            clip_norm=1.0,
            num_participants=4,
            noise_std=0.0,
            random=_rand("x"),
        )
