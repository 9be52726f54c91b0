"""Evaluate reconstruction methods on held-out images: simulate measurements, reconstruct with the
classical methods and the score prior, and summarise PSNR / SSIM / seconds as mean ± sd.

Used by ``scorerecon evaluate``, ``scorerecon tune``, ``scorerecon demo`` and
``benchmarks/reconstruction.py``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import (
    IMAGE_SUFFIXES,
    PREPARE_DATA_HINT,
    Image,
    Normalization,
    ct_normalization,
    modality_mismatch,
    mr_normalization,
    read_image,
)
from .errors import ScoreReconError
from .measurement import (
    add_measurement_noise,
    task_modality,  # noqa: F401  (re-exported for the commands)
)
from .metrics import score_slices
from .operators import build_operator
from .operators.base import MeasurementOperator

#: classical methods that fit each task
CLASSICAL = {
    "sparse-ct": ("fbp", "tv"),
    "limited-angle-ct": ("fbp", "tv"),
    "metal-ct": ("fbp", "tv"),
    "mri": ("zero-filled", "cs"),
}

#: HU given to simulated metal objects
METAL_HU = 4000.0


@dataclass
class EvalCase:
    """One test problem: normalised reference ``x`` (1,1,N,N), operator, measurement ``y`` and the
    pixels scored (``score_mask``: False on metal)."""

    name: str
    x: torch.Tensor
    op: MeasurementOperator
    y: torch.Tensor
    score_mask: torch.Tensor | None = None
    normalization: Normalization | None = None


@dataclass
class EvalRecord:
    case: str
    method: str
    psnr: float
    ssim: float
    seconds: float
    extra: dict = field(default_factory=dict)


def list_images(data: str | Path) -> list[Path]:
    """Image files (and DICOM series folders) under ``data``, sorted; a single file is allowed."""
    data = Path(data)
    if not data.exists():
        raise ScoreReconError(f"--data {data} does not exist; check the path ({PREPARE_DATA_HINT})")
    if data.is_file():
        return [data]
    files = sorted(p for p in data.rglob("*") if p.is_file() and any(
        p.name.lower().endswith(s) for s in IMAGE_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise ScoreReconError(f"no images (DICOM, NIfTI, NRRD, PNG, .npy) under {data}")
    return files


def resize_square(a: np.ndarray, size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Resample a 2-D array (H, W) with pixel ``spacing`` (x, y) in mm to square pixels, centre-pad it to a
    square (minimum value) and resize to ``size``² → (1, 1, size, size). Keeps the physical aspect ratio."""
    sx, sy = float(spacing[0]), float(spacing[1])
    if abs(sx - sy) > 1e-3 * max(sx, sy):
        step = min(sx, sy)
        h0, w0 = a.shape
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
        new = (max(1, round(h0 * sy / step)), max(1, round(w0 * sx / step)))
        a = F.interpolate(t, size=new, mode="bilinear", align_corners=False)[0, 0].numpy()
    h, w = a.shape
    n = max(h, w)
    pad = np.full((n, n), float(a.min()), dtype=np.float32)
    pad[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = a
    t = torch.from_numpy(pad)[None, None]
    if n != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=n > size, align_corners=False)
    return t.float()


def load_slices(data: str | Path, modality: str, size: int, n_slices: int = 8, per_volume: int = 3,
                normalization: Normalization | None = None, min_foreground: float = 0.15) -> list[tuple[str,
                                                                                                         torch.Tensor]]:
    """Normalised 2-D test slices (1,1,size,size) from the images under ``data``.

    Volumes give ``per_volume`` axial slices spread over the middle 60 % of the slices whose
    foreground fraction is at least ``min_foreground``; 2-D images give themselves.
    """
    out: list[tuple[str, torch.Tensor]] = []
    for path in list_images(data):
        img = read_image(path)
        mismatch = modality_mismatch(img, modality, path)
        if mismatch and mismatch[1]:
            raise ScoreReconError(f"{mismatch[0]} but the task needs {modality} images; move it out of {data} or "
                                  "choose a task and model of its modality")
        if mismatch:
            print(f"scorerecon: warning: {mismatch[0]}; it is evaluated as {modality}", file=sys.stderr, flush=True)
        norm = normalization or (ct_normalization() if modality == "CT" else mr_normalization(img.array))
        arr = norm.forward(img.array).astype(np.float32)
        if modality == "CT":
            arr = np.clip(arr, 0.0, None)
        spacing = tuple(img.spacing[:2]) if len(img.spacing) >= 2 else (1.0, 1.0)
        if arr.ndim == 2:
            out.append((path.name, resize_square(arr, size, spacing)))
        else:
            fg = (arr > 0.1).reshape(arr.shape[0], -1).mean(1)
            good = np.flatnonzero(fg >= min_foreground)
            if good.size == 0:
                continue
            lo, hi = good[0], good[-1]
            span = hi - lo
            picks = np.unique(np.round(np.linspace(lo + 0.2 * span, hi - 0.2 * span, per_volume)).astype(int))
            for z in picks:
                out.append((f"{path.name}[{z}]", resize_square(arr[z], size, spacing)))
        if len(out) >= n_slices:
            break
    if not out:
        raise ScoreReconError(f"no usable slices under {data}")
    return out[:n_slices]


def make_case(name: str, x: torch.Tensor, task: str, seed: int = 0, noise: float = 0.0,
              **task_options) -> EvalCase:
    """Build the operator for ``task`` and simulate ``y`` for the normalised image ``x`` (1,1,N,N).

    MRI ``phase="smooth"`` simulates single-coil k-space as a scanner records it
    (:func:`~ScoreReconLib.measurement.simulate_kspace`: a smooth image phase, the operator carrying the phase
    estimated from the k-space centre; noise relative to the image's k-space peak); without it (or "zero") the
    real image, as the benchmarks' tables were made."""
    size = x.shape[-1]
    score_mask = None
    x_ref = x
    phase = task_options.pop("phase", "zero")
    if task == "mri" and phase != "zero":
        from .measurement import simulate_kspace

        acq = simulate_kspace(x, phase=phase, acceleration=float(task_options.get("acceleration", 8.0)),
                              center_fraction=float(task_options.get("center_fraction", 0.08)),
                              mask=task_options.get("mask", "equispaced"), noise=noise, seed=seed,
                              noise_seed=seed + 1, device=x.device)
        return EvalCase(name, x_ref, acq.operator, acq.y, None)
    if task == "metal-ct":
        from .operators.ct import random_metal_mask

        body = x[0, 0] > 0.2
        metal = random_metal_mask(size, n_objects=int(task_options.pop("n_metal", 2)), seed=seed,
                                  inside=body.numpy())
        metal = torch.as_tensor(np.asarray(metal), dtype=torch.bool).reshape(1, 1, size, size)
        op = build_operator(task, size, metal_mask=metal, **task_options)
        norm = ct_normalization()
        x_metal = torch.where(metal, torch.tensor(float(norm.forward(METAL_HU))), x)
        y = op.A(x_metal)
        score_mask = ~metal
    else:
        op = build_operator(task, size, **task_options)
        y = op.A(x_ref)
    if noise > 0:  # one σ = noise × max|y| for the case, drawn from seed + 1
        y, _ = add_measurement_noise(y, op.mask, noise, seed + 1, per_slice=False)
    return EvalCase(name, x_ref, op, y, score_mask)


def run_classical(case: EvalCase, method: str) -> EvalRecord:
    from .baselines import classical_reconstruct

    t0 = time.perf_counter()
    xr = classical_reconstruct(method, case.y, case.op)
    sec = time.perf_counter() - t0
    scores = score_slices(xr, case.x, case.score_mask)
    p, s = scores.psnr, scores.ssim
    return EvalRecord(case.name, method, p, s, sec, {"image": xr})


def run_score(case: EvalCase, prior, sampler: str = "proximal", samples: int | None = None, seed: int = 0,
              label: str | None = None, **kwargs) -> EvalRecord:
    from .reconstruction import reconstruct

    res = reconstruct(case.y, case.op, prior, method=sampler, samples=samples, seed=seed, **kwargs)
    scores = score_slices(res.mean, case.x, case.score_mask)
    p, s = scores.psnr, scores.ssim
    return EvalRecord(case.name, label or f"score-{sampler}", p, s, res.seconds,
                      {"image": res.mean, "std": res.std, "nfe": res.nfe,
                       "samples": int(res.settings.get("samples", samples or 1)),
                       "nfe_per_slice": res.nfe * int(res.settings.get("samples", samples or 1))})


def summarize(records: Sequence[EvalRecord]) -> dict[str, dict[str, float]]:
    """Mean and sd of psnr / ssim / seconds per method, in order of first appearance."""
    out: dict[str, dict[str, float]] = {}
    for m in dict.fromkeys(r.method for r in records):
        rs = [r for r in records if r.method == m]
        row = {"n": len(rs)}
        for key in ("psnr", "ssim", "seconds"):
            v = np.array([getattr(r, key) for r in rs], dtype=np.float64)
            row[key] = float(v.mean())
            row[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        nfe = [r.extra.get("nfe") for r in rs if r.extra.get("nfe") is not None]
        if nfe:
            row["nfe_per_sample"] = int(nfe[0])
            row["nfe_per_slice"] = int(rs[0].extra.get("nfe_per_slice", nfe[0]))
        out[m] = row
    return out


def markdown_table(summary: dict[str, dict[str, float]], title: str | None = None) -> str:
    """A Markdown table: method | PSNR (dB) | SSIM | s/slice | network evaluations per slice (all samples) and
    per posterior sample."""
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    lines.append("| method | PSNR (dB) | SSIM | seconds / slice | NFE / slice | NFE / sample | n |")
    lines.append("|---|---|---|---|---|---|---|")
    for m, r in summary.items():
        lines.append(f"| {m} | {r['psnr']:.2f} ± {r['psnr_sd']:.2f} | {r['ssim']:.3f} ± {r['ssim_sd']:.3f} | "
                     f"{r['seconds']:.2f} | {r.get('nfe_per_slice', '–')} | {r.get('nfe_per_sample', '–')} | "
                     f"{r['n']} |")
    return "\n".join(lines)


def image_case_from_array(image: Image, size: int, modality: str) -> tuple[torch.Tensor, Normalization, float]:
    """Normalised (1,1,size,size) tensor from a 2-D :class:`Image` (CT: HU window; MR: percentile),
    the :class:`Normalization` used, and the square pixel size in mm of the result."""
    arr = image.array if image.array.ndim == 2 else image.array[image.array.shape[0] // 2]
    norm = ct_normalization() if modality == "CT" else mr_normalization(arr)
    a = norm.forward(arr).astype(np.float32)
    if modality == "CT":
        a = np.clip(a, 0, None)
    sx, sy = (tuple(image.spacing[:2]) if len(image.spacing) >= 2 else (1.0, 1.0))
    step = min(sx, sy)
    extent = max(arr.shape[0] * sy, arr.shape[1] * sx)  # mm along the longer side, after padding to square
    return resize_square(a, size, (sx, sy)), norm, float(extent / size if step > 0 else 1.0)
