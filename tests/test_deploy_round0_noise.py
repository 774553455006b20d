"""Round 0's statistics carry DP noise in a deployment too (issue 18): each bank adds its noise
share to its scaled moments (securefl.protocol.round0), the ledger records one record-level event
per bank in the sum, banks refuse a DP plan that would release them exactly, and the noise is what
``securefl run`` adds (same seeds: same ledger and model)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy_helpers import make_federation
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.deploy.client import BankNode
from securefl.deploy.local import LocalLink
from securefl.deploy.server import DeployServer, ServerSettings
from securefl.errors import AggregationAbortedError, ConfigError

RUN: dict[str, Any] = {"rounds": 1, "seed": 5}
#: the embedded table's 23 feature columns, each one group (a one-hot block or one input):
#: one row's scaled moments have L2 norm <= sqrt(1 + 2 * 23)
EMBEDDED_SENSITIVITY = math.sqrt(47.0)


def _banks(f: Any, seed: int | None = RUN["seed"]) -> dict[int, BankNode]:
    return {i: BankNode.from_node_config(f.node_config(b, sim_seed=seed))
            for i, b in enumerate(f.banks)}


def _round0_entries(run_dir: Path) -> list[dict[str, Any]]:
    import json

    lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["round"] == 0]


@pytest.mark.slow  # a deployment and a simulation: about 50 s on a loaded 2-core machine
def test_the_deployments_round0_is_noised_accounted_and_the_simulations(tmp_path: Path) -> None:
    from securefl.audit.verify import verify_run_dir
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    f = make_federation(tmp_path / "fed", RUN)
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(_banks(f), srv.fed.digest)
    res = srv.run(link, link.names())
    verify_run_dir(tmp_path / "run")
    entries = _round0_entries(tmp_path / "run")
    assert [e["party"] for e in entries] == [f"bank:{b}" for b in f.banks]
    for e in entries:
        assert e["level"] == "record" and e["event"]["noise_multiplier"] == 4.0
        assert e["clip_norm"] == pytest.approx(EMBEDDED_SENSITIVITY, rel=1e-12)
    # the released sum is not the exact one (the banks' rows are in their CSVs)
    import json

    facts = json.loads((tmp_path / "run" / "federation.json").read_text())["members"]
    released = np.asarray(facts["standardisation"]["moments_total"])
    assert facts["standardisation"]["noise_multiplier"] == 4.0
    exact = sum(np.concatenate(([len(X)], X.sum(0), (X ** 2).sum(0)))
                for X in (np.loadtxt(f.data[b], delimiter=",", skiprows=1)[:, :-1]
                          for b in f.banks))
    assert released.shape == exact.shape and not np.allclose(released, exact)
    # the count carries noise of std 4 * sqrt(47) (about 27): far from exact, not far off
    assert 0 < abs(released[0] - exact[0]) < 8 * 4 * EMBEDDED_SENSITIVITY
    sim = Engine(RunConfig(**RUN, out=str(tmp_path / "sim"))).run()
    assert res["model_sha256"] == sim.model_sha256
    assert _round0_entries(tmp_path / "sim") == entries


def test_banks_refuse_a_dp_plan_that_releases_round0_exactly(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    f = make_federation(tmp_path / "fed", {**RUN, "stats_noise_multiplier": 0.0})
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    assert srv.plan().dp and srv.plan().stats_noise_multiplier == 0.0
    link = LocalLink(_banks(f), srv.fed.digest)
    with caplog.at_level(logging.ERROR, logger="securefl.deploy"), \
            pytest.raises(AggregationAbortedError, match="answered the hello"):
        srv.run(link, link.names())
    assert sum("without noise" in r.getMessage() for r in caplog.records) == 3


def test_without_dp_round0_is_the_exact_sum_and_unaccounted(tmp_path: Path) -> None:
    f = make_federation(tmp_path / "fed", {**RUN, "dp": False})
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    assert srv.plan().stats_noise_multiplier == 0.0
    link = LocalLink(_banks(f), srv.fed.digest)
    srv.run(link, link.names())
    assert _round0_entries(tmp_path / "run") == []


@pytest.mark.slow  # a one-round deployment with caps: about 40 s on a loaded machine
def test_a_banks_record_cap_counts_round0(tmp_path: Path) -> None:
    """A bank's own record-level cap (securefl.dp.bank_budget) is charged for round 0's release:
    after a one-round run its lifetime ledger holds the round-0 event with the round's DP-SGD."""
    from securefl.dp.bank_budget import BankBudget, BudgetCaps

    f = make_federation(tmp_path / "fed", RUN)
    banks = {i: BankNode.from_node_config({**f.node_config(b, sim_seed=RUN["seed"]),
                                           "record-epsilon-cap": "50",
                                           "budget-dir": str(tmp_path / b)})
             for i, b in enumerate(f.banks)}
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    link = LocalLink(banks, srv.fed.digest)
    assert srv.run(link, link.names())["rounds_completed"] == 1
    for b in f.banks:
        budget = BankBudget(tmp_path / b, b, BudgetCaps())
        charges = budget.charges()
        assert [c.round for c in charges] == [0, 1]
        assert [d.event.noise_multiplier for d in charges[0].drafts] == [4.0]  # type: ignore[union-attr]
        spent = budget.spent()["record"]
        assert 0 < spent < 50


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.floats(0.5, 20.0), st.integers(0, 2**31))
def test_the_public_norm_bound_holds_for_any_rows_in_range(n: int, d: int, z: float,
                                                           seed: int) -> None:
    """The SecAgg bound of a noised round-0 vector comes from (n, D, z) alone and covers the
    vector: rows anywhere (even outside the ranges, which clip), the largest share z * sqrt(D)."""
    from securefl.crypto.random import SeededRandomSource
    from securefl.crypto.secret import Secret
    from securefl.protocol.round0 import noised_moments, norm_log2_bound

    rng = np.random.default_rng(seed)
    X = rng.normal(0, 10, size=(n, d))
    ranges = np.tile([[-1.0, 3.0]], (d, 1))
    dim = 1 + 2 * d
    std = z * math.sqrt(dim)  # the largest share: sensitivity <= sqrt(D), one honest share
    src = SeededRandomSource(Secret(seed.to_bytes(32, "big"), label="t"), "t")
    v = noised_moments(X, ranges, std, src)
    assert float(np.linalg.norm(v)) <= 2.0 ** norm_log2_bound(n, dim, z)


def test_a_one_hot_claim_that_the_rows_break_is_refused() -> None:
    from securefl.protocol.round0 import check_groups

    ranges = np.array([[0.0, 1.0]] * 3 + [[-5.0, 5.0]])
    one_hot = np.array([[1, 0, 0, 2.0], [0, 1, 0, -1.0]])
    assert check_groups(one_hot, ranges, [(0, 1, 2), (3,)]) == pytest.approx(math.sqrt(5.0))
    with pytest.raises(ConfigError, match="several non-zeros"):
        check_groups(np.array([[1, 1, 0, 0.0]]), ranges, [(0, 1, 2), (3,)])
    with pytest.raises(ConfigError, match="not 0/1"):
        check_groups(one_hot, ranges, [(0, 1), (2, 3)])
    with pytest.raises(ConfigError, match="partition"):
        check_groups(one_hot, ranges, [(0, 1), (3,)])
    with pytest.raises(ConfigError, match="public ranges"):
        check_groups(one_hot, ranges[:3], [(0, 1, 2)])


def test_a_deployed_banks_noise_comes_from_the_os_csprng() -> None:
    from securefl.crypto.random import SystemRandomSource
    from securefl.deploy.common import randomness

    assert isinstance(randomness(None, bytes(16), 0, 1, "stats-noise"), SystemRandomSource)


def test_a_record_target_the_round0_release_alone_exceeds_is_refused_with_the_remedy(
        tmp_path: Path) -> None:
    """The embedded table's round-0 release is accounted by default (z = 4, about 1.2 at delta
    1e-5 on its own): a record-level target of 1 cannot hold and the error names the remedy."""
    from securefl import run
    from securefl.config import RunConfig
    from securefl.errors import PrivacyError

    with pytest.raises(PrivacyError, match="round-0 release") as info:
        run(RunConfig(rounds=1, record_epsilon=1.0, out=str(tmp_path / "run")))
    assert "--stats-noise-multiplier" in info.value.hint
