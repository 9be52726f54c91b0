"""Converting a source file to the written volume: LPS orientation, DICOM slices in the radiological view,
HU for CT, and the compressed NRRD with its provenance line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import SimpleITK as sitk

from ..data import Image, read_image, to_sitk
from ..errors import ScoreReconError
from ..utils import atomic_path
from .inv3 import read_inv3
from .registry import Source

#: NRRD header key holding a file's provenance (source and licence)
PROVENANCE_KEY = "scorerecon_source"


def _sitk_from_bytes(data: bytes, suffix: str) -> sitk.Image:
    """Read bytes (NIfTI, DICOM, …) with SimpleITK through a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"file{suffix}"
        path.write_bytes(data)
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:
            why = str(exc).strip().splitlines()[-1][:160]
            raise ScoreReconError(f"cannot read a {suffix} source file ({why})") from None


def image_lps(img: sitk.Image, modality: str) -> Image:
    """A 3-D SimpleITK image reoriented to LPS as an :class:`Image` ``(Z, Y, X)`` float32."""
    img = sitk.DICOMOrient(img, "LPS")
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    return Image(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), modality)


def storage_dtype(image: Image) -> type:
    """int16 for CT (HU) and for integer-valued images that fit; float32 otherwise."""
    arr = np.asarray(image.array)
    if image.modality == "CT":
        return np.int16
    if arr.size and np.all(arr == np.rint(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        return np.int16
    return np.float32


def write_nrrd(image: Image, path: Path, provenance: str, dtype: type | None = None) -> Path:
    """Write a compressed NRRD atomically with ``dtype`` voxels (default :func:`storage_dtype`).

    The modality (DICOM tag 0008|0060, read back by :func:`ScoreReconLib.data.read_image`) and the
    provenance line go into the header.
    """
    dtype = dtype or storage_dtype(image)
    arr = np.asarray(image.array)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    img = to_sitk(image)
    out = sitk.GetImageFromArray(arr.astype(dtype))
    out.CopyInformation(img)
    if image.modality:
        out.SetMetaData("0008|0060", image.modality)
    out.SetMetaData(PROVENANCE_KEY, provenance.replace("\n", " "))
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    os.chmod(path, 0o644)
    return path


def dicom_slice_radiological(arr: np.ndarray, direction: Iterable[float]) -> np.ndarray:
    """Flip a 2-D DICOM slice stored mirrored (e.g. rows running posterior → anterior) to the radiological view.

    ``direction`` is the slice's row-major 2 × 2 direction (x of the column axis, ..., y of the row
    axis). Columns are reversed when the column axis points to the patient's right (x < 0) and rows
    when the row axis points anterior (y < 0); slices with a positive or zero diagonal (all axial
    slices stored the usual way, oblique ones) are returned unchanged.
    """
    d = np.asarray(tuple(direction), float)
    if d.size != 4:
        return arr
    if d[0] < 0:
        arr = arr[:, ::-1]
    if d[3] < 0:
        arr = arr[::-1, :]
    return np.ascontiguousarray(arr)


def convert_source(src: Source, data: bytes) -> Image:
    """Convert a source file's bytes to the :class:`Image` written for it (LPS for volumes, HU for CT)."""
    name = PurePosixPath(src.member).name
    if name.endswith(".inv3"):
        return read_inv3(data)
    if name.endswith((".nii.gz", ".nii")):
        return image_lps(_sitk_from_bytes(data, ".nii.gz" if name.endswith(".gz") else ".nii"), src.modality)
    if name.endswith(".dcm"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            image = read_image(path)  # applies the rescale slope/intercept → HU for CT
        arr = image.array
        if image.is_volume and arr.shape[0] != 1:
            raise ScoreReconError(f"{name} is a volume; expected one DICOM slice")
        arr = arr.reshape(arr.shape[-2:])  # the file's one slice: the prepared data are 2-D test images
        if src.modality == "CT":
            arr = np.maximum(arr, -1024.0)  # outside-field-of-view padding (e.g. -2000) → air
        direction = np.asarray(image.direction, float)
        in_plane = direction.reshape(image.array.ndim, image.array.ndim)[:2, :2]
        arr = dicom_slice_radiological(arr, tuple(in_plane.ravel()))
        return Image(arr.astype(np.float32), tuple(image.spacing[:2]), tuple(image.origin[:2]),
                     (1.0, 0.0, 0.0, 1.0), src.modality)
    raise ScoreReconError(f"no converter for source file {name}")
