"""Conditional samplers of p(x | y): the proximal sampler of Song et al. (2022), song2021 and the DDS-style fast
sampler, each ``fn(prior, op, y, settings, ctx) -> (B, 1, H, W)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..baselines import operator_norm
from ..noise import noise_aware_lam
from ..operators.base import MeasurementOperator
from ..rng import randn
from ..settings import SamplerSettings
from .common import SamplerContext, _alpha_beta, _counted_score, _report, reverse_grid, tweedie
from .consistency import (
    _consistency_step,
    _perturbed_measurement,
    classical_init,
    data_consistency,
    noise_std_of,
    noisy_measurement,
)
from .steps import LangevinCorrector, _randn, _vec, get_predictor


def _initial_state(sde, op: MeasurementOperator, y: torch.Tensor, settings: SamplerSettings, ctx: SamplerContext,
                   t0: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` at the first time ``t0``: a draw from p_T (``init="noise"``) or ``α(t0) x_c + β(t0) z``."""
    shared = settings.z_shared_noise
    if settings.init == "noise":
        if shared and shape[0] > 1:
            return sde.prior_sampling((1, *shape[1:]), generator=ctx.generator, device=y.device).expand(shape).clone()
        return sde.prior_sampling(shape, generator=ctx.generator, device=y.device)
    if ctx.x_init is None:
        ctx.x_init = classical_init(op, y, settings.init_weight, ctx.cancel, noise_std_of(op, y, settings, ctx))
    z = randn(shape, ctx.generator, y.device, torch.float32, shared=shared)
    a, b = _alpha_beta(sde, t0.reshape(1).to(z.device), z)
    return a * ctx.x_init.to(z) + b * z


# ------------------------------------------------------------------------ conditional samplers
def proximal_sample(prior, op: MeasurementOperator, y: torch.Tensor, settings: SamplerSettings,
                    ctx: SamplerContext) -> torch.Tensor:
    """The paper's sampler: proximal data consistency before every corrector and predictor step."""
    sde, ts = reverse_grid(prior.sde, settings.steps, settings.t_start, settings.eps, y.device)
    score = _counted_score(prior, ctx)
    pred = get_predictor(settings.predictor)(sde, score)
    corr = LangevinCorrector(sde, score, settings.snr, settings.corrector_steps)
    g = ctx.generator
    shape = (y.shape[0], 1, op.image_size, op.image_size)
    x = _initial_state(sde, op, y, settings, ctx, ts[0], shape)
    merge = _consistency_step(op, settings, y.device)
    lam = settings.lam
    sigma_y = settings.noise_scale * noise_std_of(op, y, settings, ctx)
    shared = settings.z_shared_noise
    pred.shared_noise = corr.shared_noise = shared

    def noisy_merge(x, vt):
        y_hat, b_az = _perturbed_measurement(op, y, sde, vt, g, shared)
        return merge(x, y_hat, noise_aware_lam(lam, b_az, op.mask, sigma_y))

    for i, t in enumerate(ts):
        vt = _vec(t, x)
        if settings.snr > 0:
            x = noisy_merge(x, vt)
            x, _ = corr.update(x, vt, g)
        x = noisy_merge(x, vt)
        x, _ = pred.update(x, vt, g)
        _report(ctx, i + 1, len(ts), "proximal sampler")
    t_end = _vec(ts[-1], x)
    x0 = tweedie(prior, x, t_end, ctx=ctx)
    if settings.final_lam is not None:
        final = settings.final_lam
    else:  # the paper's hard merge for noise-free data; with noise, the noise-aware weight at t_end
        final = noise_aware_lam(1.0, _perturbed_measurement(op, y, sde, t_end, g, shared)[1], op.mask, sigma_y)
    return merge(x0, y, final)


def song2021_sample(prior, op: MeasurementOperator, y: torch.Tensor, settings: SamplerSettings,
                    ctx: SamplerContext) -> torch.Tensor:
    """Conditional PC sampler with ``s_θ(x, t) + ∇ₓ log p(ŷ_t | x)``.

    The likelihood is Gaussian, ``log p(ŷ_t | x) = −‖A x − ŷ_t‖² / (2 ((r β(t))² + G²) L)`` with
    ``L = ‖A‖²`` (power iteration), ``G`` the step's diffusion and ``r`` = ``settings.noise_rate``.
    λ is not used by this sampler.
    """
    sde, ts = reverse_grid(prior.sde, settings.steps, settings.t_start, settings.eps, y.device)
    g = ctx.generator
    L = operator_norm(op, device=y.device) ** 2
    y_hat_holder: dict[str, torch.Tensor] = {}
    base_score = _counted_score(prior, ctx)

    def cond_score(x, t):
        _, b = _alpha_beta(sde, t, x)
        # the step's own variance G² keeps the likelihood step G²·(…) below 1 in units of ‖A‖², so it
        # stays stable at any number of steps and for VP priors near t = 0
        g2 = sde.discretize(x, t)[1].reshape(-1, *([1] * (x.ndim - 1))).to(x) ** 2
        resid = op.A(x) - y_hat_holder["y"]
        like = -op.A_adjoint(resid) / (((settings.noise_rate * b) ** 2 + g2) * L)
        return base_score(x, t) + like

    pred = get_predictor(settings.predictor)(sde, cond_score)
    corr = LangevinCorrector(sde, cond_score, settings.snr, settings.corrector_steps)
    shape = (y.shape[0], 1, op.image_size, op.image_size)
    x = _initial_state(sde, op, y, settings, ctx, ts[0], shape)
    for i, t in enumerate(ts):
        vt = _vec(t, x)
        y_hat_holder["y"] = noisy_measurement(op, y, sde, vt, g)
        if settings.snr > 0:
            x, _ = corr.update(x, vt, g)
        x, _ = pred.update(x, vt, g)
        _report(ctx, i + 1, len(ts), "song2021 sampler")
    return tweedie(prior, x, _vec(ts[-1], x), ctx=ctx)


def fast_sample(prior, op: MeasurementOperator, y: torch.Tensor, settings: SamplerSettings,
                ctx: SamplerContext) -> torch.Tensor:
    """DDS-style sampler: Tweedie estimate → CGLS data consistency → DDIM step, ``steps`` NFE.

    Its ``steps + 1`` times are equispaced from ``t_start·T`` to ``eps``."""
    sde = prior.sde
    g = ctx.generator
    score = _counted_score(prior, ctx)
    shape = (y.shape[0], 1, op.image_size, op.image_size)
    ts = torch.linspace(sde.T * settings.t_start, settings.eps, settings.steps + 1, device=y.device)
    x = _initial_state(sde, op, y, settings, ctx, ts[0], shape)
    x0 = x
    for i in range(settings.steps):
        t, s = _vec(ts[i], x), _vec(ts[i + 1], x)
        a_t, b_t = _alpha_beta(sde, t, x)
        a_s, b_s = _alpha_beta(sde, s, x)
        x0_hat = tweedie(prior, x, t, score=score(x, t))
        x0 = data_consistency(op, x0_hat, y, settings.lam, settings.cg_iters)
        eps_hat = (x - a_t * x0_hat) / b_t
        if i == settings.steps - 1:
            break
        ratio = ((a_t * b_s) / (a_s * b_t)).clamp(max=1.0)
        c = settings.eta * b_s * torch.sqrt((1 - ratio**2).clamp_min(0))
        x = a_s * x0 + torch.sqrt((b_s**2 - c**2).clamp_min(0)) * eps_hat + c * _randn(x, g)
        _report(ctx, i + 1, settings.steps, "fast sampler")
    _report(ctx, settings.steps, settings.steps, "fast sampler")
    return x0


#: conditional samplers by name: ``fn(prior, op, y, settings, ctx) -> (B,1,H,W)``
SAMPLERS: dict[str, Callable] = {
    "proximal": proximal_sample,
    "song2021": song2021_sample,
    "fast": fast_sample,
}

#: network evaluations per step of each sampler (plus one final Tweedie step where used)
NFE_PER_STEP = {"proximal": 2, "song2021": 2, "fast": 1}
