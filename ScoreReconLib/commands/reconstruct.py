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
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baselines import METHODS as CLASSICAL_METHODS
from ..baselines import methods_for
from ..data import (
    IMAGE_SUFFIXES,
    WRITE_SUFFIXES,
    check_writable_suffix,
    image_from_geometry,
    normalization_mismatch,
    read_image,
    save_json,
    write_image,
)
from ..distributed import dist_env
from ..errors import ScoreReconError
from ..limits import MAX_SAMPLES, MAX_SOLVER_ITERATIONS, check_count
from ..measurement import Measurement, load_measurement, reference_slices
from ..metrics import band_coverage, score_slices
from ..operators import TASKS
from ..operators.base import MeasurementOperator
from ..settings import ADAPT_MODES, INITS, SAMPLER_NAMES, USER_OPTIONS
from ..threads import add_threads_option
from ..utils import check_output_folder, check_output_path, make_temp_beside, resolve_device
from .options import add_device_option, add_trust_option

#: every --method
METHODS = (*CLASSICAL_METHODS, "score")
#: methods that fit each task
METHODS_FOR_TASK: dict[str, tuple[str, ...]] = {task: (*methods_for(task), "score") for task in TASKS}
#: --sampler choices of the score method
SAMPLERS = SAMPLER_NAMES
#: options of the score method only: --model and the score settings (:data:`~ScoreReconLib.settings.USER_OPTIONS`;
#: --sampler sets ``method``); --samples is accepted and ignored by the classical methods
SCORE_FLAGS = ("model", *("sampler" if k == "method" else k for k in USER_OPTIONS if k != "samples"))
PROGRESS_FORMATS = ("tqdm", "json", "none")
#: progress units per slice for classical methods (per-mille of a slice's iterations)
CLASSICAL_UNITS = 1000


def _shipped_recommendations() -> dict[str, dict]:
    """``recommended`` of the shipped default models' config.json (read without torch, for ``--help``)."""
    from ..resources import resources_dir

    out = {}
    for name in ("default-ct", "default-mri"):
        try:
            config = json.loads((resources_dir() / "models" / name / "config.json").read_text())
            out[name] = dict(config.get("recommended") or {})
        except (OSError, ValueError, ScoreReconError, AttributeError):  # a build without the shipped models
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
                        "(the task's noise-free weight, raised by the discrepancy principle until the residual "
                        "matches the noise; once per file from its central slices); the choice is printed and "
                        "recorded in --metrics-json, and passing that number back reproduces the image")
    c.add_argument("--iters", type=int, default=None, help="PDHG iterations (default 300)")
    c.add_argument("--regularizer", choices=("tv", "wavelet", "sigpy-wavelet"), default=None,
                   help="cs: TV (default), L1-Haar (own) or sigpy-wavelet (sigpy's L1-wavelet recon, needs sigpy)")
    s = p.add_argument_group("score method")
    s.add_argument("--model", default=None,
                   help="default-ct, default-mri or a checkpoint folder (default: the task's default model)")
    add_trust_option(s)
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


# ------------------------------------------------------------------------------------- planning
@dataclass
class Job:
    """One measurement file to reconstruct and where its results go."""

    name: str
    input: Path
    output: Path
    std_output: Path | None = None
    reference: Path | None = None
    measurement: Measurement | None = None
    reference_x: torch.Tensor | None = None
    complex_output: Path | None = None
    residual_output: Path | None = None
    disagreement_output: Path | None = None


def shard(items: list, rank: int, world: int) -> list:
    """The items rank ``rank`` of ``world`` processes: ``items[rank::world]``."""
    return list(items[rank::world])


def _strip_suffix(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES + (".npz",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _find_reference(folder: Path, name: str) -> Path:
    hits = sorted(p for p in folder.iterdir()
                  if _strip_suffix(p) == name and (p.is_dir() or p.suffix) and not p.name.lower().endswith(".npz"))
    if not hits:
        raise ScoreReconError(f"no reference image named {name}.* in {folder}; add it or drop --reference")
    return hits[0]


def plan_jobs(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """Validate paths and list the jobs; returns (jobs, batch_mode). Writes nothing."""
    inp, out = Path(args.input), Path(args.output)
    if not inp.exists():
        raise ScoreReconError(f"input {inp} does not exist; check the path")
    ref = Path(args.reference) if args.reference else None
    if ref is not None and not ref.exists():
        raise ScoreReconError(f"reference {ref} does not exist; check the path")
    std = Path(args.std_output) if args.std_output else None
    if args.metrics_json:
        check_output_path(args.metrics_json, "--metrics-json")
    resid = Path(args.residual_output) if getattr(args, "residual_output", None) else None
    disagree = Path(args.disagreement_output) if getattr(args, "disagreement_output", None) and \
        args.method == "score" else None
    if getattr(args, "disagreement_output", None) and args.method != "score":
        print(f"scorerecon reconstruct: note: --disagreement-output needs --method score (it compares the score "
              f"image with the classical one using the posterior std); not written for --method {args.method}",
              file=sys.stderr, flush=True)
    cplx = Path(args.complex_output) if getattr(args, "complex_output", None) else None
    if cplx is not None and (inp.is_dir() or cplx.suffix.lower() != ".npy" or cplx.is_dir()):
        raise ScoreReconError("--complex-output takes one .npy file name and one measurement file (not a folder)")
    if cplx is not None:
        check_output_path(cplx, "--complex-output")
    if not inp.is_dir():
        if out.is_dir():
            raise ScoreReconError(f"--output {out} is a folder; give an image file name such as {out / 'recon.nrrd'}")
        check_writable_suffix(out)
        check_output_path(out, "--output")
        if std is not None:
            check_writable_suffix(std)
            check_output_path(std, "--std-output")
        if resid is not None:
            if resid.suffix.lower() != ".npz" or resid.is_dir():
                raise ScoreReconError(f"--residual-output {resid} must be a .npz file name")
            check_output_path(resid, "--residual-output")
        if disagree is not None:
            check_writable_suffix(disagree)
            check_output_path(disagree, "--disagreement-output")
        return [Job(_strip_suffix(inp), inp, out, std, ref, complex_output=cplx, residual_output=resid,
                    disagreement_output=disagree)], False
    files = sorted(p for p in inp.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
    if not files:
        raise ScoreReconError(f"folder {inp} holds no .npz measurement files; make them with 'scorerecon simulate'")
    if out.exists() and not out.is_dir():
        raise ScoreReconError(f"--input is a folder, so --output must be a folder too, but {out} is a file")
    if std is not None and std.exists() and not std.is_dir():
        raise ScoreReconError(f"--input is a folder, so --std-output must be a folder too, but {std} is a file")
    if ref is not None and not ref.is_dir():
        raise ScoreReconError(f"--input is a folder, so --reference must be a folder of NAME.* images, not {ref}")
    if resid is not None and resid.exists() and not resid.is_dir():
        raise ScoreReconError(f"--input is a folder, so --residual-output must be a folder too, but {resid} is a file")
    check_output_folder(out, "--output")
    if std is not None:
        check_output_folder(std, "--std-output")
    if resid is not None:
        check_output_folder(resid, "--residual-output")
    if disagree is not None:
        check_output_folder(disagree, "--disagreement-output")
    suffix = args.output_suffix if args.output_suffix.startswith(".") else "." + args.output_suffix
    if suffix.lower() not in WRITE_SUFFIXES:
        raise ScoreReconError(f"--output-suffix {suffix} cannot be written; use one of {', '.join(WRITE_SUFFIXES)}")
    jobs = []
    for f in files:
        name = _strip_suffix(f)
        jobs.append(Job(name, f, out / f"{name}{suffix}", None if std is None else std / f"{name}_std{suffix}",
                        None if ref is None else _find_reference(ref, name),
                        residual_output=None if resid is None else resid / f"{name}_residual.npz",
                        disagreement_output=None if disagree is None else disagree / f"{name}_disagreement{suffix}"))
    return jobs, True


def _weight_arg(text: str) -> float | str:
    """argparse type of --weight: 'auto' or a finite number >= 0."""
    from ..baselines import check_weight

    try:
        value = check_weight(text, "--weight")
    except ScoreReconError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--weight ")) from None
    assert value is not None
    return value


def check_method(task: str, method: str) -> None:
    """Refuse a method that does not fit ``task`` (e.g. zero-filled on CT), naming those that do."""
    fits = METHODS_FOR_TASK.get(task, ())
    if method not in fits:
        raise ScoreReconError(f"--method {method} does not fit task {task}; use one of {', '.join(fits)}")


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


# -------------------------------------------------------------------------------------- progress
class Progress:
    """Overall progress in work units (slices, or slices × sampler steps): a tqdm bar on a terminal, plain lines
    at intervals when stderr is a log or a pipe, or JSON lines (``--progress-format json``).

    Positions are whole slices and, within a slice, whole sampler steps ("slice 2/5, step 8/24"), never fractions.
    """

    #: seconds between two plain lines (stderr not a terminal)
    plain_interval = 10.0

    def __init__(self, total_units: int, units_per_slice: int, fmt: str, enabled: bool = True,
                 stream=None, steps: bool = True) -> None:
        #: units are sampler steps (shown as "step j/K"); else fractions of a slice's work (shown in %)
        self.steps = steps
        self.total = max(int(total_units), 1)
        self.per_slice = max(int(units_per_slice), 1)
        self.stream = sys.stderr if stream is None else stream
        self.fmt = fmt if enabled else "none"
        if self.fmt == "tqdm" and not _is_terminal(self.stream):
            self.fmt = "plain"
        self.done = 0
        self.last = 0.0
        self.start = time.monotonic()
        #: seconds between two reports (the bar and JSON lines are throttled)
        self.interval = 0.2
        self.bar = None
        if self.fmt == "tqdm":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(self.position(), refresh=False)

    @property
    def slices(self) -> int:
        return max(1, self.total // self.per_slice)

    def position(self) -> str:
        """Where the run is: "3/10 slices", or "slice 2/5, step 8/24" within a slice of several steps."""
        if self.per_slice == 1 or self.done >= self.total:
            return f"{min(self.done // self.per_slice, self.slices)}/{self.slices} slices"
        index, step = divmod(self.done, self.per_slice)
        within = f"step {step}/{self.per_slice}" if self.steps else f"{100 * step // self.per_slice} %"
        return f"slice {index + 1}/{self.slices}, {within}"

    def update(self, done_units: int, message: str = "", force: bool = False) -> None:
        """Report ``done_units``; throttled to :attr:`interval` s (plain lines: :attr:`plain_interval` s) unless
        finished (JSON and the bar also when ``force``)."""
        done = min(int(done_units), self.total)
        now = time.monotonic()
        if done == self.done and (not force or self.fmt == "plain") and self.last:
            return
        self.done = done
        finished = done == self.total
        if self.fmt == "plain":
            if not (finished or now - self.last >= self.plain_interval):
                return
        elif not (force or finished or now - self.last >= self.interval):
            return
        self.last = now
        if self.fmt == "json":
            line = {"progress": self.done, "total": self.total}
            if message:
                line["message"] = message
            print(json.dumps(line), flush=True)
        elif self.fmt == "plain":
            elapsed = now - self.start
            frac = self.done / self.total
            left = f", ~{elapsed * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 else ""
            print(f"progress: {100 * frac:3.0f} % {self.position()} ({elapsed:.0f} s{left})"
                  + (f" {message}" if message else ""), file=self.stream, flush=True)
        elif self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(self.position() + (f" {message}" if message else ""), refresh=False)
            self.bar.refresh()

    def write(self, text: str, record: dict | None = None) -> None:
        if self.fmt == "json":
            print(json.dumps({"result": record or {"message": text}}), flush=True)
        elif self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------- reconstruction
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
    prior = load_prior(model, device=device, trust_unverified=args.trust_unverified)
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


class Staging:
    """Outputs written to temporary files beside their targets and moved into place only by :meth:`commit`,
    so a run that fails (or is stopped) on its third file leaves none of the first two behind."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []

    def path_for(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_beside(final, "".join(final.suffixes))
        self.staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.staged:
            os.replace(tmp, final)
        self.staged = []

    def discard(self) -> None:
        for tmp, _ in self.staged:
            if tmp.exists():
                tmp.unlink()
        self.staged = []


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
                       "std_scale": result.settings["std_scale"]})
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
            progress.write(f"{job.name}: {_choice_line(choice)}")
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
        _write_residual(m, op, residual, check, path)
        record["residual_output"] = str(job.residual_output)
    if job.reference_x is not None:
        keep = None if m.metal_mask is None else ~torch.from_numpy(m.metal_mask).to(torch.bool)
        record.update(score_slices(mean, job.reference_x, keep).to_dict())
        if std is not None:  # the calibrated std against the true error: about 0.9 when it holds
            record["coverage90"] = band_coverage(mean, job.reference_x, std, keep)
        record["reference"] = str(job.reference)
    _write(m, mean, job.output if staging is None else staging.path_for(job.output))
    if job.complex_output is not None:
        _write_complex(m, mean, job.complex_output if staging is None else staging.path_for(job.complex_output))
        record["complex_output"] = str(job.complex_output)
    if job.std_output is not None and std is not None:
        _write(m, std, job.std_output if staging is None else staging.path_for(job.std_output),
               is_std=True)
        record["std_output"] = str(job.std_output)
    if job.disagreement_output is not None:
        if std is None:
            raise ScoreReconError("--disagreement-output needs 2 or more posterior samples (it compares with the "
                                  "posterior std); pass --samples 2 or more")
        z = _disagreement(op, y_all, mean, std, fixed, engine.device)
        record["disagreement_fraction"] = float((z > DISAGREEMENT_LEVEL).float().mean())
        arr = z.numpy()[:, 0].astype(np.float32)
        arr = arr if int(m.geometry.get("ndim", 3)) == 3 else arr[0]
        write_image(image_from_geometry(arr, m.geometry),
                    job.disagreement_output if staging is None else staging.path_for(job.disagreement_output))
        record["disagreement_output"] = str(job.disagreement_output)
    return record


#: |score − classical| / std above which the prior added structure the data do not demand (the 90 % band)
DISAGREEMENT_LEVEL = 1.645


def _disagreement(op: MeasurementOperator, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fixed: dict,
                  device: torch.device) -> torch.Tensor:
    """|score − classical| / calibrated std per pixel (S, 1, N, N), on CPU; the classical image is the sampler's
    start: TV (CT) / CS-TV (MRI) at the file's automatic weight."""
    from ..sampling import classical_init

    with torch.no_grad():
        classical = classical_init(op, y, fixed.get("init_weight"), None, fixed.get("noise_std")).float().cpu()
    floor = 1e-6 * float(max(mean.abs().max(), 1e-6))
    return (mean.float() - classical).abs() / std.float().clamp(min=floor)


def _choice_line(choice: dict) -> str:
    """One line for an automatic weight choice record (:meth:`WeightChoice.to_dict`)."""
    res = choice.get("final_residual", choice.get("residual"))
    res_text = "n/a" if res is None else f"{res:.2f} σ_y²"
    text = (f"auto weight {choice['weight']:.3g} ({choice['rule']}; residual {res_text}, target "
            f"{choice['target']:.2f} σ_y²; σ_y {choice['noise_std']:.4g} {choice['noise_source']}; "
            f"{choice['solves']} solve(s), {choice['seconds']:.1f} s)")
    return text


def _write(m: Measurement, x: torch.Tensor, path: Path, is_std: bool = False) -> None:
    """Normalised (S,1,N,N) → physical units with the measurement's geometry, written atomically."""
    a = x.numpy()[:, 0].astype(np.float32)
    norm = m.normalization
    phys = a * (norm.high - norm.low) if is_std else norm.inverse(a)
    arr = phys if int(m.geometry.get("ndim", 3)) == 3 else phys[0]
    write_image(image_from_geometry(np.asarray(arr, dtype=np.float32), m.geometry), path)


def _write_residual(m: Measurement, op: MeasurementOperator, r: torch.Tensor, check: dict, path: Path) -> None:
    """``--residual-output``: the measured-row residual ``r = Λ(A x − y)`` in measurement space (the measurement's full
    layout: zeros where nothing was measured; complex k-space for MRI), its back-projection ``Aᴴ Λ(A x − y)``
    (S, N, N) in the image's physical units per pixel, and χ² (per slice and for the file; NaN for noise-free
    data) in one .npz, written atomically."""
    from ..utils import atomic_path

    with torch.no_grad():
        back = op.A_adjoint(r).real.float()[:, 0] * float(m.normalization.high - m.normalization.low)
    res = r.cpu().numpy()
    res = res.astype(np.complex64) if np.iscomplexobj(res) else res.astype(np.float32)
    per_slice = check.get("residual_per_slice")
    chi2 = np.asarray(per_slice if per_slice is not None else [np.nan] * res.shape[0], dtype=np.float64)
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, residual=res, backprojection=back.cpu().numpy().astype(np.float32), chi2_per_slice=chi2,
                 chi2=np.float64(check["residual"] if check.get("residual") is not None else np.nan),
                 noise_std=np.float64(check.get("noise_std") or 0.0))


def _write_complex(m: Measurement, x: torch.Tensor, path: Path) -> None:
    """The magnitude result (S,1,N,N) times ``e^{iφ}`` of the operator's folded-in phase (0 without one), in
    physical units, as an (S, N, N) (or (N, N) for a 2-D image) complex64 .npy written atomically."""
    from ..utils import atomic_path

    if m.task != "mri":
        raise ScoreReconError(f"--complex-output applies to MRI measurements, not {m.task}")
    mag = np.asarray(m.normalization.inverse(x.numpy()[:, 0]), dtype=np.float32)
    phase = m.operator_arrays.get("phase")
    cplx = mag.astype(np.complex64) if phase is None else (mag * np.exp(1j * phase[:, 0])).astype(np.complex64)
    arr = cplx if int(m.geometry.get("ndim", 3)) == 3 else cplx[0]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


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
