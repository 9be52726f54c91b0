"""Measurement files: simulate measurements from an image and store them self-describingly.

A :class:`Measurement` holds everything a reconstruction needs besides the prior: the task, the
measurements ``y`` in the operators' *full layout* (``(S, 1, n_angles, n_det)`` float32 sinograms
for CT, ``(S, 1, N, N)`` complex64 k-space for MRI, zeros where nothing was measured; ``S`` slices
taken along axis 0 of a volume), the operator (``spec()`` + ``arrays()``), the intensity
normalisation, the source geometry (to write results back in physical units and space), the noise
level and seed, and for metal-artefact CT the metal mask (pixels excluded from metrics).

On disk it is one ``.npz`` (``np.savez_compressed``, written atomically, read with
``allow_pickle=False``): a JSON ``header`` string plus the arrays ``y``, ``op__<name>`` for each
operator array and optionally ``metal_mask``.

Noise model (:func:`simulate`, :func:`add_measurement_noise`): per slice ``s``, ``σ_s = noise × max |y_s|``
over the measured entries (MRI: ``noise ×`` the k-space peak of the magnitude image, one σ for all coils
of the slice, :mod:`.mri_acquisition`); CT adds real Gaussian noise ``σ_s · N(0, 1)``, MRI complex Gaussian noise
``σ_s · (N(0, 1) + i N(0, 1)) / √2`` (so ``E|ε|² = σ_s²``), on measured entries only.

Modules: :mod:`.record` (the record and its constants), :mod:`.fileformat` (save / load),
:mod:`.checks` (header and consistency checks of a file), :mod:`.geometry` (CT source geometry
options), :mod:`.slices` (images to normalised slices), :mod:`.noise` (the noise adder),
:mod:`.mri_acquisition` (MRI as a scanner acquires it: image phase, receive coils, noise per
acquisition) and :mod:`.simulation` (:func:`simulate`). Every public name is importable from this package.
"""

from __future__ import annotations

from .fileformat import check_measurement_output, load_measurement, save_measurement
from .geometry import (
    CT_GEOMETRIES,
    DEFAULT_DETECTOR_DISTANCE_MM,
    DEFAULT_SOURCE_DISTANCE_MM,
    ct_geometry_options,
    fan_distances_mm,
    pixel_size_mm,
)
from .mri_acquisition import (
    DEFAULT_PHASE,
    PHASE_KINDS,
    SIMULATED_MAPS,
    KspaceAcquisition,
    crop_kspace,
    kspace_peak,
    object_support,
    phase_error,
    simulate_kspace,
    smooth_phase,
)
from .noise import add_measurement_noise
from .record import (
    CT_TASKS,
    MAX_COILS,
    MAX_HEADER_BYTES,
    MAX_IMAGE_SIZE,
    MEASUREMENT_FORMAT_VERSION,
    MIN_IMAGE_SIZE,
    MRI_MASKS,
    Measurement,
    task_modality,
)
from .simulation import SIMULATE_NOISE_SEED_OFFSET, simulate
from .slices import REFERENCE_GRID_TOLERANCE, normalization_for, normalize_slices, prepare_slices, reference_slices

__all__ = [
    "CT_GEOMETRIES",
    "CT_TASKS",
    "DEFAULT_PHASE",
    "PHASE_KINDS",
    "SIMULATED_MAPS",
    "KspaceAcquisition",
    "crop_kspace",
    "kspace_peak",
    "object_support",
    "phase_error",
    "simulate_kspace",
    "smooth_phase",
    "DEFAULT_DETECTOR_DISTANCE_MM",
    "DEFAULT_SOURCE_DISTANCE_MM",
    "MAX_COILS",
    "MAX_HEADER_BYTES",
    "MAX_IMAGE_SIZE",
    "MEASUREMENT_FORMAT_VERSION",
    "MRI_MASKS",
    "MIN_IMAGE_SIZE",
    "REFERENCE_GRID_TOLERANCE",
    "SIMULATE_NOISE_SEED_OFFSET",
    "Measurement",
    "add_measurement_noise",
    "check_measurement_output",
    "load_measurement",
    "ct_geometry_options",
    "fan_distances_mm",
    "normalization_for",
    "normalize_slices",
    "pixel_size_mm",
    "prepare_slices",
    "reference_slices",
    "save_measurement",
    "simulate",
    "task_modality",
]
