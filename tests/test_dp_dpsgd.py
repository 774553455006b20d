"""Record-level DP-SGD: exact per-sample clipping, parameter names, ledger events."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

from securefl.dp.accountants import epsilon_of_events
from securefl.dp.dpsgd import DpSgdRun, dp_train_epochs, ghost_supported
from securefl.dp.events import GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from securefl.dp.ledger import Ledger
from securefl.errors import ConfigError, PrivacyError


def _mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1))


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g) * 3
    y = (torch.rand(n, generator=g) > 0.5).float()
    return X, y


def test_ghost_clipping_equals_per_sample_loop() -> None:
    X, y = _data()
    model = _mlp()
    clip, lr = 0.7, 0.5
    # q = batch_size / n = 1: every row in the single step; z = 0: no noise
    state, run = dp_train_epochs(model, X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                                 batch_size=len(X), lr=lr, noise_multiplier=0.0,
                                 max_grad_norm=clip, backend="ghost")
    assert run.steps == 1 and run.sample_rate == 1.0
    # independent: one backward per example, clip each gradient, sum, divide by n
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    lf = nn.BCEWithLogitsLoss(reduction="sum")
    for i in range(len(X)):
        model.zero_grad()
        lf(model(X[i:i + 1]).reshape(1), y[i:i + 1]).backward()
        grads = {k: p.grad.detach().clone() for k, p in params.items()}
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for k in total:
            total[k] += grads[k] * factor
    for k, p in params.items():
        want = p.detach() - lr * total[k] / len(X)
        assert torch.allclose(state[k], want, atol=1e-5), k


def test_returns_original_names_and_leaves_model_untouched() -> None:
    X, y = _data()
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, run = dp_train_epochs(model, X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=2,
                                 batch_size=10, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
                                 random_seed=1)
    assert list(state) == list(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert run.backend == "ghost" and run.steps == 8 and run.sample_rate == 0.25
    assert run.event() == SelfComposedEvent(PoissonSampledEvent(0.25, GaussianEvent(1.0)), 8)
    again, _ = dp_train_epochs(model, X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=2,
                               batch_size=10, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
                               random_seed=1)
    assert all(torch.equal(state[k], again[k]) for k in state)  # reproducible per seed


def test_secure_mode_runs_and_differs_between_calls() -> None:
    X, y = _data()
    a, _ = dp_train_epochs(_mlp(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1, batch_size=10,
                           lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, secure_mode=True)
    b, _ = dp_train_epochs(_mlp(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1, batch_size=10,
                           lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, secure_mode=True)
    assert not torch.equal(a["0.weight"], b["0.weight"])


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def test_opacus_backend_for_other_models() -> None:
    X, y = _data()
    model = _Wrapped()
    assert not ghost_supported(model)
    state, run = dp_train_epochs(model, X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                                 batch_size=10, lr=0.1, optimizer="adam", noise_multiplier=1.0,
                                 max_grad_norm=1.0)
    assert run.backend == "opacus"
    assert list(state) == list(model.state_dict())
    assert not torch.equal(state["body.0.weight"], model.state_dict()["body.0.weight"])


def test_target_epsilon_calibration_and_ledger_draft() -> None:
    X, y = _data()
    _, run = dp_train_epochs(_mlp(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                             batch_size=10, lr=0.1, target_epsilon=3.0, target_delta=1e-5,
                             planned_steps=40)
    planned = SelfComposedEvent(PoissonSampledEvent(run.sample_rate,
                                                    GaussianEvent(run.noise_multiplier)), 40)
    assert epsilon_of_events([planned], 1e-5) <= 3.0
    led = Ledger()
    led.record([run.draft(round=0, bank="acme")])
    assert led.entries[0].party == "bank:acme" and led.entries[0].steps == run.steps


def test_schedule_matches_opacus_convention() -> None:
    from securefl.dp.dpsgd import dpsgd_schedule

    assert dpsgd_schedule(8000, 64, 2) == (250, 1 / 125)
    assert dpsgd_schedule(8001, 64, 1) == (126, 1 / 126)
    assert dpsgd_schedule(10, 64, 3) == (3, 1.0)


def test_bad_arguments() -> None:
    X, y = _data()
    with pytest.raises(ConfigError, match="noise_multiplier"):
        dp_train_epochs(_mlp(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1, batch_size=10,
                        lr=0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        dp_train_epochs(_mlp(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1, batch_size=10,
                        lr=0.1, noise_multiplier=1.0, optimizer="rmsprop")
    with pytest.raises(PrivacyError, match="torchcsprng"):  # not installed here
        dp_train_epochs(_Wrapped(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                        batch_size=10, lr=0.1, noise_multiplier=1.0, secure_mode=True)
    with pytest.raises(ConfigError, match="ghost"):
        dp_train_epochs(_Wrapped(), X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                        batch_size=10, lr=0.1, noise_multiplier=1.0, backend="ghost")


def _train(model: nn.Module, **kw: Any) -> tuple[dict[str, torch.Tensor], DpSgdRun]:
    X, y = _data()
    return dp_train_epochs(model, X, y, loss_fn=nn.BCEWithLogitsLoss(), epochs=1,
                           batch_size=10, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
                           random_seed=5, **kw)


def test_deployed_ghost_draws_from_the_os_csprng_and_says_so() -> None:
    """Issue 16, deployment randomness: a deployed bank's DP-SGD never uses torch's Mersenne
    Twister. With the same random_seed the simulation repeats itself exactly (seeded torch
    generator) while a deployed run does not (the seed is ignored: OS CSPRNG)."""
    sim_a, run_a = _train(_mlp())
    sim_b, _ = _train(_mlp())
    assert torch.equal(sim_a["0.weight"], sim_b["0.weight"])
    assert run_a.noise_source == "torch_prng"
    dep_a, run_d = _train(_mlp(), deployed=True)
    dep_b, _ = _train(_mlp(), deployed=True)
    assert not torch.equal(dep_a["0.weight"], dep_b["0.weight"])
    assert run_d.noise_source == "os_csprng"
    draft = run_d.draft(round=1, bank="alpha")
    assert Ledger().record([draft])[0].noise_source == "os_csprng"


def test_deployed_opacus_is_refused_unless_prng_noise_is_accepted() -> None:
    with pytest.raises(PrivacyError, match="Mersenne Twister"):
        _train(_Wrapped(), deployed=True)
    _, run = _train(_Wrapped(), deployed=True, accept_prng_noise=True)
    assert run.backend == "opacus"
    assert run.noise_source == "torch_prng"
