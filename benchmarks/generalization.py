"""Generalisation benchmark (issue 9, item 6): every task on every held-out image, with noise, with and
without the inverse crime, against classical methods whose weights are tuned honestly by
leave-one-subject-out validation. Writes the "generalization-ct" / "generalization-mri" sections of
RESULTS.md and a JSON of every per-image record next to it (``benchmarks/generalization.json``).

Run from the repository root after ``scorerecon prepare-data --output data``::

    python benchmarks/generalization.py --quick --threads 1        # smoke test, a few minutes
    python benchmarks/generalization.py --threads 1                 # the full run (hours on 2 cores)
    python benchmarks/generalization.py --ct-model runs/patch-ct --mri-model runs/patch-mri \\
        --variant plain='{}' --variant tvinit='{"tv_weight": 0.01, "init": "classical", "t_start": 0.5}'

Cases: sparse-view CT (23 and 8 of N views), limited-angle CT (90° arc), metal CT (2 inserted objects,
scored outside the metal), MRI 4× / 8× 1-D equispaced (fastMRI centres: 8 % / 4 % of the columns) and
8× 2-D Poisson disc, on every held-out image of the modality (``data/heldout/{ct,mri}``; a 3-D volume
gives ``--slices`` axial slices spread over its foreground and counts as one subject: the mean of its
slices). Relative Gaussian noise ``--noise`` (σ = noise · max|y|, on the measured entries, exactly as
``evaluation.make_case`` adds it).

Settings (rows of the tables):

- *same operator (inverse crime)*: the 128² image (resampled keeping the physical aspect, as
  ``evaluation.load_slices`` does) is measured with the 128² operator that reconstructs it.
- *fine-grid measurement (no inverse crime)*: the measurement is simulated from a finer image of the
  same field of view — the native image when it has at least 2·128 pixels across (the 512² head CT,
  the 256² training CT), else the native image resampled to 2·128 — with its own operator. CT: Joseph
  projection on the fine grid at the 128² operator's angles, fine detector bins integrated over each
  coarse bin, line integrals rescaled from fine to coarse pixel lengths. MRI: the centred orthonormal
  k-space of the fine image, its central 128² block, scaled by 128/F, with the phase that moves the
  fine grid's FFT origin onto the coarse one. Metal is inserted on the fine grid (the 128² mask,
  nearest-neighbour upsampled). Then the same noise. The 128² operator reconstructs; the target is the
  128² image. A sanity table compares FBP / zero-filled of both measurements.
- *native size*: held-out images at least ``--native-min`` (256) pixels across (the 512² CTs, the 484²
  and 1024² MRs; ``--native-images`` picks some) also at their own size with that size's operator (N
  angles for N pixels). Whole-image priors trained at 128² are skipped there (noted in the output).
- *noise-free* (``--noise-free``): the same-operator setting without noise.

Classical rows: FBP (LI-MAR for metal) / zero-filled; TV (CT) or CS (MRI; TV-regularised unless
``--cs-regularizer wavelet``) at the library's default weight; at the weight chosen by
leave-one-subject-out (LOSO) validation — for each held-out test subject, the weight of a log-spaced
grid around the default with the best mean PSNR over all *other* subjects (each subject's slices
averaged first): the other held-out subjects of the modality plus ``--val-slices`` slices of every
training volume in ``data/{ct,mri}``, never the test subject; and, labelled optimistic, the grid weight
best on the test subject itself ("oracle"). At native size the default is ``--native-tuning transfer``:
the weight that LOSO chose at 128² for that task and subject (weights are relative to ‖A‖²); ``loso``
repeats the validation at native size on upsampled validation images (≈ 8 min per 512² TV solve on 2
cores).

ScoreRecon rows: the prior's own sampler settings unless ``--score-args`` / ``--variant`` say otherwise
(JSON dicts passed as ``**extra`` to ``reconstruct``; the key "method" picks the sampler). With several
variants, a "validated variant" column picks, for each test subject, the variant with the best mean
PSNR on the other held-out subjects (training volumes are not used for this: the prior has seen them).

Metrics: PSNR and SSIM over [0, 1] via ``metrics.score_slices`` (both images clamped to [0, 1],
metal pixels excluded).

Noise: make_case's σ = noise · max|y| is, for MRI, relative to the k-space DC, so 0.01 is heavy and
image dependent (zero-filled PSNR drops 3–13 dB; bright training templates get relatively more noise
than the held-out T1); ``--mri-noise`` sets MRI's level separately (e.g. 0.001).

Cost on 2 shared cores, 1 thread (measured 2026-12-01 with two training jobs on the same cores, load ~5):
a 128² TV solve (300 PDHG iterations) 3–5 s, a 128² CS solve ~0.4 s, a 512² TV solve (512 angles) 6.5–10 min,
CS at 484² / 1024² 6 / 32 s; the 512² system matrices are built once (10 s for 128 angles, fine-grid
setting; 50 s and 5 GB RSS for 512 angles, native) and then cached on disk (0.5 GB and 1.9 GB). With the
held-out set of 2026-12-01 (CT: 4 slices, three of them 512²; MR: 4 subjects, 6 slices) and one
whole-image variant at ~0.3 s per network evaluation (51 per slice): ScoreRecon ~25 min (68 slices),
classical at 128² ~20–30 min (~750 solves), native size ~2.5–4 h (≤ 24 TV solves at 512², the bulk):
about 3.5–4.5 h in all; ``--native-images head_ct`` about 1.5 h, ``--no-native`` about 50 min. The JSON is
checkpointed after every task and setting.
"""

from __future__ import annotations

import os
import sys


def _early_threads() -> None:
    """Honour ``--threads N`` before numpy / torch start their thread pools."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--threads=") else (
            argv[i + 1] if a == "--threads" and i + 1 < len(argv) else None)
        if value and value.isdigit():
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                os.environ.setdefault(var, value)


_early_threads()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from ScoreReconLib.baselines import DEFAULTS as CLASSICAL_DEFAULTS  # noqa: E402
from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import Normalization, ct_normalization, mr_normalization, read_image, save_json  # noqa: E402
from ScoreReconLib.errors import ScoreReconError  # noqa: E402
from ScoreReconLib.evaluation import METAL_HU, EvalCase, list_images, make_case, resize_square  # noqa: E402
from ScoreReconLib.measurement import add_measurement_noise, crop_kspace  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.operators.base import MeasurementOperator  # noqa: E402
from ScoreReconLib.operators.ct import JosephProjector, ParallelBeamGeometry  # noqa: E402
from ScoreReconLib.operators.mri import fft2c, ifft2c  # noqa: E402
from ScoreReconLib.utils import resolve_device  # noqa: E402
from ScoreReconLib.validation import leave_one_subject_out, pick_best  # noqa: E402


# ------------------------------------------------------------------------------------------ setup
@dataclass(frozen=True)
class Task:
    key: str
    label: str
    task: str
    options: tuple  # (name, value) pairs, so the dataclass stays hashable

    def opts(self) -> dict:
        """A fresh options dict (make_case pops from it)."""
        return dict(self.options)


TASKS = {
    "CT": (
        Task("sparse23", "sparse-view CT, 23 views", "sparse-ct", (("views", 23),)),
        Task("sparse8", "sparse-view CT, 8 views", "sparse-ct", (("views", 8),)),
        Task("limited90", "limited-angle CT, 90° arc", "limited-angle-ct", (("arc", 90.0),)),
        Task("metal", "metal CT, 2 inserted objects (scored outside the metal)", "metal-ct", (("n_metal", 2),)),
    ),
    "MR": (
        Task("mri4x", "MRI 4×, 1-D equispaced, 8 % centre", "mri",
             (("acceleration", 4), ("center_fraction", 0.08), ("mask", "equispaced"))),
        Task("mri8x", "MRI 8×, 1-D equispaced, 4 % centre", "mri",
             (("acceleration", 8), ("center_fraction", 0.04), ("mask", "equispaced"))),
        Task("mri8x-poisson", "MRI 8×, 2-D Poisson disc", "mri", (("acceleration", 8), ("mask", "poisson"))),
    ),
}
QUICK_TASKS = ("sparse23", "mri4x")
QUICK_IMAGES = ("pydicom_head_ct", "itk_t1_head")

SAME, FINE, NATIVE, CLEAN = "same", "fine", "native", "clean"
SETTING_LABELS = {
    SAME: "same operator (inverse crime)",
    FINE: "fine-grid measurement (no inverse crime)",
    NATIVE: "native size, same operator (inverse crime)",
    CLEAN: "same operator, noise-free (inverse crime)",
}
MOD_NAMES = {"CT": "ct", "MR": "mri"}


@dataclass
class Slice:
    """One 2-D test or validation image at its native resolution, normalised like load_slices does."""

    name: str  # e.g. "itk_t1_head.nrrd[56]"
    subject: str  # the file it came from: one subject
    role: str  # "heldout" or "validation" (a training volume)
    array: np.ndarray
    spacing: tuple[float, float]

    def at(self, size: int) -> torch.Tensor:
        """(1, 1, size, size), exactly as evaluation.load_slices resamples."""
        return resize_square(self.array, size, self.spacing)

    @property
    def native_side(self) -> int:
        """Side of the square, square-pixel image resize_square builds before resizing."""
        h, w = self.array.shape
        sx, sy = self.spacing
        if abs(sx - sy) > 1e-3 * max(sx, sy):
            step = min(sx, sy)
            h, w = max(1, round(h * sy / step)), max(1, round(w * sx / step))
        return max(h, w)


def load_subject(path: Path, modality: str, role: str, per_volume: int, norm_ct: Normalization,
                 min_foreground: float = 0.15) -> list[Slice]:
    """The slices evaluation.load_slices would take from ``path`` (same normalisation and slice picks)."""
    img = read_image(path)
    norm = norm_ct if modality == "CT" else mr_normalization(img.array)
    arr = norm.forward(img.array).astype(np.float32)
    if modality == "CT":
        arr = np.clip(arr, 0.0, None)
    spacing = (float(img.spacing[0]), float(img.spacing[1])) if len(img.spacing) >= 2 else (1.0, 1.0)
    if arr.ndim == 2:
        return [Slice(path.name, path.name, role, arr, spacing)]
    fg = (arr > 0.1).reshape(arr.shape[0], -1).mean(1)
    good = np.flatnonzero(fg >= min_foreground)
    if good.size == 0:
        return []
    lo, hi = good[0], good[-1]
    span = hi - lo
    picks = np.unique(np.round(np.linspace(lo + 0.2 * span, hi - 0.2 * span, per_volume)).astype(int))
    return [Slice(f"{path.name}[{z}]", path.name, role, np.ascontiguousarray(arr[z]), spacing) for z in picks]


def case_seed(s: Slice, task: Task) -> int:
    """Stable per (image, task): the same noise and metal whichever other images a run includes."""
    return zlib.crc32(f"{s.name}|{task.key}".encode()) % 100_000


# ------------------------------------------------------------------------- cross-grid measurement
def detector_resampling(n_fine: int, size_fine: int, n_coarse: int, size_coarse: int) -> torch.Tensor:
    """(n_coarse, n_fine) weights averaging fine detector bins over each coarse bin.

    Both detectors are centred on the rotation centre with bins one pixel of their own grid wide;
    weight = overlap length / coarse bin width (positions in units of the field of view)."""
    u = (np.arange(n_fine) - (n_fine - 1) / 2.0) / size_fine
    v = (np.arange(n_coarse) - (n_coarse - 1) / 2.0) / size_coarse
    lo = np.maximum(u[None, :] - 0.5 / size_fine, v[:, None] - 0.5 / size_coarse)
    hi = np.minimum(u[None, :] + 0.5 / size_fine, v[:, None] + 0.5 / size_coarse)
    return torch.from_numpy((np.clip(hi - lo, 0.0, None) * size_coarse).astype(np.float32))


def ct_fine_sinogram(op: MeasurementOperator, x_fine: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) sinogram of the fine image on ``op``'s detector, in ``op``'s pixel units.

    The fine image is projected by a Joseph projector of its own grid at exactly ``op``'s angles;
    line integrals (in fine pixel lengths) become coarse pixel lengths by × N/F."""
    g = op.geometry
    n, f = g.image_size, x_fine.shape[-1]
    gf = ParallelBeamGeometry(f, n_angles=g.n_angles, arc=g.arc)
    sino = JosephProjector(gf, x_fine.device).forward(x_fine)
    w = detector_resampling(gf.n_det, f, g.n_det, n).to(sino.device)
    return (sino @ w.T) * (n / f)


def mri_fine_kspace(op: MeasurementOperator, x_fine: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) k-space on ``op``'s grid from the fine image's centred orthonormal FFT
    (:func:`ScoreReconLib.measurement.crop_kspace`)."""
    return crop_kspace(fft2c(x_fine.to(torch.float32)), op.image_size)


def fine_size(s: Slice, size: int) -> int:
    n = s.native_side
    return n if n >= 2 * size else 2 * size


def fine_case(s: Slice, task: Task, size: int, noise: float, seed: int) -> tuple[EvalCase, dict]:
    """The no-inverse-crime case of ``s`` and its sanity numbers (noise-free FBP / zero-filled of both)."""
    x = s.at(size)
    same = make_case(s.name, x, task.task, seed=seed, noise=0.0, **task.opts())
    op = same.op
    f = fine_size(s, size)
    xf = s.at(f)
    if task.task == "metal-ct":
        metal = F.interpolate((~same.score_mask).float(), size=(f, f), mode="nearest") > 0.5
        xf = torch.where(metal, torch.tensor(float(ct_normalization().forward(METAL_HU))), xf)
    full = mri_fine_kspace(op, xf) if task.task == "mri" else ct_fine_sinogram(op, xf)
    y_clean = op.mask_apply(full)
    y, _ = add_measurement_noise(y_clean, op.mask, noise, seed + 1, per_slice=False)  # as make_case's noise
    rel = float((y_clean - same.y).abs().norm() / same.y.abs().norm())
    base = "zero-filled" if task.task == "mri" else "fbp"
    sanity = {"fine_size": f, "rel_diff_y": rel,
              "baseline_same": score_slices(classical_reconstruct(base, same.y, op), x, same.score_mask).means,
              "baseline_cross": score_slices(classical_reconstruct(base, y_clean, op), x, same.score_mask).means}
    if task.task != "metal-ct":  # fully sampled data: checks scaling and alignment without undersampling
        inv = (lambda k: ifft2c(k).real) if task.task == "mri" else op.T_inv
        sanity["full_same"] = score_slices(inv(op.T(x)), x, None).means
        sanity["full_cross"] = score_slices(inv(full), x, None).means
    return EvalCase(s.name, x, op, y, same.score_mask), sanity


# --------------------------------------------------------------------------------- running methods
@dataclass
class Ctx:
    modality: str
    task: Task
    setting: str
    size: int


def record(ctx: Ctx, s: Slice, method: str, psnr: float, ssim: float, seconds: float, **extra) -> dict:
    return {"modality": ctx.modality, "task": ctx.task.key, "task_label": ctx.task.label, "setting": ctx.setting,
            "size": ctx.size, "image": s.name, "subject": s.subject, "role": s.role, "method": method,
            "psnr": float(psnr), "ssim": float(ssim), "seconds": float(seconds), **extra}


def run_classical(case: EvalCase, method: str, device: torch.device, **kw) -> tuple[float, float, float]:
    op = case.op.to(device) if device.type != "cpu" else case.op
    t0 = time.perf_counter()
    xr = classical_reconstruct(method, case.y.to(device), op, **kw).cpu()
    sec = time.perf_counter() - t0
    p, s = score_slices(xr, case.x, case.score_mask).means
    return p, s, sec


def weight_grid(default: float, points: int, decades: float) -> list[float]:
    """``points`` log-spaced weights over ``decades`` centred on ``default`` (always included)."""
    if points <= 1:
        return [default]
    exps = np.linspace(-decades / 2, decades / 2, points)
    grid = {float(f"{default * 10 ** e:.3g}") for e in exps} | {default}
    return sorted(grid)


# ------------------------------------------------------------------------------------ ScoreRecon
@dataclass
class Variant:
    name: str
    method: str
    kwargs: dict


def parse_variants(args) -> list[Variant]:
    try:
        base = json.loads(args.score_args) if args.score_args else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--score-args is not valid JSON ({exc}); give a dict, "
                         "e.g. '{\"tv_weight\": 0.01}'") from None
    if not isinstance(base, dict):
        raise SystemExit("--score-args must be a JSON object (dict)")
    specs = args.variant or [("(--score-args)" if base else "(prior defaults)", "{}")]
    out = []
    for spec in specs:
        name, text = spec if isinstance(spec, tuple) else (spec.split("=", 1) + ["{}"])[:2]
        name = name.strip()
        try:
            extra = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--variant {name}: not valid JSON ({exc}); use NAME='{{\"key\": value}}'") from None
        if not name or not isinstance(extra, dict):
            raise SystemExit(f"--variant {spec!r}: use NAME='{{json dict}}'")
        kw = {**base, **extra}
        method = kw.pop("method", kw.pop("sampler", args.sampler))
        if args.steps is not None:
            kw.setdefault("steps", args.steps)
        out.append(Variant(name, str(method), kw))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"--variant names must differ, got {names}")
    return out


def _rejected(v: Variant, exc: Exception) -> SystemExit:
    from ScoreReconLib.sampling import SamplerSettings

    fields = ", ".join(f.name for f in dataclasses.fields(SamplerSettings))
    return SystemExit(f"reconstruct() rejected the settings of ScoreRecon variant '{v.name}' {v.kwargs} "
                      f"(method {v.method}): {exc}\nThis ScoreReconLib's sampler settings are: {fields}. "
                      "Drop the key from --score-args / --variant, or use a ScoreReconLib that has it.")


def check_variants(variants: list[Variant], prior, task: str) -> dict[str, dict]:
    """Resolve each variant's settings now (fail before hours of work); returns them for the header."""
    from ScoreReconLib.reconstruction import resolve_settings

    out = {}
    for v in variants:
        kw = dict(v.kwargs)
        kw.pop("samples", None)  # a reconstruct() argument, not a sampler setting
        try:
            st = resolve_settings(v.method, prior, kw.pop("steps", None), kw.pop("lam", None), kw.pop("snr", None),
                                  task=task, **kw)
        except (TypeError, ScoreReconError) as exc:
            raise _rejected(v, exc) from None
        out[v.name] = {"method": v.method, **dataclasses.asdict(st)}
    return out


def run_variant(case: EvalCase, prior, v: Variant, samples: int | None, seed: int,
                device) -> tuple[float, float, float, int]:
    from ScoreReconLib.reconstruction import recommended_samples, reconstruct

    kwargs = dict(v.kwargs)
    if samples is None:  # the CLI's default: the model's recommended count for this sampler and task
        samples = recommended_samples(prior, v.method, case.op.task)
    samples = int(kwargs.pop("samples", samples))  # a variant may set its own posterior sample count
    try:
        res = reconstruct(case.y, case.op, prior, method=v.method, samples=samples, seed=seed, device=device,
                          **kwargs)
    except TypeError as exc:
        raise _rejected(v, exc) from None
    p, s = score_slices(res.mean, case.x, case.score_mask).means
    return p, s, res.seconds, int(res.nfe)


# -------------------------------------------------------------------------------------- main loop
class Bench:
    def __init__(self, args, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.records: list[dict] = []
        self.choices: list[dict] = []
        self.sanity: list[dict] = []
        self.notes: list[str] = []
        self.meta: dict = {}

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str, modality: str | None = None) -> None:
        entry = {"modality": modality, "text": msg}
        if entry not in self.notes:
            self.notes.append(entry)
            self.log("note: " + msg)

    # -------------------------------------------------------------------------------- one group
    def classical_group(self, ctx: Ctx, tests: list[tuple[Slice, EvalCase]], pool: list[tuple[Slice, EvalCase]],
                        method: str, default: float, grid: list[float] | None, transfer: dict | None, **kw) -> None:
        """Baseline and default weight on ``tests``; the grid on ``pool`` (if given) for the LOSO choice and the
        oracle; or, with ``transfer`` ({subject: weight}), that weight as the tuned one."""
        cls = method.upper()
        base = "zero-filled" if ctx.modality == "MR" else "fbp"
        base_label = ("zero-filled" if ctx.modality == "MR"
                      else "FBP (LI-MAR)" if ctx.task.task == "metal-ct" else "FBP")
        where = f"{ctx.task.key} {ctx.setting} {ctx.size}²"
        for s, c in tests:
            p, q, sec = run_classical(c, base, self.device)
            self.records.append(record(ctx, s, base_label, p, q, sec))
        grid_recs: list[dict] = []
        for s, c in (pool if grid is not None else []):
            for w in grid:
                p, q, sec = run_classical(c, method, self.device, weight=w, **kw)
                grid_recs.append(record(ctx, s, f"{cls} grid", p, q, sec, weight=w))
            best = max((r for r in grid_recs if r["image"] == s.name), key=lambda r: r["psnr"])
            self.log(f"  {where} {s.name}: best {cls} w={best['weight']:.3g} {best['psnr']:.2f} dB")
        self.records.extend(grid_recs)

        done = {(r["image"], r["weight"]): r for r in grid_recs}

        def weighted(s: Slice, c: EvalCase, w: float, label: str) -> dict:
            """The result at weight ``w`` (from the grid, or computed once) relabelled ``label``."""
            if (s.name, w) not in done:
                p, q, sec = run_classical(c, method, self.device, weight=w, **kw)
                done[(s.name, w)] = record(ctx, s, label, p, q, sec, weight=w)
            return {**done[(s.name, w)], "method": label}

        for subj in dict.fromkeys(s.subject for s, _ in tests):
            mine = [(s, c) for s, c in tests if s.subject == subj]
            for s, c in mine:
                self.records.append(weighted(s, c, default, f"{cls} default"))
                if self.args.auto:
                    self.records.append(self.auto_record(ctx, s, c, method, **kw))
            choice = None
            if transfer is not None:
                if subj in transfer:
                    choice = {"kind": f"{cls} tuned (LOSO at {self.args.size}², transferred)", "weight": transfer[subj]}
                else:
                    self.note(f"{where}: no {self.args.size}² LOSO weight to transfer for {subj}", ctx.modality)
            elif grid_recs:
                best = leave_one_subject_out(grid_recs, subj)
                if best is None:
                    self.note(f"{where}: no validation image besides {subj}, so no tuned weight", ctx.modality)
                else:
                    w, vp, val_subjects = best
                    choice = {"kind": f"{cls} tuned (LOSO)", "weight": w, "validation_psnr": vp,
                              "validation_subjects": val_subjects,
                              "at_grid_edge": len(grid) > 1 and w in (grid[0], grid[-1])}
                    if choice["at_grid_edge"]:
                        self.note(f"{where}: the LOSO {cls} weight {w:.3g} for {subj} lies at the edge of the "
                                  "grid; widen --grid-decades", ctx.modality)
            if choice is not None:
                self.choices.append({"modality": ctx.modality, "task": ctx.task.key, "setting": ctx.setting,
                                     "size": ctx.size, "subject": subj, **choice})
                for s, c in mine:
                    self.records.append(weighted(s, c, choice["weight"], f"{cls} tuned (LOSO)"))
            own = [r for r in grid_recs if r["subject"] == subj]
            if own:
                w, _ = pick_best(own, "weight")
                self.choices.append({"modality": ctx.modality, "task": ctx.task.key, "setting": ctx.setting,
                                     "size": ctx.size, "subject": subj, "kind": f"{cls} oracle", "weight": w})
                if self.args.oracle:
                    self.records.extend({**r, "method": f"{cls} oracle (optimistic)"} for r in own if r["weight"] == w)

    def auto_record(self, ctx: Ctx, s: Slice, c: EvalCase, method: str, **kw) -> dict:
        """The automatic weight (:func:`~ScoreReconLib.parameter_choice.choose_weight`) on one test image: the
        choice's time included, as a user's ``--weight auto`` run pays it."""
        from ScoreReconLib.parameter_choice import choose_weight

        op = c.op.to(self.device) if self.device.type != "cpu" else c.op
        t0 = time.perf_counter()
        choice = choose_weight(c.y.to(self.device), op, method, regularizer=kw.get("regularizer", "tv"))
        xr = choice.image if choice.image is not None else classical_reconstruct(
            method, c.y.to(self.device), op, weight=choice.weight, **kw)
        sec = time.perf_counter() - t0
        p, q = score_slices(xr.cpu(), c.x, c.score_mask).means
        self.log(f"  {ctx.task.key} {ctx.setting} {s.name}: {method.upper()} auto {choice.line()} → {p:.2f} dB")
        return record(ctx, s, f"{method.upper()} auto", p, q, sec, weight=choice.weight, rule=choice.rule,
                      noise_std=choice.noise_std)

    def score_group(self, ctx: Ctx, tests: list[tuple[Slice, EvalCase]], prior, variants: list[Variant]) -> None:
        if prior is None:
            return
        name = prior.config.get("name", "prior")
        if not getattr(prior, "any_size", False) and prior.image_size != ctx.size:
            self.note(f"{name} is a whole-image {prior.image_size}² prior: ScoreRecon skipped at {ctx.size}²",
                      ctx.modality)
            return
        for s, c in tests:
            seed = self.args.seed + case_seed(s, ctx.task)
            for v in variants:
                p, q, sec, nfe = run_variant(c, prior, v, self.args.samples, seed, self.device)
                self.records.append(record(ctx, s, f"ScoreRecon {v.name}", p, q, sec, nfe=nfe, seed=seed,
                                           variant=v.name))
                self.log(f"  {ctx.task.key} {ctx.setting} {ctx.size}² {s.name}: ScoreRecon {v.name} {p:.2f} dB "
                         f"{q:.3f} ({nfe} NFE, {sec:.1f} s)")
        if len(variants) > 1:
            mine = [r for r in self.records if r.get("variant") and r["task"] == ctx.task.key
                    and r["setting"] == ctx.setting and r["size"] == ctx.size and r["modality"] == ctx.modality]
            for subj in dict.fromkeys(s.subject for s, _ in tests):
                val = [r for r in mine if r["subject"] != subj]
                choice = pick_best(val, "variant")
                if choice is None:
                    self.note(f"{ctx.task.key} {ctx.setting}: no other held-out subject to choose a variant for {subj}",
                              ctx.modality)
                    continue
                vname, vp = choice
                self.choices.append({"modality": ctx.modality, "task": ctx.task.key, "setting": ctx.setting,
                                     "size": ctx.size, "subject": subj, "kind": "ScoreRecon validated variant",
                                     "variant": vname, "validation_psnr": vp,
                                     "validation_subjects": sorted({r["subject"] for r in val})})
                for r in mine:
                    if r["subject"] == subj and r["variant"] == vname and r["method"] == f"ScoreRecon {vname}":
                        self.records.append({**r, "method": "ScoreRecon validated variant", "variant": vname})

    # ------------------------------------------------------------------------------ one modality
    def run_modality(self, modality: str, prior, variants: list[Variant], heldout: list[Slice],
                     validation: list[Slice]) -> None:
        a = self.args
        noise = a.noise if modality == "CT" or a.mri_noise is None else a.mri_noise
        self.meta.setdefault("noise", {})[modality] = noise
        native_noise = noise if a.native_noise is None else a.native_noise
        method = "tv" if modality == "CT" else "cs"
        kw = {} if modality == "CT" else {"regularizer": a.cs_regularizer}
        dkey = "tv" if modality == "CT" else f"cs-{a.cs_regularizer}"
        default = float(CLASSICAL_DEFAULTS[dkey][modality]["weight"])
        grid = weight_grid(default, a.grid_points, a.grid_decades)
        self.meta.setdefault("classical", {})[modality] = {"method": method, **kw, "default_weight": default,
                                                           "grid": grid}
        tasks = [t for t in TASKS[modality] if a.only is None or t.key in a.only or MOD_NAMES[modality] in a.only]
        settings = [SAME] + ([FINE] if a.fine else []) + ([CLEAN] if a.noise_free else [])
        native_tests = [s for s in heldout if s.native_side >= a.native_min and (
            a.native_images is None or any(k in s.name for k in a.native_images))] if a.native else []
        for task in tasks:
            t_task = time.perf_counter()
            for setting in settings:
                ctx = Ctx(modality, task, setting, a.size)
                self.log(f"{modality} {task.label} — {SETTING_LABELS[setting]} at {a.size}²")
                pool = []
                for s in heldout + validation:
                    seed = case_seed(s, task)
                    if setting == FINE:
                        c, sanity = fine_case(s, task, a.size, noise, seed)
                        self.sanity.append({"modality": modality, "task": task.key, "image": s.name, "role": s.role,
                                            **sanity})
                        if s.role == "heldout":
                            self.log(f"  sanity {s.name}: {task.key} baseline same-grid "
                                     f"{sanity['baseline_same'][0]:.2f} dB, cross-grid "
                                     f"{sanity['baseline_cross'][0]:.2f} dB (noise-free; fine "
                                     f"{sanity['fine_size']}², |Δy|/|y| {sanity['rel_diff_y']:.3f})")
                        if sanity["baseline_same"][0] - sanity["baseline_cross"][0] > 3.0:
                            self.note(f"{task.key} {s.name}: cross-grid baseline is "
                                      f"{sanity['baseline_same'][0] - sanity['baseline_cross'][0]:.1f} dB below the "
                                      "same-grid one; check the fine-grid simulation")
                    else:
                        x = s.at(a.size)
                        c = make_case(s.name, x, task.task, seed=seed, noise=0.0 if setting == CLEAN else noise,
                                      **task.opts())
                    pool.append((s, c))
                tests = [(s, c) for s, c in pool if s.role == "heldout"]
                self.classical_group(ctx, tests, pool, method, default, grid, None, **kw)
                self.score_group(ctx, tests, prior, variants)
                self.checkpoint()
            for s_native in sorted({s.native_side for s in native_tests}):
                ctx = Ctx(modality, task, NATIVE, s_native)
                mine = [s for s in native_tests if s.native_side == s_native]
                self.log(f"{modality} {task.label} — native {s_native}² ({', '.join(s.name for s in mine)}), "
                         f"tuning: {a.native_tuning}")
                tests = [(s, make_case(s.name, s.at(s_native), task.task, seed=case_seed(s, task),
                                       noise=native_noise, **task.opts())) for s in mine]
                if a.native_tuning == "loso":
                    others = [s for s in heldout + validation if s not in mine]
                    pool = tests + [(s, make_case(s.name, s.at(s_native), task.task, seed=case_seed(s, task),
                                                  noise=native_noise, **task.opts())) for s in others]
                    self.classical_group(ctx, tests, pool, method, default, grid, None, **kw)
                else:
                    transfer = {c["subject"]: c["weight"] for c in self.choices
                                if c["modality"] == modality and c["task"] == task.key and c["setting"] == SAME
                                and c["kind"].endswith("tuned (LOSO)")}
                    self.classical_group(ctx, tests, tests, method, default, grid if a.native_oracle else None,
                                         transfer, **kw)
                self.score_group(ctx, tests, prior, variants)
                self.checkpoint()
            self.log(f"{modality} {task.label}: {time.perf_counter() - t_task:.0f} s")

    def checkpoint(self) -> None:
        if self.args.json_path:
            save_json({"meta": self.meta, "records": self.records, "choices": self.choices, "sanity": self.sanity,
                       "notes": self.notes, "complete": False}, self.args.json_path)


# ------------------------------------------------------------------------------------ reporting
def _fmt(pq: tuple[float, float] | None, weight: float | None = None) -> str:
    if pq is None:
        return "–"
    cell = f"{pq[0]:.2f} / {pq[1]:.3f}"
    return cell + (f" ({weight:.2g})" if weight is not None else "")


def _score_column(methods: list[str]) -> str | None:
    if "ScoreRecon validated variant" in methods:
        return "ScoreRecon validated variant"
    return next((m for m in methods if m.startswith("ScoreRecon ")), None)


def task_table(recs: list[dict], label: str, cls: str) -> str:
    """One task: rows setting × subject plus a mean row per setting; cells PSNR / SSIM (weight)."""
    order = ["FBP", "FBP (LI-MAR)", "zero-filled", f"{cls} default", f"{cls} auto", f"{cls} tuned (LOSO)",
             f"{cls} oracle (optimistic)"]
    present = list(dict.fromkeys(r["method"] for r in recs if r["method"] != f"{cls} grid"))
    methods = [m for m in order if m in present] + [m for m in present if m not in order]
    score_col = _score_column(methods)
    tuned_col = f"{cls} tuned (LOSO)" if f"{cls} tuned (LOSO)" in methods else None
    head = ["setting", "image"] + methods + (["Δ PSNR / SSIM (ScoreRecon − tuned)"] if score_col and tuned_col else [])
    lines = [f"**{label}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["setting"], r["size"]) for r in recs))
    for setting, size in keys:
        rs = [r for r in recs if r["setting"] == setting and r["size"] == size]
        subjects = list(dict.fromkeys(r["subject"] for r in rs if r["role"] == "heldout"))
        per: dict[str, dict[str, tuple]] = {}
        for subj in subjects:
            row = per.setdefault(subj, {})
            for m in methods:
                mm = [r for r in rs if r["subject"] == subj and r["method"] == m]
                if mm:
                    ws = {r.get("weight") for r in mm}
                    row[m] = (float(np.mean([r["psnr"] for r in mm])), float(np.mean([r["ssim"] for r in mm])),
                              ws.pop() if len(ws) == 1 else None, len(mm))
        sname = f"{SETTING_LABELS[setting]}, {size}²"
        show_w = {f"{cls} auto", f"{cls} tuned (LOSO)", f"{cls} oracle (optimistic)"}
        for subj in subjects:
            row = per[subj]
            n = max(v[3] for v in row.values())
            cells = [sname, subj + (f" ({n} slices)" if n > 1 else "")]
            for m in methods:
                v = row.get(m)
                cells.append(_fmt(v[:2] if v else None, v[2] if v and m in show_w else None))
            if score_col and tuned_col:
                cells.append(_delta(row.get(score_col), row.get(tuned_col)))
            lines.append("| " + " | ".join(cells) + " |")
        mean = {m: tuple(np.mean([per[s][m][:2] for s in subjects if m in per[s]], axis=0))
                for m in methods if any(m in per[s] for s in subjects)}
        cells = [sname, f"**mean of {len(subjects)} image(s)**"] + [_fmt(mean.get(m)) for m in methods]
        if score_col and tuned_col:
            cells.append(_delta(mean.get(score_col), mean.get(tuned_col)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delta(a, b) -> str:
    if a is None or b is None:
        return "–"
    return f"{a[0] - b[0]:+.2f} dB / {a[1] - b[1]:+.3f}"


def summary_table(recs: list[dict], cls: str) -> str:
    """Mean over images per task × setting: baseline, default, tuned, oracle, ScoreRecon and the margin."""
    lines = ["| task | setting | images | baseline | " + f"{cls} default | {cls} auto | {cls} tuned (LOSO) | "
             f"{cls} oracle | ScoreRecon | Δ PSNR (ScoreRecon − oracle) | Δ PSNR ({cls} auto − oracle) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tkey in dict.fromkeys(r["task"] for r in recs):
        for setting, size in dict.fromkeys((r["setting"], r["size"]) for r in recs if r["task"] == tkey):
            rs = [r for r in recs if r["task"] == tkey and r["setting"] == setting and r["size"] == size
                  and r["role"] == "heldout"]
            methods = list(dict.fromkeys(r["method"] for r in rs))
            subjects = list(dict.fromkeys(r["subject"] for r in rs))

            def m_of(name, rs=rs, subjects=subjects):
                vals = [[(r["psnr"], r["ssim"]) for r in rs if r["subject"] == s and r["method"] == name]
                        for s in subjects]
                vals = [np.mean(v, axis=0) for v in vals if v]
                return tuple(np.mean(vals, axis=0)) if vals else None

            base = next((m for m in ("FBP", "FBP (LI-MAR)", "zero-filled") if m in methods), None)
            sc = _score_column(methods)
            tuned = m_of(f"{cls} tuned (LOSO)")
            score = m_of(sc) if sc else None
            oracle = m_of(f"{cls} oracle (optimistic)")
            auto = m_of(f"{cls} auto")
            lines.append(f"| {rs[0]['task_label']} | {SETTING_LABELS[setting]}, {size}² | {len(subjects)} | "
                         f"{_fmt(m_of(base) if base else None)} | {_fmt(m_of(f'{cls} default'))} | {_fmt(auto)} | "
                         f"{_fmt(tuned)} | {_fmt(oracle)} | {_fmt(score)} | "
                         f"{(f'{score[0] - oracle[0]:+.2f} dB' if score and oracle else '–')} | "
                         f"{(f'{auto[0] - oracle[0]:+.2f} dB' if auto and oracle else '–')} |")
    return "\n".join(lines)


def sanity_table(rows: list[dict], modality: str) -> str:
    base = "zero-filled" if modality == "MR" else "FBP"
    lines = [f"Fine-grid simulation check (noise-free, held-out images): {base} of the same-grid vs the cross-grid "
             f"measurement, PSNR / SSIM against the 128² target; 'full data' = every angle / all of k-space.", "",
             f"| task | image | fine grid | {base} same grid | {base} cross grid | full data same grid | "
             "full data cross grid | ‖y_cross − y_same‖ / ‖y_same‖ |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["role"] != "heldout":
            continue
        lines.append(f"| {r['task']} | {r['image']} | {r['fine_size']}² | {_fmt(r['baseline_same'])} | "
                     f"{_fmt(r['baseline_cross'])} | {_fmt(r.get('full_same'))} | {_fmt(r.get('full_cross'))} | "
                     f"{r['rel_diff_y']:.4f} |")
    return "\n".join(lines)


def cost_table(recs: list[dict]) -> str:
    """Mean wall seconds per slice (and NFE) of each method at each size, over every slice it ran on."""
    lines = ["Cost per slice (wall seconds, mean over all runs of the method at that size; grid = one weight):", "",
             "| method | size | runs | seconds / slice | NFE |", "|---|---|---|---|---|"]
    gridded = {r["size"] for r in recs if r["method"].endswith(" grid")}
    keys = dict.fromkeys((r["method"], r["size"]) for r in recs
                         if not r["method"].endswith(("(optimistic)", "validated variant"))
                         and not (r["size"] in gridded and r["method"].endswith((" default", "tuned (LOSO)"))))
    for method, size in keys:
        rs = [r for r in recs if r["method"] == method and r["size"] == size]
        nfe = sorted({r["nfe"] for r in rs if r.get("nfe") is not None})
        lines.append(f"| {method} | {size}² | {len(rs)} | {np.mean([r['seconds'] for r in rs]):.1f} | "
                     f"{', '.join(map(str, nfe)) or '–'} |")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=60).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prior_description(prior, settings: dict[str, dict]) -> str:
    cfg = prior.config
    kind = getattr(prior, "kind", "whole")
    patch = f", patch size {prior.patch_size}" if getattr(prior, "patch_size", None) else ""
    steps = cfg.get("total_steps", cfg.get("steps", "?"))
    sde = cfg.get("sde", {})
    text = (f"`{cfg.get('name', '?')}` ({cfg.get('path', '')}): kind {kind}{patch}, {prior.modality}, trained at "
            f"{prior.image_size}², {steps} training steps, SDE {sde.get('type', '?')} "
            f"σ_max {sde.get('sigma_max', '?')}")
    for name, st in settings.items():
        keep = {k: v for k, v in st.items() if v is not None}
        text += f"; variant **{name}**: `{json.dumps(keep, sort_keys=True)}`"
    return text


def modality_markdown(bench: Bench, modality: str, header: str) -> str:
    recs = [r for r in bench.records if r["modality"] == modality]
    if not recs:
        return ""
    cls = "TV" if modality == "CT" else "CS"
    parts = [header, "", "**Summary** (mean over held-out images; a volume counts once, as the mean of its slices; "
             "cells PSNR dB / SSIM)", "", summary_table(recs, cls), ""]
    for tkey in dict.fromkeys(r["task"] for r in recs):
        trs = [r for r in recs if r["task"] == tkey]
        parts += [task_table(trs, trs[0]["task_label"], cls), ""]
    ch = [c for c in bench.choices if c["modality"] == modality and "oracle" not in c["kind"]]
    if ch:
        parts += ["Validation choices: task, setting, test subject → choice (its mean PSNR on the validation "
                  "subjects)", ""]
        for c in ch:
            what = f"w = {c['weight']:.3g}" if "weight" in c else f"variant {c['variant']}"
            edge = " **at grid edge**" if c.get("at_grid_edge") else ""
            val = (f" ({c['validation_psnr']:.2f} dB on {', '.join(c['validation_subjects'])})"
                   if "validation_subjects" in c else "")
            parts.append(f"- {c['task']}, {c['setting']} {c['size']}², {c['subject']} → {c['kind']}: {what}{edge}{val}")
        parts.append("")
    parts += [cost_table(recs), ""]
    san = [r for r in bench.sanity if r["modality"] == modality]
    if san:
        parts += [sanity_table(san, modality), ""]
    notes = [n["text"] for n in bench.notes if n["modality"] in (None, modality)]
    if notes:
        parts += ["Notes: " + " ".join(f"{n}." for n in notes)]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- main
def _data_root() -> Path:
    for cand in (ROOT / "data", ROOT.parent / "data"):
        if (cand / "heldout").is_dir():
            return cand
    return ROOT / "data"


def _variant_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError("use NAME='{json dict}', e.g. tvinit='{\"init\": \"classical\"}'")
    name, js = text.split("=", 1)
    return name, js


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = _data_root()
    g = ap.add_argument_group("data and cases")
    g.add_argument("--data", default=str(data), help="prepared data root with heldout/{ct,mri} and ct/, mri/ "
                   f"training volumes (default {data})")
    g.add_argument("--only", default=None, help="comma list of task keys (" + ", ".join(
        t.key for ts in TASKS.values() for t in ts) + ") or modalities (ct, mri)")
    g.add_argument("--images", default=None, help="comma list of name fragments: use only the held-out images "
                   "matching one (as tests and as validation)")
    g.add_argument("--slices", type=int, default=3, help="axial slices per held-out 3-D volume (default 3)")
    g.add_argument("--val-slices", type=int, default=2, help="validation slices per training volume (default 2)")
    g.add_argument("--size", type=int, default=128, help="target grid (default 128)")
    g.add_argument("--noise", type=float, default=0.01, help="relative measurement noise, σ = noise · max|y| "
                   "(make_case's convention; default 0.01)")
    g.add_argument("--mri-noise", type=float, default=None, help="MRI's relative noise if it should differ from "
                   "--noise (max|y| is the k-space DC there, so 0.01 is heavy: zero-filled PSNR drops 3–13 dB)")
    g.add_argument("--noise-free", action="store_true", help="also the noise-free same-operator setting")
    g.add_argument("--fine", action=argparse.BooleanOptionalAction, default=True,
                   help="the fine-grid (no inverse crime) setting (default on)")
    g.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                   help="also held-out images of at least --native-min pixels at native size (default on)")
    g.add_argument("--native-min", type=int, default=256)
    g.add_argument("--native-images", default=None, help="comma list of name fragments: native size only for these "
                   "held-out images (default all of at least --native-min; each 512² CT costs ~1 h of TV on 2 cores)")
    g.add_argument("--native-tuning", choices=("transfer", "loso"), default="transfer",
                   help="native-size weight: the 128² LOSO choice (default) or LOSO at native size (slow)")
    g.add_argument("--native-oracle", action="store_true", help="also the oracle grid at native size (slow)")
    g.add_argument("--native-noise", type=float, default=None, help="relative noise at native size (default: the "
                   "modality's); σ = noise · max|y| grows with N in image units (MRI ∝ N, CT ≈ ∝ √N)")
    g = ap.add_argument_group("classical methods")
    g.add_argument("--grid-points", type=int, default=7, help="weights in the grid (default 7)")
    g.add_argument("--grid-decades", type=float, default=3.0, help="decades the grid spans around the default "
                   "(default 3: ×10^-1.5 … ×10^1.5)")
    g.add_argument("--cs-regularizer", choices=("tv", "wavelet"), default="tv")
    g.add_argument("--auto", action=argparse.BooleanOptionalAction, default=True,
                   help="the automatic weight column (--weight auto; default on)")
    g.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                   help="show the optimistic oracle column (default on)")
    g = ap.add_argument_group("ScoreRecon")
    g.add_argument("--model", action="append", default=[], help="a prior (checkpoint folder or default-ct / "
                   "default-mri); its modality decides whether it replaces --ct-model or --mri-model")
    g.add_argument("--ct-model", default="default-ct")
    g.add_argument("--mri-model", default="default-mri")
    g.add_argument("--sampler", default="proximal", help="sampler unless a variant says 'method' (default proximal)")
    g.add_argument("--steps", type=int, default=None, help="sampler steps (default: the prior's)")
    g.add_argument("--score-args", default=None, help="JSON dict passed as **extra to reconstruct for every variant, "
                   "e.g. '{\"tv_weight\": 0.01, \"init\": \"classical\", \"t_start\": 0.5}'")
    g.add_argument("--variant", action="append", type=_variant_arg, default=None, metavar="NAME=JSON",
                   help="a named ScoreRecon variant (repeatable); its JSON overrides --score-args")
    g.add_argument("--samples", type=int, default=None,
                   help="posterior samples averaged (default: the model's recommendation, as the CLI)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-score", action="store_true", help="classical methods only")
    g = ap.add_argument_group("run")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (use 1 on a shared machine)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    g.add_argument("--out", default=None, help="Markdown file whose sections are written (default "
                   "benchmarks/RESULTS.md; with --quick a temporary file)")
    g.add_argument("--json", dest="json_path", default=None, help="records JSON (default generalization.json "
                   "beside --out)")
    g.add_argument("--section-suffix", default="", help="appended to the RESULTS.md section names (e.g. -fine), so "
                   "runs of other settings keep their own sections")
    g.add_argument("--quick", action="store_true", help=f"smoke test: images {', '.join(QUICK_IMAGES)} (1 slice), "
                   f"tasks {', '.join(QUICK_TASKS)}, 3-point grid, 1 validation slice per volume, 3 sampler steps, "
                   "no native size")
    args = ap.parse_args(argv)
    if args.quick:
        args.only = args.only or ",".join(QUICK_TASKS)
        args.images = args.images or ",".join(QUICK_IMAGES)
        args.slices, args.val_slices, args.grid_points, args.grid_decades = 1, 1, 3, 1.0
        args.steps = 3 if args.steps is None else args.steps
        args.native = False
    args.only = None if args.only is None else {v.strip() for v in args.only.split(",") if v.strip()}
    known = {t.key for ts in TASKS.values() for t in ts} | set(MOD_NAMES.values())
    if args.only and args.only - known:
        ap.error(f"--only: unknown {sorted(args.only - known)}; choose from {sorted(known)}")
    args.images = None if args.images is None else [v.strip() for v in args.images.split(",") if v.strip()]
    args.native_images = (None if args.native_images is None
                          else [v.strip() for v in args.native_images.split(",") if v.strip()])
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "scorerecon-generalization-quick" / "RESULTS.md") \
            if args.quick else str(_results.RESULTS)
    if args.json_path is None:
        args.json_path = str(Path(args.out).with_name("generalization.json"))
    if (args.samples is not None and args.samples < 1) or args.slices < 1 or args.val_slices < 0 \
            or args.grid_points < 1:
        ap.error("--samples, --slices, --grid-points must be ≥ 1 and --val-slices ≥ 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    data = Path(args.data)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, device)
    variants = parse_variants(args)
    modalities = [m for m in ("CT", "MR") if args.only is None or any(
        t.key in args.only for t in TASKS[m]) or MOD_NAMES[m] in args.only]

    from ScoreReconLib.networks import load_prior

    models = {"CT": args.ct_model, "MR": args.mri_model}
    priors: dict[str, object] = {}
    if not args.no_score:
        for spec in args.model:
            p = load_prior(spec, device=device)
            models[p.modality] = spec
            priors[p.modality] = p
        for m in modalities:
            if m not in priors:
                priors[m] = load_prior(models[m], device=device)
            if priors[m].modality != m:
                raise SystemExit(f"--{MOD_NAMES[m]}-model {models[m]} is a {priors[m].modality} prior")
    command = "python benchmarks/generalization.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    commit = git_commit()
    machine = (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), device {device}, Python {platform.python_version()}")
    bench.meta.update({"command": command, "commit": commit, "machine": machine,
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": {
                           k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                       "variants": [dataclasses.asdict(v) for v in variants], "priors": {}})
    sections = {}
    for modality in modalities:
        sub = MOD_NAMES[modality]
        files = list_images(data / "heldout" / sub)
        if args.images:
            files = [f for f in files if any(k in f.name for k in args.images)]
        if not files:
            bench.note(f"no held-out {modality} image matches --images", modality)
            continue
        norm_ct = priors["CT"].normalization if modality == "CT" and "CT" in priors else ct_normalization()
        heldout = [s for f in files for s in load_subject(f, modality, "heldout", args.slices, norm_ct)]
        validation = []
        if args.val_slices > 0 and (data / sub).is_dir():
            validation = [s for f in list_images(data / sub)
                          for s in load_subject(f, modality, "validation", args.val_slices, norm_ct)]
        prior = priors.get(modality)
        settings_desc = {}
        if prior is not None:
            first = next(t for t in TASKS[modality] if args.only is None or t.key in args.only
                         or sub in args.only)
            settings_desc = check_variants(variants, prior, first.task)
            bench.meta["priors"][modality] = {"name": prior.config.get("name"), "path": prior.config.get("path"),
                                              "kind": getattr(prior, "kind", "whole"),
                                              "patch_size": getattr(prior, "patch_size", None),
                                              "image_size": prior.image_size, "settings": settings_desc}
        bench.meta.setdefault("images", {})[modality] = {
            "heldout": [s.name for s in heldout], "validation": [s.name for s in validation]}
        bench.log(f"{modality}: held-out {[s.name for s in heldout]}; validation volumes "
                  f"{[s.name for s in validation]}")
        bench.run_modality(modality, prior, variants, heldout, validation)
        cls = "TV" if modality == "CT" else f"CS ({args.cs_regularizer})"
        cl = bench.meta["classical"][modality]
        native_how = ("the 128² LOSO choice, transferred" if args.native_tuning == "transfer"
                      else "LOSO at native size on upsampled validation images")
        header = "\n".join([
            f"Commit `{commit}`; {machine}; started {bench.meta['date']}.",
            "",
            f"Held-out subjects: {', '.join(dict.fromkeys(s.subject for s in heldout))} "
            f"(slices: {', '.join(s.name for s in heldout)}). Noise {bench.meta['noise'][modality]:g} × max|y| "
            "(Gaussian, measured entries; as evaluation.make_case). Seeds: per image and "
            f"task (crc32), ScoreRecon seed {args.seed} + that.",
            f"Classical: {cls}, default weight {cl['default_weight']:.3g}; grid "
            f"{', '.join(f'{w:.3g}' for w in cl['grid'])}. **Tuned (LOSO)**: for each test subject the grid weight "
            "with the best mean PSNR over all *other* subjects (subjects weighted equally) — the other held-out "
            "subject(s) plus training-volume "
            f"slices {', '.join(s.name for s in validation) or '(none)'}; the test subject is never used. "
            "**Oracle**: best grid weight on the test subject itself (optimistic, as in the issue's earlier table)."
            + (f" Native size: tuned weight {native_how}; relative noise "
               f"{args.native_noise if args.native_noise is not None else bench.meta['noise'][modality]:g}, which in "
               "image units grows with N (MRI ∝ N, CT ≈ ∝ √N), so compare native rows with each other, not with "
               "128² rows." if args.native else ""),
            "ScoreRecon: " + (prior_description(prior, settings_desc) if prior is not None else "not run") + "; "
            + (f"{args.samples} sample(s)." if args.samples is not None
               else "the model's recommended posterior samples (the CLI default).")
            + (" **Validated variant**: for each test subject the variant with the best "
               "mean PSNR on the other held-out subjects." if len(variants) > 1 else ""),
            "Metrics: PSNR / SSIM on [0, 1] (both clamped; metal pixels excluded). Native-size numbers are "
            "at that size and not comparable with the 128² rows.",
        ])
        sections[f"generalization-{sub}{args.section_suffix}"] = modality_markdown(bench, modality, header)
    wall = time.perf_counter() - t_start
    bench.meta["wall_seconds"] = wall
    _results.RESULTS = Path(args.out)
    for name, md in sections.items():
        if md:
            _results.update_section(name, md + f"\n\nWall time of the whole run: {wall / 60:.1f} min.", command)
            print(f"\n{md}\n")
    save_json({"meta": bench.meta, "records": bench.records, "choices": bench.choices, "sanity": bench.sanity,
               "notes": bench.notes, "complete": True}, args.json_path)
    print(f"wrote sections {', '.join(sections)} of {args.out} and records to {args.json_path} "
          f"({wall / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
