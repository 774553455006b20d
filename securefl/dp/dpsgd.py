"""Record-level DP-SGD inside one bank (Abadi et al., CCS 2016): Poisson sampling, per-sample
clipping to ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` on the
sum.

Two interchangeable backends compute the same mechanism (so the same ledger events):

* ``"ghost"`` (default when the model allows it): for an ``nn.Sequential`` of ``nn.Linear`` layers
  and parameter-free element-wise layers (ReLU, Tanh, Dropout, ...), the per-sample gradient of a
  Linear layer is the outer product g_i a_i^T of the output gradient and the input, so its squared
  norm is |g_i|^2 |a_i|^2 (+ |g_i|^2 for the bias) and the clipped sum is (c * G)^T A: exact
  per-sample clipping with one forward and one backward pass ("ghost clipping": Goodfellow 2015,
  arXiv 1510.01799; Li et al., ICLR 2022). Poisson sampling and noise are drawn here.
* ``"opacus"``: Opacus' ``PrivacyEngine`` (any model Opacus supports), ``grad_sample_mode``
  selectable ("hooks", "functorch", "ew", ...).

Opacus' convention for both backends: ``steps_per_epoch = ceil(N / batch_size)``, Poisson sampling
rate q = 1 / steps_per_epoch (``DPDataLoader.from_data_loader``), ``steps = epochs *
steps_per_epoch``; the noisy sum is divided by the expected batch size q * N. Ledger events:
``SelfComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)`` at record level.

``secure_mode``: the ghost backend then draws the sampling masks and the noise from the OS CSPRNG
(securefl.dp.noise.gaussian over SystemRandomSource); otherwise from a torch generator seeded with
``random_seed`` (reproducible simulation). ``deployed=True`` (a bank in a deployment) makes the
ghost backend always draw from the OS CSPRNG, and refuses the Opacus backend unless the bank
passes ``accept_prng_noise=True``: Opacus' own secure mode needs torchcsprng, which has no build for
torch 2.x, so Opacus' noise would come from torch's Mersenne Twister (not cryptographic: an
observer of enough outputs can predict it, and noise that can be predicted can be subtracted).
Either way the run says where its noise came from (``DpSgdRun.noise_source``, recorded in the
ledger). torch and opacus are imported lazily.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from securefl.dp.events import Event, GaussianEvent, PoissonSampledEvent, SelfComposedEvent
from securefl.dp.ledger import Draft, NoiseSource
from securefl.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    import torch

__all__ = ["DpSgdRun", "dp_train_epochs", "dpsgd_schedule", "ghost_supported",
           "noise_source_for"]

Backend = Literal["auto", "ghost", "opacus"]


@dataclass(frozen=True)
class DpSgdRun:
    """What one call of :func:`dp_train_epochs` released (record level)."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    backend: str
    #: where the noise and the Poisson sampling came from (securefl.dp.ledger.NoiseSource)
    noise_source: NoiseSource | None = None

    def event(self) -> Event:
        """The mechanism run: ``steps`` Poisson(q)-sampled Gaussian steps."""
        return SelfComposedEvent(PoissonSampledEvent(self.sample_rate,
                                                     GaussianEvent(self.noise_multiplier)),
                                 self.steps)

    def draft(self, *, round: int, bank: str) -> Draft:
        """The ledger draft for this run (party ``bank:<bank>``, level ``record``)."""
        return Draft(round=round, level="record", party=f"bank:{bank}", event=self.event(),
                     clip_norm=self.max_grad_norm, participants=1, survivors=1,
                     neighbouring="add_remove", sampling="poisson", steps=self.steps,
                     noise_source=self.noise_source)


def dpsgd_schedule(n_rows: int, batch_size: int, epochs: int) -> tuple[int, float]:
    """(steps, Poisson sampling rate) that :func:`dp_train_epochs` runs for these sizes:
    steps_per_epoch = ceil(n_rows / batch_size), rate = 1 / steps_per_epoch (Opacus' convention).
    Use it to calibrate the noise for a whole run with the numbers the ledger will record."""
    if n_rows < 1 or batch_size < 1 or epochs < 1:
        raise ConfigError("n_rows, batch_size and epochs must be >= 1")
    steps_per_epoch = -(-n_rows // batch_size)
    return epochs * steps_per_epoch, 1.0 / steps_per_epoch


def ghost_supported(model: torch.nn.Module) -> bool:
    """True if ``model`` is an nn.Sequential of Linear and parameter-free element-wise layers."""
    import torch.nn as nn

    if not isinstance(model, nn.Sequential):
        return False
    allowed = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Identity,
               nn.Dropout)
    for m in model:
        if isinstance(m, nn.Linear):
            continue
        if not isinstance(m, allowed) or any(True for _ in m.parameters()):
            return False
    return True


def _validate(epochs: int, batch_size: int, lr: float, max_grad_norm: float, n: int) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr must be finite and > 0, got {lr!r}")
    if not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
        raise PrivacyError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")
    if n < 1:
        raise ConfigError("the bank has no training rows")


def _make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def dp_train_epochs(
    model: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: torch.nn.Module,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "sgd",
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    random_seed: int = 0,
    secure_mode: bool = False,
    target_epsilon: float | None = None,
    target_delta: float | None = None,
    planned_steps: int | None = None,
    backend: Backend = "auto",
    grad_sample_mode: str = "hooks",
    deployed: bool = False,
    accept_prng_noise: bool = False,
) -> tuple[dict[str, torch.Tensor], DpSgdRun]:
    """Train a copy of ``model`` on (X, y) with DP-SGD; return its state dict and the run record.

    ``model`` is not modified; the returned state dict has the model's own parameter names.
    Give either ``noise_multiplier`` or (``target_epsilon``, ``target_delta``, ``planned_steps``):
    the latter calibrates z with the RDP accountant so that ``planned_steps`` steps at this
    sampling rate (all rounds of the run) stay within the target. ``loss_fn`` is applied with
    ``reduction="sum"`` to get per-sample gradients. ``deployed``: see the module docstring (OS
    CSPRNG for ghost; Opacus refused with PrivacyError unless ``accept_prng_noise``).
    """
    n = int(X.shape[0])
    _validate(epochs, batch_size, lr, max_grad_norm, n)
    steps, q = dpsgd_schedule(n, batch_size, epochs)
    if noise_multiplier is None:
        if target_epsilon is None or target_delta is None or planned_steps is None:
            raise ConfigError("give noise_multiplier, or target_epsilon, target_delta and "
                              "planned_steps")
        from securefl.dp.accountants import calibrate_noise

        noise_multiplier = calibrate_noise(target_epsilon, target_delta, 1, q, "rdp",
                                           steps_per_round=planned_steps)
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if backend == "auto":
        backend = "ghost" if ghost_supported(model) else "opacus"
    secure_mode, source = noise_source_for(backend, secure_mode=secure_mode, deployed=deployed,
                                           accept_prng_noise=accept_prng_noise)
    local = copy.deepcopy(model)
    if backend == "ghost":
        if not ghost_supported(local):
            raise ConfigError("backend 'ghost' needs an nn.Sequential of Linear and element-wise "
                              "layers; use backend='opacus'")
        _train_ghost(cast("torch.nn.Sequential", local), X, y, loss_fn, steps, q, lr, optimizer,
                     noise_multiplier, max_grad_norm, random_seed, secure_mode)
    elif backend == "opacus":
        ran, rate = _train_opacus(local, X, y, loss_fn, epochs, batch_size, lr, optimizer,
                                  noise_multiplier, max_grad_norm, random_seed, secure_mode,
                                  grad_sample_mode)
        if ran != steps or abs(rate - q) > 1e-12:
            raise PrivacyError(f"Opacus ran {ran} steps at rate {rate} but {steps} steps at rate "
                               f"{q} were planned; the ledger would be wrong")
    else:
        raise ConfigError(f"backend must be 'auto', 'ghost' or 'opacus', got {backend!r}")
    state = {k: v.detach().clone() for k, v in local.state_dict().items()}
    return state, DpSgdRun(steps=steps, sample_rate=q, noise_multiplier=float(noise_multiplier),
                           max_grad_norm=float(max_grad_norm), backend=backend,
                           noise_source=source)


def noise_source_for(backend: str, *, secure_mode: bool, deployed: bool,
                     accept_prng_noise: bool = False) -> tuple[bool, NoiseSource]:
    """(secure_mode to run with, the noise source the ledger records) for ``backend``.

    Deployed: ghost always uses the OS CSPRNG; Opacus without torchcsprng would draw from torch's
    Mersenne Twister, so it is refused (PrivacyError) unless ``accept_prng_noise``."""
    if backend == "ghost":
        secure = secure_mode or deployed
        return secure, "os_csprng" if secure else "torch_prng"
    if deployed and not secure_mode and not accept_prng_noise:
        raise PrivacyError(
            "the Opacus DP-SGD backend in a deployment would draw its noise and sampling from "
            "torch's Mersenne Twister (Opacus' secure mode needs torchcsprng, which has no build "
            "for torch 2.x): not cryptographic noise",
            hint="use the ghost backend (an nn.Sequential MLP: OS CSPRNG noise), or accept "
                 "non-cryptographic noise explicitly (accept_prng_noise=True); the ledger records "
                 "the noise source either way")
    return secure_mode, "torchcsprng" if secure_mode else "torch_prng"


def _sum_loss(loss_fn: torch.nn.Module) -> torch.nn.Module:
    lf = copy.copy(loss_fn)
    if not hasattr(lf, "reduction"):
        raise ConfigError("loss_fn must be a torch loss module with a `reduction` attribute")
    setattr(lf, "reduction", "sum")  # noqa: B010  (torch's Module.__setattr__ typing)
    return lf


def _train_ghost(model: torch.nn.Sequential, X: torch.Tensor, y: torch.Tensor,
                 loss_fn: torch.nn.Module, steps: int, q: float, lr: float, opt_name: str,
                 z: float, clip: float, seed: int, secure: bool) -> None:
    import torch
    import torch.nn as nn

    n = int(X.shape[0])
    lf = _sum_loss(loss_fn)
    opt = _make_optimizer(opt_name, model.parameters(), lr)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    params = [p for m in linears for p in ([m.weight] + ([m.bias] if m.bias is not None else []))]
    expected_batch = q * n
    gen = torch.Generator().manual_seed(seed)
    sysrand: Any = None
    if secure:
        from securefl.crypto.random import SystemRandomSource

        sysrand = SystemRandomSource()
    total = sum(p.numel() for p in params)
    inv_b = 1.0 / expected_batch
    model.train()
    for _ in range(steps):
        mask = (torch.from_numpy(sysrand.uniform(n) < q) if secure
                else torch.rand(n, generator=gen) < q)
        idx = mask.nonzero(as_tuple=True)[0]
        # noise for all parameters at once, already divided by the expected batch size
        if z > 0:
            if secure:
                from securefl.dp.noise import gaussian

                flat = torch.from_numpy(gaussian(total, z * clip * inv_b, sysrand)).to(X.dtype)
            else:
                flat = torch.normal(0.0, z * clip * inv_b, size=(total,), generator=gen,
                                    dtype=X.dtype)
        else:
            flat = torch.zeros(total, dtype=X.dtype)
        noises = list(torch.split(flat, [p.numel() for p in params]))
        if idx.numel() > 0:
            xb, yb = X[idx], y[idx]
            acts: list[torch.Tensor] = []
            outs: list[torch.Tensor] = []
            h = xb
            for m in model:
                if isinstance(m, nn.Linear):
                    acts.append(h)
                    h = m(h)
                    outs.append(h)
                else:
                    h = m(h)
            loss = lf(h.reshape(yb.shape) if h.numel() == yb.numel() else h, yb)
            gouts = torch.autograd.grad(loss, outs)
            with torch.no_grad():
                sq = torch.zeros(idx.numel(), dtype=X.dtype)
                for m, a, g in zip(linears, acts, gouts, strict=True):
                    g2 = (g * g).sum(1)
                    sq.addcmul_(g2, (a * a).sum(1))
                    if m.bias is not None:
                        sq += g2
                # per-sample clip factor min(1, C / (norm + 1e-6)) (Opacus' formula), / E[batch]
                factor = (clip / (sq.sqrt() + 1e-6)).clamp_(max=1.0).mul_(inv_b)
                k = 0
                for m, a, g in zip(linears, acts, gouts, strict=True):
                    gc = g * factor[:, None]
                    m.weight.grad = torch.addmm(noises[k].view_as(m.weight), gc.t(), a)
                    k += 1
                    if m.bias is not None:
                        m.bias.grad = gc.sum(0).add_(noises[k])
                        k += 1
        else:
            for p, nz in zip(params, noises, strict=True):
                p.grad = nz.view_as(p).clone()
        opt.step()


def _train_opacus(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
                  loss_fn: torch.nn.Module, epochs: int, batch_size: int, lr: float,
                  opt_name: str, z: float, clip: float, seed: int, secure: bool,
                  grad_sample_mode: str) -> tuple[int, float]:
    """Train with Opacus; returns (steps run, Poisson sampling rate used)."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, generator=gen)
    opt = _make_optimizer(opt_name, model.parameters(), lr)
    try:
        engine = PrivacyEngine(secure_mode=secure)
    except ImportError as exc:  # Opacus' secure mode needs torchcsprng
        raise PrivacyError("Opacus secure_mode is unavailable here (torchcsprng missing)",
                           hint="use backend='ghost' (CSPRNG noise) or install torchcsprng",
                           ) from exc
    noise_gen = None if secure else torch.Generator().manual_seed(seed + 1)
    gsm, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=z, max_grad_norm=clip,
        poisson_sampling=True, grad_sample_mode=grad_sample_mode, noise_generator=noise_gen)
    gsm.train()
    ran = 0
    for _ in range(epochs):
        for xb, yb in dp_loader:
            ran += 1
            dp_opt.zero_grad()
            if xb.shape[0] == 0:
                dp_opt.step()  # empty Poisson batch: noise only
                continue
            out = gsm(xb)
            loss = loss_fn(out.reshape(yb.shape) if out.numel() == yb.numel() else out, yb)
            loss.backward()
            dp_opt.step()
    if hasattr(gsm, "_close"):
        gsm._close()
    return ran, float(dp_loader.sample_rate)
