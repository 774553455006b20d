"""CKKSAggregator end to end: accuracy within the documented bound, DP noise, dropouts, key
files."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from securefl.aggregation import NoisePlan, RoundSpec
from securefl.ckks import (
    CKKSAggregator,
    create_key_holder_keys,
    load_key_holder,
    load_signed_public_context,
)
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import VerifyKey
from securefl.errors import AggregationAbortedError
from securefl.he.flooding import release_error_bound
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol.ckks import accept_public_context


def _factory(seed: bytes = b"\x03" * 32):
    return lambda cid, purpose: SeededRandomSource(Secret(seed), f"{cid}/{purpose}")


def _inputs(n: int, d: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        v = rng.normal(size=d)
        out[i] = rng.uniform(0.05, 1.0) * v / np.linalg.norm(v)  # w_i * clip(delta_i), C = 1
    return out


@pytest.fixture(scope="module")
def agg():
    return CKKSAggregator()


def test_weighted_mean_within_bound_n100_d10000(agg):
    n, d = 100, 10_000
    inputs = _inputs(n, d)
    spec = RoundSpec(
        session_id=b"A" * 16, round=0, participants=tuple(range(n)), clip_norm=1.0, threshold=10
    )
    out = agg.aggregate(spec, inputs, random=_factory())
    exact_mean = np.sum([inputs[i] for i in range(n)], axis=0) / n  # independent numpy sum
    bound = release_error_bound(n, 8192, DEFAULT_PARAMS.scale, d)
    err = np.max(np.abs(out.total / n - exact_mean))
    assert err <= bound / n
    assert bound / n < 1e-6  # the documented precision of the default parameters


def test_small_round_with_dropouts(agg):
    n, d = 6, 5000
    inputs = _inputs(n, d, seed=1)
    spec = RoundSpec(
        session_id=b"B" * 16, round=0, participants=tuple(range(n)), clip_norm=1.0, threshold=3
    )
    out = agg.aggregate(
        spec, inputs, random=_factory(), dropouts={0: "contribution", 5: "verification"}
    )
    assert out.survivors == (1, 2, 3, 4, 5)  # 5 sent its ciphertext before dropping
    exact = np.sum([inputs[i] for i in out.survivors], axis=0)
    assert np.max(np.abs(out.total - exact)) <= release_error_bound(
        5, 8192, DEFAULT_PARAMS.scale, d
    )
    assert set(out.digests) >= {"aggregate", "input/1", "release"}
    assert "input/0" not in out.digests


def test_below_threshold_aborts(agg):
    inputs = _inputs(4, 100, seed=2)
    spec = RoundSpec(
        session_id=b"C" * 16, round=0, participants=(0, 1, 2, 3), clip_norm=1.0, threshold=3
    )
    with pytest.raises(AggregationAbortedError):
        agg.aggregate(
            spec, inputs, random=_factory(), dropouts={0: "contribution", 1: "contribution"}
        )


def test_too_few_verifiers_aborts():
    inputs = _inputs(3, 100, seed=3)
    spec = RoundSpec(
        session_id=b"D" * 16, round=0, participants=(0, 1, 2), clip_norm=1.0, threshold=2
    )
    with pytest.raises(AggregationAbortedError, match="verifiers"):
        CKKSAggregator(verifiers=2).aggregate(
            spec, inputs, random=_factory(), dropouts={0: "verification", 1: "verification"}
        )


def test_dp_noise_present_with_expected_std(agg):
    n, d = 4, 20_000
    inputs = {i: np.zeros(d) for i in range(n)}
    spec = RoundSpec(
        session_id=b"E" * 16,
        round=3,
        participants=tuple(range(n)),
        clip_norm=1.0,
        threshold=2,
        noise=NoisePlan(noise_multiplier=1.0, min_survivors=2),
    )
    out = agg.aggregate(spec, inputs, random=_factory())
    # each share has std 1/sqrt(2); 4 survivors -> std sqrt(4/2) = 1.414 in the sum
    assert out.noise_std == pytest.approx(np.sqrt(2.0))
    assert np.std(out.total) == pytest.approx(np.sqrt(2.0), rel=0.03)


def test_same_round_twice_refused(agg):
    inputs = _inputs(3, 50, seed=4)
    spec = RoundSpec(
        session_id=b"F" * 16, round=0, participants=(0, 1, 2), clip_norm=1.0, threshold=2
    )
    agg.aggregate(spec, inputs, random=_factory())
    with pytest.raises(Exception, match="already decrypted"):
        agg.aggregate(spec, inputs, random=_factory())


def test_key_files(tmp_path):
    paths = create_key_holder_keys(tmp_path / "kh")
    for p in (paths.signing_key, paths.secret_context):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    vk = VerifyKey(bytes.fromhex(paths.verify_key.read_text().strip()))
    public = accept_public_context(
        load_signed_public_context(paths.public_context), vk, DEFAULT_PARAMS
    )
    holder = load_key_holder(tmp_path / "kh", {}, min_clients=1, verifiers=1)
    assert holder.verify_key == vk
    assert public.to_bytes() == holder.public_context_message().context
