"""Predictors and correctors: small registered pieces a sampler composes (as in Song et al.'s score_sde)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..rng import randn

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PREDICTORS: dict[str, type[Predictor]] = {}
_CORRECTORS: dict[str, type[Corrector]] = {}


def _registrar(table: dict, name: str):
    """Class decorator adding a class to ``table`` under ``name`` (and naming it)."""

    def deco(cls):
        table[name] = cls
        cls.name = name
        return cls

    return deco


def register_predictor(name: str):
    """Class decorator adding a predictor under ``name``."""
    return _registrar(_PREDICTORS, name)


def register_corrector(name: str):
    """Class decorator adding a corrector under ``name``."""
    return _registrar(_CORRECTORS, name)


def get_predictor(name: str) -> type[Predictor]:
    if name not in _PREDICTORS:
        raise KeyError(f"unknown predictor '{name}'; choose one of {sorted(_PREDICTORS)}")
    return _PREDICTORS[name]


def get_corrector(name: str) -> type[Corrector]:
    if name not in _CORRECTORS:
        raise KeyError(f"unknown corrector '{name}'; choose one of {sorted(_CORRECTORS)}")
    return _CORRECTORS[name]


def _randn(like: torch.Tensor, generator: torch.Generator | None, shared: bool = False) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (per-slice streams, see :mod:`ScoreReconLib.rng`);
    ``shared``: one draw for the whole batch (expanded)."""
    return randn(like.shape, generator, like.device, like.dtype, shared=shared)


def _vec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------- predictors
class Predictor:
    """One step of the reverse SDE from time ``t`` to the next grid time."""

    name = ""
    #: draw one noise image for the whole batch (slices of a volume share it) instead of one per item
    shared_noise = False

    def __init__(self, sde, score_fn: ScoreFn):
        self.sde = sde
        self.score_fn = score_fn

    def update(self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None):
        """Return ``(x, x_mean)`` after one step (``x_mean`` without the fresh noise)."""
        raise NotImplementedError


@register_predictor("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """Ancestral-style step of the discretised reverse SDE: ``x − (f − G² s) + G z``."""

    def update(self, x, t, generator):
        f, G = self.sde.discretize(x, t)
        G = G.reshape(-1, *([1] * (x.ndim - 1)))
        score = self.score_fn(x, t)
        x_mean = x - (f - G**2 * score)
        return x_mean + G * _randn(x, generator, self.shared_noise), x_mean


@register_predictor("ancestral")
class AncestralSamplingPredictor(Predictor):
    """Ancestral step: the exact Gaussian posterior of the discrete chain between adjacent noise levels.

    VE: ``x_mean = x + (σ_i² − σ_{i−1}²) s``, noise std ``sqrt(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²)``;
    VP (DDPM): ``x_mean = (x + β_i s) / sqrt(1 − β_i)``, noise std ``sqrt(β_i)``. At many steps it matches
    the reverse-diffusion step; unlike it, it stays stable on a coarse grid (few steps).
    """

    def update(self, x, t, generator):
        sde = self.sde
        i = sde.timestep_index(t)
        score = self.score_fn(x, t)
        shape = (-1, *([1] * (x.ndim - 1)))
        if hasattr(sde, "discrete_sigmas"):
            sig = sde.discrete_sigmas.to(x.device)
            sigma = sig[i].reshape(shape).to(x)
            prev = torch.where(i == 0, torch.zeros_like(sig[i]), sig[(i - 1).clamp(min=0)]).reshape(shape).to(x)
            x_mean = x + (sigma**2 - prev**2) * score
            std = torch.sqrt((prev**2 * (sigma**2 - prev**2) / sigma**2).clamp_min(0))
        else:
            beta = sde.discrete_betas.to(x.device)[i].reshape(shape).to(x)
            x_mean = (x + beta * score) / torch.sqrt(1.0 - beta)
            std = torch.sqrt(beta)
        return x_mean + std * _randn(x, generator, self.shared_noise), x_mean


@register_predictor("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """Euler–Maruyama step of the reverse SDE with ``dt = −1/N``."""

    def update(self, x, t, generator):
        dt = -1.0 / self.sde.N
        drift, diffusion = self.sde.sde(x, t)
        diffusion = diffusion.reshape(-1, *([1] * (x.ndim - 1)))
        drift = drift - diffusion**2 * self.score_fn(x, t)
        x_mean = x + drift * dt
        return x_mean + diffusion * math.sqrt(-dt) * _randn(x, generator, self.shared_noise), x_mean


@register_predictor("none")
class NonePredictor(Predictor):
    """No predictor step (corrector-only sampling)."""

    def update(self, x, t, generator):
        return x, x


# ---------------------------------------------------------------------------------- correctors
class Corrector:
    """Langevin-type MCMC steps at a fixed noise level."""

    name = ""
    #: as :attr:`Predictor.shared_noise`
    shared_noise = False

    def __init__(self, sde, score_fn: ScoreFn, snr: float, n_steps: int = 1):
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = n_steps

    def update(self, x, t, generator):
        raise NotImplementedError


@register_corrector("langevin")
class LangevinCorrector(Corrector):
    """Annealed Langevin dynamics with the step size set by the signal-to-noise ratio ``snr``."""

    def update(self, x, t, generator):
        alpha = self._alpha(t, x)
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            noise = _randn(x, generator, self.shared_noise)
            grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=-1).mean()
            noise_norm = noise.reshape(noise.shape[0], -1).norm(dim=-1).mean()
            step = (self.snr * noise_norm / grad_norm.clamp_min(1e-12)) ** 2 * 2 * alpha
            step = step.reshape(-1, *([1] * (x.ndim - 1)))
            x_mean = x + step * grad
            x = x_mean + torch.sqrt(step * 2) * noise
        return x, x_mean

    def _alpha(self, t, x):
        # VP-SDE: α_i = 1 − β_i of the discrete chain; VE-SDE: 1.
        alphas = getattr(self.sde, "alphas", None)
        if alphas is not None:
            return alphas.to(t.device)[self.sde.timestep_index(t)].to(x.dtype)
        return torch.ones(x.shape[0], device=x.device, dtype=x.dtype)


@register_corrector("none")
class NoneCorrector(Corrector):
    """No corrector step."""

    def update(self, x, t, generator):
        return x, x
