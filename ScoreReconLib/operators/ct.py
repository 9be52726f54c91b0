"""CT: parallel- and fan-beam geometry, Joseph projectors, FBP and the sparse / limited / metal operators.

Geometry (pixel units throughout): an ``N×N`` image with pixel ``(row r, column c)`` centred at
``x = c − (N−1)/2`` (right) and ``y = (N−1)/2 − r`` (up). Every measured ray is a line
``x cos θ + y sin θ = t``. Parallel beam (:class:`ParallelBeamGeometry`): at angle ``θ`` the detector
bin ``d`` measures ``t = d − (n_det−1)/2``, detector spacing one pixel, so θ = 0 sums the image down
its columns (like ``skimage.transform.radon``). Fan beam (:class:`FanBeamGeometry`): a point source
at distance ``D`` from the rotation centre and source angle ``β``; bin ``d`` sees fan angle ``γ_d``
and measures the line ``θ = β − γ_d``, ``t = D sin γ_d`` (equiangular curved detector, or flat).
Values are line integrals in pixel lengths.

Two implementations of the same Joseph projector (one linear interpolation per row or column the
ray crosses, weighted by the path length per step), behind one interface (:class:`Projector`):

- :class:`JosephProjector` stores the system matrix as a ``torch.sparse_csr`` matrix with int32
  indices together with its transpose (``A.t() @ y`` on a CSR matrix is ~100× slower than a stored
  ``Aᵀ``). The matrix is built with vectorised numpy, cached on disk under
  ``$SCORERECON_CACHE/projectors`` (default ``~/.cache/scorerecon/projectors``) and memoised in the
  process. Fast, but its size grows with N³.
- :class:`MatrixFreeJosephProjector` computes the same interpolation weights on the fly, chunked
  over rays, with ``torch.nn.functional.grid_sample`` (bilinear, sampled exactly on the row or column
  the ray steps over); the adjoint is grid_sample's input gradient with the same weights, so it is
  the exact transpose. Memory is a few MB per geometry plus a bounded working set; same code on CPU
  and CUDA.

:func:`make_projector` with ``backend="auto"`` picks the stored matrix while its estimated size is
at most :data:`STORED_MATRIX_MAX_BYTES`, else the matrix-free projector.

Sinograms are ``(B, 1, n_angles, n_det)`` float32; images ``(B, 1, N, N)`` float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..errors import ScoreReconError
from ..limits import MAX_CG_ITERATIONS, check_count
from ..utils import atomic_path, check_finite
from .base import MeasurementOperator

#: version of the on-disk system-matrix format; bump to invalidate old caches
PROJECTOR_FORMAT_VERSION = 1
#: smallest image side the CT operators accept
MIN_IMAGE_SIZE = 16
#: FBP filters accepted by :func:`fbp`
FILTERS = ("ram-lak", "hann", "shepp-logan")
#: data-consistency solvers accepted by :meth:`CTOperator.proximal`
SOLVERS = ("cg", "fbp")
#: projector backends accepted by the CT operators ("joseph": stored matrix; "matrix-free": on the fly)
BACKENDS = ("auto", "joseph", "matrix-free", "torch-radon")
#: CT source geometries
GEOMETRIES = ("parallel", "fan")
#: fan-beam detector shapes: equiangular arc centred on the source, or flat
DETECTORS = ("curved", "flat")
#: ``backend="auto"`` uses the stored matrix (A and Aᵀ) while its estimated size is at most this many
#: bytes (256² with 256 angles: ~0.46 GB; building it peaks at ~9× that); larger geometries go
#: matrix-free. See benchmarks/RESULTS.md ("clinical-ct") for the speed of both.
STORED_MATRIX_MAX_BYTES = 512 * 2**20
#: working-set bound of the matrix-free projector: sampled values per chunk (float32 elements)
MATRIX_FREE_CHUNK_ELEMENTS = 1 << 23
#: interpolation of the fan → parallel rebinning (grid_sample mode)
REBIN_MODE = "bicubic"
#: a sinogram bin counts as "in the metal trace" above this path length through metal (pixels)
TRACE_THRESHOLD = 1e-3
#: how many (geometry, device) system matrices the process keeps in memory
_MEMO_SIZE = 4


# ------------------------------------------------------------------------------------ geometry
class _KeyedGeometry:
    """Equality and hashing of a geometry by :meth:`key`, a stable hash of :meth:`_key_fields`."""

    def _key_fields(self) -> dict:
        raise NotImplementedError

    def key(self) -> str:
        """Stable hash of the geometry (16 hex digits), used to name cached system matrices."""
        return hashlib.sha256(json.dumps(self._key_fields(), sort_keys=True).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


class ParallelBeamGeometry(_KeyedGeometry):
    """Parallel-beam geometry for ``image_size``² images.

    ``n_angles`` angles ``arc·k/n_angles`` (radians, k = 0…n_angles−1; default ``image_size`` angles
    over ``arc = π``), ``n_det`` detector bins of one pixel (default: the smallest odd number
    ≥ ⌈√2·image_size⌉, so every ray through the image is measured).
    """

    def __init__(self, image_size: int, n_angles: int | None = None, arc: float = math.pi,
                 n_det: int | None = None) -> None:
        image_size = _as_int(image_size, "image_size")
        if image_size < MIN_IMAGE_SIZE:
            raise ScoreReconError(
                f"CT image size {image_size} is too small; use images of at least "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
        n_angles = image_size if n_angles is None else _as_int(n_angles, "n_angles")
        if n_angles < 1:
            raise ScoreReconError(f"n_angles must be at least 1, got {n_angles}; pass a positive angle count")
        arc = float(arc)
        if not (math.isfinite(arc) and 0.0 < arc <= math.pi + 1e-12):
            raise ScoreReconError(
                f"geometry arc {arc:.6g} rad is outside (0, π]; give the scanned arc in radians, at most π")
        min_det = math.ceil(math.sqrt(2.0) * image_size)
        if n_det is None:
            n_det = min_det + (1 - min_det % 2)
        n_det = _as_int(n_det, "n_det")
        if n_det < 1:
            raise ScoreReconError(f"n_det must be at least 1, got {n_det}; pass a positive detector count")
        self.image_size = image_size
        self.n_angles = n_angles
        self.arc = min(arc, math.pi)
        self.n_det = n_det

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in radians, shape (n_angles,), float64."""
        return self.arc * np.arange(self.n_angles, dtype=np.float64) / self.n_angles

    kind = "parallel"

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ, t)`` of every bin's line ``x cos θ + y sin θ = t``: two (n_angles, n_det) float64 arrays."""
        theta = np.repeat(self.angles[:, None], self.n_det, axis=1)
        t = np.broadcast_to(np.arange(self.n_det, dtype=np.float64) - (self.n_det - 1) / 2.0, theta.shape)
        return theta, np.ascontiguousarray(t)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "parallel", "image_size": self.image_size, "n_angles": self.n_angles,
                "arc": self.arc, "n_det": self.n_det}

    def _key_fields(self) -> dict:
        return dict(self.to_dict(), arc=f"{self.arc:.12f}")

    def __repr__(self) -> str:
        return (f"ParallelBeamGeometry(image_size={self.image_size}, n_angles={self.n_angles}, "
                f"arc={self.arc:.6g}, n_det={self.n_det})")


#: most detector bins per image pixel a fan-beam geometry may need (a parallel beam needs √2; a flat detector
#: with the source at the image's edge needs without bound)
MAX_DET_PER_PIXEL = 8


class FanBeamGeometry(_KeyedGeometry):
    """Fan-beam geometry for ``image_size``² images (all lengths in pixels).

    A point source at ``source_distance`` from the rotation centre (the image centre) turns through
    ``n_angles`` source angles ``β = arc·k/n_angles`` (default 2·image_size angles over a full turn,
    ``arc = 2π``); the detector lies ``detector_distance`` beyond the centre. ``detector="curved"``:
    equiangular bins on an arc about the source, fan angles ``γ_d = (d − (n_det−1)/2)/source_distance``
    (one pixel of arc at the centre); ``"flat"``: equally spaced bins whose pitch, scaled to the
    centre, is one pixel, ``γ_d = atan((d − (n_det−1)/2)/source_distance)``. Default ``n_det``: the
    smallest odd count whose fan covers the image's circumscribed circle. Bin ``d`` at angle ``β``
    measures the line ``θ = β − γ_d``, ``t = source_distance·sin γ_d``. With ideal line integrals
    ``detector_distance`` only sets the physical detector (``detector_pitch``), not the values.
    """

    kind = "fan"

    def __init__(self, image_size: int, source_distance: float, detector_distance: float,
                 n_angles: int | None = None, arc: float = 2.0 * math.pi, detector: str = "curved",
                 n_det: int | None = None) -> None:
        image_size = _as_int(image_size, "image_size")
        if image_size < MIN_IMAGE_SIZE:
            raise ScoreReconError(
                f"CT image size {image_size} is too small; use images of at least "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
        if detector not in DETECTORS:
            raise ScoreReconError(f"unknown fan-beam detector '{detector}'; choose one of {', '.join(DETECTORS)}")
        radius = math.sqrt(2.0) * image_size / 2.0 + 1.0
        try:
            src, det = float(source_distance), float(detector_distance)
        except (TypeError, ValueError):
            raise ScoreReconError("fan-beam source and detector distances must be numbers") from None
        if not (math.isfinite(src) and src > radius):
            raise ScoreReconError(
                f"fan-beam source distance {src:.6g} px must exceed the image's circumscribed radius "
                f"{radius:.1f} px (the source would sit inside the image); give a larger --source-distance")
        if not (math.isfinite(det) and det > 0):
            raise ScoreReconError(f"fan-beam detector distance {det:.6g} px must be a positive number; "
                                  "give the rotation centre to detector distance")
        n_angles = 2 * image_size if n_angles is None else _as_int(n_angles, "n_angles")
        if n_angles < 1:
            raise ScoreReconError(f"n_angles must be at least 1, got {n_angles}; pass a positive angle count")
        arc = float(arc)
        if not (math.isfinite(arc) and 0.0 < arc <= 2.0 * math.pi + 1e-12):
            raise ScoreReconError(
                f"fan-beam arc {arc:.6g} rad is outside (0, 2π]; give the source's arc in radians, at most 2π")
        gamma_max = math.asin(radius / src)
        half = math.ceil(gamma_max * src if detector == "curved" else math.tan(gamma_max) * src)
        n_det = 2 * half + 1 if n_det is None else _as_int(n_det, "n_det")
        if n_det < 1:
            raise ScoreReconError(f"n_det must be at least 1, got {n_det}; pass a positive detector count")
        if n_det > MAX_DET_PER_PIXEL * image_size:  # checked before any projector memory is allocated
            raise ScoreReconError(
                f"a {detector} detector with the source {src:.4g} px from the centre needs {n_det} bins to cover a "
                f"{image_size}-pixel image, more than {MAX_DET_PER_PIXEL} per image pixel: the source sits almost "
                f"at the image's edge ({radius:.1f} px); give a larger --source-distance (e.g. "
                f"{1.5 * radius:.0f} px or more) or a curved detector")
        if n_angles > 4 * 8192:
            raise ScoreReconError(f"n_angles {n_angles} is more than {4 * 8192}; give fewer angles")
        self.image_size = image_size
        self.n_angles = n_angles
        self.arc = min(arc, 2.0 * math.pi)
        self.n_det = n_det
        self.source_distance = src
        self.detector_distance = det
        self.detector = detector

    @property
    def angles(self) -> np.ndarray:
        """Source angles β in radians, shape (n_angles,), float64."""
        return self.arc * np.arange(self.n_angles, dtype=np.float64) / self.n_angles

    @property
    def full_turn(self) -> bool:
        """True when the source angles cover a full turn (the sinogram is periodic in β)."""
        return abs(self.arc - 2.0 * math.pi) < 1e-9

    @property
    def fan_angles(self) -> np.ndarray:
        """Fan angle γ of each bin in radians, shape (n_det,), float64."""
        u = np.arange(self.n_det, dtype=np.float64) - (self.n_det - 1) / 2.0
        return u / self.source_distance if self.detector == "curved" else np.arctan(u / self.source_distance)

    @property
    def detector_pitch(self) -> float:
        """Bin pitch on the physical detector: radians (curved) or pixels at the detector (flat)."""
        if self.detector == "curved":
            return 1.0 / self.source_distance
        return (self.source_distance + self.detector_distance) / self.source_distance

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ, t)`` of every bin's line ``x cos θ + y sin θ = t``: two (n_angles, n_det) float64 arrays."""
        gamma = self.fan_angles[None, :]
        theta = self.angles[:, None] - gamma
        t = np.broadcast_to(self.source_distance * np.sin(gamma), theta.shape)
        return theta, np.ascontiguousarray(t)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "fan", "image_size": self.image_size, "n_angles": self.n_angles, "arc": self.arc,
                "n_det": self.n_det, "source_distance": self.source_distance,
                "detector_distance": self.detector_distance, "detector": self.detector}

    def _key_fields(self) -> dict:
        return dict(self.to_dict(), arc=f"{self.arc:.12f}", source_distance=f"{self.source_distance:.9f}",
                    detector_distance=f"{self.detector_distance:.9f}")

    def __repr__(self) -> str:
        return (f"FanBeamGeometry(image_size={self.image_size}, n_angles={self.n_angles}, arc={self.arc:.6g}, "
                f"n_det={self.n_det}, source_distance={self.source_distance:.6g}, "
                f"detector_distance={self.detector_distance:.6g}, detector={self.detector!r})")


#: either geometry
Geometry = ParallelBeamGeometry | FanBeamGeometry


def make_geometry(image_size: int, kind: str = "parallel", n_angles: int | None = None,
                  source_distance: float | None = None, detector_distance: float | None = None,
                  detector: str = "curved") -> Geometry:
    """The full-angle geometry of ``kind`` ("parallel": π; "fan": 2π, distances in pixels, both required)."""
    if kind == "parallel":
        return ParallelBeamGeometry(image_size, n_angles)
    if kind == "fan":
        if source_distance is None or detector_distance is None:
            raise ScoreReconError("fan-beam geometry needs source_distance and detector_distance (pixels); "
                                  "pass both (CLI: --source-distance MM --detector-distance MM)")
        return FanBeamGeometry(image_size, source_distance, detector_distance, n_angles, detector=detector)
    raise ScoreReconError(f"unknown CT geometry '{kind}'; choose one of {', '.join(GEOMETRIES)}")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise ScoreReconError(f"{name} must be a whole number, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- projector interface
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


# ------------------------------------------------------------------------- Joseph system matrix
def _joseph_view(theta: np.ndarray, t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joseph weights of the rays ``(θ, t)`` (each (R,)): flat pixel indices, weights (R, N, 2), validity."""
    center = (n - 1) / 2.0
    step_pos = center - np.arange(n, dtype=np.float64)[None, :]  # y of row r (or, negated, x of column c)
    t = t[:, None]
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    rows = np.abs(c) >= np.abs(s)  # ray runs mostly along y: step over rows, interpolate between columns
    safe_c, safe_s = np.where(rows, c, 1.0), np.where(rows, 1.0, s)
    pos = np.where(rows, (t - step_pos * s) / safe_c + center,  # fractional column at row r
                   center - (t + step_pos * c) / safe_s)  # fractional row at column c (x = −step_pos)
    length = np.where(rows, 1.0 / np.abs(safe_c), 1.0 / np.abs(safe_s))
    lo = np.floor(pos)
    w_hi = pos - lo
    lo = lo.astype(np.int64)
    w = np.stack([(1.0 - w_hi) * length, w_hi * length], axis=-1)  # (R, N, 2)
    k = np.stack([lo, lo + 1], axis=-1)
    valid = (k >= 0) & (k < n) & (w > 0)
    step_idx = np.arange(n, dtype=np.int64)[None, :, None]
    flat = np.where(rows[..., None], step_idx * n + k, k * n + step_idx)
    return flat, w, valid


def build_joseph_matrix(geometry: Geometry) -> sp.csr_matrix:
    """Joseph system matrix (n_angles·n_det × N², float32, int32 indices) built with numpy.

    Row ``a·n_det + d`` is the ray of angle ``a`` and bin ``d``; column ``r·N + c`` is pixel (r, c).
    """
    n, n_det, n_angles = geometry.image_size, geometry.n_det, geometry.n_angles
    thetas, ts = geometry.rays()
    capacity = n_angles * n_det * n * 2
    indices = np.empty(capacity, dtype=np.int32)
    data = np.empty(capacity, dtype=np.float32)
    counts = np.empty(n_angles * n_det, dtype=np.int64)
    filled = 0
    for a in range(n_angles):
        flat, w, valid = _joseph_view(thetas[a], ts[a], n)
        sel_idx = flat[valid]
        m = sel_idx.size
        indices[filled:filled + m] = sel_idx
        data[filled:filled + m] = w[valid]
        counts[a * n_det:(a + 1) * n_det] = valid.reshape(n_det, -1).sum(axis=1)
        filled += m
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if filled >= np.iinfo(np.int32).max:
        raise ScoreReconError(
            f"the system matrix of {geometry} has {filled} entries, too many for int32 indices; "
            "use backend='matrix-free', a smaller image or fewer angles")
    # views, not copies: the untouched tail of the preallocated buffers never becomes resident
    matrix = sp.csr_matrix((data[:filled], indices[:filled], indptr.astype(np.int32)),
                           shape=(n_angles * n_det, n * n))
    matrix.sort_indices()
    return matrix


def stored_matrix_bytes(geometry: Geometry) -> int:
    """Estimated resident size of the stored Joseph matrix and its transpose (bytes).

    About 0.6 of the ``2·N`` interpolation weights per ray fall inside the image (measured: 324 MB at
    256², 180 angles); each costs 4 + 4 bytes in A and again in Aᵀ.
    """
    return int(0.6 * 2 * geometry.n_angles * geometry.n_det * geometry.image_size * 8 * 2)


def cache_dir() -> Path:
    """Folder of cached system matrices: ``$SCORERECON_CACHE/projectors`` (default ``~/.cache/scorerecon``)."""
    root = os.environ.get("SCORERECON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scorerecon")
    return Path(root) / "projectors"


def cache_path(geometry: Geometry) -> Path:
    """Cache file of the Joseph matrix of ``geometry`` (keyed by geometry hash and format version)."""
    return cache_dir() / f"joseph-v{PROJECTOR_FORMAT_VERSION}-{geometry.key()}.npz"


def _load_cached(path: Path, geometry: Geometry) -> sp.csr_matrix | None:
    shape = (geometry.n_angles * geometry.n_det, geometry.image_size ** 2)
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != PROJECTOR_FORMAT_VERSION or tuple(z["shape"]) != shape:
                return None
            indptr, indices, data = z["indptr"], z["indices"], z["data"]
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if (indptr.dtype != np.int32 or indices.dtype != np.int32 or data.dtype != np.float32
            or indptr.shape != (shape[0] + 1,) or indices.shape != data.shape or int(indptr[-1]) != data.size):
        return None
    # the torch tensor is built without invariant checks, so a tampered or corrupt file must never get that far:
    # row pointers from 0, non-decreasing; column indices inside the image; finite weights
    if (int(indptr[0]) != 0 or bool(np.any(np.diff(indptr) < 0))
            or (indices.size and (int(indices.min()) < 0 or int(indices.max()) >= shape[1]))
            or not bool(np.isfinite(data).all())):
        warnings.warn(f"the cached CT system matrix {path} is invalid (corrupt or edited); rebuilding it",
                      stacklevel=3)
        return None
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def _save_cached(path: Path, matrix: sp.csr_matrix) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, format_version=np.int64(PROJECTOR_FORMAT_VERSION), shape=np.asarray(matrix.shape),
                     indptr=matrix.indptr, indices=matrix.indices, data=matrix.data)
    except OSError as exc:  # an unwritable cache only costs a rebuild next time
        warnings.warn(f"could not cache the CT system matrix at {path} ({exc}); set SCORERECON_CACHE "
                      "to a writable folder to avoid rebuilding it", stacklevel=3)


def _to_torch_csr(m: sp.csr_matrix) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls sparse CSR "beta"; our indices are valid by construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32, copy=False)),
                                       torch.from_numpy(m.indices.astype(np.int32, copy=False)),
                                       torch.from_numpy(m.data), size=m.shape, check_invariants=False)


_memo: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_memo_lock = threading.Lock()
#: counts of how system matrices were obtained (for tests and benchmarks)
STATS = {"built": 0, "loaded": 0}


def joseph_matrices(geometry: Geometry, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, Aᵀ)`` as torch sparse CSR tensors on ``device``: memo → disk cache → build."""
    device = torch.device(device)
    key = (geometry.key(), str(device))
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
        cpu_key = (geometry.key(), "cpu")
        if cpu_key in _memo:
            a_cpu, at_cpu = _memo[cpu_key]
        else:
            path = cache_path(geometry)
            matrix = _load_cached(path, geometry) if path.exists() else None
            if matrix is None:
                matrix = build_joseph_matrix(geometry)
                STATS["built"] += 1
                _save_cached(path, matrix)
            else:
                STATS["loaded"] += 1
            transpose = matrix.T.tocsr()
            transpose.sort_indices()
            a_cpu, at_cpu = _to_torch_csr(matrix), _to_torch_csr(transpose)
            _remember(cpu_key, (a_cpu, at_cpu))
        if device.type == "cpu":
            return a_cpu, at_cpu
        pair = (a_cpu.to(device), at_cpu.to(device))
        _remember(key, pair)
        return pair


def _remember(key: tuple[str, str], value: tuple[torch.Tensor, torch.Tensor]) -> None:
    _memo[key] = value
    _memo.move_to_end(key)
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)


def clear_memo() -> None:
    """Forget the in-process system matrices (the disk cache stays)."""
    with _memo_lock:
        _memo.clear()


def _check_sinogram(s: torch.Tensor, geometry: Geometry, what: str = "sinogram") -> None:
    shape = (geometry.n_angles, geometry.n_det)
    if s.ndim != 4 or s.shape[1] != 1 or tuple(s.shape[-2:]) != shape:
        raise ScoreReconError(
            f"{what} has shape {tuple(s.shape)} but this geometry needs (B, 1, {shape[0]}, {shape[1]}); "
            "build the operator with the sinogram's angle and detector counts")


def _check_square(x: torch.Tensor, geometry: Geometry) -> None:
    n = geometry.image_size
    if x.ndim != 4 or x.shape[1] != 1:
        raise ScoreReconError(f"expected an image batch of shape (B, 1, H, W), got {tuple(x.shape)}; "
                              "add batch/channel axes")
    if x.shape[-1] != x.shape[-2]:
        raise ScoreReconError(f"CT images must be square, got {x.shape[-2]}x{x.shape[-1]}; "
                              "pad or crop the image to a square")
    if x.shape[-1] != n:
        raise ScoreReconError(f"image is {x.shape[-2]}x{x.shape[-1]} but the CT geometry is {n}x{n}; "
                              "resample the image or build the operator for its size")


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
        _check_square(x, self.geometry)
        a, _ = self._mats(x.device)
        b = x.shape[0]
        cols = x.reshape(b, -1).to(torch.float32).t().contiguous()
        out = torch.sparse.mm(a, cols) if b > 1 else torch.mv(a, cols[:, 0])[:, None]
        return out.t().reshape(b, 1, self.geometry.n_angles, self.geometry.n_det)

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """Back-project (B, 1, n_angles, n_det) sinograms with the exact transpose → (B, 1, N, N)."""
        _check_sinogram(s, self.geometry)
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
        _check_square(x, self.geometry)
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
        _check_sinogram(s, self.geometry)
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
        device = torch.device(device)
        if device == self.device:
            return self
        if device not in self._on_device:
            self._on_device[device] = MatrixFreeJosephProjector(self.geometry, device)
        return self._on_device[device]


def auto_backend(geometry: Geometry, device: torch.device | str = "cpu") -> str:
    """The backend ``"auto"`` picks: torch-radon on CUDA (parallel beam, when importable), else the
    stored matrix up to :data:`STORED_MATRIX_MAX_BYTES`, else matrix-free."""
    from . import torch_radon_backend as trb

    device = torch.device(device)
    if device.type == "cuda" and geometry.kind == "parallel" and trb.torch_radon_available():
        return "torch-radon"
    return "joseph" if stored_matrix_bytes(geometry) <= STORED_MATRIX_MAX_BYTES else "matrix-free"


def make_projector(geometry: Geometry, backend: str = "auto",
                   device: torch.device | str = "cpu") -> Projector:
    """Projector for ``geometry`` on ``device``.

    ``backend``: "joseph" (stored sparse matrix), "matrix-free" (computed on the fly),
    "torch-radon" (optional CUDA package, parallel beam only; error if missing) or "auto"
    (:func:`auto_backend`).
    """
    from . import torch_radon_backend as trb

    if backend not in BACKENDS:
        raise ScoreReconError(f"unknown CT backend '{backend}'; choose one of {', '.join(BACKENDS)}")
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
    return JosephProjector(geometry, device)


# ------------------------------------------------------------------------------------------ FBP
_filter_memo: dict[tuple[int, str, str], torch.Tensor] = {}


def fbp_filter(padded_size: int, filter: str = "ram-lak", device: torch.device | str = "cpu") -> torch.Tensor:
    """Real frequency response (padded_size//2 + 1,) of the FBP filter for a one-pixel detector.

    The ramp is the DFT of the spatial Ram-Lak kernel (h[0] = 1/4, h[odd n] = −1/(πn)², else 0),
    so its DC value is the correct small positive one; "hann" multiplies by ½(1 + cos 2πf) and
    "shepp-logan" by sinc(f), f in cycles per pixel.
    """
    if filter not in FILTERS:
        raise ScoreReconError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}")
    key = (padded_size, filter, str(device))
    if key not in _filter_memo:
        n = np.fft.fftfreq(padded_size, d=1.0 / padded_size).round().astype(np.int64)
        h = np.zeros(padded_size)
        h[0] = 0.25
        odd = n % 2 == 1
        h[odd] = -1.0 / (np.pi * n[odd]) ** 2
        ramp = np.fft.rfft(h).real
        f = np.fft.rfftfreq(padded_size)
        if filter == "hann":
            ramp = ramp * 0.5 * (1.0 + np.cos(2.0 * np.pi * f))
        elif filter == "shepp-logan":
            ramp = ramp * np.sinc(f)
        _filter_memo[key] = torch.as_tensor(ramp, dtype=torch.float32, device=device)
    return _filter_memo[key]


def filter_sinogram(sino: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
    """Filter (B, 1, n_angles, n_det) sinograms along the detector (zero-padded FFT)."""
    n_det = sino.shape[-1]
    padded = max(64, 1 << math.ceil(math.log2(2 * n_det)))
    response = fbp_filter(padded, filter, sino.device)
    spec = torch.fft.rfft(sino.to(torch.float32), n=padded, dim=-1)
    return torch.fft.irfft(spec * response, n=padded, dim=-1)[..., :n_det]


def fbp(sino: torch.Tensor, geometry: Geometry, filter: str = "ram-lak",
        view_weights: torch.Tensor | np.ndarray | None = None, projector: Projector | None = None,
        coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Filtered back-projection of (B, 1, n_angles, n_det) sinograms → (B, 1, N, N) images.

    Parallel beam: scaled by ``arc / n_angles`` (π / n_angles over a 180° set), so a full-view FBP
    returns the attenuation per pixel. ``view_weights`` (n_angles,) multiplies each filtered view:
    for a sparse subset of n of N views use N/n on the measured views and 0 elsewhere; for a limited
    arc use 1 and 0. ``projector`` defaults to the projector of ``geometry`` (``backend="auto"``).
    Fan beam: :func:`fan_fbp` (rebinning to parallel beam; ``coverage`` as there, ``projector`` unused).
    """
    if geometry.kind == "fan":
        return fan_fbp(sino, geometry, filter, view_weights, coverage)
    _check_sinogram(sino, geometry)
    projector = projector if projector is not None else make_projector(geometry, "auto", sino.device)
    filtered = filter_sinogram(sino, filter)
    if view_weights is not None:
        w = _view_vector(view_weights, geometry, sino.device, "view_weights")
        filtered = filtered * w.view(1, 1, -1, 1)
    return projector.adjoint(filtered) * (geometry.arc / geometry.n_angles)


def _view_vector(v: torch.Tensor | np.ndarray, geometry: Geometry, device: torch.device, what: str) -> torch.Tensor:
    w = torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
    if w.shape[0] != geometry.n_angles:
        raise ScoreReconError(f"{what} has {w.shape[0]} entries but the geometry has "
                              f"{geometry.n_angles} angles; give one weight per angle")
    return w


def rebinned_geometry(geometry: FanBeamGeometry) -> ParallelBeamGeometry:
    """The parallel-beam geometry :func:`fan_fbp` rebins ``geometry`` onto: ⌈n_angles / 2⌉ angles over
    [0, π) (a full turn sees every line twice) and the default one-pixel bins."""
    n_par = max(1, math.ceil(geometry.n_angles / 2))
    return ParallelBeamGeometry(geometry.image_size, n_par)


_rebin_memo: dict[tuple[str, str], torch.Tensor] = {}


def _rebin_grid(geometry: FanBeamGeometry, device: torch.device) -> torch.Tensor:
    """grid_sample grid (2, n_par, n_det_par, 2) locating both fan samples of every parallel line."""
    key = (geometry.key(), str(device))
    if key not in _rebin_memo:
        par = rebinned_geometry(geometry)
        theta = par.angles[:, None]
        t = np.arange(par.n_det, dtype=np.float64)[None, :] - (par.n_det - 1) / 2.0
        src = geometry.source_distance
        gamma = np.arcsin(np.clip(t / src, -1.0, 1.0))
        c_det = (geometry.n_det - 1) / 2.0
        # the sinogram gets one view before and two after (bicubic needs two neighbours): wrapped for a full
        # turn, zeros otherwise
        n_views = geometry.n_angles + 3
        d_beta = geometry.arc / geometry.n_angles
        grids = []
        # line (θ, t) is bin γ at β = θ + γ, and again (as (θ + π, −t)) bin −γ at β = θ + π − γ
        for beta, g in ((theta + gamma, gamma), (theta + math.pi - gamma, -gamma)):
            if geometry.full_turn:
                beta = np.mod(beta, 2.0 * math.pi)
            v = beta / d_beta + 1.0
            u = (g * src if geometry.detector == "curved" else np.tan(g) * src) + c_det
            u = np.where(np.abs(t) < src, u, -10.0)  # lines that miss the fan
            gx = 2.0 * u / max(1, geometry.n_det - 1) - 1.0
            gy = 2.0 * v / (n_views - 1) - 1.0
            gx, gy = np.broadcast_arrays(gx, gy)
            grids.append(np.stack([gx, gy], axis=-1))
        _rebin_memo[key] = torch.as_tensor(np.stack(grids), dtype=torch.float32, device=device)
    return _rebin_memo[key]


def rebin_to_parallel(sino: torch.Tensor, geometry: FanBeamGeometry,
                      coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Fan sinograms (B, 1, n_angles, n_det) → parallel ones on :func:`rebinned_geometry`.

    Each parallel line is read (bicubic in source angle and bin, :data:`REBIN_MODE`) from both fan
    views that contain it and the two are averaged, each weighted by its (bilinearly) interpolated
    ``coverage`` (n_angles,) (1 for a measured view, 0 for none; default all measured): a line
    measured once keeps that value, a line never measured is 0.
    """
    _check_sinogram(sino, geometry)
    b = sino.shape[0]
    dev = sino.device
    grid = _rebin_grid(geometry, dev)
    cov = (torch.ones(geometry.n_angles, device=dev) if coverage is None
           else _view_vector(coverage, geometry, dev, "coverage"))
    def pad(v: torch.Tensor) -> torch.Tensor:
        if geometry.full_turn:
            return torch.cat([v[..., -1:, :], v, v[..., :2, :]], dim=-2)
        return F.pad(v, (0, 0, 1, 2))

    s = pad(sino.to(torch.float32))
    cv = pad(cov.view(1, 1, -1, 1).expand(1, 1, geometry.n_angles, geometry.n_det))
    vals, weights = 0.0, 0.0
    for k in range(2):
        g = grid[k:k + 1]
        vals = vals + F.grid_sample(s.reshape(1, b, *s.shape[-2:]), g, mode=REBIN_MODE, padding_mode="zeros",
                                    align_corners=True)[0]
        weights = weights + F.grid_sample(cv, g, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out = torch.where(weights > 1e-6, vals / weights.clamp_min(1e-6), torch.zeros_like(vals))
    return out.reshape(b, 1, *out.shape[-2:])


def fan_fbp(sino: torch.Tensor, geometry: FanBeamGeometry, filter: str = "ram-lak",
            view_weights: torch.Tensor | np.ndarray | None = None,
            coverage: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Fan-beam FBP by rebinning to parallel beam (:func:`rebin_to_parallel`), then parallel FBP.

    ``view_weights`` (n_angles,) multiply the fan views first (sparse views: N/n on the measured
    ones, with ``coverage`` left at all views); for a limited arc pass the measured views as
    ``coverage`` (1/0) so lines seen once are not halved. Returns (B, 1, N, N).
    """
    if view_weights is not None:
        sino = sino * _view_vector(view_weights, geometry, sino.device, "view_weights").view(1, 1, -1, 1)
    par = rebinned_geometry(geometry)
    return fbp(rebin_to_parallel(sino, geometry, coverage), par, filter)


# ------------------------------------------------------------------------------------ operators
class CTOperator(MeasurementOperator):
    """CT operator ``A = P(Λ) T`` with ``T`` the full-angle projection (parallel or fan beam).

    Measurements are full-layout sinograms (B, 1, n_angles, n_det) with zeros where Λ = 0.
    ``T_inv`` is full-angle FBP; :meth:`proximal` offers the paper's FBP form and a CGLS
    least-squares solve (``default_solver``). ``geometry="fan"`` needs ``source_distance`` and
    ``detector_distance`` in pixels (:class:`FanBeamGeometry`; its full set spans 360°).
    """

    #: data-consistency solver used when :meth:`proximal` is called without ``solver``
    default_solver: str = "cg"
    #: CGLS iterations per proximal step when none are given
    default_cg_iterations: int = 20

    def __init__(self, image_size: int, n_angles: int | None = None, backend: str = "auto",
                 device: torch.device | str = "cpu", filter: str = "ram-lak", geometry: str = "parallel",
                 source_distance: float | None = None, detector_distance: float | None = None,
                 detector: str = "curved") -> None:
        if filter not in FILTERS:
            raise ScoreReconError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}")
        self.geometry: Geometry = make_geometry(image_size, geometry, n_angles, source_distance,
                                                detector_distance, detector)
        self.image_size = self.geometry.image_size
        self.backend = backend
        self.filter = filter
        self.device = torch.device(device)
        self.projector: Projector = make_projector(self.geometry, backend, self.device)

    # -------------------------------------------------------------------------------- transform
    def T(self, x: torch.Tensor) -> torch.Tensor:
        """Full-angle projection (B, 1, N, N) → (B, 1, n_angles, n_det), pixel-unit line integrals."""
        return self.projector.forward(x)

    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`T` (unfiltered back-projection)."""
        return self.projector.adjoint(m)

    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        """Full-angle FBP with this operator's filter."""
        return fbp(m, self.geometry, self.filter, projector=self.projector)

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, 1, self.geometry.n_angles, self.geometry.n_det)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model ``Λ ⊙ T x`` (full layout); rejects NaN/inf input."""
        self.check_image(x)
        check_finite(x, "the CT image")
        return self.mask_apply(self.T(x))

    def check_measurement(self, y: torch.Tensor) -> None:
        """Raise :class:`ScoreReconError` unless ``y`` is a finite full-layout sinogram batch."""
        _check_sinogram(y, self.geometry, "CT measurement")
        check_finite(y, "the CT measurement")

    # ------------------------------------------------------------------------ data consistency
    def proximal(self, x: torch.Tensor, y_hat: torch.Tensor, lam: float, solver: str | None = None,
                 iterations: int | None = None) -> torch.Tensor:
        """Data-consistency step ``x + λ·d`` toward the measured rows of ``y_hat``.

        ``solver="fbp"``: ``d = FBP_full(Λ(ŷ − T x))`` (the paper's PyTorch-port form).
        ``solver="cg"``: ``d`` = min-norm least-squares solution of ``Λ T d = Λ(ŷ − T x)`` by
        ``iterations`` CGLS steps from 0 (default :attr:`default_cg_iterations`); with λ = 1 and
        enough iterations ``Λ T x'`` reproduces ``Λ ŷ``.
        """
        solver = self.default_solver if solver is None else solver
        if solver not in SOLVERS:
            raise ScoreReconError(f"unknown CT proximal solver '{solver}'; choose one of {', '.join(SOLVERS)}")
        if lam == 0:
            return x
        residual = self.mask_apply(y_hat - self.T(x))
        if solver == "fbp":
            step = self.T_inv(residual)
        else:
            step = self.least_squares(residual, self.default_cg_iterations if iterations is None else iterations)
        return x + lam * step.to(x.dtype)

    # ------------------------------------------------------------------------------ bookkeeping
    def to(self, device: torch.device | str) -> CTOperator:
        """Move the projector and masks to ``device`` (returns self)."""
        self.device = torch.device(device)
        self.projector = self.projector.to(self.device)
        self._move_masks(self.device)
        return self

    def _move_masks(self, device: torch.device) -> None:
        """Subclasses move their mask tensors."""

    def _base_spec(self) -> dict:
        spec = {"task": self.task, "image_size": self.image_size, "n_angles": self.geometry.n_angles,
                "n_det": self.geometry.n_det, "backend": self.backend, "filter": self.filter,
                "solver": self.default_solver, "cg_iterations": self.default_cg_iterations,
                "geometry": self.geometry.kind}
        if self.geometry.kind == "fan":
            spec.update(source_distance=self.geometry.source_distance,
                        detector_distance=self.geometry.detector_distance, detector=self.geometry.detector)
        return spec

    def _geometry_options(self) -> dict:
        """The constructor options that rebuild this operator's geometry."""
        g = self.geometry
        if g.kind == "fan":
            return {"geometry": "fan", "source_distance": g.source_distance,
                    "detector_distance": g.detector_distance, "detector": g.detector}
        return {"geometry": "parallel"}


def _views_from_count(n_angles: int, views: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n_angles - 1, views)).astype(np.int64))


class _ViewSubsetCT(CTOperator):
    """Shared code of operators whose Λ selects whole views: mask (1, 1, n_angles, 1)."""

    #: multiply measured views by n_angles / n_measured in A_dagger (sparse) or not (limited)
    _reweight: bool = False

    def _set_views(self, views: np.ndarray) -> None:
        raw = np.asarray(views).reshape(-1)
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not (np.isfinite(raw).all()
                                                                        and (raw == np.round(raw)).all())):
            raise ScoreReconError(f"view indices must be whole numbers, got {raw[:5].tolist()} ({raw.dtype}); "
                                  "check the views array")
        views = raw.astype(np.int64)
        n = self.geometry.n_angles
        if views.size < 1:
            raise ScoreReconError("no measured views; measure at least one angle")
        if views.min() < 0 or views.max() >= n or np.unique(views).size != views.size:
            raise ScoreReconError(f"view indices must be distinct integers in [0, {n - 1}]; check the views array")
        self.views = np.sort(views)
        m = torch.zeros(1, 1, n, 1, dtype=torch.float32)
        m[0, 0, torch.from_numpy(self.views), 0] = 1.0
        self._mask = m.to(self.device)

    @property
    def mask(self) -> torch.Tensor:
        """Λ (1, 1, n_angles, 1): 1 on measured views."""
        return self._mask

    def _move_masks(self, device: torch.device) -> None:
        self._mask = self._mask.to(device)

    @property
    def view_weights(self) -> torch.Tensor:
        """Per-angle FBP weights (n_angles,) used by :meth:`A_dagger`."""
        w = self._mask.reshape(-1)
        return w * (self.geometry.n_angles / len(self.views)) if self._reweight else w

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """FBP from the measured views only."""
        self.check_measurement(y)
        coverage = None if self._reweight else self._mask.reshape(-1).to(y.device)
        return fbp(self.mask_apply(y), self.geometry, self.filter, self.view_weights.to(y.device),
                   projector=self.projector, coverage=coverage)

    def arrays(self) -> dict:
        return {"views": self.views.copy()}


class SparseViewCT(_ViewSubsetCT):
    """Sparse-view CT: ``views`` of the ``n_angles`` equally spaced angles of the full set (parallel:
    default N over [0, π); fan: default 2N source angles over [0, 2π)). ``geometry`` options as
    :class:`CTOperator`.

    ``views``: a count (indices ``round(linspace(0, n_angles − 1, views))``) or explicit indices.
    """

    task = "sparse-ct"
    _reweight = True

    def __init__(self, image_size: int, views: int | np.ndarray = 23, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak",
                 **geometry: Any) -> None:
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        n = self.geometry.n_angles
        if np.ndim(views) == 0:
            count = _as_int(views, "views")
            if count < 1:
                raise ScoreReconError(f"views must be at least 1, got {count}; measure at least one angle")
            if count > n:
                raise ScoreReconError(f"views ({count}) exceeds the {n} angles of the full set; "
                                      f"use at most {n} views or raise n_angles")
            views = _views_from_count(n, count)
        self._set_views(np.asarray(views))

    def spec(self) -> dict:
        return dict(self._base_spec(), views=int(len(self.views)))


class LimitedAngleCT(_ViewSubsetCT):
    """Limited-angle CT: the full set (parallel: 180°; fan: 360° of source angles) with only the angles
    below ``arc_degrees`` measured."""

    task = "limited-angle-ct"
    _reweight = False

    def __init__(self, image_size: int, arc_degrees: float = 90.0, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak",
                 **geometry: Any) -> None:
        try:
            arc = float(arc_degrees)
        except (TypeError, ValueError):
            raise ScoreReconError(f"arc must be a number of degrees, got {arc_degrees!r}") from None
        top = 360.0 if geometry.get("geometry", "parallel") == "fan" else 180.0
        if not (math.isfinite(arc) and 0.0 < arc <= top):
            raise ScoreReconError(f"limited-angle arc {arc:g}° is outside (0, {top:g}]; give the scanned arc "
                                  "in degrees")
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        self.arc_degrees = arc
        angles = self.geometry.angles
        views = np.nonzero(angles < math.radians(arc) - 1e-9)[0]
        if views.size == 0:
            raise ScoreReconError(f"a {arc:g}° arc holds none of the {self.geometry.n_angles} angles; "
                                  "widen the arc or raise n_angles")
        self._set_views(views)

    def spec(self) -> dict:
        return dict(self._base_spec(), arc=self.arc_degrees)


class MetalTraceCT(CTOperator):
    """Metal-artifact CT: Λ drops the sinogram bins whose rays cross the (dilated) metal.

    ``metal_mask``: (B, 1, N, N) or (N, N) bool; the mask Λ is (B, 1, n_angles, n_det), one per
    batch item (a single mask is broadcast over any batch). ``dilation`` grows the metal by that
    many pixels before its trace is taken. Alternatively pass ``measured_bins`` (Λ itself).
    """

    task = "metal-ct"

    def __init__(self, image_size: int, metal_mask: torch.Tensor | np.ndarray | None = None,
                 n_angles: int | None = None, dilation: int = 1, backend: str = "auto",
                 device: torch.device | str = "cpu", filter: str = "ram-lak",
                 measured_bins: torch.Tensor | np.ndarray | None = None, **geometry: Any) -> None:
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        dilation = _as_int(dilation, "dilation")
        if dilation < 0:
            raise ScoreReconError(f"dilation must be 0 or more pixels, got {dilation}")
        self.dilation = dilation
        if (metal_mask is None) == (measured_bins is None):
            raise ScoreReconError("metal-ct needs a metal mask (B,1,H,W); pass metal_mask= "
                                  "(e.g. from metal_mask_from_image or random_metal_mask)")
        if metal_mask is not None:
            mm = _as_bool_mask(metal_mask, self.image_size, "metal_mask").to(self.device)
            self.metal_mask = mm
            grown = F.max_pool2d(mm.float(), 2 * dilation + 1, stride=1, padding=dilation) if dilation else mm.float()
            trace = self.T(grown)
            self._mask = (trace <= TRACE_THRESHOLD).to(torch.float32)
        else:
            mb = torch.as_tensor(np.asarray(measured_bins) if not isinstance(measured_bins, torch.Tensor)
                                 else measured_bins)
            if mb.ndim == 2:
                mb = mb[None, None]
            if mb.ndim != 4 or mb.shape[1] != 1 or tuple(mb.shape[-2:]) != self.geometry.sinogram_shape:
                raise ScoreReconError(f"measured_bins has shape {tuple(mb.shape)}, expected (B, 1, "
                                      f"{self.geometry.n_angles}, {self.geometry.n_det}); rebuild the metal mask")
            self._mask = (mb > 0).to(torch.float32).to(self.device)
            self.metal_mask = None

    @property
    def mask(self) -> torch.Tensor:
        """Λ (B, 1, n_angles, n_det): 1 on bins outside the metal trace."""
        return self._mask

    def _move_masks(self, device: torch.device) -> None:
        self._mask = self._mask.to(device)
        if self.metal_mask is not None:
            self.metal_mask = self.metal_mask.to(device)

    def check_image(self, x: torch.Tensor) -> None:
        super().check_image(x)
        nb = self._mask.shape[0]
        if nb != 1 and x.shape[0] != nb:
            raise ScoreReconError(f"this metal-ct operator holds {nb} metal masks but got {x.shape[0]} images; "
                                  "pass one metal mask per image")

    def compact(self, y: torch.Tensor) -> torch.Tensor:
        counts = torch.broadcast_to(self._mask.to(y.device) > 0, y.shape).reshape(y.shape[0], -1).sum(1)
        if y.shape[0] > 1 and bool((counts != counts[0]).any()):
            raise ScoreReconError("metal traces differ between batch items, so their measured bins "
                                  "cannot be stacked; compact one image at a time")
        return super().compact(y)

    def inpaint(self, y: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of ``y`` across the metal trace along the detector (LI-MAR)."""
        mask = torch.broadcast_to(self._mask.to(y.device) > 0, y.shape)
        return interpolate_trace(y, mask)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """LI-MAR: inpaint the trace by linear interpolation along the detector, then full FBP."""
        self.check_measurement(y)
        return fbp(self.inpaint(y), self.geometry, self.filter, projector=self.projector)

    def spec(self) -> dict:
        return dict(self._base_spec(), dilation=self.dilation)

    def arrays(self) -> dict:
        out = {"measured_bins": (self._mask > 0).to(torch.uint8).cpu().numpy()}
        if self.metal_mask is not None:
            out["metal_mask"] = self.metal_mask.to(torch.uint8).cpu().numpy()
        return out


def interpolate_trace(y: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """Fill unmeasured bins of ``y`` (…, n_det) by linear interpolation along the last axis.

    ``measured``: bool of the same shape. Bins before the first / after the last measured bin take
    its value; rows with nothing measured become 0.
    """
    n = y.shape[-1]
    idx = torch.arange(n, device=y.device).expand_as(y)
    big = n + 1
    left = torch.where(measured, idx, torch.full_like(idx, -1)).cummax(dim=-1).values
    right_src = torch.where(measured, idx, torch.full_like(idx, big)).flip(-1)
    right = (-(-right_src).cummax(dim=-1).values).flip(-1)
    has_left, has_right = left >= 0, right < big
    left_c, right_c = left.clamp(0, n - 1), right.clamp(0, n - 1)
    yl, yr = y.gather(-1, left_c), y.gather(-1, right_c)
    span = (right - left).clamp_min(1).to(y.dtype)
    frac = (idx - left).to(y.dtype) / span
    both = yl + frac * (yr - yl)
    out = torch.where(has_left & has_right, both, torch.where(has_left, yl, torch.where(has_right, yr, 0.0 * y)))
    return torch.where(measured, y, out)


def _as_bool_mask(mask: torch.Tensor | np.ndarray, size: int, what: str) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
    if m.ndim == 2:
        m = m[None, None]
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-1] != m.shape[-2] or m.shape[-1] != size:
        raise ScoreReconError(f"{what} has shape {tuple(m.shape)}, expected (B, 1, {size}, {size}) "
                              "like the image; give one mask per image")
    if m.dtype != torch.bool:
        check_finite(m.float(), what)
        m = m > 0
    return m.cpu()


# ------------------------------------------------------------------------------------- metal
def metal_mask_from_image(x_hu: torch.Tensor | np.ndarray, threshold: float = 3000.0) -> torch.Tensor:
    """Metal segmentation by threshold: bool tensor of ``x_hu``'s shape, True where HU > ``threshold``."""
    x = torch.as_tensor(np.asarray(x_hu)) if not isinstance(x_hu, torch.Tensor) else x_hu
    check_finite(x, "the CT image (HU)")
    return x > float(threshold)


def random_metal_mask(image_size: int, n_objects: int = 2, seed: int = 0,
                      inside: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Random small dense ellipses like fillings (round) or screws (elongated): (1, 1, N, N) bool.

    Each object lies wholly inside ``inside`` ((N, N) bool body mask; default a centred disc of
    radius 0.4·N) and objects do not touch. Semi-axes are 1.5–4 % of N (at least 1.5 px).
    """
    size = _as_int(image_size, "image_size")
    n_objects = _as_int(n_objects, "n_objects")
    if size < MIN_IMAGE_SIZE:
        raise ScoreReconError(f"image size {size} is too small; use at least {MIN_IMAGE_SIZE}")
    if n_objects < 1:
        raise ScoreReconError(f"n_objects must be at least 1, got {n_objects}")
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    if inside is None:
        c0 = (size - 1) / 2.0
        body = (rr - c0) ** 2 + (cc - c0) ** 2 <= (0.4 * size) ** 2
    else:
        body = _as_bool_mask(inside, size, "inside").numpy()[0, 0]
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size), dtype=bool)
    placed, tries = 0, 0
    while placed < n_objects:
        tries += 1
        if tries > 500 * n_objects:
            raise ScoreReconError(f"could not place {n_objects} metal objects inside the body mask; "
                                  "give a larger body mask or fewer objects")
        screw = placed % 2 == 1
        a = max(1.5, size * rng.uniform(0.02, 0.04))
        b = max(1.5, a / rng.uniform(2.5, 4.0)) if screw else max(1.5, a * rng.uniform(0.6, 1.0))
        phi = rng.uniform(0, np.pi)
        cr, ccol = rng.uniform(0, size - 1, size=2)
        u = (cc - ccol) * np.cos(phi) + (rr - cr) * np.sin(phi)
        v = -(cc - ccol) * np.sin(phi) + (rr - cr) * np.cos(phi)
        obj = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        halo = (u / (a + 2)) ** 2 + (v / (b + 2)) ** 2 <= 1.0
        if not obj.any() or not body[halo].all() or (out & halo).any():
            continue
        out |= obj
        placed += 1
    return torch.from_numpy(out)[None, None]


# -------------------------------------------------------------------------------- construction
def build_ct_operator(task: str, image_size: int, **options: Any) -> CTOperator:
    """Make a CT operator: task "sparse-ct" (``views``=23), "limited-angle-ct" (``arc`` degrees = 90)
    or "metal-ct" (``metal_mask``, ``dilation``=1); common ``n_angles``, ``backend``, ``device``,
    ``filter``, ``solver``, ``cg_iterations`` and the geometry: ``geometry`` ("parallel" or "fan"),
    for fan ``source_distance``, ``detector_distance`` (pixels) and ``detector`` ("curved", "flat").
    Options set to None take their defaults.
    """
    opts = {k: v for k, v in options.items() if v is not None}
    solver = opts.pop("solver", None)
    cg_iterations = opts.pop("cg_iterations", None)
    if "arc_degrees" in opts and "arc" not in opts:
        opts["arc"] = opts.pop("arc_degrees")
    allowed = {"sparse-ct": {"views"}, "limited-angle-ct": {"arc"}, "metal-ct": {"metal_mask", "dilation",
                                                                                 "measured_bins"}}
    if task not in allowed:
        raise ScoreReconError(f"unknown CT task '{task}'; choose sparse-ct, limited-angle-ct or metal-ct")
    common = {"n_angles", "backend", "device", "filter", "geometry", "source_distance", "detector_distance",
              "detector"}
    unknown = set(opts) - allowed[task] - common
    if unknown:
        raise ScoreReconError(f"unknown option(s) {', '.join(sorted(unknown))} for {task}; allowed: "
                              f"{', '.join(sorted(allowed[task] | common | {'solver', 'cg_iterations'}))}")
    if task == "sparse-ct":
        op: CTOperator = SparseViewCT(image_size, **opts)
    elif task == "limited-angle-ct":
        if "arc" in opts:
            opts["arc_degrees"] = opts.pop("arc")
        op = LimitedAngleCT(image_size, **opts)
    else:
        op = MetalTraceCT(image_size, **opts)
    if solver is not None:
        if solver not in SOLVERS:
            raise ScoreReconError(f"unknown CT proximal solver '{solver}'; choose one of {', '.join(SOLVERS)}")
        op.default_solver = solver
    if cg_iterations is not None:
        op.default_cg_iterations = check_count(cg_iterations, "cg_iterations", MAX_CG_ITERATIONS)
    return op


def _geometry_from_spec(spec: dict) -> dict:
    """The geometry options of an operator spec (older specs without ``geometry`` are parallel beam)."""
    kind = spec.get("geometry", "parallel")
    if kind not in GEOMETRIES:
        raise ScoreReconError(f"the operator description names CT geometry {kind!r}; this version knows "
                              f"{', '.join(GEOMETRIES)}")
    if kind == "parallel":
        return {"geometry": "parallel"}
    return {"geometry": "fan", "source_distance": spec["source_distance"],
            "detector_distance": spec["detector_distance"], "detector": spec.get("detector", "curved")}


def ct_operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> CTOperator:
    """Rebuild a CT operator from ``op.spec()`` and ``op.arrays()``."""
    task = spec.get("task")
    arc = spec.get("arc")
    if arc is not None and (isinstance(arc, bool) or not isinstance(arc, int | float) or not math.isfinite(arc)
                            or not 0 < arc <= 360):
        raise ScoreReconError(f"the CT operator's arc {str(arc)[:40]!r} must be a number of degrees in (0, 360]; the "
                              "measurement file is corrupt, simulate it again")
    try:
        size = int(spec["image_size"])
        common = {"n_angles": spec.get("n_angles"), "backend": spec.get("backend", "auto"),
                  "device": device, "filter": spec.get("filter", "ram-lak"), **_geometry_from_spec(spec)}
        if task == "sparse-ct":
            op: CTOperator = SparseViewCT(size, views=np.asarray(arrays["views"]), **common)
        elif task == "limited-angle-ct":
            op = LimitedAngleCT(size, arc_degrees=float(spec["arc"]), **common)
            if not np.array_equal(op.views, np.asarray(arrays.get("views", op.views))):
                op._set_views(np.asarray(arrays["views"]))
        elif task == "metal-ct":
            op = MetalTraceCT(size, measured_bins=arrays["measured_bins"], dilation=int(spec.get("dilation", 1)),
                              **common)
            if "metal_mask" in arrays:
                op.metal_mask = _as_bool_mask(arrays["metal_mask"], size, "metal_mask").to(op.device)
        else:
            raise ScoreReconError(f"spec describes unknown CT task '{task}'; expected sparse-ct, "
                                  "limited-angle-ct or metal-ct")
    except KeyError as exc:
        raise ScoreReconError(f"the {task} operator description lacks '{exc.args[0]}'; the measurement "
                              "file is incomplete, simulate it again") from None
    if "n_det" in spec and int(spec["n_det"]) != op.geometry.n_det:
        raise ScoreReconError(f"stored n_det {spec['n_det']} differs from this version's {op.geometry.n_det}; "
                              "simulate the measurement again")
    if spec.get("solver") in SOLVERS:
        op.default_solver = spec["solver"]
    if spec.get("cg_iterations") is not None:
        op.default_cg_iterations = check_count(spec["cg_iterations"], "cg_iterations", MAX_CG_ITERATIONS,
                                               where="of the CT operator")
    return op


__all__ = [
    "BACKENDS", "DETECTORS", "FILTERS", "GEOMETRIES", "SOLVERS", "CTOperator", "FanBeamGeometry", "Geometry",
    "JosephProjector", "LimitedAngleCT", "MatrixFreeJosephProjector", "MetalTraceCT", "ParallelBeamGeometry",
    "Projector", "SparseViewCT", "auto_backend", "build_ct_operator", "build_joseph_matrix", "cache_dir",
    "cache_path", "clear_memo", "ct_operator_from_spec", "fan_fbp", "fbp", "fbp_filter", "filter_sinogram",
    "interpolate_trace", "joseph_matrices", "make_geometry", "make_projector", "metal_mask_from_image",
    "random_metal_mask", "rebin_to_parallel", "rebinned_geometry", "stored_matrix_bytes",
]
