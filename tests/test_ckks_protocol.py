"""CKKS protocol roles: the honest flow and every attack that must fail loudly."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, sign_bound
from securefl.errors import (
    AggregationAbortedError,
    ConfigError,
    IntegrityError,
    MessageError,
    OverflowRiskError,
    RemoteProtocolError,
    SignatureError,
    StateError,
)
from securefl.he.context import generate_context
from securefl.he.errors import SecretKeyExposureError
from securefl.he.params import DEFAULT_PARAMS
from securefl.he.vectors import (
    ciphertext_digest,
    decrypt_chunks,
    encrypt_chunks,
    load_chunks,
    sum_chunks,
)
from securefl.protocol import wire
from securefl.protocol.ckks import (
    DOMAIN_COMMITMENT,
    DOMAIN_COMMITMENT_SET,
    DOMAIN_CONTRIBUTION,
    DOMAIN_COSIGN,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    DecryptionRefusedError,
    accept_public_context,
    commitment_message,
    commitment_set_digest,
    commitment_value,
    contribution_message,
    cosign_message,
    manifest_digest,
)
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentEntry,
    CommitmentSet,
    Contribution,
    ContributionEntry,
    CoSignature,
    DecryptionRequest,
    Manifest,
    SignedPublicContext,
    VerifyRequest,
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
    server_key = SigningKey.from_seed(Secret(b"\xbb" * 32))
    holder = CKKSKeyHolder(
        holder_key, secret, fed, min_clients=3, verifiers=2, server_key=server_key.verify_key
    )
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
        "server_key": server_key,
        "public": public,
        "inputs": inputs,
    }


def _holder(world, **kw):
    args = {"min_clients": 3, "verifiers": 2, "server_key": world["server_key"].verify_key} | kw
    return CKKSKeyHolder(world["holder_key"], world["secret"], world["fed"], **args)


def _server(world, round_=0, num_values=D, participants=IDS):
    return CKKSServer(
        world["public"],
        world["fed"],
        world["server_key"],
        session_id=SESSION,
        round_=round_,
        num_values=num_values,
        participants=participants,
        min_clients=3,
        verifiers=2,
    )


def _client(world, i):
    return CKKSClient(i, world["keys"][i], world["public"], world["server_key"].verify_key)


def _commit(world, client, round_=0, values=None, plan=bytes(32)):
    return client.commit(
        session_id=SESSION,
        round_=round_,
        values=world["inputs"][client.client_id] if values is None else values,
        clip_norm=1.0,
        num_participants=len(IDS),
        noise_std=0.0,
        plan_digest=plan,
        random=_rand(f"{client.client_id}"),
    )


def _verifier(world, vid):
    return CKKSVerifier(
        vid,
        world["keys"][vid],
        world["public"],
        world["fed"],
        world["server_key"].verify_key,
        min_clients=3,
    )


def _run_to_request(world, round_=0, ids=IDS):
    server = _server(world, round_)
    clients = {i: _client(world, i) for i in ids}
    for c in clients.values():
        server.receive_commitment(wire.decode(wire.encode(_commit(world, c, round_)), Commitment))
    cset = server.close_commitments()
    contribs = {}
    for i, c in clients.items():
        contribs[i] = c.reveal(wire.decode(wire.encode(cset), CommitmentSet))
        server.receive_contribution(wire.decode(wire.encode(contribs[i]), Contribution))
    server.close()
    req = server.verify_request()
    for vid in server.verifier_ranking()[:2]:
        key = (SESSION, round_)
        server.receive_cosignature(
            _verifier(world, vid).verify(
                req,
                session_id=SESSION,
                round_=round_,
                revealed_under=clients[vid].revealed_under[key],
            )
        )
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
    v = _verifier(world, server.verifier_ranking()[0])
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


def test_server_rejects_bad_commitments_and_reveals(world):
    server = _server(world)
    c1 = _client(world, 1)
    com = _commit(world, c1)
    early = _client(world, 2)
    early_com = _commit(world, early)
    with pytest.raises(SignatureError):  # signature by client 1, claimed by client 2
        server.receive_commitment(msgspec.structs.replace(com, client_id=2))
    with pytest.raises(SignatureError):  # commitment changed after signing
        server.receive_commitment(msgspec.structs.replace(com, commitment=bytes(32)))
    with pytest.raises(StateError):  # no ciphertext before the set is closed
        server.receive_contribution(early.reveal(_signed_set(world, [early_com])))
    server.receive_commitment(com)
    with pytest.raises(RemoteProtocolError, match="already"):
        server.receive_commitment(com)
    with pytest.raises(AggregationAbortedError):
        server.close_commitments()


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
    client = _client(world, 1)
    with pytest.raises(OverflowRiskError):  # huge clip norm: the sum could wrap
        client.commit(
            session_id=SESSION,
            round_=0,
            values=world["inputs"][1],
            clip_norm=2.0**57,
            num_participants=4,
            noise_std=0.0,
            plan_digest=bytes(32), random=_rand("x"),
        )
    with pytest.raises(OverflowRiskError):  # input not clipped
        client.commit(
            session_id=SESSION,
            round_=0,
            values=world["inputs"][1] * 10,
            clip_norm=1.0,
            num_participants=4,
            noise_std=0.0,
            plan_digest=bytes(32), random=_rand("x"),
        )


# --- commit phase (spec.md "Commit phase") ------------------------------------------------------
def _signed_set(world, commitments, key=None, round_=0):
    """A commitment set as a (possibly colluding) server would sign it."""
    entries = [
        CommitmentEntry(client_id=c.client_id, commitment=c.commitment,
                        plan_digest=c.plan_digest, signature=c.signature)
        for c in sorted(commitments, key=lambda c: c.client_id)
    ]
    unsigned = CommitmentSet(
        session_id=SESSION,
        round=round_,
        num_values=D,
        key_digest=world["public"].digest,
        entries=entries,
        signature=bytes(64),
    )
    sig = sign_bound(
        key or world["server_key"],
        domain=DOMAIN_COMMITMENT_SET,
        session_id=SESSION,
        round_=round_,
        message=commitment_set_digest(unsigned),
    )
    return msgspec.structs.replace(unsigned, signature=sig)


def _negate_rerandomised(world, chunks):
    """-ct + Enc(0): what a colluding client builds from another client's ciphertext."""
    neg = load_chunks(world["public"], chunks, D)
    zero = load_chunks(world["public"], encrypt_chunks(world["public"], np.zeros(D)), D)
    for a, z in zip(neg, zero, strict=True):
        a.neg_()
        a.add_(z)
    return [bytes(v.serialize()) for v in neg]


def _reveal_as(world, cid, chunks, set_digest, round_=0):
    """A correctly signed reveal of arbitrary chunks by client ``cid`` (it holds its own key)."""
    sig = sign_bound(
        world["keys"][cid],
        domain=DOMAIN_CONTRIBUTION,
        session_id=SESSION,
        round_=round_,
        message=contribution_message(cid, D, ciphertext_digest(chunks), set_digest),
    )
    return Contribution(
        session_id=SESSION,
        round=round_,
        client_id=cid,
        num_values=D,
        chunks=chunks,
        commitment_set_digest=set_digest,
        signature=sig,
    )


def test_rogue_negation_after_seeing_ct_b_is_refused(world):
    """Client 1 colludes with the server, sees client 2's ciphertext, submits -ct_2 + Enc(0) so the
    sum would be x_3 alone. Its commitment had to be made before ct_2 was revealed, so the rogue
    ciphertext opens no commitment: server, verifiers and key holder all refuse."""
    a, b, c = 1, 2, 3
    server = _server(world)
    clients = {i: _client(world, i) for i in (a, b, c)}
    commits = {i: _commit(world, clients[i]) for i in (a, b, c)}
    for com in commits.values():
        server.receive_commitment(com)
    cset = server.close_commitments()
    set_digest = commitment_set_digest(cset)
    ct_b = clients[b].reveal(cset)
    ct_c = clients[c].reveal(cset)
    rogue_chunks = _negate_rerandomised(world, ct_b.chunks)
    # the attack works on the ciphertexts themselves: rogue + ct_b + ct_c decrypts to x_c
    isolated = decrypt_chunks(
        world["secret"], sum_chunks(world["public"], [rogue_chunks, ct_b.chunks, ct_c.chunks], D), D
    )
    assert np.max(np.abs(isolated - world["inputs"][c])) < 1e-6
    rogue = _reveal_as(world, a, rogue_chunks, set_digest)
    server.receive_contribution(ct_b)
    server.receive_contribution(ct_c)
    with pytest.raises(IntegrityError, match="does not match its commitment"):
        server.receive_contribution(rogue)
    # committing late, after ct_b was seen, is refused: the set is closed
    late = _client(world, 4)
    with pytest.raises(StateError, match="closed"):
        server.receive_commitment(_commit(world, late))

    # a colluding server lists the rogue reveal anyway: verifiers and key holder refuse
    entries = [
        ContributionEntry(
            client_id=x.client_id, digest=ciphertext_digest(x.chunks), signature=x.signature
        )
        for x in (rogue, ct_b, ct_c)
    ]
    agg = sum_chunks(world["public"], [rogue_chunks, ct_b.chunks, ct_c.chunks], D)
    manifest = Manifest(
        session_id=SESSION,
        round=0,
        num_values=D,
        entries=entries,
        aggregate_digest=ciphertext_digest(agg),
        commitment_set=cset,
    )
    req = VerifyRequest(manifest=manifest, contributions=[rogue_chunks, ct_b.chunks, ct_c.chunks])
    with pytest.raises(DecryptionRefusedError, match="does not match its commitment"):
        _verifier(world, b).verify(
            req,
            session_id=SESSION,
            round_=0,
            revealed_under=clients[b].revealed_under[(SESSION, 0)],
        )
    holder = _holder(world)
    with pytest.raises(DecryptionRefusedError, match="does not match its commitment"):
        holder.decrypt(
            DecryptionRequest(
                manifest=manifest, aggregate=agg, cosignatures=[_fake_cosig(world, a, manifest)]
            ),
            _rand("f"),
        )
    assert holder.queries_used == 0

    # ... or re-opens the set with a late commitment to the rogue ciphertext: the honest reveals
    # bind the first set's digest, so their signatures no longer verify
    rogue_commitment = commitment_value(
        SESSION, 0, a, D, ciphertext_digest(rogue_chunks), world["public"].digest
    )
    late_commit = Commitment(
        session_id=SESSION,
        round=0,
        client_id=a,
        num_values=D,
        commitment=rogue_commitment,
        plan_digest=bytes(32),
        signature=sign_bound(
            world["keys"][a],
            domain=DOMAIN_COMMITMENT,
            session_id=SESSION,
            round_=0,
            message=commitment_message(
                a, D, rogue_commitment, bytes(32)
            ),
        ),
    )
    cset2 = _signed_set(world, [late_commit, commits[b], commits[c]])
    rogue2 = _reveal_as(world, a, rogue_chunks, commitment_set_digest(cset2))
    entries2 = [
        ContributionEntry(
            client_id=a, digest=ciphertext_digest(rogue_chunks), signature=rogue2.signature
        ),
        *entries[1:],
    ]
    m2 = msgspec.structs.replace(manifest, entries=entries2, commitment_set=cset2)
    with pytest.raises(SignatureError):
        holder.decrypt(
            DecryptionRequest(manifest=m2, aggregate=agg, cosignatures=[_fake_cosig(world, a, m2)]),
            _rand("f"),
        )
    with pytest.raises(RemoteProtocolError, match="another commitment set"):
        server.receive_contribution(rogue2)
    assert holder.queries_used == 0


def _fake_cosig(world, vid, manifest):
    mdig = manifest_digest(manifest)
    return CoSignature(
        session_id=SESSION,
        round=manifest.round,
        verifier_id=vid,
        manifest_digest=mdig,
        signature=sign_bound(
            world["keys"][vid],
            domain=DOMAIN_COSIGN,
            session_id=SESSION,
            round_=manifest.round,
            message=cosign_message(vid, mdig),
        ),
    )


def test_reveal_that_does_not_match_its_commitment_is_refused(world):
    server = _server(world)
    clients = {i: _client(world, i) for i in (1, 2, 3)}
    for c in clients.values():
        server.receive_commitment(_commit(world, c))
    cset = server.close_commitments()
    honest = clients[1].reveal(cset)
    # client 1 reveals a fresh encryption of the same values (not the committed ciphertext)
    other = encrypt_chunks(world["public"], world["inputs"][1])
    swapped = _reveal_as(world, 1, other, commitment_set_digest(cset))
    with pytest.raises(IntegrityError, match="does not match its commitment"):
        server.receive_contribution(swapped)
    # a chunk flipped in transit: no longer the committed ciphertext either
    chunk = bytearray(honest.chunks[0])
    chunk[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its commitment"):
        server.receive_contribution(msgspec.structs.replace(honest, chunks=[bytes(chunk)]))
    server.receive_contribution(honest)  # the committed ciphertext is accepted
    # a client never reveals twice, and never under a second set
    with pytest.raises(RemoteProtocolError, match="already revealed"):
        clients[1].reveal(cset)


def test_commitment_set_shown_differently_to_different_clients_is_caught(world):
    """The server shows client 2 a set without client 4 and clients 1, 3 and 4 the full set."""
    server = _server(world)
    clients = {i: _client(world, i) for i in IDS}
    commits = {i: _commit(world, c) for i, c in clients.items()}
    for com in commits.values():
        server.receive_commitment(com)
    full = server.close_commitments()
    partial = _signed_set(world, [commits[i] for i in (1, 2, 3)])
    reveals = {i: clients[i].reveal(partial if i == 2 else full) for i in IDS}
    # the honest server code refuses the reveal bound to the other set
    with pytest.raises(RemoteProtocolError, match="another commitment set"):
        server.receive_contribution(reveals[2])
    # a colluding server that lists it anyway is caught by the verifiers and the key holder
    chunks = [reveals[i].chunks for i in IDS]
    agg = sum_chunks(world["public"], chunks, D)
    for shown in (full, partial):
        m = Manifest(
            session_id=SESSION,
            round=0,
            num_values=D,
            entries=[
                ContributionEntry(
                    client_id=i,
                    digest=ciphertext_digest(reveals[i].chunks),
                    signature=reveals[i].signature,
                )
                for i in IDS
                if shown is full or i != 4
            ],
            aggregate_digest=ciphertext_digest(agg),
            commitment_set=shown,
        )
        with pytest.raises(SignatureError):
            _holder(world).decrypt(
                DecryptionRequest(
                    manifest=m, aggregate=agg, cosignatures=[_fake_cosig(world, 1, m)]
                ),
                _rand("f"),
            )
    # a verifier compares the manifest's set with the one it revealed under
    m = Manifest(
        session_id=SESSION,
        round=0,
        num_values=D,
        entries=[
            ContributionEntry(
                client_id=i,
                digest=ciphertext_digest(reveals[i].chunks),
                signature=reveals[i].signature,
            )
            for i in (1, 3, 4)
        ],
        aggregate_digest=ciphertext_digest(
            sum_chunks(world["public"], [chunks[0], chunks[2], chunks[3]], D)
        ),
        commitment_set=full,
    )
    req = VerifyRequest(manifest=m, contributions=[chunks[0], chunks[2], chunks[3]])
    seen_by_2 = clients[2].revealed_under[(SESSION, 0)]
    assert seen_by_2 == commitment_set_digest(partial)
    v2 = CKKSVerifier(
        2,
        world["keys"][2],
        world["public"],
        world["fed"],
        world["server_key"].verify_key,
        min_clients=3,
        verifier_skips=4,
    )
    with pytest.raises(RemoteProtocolError, match="differs from the one this client was shown"):
        v2.verify(req, session_id=SESSION, round_=0, revealed_under=seen_by_2)


def test_commitment_set_must_be_signed_by_the_server(world):
    client = _client(world, 1)
    com = _commit(world, client)
    forged = _signed_set(world, [com], key=world["keys"][2])
    with pytest.raises(SignatureError):
        client.reveal(forged)
    # a set that drops or changes this client's commitment is refused too
    other = _commit(world, _client(world, 2))
    with pytest.raises(RemoteProtocolError, match="this client's commitment"):
        client.reveal(_signed_set(world, [other]))


def test_verifiers_drawn_from_the_closed_commitment_set(world):
    """Verifiers follow the ranking sha256(domain || set digest || id), recomputed here with
    hashlib; the key holder refuses co-signers outside the first verifiers + skips."""
    import hashlib
    import struct

    server, dreq, _ = _run_to_request(world)
    m = dreq.manifest
    set_digest = commitment_set_digest(m.commitment_set)
    expected = sorted(
        IDS,
        key=lambda i: hashlib.sha256(
            b"securefl-ckks-verifiers-v1" + set_digest + struct.pack(">Q", i)
        ).digest(),
    )
    assert list(server.verifier_ranking()) == expected
    assert [cs.verifier_id for cs in dreq.cosignatures] == sorted(expected[:2])
    # a different round's set (different commitments) gives an independent ranking; over 12 rounds
    # the first verifier is not always the lowest id (the old rule)
    firsts = set()
    for r in range(1, 13):
        s, _, _ = _run_to_request(world, round_=r)
        firsts.add(s.verifier_ranking()[0])
    assert len(firsts) >= 2
    # the key holder: with no skips allowed only the two top-ranked contributors may co-sign
    last = expected[-1]
    cos = [_fake_cosig(world, expected[0], m), _fake_cosig(world, last, m)]
    strict = _holder(world, verifier_skips=0)
    with pytest.raises(DecryptionRefusedError, match="not among the verifiers"):
        strict.decrypt(msgspec.structs.replace(dreq, cosignatures=cos), _rand("f"))
    # and a low-ranked client refuses to act as verifier
    strict_v = CKKSVerifier(
        last,
        world["keys"][last],
        world["public"],
        world["fed"],
        world["server_key"].verify_key,
        min_clients=3,
        verifier_skips=0,
    )
    with pytest.raises(RemoteProtocolError, match="not among the verifiers"):
        strict_v.verify(server.verify_request(), session_id=SESSION, round_=0)
    strict.decrypt(dreq, _rand("f"))  # the drawn verifiers' co-signatures are accepted


D_BIG = 4 * 4096 + 7  # 5 chunks of ~268 KB: digests take the multi-threaded path (>= 1 MiB)


def _hand_ct_digest(chunks) -> bytes:
    """spec.md ct_digest written out with hashlib: label v2, count, per chunk length || SHA-256."""
    import hashlib
    import struct

    body = b"securefl-ckks-ct-v2" + struct.pack(">I", len(chunks))
    for c in chunks:
        body += struct.pack(">Q", len(c)) + hashlib.sha256(c).digest()
    return hashlib.sha256(body).digest()


def test_large_round_malformed_reveal_refused_and_not_summed(world):
    """Client 4 commits to and reveals (correctly signed) chunks of which one holds 10 values
    instead of N/2: the server raises MalformedCiphertextError, before and after it has started
    summing, and the round completes with clients 1-3 only; every digest is the spec's hash list."""
    from securefl.he.errors import MalformedCiphertextError

    rng = np.random.default_rng(9)
    inputs = {i: 0.8 * (v := rng.normal(size=D_BIG)) / np.linalg.norm(v) for i in (1, 2, 3)}
    server = _server(world, round_=5, num_values=D_BIG, participants=IDS)
    clients = {i: _client(world, i) for i in (1, 2, 3)}
    for i, c in clients.items():
        server.receive_commitment(_commit(world, c, round_=5, values=inputs[i]))
    bad = encrypt_chunks(world["public"], np.zeros(D_BIG))
    bad[2] = encrypt_chunks(world["public"], np.zeros(10))[0]
    commitment = commitment_value(
        SESSION, 5, 4, D_BIG, _hand_ct_digest(bad), world["public"].digest
    )
    server.receive_commitment(
        Commitment(
            session_id=SESSION,
            round=5,
            client_id=4,
            num_values=D_BIG,
            commitment=commitment,
            plan_digest=bytes(32),
            signature=sign_bound(
                world["keys"][4],
                domain=DOMAIN_COMMITMENT,
                session_id=SESSION,
                round_=5,
                message=commitment_message(4, D_BIG, commitment, bytes(32)),
            ),
        )
    )
    cset = server.close_commitments()
    set_digest = commitment_set_digest(cset)
    bad_reveal = Contribution(
        session_id=SESSION,
        round=5,
        client_id=4,
        num_values=D_BIG,
        chunks=bad,
        commitment_set_digest=set_digest,
        signature=sign_bound(
            world["keys"][4],
            domain=DOMAIN_CONTRIBUTION,
            session_id=SESSION,
            round_=5,
            message=contribution_message(4, D_BIG, _hand_ct_digest(bad), set_digest),
        ),
    )
    with pytest.raises(MalformedCiphertextError, match="chunk 2"):
        server.receive_contribution(bad_reveal)  # before anything is summed
    contribs = {i: c.reveal(cset) for i, c in clients.items()}
    server.receive_contribution(contribs[1])
    with pytest.raises(MalformedCiphertextError, match="chunk 2"):
        server.receive_contribution(bad_reveal)  # after the running sum exists
    server.receive_contribution(contribs[2])
    server.receive_contribution(contribs[3])
    m = server.close()
    assert [e.client_id for e in m.entries] == [1, 2, 3]
    assert [e.digest for e in m.entries] == [_hand_ct_digest(contribs[i].chunks) for i in (1, 2, 3)]
    req = server.verify_request()
    for vid in server.verifier_ranking()[:2]:
        server.receive_cosignature(
            _verifier(world, vid).verify(
                req,
                session_id=SESSION,
                round_=5,
                revealed_under=clients[vid].revealed_under[(SESSION, 5)],
            )
        )
    dreq = server.decryption_request()
    assert m.aggregate_digest == _hand_ct_digest(dreq.aggregate)
    holder = _holder(world)
    total = server.receive_result(holder.decrypt(dreq, _rand("flood-big")), holder.verify_key)
    assert np.max(np.abs(total - (inputs[1] + inputs[2] + inputs[3]))) < 1e-4


def test_verifier_catches_one_flipped_byte_in_a_large_contribution(world):
    """The verifier hashes all contributions in one parallel pass; a byte flipped in the middle of
    one chunk of one contribution must still be attributed to that contribution."""
    rng = np.random.default_rng(10)
    inputs = {i: 0.8 * (v := rng.normal(size=D_BIG)) / np.linalg.norm(v) for i in (1, 2, 3)}
    server = _server(world, round_=6, num_values=D_BIG, participants=(1, 2, 3))
    clients = {i: _client(world, i) for i in (1, 2, 3)}
    for i, c in clients.items():
        server.receive_commitment(_commit(world, c, round_=6, values=inputs[i]))
    cset = server.close_commitments()
    for c in clients.values():
        server.receive_contribution(c.reveal(cset))
    server.close()
    req = server.verify_request()
    chunks = list(req.contributions[1])
    chunk = bytearray(chunks[3])
    chunk[len(chunk) // 2] ^= 0x40
    chunks[3] = bytes(chunk)
    tampered = msgspec.structs.replace(
        req, contributions=[req.contributions[0], chunks, req.contributions[2]]
    )
    vid = server.verifier_ranking()[0]
    with pytest.raises(IntegrityError, match=f"client {req.manifest.entries[1].client_id}'s"):
        _verifier(world, vid).verify(tampered, session_id=SESSION, round_=6)


def test_a_message_of_another_protocol_version_is_refused():
    """The message version is a Literal: a version-2 peer (single-pass ciphertext digest, no
    weight slot) gets a clear decoding error, not a failed commitment opening."""
    from securefl.errors import MessageError
    from securefl.protocol import wire
    from securefl.protocol.ckks_messages import PROTOCOL_VERSION, Commitment

    good = {"type": "ckks.commitment", "version": PROTOCOL_VERSION, "session_id": SESSION,
            "round": 1, "client_id": 2, "num_values": 10, "commitment": b"\x01" * 32,
            "plan_digest": b"\x03" * 32, "signature": b"\x02" * 64}
    assert wire.decode(msgspec.msgpack.encode(good), Commitment).client_id == 2
    with pytest.raises(MessageError):
        wire.decode(msgspec.msgpack.encode({**good, "version": 2}), Commitment)
    # a version-4 peer (no round-plan digest in its commitment, S8-1) is refused too
    v4 = {k: v for k, v in good.items() if k != "plan_digest"}
    with pytest.raises(MessageError):
        wire.decode(msgspec.msgpack.encode({**v4, "version": 4}), Commitment)


# --- round keys (protocol version 4) ---------------------------------------------------------------
def test_round_keys_are_fresh_signed_for_their_round_and_bound_into_the_round(world):
    """A round key's public context is signed for (session, round): offered for another round, or
    where the long-lived key is expected, it is refused; its digest is in every commitment and in
    the closed set, so a set (or manifest) under another key is refused by the bank that reveals
    and by the key holder; the key is made once per round and never after that round's release."""
    from securefl.protocol.ckks import DOMAIN_CONTEXT

    holder = CKKSKeyHolder(world["holder_key"], None, world["fed"], min_clients=3, verifiers=2,
                           server_key=world["server_key"].verify_key, params=DEFAULT_PARAMS)
    with pytest.raises(ConfigError):
        holder.public_context_message()  # no long-lived key
    r1, r2 = holder.round_context(SESSION, 1), holder.round_context(SESSION, 2)
    assert holder.round_context(SESSION, 1) == r1  # idempotent within the round
    assert r1.context != r2.context and (r1.session_id, r1.round) == (SESSION, 1)
    vk = holder.verify_key
    p1 = accept_public_context(r1, vk, DEFAULT_PARAMS, session_id=SESSION, round_=1)
    with pytest.raises(RemoteProtocolError, match="not the key for this round"):
        accept_public_context(r1, vk, DEFAULT_PARAMS, session_id=SESSION, round_=2)
    with pytest.raises(RemoteProtocolError, match="long-lived"):
        accept_public_context(r1, vk, DEFAULT_PARAMS)
    # the round-key signature is domain-separated from the long-lived one
    relabelled = msgspec.structs.replace(r1, session_id=None, round=None)
    with pytest.raises(SignatureError):
        accept_public_context(relabelled, vk, DEFAULT_PARAMS)
    forged = msgspec.structs.replace(
        r1,
        signature=sign_bound(world["holder_key"], domain=DOMAIN_CONTEXT, session_id=SESSION,
                             round_=1, message=r1.signature),
    )
    with pytest.raises(SignatureError):
        accept_public_context(forged, vk, DEFAULT_PARAMS, session_id=SESSION, round_=1)

    # a round under round 1's key, but the key holder is asked to decrypt it as round 2's
    def run(public, round_):
        server = CKKSServer(public, world["fed"], world["server_key"], session_id=SESSION,
                            round_=round_, num_values=D, participants=IDS, min_clients=3,
                            verifiers=2)
        clients = {i: CKKSClient(i, world["keys"][i], public, world["server_key"].verify_key)
                   for i in IDS}
        for c in clients.values():
            server.receive_commitment(_commit(world, c, round_))
        cset = server.close_commitments()
        assert cset.key_digest == public.digest
        for c in clients.values():
            server.receive_contribution(c.reveal(cset))
        server.close()
        req = server.verify_request()
        for vid in server.verifier_ranking()[:2]:
            server.receive_cosignature(CKKSVerifier(
                vid, world["keys"][vid], public, world["fed"], world["server_key"].verify_key,
                min_clients=3).verify(req, session_id=SESSION, round_=round_,
                                      revealed_under=clients[vid].revealed_under[(SESSION,
                                                                                  round_)]))
        return server.decryption_request(), cset

    dreq, cset = run(p1, 2)  # every bank was given round 1's key in round 2
    with pytest.raises(DecryptionRefusedError, match="another CKKS key"):
        holder.decrypt(dreq, _rand("f"))
    # a bank holding round 2's key refuses to reveal under a set closed under round 1's key
    p2 = accept_public_context(r2, vk, DEFAULT_PARAMS, session_id=SESSION, round_=2)
    # a verifier holding round 2's key refuses to co-sign a manifest under round 1's key
    with pytest.raises(DecryptionRefusedError, match="another CKKS key"):
        CKKSVerifier(1, world["keys"][1], p2, world["fed"], world["server_key"].verify_key,
                     min_clients=3).verify(
            VerifyRequest(manifest=dreq.manifest, contributions=[[b"x"]] * len(IDS)),
            session_id=SESSION, round_=2)
    bank = CKKSClient(1, world["keys"][1], p2, world["server_key"].verify_key)
    bank.commit(session_id=SESSION, round_=2, values=world["inputs"][1], clip_norm=1.0,
                num_participants=len(IDS), noise_std=0.0, plan_digest=bytes(32), random=_rand("1"))
    with pytest.raises(RemoteProtocolError, match="another CKKS key"):
        bank.reveal(msgspec.structs.replace(cset, entries=[
            e if e.client_id != 1 else msgspec.structs.replace(
                e, commitment=bank.export_round(SESSION, 2).commitment)
            for e in cset.entries]))
    dreq1, _ = run(p1, 1)
    res = holder.decrypt(dreq1, _rand("f"))  # the right key: released
    assert np.allclose(np.frombuffer(res.values, "<f8"), sum(world["inputs"].values()),
                       atol=1e-3)
    with pytest.raises(StateError):
        holder.round_context(SESSION, 1)  # no key for a released round
    assert holder.queries_used == 0  # the long-lived budget is untouched


# --- round plans (protocol version 5, red-team finding S8-1) ----------------------------------------
def test_s8_1_a_set_under_two_round_plans_is_refused_by_every_bank_verifier_and_key_holder(world):
    """S8-1: the server signs bank 1 the plan with clip norm 1.0 and banks 2 and 3 one with clip
    norm 1e-6 (their noise shares shrink with it). Each bank signs its own round-plan digest into
    its commitment, so the closed set shows two plans: every bank refuses to reveal under it
    (PlanMismatchError SFL309), and the key holder's and a verifier's checks of the set refuse it
    too. Control: the same banks under one plan reveal."""
    from dataclasses import replace

    from securefl.errors import PlanMismatchError
    from securefl.protocol.ckks import ClientState, round_plan_digest
    from securefl.protocol.ckks.checks import check_commitment_set, check_entries
    from securefl.protocol.ckks_messages import ContributionEntry, Manifest
    from securefl.protocol.plan import NoisePlan, RoundSpec

    spec = RoundSpec(session_id=SESSION, round=3, participants=(1, 2, 3), clip_norm=1.0,
                     threshold=3, noise=NoisePlan(1.0, 3))
    honest = round_plan_digest(spec, b"round plan body")
    shrunk = round_plan_digest(replace(spec, clip_norm=1e-6), b"round plan body")
    assert honest != shrunk
    # so is a plan that differs only in the signed body (round 0's stats ranges or groups)
    assert round_plan_digest(spec, b"other round plan body") != honest

    clients = {i: _client(world, i) for i in (1, 2, 3)}
    plans = {1: honest, 2: shrunk, 3: shrunk}
    commits = [_commit(world, c, round_=3, plan=plans[i]) for i, c in clients.items()]
    cset = _signed_set(world, commits, round_=3)
    assert {e.plan_digest for e in cset.entries} == {honest, shrunk}
    for client in clients.values():
        with pytest.raises(PlanMismatchError) as info:
            client.reveal(cset)
        assert info.value.code == "SFL309"
        assert client.state(SESSION, 3) is ClientState.COMMITTED  # nothing revealed
    with pytest.raises(PlanMismatchError):
        check_commitment_set(cset, world["fed"], world["server_key"].verify_key)
    manifest = Manifest(session_id=SESSION, round=3, num_values=D,
                        entries=[ContributionEntry(client_id=1, digest=bytes(32),
                                                   signature=bytes(64))],
                        aggregate_digest=bytes(32), commitment_set=cset)
    # the key holder's and every verifier's check of a manifest's set
    with pytest.raises(PlanMismatchError):
        check_entries(manifest, world["fed"], world["server_key"].verify_key, 1,
                      world["public"].digest)
    # control: one plan for all, the set passes the key holder's check and every bank reveals
    same = {i: _client(world, i) for i in (1, 2, 3)}
    one = _signed_set(world, [_commit(world, c, round_=4, plan=honest) for c in same.values()],
                      round_=4)
    assert len(check_commitment_set(one, world["fed"], world["server_key"].verify_key)) == 32
    for c in same.values():
        assert c.reveal(one).client_id == c.client_id
        assert c.state(SESSION, 4) is ClientState.REVEALED
