"""Training data: the slice set a run reads, this rank's shard of it, and one step's random batch."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from ..datasets import SliceDataset, augment_batch, to_device
from ..errors import ScoreReconError
from ..patches import sample_patches

if TYPE_CHECKING:
    from .config import TrainConfig


def load_dataset(cfg: TrainConfig, saved_cfg: dict | None, is_main: bool) -> SliceDataset:
    """Read ``cfg.data``; records the modality (and the patch intensity range) it implies in ``cfg`` so a
    resumed run reads the data the same way, and refuses data of another modality than a resumed checkpoint."""
    dataset = SliceDataset(cfg.data, cfg.image_size, cfg.modality, cfg.hu_window, cfg.axis, cfg.min_foreground,
                           cfg.num_workers)
    modality = dataset.modality
    cfg.modality = modality  # record what was guessed, so a resumed run reads the data the same way
    if cfg.prior == "patch" and cfg.intensity_range is None:
        cfg.intensity_range = (0.95, 1.05) if modality == "CT" else (0.85, 1.15)
    if saved_cfg is not None and modality != saved_cfg["modality"]:
        raise ScoreReconError(f"the data are {modality} but the checkpoint is {saved_cfg['modality']}; pass "
                              f"--modality {saved_cfg['modality']}")
    if is_main and cfg.show_progress:
        for w in dataset.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return dataset


def rank_shard(n: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """Indices of the slices rank ``rank`` draws from: its share of a seeded permutation of ``n`` slices
    (all of them when there are fewer slices than ranks)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[rank::world] if n >= world else perm


def device_slices(dataset: SliceDataset, device: torch.device) -> torch.Tensor:
    """The training slices (CPU, float32/float16), moved to a CUDA device when they take under 2 GiB."""
    slices = dataset.slices
    if device.type == "cuda" and slices.numel() * slices.element_size() < 2 * 1024**3:
        slices = slices.to(device)
    return slices


def draw_batch(cfg: TrainConfig, slices: torch.Tensor, shard: torch.Tensor, gen: torch.Generator, t_max: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One step's ``(x0, coords, t, z)`` on ``device``, every random draw from ``gen`` in a fixed order:
    slice indices, patches or augmentation, ``t ~ U(eps, t_max)``, ``z ~ N(0, I)``. ``coords`` is None for
    a whole-image prior."""
    b = cfg.batch_size
    idx = shard[torch.randint(len(shard), (b,), generator=gen)]
    coords = None
    if cfg.prior == "patch":
        aug = cfg.augment
        x0, coords = sample_patches(slices, b, cfg.patch_size, gen, index=idx,
                                    scale_range=tuple(cfg.scale_range) if aug else (1.0, 1.0),
                                    max_rotate_deg=10.0 if aug else 0.0, flip=aug,
                                    intensity=tuple(cfg.intensity_range) if aug else (1.0, 1.0))
        coords = to_device(coords, device)
    else:
        x0 = slices[to_device(idx, slices.device)].float()
        if cfg.augment:
            x0 = augment_batch(x0, gen)
    t = to_device(torch.rand(b, generator=gen) * (t_max - cfg.eps) + cfg.eps, device)
    z = to_device(torch.randn(x0.shape, generator=gen), device)
    return to_device(x0, device), coords, t, z
