"""Quantization and the no-wrap field bound, tested at its edge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import OverflowRiskError
from securefl.protocol import quantize as qz


def test_bits_for_hand_values() -> None:
    # centred range of b bits is [-2^(b-1), 2^(b-1) - 1]
    assert qz.bits_for(0) == 1
    assert qz.bits_for(1) == 2
    assert qz.bits_for(63) == 7
    assert qz.bits_for(64) == 8
    assert qz.bits_for(127) == 8
    assert qz.bits_for(128) == 9


def test_choose_encoding_hand_example() -> None:
    # 7 clients, C = 1.125, gamma = 1/8: |q| <= 9 each, |sum| <= 63 -> 7 bits, 1 byte per coord
    enc = qz.choose_encoding(7, 100, 1.125, 0.125)
    assert (enc.bits, enc.bytes_per_coordinate) == (7, 1)
    assert enc.sensitivity_int == pytest.approx(9 + 10)  # C / gamma + sqrt(d)
    # noise: tail tau * sqrt(n * s2) with tau from 2 d exp(-tau^2/2) = 2^-40
    tau = math.sqrt(2 * (math.log(200) + 40 * math.log(2)))
    enc = qz.choose_encoding(7, 100, 1.125, 0.125, noise_sigma2=4.0)
    assert enc.bits == qz.bits_for(63 + math.ceil(tau * math.sqrt(28)))


def test_edge_of_the_bound_decodes_and_one_bit_less_wraps() -> None:
    bits = 7
    for total in (63, -63, -64):
        assert qz.from_field(qz.to_field(np.array([total]), bits), bits)[0] == total
    # the same sum with one bit fewer wraps (silent corruption that choose_encoding prevents)
    assert qz.from_field(qz.to_field(np.array([63]), bits - 1), bits - 1)[0] == 63 - 64
    assert qz.from_field(qz.to_field(np.array([64]), bits), bits)[0] == 64 - 128


def test_refuses_more_than_32_bits() -> None:
    with pytest.raises(OverflowRiskError):
        qz.choose_encoding(1000, 10, 1.0, 1.0 / 2**22)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 32), dim=st.integers(1, 50), seed=st.binary(max_size=8))
def test_pack_roundtrip_and_size(bits: int, dim: int, seed: bytes) -> None:
    words = SeededRandomSource(Secret(seed.ljust(32, b"0")), "p").uint64(dim)
    v = (words % np.uint64(1 << bits)).astype(np.uint32)
    data = qz.pack(v, bits)
    assert len(data) == dim * ((bits + 7) // 8)
    np.testing.assert_array_equal(qz.unpack(data, bits, dim), v)


def test_stochastic_rounding_error_below_one_step_and_unbiased() -> None:
    rnd = SeededRandomSource(Secret(b"r" * 32), "round")
    x = np.full(200_000, 0.3)
    q = qz.stochastic_round(x, 1.0, rnd)
    assert set(np.unique(q)) == {0, 1}
    # mean of Bernoulli(0.3) over 2e5 draws: std 0.001, allow 5 sigma
    assert abs(q.mean() - 0.3) < 0.005
    y = np.linspace(-3, 3, 1001)
    qy = qz.stochastic_round(y, 0.25, rnd)
    assert np.all(np.abs(qy - y / 0.25) < 1)
