"""Parallel-beam CT: geometry, Joseph projector, FBP and the sparse / limited / metal operators.

Geometry (pixel units throughout): an ``N×N`` image with pixel ``(row r, column c)`` centred at
``x = c − (N−1)/2`` (right) and ``y = (N−1)/2 − r`` (up). At angle ``θ`` the detector bin ``d``
measures the line integral along ``x cos θ + y sin θ = t`` with ``t = d − (n_det−1)/2``; detector
spacing is one pixel. So θ = 0 sums the image down its columns (like ``skimage.transform.radon``)
and values are line integrals in pixel lengths.

The projector is Joseph's method (one linear interpolation per row or column the ray crosses,
weighted by the path length per step), stored as a ``torch.sparse_csr`` matrix with int32 indices
together with its transpose (``A.t() @ y`` on a CSR matrix is ~100× slower than a stored ``Aᵀ``).
The matrix is built with vectorised numpy, cached on disk under ``$SCORERECON_CACHE/projectors``
(default ``~/.cache/scorerecon/projectors``) and memoised in the process.

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
#: projector backends accepted by the CT operators
BACKENDS = ("auto", "joseph", "torch-radon")
#: a sinogram bin counts as "in the metal trace" above this path length through metal (pixels)
TRACE_THRESHOLD = 1e-3
#: how many (geometry, device) system matrices the process keeps in memory
_MEMO_SIZE = 4


# ------------------------------------------------------------------------------------ geometry
class ParallelBeamGeometry:
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

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "parallel", "image_size": self.image_size, "n_angles": self.n_angles,
                "arc": self.arc, "n_det": self.n_det}

    def key(self) -> str:
        """Stable hash of the geometry (16 hex digits), used to name cached system matrices."""
        d = dict(self.to_dict(), arc=f"{self.arc:.12f}")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParallelBeamGeometry) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return (f"ParallelBeamGeometry(image_size={self.image_size}, n_angles={self.n_angles}, "
                f"arc={self.arc:.6g}, n_det={self.n_det})")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise ScoreReconError(f"{name} must be a whole number, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- projector interface
class Projector(Protocol):
    """What the CT operators need from a projector backend."""

    geometry: ParallelBeamGeometry
    device: torch.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, N) image → (B, 1, n_angles, n_det) sinogram."""

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_angles, n_det) sinogram → (B, 1, N, N) image (exact transpose of ``forward``)."""

    def to(self, device: torch.device | str) -> Projector:
        """The same projector on ``device``."""


# ------------------------------------------------------------------------- Joseph system matrix
def build_joseph_matrix(geometry: ParallelBeamGeometry) -> sp.csr_matrix:
    """Joseph system matrix (n_angles·n_det × N², float32, int32 indices) built with numpy.

    Row ``a·n_det + d`` is the ray of angle ``a`` and bin ``d``; column ``r·N + c`` is pixel (r, c).
    """
    n, n_det = geometry.image_size, geometry.n_det
    angles = geometry.angles
    center, det_center = (n - 1) / 2.0, (n_det - 1) / 2.0
    t = (np.arange(n_det, dtype=np.float64) - det_center)[:, None]  # (n_det, 1)
    steps = np.arange(n, dtype=np.float64)[None, :]  # (1, N): row (or column) index
    step_pos = center - steps  # y of row r (or, negated, x of column c)
    capacity = len(angles) * n_det * n * 2
    indices = np.empty(capacity, dtype=np.int32)
    data = np.empty(capacity, dtype=np.float32)
    counts = np.empty(len(angles) * n_det, dtype=np.int64)
    step_idx = np.arange(n, dtype=np.int64)[None, :]
    filled = 0
    for a, theta in enumerate(angles):
        c, s = math.cos(theta), math.sin(theta)
        if abs(c) >= abs(s):
            # ray runs mostly along y: step over rows r, interpolate along the row between columns
            pos = (t - step_pos * s) / c + center  # fractional column (n_det, N)
            length = 1.0 / abs(c)
        else:
            # ray runs mostly along x: step over columns c, interpolate along the column between rows
            x = -step_pos  # x of column index k is k − center
            pos = center - (t - x * c) / s  # fractional row (n_det, N)
            length = 1.0 / abs(s)
        lo = np.floor(pos)
        w_hi = pos - lo
        lo = lo.astype(np.int64)
        w = np.stack([(1.0 - w_hi) * length, w_hi * length], axis=-1)  # (n_det, N, 2)
        k = np.stack([lo, lo + 1], axis=-1)
        valid = (k >= 0) & (k < n) & (w > 0)
        if abs(c) >= abs(s):
            flat = step_idx[..., None] * n + k  # pixel (r = step, c = k)
        else:
            flat = k * n + step_idx[..., None]  # pixel (r = k, c = step)
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
            "use a smaller image or fewer angles")
    # views, not copies: the untouched tail of the preallocated buffers never becomes resident
    matrix = sp.csr_matrix((data[:filled], indices[:filled], indptr.astype(np.int32)),
                           shape=(len(angles) * n_det, n * n))
    matrix.sort_indices()
    return matrix


def cache_dir() -> Path:
    """Folder of cached system matrices: ``$SCORERECON_CACHE/projectors`` (default ``~/.cache/scorerecon``)."""
    root = os.environ.get("SCORERECON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scorerecon")
    return Path(root) / "projectors"


def cache_path(geometry: ParallelBeamGeometry) -> Path:
    """Cache file of the Joseph matrix of ``geometry`` (keyed by geometry hash and format version)."""
    return cache_dir() / f"joseph-v{PROJECTOR_FORMAT_VERSION}-{geometry.key()}.npz"


def _load_cached(path: Path, geometry: ParallelBeamGeometry) -> sp.csr_matrix | None:
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


def joseph_matrices(geometry: ParallelBeamGeometry, device: torch.device | str = "cpu"
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


def _check_sinogram(s: torch.Tensor, geometry: ParallelBeamGeometry, what: str = "sinogram") -> None:
    shape = (geometry.n_angles, geometry.n_det)
    if s.ndim != 4 or s.shape[1] != 1 or tuple(s.shape[-2:]) != shape:
        raise ScoreReconError(
            f"{what} has shape {tuple(s.shape)} but this geometry needs (B, 1, {shape[0]}, {shape[1]}); "
            "build the operator with the sinogram's angle and detector counts")


def _check_square(x: torch.Tensor, geometry: ParallelBeamGeometry) -> None:
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
    """Joseph parallel-beam projector as a sparse matrix with a stored transpose.

    ``forward``: (B, 1, N, N) → (B, 1, n_angles, n_det) line integrals in pixel units;
    ``adjoint``: its exact transpose. Inputs are cast to float32; the batch is one sparse @ dense
    product with the images as columns.
    """

    name = "joseph"

    def __init__(self, geometry: ParallelBeamGeometry, device: torch.device | str = "cpu") -> None:
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


def make_projector(geometry: ParallelBeamGeometry, backend: str = "auto",
                   device: torch.device | str = "cpu") -> Projector:
    """Projector for ``geometry`` on ``device``.

    ``backend``: "joseph" (built in), "torch-radon" (optional CUDA package; error if missing) or
    "auto" (torch-radon on CUDA when importable, else Joseph).
    """
    from . import torch_radon_backend as trb

    if backend not in BACKENDS:
        raise ScoreReconError(f"unknown CT backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "torch-radon" or (backend == "auto" and device.type == "cuda" and trb.torch_radon_available()):
        return trb.TorchRadonProjector(geometry, device)
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


def fbp(sino: torch.Tensor, geometry: ParallelBeamGeometry, filter: str = "ram-lak",
        view_weights: torch.Tensor | np.ndarray | None = None, projector: Projector | None = None
        ) -> torch.Tensor:
    """Filtered back-projection of (B, 1, n_angles, n_det) sinograms → (B, 1, N, N) images.

    Scaled by ``arc / n_angles`` (π / n_angles over a 180° set), so a full-view FBP returns the
    attenuation per pixel. ``view_weights`` (n_angles,) multiplies each filtered view: for a
    sparse subset of n of N views use N/n on the measured views and 0 elsewhere; for a limited
    arc use 1 and 0. ``projector`` defaults to the Joseph projector of ``geometry``.
    """
    _check_sinogram(sino, geometry)
    projector = projector if projector is not None else JosephProjector(geometry, sino.device)
    filtered = filter_sinogram(sino, filter)
    if view_weights is not None:
        w = torch.as_tensor(view_weights, dtype=torch.float32, device=sino.device)
        if w.ndim == 1:
            if w.shape[0] != geometry.n_angles:
                raise ScoreReconError(f"view_weights has {w.shape[0]} entries but the geometry has "
                                      f"{geometry.n_angles} angles; give one weight per angle")
            w = w.view(1, 1, -1, 1)
        filtered = filtered * w
    return projector.adjoint(filtered) * (geometry.arc / geometry.n_angles)


# ------------------------------------------------------------------------------------ operators
class CTOperator(MeasurementOperator):
    """CT operator ``A = P(Λ) T`` with ``T`` the full-angle parallel-beam projection.

    Measurements are full-layout sinograms (B, 1, n_angles, n_det) with zeros where Λ = 0.
    ``T_inv`` is full-angle FBP; :meth:`proximal` offers the paper's FBP form and a CGLS
    least-squares solve (``default_solver``).
    """

    #: data-consistency solver used when :meth:`proximal` is called without ``solver``
    default_solver: str = "cg"
    #: CGLS iterations per proximal step when none are given
    default_cg_iterations: int = 20

    def __init__(self, image_size: int, n_angles: int | None = None, backend: str = "auto",
                 device: torch.device | str = "cpu", filter: str = "ram-lak") -> None:
        if filter not in FILTERS:
            raise ScoreReconError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}")
        self.geometry = ParallelBeamGeometry(image_size, n_angles)
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
        return {"task": self.task, "image_size": self.image_size, "n_angles": self.geometry.n_angles,
                "n_det": self.geometry.n_det, "backend": self.backend, "filter": self.filter,
                "solver": self.default_solver, "cg_iterations": self.default_cg_iterations}


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
        return fbp(self.mask_apply(y), self.geometry, self.filter, self.view_weights.to(y.device),
                   projector=self.projector)

    def arrays(self) -> dict:
        return {"views": self.views.copy()}


class SparseViewCT(_ViewSubsetCT):
    """Sparse-view CT: ``views`` of the ``n_angles`` (default N) equally spaced angles over [0, π).

    ``views``: a count (indices ``round(linspace(0, n_angles − 1, views))``) or explicit indices.
    """

    task = "sparse-ct"
    _reweight = True

    def __init__(self, image_size: int, views: int | np.ndarray = 23, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak") -> None:
        super().__init__(image_size, n_angles, backend, device, filter)
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
    """Limited-angle CT: the full set over 180° with only the angles below ``arc_degrees`` measured."""

    task = "limited-angle-ct"
    _reweight = False

    def __init__(self, image_size: int, arc_degrees: float = 90.0, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak") -> None:
        try:
            arc = float(arc_degrees)
        except (TypeError, ValueError):
            raise ScoreReconError(f"arc must be a number of degrees, got {arc_degrees!r}") from None
        if not (math.isfinite(arc) and 0.0 < arc <= 180.0):
            raise ScoreReconError(f"limited-angle arc {arc:g}° is outside (0, 180]; give the scanned arc in degrees")
        super().__init__(image_size, n_angles, backend, device, filter)
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
                 measured_bins: torch.Tensor | np.ndarray | None = None) -> None:
        super().__init__(image_size, n_angles, backend, device, filter)
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
    ``filter``, ``solver``, ``cg_iterations``. Options set to None take their defaults.
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
    common = {"n_angles", "backend", "device", "filter"}
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
        op.default_cg_iterations = _as_int(cg_iterations, "cg_iterations")
    return op


def ct_operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> CTOperator:
    """Rebuild a CT operator from ``op.spec()`` and ``op.arrays()``."""
    task = spec.get("task")
    try:
        size = int(spec["image_size"])
        common = {"n_angles": spec.get("n_angles"), "backend": spec.get("backend", "auto"),
                  "device": device, "filter": spec.get("filter", "ram-lak")}
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
        op.default_cg_iterations = int(spec["cg_iterations"])
    return op


__all__ = [
    "BACKENDS", "FILTERS", "SOLVERS", "CTOperator", "JosephProjector", "LimitedAngleCT", "MetalTraceCT",
    "ParallelBeamGeometry", "Projector", "SparseViewCT", "build_ct_operator", "build_joseph_matrix",
    "cache_dir", "cache_path", "clear_memo", "ct_operator_from_spec", "fbp", "fbp_filter", "filter_sinogram",
    "interpolate_trace", "joseph_matrices", "make_projector", "metal_mask_from_image", "random_metal_mask",
]
