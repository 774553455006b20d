"""FedAvg: the aggregate of weighted inputs divided by the survivors' weights is the weighted mean."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.aggregators.plain import PlainAggregator
from securefl.committer import weighted_mean_update
from securefl.crypto.random import SystemRandomSource
from securefl.fl.server_opt import ServerOptimizer
from securefl.protocol.plan import RoundSpec


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_fedavg_equals_weighted_mean(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    deltas = {i: rng.normal(size=d) for i in range(n)}
    counts = rng.integers(1, 10_000, size=n)
    weights = counts / counts.max()
    spec = RoundSpec(session_id=bytes(16), round=1, participants=tuple(range(n)),
                     clip_norm=1e9, threshold=1)
    out = PlainAggregator().aggregate(spec, {i: weights[i] * deltas[i] for i in range(n)},
                                      random=lambda c, p: SystemRandomSource())
    mean = weighted_mean_update(out.total, out.survivors, list(weights))
    expected = sum(counts[i] * deltas[i] for i in range(n)) / counts.sum()
    np.testing.assert_allclose(mean, expected, rtol=1e-9, atol=1e-12)
    new = ServerOptimizer("fedavg", lr=1.0).step(np.zeros(d), mean)
    np.testing.assert_allclose(new, expected, rtol=1e-9, atol=1e-12)


def test_fedadam_first_step_hand_worked() -> None:
    opt = ServerOptimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    out = opt.step(np.zeros(2), np.array([1.0, -2.0]))
    # m = 0.1*D, v = 0.01*D^2 -> step = 0.1 * 0.1 D / (0.1 |D| + 1e-3)
    expected = 0.1 * np.array([0.1 / (0.1 + 1e-3), -0.2 / (0.2 + 1e-3)])
    np.testing.assert_allclose(out, expected)


def test_dropped_clients_are_not_in_the_mean() -> None:
    spec = RoundSpec(session_id=bytes(16), round=1, participants=(0, 1, 2), clip_norm=10.0,
                     threshold=2)
    inputs = {0: np.array([1.0]), 1: np.array([3.0]), 2: np.array([100.0])}
    out = PlainAggregator().aggregate(spec, inputs, dropouts={2: "upload"},
                                      random=lambda c, p: SystemRandomSource())
    assert out.survivors == (0, 1)
    assert weighted_mean_update(out.total, out.survivors, [1.0, 1.0, 1.0])[0] == pytest.approx(2.0)
