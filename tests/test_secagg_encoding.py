"""protocol.secagg.encoding: the encoding rules every SecAgg party shares (the in-process driver,
a deployment, the Flower mod and workflow). Expected values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.config import RunConfig
from securefl.errors import AggregationAbortedError
from securefl.protocol.plan import NoisePlan, RoundSpec
from securefl.protocol.quantize import Encoding
from securefl.protocol.secagg import check_release, decode_sum, moments_precision_bits


@pytest.mark.parametrize(("n", "bits"), [(1, 28), (2, 28), (3, 27), (4, 27), (5, 26),
                                         (64, 23), (65, 22)])
def test_round_zero_precision_leaves_room_for_the_sum_of_n_inputs(n: int, bits: int) -> None:
    assert moments_precision_bits(n) == bits


def test_decode_sum_reads_the_centred_field() -> None:
    enc = Encoding(gamma=0.5, bits=4, sensitivity_int=1.0, noise_sigma2_int=0.0)
    # Z_16 centred: 0..7 are themselves, 8..15 are -8..-1
    field = np.array([0, 3, 7, 8, 15], dtype=np.uint32)
    assert decode_sum(field, enc).tolist() == [0.0, 1.5, 3.5, -4.0, -0.5]


def test_fewer_survivors_than_the_noise_plan_needs_release_nothing() -> None:
    spec = RoundSpec(session_id=bytes(16), round=1, participants=(0, 1, 2, 3), clip_norm=1.0,
                     threshold=2, noise=NoisePlan(1.0, 3))
    check_release(spec, 3)
    with pytest.raises(AggregationAbortedError):
        check_release(spec, 2)
    check_release(RoundSpec(session_id=bytes(16), round=1, participants=(0, 1), clip_norm=1.0,
                            threshold=1), 1)  # no noise plan: the protocol threshold decides


def test_the_loss_auto_resolves_by_task() -> None:
    assert RunConfig().loss_for("classification") == "bce"
    assert RunConfig().loss_for("regression") == "mse"
    assert RunConfig(loss="huber").loss_for("regression") == "huber"
