"""``scorerecon reconstruct``: reconstruct a measurement file (or a folder of them) into an image.

Classical methods (``fbp``, ``tv``, ``zero-filled``, ``cs``) come from :mod:`ScoreReconLib.baselines`;
``score`` samples the posterior under a score prior (:func:`ScoreReconLib.reconstruction.reconstruct`).
Slices are reconstructed in batches of ``--batch-size``; the result is written in physical units
(HU for CT) with the geometry stored in the measurement file.

Batch mode: ``--input`` a folder of ``.npz`` files, ``--output`` a folder; each ``NAME.npz`` becomes
``NAME<--output-suffix>``. Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` takes files
``r::WORLD_SIZE`` on its own device (``cuda:LOCAL_RANK`` when CUDA is used) and rank 0 writes the
merged metrics JSON.

Metrics (with ``--reference``): PSNR and SSIM per slice on normalised images clipped to [0, 1]
(data range 1), metal pixels excluded for metal-ct; with a posterior std also ``coverage90``, the fraction of body
pixels whose error lies within ±1.645 calibrated std (:func:`ScoreReconLib.metrics.band_coverage`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import METHODS as CLASSICAL_METHODS
from ..data import (
    image_from_geometry,
    read_image,
    save_json,
    write_image,
)
from ..distributed import dist_env
from ..errors import ScoreReconError
from ..limits import MAX_SAMPLES, MAX_SOLVER_ITERATIONS, check_count
from ..measurement import load_measurement, reference_slices
from ..metrics import band_coverage, score_slices
from ..operators.base import MeasurementOperator
from ..settings import ADAPT_MODES, INITS, SAMPLER_NAMES, USER_OPTIONS
from ..threads import add_threads_option
from ..utils import resolve_device
from .engine import Engine, check_method, make_engine
from .options import add_device_option, add_precision_option, add_trust_option
from .outputs import DISAGREEMENT_LEVEL, choice_line, disagreement_map, write_complex, write_residual, write_volume
from .planning import Job, Staging, plan_jobs, shard
from .progress import Progress

#: every --method
METHODS = (*CLASSICAL_METHODS, "score")
#: --sampler choices of the score method
SAMPLERS = SAMPLER_NAMES
#: options of the score method only: --model and the score settings (:data:`~ScoreReconLib.settings.USER_OPTIONS`;
#: --sampler sets ``method``); --samples is accepted and ignored by the classical methods
SCORE_FLAGS = ("model", *("sampler" if k == "method" else k for k in USER_OPTIONS if k != "samples"))
PROGRESS_FORMATS = ("tqdm", "json", "none")


def _shipped_recommendations() -> dict[str, dict]:
    """``recommended`` of the shipped default models (:func:`~ScoreReconLib.model_card.model_facts`, without torch),
    for ``--help``."""
    from ..model_card import DEFAULT_PRIORS, model_facts

    out = {}
    for name in DEFAULT_PRIORS:
        try:
            out[name] = dict(model_facts(name).recommended)
        except ScoreReconError:  # a build without the shipped models
            continue
    return out


def _default_help(key: str, fallback: str | None = None) -> str:
    """"default: the model's recommendation (default-ct 5, default-mri 5), else 25 (CT) / 25 (MRI)" for ``--help``,
    from the values a run resolves (:func:`ScoreReconLib.reconstruction.resolve_settings`): the shipped models'
    config.json, then the proximal sampler's :data:`~ScoreReconLib.reconstruction.DEFAULTS`."""
    from ..settings import DEFAULT_METHOD, DEFAULTS

    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    shipped = [f"{name} {text(rec[key])}" for name, rec in _shipped_recommendations().items() if key in rec]
    said = f" ({', '.join(shipped)})" if shipped else ""
    if fallback is None:
        ct, mr = DEFAULTS[DEFAULT_METHOD]["CT"][key], DEFAULTS[DEFAULT_METHOD]["MR"][key]
        fallback = text(ct) if ct == mr else f"{text(ct)} (CT) / {text(mr)} (MRI)"
    return f"default: the model's recommendation{said}, else {fallback}"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct an image from a measurement file (classical or score-based)",
        description="Reconstruct the image(s) of a measurement file made by 'scorerecon simulate' (or a folder of "
                    "them) with a classical method or the score prior, and write them in physical units with "
                    "the source geometry.",
    )
    p.add_argument("--input", required=True, metavar="MEAS.npz", help="measurement file, or a folder of them")
    p.add_argument("--output", required=True, metavar="OUT.nrrd",
                   help="image to write (.nrrd, .nii.gz, .nii, .mha, .npy); a folder in batch mode")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="fbp/tv (CT), zero-filled/cs/tv/sense/rss (MRI; sense and rss combine coils) or score "
                        "(score prior)")
    p.add_argument("--reference", metavar="IMAGE",
                   help="clean image that was simulated, for PSNR/SSIM (a folder of NAME.* images in batch mode)")
    p.add_argument("--metrics-json", metavar="FILE", help="write timings and metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8, help="slices reconstructed together (default 8)")
    p.add_argument("--progress-format", choices=PROGRESS_FORMATS, default="tqdm",
                   help="tqdm: a bar on stderr when it is a terminal, else a plain line every 10 s (slice and "
                        "sampler step); json: lines {\"progress\": done, \"total\": n} on stdout; none")
    p.add_argument("--output-suffix", default=".nrrd", help="batch mode: suffix of the written images")
    add_device_option(p)
    c = p.add_argument_group("tv / cs methods")
    c.add_argument("--weight", type=_weight_arg, default=None, metavar="auto|W",
                   help="regularisation weight relative to ||A||^2, or auto (default): chosen from the measurement "
                        "(CT: the task's noise-free weight, raised by the discrepancy principle until the residual "
                        "matches the noise; MRI: cross-validation on held-out k-space lines or points; once per "
                        "file from its central slices); the choice is printed and "
                        "recorded in --metrics-json, and passing that number back reproduces the image")
    c.add_argument("--iters", type=int, default=None, help="PDHG iterations (default 300)")
    c.add_argument("--regularizer", choices=("tv", "wavelet", "sigpy-wavelet"), default=None,
                   help="cs: TV (default), L1-Haar (own) or sigpy-wavelet (sigpy's L1-wavelet recon, needs sigpy)")
    s = p.add_argument_group("score method")
    s.add_argument("--model", default=None,
                   help="default-ct, default-mri or a checkpoint folder (default: the task's default model)")
    add_trust_option(s)
    add_precision_option(s)
    s.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="proximal (Song et al. 2022), fast (DDS-style) or song2021; "
                        + _default_help("sampler", "proximal"))
    s.add_argument("--steps", type=int, default=None,
                   help="sampler steps from --t-start down to 0; "
                        + _default_help("steps") + " for proximal (keep >= 10 from noise)")
    s.add_argument("--lam", type=float, default=None,
                   help="data-consistency weight λ in [0, 1]; " + _default_help("lam"))
    s.add_argument("--snr", type=float, default=None,
                   help="Langevin corrector signal-to-noise ratio (0: no corrector); "
                        + _default_help("snr"))
    s.add_argument("--tv-weight", type=float, default=None, metavar="W",
                   help="proximal sampler: add a TV term to every data-consistency step, solved by a few warm-started "
                        "PDHG iterations; W has the units of --method tv --weight (relative to ||A||^2, on [0, 1] "
                        "images; e.g. 1e-4). Default: the model's tuned value, else 0 (the paper's step)")
    s.add_argument("--z-tv", type=float, default=None, metavar="WEIGHT",
                   help="proximal sampler: couple neighbouring slices of a volume by a TV term along z after every "
                        "data-consistency step (DiffusionMBIR-style), weight in [0, 1] image units (e.g. 0.01); it "
                        "acts within the slices reconstructed together, so set --batch-size to the slice count to "
                        "couple the whole volume. Default 0 (slices independent)")
    s.add_argument("--z-shared-noise", action="store_true", default=None,
                   help="proximal sampler: the slices reconstructed together share every noise draw of the sampler, "
                        "so neighbouring slices do not flicker independently (the data still differ); like "
                        "--z-tv it acts within --batch-size slices")
    s.add_argument("--init", choices=INITS, default=None,
                   help="start of the reverse process: noise (pure noise at t = 1) or classical (a TV (CT) / CS "
                        "(MRI) reconstruction noised to --t-start); " + _default_help("init"))
    s.add_argument("--t-start", type=float, default=None, metavar="T",
                   help="time in (0, 1] the reverse process starts at; below 1 needs --init classical, and "
                        "--steps are then run from T down to 0; " + _default_help("t_start"))
    s.add_argument("--init-weight", type=float, default=None, metavar="W",
                   help="--init classical: the TV / CS weight of the start image (default: chosen from the "
                        "measurement as --method tv/cs --weight auto does, once per file)")
    s.add_argument("--noise-std", type=float, default=None, metavar="S",
                   help="noise std of one measured entry (sinogram or k-space units); default: estimated from the "
                        "data (MAD); 0 = noise-free data. Score (proximal sampler): the data-consistency weight falls "
                        "from λ to 0 as the iterate becomes more precise than the data, and the classical start's "
                        "automatic weight uses it; tv / cs: the noise level of --weight auto")
    s.add_argument("--noise-scale", type=float, default=None, metavar="K",
                   help="proximal sampler: factor on the (estimated) noise std (default: the model's tuned value, "
                        "else 1)")
    s.add_argument("--final-lam", type=float, default=None, metavar="L",
                   help="proximal sampler: λ of the last merge after the final denoising step (default: 1 for "
                        "noise-free data, the noise-aware weight otherwise)")
    s.add_argument("--adapt", choices=ADAPT_MODES, default=None,
                   help="test-time adaptation before sampling: none, or lora (low-rank adapters of the score "
                        "network fitted to this measurement from the classical start, stopped by the discrepancy "
                        "principle once the denoised image explains the data to their noise; once per file, on its "
                        "central slices; metrics: adaptation); " + _default_help("adapt", "none"))
    s.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                   help="--adapt lora: most adapter steps (each a forward and backward pass of the network); "
                        + _default_help("adapt_steps", "20"))
    s.add_argument("--samples", type=int, default=None,
                   help="posterior samples averaged (std needs >= 2; each costs the sampler's network evaluations "
                        "again); " + _default_help("samples", "1"))
    s.add_argument("--seed", type=int, default=0,
                   help="sampling seed; every slice draws from its own stream of it, so results do not depend on "
                        "--batch-size")
    p.add_argument("--complex-output", metavar="FILE.npy",
                   help="MRI, one measurement file: also write the complex image (S, N, N) complex64 .npy: the "
                        "magnitude result times the image phase the import folded into the coil maps")
    s.add_argument("--std-output", metavar="FILE",
                   help="write the per-pixel posterior std (physical units), calibrated: the samples' std times the "
                        "model's factor for the task (std_scale in metrics.json), so that |error| <= 1.645 std holds "
                        "about 90 %% of body pixels on the validation subjects; a folder in batch mode")
    s.add_argument("--disagreement-output", metavar="FILE",
                   help="score: write where the score image departs from the classical reconstruction (TV / CS at "
                        "the automatic weight, the sampler's start) more than the calibrated std allows: "
                        "|score − classical| / std per pixel, unitless; above 1.645 the prior added structure the "
                        "data do not demand (metrics: disagreement_fraction); needs 2 or more samples; a folder "
                        "in batch mode")
    p.add_argument("--residual-output", metavar="FILE.npz",
                   help="any method: write how well the image explains the data: the measured-row residual A x − y "
                        "(measurement space), its back-projection (image space, physical units) and chi2 (mean "
                        "|A x − y|² over the measured rows / σ_y², per slice and for the file; about 1 when the image "
                        "explains the data to their noise); a folder in batch mode (NAME_residual.npz)")
    add_threads_option(p)
    p.set_defaults(func=run)


def _weight_arg(text: str) -> float | str:
    """argparse type of --weight: 'auto' or a finite number >= 0."""
    from ..baselines import check_weight

    try:
        value = check_weight(text, "--weight")
    except ScoreReconError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--weight ")) from None
    assert value is not None
    return value


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ScoreReconError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.samples is not None:
        check_count(args.samples, "--samples", MAX_SAMPLES)
    if args.std_output and args.method != "score":
        raise ScoreReconError("--std-output needs --method score (classical methods have no posterior std)")
    if args.std_output and args.samples is not None and args.samples < 2:
        raise ScoreReconError("--std-output needs --samples 2 or more (the std of a single sample is undefined)")
    if getattr(args, "disagreement_output", None) and args.method == "score" and args.samples is not None \
            and args.samples < 2:
        raise ScoreReconError("--disagreement-output needs --samples 2 or more (it compares with the posterior std)")
    for flag in SCORE_FLAGS:
        if flag == "noise_std" and args.method in ("tv", "cs"):
            continue  # the automatic weight's σ_y
        if getattr(args, flag) is not None and args.method != "score":
            raise ScoreReconError(f"--{flag.replace('_', '-')} only applies to --method score")
    for flag, methods in (("weight", ("tv", "cs")), ("iters", ("tv", "cs", "sense")), ("regularizer", ("cs",))):
        if getattr(args, flag) is not None and args.method not in methods:
            raise ScoreReconError(f"--{flag} only applies to --method {' or '.join(methods)}")
    if args.noise_std is not None and args.method == "score" and (args.sampler or "proximal") != "proximal" \
            and args.init != "classical":
        raise ScoreReconError(f"--noise-std applies to the proximal sampler and to a classical start, not to "
                              f"--sampler {args.sampler} from noise; use --sampler proximal or --init classical, or "
                              "drop it")
    if args.noise_std is not None and args.method in ("tv", "cs") and args.weight not in (None, "auto"):
        raise ScoreReconError("--noise-std sets the noise level of --weight auto; drop it or drop the number "
                              "given to --weight")
    if args.iters is not None:
        check_count(args.iters, "--iters", MAX_SOLVER_ITERATIONS)
    if args.noise_std is not None and not math.isfinite(float(args.noise_std)):  # score: checked with its settings
        raise ScoreReconError(f"--noise-std must be a finite number, got {args.noise_std}")
    # no two outputs may be the same file: one would silently replace the other
    outputs = {"--output": args.output, "--std-output": args.std_output, "--metrics-json": args.metrics_json,
               "--complex-output": getattr(args, "complex_output", None),
               "--residual-output": getattr(args, "residual_output", None),
               "--disagreement-output": getattr(args, "disagreement_output", None)}
    seen: dict = {}
    for flag, value in outputs.items():
        if not value:
            continue
        key = os.path.abspath(os.path.expanduser(str(value)))
        if key in seen:
            raise ScoreReconError(f"{flag} {value} is the same path as {seen[key]}; give each output its own file")
        seen[key] = flag


# ---------------------------------------------------------------------------------- reconstruction
def _score_file(job: Job, engine: Engine, op: MeasurementOperator, batch_size: int, seed: int,
                progress: Progress, done_units: int) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """The score reconstruction of one file through :func:`~ScoreReconLib.reconstruction.reconstruct_volume`
    (settings resolved once per task, noise level and start weight once per file): (mean, std or None, result)."""
    from ..reconstruction import reconstruct_volume

    m = job.measurement
    S = m.n_slices
    units = S * engine.units_per_slice

    def on_step(done: int, total: int, message: str) -> None:
        progress.update(done_units + units * min(max(done, 0), total) // max(total, 1), message)

    def on_batch(done: int, total: int, message: str) -> None:
        progress.update(done_units + done * engine.units_per_slice, f"{job.name} slice {done}/{S}", force=True)

    res = reconstruct_volume(m.y_tensor(None, "cpu"), op, engine.prior, batch_size=batch_size,
                             settings=engine.settings_for(m.task), seed=seed, device=engine.device,
                             progress=on_batch, step_progress=on_step)
    return res.mean.float().cpu(), None if res.std is None else res.std.float().cpu(), res


def _classical_file(job: Job, engine: Engine, op: MeasurementOperator, batch_size: int, progress: Progress,
                    done_units: int) -> tuple[torch.Tensor, dict]:
    """The classical reconstruction of one file in batches (the automatic weight fixed once per file): (mean,
    what was fixed)."""
    from ..reconstruction import subset_operator

    m = job.measurement
    S = m.n_slices
    fixed = engine.classical_fixed(m.y_tensor(None, "cpu"), op)
    means = []
    for start in range(0, S, batch_size):
        idx = slice(start, min(S, start + batch_size))
        count = idx.stop - idx.start
        before = done_units + start * engine.units_per_slice

        def on_step(done: int, total: int, message: str, _before: int = before, _count: int = count) -> None:
            frac = min(max(done / max(total, 1), 0.0), 1.0)
            progress.update(_before + int(_count * engine.units_per_slice * frac), message)

        means.append(engine.run_classical(m.y_tensor(idx, engine.device), subset_operator(op, idx),
                                          on_step, fixed))
        progress.update(done_units + idx.stop * engine.units_per_slice, f"{job.name} slice {idx.stop}/{S}",
                        force=True)
    return torch.cat(means), fixed


def reconstruct_job(job: Job, engine: Engine, batch_size: int, seed: int, progress: Progress,
                    done_units: int, staging: Staging | None = None) -> dict[str, Any]:
    """Reconstruct one measurement file and write its outputs (into ``staging`` when given); return its
    metrics record."""
    m = job.measurement
    assert m is not None
    t0 = time.perf_counter()
    op = m.operator(engine.device)
    S = m.n_slices
    std = None
    if engine.method == "score":
        mean, std, result = _score_file(job, engine, op, batch_size, seed, progress, done_units)
        fixed = {"noise_std": result.settings["noise_std"], "init_weight": result.settings["init_weight"],
                 "weight_choice": result.weight_choice}
    else:
        mean, fixed = _classical_file(job, engine, op, batch_size, progress, done_units)
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(mean).all()):
        raise ScoreReconError(f"{engine.method} produced NaN/inf for {job.input}; check the measurement and settings")
    record: dict[str, Any] = {
        "input": str(job.input), "output": str(job.output), "task": m.task, "method": engine.method,
        "n_slices": S, "image_size": m.image_size, "seconds": seconds, "seconds_per_slice": seconds / S,
        "device": str(engine.device), "psnr": None, "ssim": None,
    }
    if engine.method == "score":
        settings = engine.settings_for(m.task)
        record.update({"nfe": result.nfe, "nfe_per_sample": result.nfe, "nfe_per_slice": result.nfe * settings.samples,
                       "seed": seed, "model": engine.model_name, **settings.record(),
                       "std_scale": result.settings["std_scale"], "precision": engine.prior.effective_precision})
        record.update({k: fixed[k] for k in ("init_weight", "noise_std") if fixed[k] is not None})
        if result.adaptation is not None:
            record["adaptation"] = result.adaptation
    elif engine.method in ("tv", "cs"):
        record["weight"] = fixed.get("weight", engine.options.get("weight"))
    from ..parameter_choice import check_discrepancy, measured_count

    # the file's data residual Λ(A x − y), computed once: the weight choice's final residual, the χ² check and
    # --residual-output all read it
    y_all = m.y_tensor(None, engine.device)
    with torch.no_grad():
        residual = op.mask_apply(op.A(mean.to(engine.device)) - y_all)
    if fixed.get("weight_choice") is not None:
        choice = dict(fixed["weight_choice"])
        if engine.method in ("tv", "cs") and choice.get("noise_std"):
            # the final image's own residual, over all slices, in units of σ_y²
            choice["final_residual"] = float(residual.abs().pow(2).sum()) / max(measured_count(op, y_all), 1) \
                / choice["noise_std"] ** 2
        record["weight_choice"] = choice
        if progress.fmt != "json":  # json: the file's one result line carries it as "weight_choice"
            progress.write(f"{job.name}: {choice_line(choice)}")
        if choice.get("warning"):
            print(f"scorerecon reconstruct: warning: {job.name}: {choice['warning']}", file=sys.stderr, flush=True)
    # the discrepancy principle as a check (χ² of the measured rows): neither the noise fitted nor signal left
    sigma = fixed.get("noise_std")
    if sigma is None and fixed.get("weight_choice"):
        sigma = fixed["weight_choice"].get("noise_std") or None
    check = check_discrepancy(op, mean.to(engine.device), y_all, sigma, residual=residual)
    record["chi2"], record["chi2_per_slice"] = check["residual"], check["residual_per_slice"]
    if engine.method == "score":
        record["discrepancy"] = {k: v for k, v in check.items() if k != "residual_per_slice"}
        if progress.fmt != "json" and check["residual"] is not None:
            progress.write(f"{job.name}: residual {check['residual']:.2f} σ_y² ({check['verdict']}; expected "
                           f"{check['band'][0]:g}–{check['band'][1]:g})")
        if check["warning"]:
            print(f"scorerecon reconstruct: warning: {job.name}: {check['warning']}", file=sys.stderr, flush=True)
    if job.residual_output is not None:
        path = job.residual_output if staging is None else staging.path_for(job.residual_output)
        write_residual(m, op, residual, check, path)
        record["residual_output"] = str(job.residual_output)
    if job.reference_x is not None:
        keep = None if m.metal_mask is None else ~torch.from_numpy(m.metal_mask).to(torch.bool)
        record.update(score_slices(mean, job.reference_x, keep).to_dict())
        if std is not None:  # the calibrated std against the true error: about 0.9 when it holds
            record["coverage90"] = band_coverage(mean, job.reference_x, std, keep)
        record["reference"] = str(job.reference)
    write_volume(m, mean, job.output if staging is None else staging.path_for(job.output))
    if job.complex_output is not None:
        write_complex(m, mean, job.complex_output if staging is None else staging.path_for(job.complex_output))
        record["complex_output"] = str(job.complex_output)
    if job.std_output is not None and std is not None:
        write_volume(m, std, job.std_output if staging is None else staging.path_for(job.std_output),
               is_std=True)
        record["std_output"] = str(job.std_output)
    if job.disagreement_output is not None:
        if std is None:
            raise ScoreReconError("--disagreement-output needs 2 or more posterior samples (it compares with the "
                                  "posterior std); pass --samples 2 or more")
        z = disagreement_map(op, y_all, mean, std, fixed, engine.device)
        record["disagreement_fraction"] = float((z > DISAGREEMENT_LEVEL).float().mean())
        arr = z.numpy()[:, 0].astype(np.float32)
        arr = arr if int(m.geometry.get("ndim", 3)) == 3 else arr[0]
        write_image(image_from_geometry(arr, m.geometry),
                    job.disagreement_output if staging is None else staging.path_for(job.disagreement_output))
        record["disagreement_output"] = str(job.disagreement_output)
    return record


# -------------------------------------------------------------------------------------------- run
def _device(args: argparse.Namespace, world: int, local_rank: int) -> torch.device:
    dev = resolve_device(args.device)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def _init_group(world: int) -> Any:
    import torch.distributed as dist

    if not dist.is_available():
        raise ScoreReconError("WORLD_SIZE > 1 but torch.distributed is unavailable; run without torchrun")
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise ScoreReconError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with torchrun")
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=1))
    return dist


def _summary(records: list[dict], method: str) -> dict[str, Any]:
    psnrs = [v for r in records for v in (r.get("psnr_per_slice") or [])]
    ssims = [v for r in records for v in (r.get("ssim_per_slice") or [])]
    tasks = sorted({r["task"] for r in records})
    return {
        "method": method, "task": tasks[0] if len(tasks) == 1 else tasks, "n_files": len(records),
        "n_slices": sum(r["n_slices"] for r in records),
        "psnr": float(np.mean(psnrs)) if psnrs else None, "ssim": float(np.mean(ssims)) if ssims else None,
        "seconds": float(sum(r["seconds"] for r in records)), "files": records,
    }


def _fmt(record: dict) -> str:
    text = f"wrote {record['output']} ({record['method']}, {record['n_slices']} slice(s), {record['seconds']:.2f} s"
    if record.get("psnr") is not None and math.isfinite(record["psnr"]):
        text += f", PSNR {record['psnr']:.2f} dB, SSIM {record['ssim']:.4f}"
    return text + ")"


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    if args.metrics_json and Path(args.metrics_json).is_dir():
        raise ScoreReconError(f"--metrics-json {args.metrics_json} is a folder; give a .json file name")
    rank, world, local_rank = dist_env()
    jobs, batch = plan_jobs(args)
    if world > 1:
        jobs = shard(jobs, rank, world) if batch else (jobs if rank == 0 else [])
    device = _device(args, world, local_rank)
    for job in jobs:  # validate everything before any work: files, references and their operators
        job.measurement = load_measurement(job.input)
        check_method(job.measurement.task, args.method)
        if job.complex_output is not None and job.measurement.task != "mri":
            raise ScoreReconError(f"--complex-output applies to MRI measurements, not {job.measurement.task}")
        job.measurement.operator("cpu")
        if job.reference is not None:
            grid: list[str] = []
            job.reference_x = reference_slices(read_image(job.reference), job.measurement, grid)
            for text in grid:
                print(f"scorerecon reconstruct: warning: {job.name}: {text}", file=sys.stderr, flush=True)
    measurements = [j.measurement for j in jobs if j.measurement is not None]
    engine = make_engine(args, measurements, device) if jobs else Engine(args.method, device)
    dist = _init_group(world) if (batch and world > 1) else None

    total = sum(m.n_slices for m in measurements) * engine.units_per_slice
    progress = Progress(total, engine.units_per_slice, args.progress_format, enabled=rank == 0,
                        steps=engine.method == "score")
    records: list[dict] = []
    done = 0
    staging = Staging()
    try:
        for job in jobs:
            record = reconstruct_job(job, engine, args.batch_size, args.seed, progress, done, staging)
            done += job.measurement.n_slices * engine.units_per_slice
            records.append(record)
        if args.metrics_json and dist is None and records:  # staged too: images and metrics move together
            save_json(_summary(records, args.method) if batch else records[0],
                      staging.path_for(Path(args.metrics_json)))
        staging.commit()  # every file succeeded: move all outputs into place
    finally:
        staging.discard()
        progress.close()
    for record in records:
        progress.write(_fmt(record), record)

    if dist is not None:
        gathered: list[list[dict] | None] = [None] * world
        dist.all_gather_object(gathered, records)
        records = sorted((r for part in gathered for r in (part or [])), key=lambda r: r["input"])
        dist.destroy_process_group()
    if args.metrics_json and dist is not None and rank == 0:  # torchrun: rank 0 writes the gathered records
        save_json(_summary(records, args.method), args.metrics_json)
    return 0
