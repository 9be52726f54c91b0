"""The stored Joseph system matrix: built with vectorised numpy, cached on disk, memoised in the process.

The matrix is kept as a ``torch.sparse_csr`` tensor with int32 indices together with its transpose
(``A.t() @ y`` on a CSR matrix is ~100× slower than a stored ``Aᵀ``). It is cached on disk under
``$SCORERECON_CACHE/projectors`` (default ``~/.cache/scorerecon/projectors``) keyed by the geometry's
hash and :data:`PROJECTOR_FORMAT_VERSION`, and the process keeps the last :data:`_MEMO_SIZE`
(geometry, device) pairs (:func:`joseph_matrices`, :func:`clear_memo`, :data:`STATS`).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import ScoreReconError
from ..utils import atomic_path
from .geometry import Geometry

#: version of the on-disk system-matrix format; bump to invalidate old caches
PROJECTOR_FORMAT_VERSION = 1
#: how many (geometry, device) system matrices the process keeps in memory
_MEMO_SIZE = 4


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


#: a CPU sparse × dense product gathers rows of the dense block at random; it keeps this many bytes of it per pass
#: (at 512² a block of 16 image columns, 16.8 MB, made the forward product 4× slower than two blocks of 8 on this
#: project's 2-core EPYC; at 128² and 256² every batch fits and nothing changes)
DENSE_BLOCK_BYTES = 8 * 2**20


def sparse_mm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a sparse CSR ``matrix`` and a dense ``(K, M)`` block; on CPU the columns go in groups
    whose ``(K, group)`` slice stays within :data:`DENSE_BLOCK_BYTES` (the product's random row gathers then hit
    the cache)."""
    if dense.shape[1] == 1:
        return torch.mv(matrix, dense[:, 0])[:, None]
    group = max(1, DENSE_BLOCK_BYTES // max(1, dense.shape[0] * dense.element_size()))
    if dense.device.type != "cpu" or dense.shape[1] <= group:
        return torch.sparse.mm(matrix, dense)
    return torch.cat([torch.sparse.mm(matrix, dense[:, i:i + group].contiguous())
                      for i in range(0, dense.shape[1], group)], dim=1)


def clear_memo() -> None:
    """Forget the in-process system matrices (the disk cache stays)."""
    with _memo_lock:
        _memo.clear()


__all__ = [
    "DENSE_BLOCK_BYTES", "PROJECTOR_FORMAT_VERSION", "STATS", "build_joseph_matrix", "cache_dir", "cache_path",
    "clear_memo", "joseph_matrices", "sparse_mm", "stored_matrix_bytes",
]
