"""simulate_secure_sum: secagg, ckks and plain agree with the float sum."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.errors import AggregationAbortedError, ConfigError
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


def test_ckks_matches_float_sum_with_dropouts() -> None:
    from securefl.he.flooding import release_error_bound
    from securefl.he.params import DEFAULT_PARAMS

    ups = _updates(6, 40)
    res = simulate_secure_sum(
        ups, mode="ckks", seed=3, dropouts={1: "contribution", 4: "reveal", 5: "verification"}
    )
    assert res.survivors == (0, 2, 3, 5)  # 5 contributed before dropping; 4 never revealed
    assert res.dropouts == {1: "contribution", 4: "reveal", 5: "verification"}
    exact = ups[0] + ups[2] + ups[3] + ups[5]  # independent float sum
    err = float(np.max(np.abs(res.total - exact)))
    assert err <= release_error_bound(
        4, DEFAULT_PARAMS.poly_modulus_degree, DEFAULT_PARAMS.scale, 40
    )
    assert res.bytes_sent["server/commitment_set"] > 0 and res.bytes_sent["client/0"] > 0
    with pytest.raises(AggregationAbortedError):  # below the majority threshold
        simulate_secure_sum(
            ups, mode="ckks", seed=3, dropouts={0: "reveal", 1: "reveal", 2: "reveal"}
        )


def test_modes() -> None:
    with pytest.raises(ConfigError):
        simulate_secure_sum(_updates(3, 2), mode="nope")
