"""Forward SDEs of score-based generative models (Song et al., ICLR 2021) and their reversal.

Both SDEs have Gaussian transition kernels ``p_0t(x_t | x_0) = N(alpha(t) x_0, beta(t)^2 I)`` on
``t in [0, T]`` with ``T = 1``:

* :class:`VESDE` (variance exploding, "SMLD"): ``dx = sqrt(d[sigma^2(t)]/dt) dw`` with
  ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``; ``alpha(t) = 1``, ``beta(t) = sigma(t)``.
* :class:`VPSDE` (variance preserving, "DDPM"): ``dx = -1/2 b(t) x dt + sqrt(b(t)) dw`` with the
  linear noise rate ``b(t) = beta_min + t (beta_max - beta_min)``;
  ``alpha(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min)``, ``beta(t) = sqrt(1 - alpha(t)^2)``.

``discretize(x, t)`` gives the ``N``-step Markov chain ``x_{i+1} = x_i + f_i + G_i z`` of the same
models (SMLD noise levels for VE, DDPM betas for VP), indexed by ``i = round(t (N - 1) / T)``.
``reverse(score_fn)`` returns the reverse-time SDE used by samplers. Times ``t`` are tensors of
shape ``(B,)``; images ``x`` are ``(B, C, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import ScoreReconError

#: ``score_fn(x, t) -> grad_x log p_t(x)``, x (B,C,H,W), t (B,)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``x`` ``(B, ...)``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


#: bounds of an SDE's discretisation (and so of any sampler's step count)
MIN_STEPS = 2
MAX_STEPS = 100_000


class SDE:
    """Base class: a forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``[0, T]`` with ``N`` discrete steps."""

    T: float = 1.0

    def __init__(self, N: int) -> None:
        if isinstance(N, float) and not N.is_integer():
            raise ScoreReconError(f"the number of SDE steps must be a whole number, got {N}")
        if not MIN_STEPS <= int(N) <= MAX_STEPS:
            raise ScoreReconError(
                f"the number of SDE / sampler steps must be between {MIN_STEPS} and {MAX_STEPS}, got {N}; use at "
                "least 10 (the paper uses 1000)"
            )
        self.N = int(N)

    # -- continuous time ---------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of x) and diffusion ``g(t)`` (shape (B,))."""
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Mean coefficient of ``p_0t(x_t | x_0)``, shape of ``t``."""
        raise NotImplementedError

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation of ``p_0t(x_t | x_0)``, shape of ``t``."""
        raise NotImplementedError

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``alpha(t) x`` (shape of x) and std ``beta(t)`` (shape (B,)) of ``p_0t(x_t | x)``."""
        return _bcast(self.alpha(t), x) * x, self.beta(t)

    def prior_sampling(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """Draw ``x_T`` from the prior ``p_T`` (float32, ``shape``)."""
        raise NotImplementedError

    # -- discrete time -----------------------------------------------------------------
    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index ``i`` of the discrete step for time ``t``: ``round(t (N-1) / T)`` clamped to ``[0, N-1]``.

        (score_sde truncates instead, which float round-off can push one step down at grid times.)
        """
        return torch.round(t * (self.N - 1) / self.T).long().clamp(0, self.N - 1)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the discrete chain: ``x_{i+1} = x_i + f + G z``; returns ``f`` (shape of x), ``G`` (B,)."""
        raise NotImplementedError

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def to_dict(self) -> dict:
        """JSON-serialisable description; :func:`sde_from_dict` rebuilds the SDE."""
        raise NotImplementedError


class ReverseSDE:
    """Reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` (``1/2 g^2`` and no noise for the ODE)."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward_sde = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N = forward.N
        self.T = forward.T

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift (shape of x) and diffusion (B,) at time ``t``."""
        drift, diffusion = self.forward_sde.sde(x, t)
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - _bcast(diffusion, x) ** 2 * score * weight
        diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse discrete step: ``x_{i-1} = x_i - rev_f + rev_G z``; returns ``rev_f`` and ``rev_G`` (B,)."""
        f, G = self.forward_sde.discretize(x, t)
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - _bcast(G, x) ** 2 * score * weight
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


class VESDE(SDE):
    """Variance-exploding SDE with ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.

    ``sigma_min``/``sigma_max`` are in the units of the normalised images (``[0, 1]`` data).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N)
        if not (0 < float(sigma_min) < float(sigma_max) <= 1e6):
            raise ScoreReconError(
                f"VE-SDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        #: SMLD noise levels sigma_0 < ... < sigma_{N-1}, geometric
        self.discrete_sigmas = torch.exp(
            torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=torch.float64)
        ).float()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level ``sigma_min (sigma_max / sigma_min)^t``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t)

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drift = torch.zeros_like(x)
        diffusion = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return drift, diffusion

    def prior_sampling(self, shape, generator=None, device=None) -> torch.Tensor:
        from .rng import randn

        return randn(shape, generator, device) * self.sigma_max

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SMLD chain: ``f = 0``, ``G_i = sqrt(sigma_i^2 - sigma_{i-1}^2)`` with ``sigma_{-1} = 0``."""
        i = self.timestep_index(t)
        sigmas = self.discrete_sigmas.to(t.device)
        sigma = sigmas[i]
        adjacent = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma**2 - adjacent**2)

    def to_dict(self) -> dict:
        return {"type": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"


class VPSDE(SDE):
    """Variance-preserving SDE with the linear rate ``b(t) = beta_min + t (beta_max - beta_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        if not (0 < float(beta_min) < float(beta_max) <= 1e6):
            raise ScoreReconError(
                f"VP-SDE needs 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        #: DDPM per-step betas b_i = b(t_i) / N and alphas 1 - b_i
        self.discrete_betas = torch.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N)
        if self.beta_1 / self.N >= 0.5:
            # few steps: b(t)/N would reach or pass 1 (NaN in sqrt(1 - b)); use the exact per-step betas
            # 1 - (alpha(t_i) / alpha(t_{i-1}))^2 of the continuous process on the same grid instead
            t = torch.linspace(0.0, 1.0, self.N + 1, dtype=torch.float64)
            log_a = -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
            self.discrete_betas = (1.0 - torch.exp(2.0 * (log_a[1:] - log_a[:-1]))).clamp(max=0.999).float()
        self.alphas = 1.0 - self.discrete_betas

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """Noise rate ``b(t) = beta_min + t (beta_max - beta_min)``."""
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min``."""
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_mean_coeff(t))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_mean_coeff(t)))

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.rate(t)
        return -0.5 * _bcast(b, x) * x, torch.sqrt(b)

    def prior_sampling(self, shape, generator=None, device=None) -> torch.Tensor:
        from .rng import randn

        return randn(shape, generator, device)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM chain: ``f = (sqrt(1 - b_i) - 1) x``, ``G = sqrt(b_i)``."""
        i = self.timestep_index(t)
        b = self.discrete_betas.to(t.device)[i]
        a = self.alphas.to(t.device)[i]
        return (_bcast(torch.sqrt(a), x) - 1.0) * x, torch.sqrt(b)

    def to_dict(self) -> dict:
        return {"type": "vp", "beta_min": self.beta_0, "beta_max": self.beta_1, "N": self.N}

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"


def sde_from_dict(d: dict) -> SDE:
    """Rebuild a :class:`VESDE` or :class:`VPSDE` from :meth:`SDE.to_dict` output."""
    if not isinstance(d, dict) or "type" not in d:
        raise ScoreReconError(f"SDE description {d!r} has no 'type'; expected {{'type': 've'|'vp', ...}}")
    kind = str(d["type"]).lower()
    try:
        if kind == "ve":
            return VESDE(float(d["sigma_min"]), float(d["sigma_max"]), int(d["N"]))
        if kind == "vp":
            return VPSDE(float(d["beta_min"]), float(d["beta_max"]), int(d["N"]))
    except KeyError as exc:
        raise ScoreReconError(f"SDE description {d!r} lacks the key {exc}; re-save the checkpoint") from None
    except (TypeError, ValueError, OverflowError):
        raise ScoreReconError(f"SDE description {str(d)[:160]} holds a value of the wrong type; expected numbers for "
                              "sigma_min/sigma_max (or beta_min/beta_max) and an integer N") from None
    raise ScoreReconError(f"unknown SDE type '{d['type']}'; expected 've' or 'vp'")
