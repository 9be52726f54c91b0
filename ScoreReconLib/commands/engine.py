"""What reconstructs the files of one ``scorerecon reconstruct`` run: a classical method with its options, or the
score prior with the settings resolved once per task."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import (
    normalization_mismatch,
)
from ..errors import ScoreReconError
from ..measurement import Measurement
from ..operators.base import MeasurementOperator
from ..vocabulary import TASKS, classical_methods_for

#: methods that fit each task (the classical ones and the score prior)
METHODS_FOR_TASK: dict[str, tuple[str, ...]] = {task: (*classical_methods_for(task), "score") for task in TASKS}
#: progress units per slice for classical methods (per-mille of a slice's iterations)
CLASSICAL_UNITS = 1000


def check_method(task: str, method: str) -> None:
    """Refuse a method that does not fit ``task`` (e.g. zero-filled on CT), naming those that do."""
    fits = METHODS_FOR_TASK.get(task, ())
    if method not in fits:
        raise ScoreReconError(f"--method {method} does not fit task {task}; use one of {', '.join(fits)}")


@dataclass
class Engine:
    """What reconstructs a file: a classical method with its ``options``, or the score prior with the user's score
    ``options`` (:data:`~ScoreReconLib.settings.USER_OPTIONS`; None = not given), resolved once per task."""

    method: str
    device: torch.device
    prior: Any = None
    units_per_slice: int = CLASSICAL_UNITS
    model_name: str | None = None
    options: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)

    def settings_for(self, task: str):
        """The :class:`~ScoreReconLib.settings.SamplerSettings` of a score reconstruction of ``task``, resolved (and
        validated) once: the model's recommendation for the task, then the command line."""
        if task not in self.resolved:
            from ..settings import resolve_settings

            options = dict(self.options)
            self.resolved[task] = resolve_settings(options.pop("method"), self.prior, task=task, **options)
        return self.resolved[task]

    def classical_fixed(self, y: torch.Tensor, op: MeasurementOperator) -> dict:
        """tv / cs with the automatic weight: the weight fixed once for a file's slices, and its choice record
        (``"weight_choice"``); else nothing."""
        if self.method in ("tv", "cs") and self.options.get("weight", "auto") == "auto" \
                and self.options.get("regularizer") != "sigpy-wavelet":
            from ..parameter_choice import choose_weight
            from ..reconstruction import WEIGHT_CHOICE_SLICES, central_block

            block, sub = central_block(y, op, WEIGHT_CHOICE_SLICES)
            choice = choose_weight(block, sub, self.method,
                                   regularizer=self.options.get("regularizer", "tv"),
                                   noise_std=self.options.get("noise_std"), iters=self.options.get("iters"))
            return {"weight": choice.weight, "weight_choice": choice.to_dict()}
        return {}

    def run_classical(self, y: torch.Tensor, op: MeasurementOperator, progress: Any = None,
                      fixed: dict | None = None) -> torch.Tensor:
        """Reconstruct a batch with the classical method: (B,1,N,N) normalised units, on CPU."""
        from ..baselines import classical_reconstruct

        options = {k: v for k, v in self.options.items() if k != "noise_std"}
        if fixed and "weight" in fixed:
            options["weight"] = fixed["weight"]
        with torch.no_grad():
            x = classical_reconstruct(self.method, y, op, progress=progress, **options)
        return x.float().cpu()


def score_options(args: argparse.Namespace) -> dict:
    """The score settings given on the command line, by :data:`~ScoreReconLib.settings.USER_OPTIONS` name (None =
    not given; ``--sampler`` is ``method``)."""
    from ..settings import USER_OPTIONS

    return {k: getattr(args, "sampler" if k == "method" else k) for k in USER_OPTIONS}


def make_engine(args: argparse.Namespace, measurements: list[Measurement], device: torch.device) -> Engine:
    """Check the method against every measurement and, for score, load and check the model and resolve its settings
    for every task present (no work yet)."""
    for m in measurements:
        check_method(m.task, args.method)
    if args.method != "score":
        options = {k: getattr(args, k) for k in ("weight", "iters", "regularizer", "noise_std")
                   if getattr(args, k) is not None}
        return Engine(args.method, device, options=options)
    try:
        from ..networks import load_prior
    except ImportError as exc:
        raise ScoreReconError(
            f"--method score is unavailable: this installation lacks {exc.name}; reinstall scorerecon or "
            "use a classical method"
        ) from None
    modalities = {m.modality for m in measurements}
    if args.model is None and len(modalities) > 1:
        raise ScoreReconError("the measurements mix CT and MRI tasks; pass --model or split the folder")
    if args.model is not None and not str(args.model).strip():
        raise ScoreReconError("--model is empty; give default-ct, default-mri or a checkpoint folder, or leave it out")
    model = args.model or ("default-ct" if modalities == {"CT"} else "default-mri")
    prior = load_prior(model, device=device, trust_unverified=args.trust_unverified, precision=args.precision)
    for m in measurements:
        prior.check_compatible(m.image_size, m.modality)
        problem = normalization_mismatch(m.normalization, prior.normalization)
        if problem:
            print(f"scorerecon reconstruct: warning: {problem}", file=sys.stderr)
    engine = Engine("score", device, prior, model_name=model, options=score_options(args))
    for m in measurements:
        settings = engine.settings_for(m.task)
        if args.std_output and settings.samples < 2:
            raise ScoreReconError("--std-output needs --samples 2 or more (the std of a single sample is undefined)")
    first = engine.settings_for(measurements[0].task)
    engine.units_per_slice = first.steps * first.samples
    return engine
