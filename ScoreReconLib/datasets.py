"""Training slices for the score prior: read a folder of images, cut 2-D slices, normalise, augment.

:class:`SliceDataset` walks a folder recursively for DICOM series folders, NIfTI, NRRD, MHA, PNG
and ``.npy`` files (read with :func:`ScoreReconLib.data.read_image`), cuts 2-D slices along one
axis or all three, drops near-empty slices, normalises them to ``[0, 1]`` (CT: HU window; MR:
per-volume percentile), resamples each to a square ``size x size`` image keeping the physical
aspect ratio (zero padding, antialiased resize) and keeps them all in memory as one tensor
``(N, 1, size, size)``. Unreadable files are listed in :attr:`SliceDataset.warnings` and skipped.

:func:`augment_batch` applies random horizontal flips, small rotations and mild zoom/shift to a
batch with one ``grid_sample`` call, drawing its parameters from a given generator (deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import (
    DEFAULT_CT_WINDOW,
    IMAGE_SUFFIXES,
    PREPARE_DATA_HINT,
    Image,
    guess_modality,
    mr_normalization,
    read_image,
    window,
)
from .errors import ScoreReconError
from .utils import ProgressFn
from .vocabulary import MODALITIES

#: a slice is kept if at least this fraction of its pixels is above :data:`FOREGROUND_LEVEL`
MIN_FOREGROUND = 0.05
#: normalised intensity above which a pixel counts as foreground (CT [-1000, 2000] window: -850 HU)
FOREGROUND_LEVEL = 0.05
#: MR percentile mapped to 1
MR_PERCENTILE = 99.5
#: store slices as float16 above this many bytes (float32 otherwise)
FLOAT16_ABOVE_BYTES = 2 * 1024**3

_DICOM_SUFFIXES = (".dcm", ".ima")


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def find_images(root: str | Path) -> tuple[list[Path], list[str]]:
    """Image sources under ``root``: DICOM series folders and image files; plus notes on ignored files.

    A folder holding DICOM files is one source (a series); other files are sources if their suffix
    is an image type (``.raw``/``.img`` data files of ``.mhd``/``.hdr`` headers are not).
    """
    root = Path(root)
    if not root.exists():
        raise ScoreReconError(f"training data folder {root} does not exist; check --data ({PREPARE_DATA_HINT})")
    if root.is_file():
        return [root], []
    sources: list[Path] = []
    ignored: list[str] = []
    for folder in sorted([root, *[p for p in root.rglob("*") if p.is_dir()]]):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        dicoms = [p for p in files if _is_dicom_file(p)]
        if dicoms:
            sources.append(folder)
        for p in files:
            if p in dicoms:
                continue
            suffix = _suffix(p)
            if suffix in IMAGE_SUFFIXES and suffix not in _DICOM_SUFFIXES:
                sources.append(p)
            elif suffix not in (".raw", ".img", ".zraw"):
                ignored.append(str(p))
    return sources, ignored


def _axis_spacing(image: Image) -> tuple[float, ...]:
    """Spacing per array axis (array order is reversed SimpleITK order)."""
    sp = tuple(float(s) for s in image.spacing)[: image.array.ndim]
    if len(sp) < image.array.ndim:
        sp = sp + (1.0,) * (image.array.ndim - len(sp))
    return tuple(reversed(sp))


def square_resize(slice_2d: torch.Tensor, spacing: tuple[float, float], size: int) -> torch.Tensor:
    """Resample a normalised slice ``(H, W)`` with pixel spacing (rows, cols) mm to ``(size, size)``.

    The physical aspect ratio is kept: the longer physical side fills ``size`` pixels, the other is
    centred and zero-padded. Downsampling is antialiased (bilinear).
    """
    h, w = slice_2d.shape
    ext_h, ext_w = h * spacing[0], w * spacing[1]
    px = max(ext_h, ext_w) / size
    nh = max(1, min(size, round(ext_h / px)))
    nw = max(1, min(size, round(ext_w / px)))
    x = slice_2d[None, None].float()
    if (nh, nw) != (h, w):
        antialias = nh < h or nw < w
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    top, left = (size - nh) // 2, (size - nw) // 2
    x = F.pad(x, (left, size - nw - left, top, size - nh - top))
    return x[0, 0].clamp_(0.0, 1.0)


class SliceDataset(torch.utils.data.Dataset):
    """2-D training slices ``(1, size, size)`` in ``[0, 1]`` from a folder of images, held in memory.

    Args:
        root: folder (searched recursively) or a single image file.
        size: output side in pixels.
        modality: "CT" or "MR"; None guesses it from the first readable image.
        hu_window: CT window ``(low, high)`` in HU mapped to [0, 1] (default [-1000, 2000]).
        axis: 0, 1 or 2 (array axis of a ``(Z, H, W)`` volume to slice along) or "all".
        min_foreground: drop slices with a smaller fraction of pixels above ``FOREGROUND_LEVEL``.
        num_workers: threads reading files in parallel.
    """

    def __init__(self, root: str | Path, size: int, modality: str | None = None,
                 hu_window: Sequence[float] | None = None, axis: int | str = 0,
                 min_foreground: float = MIN_FOREGROUND, num_workers: int = 0,
                 progress: ProgressFn | None = None) -> None:
        self.root = Path(root)
        self.size = int(size)
        if self.size < 8:
            raise ScoreReconError(f"image size {size} is too small; use at least 8 (e.g. 128)")
        axes = self._axes(axis)
        self.axis = axis
        self.hu_window = tuple(float(v) for v in (hu_window or DEFAULT_CT_WINDOW))
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ScoreReconError(f"HU window {hu_window} must be LOW HIGH with LOW < HIGH, e.g. -1000 2000")
        self.modality = modality.upper() if modality else None
        if self.modality is not None and self.modality not in MODALITIES:
            raise ScoreReconError(f"modality '{modality}' must be CT or MR")
        self.min_foreground = float(min_foreground)
        self.warnings: list[str] = []
        self.sources: list[dict] = []

        sources, ignored = find_images(self.root)
        if ignored:
            self.warnings.append(f"ignored {len(ignored)} file(s) of unknown type, e.g. {ignored[0]}")
        if not sources:
            raise ScoreReconError(
                f"no images found in {self.root}; put DICOM series folders, NIfTI, NRRD, MHA, PNG or .npy "
                "files there"
            )

        def _read(path: Path) -> Image | str:
            try:
                img = read_image(path)
            except ScoreReconError as exc:
                return str(exc)
            except Exception as exc:  # noqa: BLE001 - any reader failure is reported by file name
                return f"cannot read {path}: {type(exc).__name__}: {exc}"
            if img.array.size == 0 or not np.isfinite(img.array).all():
                return f"{path} is empty or holds NaN/inf values"
            return img

        slices: list[torch.Tensor] = []
        given, first = self.modality is not None, None
        workers = max(1, int(num_workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done, (path, img) in enumerate(zip(sources, pool.map(_read, sources), strict=True), start=1):
                if progress is not None:
                    progress(done, len(sources), f"reading {path.name}")
                if isinstance(img, str):
                    self.warnings.append(f"skipped: {img}")
                    continue
                found = guess_modality(img)
                if self.modality is None:
                    self.modality, first = found, path
                elif found != self.modality and (not given or img.modality.upper() in MODALITIES):
                    seen = f"the first image {first}" if not given else f"--modality {self.modality}"
                    raise ScoreReconError(
                        f"{path} is {found} but {seen} is {self.modality}: one prior learns one modality; put CT "
                        "and MR images in separate --data folders (or pass --modality if the guess from intensities "
                        "is wrong)"
                    )
                kept, total = self._add_image(img, axes, slices)
                extent = [n * sp for n, sp in zip(img.array.shape, _axis_spacing(img), strict=False)]
                self.sources.append({"path": str(path), "shape": list(img.array.shape), "slices": kept,
                                     "candidates": total, "fov_mm": float(max(extent))})
                if kept == 0:
                    self.warnings.append(f"{path}: all {total} slice(s) are nearly empty (< "
                                         f"{self.min_foreground:.0%} foreground); nothing used")
        if not slices:
            reasons = "; ".join(self.warnings[:3]) or "no readable images"
            raise ScoreReconError(f"no usable training slices in {self.root} ({reasons}); check the files in --data")
        stacked = torch.stack(slices)[:, None]
        if stacked.numel() * 4 > FLOAT16_ABOVE_BYTES:
            stacked = stacked.half()
        self.slices = stacked

    @staticmethod
    def _axes(axis: int | str) -> tuple[int, ...]:
        if str(axis).lower() == "all":
            return (0, 1, 2)
        try:
            a = int(axis)
        except (TypeError, ValueError):
            a = -1
        if a not in (0, 1, 2):
            raise ScoreReconError(f"slice axis '{axis}' must be 0, 1, 2 or all")
        return (a,)

    def _normalise(self, array: np.ndarray) -> np.ndarray:
        if self.modality == "CT":
            return window(array, *self.hu_window)
        norm = mr_normalization(array, MR_PERCENTILE)
        return np.clip(norm.forward(np.asarray(array, np.float32)), 0.0, 1.0)

    def _add_image(self, img: Image, axes: tuple[int, ...], out: list[torch.Tensor]) -> tuple[int, int]:
        arr = torch.from_numpy(self._normalise(img.array))
        spacing = _axis_spacing(img)
        if arr.ndim == 3 and arr.shape[0] == 1:  # a one-slice file (e.g. a DICOM file): its slice only
            arr, spacing = arr[0], spacing[1:]
        if arr.ndim == 2:
            candidates = [(arr, spacing)]
        else:
            candidates = []
            for a in axes:
                rest = tuple(s for i, s in enumerate(spacing) if i != a)
                candidates += [(arr.select(a, k), rest) for k in range(arr.shape[a])]
        kept = 0
        for sl, sp in candidates:
            if float((sl > FOREGROUND_LEVEL).float().mean()) < self.min_foreground:
                continue
            out.append(square_resize(sl, sp, self.size))
            kept += 1
        return kept, len(candidates)

    def __len__(self) -> int:
        return int(self.slices.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.slices[index].float()

    def describe(self) -> dict:
        """JSON-serialisable description of the training data for the checkpoint's config."""
        return {
            "root": str(self.root),
            "n_sources": len(self.sources),
            "n_slices": len(self),
            "axis": str(self.axis),
            "modality": self.modality,
            "hu_window": list(self.hu_window) if self.modality == "CT" else None,
            "mr_percentile": MR_PERCENTILE if self.modality == "MR" else None,
            "min_foreground": self.min_foreground,
            "sources": [Path(s["path"]).name for s in self.sources][:50],
            "n_warnings": len(self.warnings),
        }


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a CPU tensor to ``device``; to CUDA through pinned memory without blocking the host
    (a pageable copy would make the host wait for all queued GPU work every step)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(x: torch.Tensor, generator: torch.Generator, flip: bool = True, max_rotate_deg: float = 10.0,
                  zoom: tuple[float, float] = (0.9, 1.1), max_shift: float = 0.05) -> torch.Tensor:
    """Random horizontal flip, rotation, zoom and shift of a batch ``(B, 1, H, W)`` (zero padding).

    Parameters are drawn on the CPU from ``generator`` (same draws on any device), so the result is
    a deterministic function of the generator state.
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    scale = zoom[0] + u[:, 1] * (zoom[1] - zoom[0])  # > 1 zooms in (samples a smaller field)
    sx = torch.where(u[:, 2] < 0.5, -1.0, 1.0) if flip else torch.ones(b, dtype=torch.float64)
    tx, ty = (u[:, 3] * 2 - 1) * max_shift * 2, (u[:, 4] * 2 - 1) * max_shift * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(to_device(theta.float(), x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
