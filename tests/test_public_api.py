"""The public names in securefl.__all__ resolve, and the library API runs a federation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import securefl


def test_all_names_resolve() -> None:
    for name in securefl.__all__:
        assert getattr(securefl, name) is not None


def test_library_run_and_secure_sum(tmp_path: Path) -> None:
    result = securefl.run(securefl.RunConfig(rounds=1, model="logreg", out=str(tmp_path / "r")))
    assert isinstance(result, securefl.RunResult) and result.rounds_completed == 1
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-0.1, 0.1, size=50) for _ in range(5)]
    out = securefl.simulate_secure_sum(updates, mode="secagg", threshold=3, seed=1,
                                       dropouts={4: "masked"})
    np.testing.assert_allclose(out.total, sum(updates[:4]), atol=1e-3)
    assert tuple(out.survivors) == (0, 1, 2, 3)
