"""Unconditional samples of a score network: an Euler–Maruyama sampler, and the sample grids a run
writes every ``sample_every`` steps."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..figures import save_image_grid
from ..networks import ScoreModel
from ..patches import random_offset, tiled_score
from ..sde import SDE
from ..utils import ProgressFn, check_cancel

if TYPE_CHECKING:
    from .config import TrainConfig

#: folder of a checkpoint that holds the sample grids (``step_NNNNNNN.png``)
SAMPLES_DIR = "samples"


@torch.no_grad()
def em_sample(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde: SDE, shape: tuple[int, ...],
              steps: int = 100, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
              eps: float = 1e-3, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> torch.Tensor:
    """Unconditional samples by Euler–Maruyama on the reverse SDE plus a final Tweedie denoising step.

    ``score_fn(x, t)`` with ``x`` ``(B, C, H, W)`` and ``t`` ``(B,)``; noise is drawn on the CPU from
    ``generator``. Returns ``(B, C, H, W)`` on ``device`` (normalised images, not clipped).
    """
    device = torch.device(device)
    rsde = sde.reverse(score_fn)
    x = sde.prior_sampling(shape, generator=generator).to(device)
    ts = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        check_cancel(cancel)
        t = torch.full((shape[0],), float(ts[i]), device=device)
        dt = float(ts[i + 1] - ts[i])  # negative
        drift, diffusion = rsde.sde(x, t)
        z = torch.randn(shape, generator=generator).to(device)
        x = x + drift * dt + diffusion.reshape(-1, 1, 1, 1) * math.sqrt(-dt) * z
        if progress is not None:
            progress(i + 1, steps, "sampling")
    t = torch.full((shape[0],), eps, device=device)
    alpha, beta = sde.alpha(t).reshape(-1, 1, 1, 1), sde.beta(t).reshape(-1, 1, 1, 1)
    return (x + beta**2 * score_fn(x, t)) / alpha  # Tweedie: E[x_0 | x_eps]


def sample_grid(model: ScoreModel, sde: SDE, cfg: TrainConfig, device: torch.device, path: Path) -> None:
    """A grid of ``cfg.sample_count`` EMA-model samples (fixed seed, own generator) at ``path``."""
    g = torch.Generator().manual_seed(1234)
    n = max(1, cfg.sample_count)
    score_fn = model
    if cfg.prior == "patch":
        gt = torch.Generator(device=device).manual_seed(4321)
        p = int(cfg.patch_size)

        def score_fn(x, t):
            return tiled_score(model, x, t, sde.beta(t), p, random_offset(p, gt, device), gt)
    x = em_sample(score_fn, sde, (n, 1, cfg.image_size, cfg.image_size), steps=max(2, cfg.sample_steps),
                  generator=g, device=device)
    save_image_grid(x, path)
