"""MRI acquisitions as a scanner makes them: image phase, receive-coil maps and noise per acquisition.

What :func:`~ScoreReconLib.measurement.simulate` does for ``task="mri"``:

- **Image phase** (``phase="smooth"``, the default): the magnitude image ``x`` is received as
  ``x e^{iφ}`` with a seeded smooth phase ``φ`` (:func:`smooth_phase`: a constant, ramps, a quadratic
  and a few broad bumps, a few radians across the field of view, as B0 and receive phase give).
  ``phase="zero"`` receives the real image (the idealised data that favour real-valued methods).
- **Coils**: one coil receives with a uniform sensitivity (a body coil); ``coils`` > 1 receive with
  :func:`~ScoreReconLib.coils.receive_coil_maps`, zero outside the object's support
  (:func:`object_support`) like an ESPIRiT calibration, and roll off with the distance to each loop.
- **Noise per acquisition**: one complex Gaussian σ for every coil of a slice, ``σ = noise × max|F x|``
  (the k-space peak of the magnitude image, its DC), so the same ``noise`` gives the same image SNR
  single- and multi-coil (with ``Σ_c |S_c|² = 1`` the coil-combined image noise is σ either way).
- **What the file carries** is what a scanner user would have: the sampled k-space, the coil maps
  (``maps="true"``, the maps that made the data; or estimated from the data as an import would:
  ``"auto"``, ``"espirit"``, ``"lowres"``, :func:`~ScoreReconLib.coils.estimate_maps`) and the image
  phase *estimated* from the calibration region (:func:`~ScoreReconLib.coils.absorb_phase`), never
  the true phase. :func:`phase_error` measures that estimate against the truth.

A single-coil acquisition with zero phase keeps the single-coil operator
(:mod:`ScoreReconLib.operators.mri`, real image, conjugate-symmetric data consistency); everything
else is a :class:`~ScoreReconLib.operators.multicoil.MultiCoilMRI` on the real magnitude image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..errors import ScoreReconError
from ..operators import build_operator
from ..operators.base import MeasurementOperator
from ..operators.mri import fft2c
from ..vocabulary import MRI_PHASES
from .noise import add_measurement_noise

#: values of ``phase`` (:data:`ScoreReconLib.vocabulary.MRI_PHASES`)
PHASE_KINDS = MRI_PHASES
#: the phase simulate uses unless told
DEFAULT_PHASE = "smooth"
#: values of ``maps``: the maps that made the data, or estimated from them (:data:`ScoreReconLib.coils.MAP_METHODS`)
SIMULATED_MAPS = ("true", "auto", "espirit", "lowres")
#: object support: pixels above this fraction of the slice's maximum, holes filled, then dilated
SUPPORT_THRESHOLD = 0.02
#: support margin in pixels per 128 pixels of image side (at least 2)
SUPPORT_MARGIN_PER_128 = 4
#: pixels above this fraction of the slice's maximum count in :func:`phase_error`
PHASE_ERROR_LEVEL = 0.1


def pixel_centres(size: int) -> np.ndarray:
    """Coordinates in ``[−1, 1]`` of the centres of ``size`` pixels across the field of view (the same
    physical points at every grid size, as ``align_corners=False`` resampling places them)."""
    return (np.arange(size) + 0.5 - size / 2) / (size / 2)


def crop_kspace(k_fine: torch.Tensor, n: int) -> torch.Tensor:
    """Centred orthonormal k-space ``(..., F, F)`` of an image on a fine grid → ``(..., N, N)`` of the same
    field of view on the N grid: the central block, scaled by N/F so the orthonormal transforms agree, times
    ``exp(2πi k·δ)`` for the offset δ (in fields of view) between the grids' FFT origins (pixel N//2 vs F//2
    under ``align_corners=False`` resampling). The data of an object finer than the reconstruction grid."""
    f = int(k_fine.shape[-1])
    if f < n:
        raise ScoreReconError(f"the fine grid ({f}) must be at least the reconstruction grid ({n})")
    a = f // 2 - n // 2
    k = k_fine[..., a:a + n, a:a + n] * (n / f)
    delta = (n // 2 + 0.5) / n - (f // 2 + 0.5) / f
    freq = torch.arange(n, dtype=torch.float64) - n // 2
    shift = torch.exp(2j * math.pi * delta * (freq[:, None] + freq[None, :])).to(torch.complex64)
    return k * shift.to(k.device)


def smooth_phase(size: int, seed: int) -> torch.Tensor:
    """A seeded smooth image phase ``(1, 1, N, N)`` float32 in radians (not wrapped).

    ``φ = c + g_y y + g_x x + q (a y² + b x² + c xy) + Σ_k h_k exp(−|r − r_k|² / 2w_k²)`` on ``[−1, 1]²``:
    a constant ``c`` ∈ [−π, π], ramps ``g`` ∈ [−π/2, π/2], a quadratic of up to about 1 rad and three
    bumps of height ∈ [−1, 1] rad and width ∈ [0.25, 0.6], so a few radians across the field of view.
    """
    rng = np.random.default_rng([int(seed), 0x9A5E])
    yy, xx = np.meshgrid(pixel_centres(size), pixel_centres(size), indexing="ij")
    phi = rng.uniform(-math.pi, math.pi) + rng.uniform(-math.pi / 2, math.pi / 2) * yy
    phi = phi + rng.uniform(-math.pi / 2, math.pi / 2) * xx
    a, b, c = rng.uniform(-0.5, 0.5, size=3)
    phi = phi + a * yy**2 + b * xx**2 + c * xx * yy
    for _ in range(3):
        cy, cx = rng.uniform(-0.7, 0.7, size=2)
        width = rng.uniform(0.25, 0.6)
        phi = phi + rng.uniform(-1.0, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return torch.from_numpy(phi.astype(np.float32))[None, None]


def object_support(x: torch.Tensor, threshold: float = SUPPORT_THRESHOLD, margin: int | None = None) -> torch.Tensor:
    """Where the object is, with a margin: ``(S, 1, N, N)`` bool from magnitude images ``x`` ``(S, 1, N, N)``.

    Pixels above ``threshold`` × the slice's maximum, holes filled, dilated by ``margin`` pixels
    (default :data:`SUPPORT_MARGIN_PER_128` per 128 pixels of side, at least 2)."""
    n = int(x.shape[-1])
    grow = max(2, round(SUPPORT_MARGIN_PER_128 * n / 128)) if margin is None else int(margin)
    out = np.zeros(tuple(x.shape), dtype=bool)
    arr = x.detach().abs().cpu().numpy()
    disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), grow) if grow > 0 else None
    for s in range(arr.shape[0]):
        img = arr[s, 0]
        peak = float(img.max())
        if peak <= 0:
            continue
        body = ndimage.binary_fill_holes(img > threshold * peak)
        out[s, 0] = ndimage.binary_dilation(body, structure=disk) if disk is not None else body
    return torch.from_numpy(out)


def kspace_peak(x: torch.Tensor) -> torch.Tensor:
    """``max |F x|`` per slice ``(S,)`` of magnitude images ``x`` ``(S, 1, N, N)``: the reference of ``noise``."""
    return fft2c(x.to(torch.complex64)).abs().flatten(1).amax(dim=1).float()


def phase_error(op: MeasurementOperator, true_maps: torch.Tensor, true_phase: torch.Tensor,
                x: torch.Tensor) -> list[float]:
    """RMS phase (radians) per slice that the file's operator leaves in the image, where ``x`` is above
    :data:`PHASE_ERROR_LEVEL` of its maximum.

    The real-valued reconstructions see the image ``x e^{iψ}`` with ``ψ = arg Σ_c conj(S'_c) S_c e^{iφ}``
    (``S'`` the file's maps with the estimated phase folded in, ``S`` and ``φ`` the truth), so ``ψ`` is the
    error of the phase estimate and of the maps' phase together; 0 when the operator has no phase to miss."""
    maps = getattr(op, "maps", None)
    if maps is None:
        return [0.0] * int(x.shape[0])
    truth = true_maps * torch.polar(torch.ones_like(true_phase), true_phase)
    psi = torch.angle((maps.conj() * truth).sum(dim=1, keepdim=True))
    out = []
    for s in range(x.shape[0]):
        keep = x[s] > PHASE_ERROR_LEVEL * float(x[s].max())
        vals = psi[s if psi.shape[0] > 1 else 0][keep]
        out.append(float(torch.sqrt((vals**2).mean())) if vals.numel() else 0.0)
    return out


def _fine_kspace(fine: torch.Tensor, coils: int, phase: str, seed: int, n: int) -> torch.Tensor:
    """Full k-space ``(S, C, N, N)`` of the slices ``fine`` ``(S, 1, F, F)`` received on their own grid."""
    from ..coils import receive_coil_maps

    s_count, f = int(fine.shape[0]), int(fine.shape[-1])
    xc = fine.to(torch.complex64)
    if phase != "zero":
        ph = torch.cat([smooth_phase(f, int(seed) + s) for s in range(s_count)]).to(fine.device)
        xc = xc * torch.polar(torch.ones_like(ph), ph)
    if int(coils) > 1:
        xc = xc * receive_coil_maps(f, int(coils), int(seed), object_support(fine)).to(fine.device)
    return crop_kspace(fft2c(xc), n)


@dataclass
class KspaceAcquisition:
    """What :func:`simulate_kspace` returns: the operator the file carries, the noisy k-space, the per-slice σ,
    the options to record and the truth (coil maps, phase and its estimate's error) for benchmarks."""

    operator: MeasurementOperator
    y: torch.Tensor
    noise_std: list[float]
    options: dict
    true_maps: torch.Tensor
    true_phase: torch.Tensor
    phase_error: list[float] = field(default_factory=list)


def check_acquisition(phase: str, maps: str, coils: int) -> None:
    """Clear errors for ``phase`` / ``maps`` values before anything is computed."""
    if phase not in PHASE_KINDS:
        raise ScoreReconError(f"--phase must be one of {', '.join(PHASE_KINDS)}, got {phase!r}")
    if maps not in SIMULATED_MAPS:
        raise ScoreReconError(f"--maps must be one of {', '.join(SIMULATED_MAPS)}, got {maps!r}")
    if maps != "true" and coils < 2:
        raise ScoreReconError(f"--maps {maps} estimates the maps of several coils; single-coil data have none "
                              "to estimate: drop --maps or pass --coils 2 or more")


def simulate_kspace(x: torch.Tensor, *, coils: int = 1, phase: str = DEFAULT_PHASE, maps: str = "true",
                    acceleration: float = 8.0, center_fraction: float = 0.08, mask: str = "equispaced",
                    noise: float = 0.0, seed: int = 0, noise_seed: int = 1, fine: torch.Tensor | None = None,
                    device: torch.device | str = "cpu") -> KspaceAcquisition:
    """Simulate the k-space of magnitude images ``x`` ``(S, 1, N, N)`` float32 (module docstring).

    ``noise``: relative to each slice's :func:`kspace_peak`, one σ for all its coils, drawn from ``noise_seed``;
    ``seed`` seeds the mask, the phase (slice ``s`` uses ``seed + s``) and the coil maps. ``fine``: the same slices
    on a finer grid ``(S, 1, F, F)``, F ≥ N (the inverse-crime-free setting): the signal is received there (phase,
    maps and support evaluated on that grid) and its k-space cropped to N² (:func:`crop_kspace`), so the data
    are not made by the operator that reconstructs them."""
    from ..coils import absorb_phase, estimate_maps, receive_coil_maps
    from ..operators.multicoil import MultiCoilMRI, build_multicoil_operator

    check_acquisition(phase, maps, int(coils))
    s_count, n = int(x.shape[0]), int(x.shape[-1])
    x = x.to(device)
    options = {"acceleration": float(acceleration), "center_fraction": float(center_fraction), "mask": mask,
               "phase": phase}
    if int(coils) > 1:
        options.update({"coils": int(coils), "maps": maps})
    if phase == "zero":
        true_phase = torch.zeros(1, 1, n, n, device=device)
    else:
        true_phase = torch.cat([smooth_phase(n, int(seed) + s) for s in range(s_count)]).to(device)
    if int(coils) == 1:
        true_maps = torch.ones(1, 1, n, n, dtype=torch.complex64, device=device)
    else:
        true_maps = receive_coil_maps(n, int(coils), int(seed), object_support(x)).to(device)
    peaks = kspace_peak(x)
    if fine is not None and (fine.ndim != 4 or fine.shape[:2] != x.shape[:2] or fine.shape[-1] < n):
        raise ScoreReconError(f"the fine-grid slices have shape {tuple(fine.shape)}; expected ({s_count}, 1, F, F) "
                              f"with F >= {n}")
    if phase == "zero" and int(coils) == 1:
        op = build_operator("mri", n, acceleration=float(acceleration), center_fraction=float(center_fraction),
                            mask=mask, seed=int(seed), device=device)
        with torch.no_grad():
            y = op.mask_apply(op.T(x) if fine is None else _fine_kspace(fine, 1, phase, seed, n))
        y, stds = add_measurement_noise(y, op.mask, float(noise), int(noise_seed), peak=peaks)
        return KspaceAcquisition(op, y, stds, options, true_maps, true_phase, [0.0] * s_count)
    received = build_multicoil_operator(true_maps, float(acceleration), float(center_fraction), mask, int(seed),
                                        device, image_domain="complex")
    lam = received.mask[0, 0]
    with torch.no_grad():
        xc = x.to(torch.complex64) * torch.polar(torch.ones_like(true_phase), true_phase)
        y = received.mask_apply(received.T(xc) if fine is None else _fine_kspace(fine, coils, phase, seed, n))
    y, stds = add_measurement_noise(y, received.mask, float(noise), int(noise_seed), peak=peaks)
    file_maps, source = (true_maps, "synthetic" if int(coils) > 1 else "body coil")
    if maps != "true":
        file_maps, source = estimate_maps(y, lam, maps)
    est_phase = absorb_phase(file_maps, y, lam) if phase != "zero" else None
    op = MultiCoilMRI(file_maps, lam, est_phase, kind=received.kind, acceleration=received.requested_acceleration,
                      center_fraction=received.center_fraction, seed=received.seed, maps_source=source, device=device)
    if int(coils) > 1 and maps != "true":
        options["maps"] = source
    errors = phase_error(op, true_maps, true_phase, x) if phase != "zero" else [0.0] * s_count
    return KspaceAcquisition(op, y, stds, options, true_maps, true_phase, errors)


__all__ = ["DEFAULT_PHASE", "PHASE_KINDS", "SIMULATED_MAPS", "KspaceAcquisition", "check_acquisition",
           "crop_kspace", "kspace_peak", "object_support", "phase_error", "pixel_centres", "simulate_kspace",
           "smooth_phase"]
