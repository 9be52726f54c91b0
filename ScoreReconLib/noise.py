"""Measurement-noise estimates and the noise-aware data-consistency weight of the proximal sampler.

Real measurements are noisy; a proximal step that keeps pulling the iterate onto ``y`` with a fixed
λ copies that noise into the image (streaks in sparse-view CT, speckle in MRI). With the noise std
``σ_y`` of one measured entry, the sampler's merge weight at time ``t`` becomes

    λ_t = λ · v_t / (v_t + σ_y²),     v_t = mean over measured entries of |β(t) (A z)|²

``v_t`` is the variance the sampler's own perturbation ``β(t) A z`` gives a measured entry (the
iterate's uncertainty seen through ``A``), so the data win while the iterate is noisier than
they are, and the prior takes over once the iterate is more precise than the data (the Gaussian
product of the two). ``σ_y = 0`` (noise-free data) gives ``λ_t = λ`` at every step, the paper's sampler.

``σ_y`` is estimated from ``y`` itself when it is not given (robust MAD estimates, Donoho & Johnstone):

- CT (real sinogram ``(B, 1, angles, detectors)``): second differences along the detector axis of the
  measured rows; white noise of std σ gives differences of std ``σ √6``, while the projections of an
  image are smooth along the detector except at edges. The detector is cut into
  :data:`SINOGRAM_SEGMENTS` stretches and the smallest stretch-wise MAD is kept: bone-rich heads have
  so many edges that one MAD over the whole detector read 10–90 % more than the noise at 1 % / 0.3 %
  noise (and 0.1–0.3 % of the peak on noise-free data); stretch-wise it is within about 20 % (usually
  below, the minimum's bias) and below 0.03 % of the peak on noise-free data.
- MRI (complex k-space ``(B, C, H, W)``, C coils): the measured points outside radius 0.5 of the
  half-width are split into :data:`KSPACE_BANDS` rings of equal width out to the corners; each ring with
  enough points gives a MAD estimate of the per-component std, and the smallest is kept. Image signal
  only adds to a ring's spread and falls with the radius, so the ring with the least signal (usually
  the corners) is the least biased; the old single outer-quarter MAD read signal and overestimated σ
  1.3–2× on 128² brain slices (``benchmarks/RESULTS.md``, *noise-estimate*). ``σ_y`` is the complex
  std (``E|n|² = σ_y²``). Noise-free data give a small positive value (the signal floor of the
  corners, about 0.02–0.1 % of max|y| on brain and body slices), which the weight choice treats as
  noise-free (:mod:`ScoreReconLib.parameter_choice`).
"""

from __future__ import annotations

import math

import torch

from .operators.base import MeasurementOperator

#: 1 / Φ⁻¹(3/4): MAD → standard deviation for Gaussian data
MAD_TO_STD = 1.4826


def _mad_std(values: torch.Tensor) -> float:
    if values.numel() == 0:
        return 0.0
    return float(MAD_TO_STD * values.abs().median())


#: stretches of the detector the sinogram estimate compares
SINOGRAM_SEGMENTS = 8
#: fewest second differences a detector stretch needs to count
SINOGRAM_MIN_POINTS = 64
#: second differences per stretch the estimate aims at (fewer stretches when there are fewer: the minimum of many
#: small-sample estimates would be biased low)
SINOGRAM_POINTS_PER_SEGMENT = 256


def estimate_sinogram_noise(y: torch.Tensor, mask: torch.Tensor, segments: int = SINOGRAM_SEGMENTS) -> float:
    """Noise std of one sinogram entry from ``y`` ``(B, 1, A, D)`` and its 0/1 ``mask`` (broadcastable).

    The detector axis is cut into ``segments`` equal stretches; each stretch's second differences over the
    measured views give a MAD estimate and the smallest is kept (the stretch with the fewest edges, usually
    rays through air at the detector's ends). All stretches together when none has enough points.
    """
    m = torch.broadcast_to(mask, y.shape).to(torch.bool)
    d2 = y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]
    ok = m[..., 2:] & m[..., 1:-1] & m[..., :-2]  # three consecutive measured bins
    n = d2.shape[-1]
    segments = max(1, min(int(segments), int(ok.sum()) // SINOGRAM_POINTS_PER_SEGMENT))
    bounds = [round(i * n / segments) for i in range(segments + 1)]
    estimates = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        vals = d2[..., lo:hi][ok[..., lo:hi]]
        if vals.numel() >= SINOGRAM_MIN_POINTS:
            estimates.append(_mad_std(vals))
    if not estimates:
        estimates.append(_mad_std(d2[ok]))
    return min(estimates) / math.sqrt(6.0)


#: rings of the outer k-space (radius 0.5 of the half-width to the corners) the k-space estimate compares
KSPACE_BANDS = 8
#: fewest measured points a ring needs to count (real and imaginary parts give twice as many values)
KSPACE_MIN_POINTS = 64


#: median / smallest ring estimate above which k-space is taken as noise-free: white noise reads the same in every
#: ring (ratios 1.1–1.7 on the validation subjects at 0.1 % noise), signal falls with the radius (2.4–4.2 noise-free)
KSPACE_SIGNAL_RATIO = 2.0


def kspace_radius(y: torch.Tensor) -> torch.Tensor:
    """(H, W) distance of each k-space point from the centre (N/2), in units of the half-width per axis."""
    h, w = y.shape[-2:]
    ky = (torch.arange(h, device=y.device) - h // 2).abs().float() / (h / 2)
    kx = (torch.arange(w, device=y.device) - w // 2).abs().float() / (w / 2)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def kspace_ring_estimates(y: torch.Tensor, mask: torch.Tensor, inner: float = 0.5,
                          bands: int = KSPACE_BANDS) -> list[float]:
    """The per-component MAD std of each ring from radius ``inner`` to the corners with enough measured points."""
    radius = kspace_radius(y)
    measured = torch.broadcast_to(mask, y.shape).to(torch.bool)
    edges = torch.linspace(inner, math.sqrt(2.0) + 1e-6, int(bands) + 1).tolist()
    estimates = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        vals = y[measured & (radius >= lo) & (radius < hi)]
        if vals.numel() >= KSPACE_MIN_POINTS:
            estimates.append(_mad_std(torch.cat([vals.real.flatten(), vals.imag.flatten()])))
    return estimates


def kspace_looks_noise_free(y: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when the outer k-space rings fall with the radius (median / smallest ring estimate above
    :data:`KSPACE_SIGNAL_RATIO`): what the smallest ring reads is the signal's tail, not noise."""
    rings = sorted(kspace_ring_estimates(y, mask))
    if len(rings) < 3 or rings[0] <= 0:
        return False
    return rings[len(rings) // 2] / rings[0] > KSPACE_SIGNAL_RATIO


def estimate_kspace_noise(y: torch.Tensor, mask: torch.Tensor, inner: float = 0.5,
                          bands: int = KSPACE_BANDS) -> float:
    """Complex noise std of one k-space entry from centred ``y`` ``(B, C, H, W)`` and its ``mask``.

    The smallest ring-wise MAD estimate over ``bands`` rings from radius ``inner`` (of the half-width)
    to the corners; all measured points outside ``inner`` together when no ring has
    :data:`KSPACE_MIN_POINTS` points; 0 when nothing is measured there.
    """
    estimates = kspace_ring_estimates(y, mask, inner, bands)
    if not estimates:
        radius = kspace_radius(y)
        measured = torch.broadcast_to(mask, y.shape).to(torch.bool)
        vals = y[measured & (radius >= inner)]
        if vals.numel() == 0:
            return 0.0
        estimates.append(_mad_std(torch.cat([vals.real.flatten(), vals.imag.flatten()])))
    return min(estimates) * math.sqrt(2.0)


def noise_estimable(op: MeasurementOperator, y: torch.Tensor) -> bool:
    """Whether ``y`` has the measured entries an estimate needs: at least :data:`SINOGRAM_MIN_POINTS` runs of
    three measured detector bins (CT), or :data:`KSPACE_MIN_POINTS` measured points outside half the k-space
    radius (MRI). Without them :func:`estimate_noise_std` returns 0 for want of data, not because the data are
    noise-free."""
    m = torch.broadcast_to(op.mask.to(y.device), y.shape).to(torch.bool)
    if y.is_complex():
        outer = kspace_radius(y) >= 0.5
        return int((m & outer).sum()) >= KSPACE_MIN_POINTS
    runs = m[..., 2:] & m[..., 1:-1] & m[..., :-2]
    return int(runs.sum()) >= SINOGRAM_MIN_POINTS


def looks_noise_free(op: MeasurementOperator, y: torch.Tensor) -> bool:
    """MRI: :func:`kspace_looks_noise_free` (the estimate would read the signal's tail); CT: False (its estimate's
    floor is far below real noise levels, so the weight choice compares σ_y with the peak instead)."""
    return bool(y.is_complex() and kspace_looks_noise_free(y, op.mask))


def estimate_noise_std(op: MeasurementOperator, y: torch.Tensor) -> float:
    """Noise std of one measured entry of ``y`` for ``op``'s kind of measurement (0 if it cannot tell)."""
    if y.is_complex():
        return estimate_kspace_noise(y, op.mask)
    return estimate_sinogram_noise(y, op.mask)


def noise_aware_lam(lam: float, b_az: torch.Tensor, mask: torch.Tensor, noise_std: float) -> float:
    """``λ_t = λ v_t / (v_t + σ_y²)`` for the perturbation ``b_az = β(t) A z`` (full layout) and ``mask``."""
    if noise_std <= 0 or lam == 0:
        return float(lam)
    m = torch.broadcast_to(mask, b_az.shape).to(torch.bool)
    v = float((b_az.abs() ** 2)[m].mean()) if bool(m.any()) else 0.0
    return float(lam) * v / (v + float(noise_std) ** 2)
