"""The files ``scorerecon reconstruct`` writes besides its metrics: the image and std in physical units with the
measurement's geometry, the data residual, the complex image and the disagreement map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import (
    image_from_geometry,
    write_image,
)
from ..errors import ScoreReconError
from ..measurement import Measurement
from ..operators.base import MeasurementOperator
from ..parameter_choice import describe_choice

#: |score − classical| / std above which the prior added structure the data do not demand (the 90 % band)
DISAGREEMENT_LEVEL = 1.645


def disagreement_map(op: MeasurementOperator, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fixed: dict,
                  device: torch.device) -> torch.Tensor:
    """|score − classical| / calibrated std per pixel (S, 1, N, N), on CPU; the classical image is the sampler's
    start: TV (CT) / CS-TV (MRI) at the file's automatic weight."""
    from ..sampling import classical_init

    with torch.no_grad():
        classical = classical_init(op, y, fixed.get("init_weight"), None, fixed.get("noise_std")).float().cpu()
    floor = 1e-6 * float(max(mean.abs().max(), 1e-6))
    return (mean.float() - classical).abs() / std.float().clamp(min=floor)


def choice_line(choice: dict) -> str:
    """One line for an automatic weight choice record (:meth:`WeightChoice.to_dict`), with the score method's start
    weight where its task's start rule changed it."""
    text = describe_choice(choice)
    start = choice.get("start_weight")
    if start is not None and start != choice["weight"]:
        text += f"; the score method starts from weight {start:.3g} (the task's start rule)"
    return text


def write_volume(m: Measurement, x: torch.Tensor, path: Path, is_std: bool = False) -> None:
    """Normalised (S,1,N,N) → physical units with the measurement's geometry, written atomically."""
    a = x.numpy()[:, 0].astype(np.float32)
    norm = m.normalization
    phys = a * (norm.high - norm.low) if is_std else norm.inverse(a)
    arr = phys if int(m.geometry.get("ndim", 3)) == 3 else phys[0]
    write_image(image_from_geometry(np.asarray(arr, dtype=np.float32), m.geometry), path)


def write_residual(m: Measurement, op: MeasurementOperator, r: torch.Tensor, check: dict, path: Path) -> None:
    """``--residual-output``: the measured-row residual ``r = Λ(A x − y)`` in measurement space (the measurement's full
    layout: zeros where nothing was measured; complex k-space for MRI), its back-projection ``Aᴴ Λ(A x − y)``
    (S, N, N) in the image's physical units per pixel, and χ² (per slice and for the file; NaN for noise-free
    data) in one .npz, written atomically."""
    from ..utils import atomic_path

    with torch.no_grad():
        back = op.A_adjoint(r).real.float()[:, 0] * float(m.normalization.high - m.normalization.low)
    res = r.cpu().numpy()
    res = res.astype(np.complex64) if np.iscomplexobj(res) else res.astype(np.float32)
    per_slice = check.get("residual_per_slice")
    chi2 = np.asarray(per_slice if per_slice is not None else [np.nan] * res.shape[0], dtype=np.float64)
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, residual=res, backprojection=back.cpu().numpy().astype(np.float32), chi2_per_slice=chi2,
                 chi2=np.float64(check["residual"] if check.get("residual") is not None else np.nan),
                 noise_std=np.float64(check.get("noise_std") or 0.0))


def write_complex(m: Measurement, x: torch.Tensor, path: Path) -> None:
    """The magnitude result (S,1,N,N) times ``e^{iφ}`` of the operator's folded-in phase (0 without one), in
    physical units, as an (S, N, N) (or (N, N) for a 2-D image) complex64 .npy written atomically."""
    from ..utils import atomic_path

    if m.task != "mri":
        raise ScoreReconError(f"--complex-output applies to MRI measurements, not {m.task}")
    mag = np.asarray(m.normalization.inverse(x.numpy()[:, 0]), dtype=np.float32)
    phase = m.operator_arrays.get("phase")
    cplx = mag.astype(np.complex64) if phase is None else (mag * np.exp(1j * phase[:, 0])).astype(np.complex64)
    arr = cplx if int(m.geometry.get("ndim", 3)) == 3 else cplx[0]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)
