"""Samplers: predictors, correctors, unconditional PC / ODE sampling and the conditional samplers.

Predictors and correctors are small registered pieces (as in Song et al.'s score_sde code) that a
sampler composes. The conditional samplers solve ``y = A x + noise`` for an operator from
:mod:`ScoreReconLib.operators` under a score prior (:class:`ScoreReconLib.networks.Prior`):

- ``proximal`` — Song, Shen, Xing & Ermon (ICLR 2022): before the corrector and before the
  predictor, ``x ← T⁻¹[λ Λ ŷ_t + (1−λ) Λ T x + (I−Λ) T x]`` with ``ŷ_t = α(t) y + β(t) A z``;
  a final Tweedie denoise and a hard merge (λ = 1). 2 network evaluations per step. The predictor
  is the ancestral step: at the paper's 1000 steps it has the same mean update as the reverse-diffusion
  step and a noise std 0.8 % smaller (VE, σ_max/σ_min = 3410); unlike it, it stays stable with few
  steps (``predictor="reverse_diffusion"`` restores the paper's step). With ``tv_weight > 0`` every
  merge is followed by a few warm-started PDHG iterations adding a TV penalty (:func:`tv_proximal`,
  as DiffusionMBIR / DDS regularise their data-consistency steps). With ``z_tv > 0`` every merge is
  also followed by a TV step along the batch axis (:func:`z_tv_proximal`), coupling neighbouring
  slices of a volume reconstructed together (DiffusionMBIR's z-TV, as a proximal split).
- ``song2021`` — conditional score ``s_θ(x, t) + ∇ₓ log p(ŷ_t | x)`` with a Gaussian likelihood whose
  variance is ``(r·β(t))²`` (``r`` the noise-rate hyperparameter) in units of ``‖A‖²``.
- ``fast`` — a DDS-style sampler (Chung et al. 2024): at each of K steps, the Tweedie estimate
  ``x̂₀ = (x + β² s_θ)/α`` is made consistent with ``y`` by a few conjugate-gradient (CGLS) steps
  on ``‖A x₀ − y‖`` started at ``x̂₀``, then a DDIM step moves to the next noise level. 1 network
  evaluation per step.

Warm start (all three samplers, ``init="classical"``): instead of pure noise at t = T, the reverse
process starts at ``t_start`` ∈ (0, 1] from a classical reconstruction ``x_c`` (TV for CT, CS-TV for
MRI; :func:`classical_init`) noised to that time, ``x = α(t_start) x_c + β(t_start) z``, and runs
``steps`` steps from there down to ``eps`` (:func:`reverse_grid`).

All tensors are ``(B, 1, H, W)``; measurements are in the operators' full layout.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .baselines import gradient, gradient_adjoint, operator_norm
from .errors import ScoreReconError
from .noise import estimate_noise_std, noise_aware_lam
from .operators.base import MeasurementOperator
from .rng import randn
from .settings import INITS, SamplerSettings  # noqa: F401  (INITS: part of this module's API)
from .utils import ProgressFn, check_cancel

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PREDICTORS: dict[str, type[Predictor]] = {}
_CORRECTORS: dict[str, type[Corrector]] = {}


def register_predictor(name: str):
    """Class decorator adding a predictor under ``name``."""

    def deco(cls):
        _PREDICTORS[name] = cls
        cls.name = name
        return cls

    return deco


def register_corrector(name: str):
    """Class decorator adding a corrector under ``name``."""

    def deco(cls):
        _CORRECTORS[name] = cls
        cls.name = name
        return cls

    return deco


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


def _sde_with_steps(sde, steps: int | None):
    """A copy of ``sde`` discretised with ``steps`` steps (same continuous process)."""
    if steps is None or steps == sde.N:
        return sde
    from .sde import sde_from_dict

    d = sde.to_dict()
    d["N"] = int(steps)
    return sde_from_dict(d)


# -------------------------------------------------------------------------- data consistency
def noisy_measurement(op: MeasurementOperator, y: torch.Tensor, sde, t: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """``ŷ_t = α(t) y + β(t) A z`` with ``z ~ N(0, I)`` drawn in image space."""
    return _perturbed_measurement(op, y, sde, t, generator)[0]


def _perturbed_measurement(op: MeasurementOperator, y: torch.Tensor, sde, t: torch.Tensor,
                           generator: torch.Generator | None, shared: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ŷ_t, β(t) A z)``: the noisy measurement and the perturbation it carries (``shared``: one z for
    the whole batch)."""
    shape = (y.shape[0], 1, op.image_size, op.image_size)
    z = randn(shape, generator, y.device, torch.float32, shared=shared).contiguous()
    a, b = _alpha_beta(sde, t, z)
    az = op.A(z)
    bshape = (-1, *([1] * (az.ndim - 1)))
    b_az = b.reshape(bshape) * az
    return a.reshape(bshape) * y + b_az, b_az


def cgls(op: MeasurementOperator, x0: torch.Tensor, y: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` CGLS steps on ``‖A x − y‖²`` started at ``x0`` (``x0`` + the operator's least-squares step)."""
    return x0 + op.least_squares(y - op.A(x0), iters).to(x0.dtype)


def data_consistency(op: MeasurementOperator, x: torch.Tensor, y: torch.Tensor, lam: float,
                     cg_iters: int) -> torch.Tensor:
    """``x + λ (x_cg − x)`` where ``x_cg`` is ``cg_iters`` CGLS steps on ``‖A x − y‖`` from ``x``."""
    if lam == 0:
        return x
    x_cg = cgls(op, x, y, cg_iters)
    return x + lam * (x_cg - x)


def tv_proximal(op: MeasurementOperator, x0: torch.Tensor, y_hat: torch.Tensor, lam: float, weight: float,
                iters: int = 10, norm: float | None = None) -> torch.Tensor:
    """TV-regularised data-consistency step: the proximal merge, then ``iters`` PDHG iterations with TV.

    ``x0`` (B, 1, N, N) is the current iterate, ``y_hat`` a full-layout measurement of ``op`` (the
    sampler's ``ŷ_t``), ``lam`` ∈ [0, 1] the merge weight λ, ``weight`` = w ≥ 0 the TV weight in
    the units of ``scorerecon reconstruct --method tv --weight`` (relative to ``‖A‖²``, on [0, 1]
    images); ``norm`` = ‖A‖ (default :func:`~ScoreReconLib.baselines.operator_norm`, cached per
    operator). Returns (B, 1, N, N) in ``x0``'s dtype.

    With ``p = op.proximal(x0, y_hat, λ)`` (the paper's step) and ``γ = λ / (1 − λ)`` (∞ at λ = 1),
    it approximately minimises, by (preconditioned) Chambolle–Pock started at ``p`` with zero duals::

        E(x) = ½‖A (x − p)‖² + (1 / (2γ))‖x − p‖² + w·‖A‖²·TV(x)        (isotropic TV)

    (:func:`tv_proximal_objective`). Its w = 0 minimiser is ``p``, and w = 0 (or λ = 0) returns
    ``p`` exactly. Where ``p`` is the exact minimiser of ``½‖A x − ŷ‖² + (1 / (2γ))‖x − x₀‖²``
    (MRI's closed-form merge) ``E`` equals, up to a constant, the DiffusionMBIR-style objective
    ``½‖A x − ŷ‖² + (1 / (2γ))‖x − x₀‖² + w·‖A‖²·TV(x)``; for CT (a CGLS merge, uniform λ on the
    measured rows) it is the quadratic model of that objective centred at ``p``. At λ = 1 and
    convergence it is ``--method tv``'s objective on the merged data. Costs ``iters`` applications
    each of A and Aᴴ (no positivity constraint: the sampler's iterates carry noise).
    """
    if not math.isfinite(float(weight)) or weight < 0:  # a direct call; the sampler's settings are checked already
        raise ScoreReconError(f"TV weight {weight} must be a finite number >= 0; use e.g. 1e-4")
    if isinstance(iters, bool) or int(iters) != iters or iters < 1:
        raise ScoreReconError(f"TV iterations must be a whole number of at least 1, got {iters}")
    p = op.proximal(x0, y_hat, lam)
    if weight == 0 or lam == 0:
        return p
    s = float(norm) if norm is not None else operator_norm(op, device=x0.device)
    # everything below is E / ‖A‖²: data ½‖Ã d‖² with Ã = A/‖A‖, anchor (μ/2)‖d‖², w·TV(p + d), d = x − p
    mu = (1.0 - float(lam)) / float(lam) / s**2
    # Block-preconditioned PDHG (Pock & Chambolle 2011) on K = [Ã; ∇]: τ(σ_data‖Ã‖² + σ_tv‖∇‖²) = 0.99 < 1
    # with ‖Ã‖ ≤ 1, ‖∇‖² ≤ 8. Small w moves the unmeasured part of x only through TV, hence the large
    # primal step τ = 0.2/√w; the cap 2·iters keeps short runs from overshooting (plain CP with ρ = 1/√w,
    # as in baselines._pdhg, raised E several-fold in 10 iterations on MRI). Measured on 64² phantoms
    # plus noise 0.02–3 (sparse CT 16 views, limited angle 90°, MRI 4× / 8×; w ∈ [1e-5, 1e-1],
    # λ ∈ {0.5, 0.841, 1}; 1–20 iterations): E never rose; 10 iterations gave 20–100 % of the decrease
    # 3000 give on mildly noisy iterates, much less where the noise dwarfs w (there TV barely acts).
    tau = min(max(min(0.2 / math.sqrt(weight), 2.0 * int(iters)), 1.0), 100.0)
    sig_data, sig_tv = 0.5 / tau, 0.49 / (8.0 * tau)
    w = float(weight)
    pf = p.float()
    d = torch.zeros_like(pf)
    d_bar = d
    u: torch.Tensor | None = None
    q = torch.zeros_like(gradient(pf))
    for _ in range(int(iters)):
        ad = op.A(d_bar) * (sig_data / s)
        u = ad / (1.0 + sig_data) if u is None else (u + ad) / (1.0 + sig_data)
        q = q + sig_tv * gradient(pf + d_bar)
        q = q / (q.pow(2).sum(dim=1, keepdim=True).sqrt() / w).clamp_min(1.0)
        d_new = (d - tau * (op.A_adjoint(u).float() / s + gradient_adjoint(q))) / (1.0 + tau * mu)
        d_bar = 2.0 * d_new - d
        d = d_new
    return (pf + d).to(p.dtype)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per batch item: Σ |∇x| over forward differences (Neumann), (B, 1, N, N) → (B,)."""
    return gradient(x.float()).pow(2).sum(dim=1).sqrt().flatten(1).sum(1)


def tv_proximal_objective(op: MeasurementOperator, x: torch.Tensor, center: torch.Tensor, lam: float,
                          weight: float, norm: float | None = None) -> torch.Tensor:
    """``E(x)`` of :func:`tv_proximal` per batch item (B,): ``center`` = ``p``, the merge's output; λ > 0."""
    s = float(norm) if norm is not None else operator_norm(op, device=x.device)
    d = (x - center).float()
    ad = op.A(d)
    data = 0.5 * (ad.abs() ** 2).flatten(1).sum(1)
    anchor = 0.0 if lam >= 1 else 0.5 * (1.0 - lam) / lam * d.pow(2).flatten(1).sum(1)
    return data + anchor + weight * s**2 * total_variation(x)


def classical_init(op: MeasurementOperator, y: torch.Tensor, weight: float | None = None,
                   cancel: threading.Event | None = None, noise_std: float | None = None) -> torch.Tensor:
    """The reconstruction ``init="classical"`` starts from: TV (CT) or CS-TV (MRI) → (B, 1, N, N) float32.

    ``weight`` as ``--method tv/cs --weight``; ``None`` → chosen from ``y`` by
    :func:`~ScoreReconLib.parameter_choice.choose_weight` (the task's noise-free weight, raised by the
    discrepancy principle with ``noise_std`` — estimated when None); 300 PDHG iterations.
    """
    from .baselines import classical_reconstruct
    from .parameter_choice import choose_weight

    method = "cs" if op.task == "mri" else "tv"
    if weight is None:
        choice = choose_weight(y, op, method, noise_std=noise_std, cancel=cancel)
        if choice.image is not None:
            return choice.image.float()
        weight = choice.weight
    return classical_reconstruct(method, y, op, cancel=cancel, weight=weight).float()


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


def noise_std_of(op: MeasurementOperator, y: torch.Tensor, settings: SamplerSettings,
                 ctx: SamplerContext) -> float:
    """σ_y of one measured entry: ``settings.noise_std`` if given, else estimated from ``y`` once per ``ctx``."""
    if settings.noise_std is not None:
        return float(settings.noise_std)
    if ctx.measured_noise_std is None:
        ctx.measured_noise_std = estimate_noise_std(op, y)
    return ctx.measured_noise_std


def z_tv_proximal(x: torch.Tensor, weight: float, iters: int = 20) -> torch.Tensor:
    """TV along the batch axis (the slices of a volume, in order): ``argmin_u ½‖u − x‖² + w Σ_s |u_{s+1} − u_s|``.

    ``x`` (S, 1, H, W), slice ``s`` next to ``s + 1``; anisotropic (per pixel) 1-D TV, solved by
    ``iters`` projected-gradient iterations on the dual (Chambolle 2004; step ¼ = 1/‖D‖²) from zero.
    ``weight`` = w ≥ 0 in image units ([0, 1] images). One slice, or w = 0, returns ``x``.
    """
    if not math.isfinite(float(weight)) or weight < 0:
        raise ScoreReconError(f"z-TV weight {weight} must be a finite number >= 0; use e.g. 0.01")
    if weight == 0 or x.shape[0] < 2:
        return x
    xf = x.float()
    p = torch.zeros_like(xf[1:])
    w = float(weight)

    def dt(q: torch.Tensor) -> torch.Tensor:  # adjoint of the forward difference along slices
        return torch.cat([-q[:1], q[:-1] - q[1:], q[-1:]])

    for _ in range(int(iters)):
        u = xf - dt(p)
        p = (p + 0.25 * (u[1:] - u[:-1])).clamp(-w, w)
    return (xf - dt(p)).to(x.dtype)


def _consistency_step(op: MeasurementOperator, settings: SamplerSettings, device) -> Callable:
    """``step(x, ŷ, λ)``: ``op.proximal`` itself (``tv_weight == 0``) or :func:`tv_proximal`, followed by
    :func:`z_tv_proximal` across the batch's slices when ``z_tv > 0`` (DiffusionMBIR-style coupling)."""
    if settings.tv_weight == 0:
        merge = op.proximal
    else:
        norm = operator_norm(op, device=device)

        def merge(x, y_hat, lam):
            return tv_proximal(op, x, y_hat, lam, settings.tv_weight, settings.tv_iters, norm)

    if settings.z_tv == 0:
        return merge

    def coupled(x, y_hat, lam):
        return z_tv_proximal(merge(x, y_hat, lam), settings.z_tv, settings.z_tv_iters)

    return coupled


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
