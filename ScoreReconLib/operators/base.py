"""Linear measurement operators in the A = P(Λ) T form of Song et al. (ICLR 2022).

An operator maps an image batch ``x`` of shape ``(B, 1, H, W)`` (float32, intensities normalised
to about [0, 1]) to measurements. ``T`` is the full transform (Radon over the full angle set for
CT, the centred orthonormal 2-D FFT for MRI) and ``Λ`` (``mask``) a 0/1 selection of measured rows.

Convention: measurements ``y`` are kept in *full layout* — the shape of ``T(x)`` with zeros where
nothing was measured — so ``A(x) = Λ ⊙ T(x)`` and ``A_adjoint(y) = Tᴴ(Λ ⊙ y)``. Mathematically this
is P⁻¹(Λ) P(Λ) T, the same operator seen on the measured rows; it batches cleanly and keeps the
adjoint identity ``<A x, y> = <x, Aᴴ y>``. :meth:`compact` / :meth:`expand` convert to and from the
measured rows only (P(Λ) and P⁻¹(Λ)).
"""

from __future__ import annotations

import math
import weakref
from abc import ABC, abstractmethod

import torch

from ..errors import ScoreReconError

#: power iterations of :func:`operator_norm`
NORM_ITERS = 30

_NORM_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batch_items(op: MeasurementOperator) -> int:
    """Images the operator holds per-image data for (coil maps, per-slice masks); 1 when it holds none."""
    items = getattr(op, "batch_items", None)
    if items:
        return int(items)
    mask = op.mask
    return int(mask.shape[0]) if mask.ndim == 4 else 1


def largest_eigenvalue(op: MeasurementOperator, normal, iters: int, seed: int,
                       device: torch.device | str | None = None) -> float:
    """The largest eigenvalue of the image-space operator ``normal`` (e.g. ``AᴴA``; images shaped as ``op``'s) by
    ``iters`` power iterations from a seeded random image; stops early and returns 0 or a non-finite value as soon
    as one appears."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((batch_items(op), 1, op.image_size, op.image_size), generator=gen)
    v = v.to(device if device is not None else op.mask.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = normal(v)
        lam = float(w.norm())
        if lam == 0.0 or not math.isfinite(lam):
            return lam
        v = w / lam
    return lam


def operator_norm(op: MeasurementOperator, iters: int = NORM_ITERS, device: torch.device | str | None = None) -> float:
    """‖A‖ (largest singular value) by power iteration on AᴴA with a fixed seed; cached per operator (1 % above
    the estimate: power iteration approaches from below)."""
    cached = _NORM_CACHE.get(op)
    if cached is not None:
        return cached
    lam = largest_eigenvalue(op, lambda v: op.A_adjoint(op.A(v)), iters, 1234, device)
    if lam == 0.0:
        raise ScoreReconError("the operator maps everything to zero (empty mask?); check the sampling mask")
    norm = math.sqrt(lam) * 1.01
    _NORM_CACHE[op] = norm
    return norm


class MeasurementOperator(ABC):
    """Base class: ``A = P(Λ) T`` acting on ``(B, 1, H, W)`` images.

    Subclasses implement :meth:`T`, :meth:`T_adjoint`, :meth:`T_inv` and :attr:`mask`.
    """

    #: task name as used by the CLI and measurement files ("sparse-ct", "limited-angle-ct", "metal-ct", "mri")
    task: str = ""
    #: image side length in pixels (images are square)
    image_size: int = 0

    # ----------------------------------------------------------------------------------- transform
    @abstractmethod
    def T(self, x: torch.Tensor) -> torch.Tensor:
        """Full transform of ``x`` (B, 1, H, W) → full-layout measurement."""

    @abstractmethod
    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`T` (full-layout measurement → (B, 1, H, W))."""

    @abstractmethod
    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        """(Pseudo-)inverse of :meth:`T` used by the proximal step (FBP for CT, IFFT for MRI)."""

    @property
    @abstractmethod
    def mask(self) -> torch.Tensor:
        """Λ as a 0/1 float tensor broadcastable to the full-layout measurement shape."""

    # ------------------------------------------------------------------------------------ derived
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model ``Λ ⊙ T x`` in full layout."""
        self.check_image(x)
        return self._forward_measured(x)

    def _forward_measured(self, x: torch.Tensor) -> torch.Tensor:
        """``Λ ⊙ T x`` without :meth:`A`'s input checks: what the iterative solvers call every iteration.
        Operators that can compute the measured rows alone override it."""
        return self.mask_apply(self.T(x))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint ``Tᴴ (Λ ⊙ y)``."""
        return self.T_adjoint(self.mask_apply(y))

    def norm(self, device: torch.device | str | None = None) -> float:
        """‖A‖, the largest singular value (:func:`operator_norm`, cached per operator)."""
        return operator_norm(self, device=device)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Simple classical reconstruction from ``y`` (subclasses override: FBP, zero-filled IFFT)."""
        return self.T_inv(self.mask_apply(y))

    def image_support(self) -> torch.Tensor | None:
        """Pixels the measurement can see, ``(1 or B, 1, N, N)`` bool, or None for every pixel (the default).

        Multi-coil MRI with maps that vanish outside the object returns where they do not."""
        return None

    def restrict_to_support(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 1, N, N)`` with 0 outside :meth:`image_support` (``x`` itself when there is none)."""
        support = self.image_support()
        if support is None:
            return x
        return x * support.to(device=x.device, dtype=x.real.dtype if x.is_complex() else x.dtype)

    def mask_apply(self, m: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(m.device)
        return m * mask.to(m.real.dtype if m.is_complex() else m.dtype)

    def proximal(self, x: torch.Tensor, y_hat: torch.Tensor, lam: float) -> torch.Tensor:
        """The paper's data-consistency step.

        ``x' = T⁻¹[λ Λ ŷ + (1−λ) Λ T x + (I−Λ) T x]``, computed as ``x + T⁻¹[λ Λ (ŷ − T x)]`` so
        that λ = 0 returns ``x`` exactly even when T⁻¹ T ≠ I (FBP). Subclasses with an exact
        inverse (MRI) or a least-squares solver (CT) may override.
        """
        if lam == 0:
            return x
        residual = self.mask_apply(y_hat - self.T(x))
        return x + lam * self.T_inv(residual)

    def least_squares(self, r: torch.Tensor, iterations: int, tol: float = 1e-7) -> torch.Tensor:
        """Min-norm ``argmin_d ‖Λ T d − Λ r‖`` per batch item by CGLS from ``d = 0``.

        ``r``: full-layout measurement (real for CT, complex for MRI); returns (B, 1, N, N). Stops
        early once every item's normal-equation residual fell below ``tol`` times its start value;
        stopping after a few ``iterations`` regularises (DDS, Chung et al. 2024).
        """
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
            raise ScoreReconError(f"CG iterations must be a whole number of at least 1, got {iterations}")
        res = self.mask_apply(r.to(torch.complex64 if r.is_complex() else torch.float32))
        s = self.A_adjoint(res)
        d = torch.zeros_like(s)
        p = s.clone()
        gamma = _inner(s, s)
        gamma0 = gamma.clone()
        tiny = torch.finfo(torch.float32).tiny
        for _ in range(int(iterations)):
            q = self._forward_measured(p)
            qq = _inner(q, q)
            alpha = torch.where(qq > tiny, gamma / qq.clamp_min(tiny), torch.zeros_like(qq))
            d = d + alpha * p
            res = res - alpha.to(res.dtype) * q
            s = self.A_adjoint(res)
            gamma_new = _inner(s, s)
            if bool((gamma_new <= (tol ** 2) * gamma0).all()):
                break
            beta = torch.where(gamma > tiny, gamma_new / gamma.clamp_min(tiny), torch.zeros_like(gamma))
            p = s + beta * p
            gamma = gamma_new
        return d

    def compact(self, y: torch.Tensor) -> torch.Tensor:
        """P(Λ): keep only the measured entries, flattened per batch item → (B, M)."""
        mask = torch.broadcast_to(self.mask.to(y.device) > 0, y.shape)
        return y[mask].reshape(y.shape[0], -1)

    def expand(self, y_compact: torch.Tensor) -> torch.Tensor:
        """P⁻¹(Λ): place measured entries (B, M) back into the full layout with zeros elsewhere."""
        shape = self.measurement_shape(y_compact.shape[0])
        mask = torch.broadcast_to(self.mask.to(y_compact.device) > 0, shape)
        out = torch.zeros(shape, dtype=y_compact.dtype, device=y_compact.device)
        out[mask] = y_compact.reshape(-1)
        return out

    @abstractmethod
    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of a full-layout measurement for ``batch`` images."""

    # --------------------------------------------------------------------------------- validation
    #: what :meth:`check_measurement` calls a measurement when not told otherwise ("k-space" for MRI)
    measurement_name: str = "measurement"
    #: advice :meth:`check_measurement` appends to its wrong-shape message (starts with "; " when set)
    measurement_hint: str = ""

    @property
    def operator_label(self) -> str:
        """How :meth:`check_measurement` names this operator ("MRI operator", "4-coil MRI operator")."""
        return f"{self.task} operator"

    def check_measurement(self, y: torch.Tensor, what: str | None = None) -> None:
        """Raise :class:`ScoreReconError` unless ``y`` has this operator's full-layout shape (any batch size).

        ``what`` names ``y`` in the message (default :attr:`measurement_name`).
        """
        expected = tuple(self.measurement_shape(1)[1:])
        if y.ndim != len(expected) + 1 or tuple(y.shape[1:]) != expected:
            dims = ", ".join(str(d) for d in expected)
            raise ScoreReconError(
                f"{self.measurement_name if what is None else what} has shape {tuple(y.shape)} but this "
                f"{self.operator_label} expects (B, {dims}) in full layout{self.measurement_hint}"
            )

    def check_image(self, x: torch.Tensor) -> None:
        """Raise :class:`ScoreReconError` unless ``x`` is a finite (B, 1, N, N) batch of this size."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ScoreReconError(
                f"expected an image batch of shape (B, 1, H, W), got {tuple(x.shape)}; add batch/channel axes"
            )
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ScoreReconError(
                f"image is {x.shape[-2]}x{x.shape[-1]} but this {self.task} operator was built for "
                f"{self.image_size}x{self.image_size}; resample the image or build the operator for its size"
            )

    def to(self, device: torch.device | str) -> MeasurementOperator:
        """Move the operator's tensors to ``device`` (returns self)."""
        return self

    # ---------------------------------------------------------------------------- serialisation
    @abstractmethod
    def spec(self) -> dict:
        """JSON-serialisable description (must include ``task`` and ``image_size``)."""

    def arrays(self) -> dict:
        """Numpy arrays (masks) needed besides :meth:`spec` to rebuild the operator."""
        return {}


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product per batch item, shape (B, 1, 1, 1) (``Re Σ conj(a) b`` for complex)."""
    prod = (a.conj() * b).real if a.is_complex() else a * b
    return prod.sum(dim=tuple(range(1, a.ndim)), keepdim=True)
