"""Red team s7c (rt5): re-checking the S7b fixes. Each test asserts the secure behaviour; both
failed on 63d3ec9, where a bank reused its round-0 vector for an identical round 0 (the S7b-5
attempt), and pass since that reuse was removed (every noised round 0 draws fresh noise and is
charged). S7c-2 (a bank without caps re-noises an equivalent round 0 for free) is the stated limit
tests/test_redteam_s7b.py::test_s7b_5_* shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from deploy_helpers import identity_keys, signed_federation, write_csv, write_key

from securefl.deploy.messages import Hello, RoundStart, TrainPlan
from securefl.errors import SecureFLError
from securefl.federation import ProtocolParams


def _plan(**kw: Any) -> TrainPlan:
    base: dict[str, Any] = dict(model="logreg", hidden=[], task="binary", loss="bce",
                                local_epochs=1, batch_size=32, lr=0.1, optimizer="sgd",
                                prox_mu=0.0, rounds=2, dp=True, record_epsilon=1.0,
                                record_noise_multiplier=1.0, record_clip=1.0, delta=1e-5,
                                aggregation="secagg", stats_noise_multiplier=4.0)
    base.update(kw)
    return TrainPlan(**base)


# --- S7c-1: the S7b-5 cache outlives the manifest, the per-manifest survivor record does not ------
def test_s7c_1_a_cached_round0_vector_is_not_released_under_several_survivor_sets(
        tmp_path: Path) -> None:
    """(fails now; Medium) S7b-5 caches a bank's noised round-0 vector under a key of the
    participants' identity keys, rows, ranges, groups, z and std, but not the manifest (nor the
    survivor set). For a noised round 0, Round0Survivors holds the survivor set per manifest only
    ("a noised round 0 is a DP release charged ... so a new manifest may run it over another
    set") -- which no longer holds: under a re-signed manifest with the same banks (a new fid, any
    parameter that leaves T and the colluders alone) each bank re-sends the SAME vector, charged
    nothing. A server dropping one bank per manifest (threshold 2 of 3) gets S_AB, S_AC, S_BC over
    the same vectors and 2 v_A = S_AB + S_AC - S_BC: bank A's moments with only its OWN share of
    noise, std z * sens / sqrt(T - c) instead of z * sens (T = 10: a third of the noise).
    Secure: the cache key holds the manifest digest (fresh, charged noise per manifest; the
    per-manifest survivor record then holds each vector to one set), or a cached vector is
    released under one survivor set only (recorded with it, across manifests)."""
    banks = ["b0", "b1", "b2"]
    keys = identity_keys(banks)
    rng = np.random.default_rng(0)
    nodes = {}
    from securefl.deploy.client import BankNode
    from securefl.deploy.common import Round0Survivors

    for b in banks:
        d = tmp_path / b
        d.mkdir()
        write_csv(d / "rows.csv", rng.normal(size=(40, 3)).clip(-3, 3), rng.integers(0, 2, 40))
        nodes[b] = BankNode(member=b, key_path=write_key(d / f"{b}.key", keys[b]),
                            manifest_path=d / "unused.json", data_path=d / "rows.csv")
    plan = _plan()
    sums = []
    for k, survivors in enumerate((["b0", "b1"], ["b0", "b2"], ["b1", "b2"])):
        # members re-sign a manifest (here: a new federation id; same banks, same T)
        fed = signed_federation(banks, keys, ProtocolParams(aggregation="secagg", threshold=2,
                                                            noise_multiplier=1.0),
                                fid=f"fed-{k}")
        session = bytes([k + 1]) * 16
        hello = Hello(session=session, federation=fed.digest, plan=plan, counter=k + 1)
        start = RoundStart(session=session, round=0, task="moments", participants=fed.clients,
                           threshold=2, clip_norm=1.0, noise_multiplier=0.0, min_survivors=2,
                           degree=2, precision_bits=16, dim=7,
                           stats_ranges=[(-4.0, 4.0)] * 3, stats_groups=[[0], [1], [2]])
        vec = {b: nodes[b]._round0_input(fed, hello, start) for b in banks}
        try:  # what each surviving bank checks before it reveals (the SecAgg unmask step)
            for b in survivors:
                Round0Survivors(nodes[b].session_dir, fed, noiseless=False).check_and_record(
                    0, survivors)
        except SecureFLError:
            return  # a vector already released under another set is not revealed again
        sums.append((vec, sum(vec[b] for b in survivors)))
    own = sums[0][0]["b0"]
    isolated = (sums[0][1] + sums[1][1] - sums[2][1]) / 2
    assert not np.allclose(isolated, own), (
        "three round-0 sums over different survivor sets (one per re-signed manifest) of the "
        "same cached vectors solve to bank b0's vector: its moments plus only its own noise share")


# --- S7c-3: the S7b-5 cache repeats the unchanged banks' shares when one bank's rows change --------
def test_s7c_3_a_bank_whose_rows_changed_is_not_left_with_only_its_own_noise(
        tmp_path: Path) -> None:
    """(fails now; Medium) Same manifest, same banks, same survivor set (Round0Survivors allows
    it), but bank b2 refreshed its file (appended rows): b2's key changes and it draws fresh noise,
    b0 and b1 repeat their cached vectors. S1 - S2 = m(new rows of b2) + n2 - n2': every other
    share cancels, so b2's new rows are seen with noise std sqrt(2) z sens / sqrt(T - c) (T - c =
    10: 0.45 z sens), below the z sens its two charged events at z assume (together ~ z / sqrt 2).
    Secure: a bank reuses its vector only for a release that is the same as before (e.g. every
    bank's commitment to its cached vector unchanged, otherwise all draw fresh), or no reuse and
    every noised round 0 fresh and metered by a cap; here: S1 - S2 holds more than b2's noise."""
    from securefl.deploy.client import BankNode

    banks = ["b0", "b1", "b2"]
    keys = identity_keys(banks)
    fed = signed_federation(banks, keys, ProtocolParams(aggregation="secagg", threshold=3,
                                                        noise_multiplier=1.0))
    rng = np.random.default_rng(0)
    rows = {b: (rng.normal(size=(40, 3)).clip(-3, 3), rng.integers(0, 2, 40)) for b in banks}
    nodes = {}
    for b in banks:
        d = tmp_path / b
        d.mkdir()
        write_csv(d / "rows.csv", *rows[b])
        nodes[b] = BankNode(member=b, key_path=write_key(d / f"{b}.key", keys[b]),
                            manifest_path=d / "unused.json", data_path=d / "rows.csv")
    plan = _plan()
    vecs = []
    for k in range(2):
        if k == 1:  # b2 appends two rows to its file
            X, y = rows["b2"]
            write_csv(tmp_path / "b2" / "rows.csv", np.vstack([X, [[1.0, 2.0, -1.0]] * 2]),
                      np.concatenate([y, [1, 0]]))
        session = bytes([k + 1]) * 16
        hello = Hello(session=session, federation=fed.digest, plan=plan, counter=k + 1)
        start = RoundStart(session=session, round=0, task="moments", participants=fed.clients,
                           threshold=3, clip_norm=1.0, noise_multiplier=0.0, min_survivors=3,
                           degree=2, precision_bits=16, dim=7,
                           stats_ranges=[(-4.0, 4.0)] * 3, stats_groups=[[0], [1], [2]])
        try:
            vecs.append({b: nodes[b]._round0_input(fed, hello, start) for b in banks})
        except SecureFLError:
            assert k == 1
            return  # a second noised round 0 refused
    diff = sum(vecs[0].values()) - sum(vecs[1].values())
    assert not np.allclose(diff, vecs[0]["b2"] - vecs[1]["b2"]), (
        "the difference of two round-0 sums over the same banks, where only b2's rows changed, "
        "is b2's two vectors alone: its new rows with only its own noise shares")
