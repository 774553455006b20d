"""simulate_secure_sum: secagg and plain agree with the float sum; ckks is not available yet."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.errors import ConfigError
from securefl.simulate import simulate_secure_sum


def _updates(n: int, dim: int) -> list[np.ndarray]:
    return [np.linspace(-1, 1, dim) * (c + 1) / (10 * n) for c in range(n)]


def test_secagg_matches_float_sum_with_dropouts() -> None:
    ups = _updates(12, 50)
    res = simulate_secure_sum(ups, seed=7, dropouts={3: "masked", 8: "advertise"})
    assert 3 not in res.survivors and 8 not in res.survivors and len(res.survivors) == 10
    clip = max(float(np.linalg.norm(u)) for u in ups)
    gamma = clip / 2**16  # the aggregator's default precision
    exact = sum(ups[c] for c in res.survivors)
    assert np.max(np.abs(res.total - exact)) < len(res.survivors) * gamma
    assert res.bytes_sent["server"] > 0
    again = simulate_secure_sum(ups, seed=7, dropouts={3: "masked", 8: "advertise"})
    np.testing.assert_array_equal(res.total, again.total)


def test_mapping_input_and_plain_mode() -> None:
    ups = {10: np.ones(4) * 0.5, 20: np.ones(4) * 0.25, 30: np.ones(4)}
    res = simulate_secure_sum(ups, mode="plain", seed=1)
    np.testing.assert_allclose(res.total, np.ones(4) * 1.75)
    sec = simulate_secure_sum(ups, threshold=3, neighbours=2, seed=1)
    assert sec.survivors == (10, 20, 30)
    assert np.max(np.abs(sec.total - 1.75)) < 3 * 2.0 / 2**16


def test_modes() -> None:
    with pytest.raises(ConfigError):
        simulate_secure_sum(_updates(3, 2), mode="ckks")
    with pytest.raises(ConfigError):
        simulate_secure_sum(_updates(3, 2), mode="nope")
