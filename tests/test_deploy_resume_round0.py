"""Round 0's ledger events survive a crash and resume (S7b-3): the deployment records what its
noised round-0 release spent (the banks in the sum, the sensitivity, the noise source) in the run
store's facts, and a resumed server re-derives the round-0 drafts from them when no round has
committed them yet, so the finished ledger holds them exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import make_federation
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.deploy.server import DeployServer
from securefl.dp.events import GaussianEvent
from securefl.dp.ledger import Draft, Ledger
from securefl.errors import AggregationAbortedError, ConfigError

FACTS: dict[str, Any] = {"noise_multiplier": 4.0,
                         "ledger": {"banks": ["b0", "b2"], "sensitivity": 6.5,
                                    "noise_source": "os_csprng"}}
BANKS = ["b0", "b1", "b2"]


def _drafts(std: dict[str, Any], ledger: Ledger | None = None) -> list[Any]:
    return DeployServer._round0_drafts(std, ledger or Ledger(), BANKS, Path("run"))


def test_the_stored_facts_give_one_record_level_draft_per_bank_in_the_sum() -> None:
    drafts = _drafts(FACTS)
    assert [d.party for d in drafts] == ["bank:b0", "bank:b2"]
    for d in drafts:
        assert (d.round, d.level, d.clip_norm, d.noise_source) == (0, "record", 6.5, "os_csprng")
        assert d.event == GaussianEvent(noise_multiplier=4.0)
        assert (d.participants, d.survivors, d.steps, d.sampling) == (1, 1, 1, "all")


def test_nothing_is_re_derived_once_committed_or_without_noise() -> None:
    committed = Ledger()
    committed.record([Draft(round=0, level="record", party="bank:b0",
                            event=GaussianEvent(noise_multiplier=4.0), clip_norm=6.5,
                            participants=1, survivors=1, sampling="all")])
    assert _drafts(FACTS, committed) == []
    assert _drafts({**FACTS, "noise_multiplier": 0.0}) == []
    assert _drafts({"noise_multiplier": 0.0}) == []  # a noiseless round 0 records no ledger facts


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["banks", "sensitivity", "noise_source", None]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-3, 0), st.floats(allow_nan=True),
                       st.text(max_size=4), st.lists(st.sampled_from(["b0", "b0", "x"]),
                                                     max_size=3)))
def test_facts_that_do_not_say_what_round0_spent_are_refused(field: str | None,
                                                             value: Any) -> None:
    ledger = dict(FACTS["ledger"])
    if field is None:
        std: dict[str, Any] = {"noise_multiplier": 4.0}  # no ledger facts at all
    else:
        ledger[field] = value
        std = {**FACTS, "ledger": ledger}
    valid = {"banks": lambda v: v in (["b0"],),
             "sensitivity": lambda v: isinstance(v, float) and 0 < v < float("inf"),
             "noise_source": lambda v: False}  # none of the generated values is a NoiseSource
    if field is not None and valid[field](value):
        assert len(_drafts(std)) == len(ledger["banks"])
        return
    with pytest.raises(ConfigError, match="cannot be re-derived"):
        _drafts(std)


@pytest.mark.slow  # a crashed and a resumed deployment: 18 s measured (--durations) on 2 cores
def test_round0_is_in_the_ledger_once_after_an_aborted_round1_and_a_crash(tmp_path: Path) -> None:
    """Round 1 aborts (its abort commit carries round 0's events), the server dies in round 2 and
    is resumed: round 0's events are in the finished ledger once, the banks in the sum."""
    from securefl.audit.store import RunStore
    from securefl.audit.verify import verify_run_dir
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import ServerSettings

    run = {"rounds": 2, "seed": 5}
    f = make_federation(tmp_path / "fed", run)
    run_dir = tmp_path / "run"

    def banks() -> dict[int, Any]:
        return {i: BankNode.from_node_config(f.node_config(b, sim_seed=run["seed"]))
                for i, b in enumerate(f.banks)}

    class AbortThenCrash(DeployServer):
        def _outcome(self, rs: Any, done: Any) -> Any:
            if done.start.round == 2:
                raise RuntimeError("the server process died in round 2")
            done.error = AggregationAbortedError("round 1 aborted (test)")
            return super()._outcome(rs, done)

    srv = AbortThenCrash(ServerSettings.load(f.server_file(run_dir)))
    link = LocalLink(banks(), srv.fed.digest)
    with pytest.raises(RuntimeError, match="died"):
        srv.run(link, link.names())
    store = RunStore.open(run_dir)
    assert store.last_round == 1 and store.records[-1].status == "aborted"

    cfg = ServerSettings.load(f.server_file(run_dir))
    again = DeployServer(ServerSettings(**{**vars(cfg), "resume": True}))
    link = LocalLink(banks(), again.fed.digest)
    again.run(link, link.names())
    verify_run_dir(run_dir)
    entries = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert [e["party"] for e in entries if e["round"] == 0] == [f"bank:{b}" for b in f.banks]
