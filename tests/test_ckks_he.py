"""CKKS backend: parameters, contexts (secret-key rejection), chunking, digests, flooding sizing."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import MessageError, OverflowRiskError
from securefl.he.context import generate_context, load_public_context, load_secret_context
from securefl.he.errors import (
    InsecureParametersError,
    MalformedCiphertextError,
    SecretKeyExposureError,
)
from securefl.he.flooding import coefficient_error_bound, flooding_std, release_grid
from securefl.he.params import COMPACT_PARAMS, DEFAULT_PARAMS, NVFLARE_PARAMS, CKKSParams
from securefl.he.vectors import (
    check_no_overflow,
    chunk_hashes,
    ciphertext_digest,
    ciphertext_digests,
    decrypt_chunks,
    encrypt_chunks,
    load_chunks,
    sum_chunks,
)


@pytest.fixture(scope="module")
def secret():
    return generate_context(DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def public(secret):
    return secret.public()


@pytest.mark.parametrize(
    ("n", "bits"),
    [(4096, (60, 50)), (8192, (60, 60, 60, 40)), (16384, (60,) * 7 + (60,)), (2048, (30, 30))],
)
def test_insecure_parameters_rejected(n, bits):
    # 110 > 109 (N=4096), 220 > 218 (N=8192), 480 > 438 (N=16384); N=2048 unsupported
    with pytest.raises(InsecureParametersError):
        CKKSParams(n, bits, 40)


def test_validated_alternatives_accepted():
    for p in (
        DEFAULT_PARAMS,
        COMPACT_PARAMS,
        NVFLARE_PARAMS,
        CKKSParams(16384, (60, 40, 40, 60), 40),
        CKKSParams(4096, (40, 20, 40), 30),
    ):
        assert p.slots == p.poly_modulus_degree // 2


def test_public_context_has_no_secret_and_secret_context_is_rejected(secret, public):
    assert "redacted" in repr(secret)
    data = public.to_bytes()
    load_public_context(data, DEFAULT_PARAMS)  # accepted
    exported = secret.export_secret()
    with pytest.raises(SecretKeyExposureError):
        load_public_context(exported.expose(), DEFAULT_PARAMS)
    assert load_secret_context(exported, DEFAULT_PARAMS).raw.is_private()


def test_context_with_other_parameters_rejected(public):
    with pytest.raises(Exception, match="agreed parameters"):
        load_public_context(public.to_bytes(), CKKSParams(8192, (60, 60, 60), 50))


@pytest.mark.parametrize("junk", [b"", b"\x00" * 100, b"\xff" * 3000])
def test_malformed_context_rejected(junk):
    with pytest.raises(MessageError):
        load_public_context(junk, DEFAULT_PARAMS)


def test_chunking_roundtrip_and_sum(secret, public):
    rng = np.random.default_rng(1)
    d = 2 * DEFAULT_PARAMS.slots + 7  # two full chunks and a remainder
    xs = [rng.uniform(-1, 1, d) for _ in range(3)]
    cts = [encrypt_chunks(public, x) for x in xs]
    assert [len(c) for c in cts] == [3, 3, 3]
    total = decrypt_chunks(secret, sum_chunks(public, cts, d), d)
    np.testing.assert_allclose(total, xs[0] + xs[1] + xs[2], atol=1e-9)


def test_sum_digest_is_deterministic_and_order_independent(public):
    """SEAL addition is exact modular arithmetic and serialization is deterministic (spec.md)."""
    rng = np.random.default_rng(2)
    cts = [encrypt_chunks(public, rng.uniform(-1, 1, 100)) for _ in range(4)]
    d1 = ciphertext_digest(sum_chunks(public, cts, 100))
    d2 = ciphertext_digest(sum_chunks(public, cts, 100))
    d3 = ciphertext_digest(sum_chunks(public, cts[::-1], 100))
    assert d1 == d2 == d3
    assert d1 != ciphertext_digest(sum_chunks(public, cts[:3], 100))


def _hand_digest(chunks: list[bytes]) -> bytes:
    """The spec's ct_digest written out with hashlib (hash list, label v2)."""
    body = b"securefl-ckks-ct-v2" + struct.pack(">I", len(chunks))
    for c in chunks:
        body += struct.pack(">Q", len(c)) + hashlib.sha256(c).digest()
    return hashlib.sha256(body).digest()


def test_digest_matches_hand_encoding():
    chunks = [b"abc", b"\x00\x01"]
    expected = hashlib.sha256(
        b"securefl-ckks-ct-v2"
        + struct.pack(">I", 2)
        + struct.pack(">Q", 3)
        + bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        + struct.pack(">Q", 2)
        + hashlib.sha256(b"\x00\x01").digest()
    ).digest()  # SHA-256("abc") above is the FIPS 180-2 appendix B.1 value
    assert ciphertext_digest(chunks) == expected
    assert ciphertext_digest([b"ab", b"c\x00\x01"]) != expected  # length prefixes matter
    assert ciphertext_digest([]) == hashlib.sha256(b"securefl-ckks-ct-v2" + bytes(4)).digest()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300_000), min_size=0, max_size=12),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_parallel_digest_equals_sequential_hand_digest(sizes, seed):
    # large inputs take the thread-pool path (>= 1 MiB in total), small ones the inline path
    rng = np.random.default_rng(seed)
    chunks = [rng.bytes(n) for n in sizes]
    assert ciphertext_digest(chunks) == _hand_digest(chunks)
    assert chunk_hashes(chunks) == [hashlib.sha256(c).digest() for c in chunks]
    lists = [chunks, chunks[::-1], [], chunks[:1]]
    assert ciphertext_digests(lists) == [_hand_digest(c) for c in lists]


def test_parallel_digest_of_bytearray_and_many_chunks():
    rng = np.random.default_rng(7)
    chunks = [rng.bytes(262_144 + i) for i in range(20)]  # ~5 MiB: parallel path
    assert ciphertext_digest([bytearray(c) for c in chunks]) == _hand_digest(chunks)
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert ciphertext_digest(swapped) != ciphertext_digest(chunks)  # order matters
    flipped = [chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]), *chunks[1:]]
    assert ciphertext_digest(flipped) != ciphertext_digest(chunks)
    for not_bytes in ([5], ["text"], [*chunks, 5]):
        with pytest.raises(TypeError):
            ciphertext_digest(not_bytes)


def test_parallel_digest_from_many_threads_at_once():
    # callers sharing the module pool each get their own, correct result
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    inputs = [[rng.bytes(200_000) for _ in range(8)] for _ in range(6)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(ciphertext_digest, inputs))
    assert got == [_hand_digest(c) for c in inputs]


def test_malformed_and_oversized_ciphertexts_rejected(public):
    good = encrypt_chunks(public, np.zeros(10))
    blob = good[0]
    corrupt = blob[:2000] + bytes(b ^ 0xFF for b in blob[2000:2100]) + blob[2100:]
    for bad in (
        [b""],
        [blob[:1000]],
        [blob[:-10]],
        [corrupt],
        [b"\x00" * (DEFAULT_PARAMS.ciphertext_max_bytes() + 1)],
        [blob, blob],
    ):
        with pytest.raises(MalformedCiphertextError):
            load_chunks(public, bad, 10)
    with pytest.raises(MalformedCiphertextError):  # right bytes, wrong claimed dimension
        load_chunks(public, good, 11)


def test_ciphertext_under_other_parameters_rejected(public):
    other = generate_context(NVFLARE_PARAMS).public()
    with pytest.raises(MalformedCiphertextError):
        load_chunks(public, encrypt_chunks(other, np.zeros(10)), 10)


def test_overflow_check_edges(public):
    # Q/2 for two 60-bit primes is >= 2^118; scale 2^60: n*B must stay below ~2^58
    check_no_overflow(public, 100, 2.0**50, error_margin=1e6)
    with pytest.raises(OverflowRiskError):
        check_no_overflow(public, 2, 2.0**58, error_margin=1e6)
    with pytest.raises(OverflowRiskError):
        check_no_overflow(public, 1, math.inf, error_margin=0)


def test_compact_params_overflow_at_2_pow_59():
    ctx = generate_context(COMPACT_PARAMS).public()
    # one 60-bit prime q < 2^60: limit is q/2 - margin < 2^59; scale 2^40 -> n*B < 2^19
    check_no_overflow(ctx, 1, 2.0**18, error_margin=1e4)
    with pytest.raises(OverflowRiskError):
        check_no_overflow(ctx, 1, 2.0**19, error_margin=0)
    with pytest.raises(OverflowRiskError):
        check_no_overflow(ctx, 4, 2.0**17, error_margin=0)


def test_flooding_hand_worked():
    # n=1, N=8192: sqrt(8192*(ln 16384 + 40 ln 2)/2) + 2 = sqrt(4096*37.42998) + 2 = 393.548
    assert coefficient_error_bound(1, 8192) == pytest.approx(393.548, abs=1e-2)
    # sigma_slot = sqrt(12) * 2^15 * 393.548 * 64 / 2^60 with tau=1, s=30
    expected = 3.4641016 * 32768 * 393.548 * 64 / 2.0**60
    assert flooding_std(1, 8192, 2.0**60, max_queries=1) == pytest.approx(expected, rel=1e-5)
    assert release_grid(1.0) == 2.0**-4
    with pytest.raises(ValueError):
        flooding_std(1, 8192, 2.0**60, statistical_security=29)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 1000), st.integers(1, 2**20))
def test_flooding_grows_with_summands_and_queries(n, tau):
    a = flooding_std(n, 8192, 2.0**60, max_queries=tau)
    assert flooding_std(n + 1, 8192, 2.0**60, max_queries=tau) > a
    assert flooding_std(n, 8192, 2.0**60, max_queries=tau * 4) == pytest.approx(2 * a)
    assert release_grid(a) <= a / 16
