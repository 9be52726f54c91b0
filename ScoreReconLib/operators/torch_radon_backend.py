"""Optional GPU projector on the ``torch_radon`` package, with the Joseph projector's interface.

``torch_radon`` (matteo-ronchetti/torch-radon and its maintained fork carterbox/torch-radon on
conda-forge) is CUDA-only and not on PyPI, so it is never required: the CT operators use it only
when asked (``backend="torch-radon"``) or, with ``backend="auto"``, on a CUDA device where it
imports. Both the v1 API (``Radon(resolution, angles, det_count, det_spacing)`` with
``backprojection``) and the v2 API (``ParallelBeam(det_count, angles, det_spacing, volume)`` with
``backward``) are supported. Because the two APIs and their releases differ in orientation
conventions, the constructor projects an off-centre test point and refuses (with a
:class:`ScoreReconError`) a build whose detector positions disagree with ours.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ScoreReconError

if TYPE_CHECKING:
    from .geometry import ParallelBeamGeometry

_FALLBACK = ("use backend='joseph' (the built-in Joseph projector, which 'auto' falls back to and which "
             "also runs on CUDA)")


def _import_torch_radon() -> Any | None:
    try:
        return importlib.import_module("torch_radon")
    except Exception:  # an incompatible binary build raises OSError/ImportError/RuntimeError alike
        return None


def torch_radon_available() -> bool:
    """True when ``torch_radon`` imports and a CUDA device exists (it has no CPU kernels)."""
    return torch.cuda.is_available() and _import_torch_radon() is not None


class TorchRadonProjector:
    """Parallel-beam projector on ``torch_radon`` (CUDA only), same interface as ``JosephProjector``.

    ``forward``: (B, 1, N, N) → (B, 1, n_angles, n_det) line integrals in pixel units;
    ``adjoint``: torch-radon's back-projection (its adjoint up to interpolation error).
    """

    name = "torch-radon"

    def __init__(self, geometry: ParallelBeamGeometry, device: torch.device | str = "cuda") -> None:
        module = _import_torch_radon()
        if module is None:
            raise ScoreReconError("backend='torch-radon' was asked for but the torch_radon package is not "
                                  "importable (it is CUDA-only and not on PyPI); install it from conda-forge "
                                  f"(carterbox-torch-radon) or {_FALLBACK}")
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ScoreReconError(f"torch-radon runs only on a CUDA GPU but the device is '{device}'; "
                                  f"use device='cuda' or {_FALLBACK}")
        self.geometry = geometry
        self.device = device
        angles = torch.as_tensor(geometry.angles, dtype=torch.float32, device=device)
        n = geometry.image_size
        if hasattr(module, "ParallelBeam"):
            volume = module.volumes.Volume2D()
            volume.set_size(n, n)
            self._radon = module.ParallelBeam(geometry.n_det, angles, 1.0, volume)
            self._back = self._radon.backward
        elif hasattr(module, "Radon"):
            self._radon = module.Radon(n, angles, det_count=geometry.n_det, det_spacing=1.0)
            self._back = self._radon.backprojection
        else:
            raise ScoreReconError(f"this torch_radon version has neither ParallelBeam nor Radon; {_FALLBACK}")
        self._check_orientation()

    def _check_orientation(self) -> None:
        """Project one off-centre pixel and compare its detector position with our convention."""
        g = self.geometry
        n = g.image_size
        r, c = n // 4, (3 * n) // 5
        img = torch.zeros(1, 1, n, n, device=self.device)
        img[0, 0, r, c] = 1.0
        sino = self.forward(img)[0, 0]
        center = (n - 1) / 2.0
        x, y = c - center, center - r
        expected = x * np.cos(g.angles) + y * np.sin(g.angles) + (g.n_det - 1) / 2.0
        weights = sino.clamp_min(0).double().cpu().numpy()
        total = weights.sum(axis=1)
        seen = (weights * np.arange(g.n_det)).sum(axis=1) / np.maximum(total, 1e-12)
        ok = total > 0.5
        if not ok.any() or np.max(np.abs(seen[ok] - expected[ok])) > 1.0:
            raise ScoreReconError("the installed torch_radon orients its sinograms differently from ScoreRecon's "
                                  f"geometry (off by more than one detector bin); {_FALLBACK}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (B, 1, N, N) images to (B, 1, n_angles, n_det) sinograms."""
        n = self.geometry.image_size
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != n or x.shape[-2] != n:
            raise ScoreReconError(f"expected images of shape (B, 1, {n}, {n}), got {tuple(x.shape)}; "
                                  "resample the image or build the operator for its size")
        b = x.shape[0]
        out = self._radon.forward(x.to(self.device, torch.float32).reshape(b, n, n).contiguous())
        return out.reshape(b, 1, self.geometry.n_angles, self.geometry.n_det)

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """Back-project (B, 1, n_angles, n_det) sinograms → (B, 1, N, N)."""
        g = self.geometry
        if s.ndim != 4 or s.shape[1] != 1 or tuple(s.shape[-2:]) != (g.n_angles, g.n_det):
            raise ScoreReconError(f"expected sinograms of shape (B, 1, {g.n_angles}, {g.n_det}), got "
                                  f"{tuple(s.shape)}; build the operator with the sinogram's geometry")
        b = s.shape[0]
        out = self._back(s.to(self.device, torch.float32).reshape(b, g.n_angles, g.n_det).contiguous())
        return out.reshape(b, 1, g.image_size, g.image_size)

    def to(self, device: torch.device | str) -> TorchRadonProjector:
        """This projector on ``device`` (CUDA only)."""
        return self if torch.device(device) == self.device else TorchRadonProjector(self.geometry, device)


__all__ = ["TorchRadonProjector", "torch_radon_available"]
