"""The one round planner (securefl.protocol.plan.RoundPlanner, issue 15): the threshold rule and
the noise-share sizing written out independently here (the active-security bounds 2T > n + c and
T - c >= 2, protocols/secagg/spec.md "Threat model and bounds"; each share (z C)^2 / (T - c),
DESIGN.md section 6), and every driver (``securefl run``, a deployment's server and banks, the
Flower workflow and mod) planning its rounds through it."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigError
from securefl.federation import ProtocolParams
from securefl.protocol.plan import RoundPlanner, round_threshold
from securefl.protocol.secagg.bounds import Assumptions

SESSION = bytes(range(16))


def _bounds_t(n: int, c: int) -> int:
    """The smallest T with 2T > n + c and T - c >= 2, at most n (written out, not imported)."""
    t = c + 2
    while 2 * t <= n + c:
        t += 1
    return min(t, n)


@given(n=st.integers(1, 300), c=st.integers(0, 20), floor=st.integers(0, 40),
       fixed=st.one_of(st.none(), st.integers(1, 400)))
@settings(max_examples=300, deadline=None)
def test_round_threshold_is_the_bounds_rule_written_out(n: int, c: int, floor: int,
                                                        fixed: int | None) -> None:
    got = round_threshold(n, Assumptions(colluders=c), floor=floor, fixed=fixed)
    want = min(fixed, n) if fixed is not None else min(n, max(floor, _bounds_t(n, c)))
    assert got == want


@given(n=st.integers(2, 200), f=st.floats(0.0, 0.9))
@settings(max_examples=100, deadline=None)
def test_a_stated_dropout_fraction_gives_n_minus_the_dropouts(n: int, f: float) -> None:
    got = round_threshold(n, Assumptions(dropout_fraction=f))
    assert got == n - math.floor(f * n)


def test_round_threshold_can_fail() -> None:
    """The property above can fail: T = 7 for n = 11, c = 1 (2T > 12), not c = 0's 6."""
    assert round_threshold(11, Assumptions(colluders=1)) == 7 != _bounds_t(11, 0)
    with pytest.raises(ConfigError):
        round_threshold(0)


@given(n=st.integers(3, 60), c=st.integers(0, 5), z=st.floats(0.1, 20.0),
       clip=st.floats(0.01, 100.0), aggregation=st.sampled_from(["plain", "ckks"]))
@settings(max_examples=150, deadline=None)
def test_noise_shares_carry_z_c_over_t_minus_c_honest_shares(n: int, c: int, z: float,
                                                             clip: float,
                                                             aggregation: str) -> None:
    planner = RoundPlanner(session_id=SESSION, clip_norm=clip, noise_multiplier=z,
                           aggregation=aggregation, assumptions=Assumptions(colluders=c))
    t = _bounds_t(n, c)
    if t - c < 1:
        return
    spec = planner.spec(3, tuple(range(n)))
    assert spec.threshold == t and spec.clip_norm == clip and spec.round == 3
    assert spec.noise is not None
    assert spec.noise.min_survivors == t and spec.noise.colluders == c
    # any T - c honest shares together carry std z C
    share = spec.noise.share_std(clip)
    assert math.isclose(share * math.sqrt(t - c), z * clip, rel_tol=1e-12)


def test_no_client_level_noise_plans_none_and_an_exact_sum_takes_every_input() -> None:
    planner = RoundPlanner(session_id=SESSION, clip_norm=1.0, noise_multiplier=0.0,
                           aggregation="secagg", assumptions=Assumptions(colluders=1))
    assert planner.spec(1, (0, 1, 2, 3, 4)).noise is None
    exact = RoundPlanner(session_id=SESSION, clip_norm=1.0, noise_multiplier=2.0,
                         aggregation="secagg").exact(8.0).spec(0, (0, 1, 2, 3))
    assert (exact.threshold, exact.clip_norm, exact.noise) == (4, 8.0, None)


@given(n=st.integers(3, 40), c=st.integers(0, 3), floor=st.integers(2, 10),
       z=st.floats(0.5, 5.0))
@settings(max_examples=60, deadline=None)
def test_the_simulation_and_a_manifest_plan_the_same_round(n: int, c: int, floor: int,
                                                           z: float) -> None:
    """``securefl run``'s planner (securefl.runtime.Engine.planner) with the threshold a manifest
    fixes for n and a deployment's (ProtocolParams.planner) give the same RoundSpec: one rule."""
    from securefl.config import RunConfig
    from securefl.runtime import Engine

    params = ProtocolParams(aggregation="secagg", threshold=floor, colluders=c,
                            noise_multiplier=z, clip_norm=1.0)
    deploy = params.planner(SESSION)
    t = deploy.threshold_for(n)
    if t - c < 1 or t < 2:
        return
    try:
        cfg = RunConfig(banks=n, aggregation="secagg", colluders=c, noise_multiplier=z,
                        clip_norm=1.0, threshold=t)
    except ConfigError:  # a run refuses this combination outright (config validation)
        assume(False)
    sim = Engine(cfg).planner
    weights = tuple(1.0 for _ in range(n))
    digest = hashlib.sha256(b"model").digest()
    a = sim.spec(2, tuple(range(n)), weights=weights, model_digest=digest)
    b = deploy.spec(2, tuple(range(n)), weights=weights, model_digest=digest)
    assert a.threshold == b.threshold == t
    assert a.noise == b.noise
    assert a.plan_digest() == b.plan_digest()
