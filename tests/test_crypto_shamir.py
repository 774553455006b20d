"""Shamir sharing over GF(2^521 - 1), checked with an independent Lagrange interpolation."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.crypto import shamir
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import CryptoError, IntegrityError

P = 2**521 - 1


def _interpolate_at_zero(points: dict[int, int]) -> int:
    """Lagrange at 0 over the rationals first, then mapped to GF(P): independent of the package."""
    total = Fraction(0)
    for xk, yk in points.items():
        basis = Fraction(1)
        for xm in points:
            if xm != xk:
                basis *= Fraction(xm, xm - xk)
        total += basis * yk
    return total.numerator * pow(total.denominator, -1, P) % P


def test_prime_is_m521() -> None:
    assert shamir.PRIME == P


def test_hand_worked_polynomial() -> None:
    # f(x) = 5 + 3x over GF(P): shares at 1, 2 are 8 and 11; Lagrange at 0: 2*8 - 1*11 = 5
    assert shamir.combine({1: 8, 2: 11}, 2, 1) == bytes([5])


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 9),
    data=st.data(),
)
def test_any_t_shares_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    ids = data.draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    xs = [c + 1 for c in ids]  # shares are indexed by client id + 1
    shares = shamir.split(secret, t, xs, SeededRandomSource(Secret(b"r" * 32), str(ids)))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=t, unique=True))
    chosen = {x: shares[x] for x in subset}
    assert _interpolate_at_zero(chosen) == int.from_bytes(secret, "big")
    assert shamir.combine(chosen, t, 32) == secret


def test_fewer_than_t_shares_is_refused_and_t_minus_1_shares_look_random() -> None:
    rnd = SeededRandomSource(Secret(b"q" * 32), "x")
    shares = shamir.split(b"\x01" * 32, 3, [1, 2, 3], rnd)
    with pytest.raises(CryptoError):
        shamir.combine({1: shares[1], 2: shares[2]}, 3, 32)
    # two shares interpolated as if t were 2 give a value unrelated to the secret
    assert _interpolate_at_zero({1: shares[1], 2: shares[2]}) != int.from_bytes(b"\x01" * 32, "big")


def test_forged_share_changes_result_or_is_detected() -> None:
    rnd = SeededRandomSource(Secret(b"q" * 32), "y")
    shares = shamir.split(b"\x02" * 32, 2, [1, 2, 3], rnd)
    # shifting share 1 by delta shifts the secret by l_1(0) * delta = 2 * delta (x = 1, 2)
    forged = {1: (shares[1] + 1) % P, 2: shares[2]}
    assert shamir.combine(forged, 2, 32) == (int.from_bytes(b"\x02" * 32, "big") + 2).to_bytes(
        32, "big"
    )
    # a random-looking forgery lands outside the 32-byte range: detected
    forged = {1: (shares[1] + 2**400) % P, 2: shares[2]}
    with pytest.raises(IntegrityError):
        shamir.combine(forged, 2, 32)


def test_encoding_and_bad_points() -> None:
    assert shamir.decode_share(shamir.encode_share(12345)) == 12345
    with pytest.raises(IntegrityError):
        shamir.decode_share(b"\x00" * 65)
    with pytest.raises(IntegrityError):
        shamir.decode_share(b"\xff" * 66)
    rnd = SeededRandomSource(Secret(b"q" * 32), "z")
    with pytest.raises(CryptoError):
        shamir.split(b"x", 1, [0, 1], rnd)
    with pytest.raises(CryptoError):
        shamir.split(b"x", 3, [1, 2], rnd)
