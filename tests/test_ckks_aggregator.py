"""CKKSAggregator end to end: accuracy within the documented bound, DP noise, dropouts, key
files."""

from __future__ import annotations

import hashlib
import stat
import struct

import numpy as np
import pytest

from securefl.aggregators.ckks import CKKSAggregator
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import VerifyKey
from securefl.errors import AggregationAbortedError, ConfigError
from securefl.he.flooding import release_error_bound
from securefl.he.params import DEFAULT_PARAMS
from securefl.keyholder import create_key_holder_keys, load_key_holder, load_signed_public_context
from securefl.protocol.ckks import accept_public_context
from securefl.protocol.plan import NoisePlan, RoundSpec


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


def test_committed_but_unrevealed_client_is_not_in_the_sum(agg):
    n, d = 5, 300
    inputs = _inputs(n, d, seed=5)
    spec = RoundSpec(
        session_id=b"G" * 16, round=0, participants=tuple(range(n)), clip_norm=1.0, threshold=3
    )
    out = agg.aggregate(spec, inputs, random=_factory(), dropouts={1: "reveal", 3: "contribution"})
    assert out.survivors == (0, 2, 4)
    exact = inputs[0] + inputs[2] + inputs[4]
    assert np.max(np.abs(out.total - exact)) <= release_error_bound(
        3, 8192, DEFAULT_PARAMS.scale, d
    )
    assert {"input/0", "input/2", "input/4", "commitment_set"} <= set(out.digests)
    assert "input/1" not in out.digests and "input/3" not in out.digests
    # verifiers: the first two survivors ranked by sha256(domain || closed set digest || u64 id)
    set_digest = bytes.fromhex(out.digests["commitment_set"])
    ranked = sorted(
        out.survivors,
        key=lambda i: hashlib.sha256(
            b"securefl-ckks-verifiers-v1" + set_digest + struct.pack(">Q", i)
        ).digest(),
    )
    assert {k for k in out.bytes_sent if k.startswith("verifier/")} == {
        f"verifier/{v}" for v in ranked[:2]
    }
    # the closed set went to the 4 committed clients (1 included): 4 equal messages
    assert out.bytes_sent["server/commitment_set"] % 4 == 0 and "client/3" not in out.bytes_sent


def test_enrolled_identities_are_used_and_must_cover_participants():
    from securefl.crypto.signing import SigningKey

    keys = {c: SigningKey.from_seed(Secret(bytes([c + 1]) * 32)) for c in (0, 1, 2)}
    server = SigningKey.from_seed(Secret(b"\x77" * 32))
    spec = RoundSpec(
        session_id=b"H" * 16, round=0, participants=(0, 1, 2), clip_norm=1.0, threshold=2
    )
    agg = CKKSAggregator(identities=keys, server_identity=server)
    inputs = _inputs(3, 50, seed=6)
    out = agg.aggregate(spec, inputs, random=_factory())
    assert out.survivors == (0, 1, 2)
    holder = agg._holder
    assert holder is not None and holder.server_key == server.verify_key
    assert holder.federation == {c: k.verify_key for c, k in keys.items()}
    with pytest.raises(ConfigError, match="no identity key"):
        CKKSAggregator(identities={0: keys[0]}).aggregate(spec, inputs, random=_factory())
    # default: derived per client from random(client, "identity"), so the same seed gives the
    # same identities and another seed other ones
    a, b = CKKSAggregator(), CKKSAggregator()
    a.aggregate(spec, inputs, random=_factory())
    b.aggregate(spec, inputs, random=_factory(b"\x05" * 32))
    assert a._holder is not None and b._holder is not None
    assert a._holder.federation[0] != b._holder.federation[0]
    expected = SigningKey.from_seed(Secret(_factory()(0, "identity").random_bytes(32))).verify_key
    assert a._holder.federation[0] == expected


def test_weight_slot_gives_the_weighted_mean_with_dropouts(agg):
    """FedAvg rounds: each client encrypts its weight w_i in one extra slot beside w_i * clip(d_i);
    the released last slot is the survivors' weight sum (checked against an independent numpy
    sum), so the weighted mean needs no claim of the server about who contributed."""
    n, d = 20, 3000
    rng = np.random.default_rng(7)
    w = rng.uniform(0.05, 1.0, size=n)
    inputs = {}
    for i in range(n):
        v = rng.normal(size=d)
        inputs[i] = w[i] * v / np.linalg.norm(v)
    spec = RoundSpec(session_id=b"W" * 16, round=1, participants=tuple(range(n)), clip_norm=1.0,
                     threshold=10, weights=tuple(float(x) for x in w))
    out = agg.aggregate(spec, inputs, random=_factory(), dropouts={3: "reveal", 11: "contribution"})
    survivors = [i for i in range(n) if i not in (3, 11)]
    assert out.survivors == tuple(survivors)
    bound = release_error_bound(len(survivors), 8192, DEFAULT_PARAMS.scale, d + 1)
    exact_w = float(np.sum(w[survivors]))
    exact_total = np.sum([inputs[i] for i in survivors], axis=0)
    assert out.total.shape == (d,)
    assert out.weight_total is not None and abs(out.weight_total - exact_w) <= bound
    assert np.max(np.abs(out.total - exact_total)) <= bound
    mean_err = np.max(np.abs(out.total / out.weight_total - exact_total / exact_w))
    assert mean_err <= (bound + np.max(np.abs(exact_total)) * bound / exact_w) / (exact_w - bound)


def test_a_release_whose_weight_slot_disagrees_is_refused():
    from securefl.errors import IntegrityError
    from securefl.protocol.ckks import split_weight_slot

    n, d = 5, 100
    bound = release_error_bound(n, 8192, DEFAULT_PARAMS.scale, d + 1)
    weights = [0.5, 1.0, 0.25, 0.75, 1.0]
    ok = np.append(np.zeros(d), sum(weights) + bound / 2)
    total, wt = split_weight_slot(ok, weights, params=DEFAULT_PARAMS, num_summands=n)
    assert total.shape == (d,) and wt == sum(weights) + bound / 2
    # the server claims a contributor whose ciphertext is not in the sum (weight 0.25 missing)
    short = np.append(np.zeros(d), sum(weights) - 0.25)
    with pytest.raises(IntegrityError, match="weight sum"):
        split_weight_slot(short, weights, params=DEFAULT_PARAMS, num_summands=n)


def test_weight_outside_unit_interval_is_refused():
    from securefl.errors import LocalProtocolError

    agg = CKKSAggregator()
    inputs = _inputs(3, 50, seed=4)
    spec = RoundSpec(session_id=b"V" * 16, round=1, participants=(0, 1, 2), clip_norm=1.0,
                     threshold=2, weights=(0.5, 1.0, 1.0))
    agg.aggregate(spec, inputs, random=_factory())  # valid
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        RoundSpec(session_id=b"V" * 16, round=1, participants=(0, 1, 2), clip_norm=1.0,
                  threshold=2, weights=(0.5, 1.5, 1.0))
    from securefl.crypto.signing import SigningKey
    from securefl.he.context import generate_context
    from securefl.protocol.ckks import CKKSClient

    ctx = generate_context(DEFAULT_PARAMS).public()
    client = CKKSClient(0, SigningKey.generate(), ctx, SigningKey.generate().verify_key)
    with pytest.raises(LocalProtocolError, match=r"\(0, 1\]"):
        client.commit(session_id=b"V" * 16, round_=1, values=inputs[0], clip_norm=1.0,
                      num_participants=3, noise_std=0.0, plan_digest=bytes(32), random=_factory()(0, "noise"),
                      weight=2.0)


def test_run_output_states_the_ckks_trust_assumption():
    """`securefl run --aggregation ckks` prints one line with the mode's trust assumption (every
    bank encrypts honestly; one deviating bank may extract the key); other modes do not."""
    from securefl.cli.run import format_result
    from securefl.result import RunResult

    def _result(aggregation: str) -> RunResult:
        return RunResult(
            securefl_version="0", transport="in-process", session_id="00", aggregation=aggregation,
            insecure=False, dp=False, task="classification", manifest_sha256=None, run_dir="r",
            rounds_completed=1, final_metrics={}, history=[], baselines={}, privacy={},
            model_sha256="0" * 64, seconds=1.0, stopped_early=None, round_trips=None,
            round_trips_per_round=None, trips=None, refused={})

    lines = format_result(_result("ckks")).splitlines()
    trust = [line for line in lines if line.startswith("trust: ")]
    assert len(trust) == 1
    assert "EVERY bank encrypts honestly" in trust[0] and "use secagg" in trust[0]
    assert "fresh per round" in trust[0]
    assert not any(line.startswith("trust: ")
                   for line in format_result(_result("secagg")).splitlines())
