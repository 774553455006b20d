"""Mask PRG: AES-256-CTR words, checked against AES-ECB over explicit counter blocks."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.crypto.prg import CHUNK_WORDS, accumulate_mask, expand_mask
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError

SEED = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")


def _ctr_by_ecb(key: bytes, n_words: int) -> np.ndarray:
    """Independent CTR: E_k(counter i as a 128-bit big-endian block) for i = 0, 1, ..."""
    blocks = (4 * n_words + 15) // 16
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - CTR reference
    stream = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(blocks)))
    return np.frombuffer(stream[: 4 * n_words], dtype="<u4")


@pytest.mark.parametrize("n", [1, 3, 4, 5, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 3])
def test_expand_matches_independent_ctr(n: int) -> None:
    np.testing.assert_array_equal(expand_mask(Secret(SEED), n), _ctr_by_ecb(SEED, n))


def test_first_word_known_answer() -> None:
    # AES-256(SEED, 0^128): first 4 bytes, little-endian word, computed once with ECB above
    first = _ctr_by_ecb(SEED, 1)[0]
    assert expand_mask(Secret(SEED), 1)[0] == first


def test_accumulate_wraps_and_cancels() -> None:
    acc = np.full(1000, 2**32 - 1, dtype=np.uint32)
    accumulate_mask(acc, Secret(SEED), 1)
    expected = (np.uint64(2**32 - 1) + _ctr_by_ecb(SEED, 1000).astype(np.uint64)) % np.uint64(2**32)
    np.testing.assert_array_equal(acc, expected.astype(np.uint32))
    accumulate_mask(acc, Secret(SEED), -1)
    assert np.all(acc == 2**32 - 1)


def test_bad_arguments() -> None:
    with pytest.raises(CryptoError):
        accumulate_mask(np.zeros(4, dtype=np.uint64), Secret(SEED), 1)
    with pytest.raises(CryptoError):
        accumulate_mask(np.zeros(4, dtype=np.uint32), Secret(SEED), 2)
    with pytest.raises(CryptoError):
        expand_mask(Secret(b"short"), 4)
