"""The shipped demo samples: which held-out slice each task uses, and how the 2-D samples are made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data import Image
from ..errors import ScoreReconError
from ..resources import resources_dir
from .convert import convert_source, write_nrrd
from .fetch import LogFn, default_cache
from .registry import source
from .unpack import source_bytes


@dataclass(frozen=True)
class SampleSpec:
    """A shipped demo sample: a 2-D held-out slice at ``size``² written to ``Resources/samples``."""

    name: str
    filename: str
    source: str  # a :data:`SOURCES` key
    size: int
    spacing_mm: float | None  # None: keep the source's own grid (already ``size``²)
    slice_index: int | None  # axial index into a 3-D source
    description: str


SAMPLES: dict[str, SampleSpec] = {
    "ct-head": SampleSpec("ct-head", "ct_head_sample.nrrd", "pydicom-head-ct", 128, 0.431 * 4, None,
                          "head CT at the skull base, 4 × 4 block mean of the 512² slice"),
    "ct-neck": SampleSpec("ct-neck", "ct_neck_sample.nrrd", "pydicom-ct-small", 128, None, None,
                          "posterior neck / upper thorax CT crop around a vertebra, native 128²"),
    "mri": SampleSpec("mri", "mri_sample.nrrd", "itk-t1-head", 128, 2.0, 68,
                      "axial T1 slice through the lateral ventricles, 2 mm grid (the scan's field of view "
                      "clips the scalp at the front and back)"),
}

#: which demo sample each reconstruction task uses (the CT prior is a head-CT prior)
TASK_SAMPLES = {"sparse-ct": "ct-head", "limited-angle-ct": "ct-head", "metal-ct": "ct-head", "mri": "mri"}


def sample_path(task: str) -> Path:
    """Path of the shipped held-out demo sample for a task ("sparse-ct", "metal-ct", "mri", ...).

    A sample name from :data:`SAMPLES` ("ct-head", "ct-neck", "mri") is accepted too. The file
    is a 2-D compressed NRRD, square, in physical units (HU for CT) with spacing in mm.
    """
    name = TASK_SAMPLES.get(task, task)
    if name not in SAMPLES:
        choices = ", ".join(sorted(set(TASK_SAMPLES) | set(SAMPLES)))
        raise ScoreReconError(f"no demo sample for '{task}'; choose one of {choices}")
    path = resources_dir() / "samples" / SAMPLES[name].filename
    if not path.is_file():
        raise ScoreReconError(
            f"demo sample {path} is missing; restore Resources/samples from git or run "
            "'scorerecon prepare-data --only samples'"
        )
    return path


def square_slice(image: Image, size: int, spacing_mm: float, fill: float) -> Image:
    """Resample a 2-D image onto a centred ``size``² grid of ``spacing_mm`` pixels (linear).

    Downsampling is anti-aliased: an integer factor uses a block mean, other factors a Gaussian
    of σ = (factor − 1)/2 pixels first. Outside the source the value is ``fill``.
    """
    if image.array.ndim != 2:
        raise ScoreReconError(f"expected a 2-D slice, got shape {image.array.shape}")
    arr = np.asarray(image.array, np.float32)
    sp = np.asarray(image.spacing[:2], float)  # (x, y) mm
    first = np.zeros(2)  # centre of pixel 0 relative to the image origin, mm (x, y)
    factors = spacing_mm / sp
    if np.allclose(factors, np.round(factors)) and np.all(np.round(factors) >= 2) and factors[0] == factors[1]:
        f = int(round(factors[0]))
        h, w = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
        arr = arr[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
        first = (f - 1) / 2 * sp
        sp = sp * f
    elif np.any(factors > 1):
        from scipy.ndimage import gaussian_filter

        arr = gaussian_filter(arr, [max(0.0, (factors[1] - 1) / 2), max(0.0, (factors[0] - 1) / 2)])
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing([float(s) for s in sp])
    src.SetOrigin([float(o) for o in first])
    centre = first + (np.asarray(arr.shape[::-1]) - 1) * sp / 2
    out_origin = centre - (size - 1) / 2 * spacing_mm
    ref = sitk.Image(size, size, sitk.sitkFloat32)
    ref.SetSpacing((spacing_mm, spacing_mm))
    ref.SetOrigin([float(o) for o in out_origin])
    res = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    origin = np.asarray(image.origin[:2], float) + out_origin
    return Image(sitk.GetArrayFromImage(res), (spacing_mm, spacing_mm), tuple(float(o) for o in origin),
                 (1.0, 0.0, 0.0, 1.0), image.modality)


def make_sample(spec: SampleSpec, cache: str | Path | None = None, log: LogFn = print) -> Image:
    """Build a demo sample's 2-D :class:`Image` from its held-out source."""
    src = source(spec.source)
    if src.role != "heldout":
        raise ScoreReconError(f"demo sample {spec.name} must come from held-out data, not {src.key}")
    data, _, _ = source_bytes(src, Path(cache) if cache is not None else default_cache(), log)
    image = convert_source(src, data)
    if image.is_volume:
        if spec.slice_index is None or not 0 <= spec.slice_index < image.array.shape[0]:
            raise ScoreReconError(f"sample {spec.name}: slice {spec.slice_index} is outside {image.array.shape}")
        z = spec.slice_index
        image = Image(image.array[z], tuple(image.spacing[:2]), tuple(image.origin[:2]), (1.0, 0.0, 0.0, 1.0),
                      image.modality)
    fill = -1024.0 if src.modality == "CT" else 0.0
    if spec.spacing_mm is not None:
        image = square_slice(image, spec.size, spec.spacing_mm, fill)
    if image.array.shape != (spec.size, spec.size):
        raise ScoreReconError(f"sample {spec.name} came out {image.array.shape}, expected {spec.size}²")
    return image


def write_samples(samples_dir: str | Path | None = None, cache: str | Path | None = None,
                  log: LogFn = print) -> list[Path]:
    """(Re)write the shipped demo samples (default ``Resources/samples``) from held-out sources."""
    folder = Path(samples_dir) if samples_dir is not None else resources_dir() / "samples"
    paths = []
    for spec in SAMPLES.values():
        src = source(spec.source)
        image = make_sample(spec, cache, log)
        prov = f"{src.key}: {src.package} {src.member}; {spec.description}; licence {src.licence}"
        path = write_nrrd(image, folder / spec.filename, prov)
        log(f"  wrote {path}: {image.array.shape} spacing {tuple(round(s, 4) for s in image.spacing)} mm, "
            f"{path.stat().st_size // 1024} KiB")
        paths.append(path)
    return paths
