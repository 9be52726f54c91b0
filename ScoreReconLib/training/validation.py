"""Held-out validation (``--val-data``): fixed examples of other subjects and their denoising loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..datasets import SliceDataset
from ..errors import ScoreReconError
from ..networks import ScoreModel
from ..patches import sample_patches
from ..sde import SDE
from .objective import dsm_loss

if TYPE_CHECKING:
    from .config import TrainConfig

#: fixed validation examples (patches or slices) scored at every checkpoint
VAL_COUNT = 256


def validation_set(cfg: TrainConfig, train_data: SliceDataset, modality: str, device: torch.device) -> dict:
    """Fixed validation examples from ``cfg.val_data`` (other subjects than the training data):
    ``VAL_COUNT`` patches (patch prior, at the training scale range) or slices, with fixed ``t`` and ``z``."""
    val = SliceDataset(cfg.val_data, cfg.image_size, modality, cfg.hu_window, cfg.axis, cfg.min_foreground,
                       cfg.num_workers)
    train_paths = {Path(s["path"]).resolve() for s in train_data.sources}
    shared = [s["path"] for s in val.sources if Path(s["path"]).resolve() in train_paths]
    if shared:
        raise ScoreReconError(f"--val-data shares {shared[0]} with --data; validation must hold other subjects "
                              "(split by subject, never by slice)")
    g = torch.Generator().manual_seed(cfg.seed + 424242)
    if cfg.prior == "patch":
        x0, coords = sample_patches(val.slices, VAL_COUNT, cfg.patch_size, g, scale_range=tuple(cfg.scale_range),
                                    max_rotate_deg=0.0, flip=False)
    else:
        x0 = val.slices[torch.randint(len(val), (VAL_COUNT,), generator=g)].float()
        coords = None
    n = x0.shape[0]
    t = (torch.arange(n, dtype=torch.float32) + 0.5) / n * (1.0 - cfg.eps) + cfg.eps  # stratified over (eps, 1)
    z = torch.randn(x0.shape, generator=g)
    return {"x0": x0.to(device), "coords": None if coords is None else coords.to(device), "t": t.to(device),
            "z": z.to(device), "describe": {**val.describe(), "count": n}}


@torch.no_grad()
def validation_loss(model: ScoreModel, sde: SDE, val: dict, chunk: int = 64) -> float:
    """Mean denoising score-matching loss of ``model`` on the fixed validation examples."""
    total, n = 0.0, val["x0"].shape[0]
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        coords = None if val["coords"] is None else val["coords"][sl]
        part = dsm_loss(model, sde, val["x0"][sl], val["t"][sl], val["z"][sl], coords=coords)
        total += float(part) * val["x0"][sl].shape[0]
    return total / n
