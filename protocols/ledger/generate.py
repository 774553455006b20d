"""Regenerate protocols/ledger/ledger-entry.schema.json and example.jsonl from securefl's types.

Run: python protocols/ledger/generate.py   (tests/test_dp_schema.py fails when the files are stale)
"""

from __future__ import annotations

import math
from pathlib import Path

from securefl.dp.events import (
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.dp.fedavg import client_level_event
from securefl.dp.ledger import Draft, Ledger, json_schema
from securefl.schema import render as render_schema

HERE = Path(__file__).resolve().parent


def schema_text() -> str:
    return render_schema(json_schema())


def example_ledger() -> Ledger:
    """Two rounds, three banks: DP-SGD in each bank (OS CSPRNG noise, as deployed), a continuous
    client-level round with one dropout (plain/CKKS mode) and a SecAgg round with the distributed
    discrete Gaussian under one assumed colluder."""
    led = Ledger()
    banks = ("alpha", "beta", "gamma")
    sgd = SelfComposedEvent(PoissonSampledEvent(0.016, GaussianEvent(1.1)), 63)
    for rnd in range(2):
        drafts = [Draft(round=rnd, level="record", party=f"bank:{b}", event=sgd, clip_norm=1.0,
                        participants=1, survivors=1, steps=63, noise_source="os_csprng")
                  for b in banks]
        if rnd == 0:  # 3 asked, 2 survived, shares sized for t = 2 (no colluders assumed)
            drafts.append(Draft(round=0, level="client", party="federation",
                                event=client_level_event(1.0, 2, 2), clip_norm=0.5,
                                participants=3, survivors=2, sampling="all",
                                noise_source="os_csprng"))
        else:  # SecAgg, T = 3, c = 1: sigma2 per share (z * D2)^2 / (T - c) with z = 1,
            # D2 = 2^20 + rounding; 3 survivors, the colluder's share removed: 2 honest shares
            d2 = 2.0**20 + math.sqrt(10_000)
            drafts.append(Draft(round=1, level="client", party="federation",
                                event=DistributedDiscreteGaussianEvent(
                                    sigma_int=d2 / math.sqrt(2), survivors=2, sensitivity_int=d2,
                                    dim=10_000),
                                clip_norm=0.5, participants=3, survivors=3, sampling="all",
                                colluders=1, noise_source="os_csprng"))
        led.record(drafts)
    return led


def main() -> None:
    (HERE / "ledger-entry.schema.json").write_text(schema_text(), encoding="utf-8")
    (HERE / "example.jsonl").write_bytes(example_ledger().to_bytes())


if __name__ == "__main__":
    main()
