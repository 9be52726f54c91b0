"""VE/VP SDEs against their closed forms, their discretisations and their reversal."""

from __future__ import annotations

import math

import pytest
import torch

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.sde import VESDE, VPSDE, sde_from_dict
from ScoreReconLib.training import em_sample

T_GRID = torch.tensor([1e-5, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)


def test_ve_marginal_closed_form():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    x = torch.randn(len(T_GRID), 1, 4, 4, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, T_GRID)
    assert torch.equal(mean, x)
    expected = 0.01 * (50.0 / 0.01) ** T_GRID
    torch.testing.assert_close(std, expected, rtol=1e-12, atol=0)
    assert torch.equal(sde.alpha(T_GRID), torch.ones_like(T_GRID))
    torch.testing.assert_close(sde.beta(T_GRID), expected)


def test_vp_marginal_closed_form():
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    x = torch.randn(len(T_GRID), 1, 3, 3, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, T_GRID)
    coeff = torch.exp(-0.25 * T_GRID**2 * (20.0 - 0.1) - 0.5 * T_GRID * 0.1)
    torch.testing.assert_close(mean, coeff.reshape(-1, 1, 1, 1) * x)
    torch.testing.assert_close(std, torch.sqrt(1 - coeff**2))
    assert std[-1] > 0.99 and std[0] < 1e-2  # ~pure noise at T, ~clean at 0


def test_ve_sde_diffusion_is_derivative_of_variance():
    sde = VESDE(sigma_min=0.01, sigma_max=30.0)
    t = torch.tensor([0.2, 0.6], dtype=torch.float64)
    h = 1e-6
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    drift, g = sde.sde(torch.zeros(2, 1, 2, 2, dtype=torch.float64), t)
    assert torch.count_nonzero(drift) == 0
    torch.testing.assert_close(g**2, dvar, rtol=1e-6, atol=0)


def test_vp_sde_matches_marginal_ode():
    """d/dt alpha = -b/2 alpha and d/dt beta^2 = b (1 - beta^2) - ... i.e. var follows b (1 - var)."""
    sde = VPSDE()
    t = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    h = 1e-6
    dalpha = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    x = torch.ones(3, 1, 1, 1, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(dalpha, drift.flatten() * sde.alpha(t), rtol=1e-6, atol=1e-9)
    dvar = (sde.beta(t + h) ** 2 - sde.beta(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(dvar, g**2 * (1 - sde.beta(t) ** 2), rtol=1e-5, atol=1e-9)


def test_ve_discretize_accumulates_to_marginal_variance():
    sde = VESDE(sigma_min=0.01, sigma_max=20.0, N=100)
    var = 0.0
    x = torch.zeros(1, 1, 2, 2)
    for i in range(sde.N):
        t = torch.tensor([i / (sde.N - 1)])
        f, G = sde.discretize(x, t)
        assert torch.count_nonzero(f) == 0
        var += float(G) ** 2
        _, std = sde.marginal_prob(x, t.double())
        assert math.isclose(var, float(std) ** 2, rel_tol=1e-4), i


def test_vp_discretize_consistent_with_marginal():
    sde = VPSDE(N=1000)
    mean_coeff, var = 1.0, 0.0
    x = torch.ones(1, 1, 1, 1)
    for i in range(sde.N):
        t = torch.tensor([i / (sde.N - 1)])
        f, G = sde.discretize(x * mean_coeff, t)
        a = float((x * mean_coeff + f).item()) / mean_coeff  # sqrt(1 - b_i)
        mean_coeff *= a
        var = a**2 * var + float(G) ** 2
    t1 = torch.tensor([1.0], dtype=torch.float64)
    # DDPM chain vs continuous SDE: O(1/N) discretisation error
    assert math.isclose(mean_coeff, float(sde.alpha(t1)), rel_tol=0.05)
    assert math.isclose(var, float(sde.beta(t1)) ** 2, rel_tol=1e-3)
    mid = torch.tensor([0.3], dtype=torch.float64)
    assert float(sde.alpha(mid)) == pytest.approx(math.exp(-0.25 * 0.09 * 19.9 - 0.5 * 0.3 * 0.1))


def test_prior_sampling_scale_and_generator():
    ve, vp = VESDE(sigma_max=7.0), VPSDE()
    g = torch.Generator().manual_seed(3)
    a = ve.prior_sampling((4000, 1, 2, 2), generator=g)
    assert a.std().item() == pytest.approx(7.0, rel=0.05)
    assert vp.prior_sampling((4000, 1, 2, 2)).std().item() == pytest.approx(1.0, rel=0.05)
    b = ve.prior_sampling((4000, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sde", [VESDE(sigma_max=5.0), VPSDE()])
def test_reverse_sde_and_probability_flow(sde):
    x = torch.randn(2, 1, 3, 3)
    t = torch.tensor([0.3, 0.7])
    score = torch.randn_like(x)
    fwd_drift, g = sde.sde(x, t)
    drift, diff = sde.reverse(lambda x_, t_: score).sde(x, t)
    torch.testing.assert_close(drift, fwd_drift - g.reshape(-1, 1, 1, 1) ** 2 * score)
    torch.testing.assert_close(diff, g)
    drift, diff = sde.reverse(lambda x_, t_: score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift, fwd_drift - 0.5 * g.reshape(-1, 1, 1, 1) ** 2 * score)
    assert torch.count_nonzero(diff) == 0
    f, G = sde.discretize(x, t)
    rev_f, rev_G = sde.reverse(lambda x_, t_: score).discretize(x, t)
    torch.testing.assert_close(rev_f, f - G.reshape(-1, 1, 1, 1) ** 2 * score)
    torch.testing.assert_close(rev_G, G)


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=10.0), VPSDE()])
def test_reverse_sampling_with_exact_gaussian_score(sde):
    """Data N(m, s0^2): exact score of p_t is -(x - alpha m) / (alpha^2 s0^2 + beta^2)."""
    m, s0 = 0.5, 0.2

    def score(x, t):
        a = sde.alpha(t).reshape(-1, 1, 1, 1)
        b = sde.beta(t).reshape(-1, 1, 1, 1)
        return -(x - a * m) / (a**2 * s0**2 + b**2)

    g = torch.Generator().manual_seed(0)
    x = em_sample(score, sde, (6000, 1, 1, 1), steps=300, generator=g)
    assert x.mean().item() == pytest.approx(m, abs=0.02)
    assert x.std().item() == pytest.approx(s0, rel=0.1)


def test_sde_dict_round_trip_and_errors():
    for sde in (VESDE(0.02, 80.0, 500), VPSDE(0.2, 15.0, 200)):
        again = sde_from_dict(sde.to_dict())
        assert type(again) is type(sde) and again.to_dict() == sde.to_dict()
    with pytest.raises(ScoreReconError, match="unknown SDE type"):
        sde_from_dict({"type": "sub-vp"})
    with pytest.raises(ScoreReconError, match="lacks the key"):
        sde_from_dict({"type": "ve", "sigma_min": 0.01})
    with pytest.raises(ScoreReconError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ScoreReconError, match="between 2 and 100000.*at least 10"):
        VPSDE(N=1)
