"""The optimiser side of training: Adam with a linear learning-rate warm-up, and the EMA of the weights."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from ..errors import ScoreReconError

if TYPE_CHECKING:
    from .config import TrainConfig


class EMA:
    """Exponential moving average of a model's parameters (buffers copied).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates so short runs
    are not dominated by the initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ScoreReconError(f"EMA decay {decay} must be in [0, 1), e.g. 0.999")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # one fused call instead of one per tensor
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam over ``model``'s parameters at ``cfg.lr`` (fused kernels on CUDA)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                            fused=device.type == "cuda")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of ``step``: ``cfg.lr`` after a linear warm-up over ``cfg.warmup`` steps."""
    warmup = int(cfg.warmup or 0)
    return cfg.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
