"""CT projectors: the :class:`Projector` interface, its Joseph implementations and the backend choice.

Two implementations of the same Joseph projector (one linear interpolation per row or column the
ray crosses, weighted by the path length per step), parallel or fan beam:

- :class:`JosephProjector` multiplies by the stored system matrix and its transpose
  (:mod:`.system_matrix`: built once, cached on disk, memoised). Fast, but its size grows with N³.
- :class:`MatrixFreeJosephProjector` computes the same interpolation weights on the fly, chunked
  over rays, with ``torch.nn.functional.grid_sample`` (bilinear, sampled exactly on the row or column
  the ray steps over); the adjoint is grid_sample's input gradient with the same weights, so it is
  the exact transpose. Memory is a few MB per geometry plus a bounded working set; same code on CPU
  and CUDA.

:func:`make_projector` with ``backend="auto"`` picks the stored matrix while its estimated size is
at most :data:`STORED_MATRIX_MAX_BYTES`, then the stored matrix of the few views from which the square
grid's symmetries give all others (:class:`~.symmetric.SymmetricJosephProjector`) up to
:data:`SYMMETRIC_MATRIX_MAX_BYTES`, else the matrix-free projector (torch-radon on CUDA when it
imports: :mod:`.torch_radon_backend`). Sinograms are ``(B, 1, n_angles, n_det)`` float32; images
``(B, 1, N, N)`` float32.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScoreReconError
from . import torch_radon_backend as trb
from .geometry import Geometry, check_sinogram, check_square_image
from .system_matrix import joseph_matrices, sparse_mm, stored_matrix_bytes

#: projector backends accepted by the CT operators ("joseph": stored matrix; "joseph-symmetric": the stored
#: matrix of the views the square grid's symmetries do not give, :mod:`.symmetric`; "matrix-free": on the fly)
BACKENDS = ("auto", "joseph", "joseph-symmetric", "matrix-free", "torch-radon")
#: ``backend="auto"`` uses the stored matrix (A and Aᵀ) while its estimated size is at most this many
#: bytes (256² with 256 angles: ~0.46 GB; building it peaks at ~9× that); larger geometries go
#: matrix-free. See benchmarks/RESULTS.md ("clinical-ct") for the speed of both.
STORED_MATRIX_MAX_BYTES = 512 * 2**20
#: above that, ``backend="auto"`` stores the matrix of the symmetry's base views only
#: (:class:`~.symmetric.SymmetricJosephProjector`) while its estimated size is at most this many bytes: 512²
#: with 512 parallel views (a full 180° scan) ~0.9 GB, with 512 fan views over a full turn ~0.5 GB; 17–25×
#: faster than matrix-free and 10–14× faster than astra's CPU projectors there (benchmarks/RESULTS.md,
#: "symmetric-projector"); larger geometries go matrix-free
SYMMETRIC_MATRIX_MAX_BYTES = 1280 * 2**20
#: working-set bound of the matrix-free projector: sampled values per chunk (float32 elements)
MATRIX_FREE_CHUNK_ELEMENTS = 1 << 23


class Projector(Protocol):
    """What the CT operators need from a projector backend."""

    geometry: Geometry
    device: torch.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, N) image → (B, 1, n_angles, n_det) sinogram."""

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_angles, n_det) sinogram → (B, 1, N, N) image (exact transpose of ``forward``)."""

    def to(self, device: torch.device | str) -> Projector:
        """The same projector on ``device``."""


class JosephProjector:
    """Joseph projector (parallel or fan beam) as a sparse matrix with a stored transpose.

    ``forward``: (B, 1, N, N) → (B, 1, n_angles, n_det) line integrals in pixel units;
    ``adjoint``: its exact transpose. Inputs are cast to float32; the batch is one sparse @ dense
    product with the images as columns.
    """

    name = "joseph"

    def __init__(self, geometry: Geometry, device: torch.device | str = "cpu") -> None:
        self.geometry = geometry
        self.device = torch.device(device)
        self.matrix, self.matrix_t = joseph_matrices(geometry, self.device)

    def _mats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device == self.matrix.device:
            return self.matrix, self.matrix_t
        return joseph_matrices(self.geometry, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (B, 1, N, N) images to (B, 1, n_angles, n_det) sinograms."""
        check_square_image(x, self.geometry)
        a, _ = self._mats(x.device)
        b = x.shape[0]
        cols = x.reshape(b, -1).to(torch.float32).t().contiguous()
        return sparse_mm(a, cols).t().reshape(b, 1, self.geometry.n_angles, self.geometry.n_det)

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """Back-project (B, 1, n_angles, n_det) sinograms with the exact transpose → (B, 1, N, N)."""
        check_sinogram(s, self.geometry)
        _, at = self._mats(s.device)
        b, n = s.shape[0], self.geometry.image_size
        cols = s.reshape(b, -1).to(torch.float32).t().contiguous()
        out = torch.sparse.mm(at, cols) if b > 1 else torch.mv(at, cols[:, 0])[:, None]
        return out.t().reshape(b, 1, n, n)

    def to(self, device: torch.device | str) -> JosephProjector:
        """This projector on ``device`` (the matrices are memoised per device)."""
        return self if torch.device(device) == self.device else JosephProjector(self.geometry, device)


class MatrixFreeJosephProjector:
    """Joseph projector computed on the fly (no stored matrix), parallel or fan beam, CPU or CUDA.

    Each ray ``x cos θ + y sin θ = t`` steps over the image rows (``|cos θ| ≥ |sin θ|``) or columns,
    sampling at step ``k`` the fractional position ``a + k·b`` along that row (column), weighted by
    the path length per step — the same weights as :func:`build_joseph_matrix`, evaluated in
    float32 by ``grid_sample`` (bilinear, zero outside, exactly on the stepped row or column). The
    adjoint is grid_sample's input gradient (``grid_sampler_2d_backward``), i.e. the same weights
    scattered back: the exact transpose up to float rounding. Rays are processed in chunks of at
    most :data:`MATRIX_FREE_CHUNK_ELEMENTS` sampled values (all batch items together), so memory is
    the per-ray coefficients (13 bytes per ray) plus a bounded working set.
    """

    name = "matrix-free"

    def __init__(self, geometry: Geometry, device: torch.device | str = "cpu") -> None:
        self.geometry = geometry
        self.device = torch.device(device)
        n = geometry.image_size
        theta, t = (v.reshape(-1) for v in geometry.rays())
        c, s = np.cos(theta), np.sin(theta)
        rows = np.abs(c) >= np.abs(s)
        center = (n - 1) / 2.0
        safe_c, safe_s = np.where(rows, c, 1.0), np.where(rows, 1.0, s)
        # fractional column (row-stepping) or row (column-stepping) at step k: a + k·b
        a = np.where(rows, (t - center * s) / safe_c + center, center - (t + center * c) / safe_s)
        b = np.where(rows, s / safe_c, c / safe_s)
        scale = 2.0 / (n - 1)  # grid_sample's normalised coordinates (align_corners=True)
        self._a = torch.as_tensor(a * scale - 1.0, dtype=torch.float32, device=self.device)
        self._b = torch.as_tensor(b * scale, dtype=torch.float32, device=self.device)
        self._length = torch.as_tensor(np.where(rows, 1.0 / np.abs(safe_c), 1.0 / np.abs(safe_s)),
                                       dtype=torch.float32, device=self.device)
        self._rows = torch.as_tensor(rows, device=self.device)
        self._k = torch.arange(n, dtype=torch.float32, device=self.device)
        self._steps = torch.as_tensor(np.arange(n) * scale - 1.0, dtype=torch.float32, device=self.device)
        self._on_device: dict[torch.device, MatrixFreeJosephProjector] = {}
        if geometry.kind == "parallel":
            # per view: the ray of bin d samples position alpha + d·delta + k·b at step k (pixel units)
            ang = geometry.angles
            cv, sv = np.cos(ang), np.sin(ang)
            vrows = np.abs(cv) >= np.abs(sv)
            dc = (geometry.n_det - 1) / 2.0
            cvs, svs = np.where(vrows, cv, 1.0), np.where(vrows, 1.0, sv)
            alpha = np.where(vrows, (-dc - center * sv) / cvs + center, center - (-dc + center * cv) / svs)
            delta = np.where(vrows, 1.0 / cvs, -1.0 / svs)
            self._views = {flag: np.nonzero(vrows == flag)[0] for flag in (True, False)}
            self._view_coef = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in
                               (("alpha", alpha), ("delta", delta), ("b", np.where(vrows, sv / cvs, cv / svs)),
                                ("length", np.where(vrows, 1.0 / np.abs(cvs), 1.0 / np.abs(svs))))}

    def _grid(self, r0: int, r1: int) -> torch.Tensor:
        """Sampling grid (1, r1 − r0, N, 2) of rays r0…r1−1: (x, y) = (a + k·b, k) or (k, a + k·b)."""
        pos = torch.addcmul(self._a[r0:r1, None], self._b[r0:r1, None], self._k[None, :])
        fixed = self._steps[None, :].expand_as(pos)
        rows = self._rows[r0:r1, None]
        return torch.stack([torch.where(rows, pos, fixed), torch.where(rows, fixed, pos)], dim=-1)[None]

    def _chunk(self, batch: int) -> int:
        return max(1, MATRIX_FREE_CHUNK_ELEMENTS // (max(1, batch) * self.geometry.image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (B, 1, N, N) images to (B, 1, n_angles, n_det) sinograms."""
        check_square_image(x, self.geometry)
        g = self.geometry
        b, n = x.shape[0], g.image_size
        dev = x.device
        if dev != self.device:
            return self.to(dev).forward(x)
        inp = x.to(torch.float32).reshape(1, b, n, n)
        n_rays = g.n_angles * g.n_det
        out = torch.empty(b, n_rays, dtype=torch.float32, device=dev)
        step = self._chunk(b)
        for r0 in range(0, n_rays, step):
            r1 = min(n_rays, r0 + step)
            v = F.grid_sample(inp, self._grid(r0, r1), mode="bilinear", padding_mode="zeros", align_corners=True)
            out[:, r0:r1] = v[0].sum(-1) * self._length[r0:r1]
        return out.reshape(b, 1, g.n_angles, g.n_det)

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """Back-project (B, 1, n_angles, n_det) sinograms with the exact transpose → (B, 1, N, N)."""
        check_sinogram(s, self.geometry)
        g = self.geometry
        b, n = s.shape[0], g.image_size
        dev = s.device
        if dev != self.device:
            return self.to(dev).adjoint(s)
        if g.kind == "parallel" and g.n_det > 1:
            return self._adjoint_parallel(s)
        weighted = s.to(torch.float32).reshape(b, -1) * self._length
        shape_ref = torch.empty(1, b, n, n, dtype=torch.float32, device=dev)
        out = torch.zeros(1, b, n, n, dtype=torch.float32, device=dev)
        n_rays = g.n_angles * g.n_det
        step = self._chunk(b)
        for r0 in range(0, n_rays, step):
            r1 = min(n_rays, r0 + step)
            grad = weighted[:, r0:r1, None].expand(b, r1 - r0, n)[None].contiguous()
            gi, _ = torch.ops.aten.grid_sampler_2d_backward(grad, shape_ref, self._grid(r0, r1), 0, 0, True,
                                                            [True, False])
            out += gi
        return out.reshape(b, 1, n, n)

    def _adjoint_parallel(self, s: torch.Tensor) -> torch.Tensor:
        """Parallel-beam adjoint as a gather (pixel-driven), the same weights as the forward's.

        In a view whose rays step over rows, bin d samples row k at position α + d·δ + k·b, so pixel
        (k, j) gets ``L·max(0, 1 − |δ|·|d − d*|)`` from bins d around ``d* = (j − α − k·b)/δ``: at most
        two, d0 = ⌊d*⌋ and d0 + 1. Their sum is ``G·((1 − f')·s[d0] + f'·s[d0 + 1])`` with
        ``G = w0 + w1``, ``f' = w1 / G`` — a linear interpolation of the view, done by grid_sample
        exactly on the view's row. Column-stepping views give the transposed image.
        """
        g = self.geometry
        b, n = s.shape[0], g.image_size
        dev = s.device
        sino = s.to(torch.float32).reshape(b, g.n_angles, g.n_det)
        out = torch.zeros(2, b, n * n, dtype=torch.float32, device=dev)  # row-stepping, column-stepping (ᵀ)
        k = torch.arange(n, dtype=torch.float32, device=dev).view(1, n, 1)
        j = torch.arange(n, dtype=torch.float32, device=dev).view(1, 1, n)
        step = max(1, MATRIX_FREE_CHUNK_ELEMENTS // (max(1, b) * n * n))
        for slot, flag in enumerate((True, False)):
            views = self._views[flag]
            for v0 in range(0, len(views), step):
                idx = torch.as_tensor(views[v0:v0 + step], device=dev)
                c = {key: val[idx].view(-1, 1, 1) for key, val in self._view_coef.items()}
                n_v = idx.numel()
                inv = 1.0 / c["delta"]
                d_star = torch.addcmul((j - c["alpha"]) * inv, k, -c["b"] * inv)  # (V, N, N): view, step, position
                d0 = torch.floor(d_star)
                f = d_star.sub_(d0)
                h_inv = c["delta"].abs()  # 1/h: the tent is h = |cos θ| (or |sin θ|) bins wide
                w0 = torch.addcmul(torch.ones((), device=dev), f, -h_inv).clamp_min_(0.0)
                w1 = torch.addcmul(1.0 - h_inv, f, h_inv).clamp_min_(0.0)
                total = w0.add_(w1)
                gain = (total * c["length"]).view(1, n_v, n * n)
                grid = torch.empty(1, n_v, n * n, 2, dtype=torch.float32, device=dev)
                grid[..., 0] = d0.add_(w1.div_(total)).view(1, n_v, n * n).mul_(2.0 / (g.n_det - 1)).sub_(1.0)
                rows_y = 2.0 * torch.arange(n_v, dtype=torch.float32, device=dev) / max(1, n_v - 1) - 1.0
                grid[..., 1] = rows_y.view(1, n_v, 1)
                vals = F.grid_sample(sino[:, idx].reshape(1, b, n_v, g.n_det), grid, mode="bilinear",
                                     padding_mode="zeros", align_corners=True)[0]  # (B, V, N²)
                out[slot] += vals.mul_(gain).sum(1)
        out = out.view(2, b, n, n)
        return (out[0] + out[1].transpose(-1, -2)).reshape(b, 1, n, n)

    def to(self, device: torch.device | str) -> MatrixFreeJosephProjector:
        """This projector on ``device`` (kept, so repeated calls on another device build it once)."""
        return copy_on_device(self, device)


def copy_on_device(projector, device: torch.device | str):
    """``projector`` (with ``geometry``, ``device`` and an ``_on_device`` dict) made for ``device`` once and kept
    in that dict, so input on another device does not rebuild it on every call; itself when already there."""
    device = torch.device(device)
    if device == projector.device:
        return projector
    if device not in projector._on_device:
        projector._on_device[device] = type(projector)(projector.geometry, device)
    return projector._on_device[device]


def auto_backend(geometry: Geometry, device: torch.device | str = "cpu") -> str:
    """The backend ``"auto"`` picks: torch-radon on CUDA (parallel beam, when importable), else the
    stored matrix up to :data:`STORED_MATRIX_MAX_BYTES`, else the stored matrix of the symmetry's base
    views up to :data:`SYMMETRIC_MATRIX_MAX_BYTES`, else matrix-free."""
    from .symmetric import symmetric_matrix_bytes

    device = torch.device(device)
    if device.type == "cuda" and geometry.kind == "parallel" and trb.torch_radon_available():
        return "torch-radon"
    if stored_matrix_bytes(geometry) <= STORED_MATRIX_MAX_BYTES:
        return "joseph"
    return "joseph-symmetric" if symmetric_matrix_bytes(geometry) <= SYMMETRIC_MATRIX_MAX_BYTES else "matrix-free"


def check_backend(backend: str) -> None:
    """Raise :class:`ScoreReconError` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ScoreReconError(f"unknown CT backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def make_projector(geometry: Geometry, backend: str = "auto",
                   device: torch.device | str = "cpu") -> Projector:
    """Projector for ``geometry`` on ``device``.

    ``backend``: "joseph" (stored sparse matrix), "joseph-symmetric" (the stored matrix of the views the
    pixel grid's symmetries do not give, :mod:`.symmetric`), "matrix-free" (computed on the fly),
    "torch-radon" (optional CUDA package, parallel beam only; error if missing) or "auto"
    (:func:`auto_backend`).
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "auto":
        backend = auto_backend(geometry, device)
    if backend == "torch-radon":
        if geometry.kind != "parallel":
            raise ScoreReconError("backend='torch-radon' supports parallel beam only; use backend='matrix-free' "
                                  "or 'auto' for fan beam")
        return trb.TorchRadonProjector(geometry, device)
    if backend == "matrix-free":
        return MatrixFreeJosephProjector(geometry, device)
    if backend == "joseph-symmetric":
        from .symmetric import SymmetricJosephProjector

        return SymmetricJosephProjector(geometry, device)
    return JosephProjector(geometry, device)


__all__ = [
    "BACKENDS", "MATRIX_FREE_CHUNK_ELEMENTS", "STORED_MATRIX_MAX_BYTES", "SYMMETRIC_MATRIX_MAX_BYTES",
    "JosephProjector", "check_backend",
    "MatrixFreeJosephProjector", "Projector", "auto_backend", "make_projector",
]
