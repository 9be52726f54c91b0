"""The stored Joseph matrix of a few views; the other views by the symmetries of the square pixel grid.

The eight symmetries ``Q`` of the square (rotations by 90° and mirrors, the dihedral group D4) map the
pixel grid onto itself. A line ``p·u = t`` of the image ``f ∘ Q`` is the line ``q·(Q u) = t`` of ``f``,
so the projection of ``f`` along a ray equals the projection of ``f ∘ Q`` along the ray that ``Q``
maps onto it. The Joseph weights (:mod:`.system_matrix`) obey the same symmetry exactly, because
``Q`` only permutes and mirrors the axes the ray steps over and interpolates along; the one
exception is a ray at exactly 45° to the axes, where Joseph's tie rule (step over rows) does not
turn with ``Q``, so such views are never mapped by a ``Q`` that swaps the axes.

:func:`symmetry_plan` finds, greedily in view order, a small set of *base* views from which every view of a
geometry follows (a view whose rays are the ``Q``-images of a base view's rays, in the same or reversed bin
order); :class:`SymmetricJosephProjector` stores the Joseph matrix of the base views only, projects
the ``Q``-transformed images with it in one sparse product and gathers each view's bins. For the
usual full scans (parallel beam, n angles over 180° with n divisible by 4; fan beam, a full turn
with n divisible by 4) the base is about a quarter (parallel: a 180° turn only reverses a view's
bins) or an eighth (fan) of the views, and so is the stored matrix; the result equals the full stored
matrix's up to float rounding. Geometries without such symmetry keep every view as a base view (no saving, same result).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .geometry import Geometry, ViewSubsetGeometry, check_sinogram, check_square_image
from .projectors import copy_on_device
from .system_matrix import sparse_mm, stored_matrix_bytes

#: the eight symmetries of the square as 2×2 integer matrices acting on (x, y) pixel-centre coordinates
_D4 = [np.array(m, dtype=np.int64) for m in (
    [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],  # rotations by 0, 90, 180, 270°
    [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],  # mirrors x, y, y = x, y = −x
)]
#: rays closer than this (in cos / sin and in detector units) are the same ray
_TOL = 1e-7


@dataclass(frozen=True)
class SymmetryPlan:
    """Which stored view and symmetry give each view of a geometry.

    ``base``: indices of the stored views (ascending); per view ``k``: ``source[k]`` the position in
    ``base`` of the view it follows from, ``transform[k]`` the index into the symmetries used
    (:data:`_D4`, 0 the identity) and ``reverse[k]`` whether its bins come in reversed order.
    """

    base: np.ndarray
    source: np.ndarray
    transform: np.ndarray
    reverse: np.ndarray

    @property
    def transforms_used(self) -> np.ndarray:
        """Indices of the symmetries that some view uses (ascending)."""
        return np.unique(self.transform)


def _canonical(u: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each line ``p·u = t`` written with the sign that makes ``(t, u_y, u_x)`` lexicographically positive."""
    flip = (t < -_TOL) | ((np.abs(t) <= _TOL) & ((u[..., 1] < -_TOL) | ((np.abs(u[..., 1]) <= _TOL) & (u[..., 0] < 0))))
    sign = np.where(flip, -1.0, 1.0)
    return u * sign[..., None], t * sign


def _same_rays(u_a: np.ndarray, t_a: np.ndarray, u_b: np.ndarray, t_b: np.ndarray) -> bool:
    ua, ta = _canonical(u_a, t_a)
    ub, tb = _canonical(u_b, t_b)
    return bool(np.all(np.abs(ua - ub) <= _TOL) and np.all(np.abs(ta - tb) <= _TOL))


def _view_key(u: np.ndarray, t: np.ndarray) -> tuple:
    """A key of a view's rays that does not depend on their order: its two end rays, canonical, rounded, sorted."""
    cu, ct = _canonical(u[[0, -1]], t[[0, -1]])
    ends = sorted(tuple(np.round([cu[i, 0], cu[i, 1], ct[i]], 5)) for i in range(2))
    return tuple(ends)


def symmetry_plan(geometry: Geometry) -> SymmetryPlan:
    """The base views of ``geometry`` and, for every view, the base view, symmetry and bin order it follows from.

    Greedy in view order: a view becomes a base view unless a symmetry maps the rays of an earlier base view
    onto its own (same or reversed bin order). Memoised per geometry (0.2 s at 512² with 512 views); the arrays
    are read-only."""
    return _plan(geometry)


@lru_cache(maxsize=16)
def _plan(geometry: Geometry) -> SymmetryPlan:
    theta, t = geometry.rays()  # (n_angles, n_det) each: the line x cos θ + y sin θ = t of every bin
    u = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    tie = np.any(np.abs(np.abs(u[..., 0]) - np.abs(u[..., 1])) <= _TOL, axis=1)  # a 45° ray in the view
    n_views = theta.shape[0]
    base: list[int] = []
    index: dict[tuple, list[int]] = {}
    source = np.zeros(n_views, dtype=np.int64)
    transform = np.zeros(n_views, dtype=np.int64)
    reverse = np.zeros(n_views, dtype=bool)
    for k in range(n_views):
        found = None
        for qi, q in enumerate(_D4):
            swaps = q[0, 0] == 0
            if swaps and tie[k]:
                continue
            # the base rays that Q maps onto view k are the lines of normal Qᵀ u_k (Q is orthogonal)
            u_pre = u[k] @ q  # row vectors: (Qᵀ u)ᵀ = uᵀ Q
            for pos in index.get(_view_key(u_pre, t[k]), []):
                j = base[pos]
                if swaps and tie[j]:
                    continue
                if _same_rays(u[j], t[j], u_pre, t[k]):
                    found = (pos, qi, False)
                elif _same_rays(u[j], t[j], u_pre[::-1], t[k][::-1]):
                    found = (pos, qi, True)
                if found:
                    break
            if found:
                break
        if found is None:
            index.setdefault(_view_key(u[k], t[k]), []).append(len(base))
            found = (len(base), 0, False)
            base.append(k)
        source[k], transform[k], reverse[k] = found
    arrays = [np.asarray(base, dtype=np.int64), source, transform, reverse]
    for a in arrays:
        a.flags.writeable = False
    return SymmetryPlan(*arrays)


def pixel_permutation(n: int, q: np.ndarray) -> np.ndarray:
    """Flat indices ``perm`` (N²,) with ``(f ∘ Q)[i] = f[perm[i]]`` for an ``n × n`` image, row ``r`` at
    ``y = c₀ − r`` and column ``c`` at ``x = c − c₀`` (c₀ = (n − 1)/2: the Joseph matrix's convention)."""
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    xy2 = np.stack([2 * c - (n - 1), (n - 1) - 2 * r], axis=-1).reshape(-1, 2)  # doubled: stays integral
    q_xy2 = xy2 @ q.T
    cols = (q_xy2[:, 0] + (n - 1)) // 2
    rows = ((n - 1) - q_xy2[:, 1]) // 2
    return rows * n + cols


def symmetric_matrix_bytes(geometry: Geometry) -> int:
    """Estimated resident size of the base views' stored matrix and its transpose (bytes)."""
    plan = symmetry_plan(geometry)
    return stored_matrix_bytes(geometry) * len(plan.base) // max(1, geometry.n_angles)


class SymmetricJosephProjector:
    """Joseph projector (parallel or fan beam) from the stored matrix of the base views of
    :func:`symmetry_plan`: the same values as :class:`~.projectors.JosephProjector` up to float rounding,
    with about 1/8 (parallel, 180°) of its memory on symmetric scans.

    ``forward``: (B, 1, N, N) → (B, 1, n_angles, n_det); ``adjoint``: its exact transpose (the same stored
    matrices, transposed permutations and scatters).
    """

    name = "joseph-symmetric"

    def __init__(self, geometry: Geometry, device: torch.device | str = "cpu") -> None:
        from .projectors import JosephProjector

        self.geometry = geometry
        self.device = torch.device(device)
        self.plan = symmetry_plan(geometry)
        if isinstance(geometry, ViewSubsetGeometry):  # a subset of a subset is a subset of the parent
            self.base_geometry = ViewSubsetGeometry(geometry.parent, geometry.views[self.plan.base])
        else:
            self.base_geometry = ViewSubsetGeometry(geometry, self.plan.base)
        self._base = JosephProjector(self.base_geometry, self.device)
        n, n_det = geometry.image_size, geometry.n_det
        used = self.plan.transforms_used
        self._slot = {int(q): i for i, q in enumerate(used)}
        self._perm = torch.as_tensor(np.stack([pixel_permutation(n, _D4[q]) for q in used]), device=self.device)
        self._inverse = torch.argsort(self._perm, dim=1)
        bins = np.arange(n_det)
        rows = [self.plan.source[k] * n_det + (bins[::-1] if self.plan.reverse[k] else bins)
                for k in range(geometry.n_angles)]
        self._rows = torch.as_tensor(np.concatenate(rows), device=self.device)
        slots = np.repeat([self._slot[int(q)] for q in self.plan.transform], n_det)
        self._slots = torch.as_tensor(slots, device=self.device)
        self._on_device: dict[torch.device, SymmetricJosephProjector] = {}

    @property
    def stored_views(self) -> int:
        """Number of views whose matrix rows are stored."""
        return len(self.plan.base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (B, 1, N, N) images to (B, 1, n_angles, n_det) sinograms."""
        check_square_image(x, self.geometry)
        if x.device != self.device:
            return self.to(x.device).forward(x)
        b = x.shape[0]
        flat = x.reshape(b, -1).to(torch.float32)
        # columns: every used symmetry's image of every batch item, (N², n_sym·B)
        cols = flat[:, self._perm].permute(2, 1, 0).reshape(flat.shape[1], -1).contiguous()
        y = sparse_mm(self._base.matrix, cols).reshape(-1, len(self._slot), b)
        out = y[self._rows, self._slots]  # (n_angles·n_det, B)
        return out.t().reshape(b, 1, self.geometry.n_angles, self.geometry.n_det)

    def adjoint(self, s: torch.Tensor) -> torch.Tensor:
        """Back-project (B, 1, n_angles, n_det) sinograms with the exact transpose → (B, 1, N, N)."""
        check_sinogram(s, self.geometry)
        if s.device != self.device:
            return self.to(s.device).adjoint(s)
        b, n = s.shape[0], self.geometry.image_size
        rays = s.reshape(b, -1).to(torch.float32).t()  # (n_rays, B)
        z = torch.zeros(self._base.matrix.shape[0], len(self._slot), b, dtype=torch.float32, device=s.device)
        z.index_put_((self._rows, self._slots), rays, accumulate=True)
        w = torch.sparse.mm(self._base.matrix_t, z.reshape(z.shape[0], -1))  # (N², n_sym·B)
        w = w.reshape(n * n, len(self._slot), b).permute(1, 2, 0)  # (n_sym, B, N²)
        out = torch.zeros(b, n * n, dtype=torch.float32, device=s.device)
        for i in range(len(self._slot)):  # the transpose of the gather f[perm] is the gather by perm⁻¹
            out += w[i][:, self._inverse[i]]
        return out.reshape(b, 1, n, n)

    def to(self, device: torch.device | str) -> SymmetricJosephProjector:
        """This projector on ``device`` (kept, so input on another device does not rebuild it every call)."""
        return copy_on_device(self, device)


__all__ = ["SymmetricJosephProjector", "SymmetryPlan", "pixel_permutation", "symmetric_matrix_bytes",
           "symmetry_plan"]
