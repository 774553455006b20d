"""SecAggAggregator on float inputs: the total is within the quantization error of the float sum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefl.aggregators.secagg import SecAggAggregator
from securefl.crypto.random import RandomSource, SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import AggregationAbortedError, LocalProtocolError, OverflowRiskError
from securefl.protocol.plan import NoisePlan, RoundSpec

MASTER = Secret(b"aggregator-test".ljust(32, b"\x00"))


def factory(client: int, purpose: str) -> RandomSource:
    return SeededRandomSource(MASTER, f"{client}/{purpose}")


def _inputs(n: int, dim: int, clip: float) -> dict[int, np.ndarray]:
    out = {}
    for c in range(n):
        v = SeededRandomSource(MASTER, f"in/{c}").uniform(dim) - 0.5
        out[c] = v * (clip / max(float(np.linalg.norm(v)), 1e-12)) * (0.2 + 0.8 * c / n)
    return out


def test_float_total_within_quantization_error() -> None:
    n, dim, clip = 8, 300, 2.0
    spec = RoundSpec(
        session_id=b"A" * 16, round=0, participants=tuple(range(n)), clip_norm=clip, threshold=5
    )
    agg = SecAggAggregator(precision_bits=12)
    inputs = _inputs(n, dim, clip)
    out = agg.aggregate(spec, inputs, random=factory, dropouts={2: "masked", 6: "unmask"})
    assert out.survivors == (0, 1, 3, 4, 5, 6, 7)
    assert out.dropouts == {2: "masked", 6: "unmask"}
    gamma = clip / 2**12
    assert out.encoding is not None and out.encoding.gamma == gamma
    exact = sum(inputs[c] for c in out.survivors)
    # stochastic rounding moves each client's coordinate by < gamma: |error| < survivors * gamma
    assert np.max(np.abs(out.total - exact)) < len(out.survivors) * gamma
    assert out.noise_std == 0.0
    assert out.bytes_sent["server"] > 0 and all(f"client/{c}" in out.bytes_sent for c in range(n))
    # n = 8, C / gamma = 4096: |sum| <= 32768 -> 17 bits -> 3 bytes per coordinate
    assert out.encoding.bits == 17 and out.encoding.bytes_per_coordinate == 3


def test_field_edge_end_to_end() -> None:
    # 7 clients each at +C (then -C) on coordinate 0, C / gamma = 9: the sum is +-63, exactly the
    # edge of the 7-bit field chosen by the bound (test_secagg_quantize checks 63 with 6 bits wraps)
    n, clip, gamma = 7, 1.125, 0.125
    spec = RoundSpec(
        session_id=b"E" * 16, round=0, participants=tuple(range(n)), clip_norm=clip, threshold=n
    )
    agg = SecAggAggregator(gamma=gamma, degree=n - 1)
    for sign in (1.0, -1.0):
        inputs = {c: np.array([sign * clip, 0.0, 0.0]) for c in range(n)}
        out = agg.aggregate(spec, inputs, random=factory)
        assert out.encoding is not None and out.encoding.bits == 7
        assert out.integer_total is not None and int(out.integer_total[0]) == int(sign * 63)
        assert out.total[0] == sign * 7.875


def test_encoding_for_reports_gamma_bits_and_sensitivity() -> None:
    spec = RoundSpec(
        session_id=b"A" * 16, round=0, participants=tuple(range(10)), clip_norm=1.0, threshold=6
    )
    enc = SecAggAggregator(precision_bits=10).encoding_for(spec, 400)
    assert enc.gamma == 1 / 1024
    assert enc.sensitivity_int == 1024 + 20
    assert enc.bits == (10 * 1024).bit_length() + 1


def test_below_threshold_aborts_and_releases_nothing() -> None:
    spec = RoundSpec(
        session_id=b"A" * 16, round=0, participants=tuple(range(4)), clip_norm=1.0, threshold=3
    )
    with pytest.raises(AggregationAbortedError):
        SecAggAggregator().aggregate(
            spec, _inputs(4, 5, 1.0), random=factory, dropouts={0: "share", 1: "masked"}
        )


def test_input_over_the_clip_norm_is_refused() -> None:
    spec = RoundSpec(session_id=b"A" * 16, round=0, participants=(0, 1), clip_norm=1.0, threshold=2)
    with pytest.raises(OverflowRiskError):
        SecAggAggregator().aggregate(spec, {0: np.array([1.5]), 1: np.array([0.1])}, random=factory)
    with pytest.raises(LocalProtocolError):
        SecAggAggregator().aggregate(spec, {0: np.array([0.5])}, random=factory)


def test_with_discrete_gaussian_noise() -> None:
    n, dim, clip, z = 6, 4000, 1.0, 1.0
    noise = NoisePlan(noise_multiplier=z, min_survivors=4)
    spec = RoundSpec(
        session_id=b"N" * 16,
        round=0,
        participants=tuple(range(n)),
        clip_norm=clip,
        threshold=3,
        noise=noise,
    )
    agg = SecAggAggregator(precision_bits=8)
    inputs = _inputs(n, dim, clip)
    out = agg.aggregate(spec, inputs, random=factory, dropouts={5: "share"})
    gamma = clip / 256
    sigma2_int = (z * clip / gamma) ** 2 / 4
    assert out.encoding is not None and out.encoding.noise_sigma2_int == pytest.approx(sigma2_int)
    assert out.noise_std == pytest.approx(math.sqrt(5 * sigma2_int) * gamma)
    resid = out.total - sum(inputs[c] for c in out.survivors)
    # empirical std of 4000 coordinates: within 5 % of the planned std (rounding adds < 0.1 %)
    assert abs(float(np.std(resid)) / out.noise_std - 1) < 0.05
    # 3 survivors would carry less than the planned noise: the protocol threshold is raised to
    # min_survivors = 4, so the round aborts before anything is unmasked
    with pytest.raises(AggregationAbortedError, match="threshold is 4"):
        agg.aggregate(spec, inputs, random=factory, dropouts={3: "share", 4: "share", 5: "masked"})


def test_enrolled_identities_are_used_and_must_cover_participants() -> None:
    from securefl.crypto.signing import SigningKey
    from securefl.errors import ConfigError

    spec = RoundSpec(
        session_id=b"I" * 16, round=0, participants=(0, 1, 2), clip_norm=1.0, threshold=2
    )
    keys = {c: SigningKey.from_seed(Secret(bytes([c + 1]) * 32)) for c in (0, 1, 2)}
    out = SecAggAggregator(identities=keys).aggregate(spec, _inputs(3, 4, 1.0), random=factory)
    assert out.survivors == (0, 1, 2)
    with pytest.raises(ConfigError):
        SecAggAggregator(identities={0: keys[0]}).aggregate(
            spec, _inputs(3, 4, 1.0), random=factory
        )


def test_digests_of_masked_inputs_as_the_server_received_them() -> None:
    import hashlib

    import msgspec

    n, dim, clip = 5, 40, 1.0
    spec = RoundSpec(
        session_id=b"D" * 16, round=0, participants=tuple(range(n)), clip_norm=clip, threshold=3
    )
    inputs = _inputs(n, dim, clip)
    delivered: dict[int, bytes] = {}

    def record(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if stage == "masked" and recipient == -1:
            delivered[sender] = data
        return data

    dropouts = {1: "masked", 3: "unmask"}
    out = SecAggAggregator(tamper=record).aggregate(
        spec, inputs, random=factory, dropouts=dropouts
    )
    assert out.survivors == (0, 2, 3, 4)  # 3 dropped after its masked input was summed
    assert set(delivered) == {0, 2, 3, 4}
    # independent: plain msgpack decoding of the delivered bytes, then hashlib
    expected = {
        f"input/{c}": hashlib.sha256(msgspec.msgpack.decode(delivered[c])["data"]).hexdigest()
        for c in out.survivors
    }
    assert {k: v for k, v in out.digests.items() if k.startswith("input/")} == expected
    assert out.digests["aggregate"] == hashlib.sha256(out.total.tobytes()).hexdigest()

    # a masked input altered in transit: its digest is that of the altered bytes, the others stay
    def flip(stage: str, sender: int, recipient: int, data: bytes) -> bytes:
        if stage == "masked" and recipient == -1 and sender == 0:
            raw = msgspec.msgpack.decode(data)
            masked = bytearray(raw["data"])
            masked[0] ^= 0x01
            raw["data"] = bytes(masked)
            delivered[0] = bytes(masked)
            return msgspec.msgpack.encode(raw)
        return data

    bad = SecAggAggregator(tamper=flip).aggregate(
        spec, inputs, random=factory, dropouts=dropouts
    )
    assert bad.digests["input/0"] != out.digests["input/0"]
    assert bad.digests["input/0"] == hashlib.sha256(delivered[0]).hexdigest()
    for c in (2, 3, 4):
        assert bad.digests[f"input/{c}"] == out.digests[f"input/{c}"]
