"""Measurement operators A = P(Λ) T for sparse-view / limited-angle / metal-trace CT and MRI.

Use :func:`build_operator` to make one from a task name and options, and
:func:`operator_from_spec` to rebuild one saved in a measurement file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ScoreReconError
from ..vocabulary import CT_TASKS, TASKS  # noqa: F401  (TASKS: the task names, part of this package's API)
from .base import MeasurementOperator


def build_operator(task: str, image_size: int, **options: Any) -> MeasurementOperator:
    """Make the operator of ``task`` for ``image_size``² images.

    Options: sparse-ct ``views``, ``n_angles``; limited-angle-ct ``arc`` (degrees), ``n_angles``;
    metal-ct ``metal_mask`` ((B,1,H,W) bool), ``n_angles``; mri ``acceleration``,
    ``center_fraction``, ``mask`` kind ("equispaced", "random", "variable-density", "poisson"), ``seed``.
    CT also: ``solver`` ("cg" or "fbp" for the proximal step), ``cg_iterations``, ``backend`` ("auto",
    "joseph", "joseph-symmetric", "matrix-free", "torch-radon"), ``filter`` (FBP filter), ``dilation`` (metal
    trace), ``geometry`` ("parallel" or "fan" with ``source_distance``, ``detector_distance`` in pixels and
    ``detector``). Common: ``device``.
    """
    if task in CT_TASKS:
        from . import ct

        return ct.build_ct_operator(task, image_size, **options)
    if task == "mri":
        from . import mri

        return mri.build_mri_operator(image_size, **options)
    raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> MeasurementOperator:
    """Rebuild an operator from ``op.spec()`` and ``op.arrays()`` (as stored in a measurement file)."""
    task = spec.get("task")
    if task in CT_TASKS:
        from . import ct

        return ct.ct_operator_from_spec(spec, arrays, device=device)
    if task == "mri" and spec.get("coils") is not None:
        from . import multicoil

        return multicoil.multicoil_operator_from_spec(spec, arrays, device=device)
    if task == "mri":
        from . import mri

        return mri.mri_operator_from_spec(spec, arrays, device=device)
    raise ScoreReconError(f"measurement describes unknown task '{task}'; expected one of {', '.join(TASKS)}")


__all__ = ["MeasurementOperator", "TASKS", "build_operator", "operator_from_spec"]
