"""Budgets, client-level noise shares and the privacy report."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from securefl import privacy
from securefl.dp.accountants import RDP_ORDERS
from securefl.dp.budget import check_plan, would_exceed
from securefl.dp.events import (
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.dp.fedavg import (
    client_level_event,
    clip_l2,
    ddg_event,
    ddg_share_sigma2,
    noise_share_std,
    rounded_l2_bound,
)
from securefl.dp.ledger import Draft, Ledger
from securefl.dp.report import format_report, privacy_report
from securefl.errors import BudgetExceededError, PrivacyError

DELTA = 1e-5


def _ref_rdp(z: float, t: int) -> float:
    acc = dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), t))
    return float(acc.get_epsilon(DELTA))


# --- budgets -------------------------------------------------------------------------------------
def test_check_plan_passes_and_fails_with_largest_fit() -> None:
    ok = check_plan([GaussianEvent(5.0)], 10, 8.0, DELTA)
    assert not ok.exceeds and ok.epsilon == pytest.approx(_ref_rdp(5.0, 10), rel=1e-9)
    with pytest.raises(BudgetExceededError) as info:
        check_plan([GaussianEvent(5.0)], 200, 8.0, DELTA)
    msg = info.value.message
    fit = int(msg.rsplit("at most ", 1)[1].split()[0])
    assert _ref_rdp(5.0, fit) <= 8.0 < _ref_rdp(5.0, fit + 1)
    excess = float(msg.split("), ")[1].split()[0])
    assert excess == pytest.approx(_ref_rdp(5.0, 200) - 8.0, abs=1e-3)
    assert f"at most {fit} rounds" in info.value.hint


def test_check_plan_counts_what_was_spent() -> None:
    with pytest.raises(BudgetExceededError, match="at most 0 rounds"):
        check_plan([GaussianEvent(5.0)], 1, 1.0, DELTA, spent=[GaussianEvent(0.5)])


def test_would_exceed_stops_before_the_round() -> None:
    led = Ledger()
    t_fit = 0
    while _ref_rdp(5.0, t_fit + 1) <= 8.0:
        t_fit += 1
    for r in range(100):
        draft = Draft(round=r, level="client", party="federation", event=GaussianEvent(5.0),
                      clip_norm=1.0, participants=3, survivors=3, sampling="all")
        checks = would_exceed(led, [draft], 8.0, DELTA)
        if checks[("federation", "client")].exceeds:
            break
        led.record([draft])
    assert len(led) == t_fit


# --- client-level shares --------------------------------------------------------------------------
def test_clip_and_shares() -> None:
    x, norm = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0 and x.tolist() == pytest.approx([0.6, 0.8])
    y, _ = clip_l2(np.array([0.3, 0.4]), 1.0)
    assert y.tolist() == [0.3, 0.4]
    # 4 shares of std z C / 2 sum to std z C (variances add)
    assert 4 * noise_share_std(1.2, 0.5, 4) ** 2 == pytest.approx((1.2 * 0.5) ** 2)
    assert client_level_event(1.2, 4, 4) == GaussianEvent(1.2)
    assert client_level_event(1.2, 4, 9).noise_multiplier == pytest.approx(1.8)
    with pytest.raises(PrivacyError, match="below min_survivors"):
        client_level_event(1.2, 4, 3)
    s2 = ddg_share_sigma2(1.0, 1000.0, 4)
    assert s2 == pytest.approx(250_000.0)
    ev = ddg_event(s2, 5, 1000.0, 100)
    assert ev.sigma_int == pytest.approx(500.0) and ev.survivors == 5
    # rounding inflation (Kairouz et al. 2021, sec. 4.1): never above the worst case c + sqrt(d)
    assert rounded_l2_bound(100.0, 400, 0.0) == 120.0
    assert 100.0 < rounded_l2_bound(100.0, 400, math.exp(-0.5)) <= 120.0


# --- report -------------------------------------------------------------------------------------
def _run_ledger(survivors: list[int], participants: int = 5, t: int = 3,
                z: float = 0.8) -> Ledger:
    led = Ledger()
    for r, s in enumerate(survivors):
        drafts = [Draft(round=r, level="record", party=f"bank:b{i}",
                        event=SelfComposedEvent(PoissonSampledEvent(0.02, GaussianEvent(1.0)), 50),
                        clip_norm=1.0, participants=1, survivors=1, steps=50)
                  for i in range(participants)]
        drafts.append(Draft(round=r, level="client", party="federation",
                            event=client_level_event(z, t, s), clip_norm=0.5,
                            participants=participants, survivors=s, sampling="all"))
        led.record(drafts)
    return led


def test_fewer_survivors_record_larger_epsilon() -> None:
    full = privacy_report(_run_ledger([5, 5, 5]), DELTA)
    dropped = privacy_report(_run_ledger([5, 3, 5]), DELTA)
    assert dropped["federation"]["client"]["epsilon"] > full["federation"]["client"]["epsilon"]
    # independent: the round with 3 survivors carries z = 0.8 (exactly the plan)
    acc = dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
    z_full = 0.8 * math.sqrt(5 / 3)
    for z in (z_full, 0.8, z_full):
        acc.compose(dp_accounting.GaussianDpEvent(z))
    assert dropped["federation"]["client"]["epsilon"] == pytest.approx(acc.get_epsilon(DELTA),
                                                                       rel=1e-9)


def test_report_replay_equals_live_numbers() -> None:
    led = _run_ledger([2, 2, 2], participants=2, t=2, z=0.6)
    live = privacy_report(led, DELTA, "prv")
    replay = privacy.report(Ledger.from_bytes(led.to_bytes()), DELTA, "prv")
    assert live == replay
    bank = live["banks"]["b0"]
    ref = dp_accounting.pld.PLDAccountant()
    ref.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.0)), 150))
    # PRV (eps_error 0.01) against dp-accounting's PLD computed here
    assert bank["record"]["epsilon"] == pytest.approx(ref.get_epsilon(DELTA), abs=0.03)
    assert bank["client"]["epsilon"] == live["federation"]["client"]["epsilon"]
    assert len(live["warnings"]) == 1
    assert "Client-level epsilon" in live["warnings"][0] and "only 2 banks" in live["warnings"][0]
    text = format_report(live)
    assert "bank b0" in text and "federation" in text and "Warnings" in text


def test_report_ddg_with_pld_falls_back_to_rdp_and_says_so() -> None:
    led = Ledger()
    led.record([Draft(round=0, level="client", party="federation",
                      event=DistributedDiscreteGaussianEvent(sigma_int=500.0, survivors=4,
                                                             sensitivity_int=1000.0, dim=100),
                      clip_norm=1.0, participants=4, survivors=4, sampling="all")])
    rep = privacy_report(led, DELTA, "pld")
    fed = rep["federation"]["client"]
    assert fed["accountant"] == "rdp" and "pld cannot account" in fed["note"]
    assert "RDP bound shown instead" in format_report(rep)
    assert rep["banks"] == {} and rep["warnings"] == []


def test_report_warns_without_client_level_dp() -> None:
    led = Ledger()
    led.record([Draft(round=0, level="record", party="bank:x",
                      event=SelfComposedEvent(PoissonSampledEvent(0.1, GaussianEvent(1.0)), 5),
                      clip_norm=1.0, participants=1, survivors=1, steps=5)])
    rep = privacy_report(led, DELTA)
    assert rep["federation"]["client"]["entries"] == 0
    assert "No client-level DP" in rep["warnings"][0]


def test_facade_epsilon_accepts_entries_and_events() -> None:
    led = _run_ledger([5])
    fed = [e for e in led.entries if e.party == "federation"]
    assert privacy.epsilon(fed, DELTA) == pytest.approx(
        privacy.epsilon([client_level_event(0.8, 3, 5)], DELTA))
    with pytest.raises(PrivacyError):
        privacy.epsilon(fed, DELTA, "nope")


def _source_ledger(source: str, colluders: int = 0) -> Ledger:
    led = Ledger()
    led.record([Draft(round=1, level="record", party="bank:a", event=GaussianEvent(2.0),
                      clip_norm=1.0, participants=1, survivors=1, noise_source=source),
                Draft(round=1, level="client", party="federation", event=GaussianEvent(2.0),
                      clip_norm=1.0, participants=4, survivors=3, colluders=colluders,
                      noise_source=source)])
    return led


def test_report_says_where_the_noise_came_from_and_under_which_assumption() -> None:
    sim = privacy_report(_source_ledger("seeded_chacha20"), 1e-5)
    assert sim["noise_sources"] == {"record": ["seeded_chacha20"], "client": ["seeded_chacha20"]}
    assert any("reproducible simulation" in w for w in sim["warnings"])
    assert "reproducible simulation" in format_report(sim)
    deployed = privacy_report(_source_ledger("os_csprng", colluders=1), 1e-5)
    assert not any("reproducible simulation" in w for w in deployed["warnings"])
    assert deployed["colluders"] == 1
    assert any("1 colluding" in w for w in deployed["warnings"])
    old = Ledger()
    old.record([Draft(round=1, level="client", party="federation", event=GaussianEvent(2.0),
                      clip_norm=1.0, participants=3, survivors=3)])
    assert privacy_report(old, 1e-5)["noise_sources"]["client"] == ["not recorded"]
