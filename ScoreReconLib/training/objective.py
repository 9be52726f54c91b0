"""What training minimises: the SDE a config asks for, its data-derived ``sigma_max`` and the
denoising score-matching loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ScoreReconError
from ..sde import SDE, VESDE, VPSDE

if TYPE_CHECKING:
    from .config import TrainConfig


def estimate_sigma_max(slices: torch.Tensor, max_items: int = 1000, seed: int = 0) -> float:
    """Largest pairwise L2 distance between (up to ``max_items``) slices ``(N, 1, H, W)``.

    Song & Ermon (2020) advise ``sigma_max`` about this large so the noisiest level covers the
    whole data set. Falls back to ``0.4 * H`` (the official 128 at 320 px) with fewer than 2 slices.
    """
    n = slices.shape[0]
    if n < 2:
        return round(0.4 * slices.shape[-1], 1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:max_items]
    flat = slices[idx].float().flatten(1)
    d = torch.cdist(flat, flat).max().item()
    return round(max(d, 1.0), 1)


def make_sde(cfg: TrainConfig, sigma_max: float | None) -> SDE:
    """The SDE a config asks for."""
    kind = cfg.sde.lower()
    if kind == "ve":
        return VESDE(cfg.sigma_min, float(sigma_max), cfg.num_scales)
    if kind == "vp":
        return VPSDE(cfg.beta_min, cfg.beta_max, cfg.num_scales)
    raise ScoreReconError(f"unknown SDE '{cfg.sde}'; use ve or vp")


def dsm_loss(model: torch.nn.Module, sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
             amp: bool = False, coords: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising score-matching loss ``mean ||beta(t) s(x_t, t) + z||^2`` for ``x0``, ``z`` (B,1,H,W), ``t`` (B,).

    ``coords`` (B,2,H,W): coordinate channels of a patch network (None for a whole-image network)."""
    mean, std = sde.marginal_prob(x0, t)
    std_b = std.reshape(-1, 1, 1, 1)
    xt = mean + std_b * z
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
        score = model(xt, t) if coords is None else model(xt, t, coords)
    return ((score.float() * std_b + z) ** 2).mean()
