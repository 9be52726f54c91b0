"""The :class:`Measurement` record (what a reconstruction needs besides the prior), the task and format
constants, and the limits on what a measurement may declare."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from ..data import Normalization, ct_normalization
from ..errors import ScoreReconError
from ..operators import TASKS, operator_from_spec
from ..operators.base import MeasurementOperator
from ..vocabulary import CT_TASKS, MIN_IMAGE_SIZE, MRI_MASKS  # noqa: F401  (re-exported by measurement)

#: version of the measurement file format (checkpoints keep ``ScoreReconLib.FORMAT_VERSION``). 2: the CT
#: operator records its source geometry ("parallel" or "fan" with source / detector distances in pixels).
MEASUREMENT_FORMAT_VERSION = 2
#: tasks whose operator is a CT projection
#: limits on what a measurement file may declare (checked before any array is decompressed)
MAX_IMAGE_SIZE = 8192
MAX_HEADER_BYTES = 16 << 20
MAX_COILS = 256


def task_modality(task: str) -> str:
    """"CT" for the CT tasks, "MR" for mri."""
    if task in CT_TASKS:
        return "CT"
    if task == "mri":
        return "MR"
    raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


@dataclass
class Measurement:
    """Simulated (or acquired) measurements of ``S`` slices plus what is needed to reconstruct them.

    ``y``: full-layout measurements ``(S, 1, ...)`` (float32 CT sinograms in pixel-unit line
    integrals of the normalised image, complex64 MRI k-space). ``operator_spec`` / ``operator_arrays``
    rebuild the operator (:meth:`operator`). ``normalization`` maps physical intensities (HU for CT)
    to the normalised images ``y`` was made from. ``geometry`` is the reconstructed image's
    :meth:`Image.geometry` (``ndim`` 2 for one slice, 3 for a volume). ``metal_mask``: ``(S, 1, N, N)``
    bool, pixels to exclude from metrics (metal-ct only). ``noise`` is the relative noise level,
    ``noise_std`` the absolute per-slice standard deviations that were applied.
    """

    task: str
    y: np.ndarray
    operator_spec: dict
    operator_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    normalization: Normalization = field(default_factory=ct_normalization)
    geometry: dict = field(default_factory=dict)
    slice_axis: int = 0
    noise: float = 0.0
    noise_std: list[float] = field(default_factory=list)
    seed: int = 0
    metal: dict = field(default_factory=dict)
    metal_mask: np.ndarray | None = None
    options: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    format_version: int = MEASUREMENT_FORMAT_VERSION
    library_version: str = __version__

    # ------------------------------------------------------------------------------ properties
    @property
    def n_slices(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.operator_spec["image_size"])

    @property
    def coils(self) -> int:
        """Receive coils of MRI k-space (1 for single-coil MRI and for CT)."""
        return int(self.operator_spec.get("coils") or 1)

    @property
    def modality(self) -> str:
        """"CT" or "MR" (from the task)."""
        return task_modality(self.task)

    def header(self) -> dict:
        """The JSON header stored in the file."""
        return {
            "format_version": int(self.format_version),
            "library_version": str(self.library_version),
            "task": self.task,
            "operator": self.operator_spec,
            "normalization": self.normalization.to_dict(),
            "geometry": self.geometry,
            "slice_axis": int(self.slice_axis),
            "n_slices": self.n_slices,
            "image_size": self.image_size,
            "y_shape": [int(s) for s in self.y.shape],
            "noise": float(self.noise),
            "noise_std": [float(s) for s in self.noise_std],
            "seed": int(self.seed),
            "metal": self.metal,
            "options": self.options,
            "source": self.source,
        }

    # ------------------------------------------------------------------------------- operators
    def operator(self, device: torch.device | str = "cpu", slices: slice | None = None) -> MeasurementOperator:
        """Rebuild the operator, for all slices or for ``slices`` (metal-ct masks differ per slice)."""
        arrays = dict(self.operator_arrays)
        n = self.n_slices
        if slices is not None and (self.task == "metal-ct" or self.operator_spec.get("coils") is not None):
            arrays = {k: (v[slices] if v.ndim == 4 and v.shape[0] == n else v) for k, v in arrays.items()}
        try:
            op = operator_from_spec(self.operator_spec, arrays, device=device)
        except ScoreReconError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
            raise ScoreReconError(
                f"the stored {self.task} operator cannot be rebuilt ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:100]}); the measurement file is corrupt: re-simulate it"
            ) from None
        count = len(range(n)[slices]) if slices is not None else n
        expected = tuple(op.measurement_shape(count))
        got = tuple(self.y[slices].shape) if slices is not None else tuple(self.y.shape)
        if expected != got:
            raise ScoreReconError(
                f"measurements have shape {got} but the stored {self.task} operator expects {expected}; "
                "the file is inconsistent: re-simulate it"
            )
        return op

    def y_tensor(self, slices: slice | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Measurements of ``slices`` (all by default) as a tensor on ``device``."""
        y = self.y if slices is None else self.y[slices]
        return torch.from_numpy(np.ascontiguousarray(y)).to(device)
