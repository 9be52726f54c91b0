"""Unconditional sampling from the prior: predictor–corrector and probability-flow ODE samplers."""

from __future__ import annotations

import threading

import torch

from ..utils import ProgressFn
from .common import SamplerContext, _counted_score, _report, _sde_with_steps, _timesteps, tweedie
from .steps import _vec, get_corrector, get_predictor


# ------------------------------------------------------------------------ unconditional sampling
def pc_sample(prior, shape: tuple[int, ...], steps: int | None = None, snr: float = 0.16,
              predictor: str = "ancestral", corrector: str = "langevin",
              generator: torch.Generator | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, eps: float = 1e-5, denoise: bool = True) -> torch.Tensor:
    """Unconditional predictor–corrector samples of ``shape`` (B, 1, H, W) from ``prior``."""
    sde = _sde_with_steps(prior.sde, steps)
    ctx = SamplerContext(generator, progress, cancel)
    score = _counted_score(prior, ctx)
    pred = get_predictor(predictor)(sde, score)
    corr = get_corrector(corrector)(sde, score, snr)
    x = sde.prior_sampling(shape, generator=generator, device=prior.device)
    ts = _timesteps(sde, sde.N, eps, prior.device)
    for i, t in enumerate(ts):
        vt = _vec(t, x)
        x, x_mean = corr.update(x, vt, generator)
        x, x_mean = pred.update(x, vt, generator)
        _report(ctx, i + 1, len(ts), "sampling")
    return x_mean if denoise else x


def ode_sample(prior, shape: tuple[int, ...], steps: int = 100, generator: torch.Generator | None = None,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None,
               eps: float = 1e-3) -> torch.Tensor:
    """Probability-flow ODE samples (Heun's method on ``steps`` time points, then Tweedie)."""
    sde = prior.sde
    ctx = SamplerContext(generator, progress, cancel)
    score = _counted_score(prior, ctx)

    def velocity(x, t):
        drift, diffusion = sde.sde(x, t)
        diffusion = diffusion.reshape(-1, *([1] * (x.ndim - 1)))
        return drift - 0.5 * diffusion**2 * score(x, t)

    x = sde.prior_sampling(shape, generator=generator, device=prior.device)
    ts = torch.linspace(sde.T, eps, steps + 1, device=prior.device)
    for i in range(steps):
        t0, t1 = _vec(ts[i], x), _vec(ts[i + 1], x)
        dt = ts[i + 1] - ts[i]
        v0 = velocity(x, t0)
        x_pred = x + v0 * dt
        x = x + 0.5 * (v0 + velocity(x_pred, t1)) * dt
        _report(ctx, i + 1, steps, "ODE")
    return tweedie(prior, x, _vec(ts[-1], x), ctx=ctx)
