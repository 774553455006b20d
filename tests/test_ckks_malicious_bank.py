"""A dishonest bank in ckks mode: the limits that stay (key recovery) and what fresh keys bound.

Key recovery (issue 16, "CKKS: a malformed ciphertext leaks the key holder's secret key"): an
enrolled bank encrypts its input honestly, then adds a plaintext polynomial P = Encode(v, Delta')
to the c1 part of its ciphertext (chunk 0 with v = 1, chunk 1 with v = -i). The ciphertext is a
valid 2-polynomial NTT ciphertext at the top level with the agreed scale, so it passes every check
the server, the verifiers and the key holder make. Decryption computes c0 + c1*s, so the release
carries P*s: slot j of chunk 0 gets Re(sigma_j(s)) * Delta'/Delta, chunk 1 gets Im(sigma_j(s)) *
Delta'/Delta (sigma: the canonical embedding). Encoding those slots back at scale 1 rounds to s.

This is the documented limit of the mode (protocols/ckks/spec.md, "Trust assumption"): no practical
proof of well-formed RLWE encryption exists in Python today, so ckks protects updates only while
every bank encrypts honestly. The test asserts the key IS recovered: the day a well-formedness proof
is added, it fails and must be rewritten as a refusal test.

The ciphertext is edited through SEAL's documented serialization (SEAL 4.x ``Ciphertext::save``:
a 16-byte SEALHeader, parms_id, NTT flag, size, N, coefficient-modulus count, scale, correction
factor, then the coefficient DynArray, here written uncompressed) inside TenSEAL's CKKSVector
protobuf (field 1 sizes, field 2 the SEAL ciphertext, field 3 the scale).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, sign_bound
from securefl.he.context import PublicContext, SecretContext, generate_context
from securefl.he.params import DEFAULT_PARAMS
from securefl.he.vectors import ciphertext_digest, decrypt_chunks, encrypt_chunks
from securefl.protocol import wire
from securefl.protocol.ckks import (
    DOMAIN_COMMITMENT,
    DOMAIN_CONTRIBUTION,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    accept_public_context,
    commitment_message,
    commitment_set_digest,
    commitment_value,
    contribution_message,
)
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentSet,
    Contribution,
    DecryptionRequest,
    DecryptionResult,
)

sealapi = pytest.importorskip("tenseal.sealapi")

SESSION = bytes(range(16))
N = DEFAULT_PARAMS.poly_modulus_degree
SLOTS = N // 2
D = 2 * SLOTS  # two chunks: one for Re(sigma(s)), one for Im(sigma(s))
ATTACKER, B, C = 1, 2, 3
IDS = (ATTACKER, B, C)
CLIP = 1.0


def _rand(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x09" * 32), label)


# --- SEAL-level access to a TenSEAL ciphertext --------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def _proto_fields(b: bytes) -> list[tuple[int, int, bytes]]:
    """(field, wire type, payload) of a protobuf message (varint, 64-bit, length-delimited)."""
    out, i = [], 0
    while i < len(b):
        tag, i = _read_varint(b, i)
        field, wtype = tag >> 3, tag & 7
        if wtype == 2:
            length, i = _read_varint(b, i)
            out.append((field, wtype, b[i : i + length]))
            i += length
        elif wtype == 1:
            out.append((field, wtype, b[i : i + 8]))
            i += 8
        elif wtype == 0:
            j = _read_varint(b, i)[1]
            out.append((field, wtype, b[i:j]))
            i = j
        else:  # pragma: no cover - TenSEAL's CKKSVector uses none of the others
            raise AssertionError(f"unexpected protobuf wire type {wtype}")
    return out


def _seal_context(ctx: PublicContext | SecretContext):
    """A bare SEAL context with the same primes (so the same parms_ids) as ``ctx``."""
    key_data = ctx.raw.seal_context().data.key_context_data()
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(N)
    parms.set_coeff_modulus([sealapi.Modulus(m.value()) for m in key_data.parms().coeff_modulus()])
    return sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)


def _seal_ciphertext(chunk: bytes, sctx, tmp: Path):
    """The SEAL ciphertext inside a serialized TenSEAL CKKSVector."""
    (blob,) = [v for f, _, v in _proto_fields(chunk) if f == 2]
    path = tmp / "ct.seal"
    path.write_bytes(blob)
    ct = sealapi.Ciphertext()
    ct.load(sctx, str(path))
    return ct


def _coefficients(obj) -> np.ndarray:
    arr = obj.dyn_array()
    return np.array([arr.at(i) for i in range(arr.size())], dtype=np.uint64)


def _with_coefficients(chunk: bytes, ct, data: np.ndarray) -> bytes:
    """``chunk`` with its ciphertext's coefficients replaced by ``data`` (SEAL 4.x layout,
    uncompressed), re-wrapped in the same TenSEAL protobuf."""
    fields = _proto_fields(chunk)
    (blob,) = [v for f, _, v in fields if f == 2]

    def header(body: bytes) -> bytes:  # SEALHeader: magic, size, version; compr_mode 0 = none
        return blob[:5] + b"\x00" + blob[6:8] + struct.pack("<Q", 16 + len(body)) + body

    dyn = header(struct.pack("<Q", data.size) + data.astype("<u8").tobytes())
    limbs = ct.coeff_modulus_size()
    members = (
        struct.pack("<4Q", *ct.parms_id())
        + bytes([1 if ct.is_ntt_form() else 0])
        + struct.pack("<QQQ", ct.size(), N, limbs)
        + struct.pack("<d", ct.scale)
        + struct.pack("<Q", 1)  # correction factor (BGV only; 1 for CKKS)
        + dyn
    )
    out = bytearray()
    for f, wtype, v in fields:
        v = header(members) if f == 2 else v
        out += _varint((f << 3) | wtype) + (_varint(len(v)) if wtype == 2 else b"") + v
    return bytes(out)


def _encode(sctx, values: np.ndarray, scale: float, parms_id) -> np.ndarray:
    """SEAL's CKKS encoding (NTT form, RNS limbs) of complex ``values`` at ``scale``."""
    pt = sealapi.Plaintext()
    sealapi.CKKSEncoder(sctx).encode(list(values), parms_id, scale, pt)
    return _coefficients(pt)


def _add_to_c1(chunk: bytes, poly: np.ndarray, sctx, tmp: Path) -> bytes:
    """The malicious edit: c1 += P (mod each prime). c0 is untouched, so the ciphertext keeps
    encrypting the bank's honest input; its decryption gains P*s."""
    ct = _seal_ciphertext(chunk, sctx, tmp)
    data = _coefficients(ct).astype(object)
    primes = [m.value() for m in sctx.first_context_data().parms().coeff_modulus()]
    q = np.repeat(np.array(primes, dtype=object), N)
    half = data.size // 2  # polynomial 0 (c0) then polynomial 1 (c1), each limbs x N
    data[half:] = (data[half:] + poly.astype(object)) % q
    return _with_coefficients(chunk, ct, np.array(data, dtype=np.uint64))


def malformed_ciphertext(
    public: PublicContext, x: np.ndarray, log2_scale: int, tmp: Path
) -> list[bytes]:
    """The attacker's contribution: Enc(x) honestly, then P = Encode(1, 2^k) added to chunk 0's c1
    and P = Encode(-i, 2^k) to chunk 1's c1."""
    sctx = _seal_context(public)
    chunks = encrypt_chunks(public, x)
    first = sctx.first_parms_id()
    for i, v in enumerate((1.0 + 0j, -1j)):
        poly = _encode(sctx, np.full(SLOTS, v), float(2**log2_scale), first)
        chunks[i] = _add_to_c1(chunks[i], poly, sctx, tmp)
    return chunks


def recover_secret_key(released: np.ndarray, own: np.ndarray, log2_scale: int, public, tmp: Path):
    """From the release alone (and the attacker's own input): sigma(s) ~ 2^(60-k) (chunk 0 + i
    chunk 1); SEAL's encoder at scale 1 at the key level rounds sigma^-1 of it to s, in exactly
    the NTT/RNS form SEAL stores a secret key in."""
    sctx = _seal_context(public)
    z = (released[:SLOTS] - own[:SLOTS]) + 1j * (released[SLOTS:D] - own[SLOTS:D])
    factor = 2.0 ** (DEFAULT_PARAMS.scale_bits - log2_scale)
    pt = sealapi.Plaintext()
    sealapi.CKKSEncoder(sctx).encode(list(z * factor), sctx.key_parms_id(), 1.0, pt)
    path = tmp / "recovered.sk"
    pt.save(str(path))
    sk = sealapi.SecretKey()
    sk.load(sctx, str(path))
    return sk, _coefficients(pt)


def true_secret_key(secret: SecretContext, tmp: Path) -> np.ndarray:
    """The key holder's secret key coefficients (ground truth, only to check the recovery)."""
    path = tmp / "true.sk"
    secret.raw.secret_key().data.save(str(path))
    sk = sealapi.SecretKey()
    sk.load(_seal_context(secret), str(path))
    return _coefficients(sk.data())


def decrypt_with(sk, chunks: list[bytes], public: PublicContext, tmp: Path) -> np.ndarray:
    """Decrypt another bank's individual ciphertext with the recovered key (SEAL Decryptor)."""
    sctx = _seal_context(public)
    decryptor, encoder = sealapi.Decryptor(sctx, sk), sealapi.CKKSEncoder(sctx)
    out = []
    for chunk in chunks:
        pt = sealapi.Plaintext()
        decryptor.decrypt(_seal_ciphertext(chunk, sctx, tmp), pt)
        out.append(np.real(np.asarray(encoder.decode_complex(pt))))
    return np.concatenate(out)


# --- one round with the attacker ------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    keys = {i: SigningKey.from_seed(Secret(bytes([40 + i]) * 32)) for i in IDS}
    server_key = SigningKey.from_seed(Secret(b"\xbc" * 32))
    rng = np.random.default_rng(16)
    inputs = {}
    for i in IDS:
        v = rng.normal(size=D)
        inputs[i] = CLIP * v / np.linalg.norm(v)  # clipped to norm C exactly
    return {
        "keys": keys,
        "fed": {i: k.verify_key for i, k in keys.items()},
        "server_key": server_key,
        "holder_key": SigningKey.from_seed(Secret(b"\xab" * 32)),
        "inputs": inputs,
    }


def _holder(world, secret: SecretContext | None, keygen=generate_context) -> CKKSKeyHolder:
    return CKKSKeyHolder(
        world["holder_key"], secret, world["fed"], min_clients=3, verifiers=2,
        server_key=world["server_key"].verify_key, params=DEFAULT_PARAMS, keygen=keygen,
    )


def _round(world, holder: CKKSKeyHolder, *, log2_scale: int, noise_std: float, tmp: Path):
    """One ckks round (round 0) in which the attacker's reveal is the malformed ciphertext; every
    other party (server, verifiers, key holder, banks B and C) is honest and runs every check."""
    public = _public_for(holder, 0)
    server = CKKSServer(public, world["fed"], world["server_key"], session_id=SESSION, round_=0,
                        num_values=D, participants=IDS, min_clients=3, verifiers=2)
    honest = {i: CKKSClient(i, world["keys"][i], public, world["server_key"].verify_key)
              for i in (B, C)}
    for i, client in honest.items():
        server.receive_commitment(client.commit(
            session_id=SESSION, round_=0, values=world["inputs"][i], clip_norm=CLIP,
            num_participants=3, noise_std=noise_std, plan_digest=bytes(32), random=_rand(f"noise-{i}")))
    # the attacker commits to its malformed ciphertext like any bank
    bad = malformed_ciphertext(public, world["inputs"][ATTACKER], log2_scale, tmp)
    digest = ciphertext_digest(bad)
    com = commitment_value(SESSION, 0, ATTACKER, D, digest, public.digest)
    server.receive_commitment(wire.decode(wire.encode(Commitment(
        session_id=SESSION, round=0, client_id=ATTACKER, num_values=D, commitment=com,
        plan_digest=bytes(32),
        signature=sign_bound(world["keys"][ATTACKER], domain=DOMAIN_COMMITMENT,
                             session_id=SESSION, round_=0,
                             message=commitment_message(ATTACKER, D, com, bytes(32))))),
        Commitment))
    cset = wire.decode(wire.encode(server.close_commitments()), CommitmentSet)
    set_digest = commitment_set_digest(cset)
    server.receive_contribution(wire.decode(wire.encode(Contribution(
        session_id=SESSION, round=0, client_id=ATTACKER, num_values=D, chunks=bad,
        commitment_set_digest=set_digest,
        signature=sign_bound(world["keys"][ATTACKER], domain=DOMAIN_CONTRIBUTION,
                             session_id=SESSION, round_=0,
                             message=contribution_message(ATTACKER, D, digest, set_digest)))),
        Contribution))
    for client in honest.values():
        server.receive_contribution(client.reveal(cset))
    server.close()
    request = server.verify_request()
    for vid in server.verifier_ranking()[:2]:
        verifier = CKKSVerifier(vid, world["keys"][vid], public, world["fed"],
                                world["server_key"].verify_key, min_clients=3)
        revealed = set_digest if vid == ATTACKER else honest[vid].revealed_under[(SESSION, 0)]
        server.receive_cosignature(verifier.verify(request, session_id=SESSION, round_=0,
                                                   revealed_under=revealed))
    dreq = wire.decode(wire.encode(server.decryption_request()), DecryptionRequest)
    res = wire.decode(wire.encode(holder.decrypt(dreq, _rand("flood"))), DecryptionResult)
    released = server.receive_result(res, holder.verify_key)
    ct_b = request.contributions[[e.client_id for e in request.manifest.entries].index(B)]
    return released, public, list(ct_b)


@pytest.mark.parametrize(
    ("log2_scale", "noise_std"),
    [
        (53, 0.0),  # the release stays inside n*C: a range check on it sees nothing
        (80, 0.5),  # honest banks add DP shares; a larger P drowns them
    ],
)
def test_malformed_ciphertext_leaks_the_secret_key(world, tmp_path, log2_scale, noise_std):
    """DOCUMENTED LIMIT (spec.md "Trust assumption"): every check passes, the key holder releases,
    and from the release the attacker rebuilds the whole secret key and decrypts bank B's
    individual ciphertext. If this test fails because the malformed ciphertext is refused, a
    well-formedness proof exists: rewrite it as a refusal test and update the trust statements."""
    secret = generate_context(DEFAULT_PARAMS)
    released, public, ct_b = _round(world, _holder(world, secret), log2_scale=log2_scale,
                                    noise_std=noise_std, tmp=tmp_path)
    if log2_scale == 53:
        # the observation: the largest released value stays below n*C (= 3)
        assert np.max(np.abs(released)) < len(IDS) * CLIP
    sk, recovered = recover_secret_key(released, world["inputs"][ATTACKER], log2_scale, public,
                                       tmp_path)
    truth = true_secret_key(secret, tmp_path)
    assert truth.size == 3 * N  # two data primes and the special prime, NTT form
    assert np.array_equal(recovered, truth)  # all 24,576 coefficients: the key IS recovered
    x_b = decrypt_with(sk, ct_b, public, tmp_path)
    expected = decrypt_chunks(secret, ct_b, D)  # what the key holder itself would decrypt
    assert np.max(np.abs(x_b - expected)) < 1e-9
    if noise_std == 0:
        assert np.max(np.abs(x_b - world["inputs"][B])) < 1e-6  # bank B's update, exactly


# --- fresh keys per round: a replayed ciphertext decrypts to noise --------------------------------
def _public_for(holder: CKKSKeyHolder, round_: int) -> PublicContext:
    """The key every party uses in ``round_``: the holder's round key when it makes them, else its
    long-lived key."""
    if not holder.has_long_lived_key:  # a round-key holder (CKKSAggregator's)
        msg = holder.round_context(SESSION, round_)
        return accept_public_context(msg, holder.verify_key, DEFAULT_PARAMS, session_id=SESSION,
                                     round_=round_)
    return accept_public_context(holder.public_context_message(), holder.verify_key,
                                 DEFAULT_PARAMS)


def _signed_commit_and_reveal(world, cid: int, round_: int, chunks: list[bytes], public):
    digest = ciphertext_digest(chunks)
    com = commitment_value(SESSION, round_, cid, D, digest, public.digest)
    commitment = Commitment(
        session_id=SESSION, round=round_, client_id=cid, num_values=D, commitment=com,
        plan_digest=bytes(32),
        signature=sign_bound(world["keys"][cid], domain=DOMAIN_COMMITMENT, session_id=SESSION,
                             round_=round_,
                             message=commitment_message(cid, D, com, bytes(32))))

    def reveal(set_digest: bytes) -> Contribution:
        return Contribution(
            session_id=SESSION, round=round_, client_id=cid, num_values=D, chunks=chunks,
            commitment_set_digest=set_digest,
            signature=sign_bound(world["keys"][cid], domain=DOMAIN_CONTRIBUTION,
                                 session_id=SESSION, round_=round_,
                                 message=contribution_message(cid, D, digest, set_digest)))

    return commitment, reveal


def _replay_round(world, holder: CKKSKeyHolder, round_: int, honest: dict[int, np.ndarray],
                  rogue: dict[int, object]):
    """One round: ``honest`` banks run CKKSClient; each ``rogue`` bank submits the chunks its
    callable builds from the round's public context. Returns (release, each bank's chunks)."""
    public = _public_for(holder, round_)
    ids = tuple(sorted([*honest, *rogue]))
    server = CKKSServer(public, world["fed"], world["server_key"], session_id=SESSION,
                        round_=round_, num_values=D, participants=ids, min_clients=2,
                        verifiers=2)
    clients = {i: CKKSClient(i, world["keys"][i], public, world["server_key"].verify_key)
               for i in honest}
    for i, client in clients.items():
        server.receive_commitment(client.commit(
            session_id=SESSION, round_=round_, values=honest[i], clip_norm=CLIP,
            num_participants=len(ids), noise_std=0.0, plan_digest=bytes(32), random=_rand(f"r{round_}-{i}")))
    reveals = {}
    for i, build in rogue.items():
        commitment, reveals[i] = _signed_commit_and_reveal(world, i, round_, build(public), public)
        server.receive_commitment(commitment)
    cset = server.close_commitments()
    set_digest = commitment_set_digest(cset)
    for reveal in reveals.values():
        server.receive_contribution(reveal(set_digest))
    for client in clients.values():
        server.receive_contribution(client.reveal(cset))
    server.close()
    request = server.verify_request()
    for vid in server.verifier_ranking()[:2]:
        verifier = CKKSVerifier(vid, world["keys"][vid], public, world["fed"],
                                world["server_key"].verify_key, min_clients=2)
        under = clients[vid].revealed_under[(SESSION, round_)] if vid in clients else set_digest
        server.receive_cosignature(verifier.verify(request, session_id=SESSION, round_=round_,
                                                   revealed_under=under))
    released = server.receive_result(holder.decrypt(server.decryption_request(), _rand("f")),
                                     holder.verify_key)
    order = [e.client_id for e in request.manifest.entries]
    return released, {cid: list(request.contributions[order.index(cid)]) for cid in order}


def _negated_plus_zero(chunks: list[bytes]):
    """-ct + Enc(0) under the round's public context (re-randomised so its digest is new)."""
    from securefl.he.vectors import load_chunks

    def build(public: PublicContext) -> list[bytes]:
        neg = load_chunks(public, chunks, D)
        zero = load_chunks(public, encrypt_chunks(public, np.zeros(D)), D)
        for a, z in zip(neg, zero, strict=True):
            a.neg_()
            a.add_(z)
        return [bytes(v.serialize()) for v in neg]

    return build


@pytest.mark.parametrize("fresh_keys", [False, True])
def test_ciphertext_replayed_from_an_earlier_round(world, fresh_keys):
    """Round 1: banks A (= C here), B and M take part honestly; B's ciphertext is seen by every
    verifier. Round 3: A and M; M submits -ct_B(r1) + Enc(0). Under one long-lived key the
    release is x_A(r3) - x_B(r1) (spec.md, the gap version 3 listed as not covered); with a fresh
    key per round ct_B(r1) decrypts under round 3's key to noise, so nothing of x_A(r3) or
    x_B(r1) comes out."""
    a, b, m = C, B, ATTACKER
    holder = CKKSKeyHolder(
        world["holder_key"], None if fresh_keys else generate_context(DEFAULT_PARAMS),
        world["fed"], min_clients=2, verifiers=2, server_key=world["server_key"].verify_key,
        params=DEFAULT_PARAMS,
    )
    rng = np.random.default_rng(3)
    x = {key: 0.5 * (v := rng.normal(size=D)) / np.linalg.norm(v)
         for key in ("a1", "b1", "m1", "a3")}
    _, chunks_r1 = _replay_round(world, holder, 1,
                                 {a: x["a1"], b: x["b1"], m: x["m1"]}, {})
    released, _ = _replay_round(world, holder, 3, {a: x["a3"]},
                                {m: _negated_plus_zero(chunks_r1[b])})
    target = x["a3"] - x["b1"]
    error = float(np.max(np.abs(released - target)))
    if fresh_keys:
        assert error > 1e6  # noise: |released| is of the order of q/scale, not of the inputs
        assert float(np.max(np.abs(released - x["a3"]))) > 1e6
    else:
        assert error < 1e-3  # the attack works under one long-lived key


def test_a_recovered_round_key_opens_that_round_only(world, tmp_path):
    """With a fresh key per round the same attack still recovers round 0's key (the documented
    limit), but that key does not decrypt bank B's ciphertext of round 1."""
    made: list[SecretContext] = []

    def keygen(params):
        made.append(generate_context(params))
        return made[-1]

    holder = _holder(world, None, keygen)
    released, public0, _ = _round(world, holder, log2_scale=53, noise_std=0.0, tmp=tmp_path)
    sk, recovered = recover_secret_key(released, world["inputs"][ATTACKER], 53, public0,
                                       tmp_path)
    assert np.array_equal(recovered, true_secret_key(made[0], tmp_path))  # round 0: opened
    public1 = _public_for(holder, 1)
    assert public1.digest != public0.digest and len(made) == 2
    bank_b = CKKSClient(B, world["keys"][B], public1, world["server_key"].verify_key)
    bank_b.commit(session_id=SESSION, round_=1, values=world["inputs"][B], clip_norm=CLIP,
                  num_participants=3, noise_std=0.0, plan_digest=bytes(32), random=_rand("b1"))
    ct_b1 = bank_b.export_round(SESSION, 1).chunks
    assert ct_b1 is not None
    # the round-1 key (ground truth) decrypts it; the recovered round-0 key gives noise
    assert np.max(np.abs(decrypt_chunks(made[1], ct_b1, D) - world["inputs"][B])) < 1e-6
    leaked = decrypt_with(sk, ct_b1, public1, tmp_path)
    assert np.max(np.abs(leaked - world["inputs"][B])) > 1e6
