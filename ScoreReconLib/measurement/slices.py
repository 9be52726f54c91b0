"""Images to normalised slice stacks: the intensity normalisation of a task, square slices of a checked
size, and a clean reference normalised like a measurement was simulated."""

from __future__ import annotations

import numpy as np
import torch

from ..data import (
    Image,
    Normalization,
    ct_normalization,
    guess_modality,
    image_slices,
    mr_normalization,
    resample_image,
)
from ..errors import ScoreReconError
from ..utils import check_finite
from .record import MIN_IMAGE_SIZE, Measurement, task_modality


def normalization_for(image: Image, task: str) -> Normalization:
    """Intensity normalisation of ``image`` for ``task``.

    CT tasks on an image in HU (DICOM modality CT, or values below −200) use the HU window
    [-1000, 2000] → [0, 1]; otherwise (MRI, or CT tasks on a PNG/phantom) the 99.5th percentile of
    the positive intensities maps to 1.
    """
    if task_modality(task) == "CT" and guess_modality(image) == "CT":
        return ct_normalization()
    return mr_normalization(image.array)


def normalize_slices(stack: np.ndarray, norm: Normalization) -> np.ndarray:
    """Physical slices → normalised float32, clipped below at 0 (nothing is darker than air / zero
    signal: CT padding of −2000/−3024 HU becomes −1000 HU) and unclipped above (metal stays visible)."""
    return np.maximum(np.asarray(norm.forward(np.asarray(stack, dtype=np.float32)), dtype=np.float32), 0.0)


def prepare_slices(image: Image, size: int | None = None) -> tuple[Image, np.ndarray]:
    """Validate ``image``, resample to ``size``² if asked, return ``(image, slices (S, N, N))``."""
    check_finite(image.array, "the input image")
    if image.array.ndim not in (2, 3):
        raise ScoreReconError(f"expected a 2-D image or 3-D volume, got shape {image.array.shape}")
    h, w = image.array.shape[-2:]
    if size is not None:
        if size < MIN_IMAGE_SIZE:
            raise ScoreReconError(f"--size {size} is too small; use at least {MIN_IMAGE_SIZE} pixels")
        if (h, w) != (size, size):
            image = resample_image(image, size)
    else:
        if h != w:
            raise ScoreReconError(
                f"image slices are {h}x{w} (rows x columns) but ScoreRecon needs square slices; "
                "pass --size N to resample them to N x N"
            )
        if h < MIN_IMAGE_SIZE:
            raise ScoreReconError(
                f"image is {h}x{w}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; pass --size N (N >= "
                f"{MIN_IMAGE_SIZE}) to resample it"
            )
    return image, image_slices(image.array).astype(np.float32)


#: relative difference of in-plane pixel sizes above which a reference counts as on another grid
REFERENCE_GRID_TOLERANCE = 0.01


def reference_slices(reference: Image, m: Measurement, warnings: list[str] | None = None) -> torch.Tensor:
    """Normalise a clean reference image like ``m`` was simulated: ``(S, 1, N, N)`` float32.

    The reference must have the measurement's slice count and either its size or the original
    (pre-resampling) size recorded in the file. When its in-plane pixels (after that resampling) differ from the
    measurement's grid by more than :data:`REFERENCE_GRID_TOLERANCE`, a sentence naming both grids is appended to
    ``warnings``: the scores then compare images of different fields of view.
    """
    check_finite(reference.array, "the reference image")
    stack = image_slices(reference.array)
    n = m.image_size
    if stack.shape[0] != m.n_slices:
        raise ScoreReconError(
            f"the reference has {stack.shape[0]} slice(s) but the measurement has {m.n_slices}; "
            "pass the image that was simulated"
        )
    if tuple(stack.shape[-2:]) != (n, n):
        src = m.source.get("shape")
        if src is not None and list(stack.shape[-2:]) == list(src[-2:]):
            reference = resample_image(reference, n)
            stack = image_slices(reference.array)
        else:
            raise ScoreReconError(
                f"the reference is {stack.shape[-2]}x{stack.shape[-1]} but the measurement is {n}x{n}; "
                "pass the image that was simulated"
            )
    want = [float(v) for v in (m.geometry.get("spacing") or [])[:2]]
    got = [float(v) for v in reference.spacing[:2]]
    if warnings is not None and len(want) == 2 and len(got) == 2 and any(
            abs(g - w) > REFERENCE_GRID_TOLERANCE * max(abs(w), 1e-12) for g, w in zip(got, want, strict=True)):
        warnings.append(f"the reference's pixels are {got[0]:.4g} x {got[1]:.4g} mm on the measurement's {n}x{n} "
                        f"grid but the measurement's are {want[0]:.4g} x {want[1]:.4g} mm: PSNR / SSIM compare "
                        "different fields of view; pass the image that was simulated")
    return torch.from_numpy(normalize_slices(stack, m.normalization))[:, None]
