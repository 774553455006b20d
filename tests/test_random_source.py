"""RandomSource streams: the keystream bytes, uint32/uint64 views of them, chunked generation, and
the system source's fast-key-erasure expansion, checked against ChaCha20 computed here."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scipy import stats

from securefl.crypto import random as rnd
from securefl.crypto.random import SeededRandomSource, SystemRandomSource
from securefl.crypto.secret import Secret

SEED = Secret(bytes(range(32)))


def _chacha_zeros(key: bytes, n: int) -> bytes:
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(n))


def _seeded_key(label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"securefl-seeded-random-v1",
                info=label.encode()).derive(SEED.expose())


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 65536, 65536 * 2 + 5])
def test_seeded_stream_is_chacha20_of_zeros(n: int) -> None:
    want = _chacha_zeros(_seeded_key("kat"), n)
    assert SeededRandomSource(SEED, "kat").random_bytes(n) == want


def test_words_are_little_endian_words_of_the_same_stream() -> None:
    stream = _chacha_zeros(_seeded_key("mix"), 200_000)
    src = SeededRandomSource(SEED, "mix")
    parts = [src.random_bytes(3), src.uint32(5), src.random_bytes(300), src.uint64(7),
             src.uint32(40_000), src.random_bytes(1)]
    got = b"".join(p if isinstance(p, bytes) else p.astype(p.dtype.newbyteorder("<")).tobytes()
                   for p in parts)
    assert got == stream[: len(got)]
    w = SeededRandomSource(SEED, "mix")
    w.random_bytes(8)
    assert w.uint32(1)[0] == int.from_bytes(stream[8:12], "little")
    assert w.uint64(1)[0] == int.from_bytes(stream[12:20], "little")
    assert src.uint32(3).dtype == np.uint32 and src.uint64(3).dtype == np.uint64


def test_word_vectors_are_writable() -> None:
    w = SeededRandomSource(SEED, "w").uint32(10)
    w[0] = 1  # callers may work in place
    assert SystemRandomSource().uint64(100).flags.writeable


def test_system_source_expands_a_fresh_os_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [bytes([7]) * 32, bytes([9]) * 32]

    def fake_urandom(n: int) -> bytes:
        assert n == 32, "a large draw reads exactly one 32-byte key from the OS"
        return keys.pop(0)

    monkeypatch.setattr(rnd.os, "urandom", fake_urandom)
    src = SystemRandomSource()
    assert src.random_bytes(10_000) == _chacha_zeros(bytes([7]) * 32, 10_000)
    words = src.uint32(1000)  # the next draw has its own key
    assert words.tobytes() == _chacha_zeros(bytes([9]) * 32, 4000)


def test_system_source_small_draws_read_the_os_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rnd.os, "urandom", lambda n: b"\x01" * n)
    assert SystemRandomSource().random_bytes(rnd._SMALL_DRAW) == b"\x01" * rnd._SMALL_DRAW


def test_system_source_bytes_look_uniform() -> None:
    """Chi-square of 2^20 bytes over 256 values; false-failure probability 1e-6 (fresh OS
    randomness, so this test is random, but fails only with that probability)."""
    data = np.frombuffer(SystemRandomSource().random_bytes(1 << 20), dtype=np.uint8)
    assert stats.chisquare(np.bincount(data, minlength=256)).pvalue > 1e-6
    a, b = SystemRandomSource().random_bytes(4096), SystemRandomSource().random_bytes(4096)
    assert a != b


def test_uint32_into_gives_the_same_words_as_uint32() -> None:
    a, b = SeededRandomSource(SEED, "into"), SeededRandomSource(SEED, "into")
    buf = np.empty(70_000, dtype=np.uint32)
    rnd.uint32_into(a, buf[:5])
    rnd.uint32_into(a, buf[5:])
    np.testing.assert_array_equal(buf, b.uint32(70_000))

    class Fake:  # a RandomSource that is not one of ours: the generic path
        def uint32(self, n: int) -> np.ndarray:
            return np.arange(n, dtype=np.uint32)

    out = np.zeros(4, dtype=np.uint32)
    rnd.uint32_into(Fake(), out)  # type: ignore[arg-type]
    assert out.tolist() == [0, 1, 2, 3]
