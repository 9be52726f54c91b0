"""The inputs of one run, read from nodes, arrays or files and checked before anything touches the disk."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .settings import (
    CT_TASKS,
    MIN_IMAGE_SIZE,
    ScoreReconDimensionError,
    ScoreReconModuleError,
    ScoreReconSettings,
)
from .volumes import asVolumeArray, checkFinite, ijkToRASArray, volumeArray


@dataclass
class RunInputs:
    """What a run reads: an image (simulated from), a sinogram, or nothing (a measurement or k-space file is read
    by the child process); the reference; the input's name, dimensionality and display window."""

    name: str
    ndim: int = 3
    image: np.ndarray | None = None
    imageMatrix: np.ndarray | None = None
    sinogram: np.ndarray | None = None
    sinogramSpacing: tuple | None = None
    sinogramMatrix: np.ndarray | None = None
    reference: np.ndarray | None = None
    referenceMatrix: np.ndarray | None = None
    windowLevel: tuple | None = None


def checkInputChoice(settings: ScoreReconSettings, inputVolume: Any, sinogram: Any, measurementFile: Any,
                     kspaceFile: Any) -> None:
    """Exactly one input, and one that fits the task."""
    given = [x is not None for x in (inputVolume, sinogram, measurementFile, kspaceFile)]
    if sum(given) == 0:
        raise ScoreReconModuleError(
            "no input: pass an image volume (inputVolume), a measured sinogram volume (sinogram), a "
            "measurement .npz file (measurementFile) or a fastMRI-format HDF5 file (kspaceFile)")
    if sum(given) > 1:
        raise ScoreReconModuleError("give only one of inputVolume, sinogram, measurementFile and kspaceFile")
    if sinogram is not None and settings.task not in CT_TASKS:
        raise ScoreReconModuleError(
            f"a sinogram input needs a CT task (sparse-ct, limited-angle-ct, metal-ct), not {settings.task}; "
            "for MRI k-space use a measurement file")
    if kspaceFile is not None and settings.task != "mri":
        raise ScoreReconModuleError(f"a k-space file needs the mri task, not {settings.task}; set the task to mri")


def checkImageShape(array: np.ndarray, settings: ScoreReconSettings) -> None:
    """Slices a run can use: square and at least :data:`MIN_IMAGE_SIZE` unless resampled (``size``) or scored by a
    prior (the score method resamples to the model's size)."""
    rows, cols = array.shape[1:]
    if settings.size:
        if min(rows, cols) < 2:
            raise ScoreReconDimensionError(f"input slices are {rows}x{cols}; they need at least 2x2 pixels")
        return
    if settings.method == "score":
        return  # resampled to the model's size
    if rows != cols:
        raise ScoreReconDimensionError(
            f"input slices are {rows}x{cols} (rows x columns) but ScoreRecon needs square slices; set "
            "'Resample to' (size) or crop the volume (Crop Volume module)")
    if rows < MIN_IMAGE_SIZE:
        raise ScoreReconDimensionError(
            f"input slices are {rows}x{cols}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; set 'Resample to' "
            f"(size) to at least {MIN_IMAGE_SIZE}")


def _existingFile(name: Any, suffixes: tuple[str, ...], what: str, hint: str) -> pathlib.Path:
    path = pathlib.Path(str(name)).expanduser()
    if not path.is_file():
        raise ScoreReconModuleError(f"{what} {path} does not exist; check the path")
    if path.suffix.lower() not in suffixes:
        raise ScoreReconModuleError(f"{path.name} is not {hint}")
    return path


def readInputs(settings: ScoreReconSettings, inputVolume: Any = None, sinogram: Any = None,
               measurementFile: Any = None, kspaceFile: Any = None, ijkToRAS: np.ndarray | None = None,
               reference: Any = None) -> RunInputs:
    """Read and check the run's one input and its reference (nodes or arrays; ``ijkToRAS`` is an array input's
    geometry, default identity)."""
    if inputVolume is not None:
        if isinstance(inputVolume, np.ndarray):
            inputs = RunInputs("array", np.asarray(inputVolume).ndim, asVolumeArray(inputVolume, "input"),
                               np.eye(4) if ijkToRAS is None else np.asarray(ijkToRAS, dtype=np.float64))
        else:
            inputs = RunInputs(inputVolume.GetName(), 3, volumeArray(inputVolume, "input volume"),
                               ijkToRASArray(inputVolume))
            display = inputVolume.GetDisplayNode() if hasattr(inputVolume, "GetDisplayNode") else None
            if display is not None and hasattr(display, "GetWindow"):
                inputs.windowLevel = (display.GetWindow(), display.GetLevel())
        checkFinite(inputs.image, "the input volume")
        checkImageShape(inputs.image, settings)
    elif sinogram is not None:
        if isinstance(sinogram, np.ndarray):
            inputs = RunInputs("sinogram", np.asarray(sinogram).ndim, sinogram=asVolumeArray(sinogram, "sinogram"),
                               sinogramSpacing=(1.0, 1.0, 1.0), sinogramMatrix=np.eye(4))
        else:
            inputs = RunInputs(sinogram.GetName(), 3, sinogram=volumeArray(sinogram, "sinogram volume"),
                               sinogramSpacing=tuple(sinogram.GetSpacing()), sinogramMatrix=ijkToRASArray(sinogram))
        checkFinite(inputs.sinogram, "the sinogram")
    elif kspaceFile is not None:
        inputs = RunInputs(_existingFile(kspaceFile, (".h5", ".hdf5"), "k-space file",
                                         "an HDF5 k-space file (.h5); choose a fastMRI-format file, or a .npz as "
                                         "the measurement file").stem)
    else:
        inputs = RunInputs(_existingFile(measurementFile, (".npz",), "measurement file",
                                         "a .npz measurement file; make one with 'scorerecon simulate' or the "
                                         "ScoreRecon panel").stem)
    if reference is not None:
        _readReference(reference, inputs)
    return inputs


def _readReference(reference: Any, inputs: RunInputs) -> None:
    if isinstance(reference, np.ndarray):
        inputs.reference = asVolumeArray(reference, "reference")
        inputs.referenceMatrix = inputs.imageMatrix if inputs.imageMatrix is not None else np.eye(4)
    else:
        inputs.reference = volumeArray(reference, "reference volume")
        inputs.referenceMatrix = ijkToRASArray(reference)
    checkFinite(inputs.reference, "the reference volume")
    if inputs.image is not None and inputs.reference.shape != inputs.image.shape:
        raise ScoreReconDimensionError(
            f"the reference has shape {inputs.reference.shape} (slices, rows, columns) but the input has "
            f"{inputs.image.shape}; choose a reference of the input's size")
    if inputs.sinogram is not None and inputs.reference.shape[0] != inputs.sinogram.shape[0]:
        raise ScoreReconDimensionError(
            f"the reference has {inputs.reference.shape[0]} slice(s) but the sinogram has "
            f"{inputs.sinogram.shape[0]}; choose the reference volume of these slices")
