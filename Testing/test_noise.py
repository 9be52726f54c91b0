"""Measurement-noise estimates and the noise-aware data-consistency weight."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TWO_ELLIPSES, blurred_ellipses

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.noise import estimate_kspace_noise, estimate_noise_std, estimate_sinogram_noise, noise_aware_lam
from ScoreReconLib.operators import build_operator


@pytest.mark.parametrize("sigma", [0.3, 1.0])  # 1–3 % of the sinogram maximum
def test_sinogram_noise_estimate_is_close(sigma):
    op = build_operator("sparse-ct", 48, views=12)
    y = op.A(blurred_ellipses(48, TWO_ELLIPSES))
    g = torch.Generator().manual_seed(0)
    noisy = y + sigma * torch.randn(y.shape, generator=g) * op.mask
    est = estimate_sinogram_noise(noisy, op.mask)
    assert abs(est - sigma) < 0.2 * sigma
    assert estimate_noise_std(op, noisy) == est


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_kspace_noise_estimate_is_close(sigma):
    op = build_operator("mri", 64, acceleration=4, mask="poisson", seed=0)
    y = op.A(blurred_ellipses(64, TWO_ELLIPSES))
    g = torch.Generator().manual_seed(1)
    n = torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)) / math.sqrt(2)
    noisy = y + sigma * n * op.mask
    est = estimate_kspace_noise(noisy, op.mask)
    assert abs(est - sigma) < 0.25 * sigma
    assert estimate_kspace_noise(y, op.mask) < 0.5 * 0.05  # noise-free: well below the noise levels tested


def test_noise_aware_lam_limits():
    mask = torch.ones(1, 1, 4, 4)
    big = torch.full((1, 1, 4, 4), 10.0)
    small = torch.full((1, 1, 4, 4), 1e-3)
    assert noise_aware_lam(0.8, big, mask, 0.0) == 0.8  # noise-free: the paper's constant λ
    assert abs(noise_aware_lam(0.8, big, mask, 0.1) - 0.8) < 1e-3  # iterate far noisier than the data
    assert noise_aware_lam(0.8, small, mask, 0.1) < 1e-3  # iterate far more precise than the data
    assert abs(noise_aware_lam(1.0, torch.full((1, 1, 4, 4), 0.1), mask, 0.1) - 0.5) < 1e-6


def test_sampler_settings_validate_noise_options():
    from ScoreReconLib.reconstruction import resolve_settings

    class _P:
        modality = "CT"
        recommended: dict = {}

    assert resolve_settings("proximal", _P(), noise_std=0.0).noise_std == 0.0
    assert resolve_settings("proximal", _P(), noise_scale=2).noise_scale == 2.0
    for bad in ({"noise_std": -1}, {"noise_scale": 0}, {"final_lam": 1.5}, {"noise_std": float("nan")}):
        with pytest.raises(ScoreReconError):
            resolve_settings("proximal", _P(), **bad)
    with pytest.raises(ScoreReconError, match="proximal"):
        resolve_settings("fast", _P(), final_lam=0.5)


def test_sinogram_noise_free_estimate_is_tiny():
    """Noise-free projections of a smooth image read far below any real noise level (≤ 0.05 % of the peak)."""
    op = build_operator("sparse-ct", 64, views=23)
    y = op.A(blurred_ellipses(64, TWO_ELLIPSES))
    assert estimate_sinogram_noise(y, op.mask) < 5e-4 * float(y.abs().max())


def test_kspace_estimate_ignores_outer_signal():
    """A sharp-edged image puts signal into the outer k-space; the ring-wise minimum stays within 20 % of σ and
    below one MAD over the outer quarter (the old estimate), which reads more of the signal as noise."""
    op = build_operator("mri", 64, acceleration=4, mask="equispaced", center_fraction=0.08)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    x = ((xx / 0.8) ** 2 + (yy / 0.7) ** 2 < 1).float() * 0.5  # sharp edges: signal out to the corners
    x = (x + ((xx / 0.2) ** 2 + ((yy - 0.1) / 0.3) ** 2 < 1).float() * 0.4)[None, None]
    y = op.A(x)
    sigma = 0.005 * float(y.abs().max())
    g = torch.Generator().manual_seed(2)
    n = torch.complex(torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)) / math.sqrt(2)
    noisy = y + sigma * n * op.mask
    est = estimate_kspace_noise(noisy, op.mask)
    assert abs(est - sigma) < 0.2 * sigma
    assert est < estimate_kspace_noise(noisy, op.mask, inner=0.75, bands=1)


def test_kspace_that_falls_with_the_radius_looks_noise_free():
    """Noise-free k-space: the outer rings fall with the radius (the estimate reads the signal's tail), so the weight
    choice treats it as noise-free; white noise reads the same in every ring."""
    from ScoreReconLib.noise import kspace_looks_noise_free
    from ScoreReconLib.operators import build_operator
    from ScoreReconLib.parameter_choice import NOISE_FREE_WEIGHT, WEIGHT_RULES, choose_weight, noise_class

    n = 128
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    x = (((xx / 0.8) ** 2 + (yy / 0.7) ** 2) < 1).float() * 0.6
    x = x + (((xx - 0.2) / 0.2) ** 2 + (yy / 0.3) ** 2 < 1).float() * 0.3
    x = torch.nn.functional.avg_pool2d(x[None, None], 5, stride=1, padding=2, count_include_pad=False)
    for mask in ("equispaced", "poisson"):
        op = build_operator("mri", n, acceleration=4, mask=mask, center_fraction=0.08)
        clean = op.A(x)
        g = torch.Generator().manual_seed(0)
        noise = torch.complex(torch.randn(clean.shape, generator=g), torch.randn(clean.shape, generator=g))
        noisy = clean + 0.002 * float(clean.abs().max()) * noise.to(clean.dtype) / 2**0.5 * op.mask
        assert kspace_looks_noise_free(clean, op.mask)
        assert not kspace_looks_noise_free(noisy, op.mask)
        assert noise_class(clean, op) == "noise-free" and noise_class(noisy, op) == "noisy"
        # MRI chooses by cross-validation in both classes (WEIGHT_RULES); the discrepancy rule, where it is set,
        # keeps the noise-free weight for the noise-free data and raises it for the noisy
        assert choose_weight(clean, op, "cs").rule == "cross-validation"
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(WEIGHT_RULES, "MR", dict.fromkeys(("noisy", "noise-free", "unknown"), "discrepancy"))
            choice = choose_weight(clean, op, "cs")
            assert choice.rule == "noise-free"
            assert choice.weight == NOISE_FREE_WEIGHT["mri-1d" if mask == "equispaced" else "mri-2d"]
            assert choose_weight(noisy, op, "cs").rule == "discrepancy"
