"""What every sampler shares: its context (randomness, progress, cancel, counts), the time grid and Tweedie."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ..utils import ProgressFn, check_cancel
from .steps import ScoreFn


# --------------------------------------------------------------------------- shared machinery
@dataclass
class SamplerContext:
    """Everything a sampler loop needs besides the prior: randomness, progress and cancel."""

    generator: torch.Generator | None = None
    progress: ProgressFn | None = None
    cancel: threading.Event | None = None
    nfe: int = 0
    #: the classical reconstruction ``init="classical"`` starts from (computed once per call of
    #: :func:`ScoreReconLib.reconstruction.reconstruct` and shared by its samples); ``None`` → compute
    x_init: torch.Tensor | None = None
    #: the noise std of one measured entry of ``y`` as estimated from it (done once per call of
    #: :func:`ScoreReconLib.reconstruction.reconstruct`, shared by its samples); ``None`` → estimate
    #: here when needed. ``SamplerSettings.noise_std`` (a given value) takes precedence.
    measured_noise_std: float | None = None


def _counted_score(prior, ctx: SamplerContext) -> ScoreFn:
    def score(x, t):
        ctx.nfe += 1
        with torch.no_grad():
            return prior.score(x, t, generator=ctx.generator)

    return score


def _timesteps(sde, steps: int, eps: float, device) -> torch.Tensor:
    return torch.linspace(sde.T, eps, steps, device=device)


def _report(ctx: SamplerContext, done: int, total: int, what: str) -> None:
    check_cancel(ctx.cancel)
    if ctx.progress is not None:
        ctx.progress(done, total, what)


def _alpha_beta(sde, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1, *([1] * (x.ndim - 1)))
    tt = t if t.ndim else t.reshape(1)
    return sde.alpha(tt).reshape(shape).to(x), sde.beta(tt).reshape(shape).to(x)


def tweedie(prior, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor | None = None,
            ctx: SamplerContext | None = None) -> torch.Tensor:
    """Posterior-mean estimate ``E[x₀ | x_t] = (x_t + β(t)² s(x_t, t)) / α(t)``."""
    if score is None:
        score = prior.score(x, t) if ctx is None else _counted_score(prior, ctx)(x, t)
    a, b = _alpha_beta(prior.sde, t, x)
    return (x + b**2 * score) / a


def _sde_with_steps(sde, steps: int | None):
    """A copy of ``sde`` discretised with ``steps`` steps (same continuous process)."""
    if steps is None or steps == sde.N:
        return sde
    from ..sde import sde_from_dict

    d = sde.to_dict()
    d["N"] = int(steps)
    return sde_from_dict(d)


def reverse_grid(sde, steps: int, t_start: float, eps: float, device) -> tuple:
    """``(sde_N, ts)``: the discretisation and the ``steps`` times (descending) a PC sampler visits.

    ``t_start = 1``: ``sde`` with N = ``steps`` and ``ts = linspace(T, eps, steps)`` (unchanged). Else
    the discretisation with ``N = round((steps − 1) / t_start) + 1`` (so adjacent grid times stay the
    predictor's adjacent noise levels) and its last ``steps`` times, the first of which is the grid
    time nearest ``t_start·T``.
    """
    if t_start >= 1.0:
        sde_n = _sde_with_steps(sde, steps)
        return sde_n, _timesteps(sde_n, sde_n.N, eps, device)
    n_full = max(2, int(round((steps - 1) / float(t_start))) + 1)
    sde_n = _sde_with_steps(sde, n_full)
    return sde_n, _timesteps(sde_n, n_full, eps, device)[n_full - steps:]
