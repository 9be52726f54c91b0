"""Metal in CT: metal masks (threshold, random implants), and inpainting of the metal trace in a sinogram."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ScoreReconError
from ..utils import check_finite
from .geometry import MIN_IMAGE_SIZE, as_int

#: a sinogram bin counts as "in the metal trace" above this path length through metal (pixels)
TRACE_THRESHOLD = 1e-3


def interpolate_trace(y: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """Fill unmeasured bins of ``y`` (…, n_det) by linear interpolation along the last axis.

    ``measured``: bool of the same shape. Bins before the first / after the last measured bin take
    its value; rows with nothing measured become 0.
    """
    n = y.shape[-1]
    idx = torch.arange(n, device=y.device).expand_as(y)
    big = n + 1
    left = torch.where(measured, idx, torch.full_like(idx, -1)).cummax(dim=-1).values
    right_src = torch.where(measured, idx, torch.full_like(idx, big)).flip(-1)
    right = (-(-right_src).cummax(dim=-1).values).flip(-1)
    has_left, has_right = left >= 0, right < big
    left_c, right_c = left.clamp(0, n - 1), right.clamp(0, n - 1)
    yl, yr = y.gather(-1, left_c), y.gather(-1, right_c)
    span = (right - left).clamp_min(1).to(y.dtype)
    frac = (idx - left).to(y.dtype) / span
    both = yl + frac * (yr - yl)
    out = torch.where(has_left & has_right, both, torch.where(has_left, yl, torch.where(has_right, yr, 0.0 * y)))
    return torch.where(measured, y, out)


def as_bool_mask(mask: torch.Tensor | np.ndarray, size: int, what: str) -> torch.Tensor:
    """``mask`` as a (B, 1, size, size) bool CPU tensor ((N, N) and (B, N, N) get their axes added)."""
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
    if m.ndim == 2:
        m = m[None, None]
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-1] != m.shape[-2] or m.shape[-1] != size:
        raise ScoreReconError(f"{what} has shape {tuple(m.shape)}, expected (B, 1, {size}, {size}) "
                              "like the image; give one mask per image")
    if m.dtype != torch.bool:
        check_finite(m.float(), what)
        m = m > 0
    return m.cpu()


def metal_mask_from_image(x_hu: torch.Tensor | np.ndarray, threshold: float = 3000.0) -> torch.Tensor:
    """Metal segmentation by threshold: bool tensor of ``x_hu``'s shape, True where HU > ``threshold``."""
    x = torch.as_tensor(np.asarray(x_hu)) if not isinstance(x_hu, torch.Tensor) else x_hu
    check_finite(x, "the CT image (HU)")
    return x > float(threshold)


def random_metal_mask(image_size: int, n_objects: int = 2, seed: int = 0,
                      inside: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Random small dense ellipses like fillings (round) or screws (elongated): (1, 1, N, N) bool.

    Each object lies wholly inside ``inside`` ((N, N) bool body mask; default a centred disc of
    radius 0.4·N) and objects do not touch. Semi-axes are 1.5–4 % of N (at least 1.5 px).
    """
    size = as_int(image_size, "image_size")
    n_objects = as_int(n_objects, "n_objects")
    if size < MIN_IMAGE_SIZE:
        raise ScoreReconError(f"image size {size} is too small; use at least {MIN_IMAGE_SIZE}")
    if n_objects < 1:
        raise ScoreReconError(f"n_objects must be at least 1, got {n_objects}")
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    if inside is None:
        c0 = (size - 1) / 2.0
        body = (rr - c0) ** 2 + (cc - c0) ** 2 <= (0.4 * size) ** 2
    else:
        body = as_bool_mask(inside, size, "inside").numpy()[0, 0]
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), dtype=bool)
    placed, tries = 0, 0
    while placed < n_objects:
        tries += 1
        if tries > 500 * n_objects:
            raise ScoreReconError(f"could not place {n_objects} metal objects inside the body mask; "
                                  "give a larger body mask or fewer objects")
        screw = placed % 2 == 1
        a = max(1.5, size * rng.uniform(0.02, 0.04))
        b = max(1.5, a / rng.uniform(2.5, 4.0)) if screw else max(1.5, a * rng.uniform(0.6, 1.0))
        phi = rng.uniform(0, np.pi)
        cr, ccol = rng.uniform(0, size - 1, size=2)
        u = (cc - ccol) * np.cos(phi) + (rr - cr) * np.sin(phi)
        v = -(cc - ccol) * np.sin(phi) + (rr - cr) * np.cos(phi)
        obj = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        halo = (u / (a + 2)) ** 2 + (v / (b + 2)) ** 2 <= 1.0
        if not obj.any() or not body[halo].all() or (out & halo).any():
            continue
        out |= obj
        placed += 1
    return torch.from_numpy(out)[None, None]


__all__ = ["TRACE_THRESHOLD", "as_bool_mask", "interpolate_trace", "metal_mask_from_image", "random_metal_mask"]
