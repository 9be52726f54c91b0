"""Filtered back-projection: FBP filters, parallel-beam FBP, and fan-beam FBP by rebinning to parallel beam.

Images come back as attenuation per pixel (``(B, 1, N, N)`` float32) from ``(B, 1, n_angles, n_det)``
sinograms of line integrals in pixel units.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScoreReconError
from .geometry import FanBeamGeometry, Geometry, ParallelBeamGeometry, check_sinogram
from .projectors import Projector, make_projector

#: FBP filters accepted by :func:`fbp`
FILTERS = ("ram-lak", "hann", "shepp-logan")
#: interpolation of the fan → parallel rebinning (grid_sample mode)
REBIN_MODE = "bicubic"

_filter_memo: dict[tuple[int, str, str], torch.Tensor] = {}


def fbp_filter(padded_size: int, filter: str = "ram-lak", device: torch.device | str = "cpu") -> torch.Tensor:
    """Real frequency response (padded_size//2 + 1,) of the FBP filter for a one-pixel detector.

    The ramp is the DFT of the spatial Ram-Lak kernel (h[0] = 1/4, h[odd n] = −1/(πn)², else 0),
    so its DC value is the correct small positive one; "hann" multiplies by ½(1 + cos 2πf) and
    "shepp-logan" by sinc(f), f in cycles per pixel.
    """
    if filter not in FILTERS:
        raise ScoreReconError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}")
    key = (padded_size, filter, str(device))
    if key not in _filter_memo:
        n = np.fft.fftfreq(padded_size, d=1.0 / padded_size).round().astype(np.int64)
        h = np.zeros(padded_size)
        h[0] = 0.25
        odd = n % 2 == 1
        h[odd] = -1.0 / (np.pi * n[odd]) ** 2
        ramp = np.fft.rfft(h).real
        f = np.fft.rfftfreq(padded_size)
        if filter == "hann":
            ramp = ramp * 0.5 * (1.0 + np.cos(2.0 * np.pi * f))
        elif filter == "shepp-logan":
            ramp = ramp * np.sinc(f)
        _filter_memo[key] = torch.as_tensor(ramp, dtype=torch.float32, device=device)
    return _filter_memo[key]


def filter_sinogram(sino: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
    """Filter (B, 1, n_angles, n_det) sinograms along the detector (zero-padded FFT)."""
    n_det = sino.shape[-1]
    padded = max(64, 1 << math.ceil(math.log2(2 * n_det)))
    response = fbp_filter(padded, filter, sino.device)
    spec = torch.fft.rfft(sino.to(torch.float32), n=padded, dim=-1)
    return torch.fft.irfft(spec * response, n=padded, dim=-1)[..., :n_det]


def fbp(sino: torch.Tensor, geometry: Geometry, filter: str = "ram-lak",
        view_weights: torch.Tensor | np.ndarray | None = None, projector: Projector | None = None,
        coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Filtered back-projection of (B, 1, n_angles, n_det) sinograms → (B, 1, N, N) images.

    Parallel beam: scaled by ``arc / n_angles`` (π / n_angles over a 180° set), so a full-view FBP
    returns the attenuation per pixel. ``view_weights`` (n_angles,) multiplies each filtered view:
    for a sparse subset of n of N views use N/n on the measured views and 0 elsewhere; for a limited
    arc use 1 and 0. ``projector`` defaults to the projector of ``geometry`` (``backend="auto"``).
    Fan beam: :func:`fan_fbp` (rebinning to parallel beam; ``coverage`` as there, ``projector`` unused).
    """
    if geometry.kind == "fan":
        return fan_fbp(sino, geometry, filter, view_weights, coverage)
    check_sinogram(sino, geometry)
    projector = projector if projector is not None else make_projector(geometry, "auto", sino.device)
    filtered = filter_sinogram(sino, filter)
    if view_weights is not None:
        w = _view_vector(view_weights, geometry, sino.device, "view_weights")
        filtered = filtered * w.view(1, 1, -1, 1)
    return projector.adjoint(filtered) * (geometry.arc / geometry.n_angles)


def _view_vector(v: torch.Tensor | np.ndarray, geometry: Geometry, device: torch.device, what: str) -> torch.Tensor:
    w = torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
    if w.shape[0] != geometry.n_angles:
        raise ScoreReconError(f"{what} has {w.shape[0]} entries but the geometry has "
                              f"{geometry.n_angles} angles; give one weight per angle")
    return w


def rebinned_geometry(geometry: FanBeamGeometry) -> ParallelBeamGeometry:
    """The parallel-beam geometry :func:`fan_fbp` rebins ``geometry`` onto: ⌈n_angles / 2⌉ angles over
    [0, π) (a full turn sees every line twice) and the default one-pixel bins."""
    n_par = max(1, math.ceil(geometry.n_angles / 2))
    return ParallelBeamGeometry(geometry.image_size, n_par)


_rebin_memo: dict[tuple[str, str], torch.Tensor] = {}


def _rebin_grid(geometry: FanBeamGeometry, device: torch.device) -> torch.Tensor:
    """grid_sample grid (2, n_par, n_det_par, 2) locating both fan samples of every parallel line."""
    key = (geometry.key(), str(device))
    if key not in _rebin_memo:
        par = rebinned_geometry(geometry)
        theta = par.angles[:, None]
        t = np.arange(par.n_det, dtype=np.float64)[None, :] - (par.n_det - 1) / 2.0
        src = geometry.source_distance
        gamma = np.arcsin(np.clip(t / src, -1.0, 1.0))
        c_det = (geometry.n_det - 1) / 2.0
        # the sinogram gets one view before and two after (bicubic needs two neighbours): wrapped for a full
        # turn, zeros otherwise
        n_views = geometry.n_angles + 3
        d_beta = geometry.arc / geometry.n_angles
        grids = []
        # line (θ, t) is bin γ at β = θ + γ, and again (as (θ + π, −t)) bin −γ at β = θ + π − γ
        for beta, g in ((theta + gamma, gamma), (theta + math.pi - gamma, -gamma)):
            if geometry.full_turn:
                beta = np.mod(beta, 2.0 * math.pi)
            v = beta / d_beta + 1.0
            u = (g * src if geometry.detector == "curved" else np.tan(g) * src) + c_det
            u = np.where(np.abs(t) < src, u, -10.0)  # lines that miss the fan
            gx = 2.0 * u / max(1, geometry.n_det - 1) - 1.0
            gy = 2.0 * v / (n_views - 1) - 1.0
            gx, gy = np.broadcast_arrays(gx, gy)
            grids.append(np.stack([gx, gy], axis=-1))
        _rebin_memo[key] = torch.as_tensor(np.stack(grids), dtype=torch.float32, device=device)
    return _rebin_memo[key]


def rebin_to_parallel(sino: torch.Tensor, geometry: FanBeamGeometry,
                      coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Fan sinograms (B, 1, n_angles, n_det) → parallel ones on :func:`rebinned_geometry`.

    Each parallel line is read (bicubic in source angle and bin, :data:`REBIN_MODE`) from both fan
    views that contain it and the two are averaged, each weighted by its (bilinearly) interpolated
    ``coverage`` (n_angles,) (1 for a measured view, 0 for none; default all measured): a line
    measured once keeps that value, a line never measured is 0.
    """
    check_sinogram(sino, geometry)
    b = sino.shape[0]
    dev = sino.device
    grid = _rebin_grid(geometry, dev)
    cov = (torch.ones(geometry.n_angles, device=dev) if coverage is None
           else _view_vector(coverage, geometry, dev, "coverage"))

    def pad(v: torch.Tensor) -> torch.Tensor:
        if geometry.full_turn:
            return torch.cat([v[..., -1:, :], v, v[..., :2, :]], dim=-2)
        return F.pad(v, (0, 0, 1, 2))

    s = pad(sino.to(torch.float32))
    cv = pad(cov.view(1, 1, -1, 1).expand(1, 1, geometry.n_angles, geometry.n_det))
    vals, weights = 0.0, 0.0
    for k in range(2):
        g = grid[k:k + 1]
        vals = vals + F.grid_sample(s.reshape(1, b, *s.shape[-2:]), g, mode=REBIN_MODE, padding_mode="zeros",
                                    align_corners=True)[0]
        weights = weights + F.grid_sample(cv, g, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out = torch.where(weights > 1e-6, vals / weights.clamp_min(1e-6), torch.zeros_like(vals))
    return out.reshape(b, 1, *out.shape[-2:])


def fan_fbp(sino: torch.Tensor, geometry: FanBeamGeometry, filter: str = "ram-lak",
            view_weights: torch.Tensor | np.ndarray | None = None,
            coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Fan-beam FBP by rebinning to parallel beam (:func:`rebin_to_parallel`), then parallel FBP.

    ``view_weights`` (n_angles,) multiply the fan views first (sparse views: N/n on the measured
    ones, with ``coverage`` left at all views); for a limited arc pass the measured views as
    ``coverage`` (1/0) so lines seen once are not halved. Returns (B, 1, N, N).
    """
    if view_weights is not None:
        sino = sino * _view_vector(view_weights, geometry, sino.device, "view_weights").view(1, 1, -1, 1)
    par = rebinned_geometry(geometry)
    return fbp(rebin_to_parallel(sino, geometry, coverage), par, filter)


__all__ = [
    "FILTERS", "REBIN_MODE", "fan_fbp", "fbp", "fbp_filter", "filter_sinogram", "rebin_to_parallel",
    "rebinned_geometry",
]
