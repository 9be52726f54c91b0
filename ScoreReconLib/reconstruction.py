"""Posterior sampling for a measurement: :func:`reconstruct` (a slice batch) and
:func:`reconstruct_volume` (a whole volume, streamed in batches with bounded memory).

>>> from ScoreReconLib.operators import build_operator
>>> from ScoreReconLib.networks import load_prior
>>> op = build_operator("sparse-ct", 128, views=23)
>>> prior = load_prior("default-ct")
>>> result = reconstruct(op.A(x), op, prior, samples=4, seed=0)  # the model's recommended sampler settings
>>> result.mean.shape, result.std.shape   # (B, 1, 128, 128) each, normalised [0, 1] units
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import torch

from .errors import ScoreReconError
from .measurement import task_modality
from .operators import TASKS
from .operators.base import MeasurementOperator
from .rng import SliceGenerators
from .sampling import INITS, NFE_PER_STEP, SAMPLERS, SamplerContext, SamplerSettings, classical_init, noise_std_of
from .utils import ProgressFn, check_cancel, check_finite, resolve_device

#: defaults per sampler and modality, used where neither the call nor the prior's config says otherwise.
#: proximal: snr and λ of the official LIDC CT / BraTS MRI configs, but 25 steps (51 network evaluations)
#: instead of the official 1000: with the ancestral predictor it measured within 0.1 dB of 100 steps
#: (benchmarks/RESULTS.md, "nfe"); pass steps=1000 for the paper's exact setting. Every sampler starts
#: from noise at t = 1 (``init``/``t_start``) and the proximal step has no TV term (``tv_weight`` 0)
#: until a validation benchmark says otherwise.
_START = {"init": "noise", "t_start": 1.0}
_PLAIN_MERGE = {"tv_weight": 0.0, "tv_iters": 10}
DEFAULTS: dict[str, dict[str, dict]] = {
    "proximal": {"CT": {"steps": 25, "lam": 0.841, "snr": 0.246, **_PLAIN_MERGE, **_START},
                 "MR": {"steps": 25, "lam": 1.0, "snr": 0.517, **_PLAIN_MERGE, **_START}},
    "song2021": {"CT": {"steps": 1000, "lam": 1.0, "snr": 0.16, **_START},
                 "MR": {"steps": 1000, "lam": 1.0, "snr": 0.16, **_START}},
    "fast": {"CT": {"steps": 50, "lam": 1.0, "snr": 0.0, **_START},
             "MR": {"steps": 50, "lam": 1.0, "snr": 0.0, **_START}},
}

#: keys a prior's ``recommended`` / ``tuned.json`` may set (see :func:`tuned_values`)
TUNABLE = ("steps", "lam", "snr", "cg_iters", "eta", "noise_rate", "tv_weight", "tv_iters", "init", "t_start",
           "init_weight", "final_lam", "noise_std",
           "noise_scale")

DEFAULT_METHOD = "proximal"
#: most sampler steps a reconstruction accepts (the paper's 1000, with a wide margin)
MAX_SAMPLER_STEPS = 10_000


@dataclass
class ReconstructionResult:
    """Posterior mean ``(B,1,H,W)``, per-pixel std for ``samples > 1`` (else ``None``), all in the
    prior's normalised [0, 1] units; ``nfe`` network evaluations per sample; wall ``seconds``."""

    mean: torch.Tensor
    std: torch.Tensor | None
    nfe: int
    seconds: float
    method: str
    seed: int | None
    settings: dict = field(default_factory=dict)
    samples: torch.Tensor | None = None


def check_compatible(operator: MeasurementOperator, prior) -> None:
    """Refuse a prior trained for another image size or modality, before any work starts.

    A patch prior (``prior.any_size``) reconstructs any image size at the operator's own grid."""
    if getattr(prior, "any_size", False):
        prior.check_compatible(operator.image_size)
    elif prior.image_size != operator.image_size:
        raise ScoreReconError(
            f"the model was trained on {prior.image_size}x{prior.image_size} images but the measurement is for "
            f"{operator.image_size}x{operator.image_size}; use a model of that size or re-simulate with "
            f"--size {prior.image_size}"
        )
    want = task_modality(operator.task) if operator.task in TASKS else None
    if want is not None and prior.modality != want:
        raise ScoreReconError(
            f"task {operator.task} needs a {want} model but the model is {prior.modality}; "
            f"use --model default-{'ct' if want == 'CT' else 'mri'} or a {want} checkpoint"
        )


def tuned_values(prior, method: str, task: str | None = None) -> dict:
    """Hyperparameters the prior's config (or its ``tuned.json`` sidecar) recommends for ``method``.

    ``prior.recommended`` may hold flat values for its ``sampler``, per-sampler dicts
    (``{"fast": {...}}``) and per-task dicts (``{"tasks": {"sparse-ct": {"fast": {...}}}}``); the
    most specific wins.
    """
    rec = getattr(prior, "recommended", None) or {}
    out: dict = {}
    if rec.get("sampler") == method:
        out.update({k: v for k, v in rec.items() if not isinstance(v, dict)})
    if isinstance(rec.get(method), dict):
        out.update(rec[method])
    per_task = (rec.get("tasks") or {}).get(task or "", {})
    if isinstance(per_task.get(method), dict):
        out.update(per_task[method])
    return out


def undersampling(operator: MeasurementOperator) -> float:
    """Entries of the full transform per measured entry (1 for a full scan): the acceleration R of MRI, full set /
    views for sparse-view CT, 180° / arc for limited angle."""
    mask = operator.mask.detach()
    plane = mask.reshape(-1, *mask.shape[-2:])[0].float()
    frac = float(plane.mean())
    return 1.0 / frac if frac > 0 else float("inf")


def std_scale_for(prior, method: str, task: str | None = None, operator: MeasurementOperator | None = None) -> float:
    """Calibration factor of the posterior std: the prior's tuned ``std_scale`` for ``method`` / ``task`` (fitted on
    validation subjects so that |error| ≤ 1.645 std holds 90 % of body pixels, ``benchmarks/std_calibration.py``),
    else 1 (the raw sample std). ``std_scale`` is a number, or a list of ``[undersampling, factor]`` points
    interpolated log-linearly in the operator's :func:`undersampling` (clamped at the ends), or a dict of either
    per :func:`~ScoreReconLib.parameter_choice.operator_kind` (MRI line and point masks)."""
    value = tuned_values(prior, method, task).get("std_scale", 1.0)
    if isinstance(value, dict):  # per operator kind, e.g. {"mri-1d": [[4, k4], [8, k8]], "mri-2d": k}
        from .parameter_choice import operator_kind

        kind = operator_kind(operator) if operator is not None else next(iter(value), None)
        if kind not in value:
            return 1.0
        value = value[kind]
    if isinstance(value, list | tuple):
        try:
            points = sorted((float(r), float(k)) for r, k in value)
        except (TypeError, ValueError):
            raise ScoreReconError(f"the model's std_scale {str(value)[:80]} must be a number or a list of "
                                  "[undersampling, factor] pairs; fix its config.json / tuned.json") from None
        if not points or any(not (math.isfinite(r) and r >= 1) for r, _ in points):
            raise ScoreReconError(f"the model's std_scale points {points[:4]} need undersampling values >= 1; fix "
                                  "its config.json / tuned.json")
        r = undersampling(operator) if operator is not None else points[0][0]
        r = min(max(r, points[0][0]), points[-1][0])
        value = points[-1][1]
        for (r0, k0), (r1, k1) in zip(points, points[1:], strict=False):
            if r0 <= r <= r1:
                frac = 0.0 if r1 == r0 else (math.log(r) - math.log(r0)) / (math.log(r1) - math.log(r0))
                value = k0 + frac * (k1 - k0)
                break
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ScoreReconError(f"the model's std_scale {value!r} is not a number; fix its config.json / "
                              "tuned.json") from None
    if not (math.isfinite(value) and 0 < value <= 1000):
        raise ScoreReconError(f"the model's std_scale {value} must lie in (0, 1000]; fix its config.json / "
                              "tuned.json")
    return value


def recommended_samples(prior, method: str, task: str | None = None) -> int:
    """Posterior samples averaged by default: the prior's tuned ``samples`` for ``method``/``task``, else 1."""
    from .limits import MAX_SAMPLES, check_count

    value = tuned_values(prior, method, task).get("samples")
    if value is None:
        return 1
    return check_count(value, "the model's recommended samples", MAX_SAMPLES,
                       where="(config.json / tuned.json; fix the file)")


def resolve_settings(method: str, prior, steps: int | None = None, lam: float | None = None,
                     snr: float | None = None, task: str | None = None, **extra) -> SamplerSettings:
    """Merge call arguments, the prior's tuned values (:func:`tuned_values`) and :data:`DEFAULTS`."""
    if method not in SAMPLERS:
        raise ScoreReconError(f"unknown sampler '{method}'; choose one of {', '.join(SAMPLERS)}")
    base = dict(DEFAULTS[method].get(prior.modality, DEFAULTS[method]["CT"]))
    tuned = tuned_values(prior, method, task)
    for key in TUNABLE:
        if key in tuned and tuned[key] is not None:
            base[key] = tuned[key]
    for key, value in (("steps", steps), ("lam", lam), ("snr", snr)):
        if value is not None:
            base[key] = value
    base.update({k: v for k, v in extra.items() if v is not None})
    steps_value = _number(base, "steps", "--steps")
    if not steps_value.is_integer() or not 1 <= steps_value <= MAX_SAMPLER_STEPS:
        raise ScoreReconError(f"--steps must be a whole number from 1 to {MAX_SAMPLER_STEPS}, got {base['steps']}; "
                              "use at least 10 from noise (the model's default is tuned)")
    if not 0.0 <= _number(base, "lam", "--lam") <= 1.0:
        raise ScoreReconError(f"--lam must lie in [0, 1], got {base['lam']}")
    if _number(base, "snr", "--snr") < 0:
        raise ScoreReconError(f"--snr must be non-negative, got {base['snr']}")
    for key in ("cg_iters", "eta", "noise_rate"):
        if key in base:
            _number(base, key, key)
    from .limits import MAX_CG_ITERATIONS, MAX_SOLVER_ITERATIONS, check_count

    if "cg_iters" in base:
        base["cg_iters"] = check_count(base["cg_iters"], "cg_iters", MAX_CG_ITERATIONS,
                                       where="(model config / tuned.json / call)")
    if "tv_iters" in base:
        base["tv_iters"] = check_count(base["tv_iters"], "tv_iters", MAX_SOLVER_ITERATIONS,
                                       where="(model config / tuned.json / call)")
    base["steps"] = int(float(base["steps"]))
    base["lam"], base["snr"] = float(base["lam"]), float(base["snr"])
    _check_start_and_tv(method, base)
    return SamplerSettings(**base)


def _number(base: dict, key: str, flag: str) -> float:
    try:
        value = float(base[key])
    except (TypeError, ValueError):
        raise ScoreReconError(f"{flag} must be a number, got {base[key]!r}") from None
    if not math.isfinite(value):
        raise ScoreReconError(f"{flag} must be a finite number, got {base[key]}")
    return value


def _check_start_and_tv(method: str, base: dict) -> None:
    """Validate (and normalise in place) the warm-start, TV and noise settings of ``base``."""
    tv = _number(base, "tv_weight", "--tv-weight") if "tv_weight" in base else 0.0
    if tv < 0:
        raise ScoreReconError(f"--tv-weight must be >= 0 (0 = no TV term), got {base['tv_weight']}; try 1e-4")
    if tv > 0 and method != "proximal":
        raise ScoreReconError(f"--tv-weight applies only to the proximal sampler, not '{method}'; "
                              "use --sampler proximal or drop --tv-weight")
    if "tv_weight" in base:
        base["tv_weight"] = tv
    if base.get("z_tv") is not None:
        z = _number(base, "z_tv", "--z-tv")
        if z < 0:
            raise ScoreReconError(f"--z-tv must be >= 0 (0 = slices independent), got {base['z_tv']}; try 0.01")
        if z > 0 and method != "proximal":
            raise ScoreReconError(f"--z-tv applies only to the proximal sampler, not '{method}'; "
                                  "use --sampler proximal or drop --z-tv")
        base["z_tv"] = z
    else:
        base.pop("z_tv", None)
    if base.get("z_shared_noise") is not None:
        if not isinstance(base["z_shared_noise"], bool):
            raise ScoreReconError(f"z_shared_noise must be True or False, got {base['z_shared_noise']!r}")
        if base["z_shared_noise"] and method != "proximal":
            raise ScoreReconError(f"--z-shared-noise applies only to the proximal sampler, not '{method}'")
    else:
        base.pop("z_shared_noise", None)
    if "tv_iters" in base:
        iters = base["tv_iters"]
        if isinstance(iters, bool) or not float(iters).is_integer() or int(iters) < 1:
            raise ScoreReconError(f"tv_iters must be a whole number of at least 1, got {iters}; e.g. 10")
        base["tv_iters"] = int(iters)
    init = base.get("init", "noise")
    if init not in INITS:
        raise ScoreReconError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    t_start = _number(base, "t_start", "--t-start") if "t_start" in base else 1.0
    if not 0.0 < t_start <= 1.0:
        raise ScoreReconError(f"--t-start must lie in (0, 1], got {base['t_start']}")
    if t_start < 1.0 and init != "classical":
        raise ScoreReconError(f"--t-start {t_start} < 1 needs --init classical (a noise start begins at t = 1)")
    if "t_start" in base:
        base["t_start"] = t_start
    _optional_number(base, "noise_std", "--noise-std", lambda v: v >= 0, "be >= 0 (0 = noise-free data)")
    _optional_number(base, "noise_scale", "--noise-scale", lambda v: v > 0, "be > 0")
    if _optional_number(base, "final_lam", "--final-lam", lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]") \
            and method != "proximal":
        raise ScoreReconError(f"--final-lam applies only to the proximal sampler, not '{method}'")
    _optional_number(base, "init_weight", "--init-weight", lambda v: v >= 0, "be >= 0")


def _optional_number(base: dict, key: str, flag: str, ok, rule: str) -> bool:
    """Validate and normalise ``base[key]`` if it is set (not None): a finite number with ``ok(value)``,
    else ``{flag} must {rule}``. Returns whether it was set."""
    if base.get(key) is None:
        return False
    value = _number(base, key, flag)
    if not ok(value):
        raise ScoreReconError(f"{flag} must {rule}, got {base[key]}")
    base[key] = value
    return True


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream ``keys`` (e.g. slice, sample) of ``seed``; streams never overlap."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) % 2**63, *[int(k) for k in keys]]).generate_state(2, np.uint64)[0]
               % 2**63)


def slice_generators(seed: int | None, sample: int, first_slice: int, count: int,
                     device: torch.device) -> SliceGenerators:
    """Streams of posterior sample ``sample`` for slices ``first_slice … first_slice + count − 1``: slice
    ``s`` draws from ``derive_seed(seed, s, sample)``, batch-wide draws from ``derive_seed(seed, 2**32, sample)``
    (a fresh random seed when ``seed`` is None)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return SliceGenerators([derive_seed(seed, first_slice + b, sample) for b in range(count)],
                           derive_seed(seed, 2**32, sample), device)


#: slices a volume's noise level is estimated from (a centred block; all when there are fewer)
NOISE_ESTIMATE_SLICES = 64
#: central slices a volume's automatic classical weight is chosen from
WEIGHT_CHOICE_SLICES = 3


def central_block(y: torch.Tensor, operator: MeasurementOperator,
                  count: int) -> tuple[torch.Tensor, MeasurementOperator]:
    """The ``count`` central slices of ``y`` (S, 1, ...) (all when there are fewer) and their operator."""
    s = y.shape[0]
    lo = max(0, (s - count) // 2)
    idx = slice(lo, min(s, lo + count))
    op = subset_operator(operator, idx) if (idx.start, idx.stop) != (0, s) else operator
    return y[idx].to(op.mask.device), op


def volume_extras(y: torch.Tensor, operator: MeasurementOperator, prior, method: str = DEFAULT_METHOD,
                  steps: int | None = None, lam: float | None = None, snr: float | None = None,
                  **extra) -> dict:
    """``noise_std`` and ``init_weight`` fixed once for all ``S`` slices ``y`` (S, 1, ...) of a volume.

    What :func:`reconstruct` would otherwise estimate per batch is fixed here: the measurement noise σ_y from
    up to :data:`NOISE_ESTIMATE_SLICES` central slices, and the classical start weight chosen by
    :func:`~ScoreReconLib.parameter_choice.choose_weight` on :data:`WEIGHT_CHOICE_SLICES` central slices with
    that σ_y, so that every batch — of any size — uses the same values. Values the caller set are kept.
    With a classical start chosen automatically, ``out["weight_choice"]`` holds the choice's record.
    """
    from .noise import estimate_noise_std, looks_noise_free
    from .parameter_choice import choose_weight

    settings = resolve_settings(method, prior, steps, lam, snr, task=operator.task, **extra)
    out: dict = {}
    sigma = settings.noise_std
    noise_free = False
    if sigma is None:
        block, op = central_block(y, operator, NOISE_ESTIMATE_SLICES)
        sigma = float(estimate_noise_std(op, block))
        noise_free = looks_noise_free(op, block)  # MRI: σ_y read the signal's tail
        out["noise_std"] = sigma
    if settings.init == "classical" and settings.init_weight is None:
        block, op = central_block(y, operator, WEIGHT_CHOICE_SLICES)
        choice = choose_weight(block, op, "cs" if operator.task == "mri" else "tv",
                               noise_std=0.0 if noise_free else sigma)
        out["init_weight"] = float(choice.weight)
        out["weight_choice"] = choice.to_dict()
    return out


def reconstruct(y: torch.Tensor, operator: MeasurementOperator, prior, method: str = DEFAULT_METHOD,
                steps: int | None = None, lam: float | None = None, snr: float | None = None,
                samples: int | None = None, seed: int | None = 0, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, device: str | torch.device | None = None,
                keep_samples: bool = False, first_slice: int = 0, std_scale: float | None = None,
                **extra) -> ReconstructionResult:
    """Sample the posterior ``p(x | y)`` ``samples`` times and return mean (and std if ``samples > 1``).

    ``y``: full-layout measurement for a batch ``(B, 1, ...)`` of ``operator``. ``method``: "proximal"
    (default; the prior's recommended settings, else :data:`DEFAULTS`), "fast" (DDS-style) or "song2021".
    ``lam``/``snr``/``steps`` default to the prior's tuned values, then :data:`DEFAULTS`. ``extra``:
    other :class:`~ScoreReconLib.sampling.SamplerSettings` fields, e.g. ``tv_weight`` (TV term of the
    proximal step, ``--method tv --weight`` units), ``init="classical"`` with ``t_start`` ∈ (0, 1]
    (start from a TV/CS reconstruction noised to ``t_start``; ``steps`` are then run from there) and
    ``init_weight``. Same ``seed`` and device → identical output. ``progress(done, total, message)``
    counts sampler steps over all samples; ``cancel`` (an Event) stops between steps.

    ``std`` is the samples' standard deviation times ``std_scale`` (None → the prior's calibrated factor for the
    task, :func:`std_scale_for`; 1 gives the raw sample std), so that ±1.645 std holds about 90 % of the error.

    Batch item ``b`` is slice ``first_slice + b`` of a volume: its noise comes from its own stream
    (:func:`slice_generators`), so with ``noise_std`` and ``init_weight`` fixed for the volume (as
    :func:`reconstruct_volume` and the CLI do) a slice's result does not depend on the batch size.
    """
    t0 = time.perf_counter()
    check_compatible(operator, prior)
    if samples is None:
        samples = recommended_samples(prior, method, operator.task)
    if samples < 1:
        raise ScoreReconError(f"--samples must be at least 1, got {samples}")
    expected = tuple(operator.measurement_shape(y.shape[0]))
    if tuple(y.shape) != expected:
        raise ScoreReconError(
            f"measurement has shape {tuple(y.shape)} but the {operator.task} operator expects {expected}; "
            "the measurement file and operator do not belong together"
        )
    check_finite(y, "the measurement")
    settings = resolve_settings(method, prior, steps, lam, snr, task=operator.task, **extra)
    dev = resolve_device(device) if device is not None else prior.device
    if prior.device != dev:
        prior = prior.to(dev)
    operator = operator.to(dev)
    y = y.to(dev)
    sampler = SAMPLERS[method]
    shared = SamplerContext(cancel=cancel)  # what every sample reuses: the noise estimate, the classical start
    if settings.init == "classical":
        from .noise import looks_noise_free

        sigma = noise_std_of(operator, y, settings, shared)
        if settings.noise_std is None and settings.init_weight is None and looks_noise_free(operator, y):
            sigma = 0.0  # the start's weight: noise-free data (the estimate read the signal's tail)
        shared.x_init = classical_init(operator, y, settings.init_weight, cancel, sigma)
    outs = []
    nfe = 0
    total = settings.steps * samples
    for k in range(samples):
        check_cancel(cancel)
        done_before = settings.steps * k

        def prog(done, _total, message, _k=k, _before=done_before):
            if progress is not None:
                progress(_before + done, total, f"{message} (sample {_k + 1}/{samples})")

        ctx = SamplerContext(slice_generators(seed, k, first_slice, y.shape[0], dev), prog, cancel,
                             x_init=shared.x_init, measured_noise_std=shared.measured_noise_std)
        with torch.no_grad():
            outs.append(sampler(prior, operator, y, settings, ctx).float())
        shared.measured_noise_std = ctx.measured_noise_std  # estimated by the first sample if not before
        nfe = ctx.nfe
    stack = torch.stack(outs)
    mean = stack.mean(0)
    scale = std_scale_for(prior, method, operator.task, operator) if std_scale is None else float(std_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ScoreReconError(f"std_scale must be a finite number > 0, got {scale}; fix the model's std_scale")
    std = stack.std(0, unbiased=True) * scale if samples > 1 else None
    return ReconstructionResult(
        mean=mean.cpu(), std=None if std is None else std.cpu(), nfe=nfe,
        seconds=time.perf_counter() - t0, method=method, seed=seed,
        settings={**settings.__dict__, "samples": samples, "nfe_per_step": NFE_PER_STEP[method],
                  "std_scale": scale},
        samples=stack.cpu() if keep_samples else None,
    )


def subset_operator(operator: MeasurementOperator, index: slice) -> MeasurementOperator:
    """The operator for slices ``index`` of a batch (only per-slice masks, e.g. metal traces, differ)."""
    if hasattr(operator, "batch_subset"):
        return operator.batch_subset(index)
    mask = operator.mask
    if mask.ndim >= 1 and mask.shape[0] > 1:
        raise ScoreReconError(f"{type(operator).__name__} has per-slice masks but no batch_subset()")
    return operator


def reconstruct_volume(y: torch.Tensor, operator: MeasurementOperator, prior, batch_size: int | None = None,
                       progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                       **kwargs) -> ReconstructionResult:
    """Reconstruct ``S`` slices ``y`` (S, 1, ...) in batches of ``batch_size`` (default 4); memory bounded by a batch.

    Progress is reported per finished slice; ``cancel`` stops between sampler steps. Every slice
    draws from its own stream (``derive_seed(seed, slice_index, sample)``) and the noise level and
    classical start weight are fixed once for the volume (:func:`volume_extras`), so without the 3-D
    options the result of a slice does not depend on ``batch_size``.
    ``z_shared_noise=True`` (proximal sampler) gives the slices of a batch the same sampler noise, so
    the flicker of independent posterior samples is correlated away (same batching caveat as z-TV).
    ``z_tv=w`` (proximal sampler) couples neighbouring slices by a TV term along z after every
    data-consistency step (:func:`~ScoreReconLib.sampling.z_tv_proximal`); it acts within a batch, so
    with ``z_tv > 0`` the default batch is the whole volume (every slice coupled, at the memory of the
    whole volume); a smaller ``batch_size`` leaves the batch boundaries uncoupled.
    """
    if batch_size is None:
        batch_size = y.shape[0] if (kwargs.get("z_tv") or kwargs.get("z_shared_noise")) else 4
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ScoreReconError(f"batch_size must be a whole number of at least 1, got {batch_size}")
    t0 = time.perf_counter()
    check_compatible(operator, prior)
    S = y.shape[0]
    means, stds = [], []
    nfe = 0
    seed = kwargs.pop("seed", 0)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    sampler_keys = {"method", "steps", "lam", "snr", *SamplerSettings.__dataclass_fields__}
    fixed = volume_extras(y, operator, prior, **{k: v for k, v in kwargs.items() if k in sampler_keys})
    fixed.pop("weight_choice", None)
    kwargs.update({k: v for k, v in fixed.items() if kwargs.get(k) is None})
    result = None
    for start in range(0, S, batch_size):
        check_cancel(cancel)
        idx = slice(start, min(S, start + batch_size))
        op_b = subset_operator(operator, idx)
        result = reconstruct(y[idx], op_b, prior, cancel=cancel, seed=seed, first_slice=start, **kwargs)
        means.append(result.mean)
        if result.std is not None:
            stds.append(result.std)
        nfe = result.nfe
        if progress is not None:
            progress(idx.stop, S, f"slice {idx.stop}/{S}")
    assert result is not None
    return ReconstructionResult(
        mean=torch.cat(means), std=torch.cat(stds) if stds else None, nfe=nfe,
        seconds=time.perf_counter() - t0, method=result.method, seed=seed, settings=result.settings,
    )
