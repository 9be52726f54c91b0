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

Modules: :mod:`.steps` (predictors, correctors and their registries), :mod:`.common` (sampler context, time
grid, Tweedie), :mod:`.unconditional` (PC and ODE sampling from the prior), :mod:`.consistency` (data-consistency
steps and the classical start), :mod:`.conditional` (the three conditional samplers). Everything public is
importable from here.
"""

from __future__ import annotations

from ..settings import INITS, SamplerSettings
from .common import SamplerContext, reverse_grid, tweedie
from .conditional import NFE_PER_STEP, SAMPLERS, fast_sample, proximal_sample, song2021_sample
from .consistency import (
    cgls,
    classical_init,
    data_consistency,
    noise_std_of,
    noisy_measurement,
    total_variation,
    tv_proximal,
    tv_proximal_objective,
    z_tv_proximal,
)
from .steps import (
    AncestralSamplingPredictor,
    Corrector,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoneCorrector,
    NonePredictor,
    Predictor,
    ReverseDiffusionPredictor,
    ScoreFn,
    get_corrector,
    get_predictor,
    register_corrector,
    register_predictor,
)
from .unconditional import ode_sample, pc_sample

__all__ = [
    "INITS", "NFE_PER_STEP", "SAMPLERS", "AncestralSamplingPredictor", "Corrector", "EulerMaruyamaPredictor",
    "LangevinCorrector", "NoneCorrector", "NonePredictor", "Predictor", "ReverseDiffusionPredictor",
    "SamplerContext", "SamplerSettings", "ScoreFn", "cgls", "classical_init", "data_consistency", "fast_sample",
    "get_corrector", "get_predictor", "noise_std_of", "noisy_measurement", "ode_sample", "pc_sample",
    "proximal_sample", "register_corrector", "register_predictor", "reverse_grid", "song2021_sample",
    "total_variation", "tv_proximal", "tv_proximal_objective", "tweedie", "z_tv_proximal",
]
