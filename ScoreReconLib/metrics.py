"""Image quality metrics (PSNR, SSIM) per image over an explicit data range, via MONAI.

Inputs are ``(B, 1, H, W)`` batches (a reconstruction and its reference) on the same scale —
normally images normalised to [0, 1], so ``data_range=1.0``. Both functions return a float32
tensor of shape ``(B,)``. An optional boolean ``mask`` (``(H, W)``, ``(1, 1, H, W)`` or
``(B, 1, H, W)``; True = count this pixel) restricts the metric to a region, e.g. to leave out the
metal of a metal-artifact-reduction task.

SSIM uses MONAI's defaults (Wang et al. 2004): an 11×11 Gaussian window with σ = 1.5,
k1 = 0.01, k2 = 0.03, evaluated on the valid part of the image (5 pixels in from each edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

from .errors import ScoreReconError

#: SSIM window (pixels) and Gaussian σ
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _check_pair(x: torch.Tensor, ref: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise ScoreReconError("metrics take torch tensors; convert numpy arrays with torch.from_numpy")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ScoreReconError(f"expected images of shape (B, 1, H, W), got {tuple(x.shape)}; add batch/channel axes")
    if x.shape != ref.shape:
        raise ScoreReconError(
            f"image shape {tuple(x.shape)} differs from reference shape {tuple(ref.shape)}; compare images of one size"
        )
    if x.is_complex() or ref.is_complex():
        raise ScoreReconError("metrics need real images; take the magnitude or real part first")
    if not math.isfinite(float(data_range)) or data_range <= 0:
        raise ScoreReconError(f"data_range {data_range} must be a positive number; use 1.0 for [0, 1] images")
    return x.detach().float(), ref.detach().float().to(x.device)


def _check_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if m.ndim == 2:
        m = m[None, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != shape[-2:] or m.shape[0] not in (1, shape[0]):
        raise ScoreReconError(
            f"metric mask shape {tuple(torch.as_tensor(mask).shape)} does not fit images {tuple(shape)}; "
            "pass (H, W), (1, 1, H, W) or (B, 1, H, W)"
        )
    m = torch.broadcast_to(m.bool(), shape)
    if not m.reshape(shape[0], -1).any(dim=1).all():
        raise ScoreReconError("metric mask selects no pixel of some image; pass a mask with True where to measure")
    return m


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image → (B,); ``inf`` where ``x == ref``.

    ``10·log10(data_range² / MSE)``, the MSE taken over all pixels or over ``mask``'s pixels.
    """
    x, ref = _check_pair(x, ref, data_range)
    metric = PSNRMetric(max_val=float(data_range), reduction="none")
    if mask is None:
        return metric(x, ref).reshape(-1)
    m = _check_mask(mask, x.shape).to(x.device)
    out = [metric(x[b][m[b]].reshape(1, 1, -1), ref[b][m[b]].reshape(1, 1, -1)).reshape(()) for b in range(x.shape[0])]
    return torch.stack(out)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Structural similarity per image → (B,); 1 for identical images.

    Without ``mask`` this is MONAI's :class:`SSIMMetric`. With one, the pixels outside the mask are
    first set to the reference's values (so they cannot change the result), then MONAI's SSIM map
    (valid region) is averaged over the mask's pixels (the mask cropped to the map).
    """
    x, ref = _check_pair(x, ref, data_range)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ScoreReconError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got "
                              f"{x.shape[-2]}x{x.shape[-1]}; use PSNR for smaller images")
    if mask is None:
        metric = SSIMMetric(spatial_dims=2, data_range=float(data_range), win_size=SSIM_WINDOW,
                            kernel_sigma=SSIM_SIGMA, reduction="none")
        return metric(x, ref).reshape(-1)
    m = _check_mask(mask, x.shape).to(x.device)
    x = torch.where(m, x, ref)
    ssim_map, _ = compute_ssim_and_cs(x, ref, spatial_dims=2, kernel_size=(SSIM_WINDOW, SSIM_WINDOW),
                                      kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA), data_range=float(data_range))
    h = SSIM_WINDOW // 2
    m = m[..., h:x.shape[-2] - h, h:x.shape[-1] - h].to(ssim_map.dtype)
    count = m.reshape(x.shape[0], -1).sum(dim=1)
    if (count == 0).any():
        raise ScoreReconError(f"metric mask has no pixel at least {h} pixels in from the edge; SSIM needs "
                              "some; enlarge the mask")
    return (ssim_map * m).reshape(x.shape[0], -1).sum(dim=1) / count


__all__ = ["psnr", "ssim", "SSIM_WINDOW", "SSIM_SIGMA"]


@dataclass(frozen=True)
class SliceScores:
    """PSNR (dB) and SSIM of each slice and their means, on images clipped to [0, 1] (data range 1)."""

    psnr: float
    ssim: float
    psnr_per_slice: list[float]
    ssim_per_slice: list[float]
    #: whether a mask left pixels out (e.g. the metal of metal-ct)
    masked: bool

    @property
    def means(self) -> tuple[float, float]:
        """``(mean PSNR, mean SSIM)``."""
        return self.psnr, self.ssim

    def to_dict(self) -> dict:
        """The record ``scorerecon reconstruct --metrics-json`` writes."""
        return {"psnr": self.psnr, "ssim": self.ssim, "psnr_per_slice": self.psnr_per_slice,
                "ssim_per_slice": self.ssim_per_slice, "data_range": 1.0, "metal_excluded": self.masked}


def score_slices(x: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None = None) -> SliceScores:
    """The project's one image score: PSNR and SSIM per slice of ``x`` against ``ref`` (S, 1, N, N) normalised
    images, both clipped to [0, 1] (data range 1), counting only pixels where ``keep`` is True (None: all)."""
    xc, rc = x.float().clamp(0, 1), ref.float().clamp(0, 1)
    p = [float(v) for v in psnr(xc, rc, data_range=1.0, mask=keep)]
    s = [float(v) for v in ssim(xc, rc, data_range=1.0, mask=keep)]
    return SliceScores(float(np.mean(p)), float(np.mean(s)), p, s, keep is not None)


#: pixels of a [0, 1]-normalised reference above this count as body (air and background left out)
BODY_LEVEL = 0.05
#: |error| ≤ Z90 · std holds 90 % of a Gaussian error: the band the posterior std is calibrated for
Z90 = 1.645


def band_coverage(x: torch.Tensor, ref: torch.Tensor, std: torch.Tensor, keep: torch.Tensor | None = None,
                  z: float = Z90) -> float:
    """Fraction of body pixels (``ref > BODY_LEVEL`` and ``keep``) whose error lies in the posterior band:
    |x − ref| ≤ z · std, all (S, 1, N, N) normalised images (0.9 for a calibrated std at the default ``z``).
    NaN when no pixel is body."""
    ref = ref.float()
    body = ref > BODY_LEVEL
    if keep is not None:
        body &= torch.as_tensor(keep, dtype=torch.bool).expand_as(body)
    if not bool(body.any()):
        return float("nan")
    inside = (x.float() - ref).abs() <= z * std.float()
    return float(inside[body].double().mean())
