"""Single-coil undersampled MRI: ``A = Λ F`` with ``F`` the centred orthonormal 2-D FFT.

Images are real ``(B, 1, N, N)`` float32 batches; k-space is complex64 ``(B, 1, N, N)`` in full
layout (zeros where nothing was measured). Sampling masks Λ are ``(N, N)`` float32 0/1 arrays:

- ``equispaced``: 1-D Cartesian (phase encodes along W, i.e. whole columns), a fully sampled
  centre of ``round(N·center_fraction)`` columns plus equispaced outer columns (fastMRI style),
- ``random``: the same centre plus uniformly random outer columns (seeded),
- ``variable-density``: 2-D random points drawn from a density falling off with |k| (seeded),
- ``poisson``: 2-D variable-density Poisson-disc points (seeded dart throwing).

Every mask samples exactly ``round(N²/acceleration)`` points (1-D: ``round(N/acceleration)``
columns), so the realised acceleration is the requested one up to that rounding.

Because the image space is real, the operator works with the real inner product
``<u, v> = Re Σ conj(u) v``: ``T_adjoint = T_inv = Re F⁻¹``, and the proximal step and ``A_dagger``
use the conjugate symmetry of the k-space of a real image (a measured point also fixes its mirror
``-k``), so λ = 1 puts ŷ on every measured k-space point exactly whenever ŷ is the k-space of some
real image (and is the real least-squares compromise when it is not).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ScoreReconError
from ..utils import resolve_device
from ..vocabulary import MRI_MASKS
from .base import MeasurementOperator

#: mask kinds accepted by :func:`make_mask` and :func:`build_mri_operator`
MASK_KINDS = MRI_MASKS
_ALIASES = {"equispaced": "equispaced", "random": "random", "variable-density": "variable-density",
            "variable_density": "variable-density", "vd": "variable-density", "poisson": "poisson",
            "poisson-disc": "poisson", "poisson_disc": "poisson", "poisson-disk": "poisson"}
#: smallest image side the masks and the operator accept
MIN_SIZE = 8
#: variable-density mask: sampling weight ∝ (1 − ρ)^VD_POWER + VD_FLOOR, ρ = |k| / k_max clipped to 1
VD_POWER = 2.0
VD_FLOOR = 0.02
#: Poisson-disc mask: exclusion radius ∝ 1 + POISSON_FALLOFF · ρ (density ∝ radius⁻²)
POISSON_FALLOFF = 2.0


# ----------------------------------------------------------------------------------------- FFT
def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (DC at index N//2); real or complex in."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (centred orthonormal 2-D inverse FFT over the last two axes)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def _mirror_index(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Index of frequency −k for each centred index (DC at n//2): ``(2·(n//2) − i) mod n``."""
    return (2 * (n // 2) - torch.arange(n, device=device)) % n


def conjugate_mirror(k: torch.Tensor) -> torch.Tensor:
    """``out[.., i, j] = conj(k[.., −i, −j])`` in centred indexing; equals ``k`` for the FFT of a real image."""
    ih = _mirror_index(k.shape[-2], k.device)
    iw = _mirror_index(k.shape[-1], k.device)
    out = k.index_select(-2, ih).index_select(-1, iw)
    return out.conj() if out.is_complex() else out


# --------------------------------------------------------------------------------------- masks
def _check_mask_args(size: int, acceleration: float, center_fraction: float) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIZE:
        raise ScoreReconError(f"mask size {size!r} is too small; use an integer image size of at least {MIN_SIZE}")
    if not math.isfinite(float(acceleration)) or acceleration < 1:
        raise ScoreReconError(f"acceleration {acceleration} is below 1; use an acceleration ≥ 1 (e.g. 4 or 8)")
    if not math.isfinite(float(center_fraction)) or not 0 <= center_fraction < 1:
        raise ScoreReconError(
            f"center_fraction {center_fraction} is outside [0, 1); use a fraction such as 0.08"
        )


def _centre_block(n: int, n_low: int) -> slice:
    start = (n - n_low + 1) // 2
    return slice(start, start + n_low)


def _line_counts(size: int, acceleration: float, center_fraction: float) -> tuple[int, int]:
    """(total sampled columns, fully sampled centre columns) for a 1-D mask; raises if infeasible."""
    _check_mask_args(size, acceleration, center_fraction)
    n_total = round(size / acceleration)
    if n_total < 1:
        raise ScoreReconError(
            f"acceleration {acceleration} leaves no k-space line of a {size}-wide image; use an acceleration ≤ {size}"
        )
    n_low = round(size * center_fraction)
    if n_low > n_total:
        raise ScoreReconError(
            f"center_fraction {center_fraction} fully samples {n_low} of {size} columns, more than the {n_total} "
            f"that acceleration {acceleration} allows; lower center_fraction to at most "
            f"{math.floor(100 * (n_total + 0.49) / size) / 100:.2f} or the acceleration"
        )
    return n_total, n_low


def _columns_to_mask(size: int, columns: np.ndarray) -> torch.Tensor:
    mask = np.zeros((size, size), dtype=np.float32)
    mask[:, columns] = 1.0
    return torch.from_numpy(mask)


def equispaced_mask(size: int, acceleration: float, center_fraction: float = 0.08) -> torch.Tensor:
    """1-D Cartesian mask (H, W) float32: fully sampled centre columns + equispaced outer columns.

    ``round(W·center_fraction)`` centre columns are always sampled; the remaining
    ``round(W/acceleration) − centre`` columns are spread at equal steps over the outer columns
    (half a step in from each end), so the total is ``round(W/acceleration)``. Deterministic.
    """
    n_total, n_low = _line_counts(size, acceleration, center_fraction)
    centre = np.arange(size)[_centre_block(size, n_low)]
    outer = np.setdiff1d(np.arange(size), centre)
    n_extra = n_total - n_low
    step = len(outer) / n_extra if n_extra else 0.0
    picks = outer[np.floor((np.arange(n_extra) + 0.5) * step).astype(int)] if n_extra else outer[:0]
    return _columns_to_mask(size, np.concatenate([centre, picks]))


def random_mask(size: int, acceleration: float, center_fraction: float = 0.08, seed: int = 0) -> torch.Tensor:
    """1-D Cartesian mask (H, W) float32: fully sampled centre + uniformly random outer columns (seeded)."""
    n_total, n_low = _line_counts(size, acceleration, center_fraction)
    centre = np.arange(size)[_centre_block(size, n_low)]
    outer = np.setdiff1d(np.arange(size), centre)
    rng = np.random.default_rng(seed)
    picks = rng.choice(outer, size=n_total - n_low, replace=False)
    return _columns_to_mask(size, np.concatenate([centre, picks]))


def _radius_map(size: int) -> np.ndarray:
    """Normalised |k| per pixel: distance from the DC pixel over size/2 (1 at the edge midpoints)."""
    k = np.arange(size) - size // 2
    return np.sqrt(k[:, None] ** 2 + k[None, :] ** 2) / (size / 2)


def _point_counts(size: int, acceleration: float, center_fraction: float) -> tuple[int, np.ndarray]:
    """(total sampled points, boolean calibration square) for a 2-D mask; raises if infeasible."""
    _check_mask_args(size, acceleration, center_fraction)
    n_total = round(size * size / acceleration)
    calib = np.zeros((size, size), dtype=bool)
    n_low = max(round(size * center_fraction), 1)
    block = _centre_block(size, n_low)
    calib[block, block] = True
    if calib.sum() > n_total:
        raise ScoreReconError(
            f"center_fraction {center_fraction} fully samples a {n_low}x{n_low} centre, more than the {n_total} "
            f"points that acceleration {acceleration} allows; lower center_fraction or the acceleration"
        )
    return n_total, calib


def _weighted_pick(rng: np.random.Generator, weights: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct flat indices drawn without replacement ∝ ``weights`` (Efraimidis–Spirakis keys)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.log(rng.random(weights.size)) / np.maximum(weights.ravel(), 1e-12)
    return np.argpartition(-keys, count - 1)[:count]


def variable_density_mask(size: int, acceleration: float, seed: int = 0, center_fraction: float = 0.0) -> torch.Tensor:
    """2-D random mask (H, W) float32 with density ∝ (1 − |k|/k_max)² + 0.02 (seeded).

    The DC point (and a ``round(N·center_fraction)``² centre square when ``center_fraction`` > 0)
    is always sampled; in all exactly ``round(N²/acceleration)`` points are.
    """
    n_total, calib = _point_counts(size, acceleration, center_fraction)
    rng = np.random.default_rng(seed)
    weights = (1.0 - np.minimum(_radius_map(size), 1.0)) ** VD_POWER + VD_FLOOR
    weights[calib] = 0.0
    free = np.flatnonzero(~calib.ravel())
    picks = free[_weighted_pick(rng, weights.ravel()[free], n_total - int(calib.sum()))]
    mask = calib.ravel().copy()
    mask[picks] = True
    return torch.from_numpy(mask.reshape(size, size).astype(np.float32))


def _disc_stencils(radii: np.ndarray) -> dict[float, np.ndarray]:
    stencils = {}
    for r in np.unique(radii):
        h = int(math.ceil(r)) - 1 if r > 0 else 0
        d = np.arange(-h, h + 1)
        stencils[float(r)] = (d[:, None] ** 2 + d[None, :] ** 2) < r * r
    return stencils


def _dart_throw(order: np.ndarray, radius: np.ndarray, calib: np.ndarray) -> np.ndarray:
    """Accept points in ``order`` unless within an accepted point's exclusion radius (calibration first)."""
    size = radius.shape[0]
    pad = int(math.ceil(radius.max()))
    forbidden = np.zeros((size + 2 * pad, size + 2 * pad), dtype=bool)
    stencils = _disc_stencils(radius)
    accepted = np.zeros(size * size, dtype=bool)
    flat_forbidden = forbidden.ravel()
    stride = size + 2 * pad

    def accept(i: int, j: int) -> None:
        accepted[i * size + j] = True
        st = stencils[float(radius[i, j])]
        h = st.shape[0] // 2
        forbidden[i + pad - h:i + pad + h + 1, j + pad - h:j + pad + h + 1] |= st

    for idx in np.flatnonzero(calib.ravel()).tolist():
        accept(*divmod(idx, size))
    for idx in order.tolist():
        i, j = divmod(idx, size)
        if not flat_forbidden[(i + pad) * stride + j + pad]:
            accept(i, j)
    return accepted


def poisson_disc_mask(size: int, acceleration: float, seed: int = 0, center_fraction: float = 0.0) -> torch.Tensor:
    """2-D variable-density Poisson-disc mask (H, W) float32 (seeded; own dart-throwing implementation).

    Points are visited in a seeded random order and kept unless closer than ``r(k)`` to a kept
    point, with ``r(k) = s·(1 + 2|k|/k_max)`` (density ∝ r⁻²). The scale ``s`` is found by
    bisection so the count is within 2 % of ``round(N²/acceleration)``, then a few random points are
    dropped or added (∝ r⁻²) to hit it exactly. The DC point (and a centre square when
    ``center_fraction`` > 0) is always sampled.
    """
    n_total, calib = _point_counts(size, acceleration, center_fraction)
    rng = np.random.default_rng(seed)
    rho = _radius_map(size)
    order = rng.permutation(size * size)
    shape = 1.0 + POISSON_FALLOFF * np.minimum(rho, math.sqrt(2.0))

    def throw(scale: float) -> np.ndarray:
        radius = np.round(scale * shape * 8.0) / 8.0  # quantised so stencils can be shared
        return _dart_throw(order, radius, calib)

    lo, hi = 0.1, float(size)  # lo keeps every point, hi keeps (almost) none
    accepted = throw(lo)
    if accepted.sum() > n_total:
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            accepted = throw(mid)
            count = int(accepted.sum())
            if abs(count - n_total) <= 0.02 * n_total:
                break
            lo, hi = (mid, hi) if count > n_total else (lo, mid)
    count = int(accepted.sum())
    if count > n_total:
        removable = np.flatnonzero(accepted & ~calib.ravel())
        accepted[rng.choice(removable, size=count - n_total, replace=False)] = False
    elif count < n_total:
        free = np.flatnonzero(~accepted)
        weights = 1.0 / shape.ravel()[free] ** 2
        accepted[free[_weighted_pick(rng, weights, n_total - count)]] = True
    return torch.from_numpy(accepted.reshape(size, size).astype(np.float32))


def make_mask(kind: str, size: int, acceleration: float, center_fraction: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Sampling mask (size, size) float32 0/1 of ``kind`` (see :data:`MASK_KINDS`)."""
    name = _ALIASES.get(str(kind).lower())
    if name == "equispaced":
        return equispaced_mask(size, acceleration, center_fraction)
    if name == "random":
        return random_mask(size, acceleration, center_fraction, seed)
    if name == "variable-density":
        return variable_density_mask(size, acceleration, seed, center_fraction)
    if name == "poisson":
        return poisson_disc_mask(size, acceleration, seed, center_fraction)
    raise ScoreReconError(f"unknown MRI mask kind '{kind}'; choose one of {', '.join(MASK_KINDS)}")


# ------------------------------------------------------------------------------------ operator
class UndersampledMRI(MeasurementOperator):
    """Single-coil Cartesian MRI ``A = Λ F`` for real ``(B, 1, N, N)`` images.

    ``mask``: (N, N) 0/1 array or tensor (or (1, 1, N, N)). ``kind``/``acceleration``/
    ``center_fraction``/``seed`` only describe how it was made (kept in :meth:`spec`).
    """

    task = "mri"
    measurement_name = "k-space"
    measurement_hint = "; pass y for this mask size"
    operator_label = "MRI operator"

    def __init__(self, mask: torch.Tensor | np.ndarray, kind: str = "custom", acceleration: float | None = None,
                 center_fraction: float | None = None, seed: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).detach()
        if m.ndim == 4 and m.shape[0] == 1 and m.shape[1] == 1:
            m = m[0, 0]
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ScoreReconError(f"MRI mask must be a square (N, N) array, got shape {tuple(m.shape)}; "
                                  "pass one 2-D k-space mask")
        if m.shape[0] < MIN_SIZE:
            raise ScoreReconError(f"MRI mask is {m.shape[0]}x{m.shape[1]}, too small; use images of at least "
                                  f"{MIN_SIZE}x{MIN_SIZE}")
        m = m.to(torch.float32)
        if not torch.isfinite(m).all() or not ((m == 0) | (m == 1)).all():
            raise ScoreReconError("MRI mask must hold only 0 and 1; threshold it (mask > 0) first")
        if m.sum() == 0:
            raise ScoreReconError("MRI mask samples no k-space point; use a mask with at least one 1")
        self.image_size = int(m.shape[0])
        self.kind = str(kind)
        self.requested_acceleration = None if acceleration is None else float(acceleration)
        self.center_fraction = None if center_fraction is None else float(center_fraction)
        self.seed = None if seed is None else int(seed)
        self._mask = m.reshape(1, 1, self.image_size, self.image_size).to(resolve_device(device))
        self._mirror = conjugate_mirror(self._mask)

    # ------------------------------------------------------------------------------- transform
    @property
    def mask(self) -> torch.Tensor:
        """Λ as (1, 1, N, N) float32 0/1."""
        return self._mask

    @property
    def acceleration(self) -> float:
        """Realised acceleration N² / (number of sampled points)."""
        return float(self._mask.numel() / self._mask.sum())

    def T(self, x: torch.Tensor) -> torch.Tensor:
        """Centred orthonormal FFT: (B, 1, N, N) real → (B, 1, N, N) complex."""
        return fft2c(x)

    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`T` for real images under ``Re <·,·>``: ``Re F⁻¹ m`` → (B, 1, N, N) real."""
        return ifft2c(m).real

    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        """``Re F⁻¹ m`` (F is unitary, so this is also the inverse on real images)."""
        return ifft2c(m).real

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, 1, self.image_size, self.image_size)

    def _merge(self, v: torch.Tensor, y_hat: torch.Tensor, lam: float) -> torch.Tensor:
        """k-space of the real-image minimiser of (1−λ)‖x' − x‖² + λ‖Λ(F x' − ŷ)‖² (``v = F x``)."""
        m = self._mask.to(v.device)
        mm = self._mirror.to(v.device)
        yh = y_hat.to(v.dtype) * m
        num = 2.0 * (1.0 - lam) * v + lam * (yh + conjugate_mirror(yh))
        den = 2.0 * (1.0 - lam) + lam * (m + mm)
        return torch.where(den > 0, num / den.clamp_min(1e-12), v)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled reconstruction, conjugate-symmetry aware: the minimum-norm real x with Λ F x ≈ y."""
        self.check_measurement(y)
        yc = y if y.is_complex() else y.to(torch.complex64)
        zero = torch.zeros(yc.shape, dtype=yc.dtype, device=yc.device)
        return ifft2c(self._merge(zero, yc, 1.0)).real

    def proximal(self, x: torch.Tensor, y_hat: torch.Tensor, lam: float) -> torch.Tensor:
        """The paper's data-consistency step, exact: ``x' = Re F⁻¹[merge]``; λ = 0 returns ``x``.

        λ = 1 replaces every measured k-space point (and its conjugate mirror) by ŷ.
        """
        if not 0.0 <= float(lam) <= 1.0:
            raise ScoreReconError(f"proximal weight λ = {lam} is outside [0, 1]; use a value between 0 and 1")
        if lam == 0:
            return x
        self.check_image(x)
        self.check_measurement(y_hat, "ŷ")
        v = fft2c(x)
        return ifft2c(self._merge(v, y_hat, float(lam))).real.to(x.dtype)

    # ---------------------------------------------------------------------------- housekeeping
    def to(self, device: torch.device | str) -> UndersampledMRI:
        dev = torch.device(device)
        self._mask = self._mask.to(dev)
        self._mirror = self._mirror.to(dev)
        return self

    def spec(self) -> dict:
        return {
            "task": self.task,
            "image_size": self.image_size,
            "mask": self.kind,
            "acceleration": self.requested_acceleration,
            "center_fraction": self.center_fraction,
            "seed": self.seed,
            "realised_acceleration": self.acceleration,
        }

    def arrays(self) -> dict:
        return {"mask": self._mask[0, 0].detach().cpu().numpy().astype(np.float32)}


def build_mri_operator(image_size: int, acceleration: float = 4, center_fraction: float = 0.08,
                       mask: str | np.ndarray | torch.Tensor = "equispaced", seed: int = 0,
                       device: str | torch.device = "cpu", **unknown: Any) -> UndersampledMRI:
    """Operator for ``image_size``² images with a mask of kind ``mask`` (or a given (N, N) mask array)."""
    if unknown:
        raise ScoreReconError(
            f"option(s) {', '.join(sorted(unknown))} do not apply to MRI; use acceleration, center_fraction, "
            "mask, seed or device"
        )
    if not isinstance(mask, str):
        arr = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if arr.shape[-1] != image_size:
            raise ScoreReconError(f"the given mask is {tuple(arr.shape)} but the image size is {image_size}; "
                                  "pass a mask of the image's size")
        return UndersampledMRI(arr, kind="custom", device=device)
    m = make_mask(mask, image_size, acceleration, center_fraction, seed)
    return UndersampledMRI(m, kind=_ALIASES[mask.lower()], acceleration=acceleration,
                           center_fraction=center_fraction, seed=seed, device=device)


def mri_operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> UndersampledMRI:
    """Rebuild an :class:`UndersampledMRI` from ``op.spec()`` and ``op.arrays()`` (the stored mask wins)."""
    if spec.get("task") != "mri":
        raise ScoreReconError(
            f"spec describes task '{spec.get('task')}', not 'mri'; rebuild it with operator_from_spec"
        )
    size = spec.get("image_size")
    if "mask" in arrays:
        mask = np.asarray(arrays["mask"])
        if mask.shape[-1] != size:
            raise ScoreReconError(f"stored MRI mask is {mask.shape} but image_size is {size}; the measurement "
                                  "file is inconsistent, simulate it again")
        return UndersampledMRI(mask, kind=spec.get("mask", "custom"), acceleration=spec.get("acceleration"),
                               center_fraction=spec.get("center_fraction"), seed=spec.get("seed"), device=device)
    kind = spec.get("mask")
    if kind not in _ALIASES or spec.get("acceleration") is None:
        raise ScoreReconError("MRI spec has neither a stored mask array nor a mask kind and acceleration; "
                              "simulate the measurement again")
    return build_mri_operator(int(size), acceleration=spec["acceleration"],
                              center_fraction=spec.get("center_fraction") or 0.0, mask=kind,
                              seed=spec.get("seed") or 0, device=device)


__all__ = [
    "MASK_KINDS", "UndersampledMRI", "build_mri_operator", "conjugate_mirror", "equispaced_mask", "fft2c",
    "ifft2c", "make_mask", "mri_operator_from_spec", "poisson_disc_mask", "random_mask", "variable_density_mask",
]
