"""Test-time adaptation of a score prior to one measurement (issue 25), after DDIP (Chung et al., ECCV 2024) and
steerable conditional diffusion (Barbano et al., 2023).

Low-rank adapters (:class:`LoRAConv2d`, rank ``r``, the up-projection initialised to zero so the adapted network
starts as the prior) are added to every convolution of a copy of the score network and fitted, with the prior's
own weights frozen, to the measurement's loss

    L = ‖Λ(A x̂₀(x_t, t) − y)‖² / (m σ_y²),     x_t = α(t) x_c + β(t) z,   x̂₀ the Tweedie estimate,

with ``x_c`` the sampler's classical start, ``t`` drawn over the times the warm-started sampler visits and ``m``
the measured entries. ``L`` is the χ² of the denoised image: fitting stops by the discrepancy principle once it
falls to 1 (the image explains the data to their noise; lower would fit the noise), or after ``steps`` steps.
For noise-free data (σ_y = 0) the loss is the mean squared residual and only ``steps`` stops it.

The adapted prior is a copy: the loaded prior is never changed. A volume adapts once, on its central slices, and
reuses the adapters for every slice (:func:`ScoreReconLib.reconstruction.reconstruct_volume`).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ScoreReconError
from .operators.base import MeasurementOperator
from .settings import ADAPT_MODES  # noqa: E402,F401  (none, or low-rank adapters on every convolution)
from .utils import ProgressFn, check_cancel

#: rank of the adapters
LORA_RANK = 4
#: Adam step size of the adapters
LORA_LR = 1e-3
#: the χ² the fit stops at (the discrepancy principle: the measured rows explained to their noise)
STOP_CHI2 = 1.0
#: the largest diffusion time adapted at (a warm start at t_start adapts over (t_start / 4, t_start])
MAX_ADAPT_TIME = 0.5


class LoRAConv2d(nn.Module):
    """``base(x) + up(down(x))``: a frozen convolution plus a trainable rank-``rank`` update (``down`` has the base's
    kernel, stride and padding; ``up`` is 1×1 and starts at zero, so the module starts equal to ``base``)."""

    def __init__(self, base: nn.Conv2d, rank: int = LORA_RANK, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        # built and initialised on the CPU (``generator`` is a CPU generator), then moved beside the base
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                              bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.up.weight)
        self.down.to(base.weight.device, base.weight.dtype)
        self.up.to(base.weight.device, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def add_lora(model: nn.Module, rank: int = LORA_RANK, generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Freeze ``model`` and wrap each of its ungrouped convolutions in a :class:`LoRAConv2d` (initialised from
    ``generator``); returns the adapter parameters (the only ones that then require gradients)."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and child.groups == 1:
                wrapped = LoRAConv2d(child, rank, generator)
                setattr(module, name, wrapped)
                params += [wrapped.down.weight, wrapped.up.weight]
    if not params:
        raise ScoreReconError("the score network has no convolutions to adapt; use --adapt none")
    return params


@dataclass
class AdaptationRecord:
    """What an adaptation did: the loss (χ² of the denoised image) per step, why it stopped, its cost."""

    mode: str
    steps: int = 0
    chi2: list[float] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0
    parameters: int = 0

    def to_dict(self) -> dict:
        return {"mode": self.mode, "steps": self.steps, "chi2_first": self.chi2[0] if self.chi2 else None,
                "chi2_last": self.chi2[-1] if self.chi2 else None, "stopped": self.stopped,
                "seconds": self.seconds, "parameters": self.parameters}


def adapt_prior(prior, op: MeasurementOperator, y: torch.Tensor, x_start: torch.Tensor, noise_std: float,
                t_start: float, steps: int, seed: int = 0, mode: str = "lora",
                cancel: threading.Event | None = None, progress: ProgressFn | None = None):
    """A copy of ``prior`` whose network carries adapters fitted to ``y`` (B, 1, ...) of ``op`` from the classical
    start ``x_start`` (B, 1, N, N); returns ``(adapted prior, AdaptationRecord)``. ``noise_std`` σ_y of one measured
    entry (0: noise-free, no discrepancy stop); times are drawn from ``(t_max / 4, t_max]`` with
    ``t_max = min(t_start, MAX_ADAPT_TIME)``; at most ``steps`` Adam steps; ``seed`` fixes every draw."""
    from .sampling import tweedie

    if mode not in ADAPT_MODES:
        raise ScoreReconError(f"--adapt must be one of {', '.join(ADAPT_MODES)}, got {mode!r}")
    record = AdaptationRecord(mode)
    if mode == "none" or steps == 0:
        record.stopped = "off"
        return prior, record
    t0 = time.perf_counter()
    adapted = copy.copy(prior)
    adapted.model = copy.deepcopy(prior.model)
    adapted.model.precision = "fp32"  # the adapters are fitted in float32; sampling then runs in prior.precision
    gen = torch.Generator(device=y.device).manual_seed(int(seed))
    params = add_lora(adapted.model, LORA_RANK, torch.Generator().manual_seed(int(seed)))
    record.parameters = sum(p.numel() for p in params)
    optimizer = torch.optim.Adam(params, lr=LORA_LR)
    mask = op.mask.to(y.device)
    measured = float(torch.broadcast_to(mask > 0, y.shape).sum())
    scale = measured * (noise_std**2 if noise_std > 0 else 1.0)
    t_max = min(float(t_start), MAX_ADAPT_TIME)
    x_start = x_start.to(y.device).float()
    for step in range(int(steps)):
        check_cancel(cancel)
        t = (t_max * (0.25 + 0.75 * torch.rand(x_start.shape[0], generator=gen, device=y.device))).float()
        a, b = (v.reshape(-1, 1, 1, 1) for v in (prior.sde.alpha(t), prior.sde.beta(t)))
        z = torch.randn(x_start.shape, generator=gen, device=y.device)
        x_t = a * x_start + b * z
        with torch.enable_grad():
            x0 = tweedie(adapted, x_t, t, score=adapted.score(x_t, t, generator=gen))
            loss = op.mask_apply(op.A(x0) - y).abs().pow(2).sum() / scale
            record.chi2.append(float(loss.detach()))
            if noise_std > 0 and record.chi2[-1] <= STOP_CHI2:  # explains the data to their noise: stop here
                record.stopped = "discrepancy"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        record.steps = step + 1
        if progress is not None:
            progress(step + 1, int(steps), f"adapting the prior (χ² {record.chi2[-1]:.2f})")
    record.stopped = record.stopped or "steps"
    adapted.model.eval().requires_grad_(False)
    adapted.model.precision = prior.precision
    record.seconds = time.perf_counter() - t0
    return adapted, record
