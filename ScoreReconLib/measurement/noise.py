"""Simulated measurement noise: the one function that adds seeded Gaussian noise to measurements.

(Estimating the noise of given measurements is :mod:`ScoreReconLib.noise`.)
"""

from __future__ import annotations

import math

import torch


def add_measurement_noise(y: torch.Tensor, mask: torch.Tensor, noise: float, seed: int, *,
                          per_slice: bool = True, peak: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, list[float]]:
    """``y`` plus seeded Gaussian noise of relative level ``noise`` on its measured entries.

    ``y``: full-layout measurements ``(S, C, ...)`` with zeros where nothing was measured, real (CT
    sinograms, pixel-unit line integrals of the normalised image) or complex (MRI k-space of the
    normalised image). ``mask``: the measured entries, non-zero where measured, broadcastable to ``y``
    (an operator's ``mask``); other entries are returned unchanged.

    ``noise`` is unitless, relative to the peak of the measurements: the standard deviation is
    ``σ = noise × max |y|`` over the measured entries (0.01: 1 % of the peak), so σ is in the units of
    ``y``. With ``per_slice`` (the default, what :func:`simulate` and the measurement files record)
    each slice ``s`` along axis 0 gets its own ``σ_s`` from its own peak; with ``per_slice=False`` one σ
    from the peak of the whole tensor applies to every slice and coil (what
    :func:`ScoreReconLib.evaluation.make_case` and the benchmarks use). ``peak`` ``(S,)`` replaces the
    measured peak of each slice by a reference of its own (MRI: the k-space peak of the magnitude image,
    one σ for every coil of an acquisition, :mod:`.mri_acquisition`). Real ``y`` gets ``σ · N(0, 1)``,
    complex ``y`` gets ``σ · (N(0, 1) + i N(0, 1)) / √2`` (so ``E|ε|² = σ²``).

    ``seed`` seeds the CPU ``torch.Generator`` of the draws, used as given: callers offset their own
    seed so the noise stream differs from their other draws (:func:`simulate` passes ``seed + 1_000_003``,
    ``make_case`` and the benchmarks ``seed + 1``). The draws are the real parts, shape ``y.shape``,
    then (complex ``y``) the imaginary parts, so they depend on the seed and the shape of ``y`` only.
    ``noise`` of 0 or less (or NaN) returns ``y`` unchanged.

    Returns ``(noisy y, σ of each slice)``.
    """
    s = y.shape[0]
    if not noise > 0:
        return y, [0.0] * s
    measured = torch.broadcast_to(mask.to(y.device) > 0, y.shape)
    if peak is not None:
        std = noise * torch.as_tensor(peak, dtype=torch.float32).reshape(-1).to(y.device)
        if std.numel() != s:
            raise ValueError(f"peak holds {std.numel()} values for {s} slices")
        scale: torch.Tensor | float = std.reshape(s, *([1] * (y.ndim - 1)))
        stds = [float(v) for v in std]
    elif per_slice:
        peak = (y.abs() * measured).reshape(s, -1).amax(dim=1)
        std = noise * peak
        scale = std.reshape(s, *([1] * (y.ndim - 1))).to(torch.float32)
        stds = [float(v) for v in std]
    else:
        scale = noise * float((y.abs() * measured).max())
        stds = [scale] * s
    g = torch.Generator().manual_seed(int(seed))
    if y.is_complex():
        real = torch.randn(y.shape, generator=g)
        imag = torch.randn(y.shape, generator=g)
        eps = torch.complex(real, imag).to(y.dtype) / math.sqrt(2.0)
    else:
        eps = torch.randn(y.shape, generator=g).to(y.dtype)
    return y + eps.to(y.device) * scale * measured, stds
