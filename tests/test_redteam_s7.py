"""Red team s7: re-checking f14b (issue 14: S6b-1 CKKS round-0 gate, S6b-4 one threshold per
round) and h17b (issue 17: CKKS stage deadlines, release floor, per-round byte counter). Each test
asserts the secure behaviour; all three failed on main at d785168 (S7-1 x2, S7-2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import identity_keys, signed_federation

from securefl.deploy.common import ServerFaultError
from securefl.federation import ProtocolParams


# --- S7-1: the round-0 record is per manifest digest: a re-signed manifest differences a bank ----
@pytest.mark.parametrize("change", ["victim_leaves", "same_banks_new_params"])
def test_s7_1_a_new_manifest_does_not_reset_the_round0_record(tmp_path: Path, change: str) -> None:
    """(fails now) The key holder's (and every bank's) round-0 record is
    ``round0-<manifest digest>.json``: a newly signed manifest starts with no record. The spec
    names a new manifest as the routine way on: "a bank that is offline stalls the federation
    until it is back or the members sign a new manifest", "later sessions complete round 0 only
    over that set (or under a new manifest)", and a manifest whose max_sessions (default 256) are
    used up needs a new one. So, with the same key holder, state dir and bank identities:
    - victim_leaves: manifest v1 {b0..b3, victim}, round 0 released over all five; the victim is
      offline (or leaves) and the others sign v2 without it; round 0 of v2 over {b0..b3};
    - same_banks_new_params: v2 has the same five banks (say max_sessions raised); in its first
      session the server cuts the victim off, so round 0 of v2 is over {b0..b3}.
    The two noiseless totals difference to the victim's exact moments (S6-5 / S6b-1 again, one
    manifest later; a bank that joins under v2 is exposed the same way). Secure: the party that
    releases keeps its round-0 record across manifests (keyed by its own identity and the banks'
    identities, not the digest) and refuses a later round 0 over another set of the same banks."""
    from securefl.deploy.common import Round0Survivors

    banks = ["b0", "b1", "b2", "b3", "victim"]
    keys = identity_keys(banks)
    params = ProtocolParams(aggregation="ckks", threshold=2, noise_multiplier=0.0)
    v1 = signed_federation(banks, keys, params)
    if change == "victim_leaves":
        v2 = signed_federation(banks[:-1], keys, params)
    else:
        v2 = signed_federation(banks, keys, ProtocolParams(aggregation="ckks", threshold=2,
                                                     noise_multiplier=0.0, max_sessions=512))
    assert v1.digest != v2.digest
    state_dir = tmp_path / "kh.key.state"  # the key holder's one state-dir (KeyHolderNode)
    # exactly the call KeyHolderNode._decrypt makes for a round-0 release (deploy/ckks.py)
    Round0Survivors(state_dir, v1, "this key holder").check_and_record(0, banks)
    with pytest.raises(ServerFaultError):
        Round0Survivors(state_dir, v2, "this key holder").check_and_record(0, banks[:-1])


# --- S7-2: the deployed key holder's release floor is the manifest's threshold, not the round's ---
def test_s7_2_the_deployed_key_holder_refuses_a_release_below_the_rounds_threshold(
        tmp_path: Path) -> None:
    """(fails now; Low, defence in depth) h17b moved the release floor (threshold raised to the
    noise plan's min_survivors) to protocol/plan.py "so CKKS's server and key holder use the same
    rule", but only the in-process driver uses it. The deployed key holder
    (KeyHolderNode.load_holder) builds CKKSKeyHolder with ``min_clients=fed.params.threshold``:
    the manifest's floor (here 4), while every bank noised its input for the round's T =
    min_survivors = round_threshold(n) (here 11 of 20, which check_plan_threshold forces), z C /
    sqrt(11) each. Today only the honest verifiers (min_clients=start.threshold) stop a
    release of 4..10 contributions with less than the planned noise; CKKS manifests state
    colluders = 0, so a corrupted or buggy verifier is the only way through, but the key holder,
    the one party that releases, does not itself enforce the floor the docs say it enforces.
    Secure: the key holder's floor is the round's T (derived from the signed hello's plan and the
    public draw, or from the bank-signed RoundStart the server forwards), never below
    round_threshold(n)."""
    import msgspec

    from securefl.deploy.ckks import KeyHolderNode
    from securefl.deploy.messages import FLOWER_APP, TrainPlan

    banks = [f"b{i}" for i in range(20)]
    keys = identity_keys(banks)
    params = ProtocolParams(aggregation="ckks", threshold=4, noise_multiplier=1.0)
    fed = signed_federation(banks, keys, params)
    n = len(banks)  # clients_per_round = 1: every training round draws all 20
    t_round = params.round_threshold(n)
    assert t_round > params.threshold, "the round's T is above the manifest's floor"
    # KeyHolderNode._decrypt sets the holder's min_clients to this floor before decrypting
    plan = TrainPlan(model="logreg", hidden=[], task="binary", loss="bce", local_epochs=1,
                     batch_size=32, lr=0.1, optimizer="sgd", prox_mu=0.0, rounds=2, dp=True,
                     record_epsilon=1.0, record_noise_multiplier=None, record_clip=1.0,
                     delta=1e-5, aggregation="ckks")
    floor = KeyHolderNode.release_floor(fed, b"\x01" * 16, 1, plan)
    assert floor >= t_round, (
        f"the deployed key holder decrypts sums of {floor} contributors while the "
        f"banks calibrated their noise shares for {t_round}: a release with less than the "
        "planned noise is stopped only by the verifiers")
    # with client sampling the floor follows the manifest's draw (10 of 20 banks), whatever
    # fraction the server signs into the key holder's plan (S7b-2)
    sampled_fed = signed_federation(banks, keys, msgspec.structs.replace(
        params, clients_per_round=0.5))
    assert KeyHolderNode.release_floor(sampled_fed, b"\x01" * 16, 1, plan) \
        == params.round_threshold(10)
    # round 0 and a Flower app's plan (its strategy picks the participants): the manifest's floor
    assert KeyHolderNode.release_floor(fed, b"\x01" * 16, 0, plan) == params.threshold
    flower = msgspec.structs.replace(plan, task=FLOWER_APP)
    assert KeyHolderNode.release_floor(fed, b"\x01" * 16, 1, flower) == params.threshold
