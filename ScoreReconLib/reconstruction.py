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

import dataclasses
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
from .sampling import NFE_PER_STEP, SAMPLERS, SamplerContext, classical_init, noise_std_of
from .settings import (  # noqa: F401  (re-exported: the settings are part of this module's API)
    DEFAULT_METHOD,
    DEFAULTS,
    MAX_SAMPLER_STEPS,
    TUNABLE,
    SamplerSettings,
    recommended_samples,
    resolve_settings,
    tuned_values,
)
from .utils import ProgressFn, check_cancel, check_finite, resolve_device


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
    #: a volume's automatic classical-start weight choice (``WeightChoice.to_dict()``; None when none was made)
    weight_choice: dict | None = None
    #: what test-time adaptation did (``AdaptationRecord.to_dict()``; None without ``adapt``)
    adaptation: dict | None = None


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


def fix_volume_settings(y: torch.Tensor, operator: MeasurementOperator,
                        settings: SamplerSettings) -> tuple[SamplerSettings, dict | None]:
    """``settings`` with ``noise_std`` and ``init_weight`` fixed once for all ``S`` slices ``y`` (S, 1, ...) of a
    volume, and the record of the automatic weight choice (None when none was made).

    What :func:`reconstruct` would otherwise estimate per batch is fixed here: the measurement noise σ_y from
    up to :data:`NOISE_ESTIMATE_SLICES` central slices, and the classical start weight chosen by
    :func:`~ScoreReconLib.parameter_choice.choose_weight` on :data:`WEIGHT_CHOICE_SLICES` central slices with
    that σ_y, so that every batch — of any size — uses the same values. Values already set are kept.
    """
    from .noise import estimate_noise_std, looks_noise_free
    from .parameter_choice import choose_weight, start_weight

    changes: dict = {}
    sigma = settings.noise_std
    noise_free = False
    if sigma is None:
        block, op = central_block(y, operator, NOISE_ESTIMATE_SLICES)
        sigma = float(estimate_noise_std(op, block))
        noise_free = looks_noise_free(op, block)  # MRI: σ_y read the signal's tail
        changes["noise_std"] = sigma
    choice = None
    if settings.init == "classical" and settings.init_weight is None:
        block, op = central_block(y, operator, WEIGHT_CHOICE_SLICES)
        picked = choose_weight(block, op, "cs" if operator.task == "mri" else "tv",
                               noise_std=0.0 if noise_free else sigma)
        changes["init_weight"] = start_weight(picked, op)
        choice = {**picked.to_dict(), "start_weight": changes["init_weight"]}
        if settings.noise_std is None:  # σ_y was estimated here and handed on, not given by the user
            choice.update(noise_std=sigma, noise_source="estimated")
    return (dataclasses.replace(settings, **changes) if changes else settings), choice


def _settings_of(prior, operator: MeasurementOperator, settings: SamplerSettings | None, method: str | None,
                 options: dict) -> SamplerSettings:
    """``settings`` as given, or resolved from ``method`` and ``options`` (:func:`resolve_settings`); not both."""
    given = sorted(k for k, v in options.items() if v is not None)
    if settings is None:
        return resolve_settings(method, prior, task=operator.task, **options)
    if not isinstance(settings, SamplerSettings):
        raise ScoreReconError(f"settings must be a SamplerSettings (from resolve_settings), got "
                              f"{type(settings).__name__}")
    if given or (method is not None and method != settings.method):
        raise ScoreReconError(f"pass either settings= or the options {', '.join(given) or 'method'}, not both; "
                              "derive a changed copy with dataclasses.replace(settings, ...)")
    return settings


def reconstruct(y: torch.Tensor, operator: MeasurementOperator, prior, method: str | None = None,
                steps: int | None = None, lam: float | None = None, snr: float | None = None,
                samples: int | None = None, seed: int | None = 0, progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, device: str | torch.device | None = None,
                first_slice: int = 0, std_scale: float | None = None, settings: SamplerSettings | None = None,
                **extra) -> ReconstructionResult:
    """Sample the posterior ``p(x | y)`` ``samples`` times and return mean (and std if ``samples > 1``).

    ``y``: full-layout measurement for a batch ``(B, 1, ...)`` of ``operator``. The sampler's settings are either
    ``settings`` (a :class:`~ScoreReconLib.settings.SamplerSettings`, used as it is) or resolved from the options
    (:func:`~ScoreReconLib.settings.resolve_settings`: the prior's recommendation for the task, then
    :data:`DEFAULTS`, then the options given here): ``method`` "proximal" (default), "fast" (DDS-style) or
    "song2021"; ``steps``, ``lam``, ``snr``, ``samples``, and ``extra`` other settings fields, e.g. ``tv_weight``,
    ``init="classical"`` with ``t_start`` ∈ (0, 1] and ``init_weight``. Same ``seed`` and device → identical output.
    ``progress(done, total, message)`` counts sampler steps over all samples; ``cancel`` (an Event) stops between
    steps.

    ``std`` is the samples' standard deviation times ``std_scale`` (None → the prior's calibrated factor for the
    task, :func:`std_scale_for`; 1 gives the raw sample std), so that ±1.645 std holds about 90 % of the error.

    Batch item ``b`` is slice ``first_slice + b`` of a volume: its noise comes from its own stream
    (:func:`slice_generators`), so with ``noise_std`` and ``init_weight`` fixed for the volume (as
    :func:`reconstruct_volume` does) a slice's noise does not depend on the batch size (its image only by float
    rounding, which the sampler amplifies to about 1e-3 of the range).
    """
    t0 = time.perf_counter()
    check_compatible(operator, prior)
    settings = _settings_of(prior, operator, settings, method,
                            {"steps": steps, "lam": lam, "snr": snr, "samples": samples, **extra})
    expected = tuple(operator.measurement_shape(y.shape[0]))
    if tuple(y.shape) != expected:
        raise ScoreReconError(
            f"measurement has shape {tuple(y.shape)} but the {operator.task} operator expects {expected}; "
            "the measurement file and operator do not belong together"
        )
    check_finite(y, "the measurement")
    method, samples = settings.method, settings.samples
    dev = resolve_device(device) if device is not None else prior.device
    if prior.device != dev:
        prior = prior.to(dev)
    operator = operator.to(dev)
    y = y.to(dev)
    sampler = SAMPLERS[method]
    shared = SamplerContext(cancel=cancel)  # what every sample reuses: the noise estimate, the classical start
    if settings.init == "classical" or settings.adapt != "none":
        from .noise import looks_noise_free

        sigma = noise_std_of(operator, y, settings, shared)
        if settings.noise_std is None and settings.init_weight is None and looks_noise_free(operator, y):
            sigma = 0.0  # the start's weight: noise-free data (the estimate read the signal's tail)
        shared.x_init = classical_init(operator, y, settings.init_weight, cancel, sigma)
    adaptation = None
    if settings.adapt != "none":  # fit adapters to this batch's data from its classical start
        prior, record = _adapt(prior, operator, y, shared.x_init, noise_std_of(operator, y, settings, shared),
                               settings, seed, cancel)
        adaptation = record.to_dict()
        if settings.init != "classical":
            shared.x_init = None  # the start was only the adaptation's
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
        with torch.no_grad():  # nothing is received from outside the coil maps' support: 0 there
            outs.append(operator.restrict_to_support(sampler(prior, operator, y, settings, ctx).float()))
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
        settings={**settings.__dict__, "nfe_per_step": NFE_PER_STEP[method], "std_scale": scale},
        adaptation=adaptation,
    )


def _adapt(prior, operator: MeasurementOperator, y: torch.Tensor, x_start: torch.Tensor, noise_std: float,
           settings: SamplerSettings, seed: int | None, cancel: threading.Event | None):
    """``prior`` with adapters fitted to ``y`` (:func:`~ScoreReconLib.adaptation.adapt_prior`), seeded from ``seed``."""
    from .adaptation import adapt_prior

    return adapt_prior(prior, operator, y, x_start, float(noise_std), settings.t_start, settings.adapt_steps,
                       seed=derive_seed(0 if seed is None else seed, 2**33), mode=settings.adapt, cancel=cancel)


def subset_operator(operator: MeasurementOperator, index: slice) -> MeasurementOperator:
    """The operator for slices ``index`` of a batch (only per-slice masks and coil maps differ); ``operator`` itself
    when ``index`` covers its whole batch or it holds nothing per slice."""
    from .operators.base import batch_items

    items = batch_items(operator)
    if items == 1 or range(items)[index] == range(items):
        return operator
    if hasattr(operator, "batch_subset"):
        return operator.batch_subset(index)
    mask = operator.mask
    if mask.ndim >= 1 and mask.shape[0] > 1:
        raise ScoreReconError(f"{type(operator).__name__} has per-slice masks but no batch_subset()")
    return operator


def reconstruct_volume(y: torch.Tensor, operator: MeasurementOperator, prior, batch_size: int | None = None,
                       progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                       settings: SamplerSettings | None = None, seed: int | None = 0,
                       step_progress: ProgressFn | None = None, method: str | None = None,
                       **options) -> ReconstructionResult:
    """Reconstruct ``S`` slices ``y`` (S, 1, ...) in batches of ``batch_size`` (default 4); memory bounded by a batch.

    The settings are resolved once (``settings``, or :func:`resolve_settings` of ``method`` and ``options`` as in
    :func:`reconstruct`) and the noise level and classical start weight fixed once for the volume
    (:func:`fix_volume_settings`); every slice draws from its own stream (``derive_seed(seed, slice_index,
    sample)``), so without the 3-D options a slice's noise does not depend on ``batch_size`` (its image only by
    float rounding, amplified by the sampler to about 1e-3 of the range).
    ``progress(done, S, message)`` is called per finished batch (in slices); ``step_progress(done, total, message)``
    after every sampler step, counted in slice-steps (``total = S · steps · samples``). ``cancel`` stops between
    sampler steps. Other ``options`` of :func:`reconstruct` (``device``, ``std_scale``) are passed on.

    ``z_shared_noise=True`` (proximal sampler) gives the slices of a batch the same sampler noise, so
    the flicker of independent posterior samples is correlated away (same batching caveat as z-TV).
    ``z_tv=w`` (proximal sampler) couples neighbouring slices by a TV term along z after every
    data-consistency step (:func:`~ScoreReconLib.sampling.z_tv_proximal`); it acts within a batch, so
    with ``z_tv > 0`` the default batch is the whole volume (every slice coupled, at the memory of the
    whole volume); a smaller ``batch_size`` leaves the batch boundaries uncoupled.
    """
    passed = {k: options.pop(k) for k in ("device", "std_scale") if k in options}
    check_compatible(operator, prior)
    settings = _settings_of(prior, operator, settings, method, options)
    if batch_size is None:
        batch_size = y.shape[0] if (settings.z_tv or settings.z_shared_noise) else 4
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ScoreReconError(f"batch_size must be a whole number of at least 1, got {batch_size}")
    t0 = time.perf_counter()
    S = y.shape[0]
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    settings, choice = fix_volume_settings(y, operator, settings)
    adaptation = None
    if settings.adapt != "none":  # once, on the central slices; every batch then samples with the adapted prior
        block, op = central_block(y, operator, WEIGHT_CHOICE_SLICES)
        check_compatible(op, prior)
        dev = resolve_device(passed["device"]) if passed.get("device") is not None else prior.device
        prior = prior.to(dev)
        op, block = op.to(dev), block.to(dev)
        start = classical_init(op, block, settings.init_weight, cancel, settings.noise_std)
        prior, record = _adapt(prior, op, block, start, settings.noise_std, settings, seed, cancel)
        adaptation = record.to_dict()
        settings = dataclasses.replace(settings, adapt="none")
    per_slice = settings.steps * settings.samples
    means, stds = [], []
    result = None
    for start in range(0, S, batch_size):
        check_cancel(cancel)
        idx = slice(start, min(S, start + batch_size))
        count = idx.stop - idx.start

        def on_step(done: int, total: int, message: str, _start: int = start, _count: int = count) -> None:
            if step_progress is not None:
                step_progress(_start * per_slice + _count * done, S * per_slice, message)

        result = reconstruct(y[idx], subset_operator(operator, idx), prior, cancel=cancel, seed=seed,
                             first_slice=start, settings=settings, progress=on_step, **passed)
        means.append(result.mean)
        if result.std is not None:
            stds.append(result.std)
        if progress is not None:
            progress(idx.stop, S, f"slice {idx.stop}/{S}")
    assert result is not None
    return ReconstructionResult(
        mean=torch.cat(means), std=torch.cat(stds) if stds else None, nfe=result.nfe,
        seconds=time.perf_counter() - t0, method=result.method, seed=seed,
        settings={**result.settings, "adapt": "none" if adaptation is None else adaptation["mode"]},
        weight_choice=choice, adaptation=adaptation,
    )
