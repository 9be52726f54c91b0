"""Multi-coil Cartesian MRI: ``A x = Λ F (S_c x)`` for coil sensitivity maps ``S_c``.

Shapes: images ``(B, 1, N, N)``; coil maps ``(1 or B, C, N, N)`` complex64 (normalised so that
``Σ_c |S_c|² = 1`` wherever the object is, 0 outside it); k-space ``(B, C, N, N)`` complex64 in full
layout (zeros where nothing was measured); the mask Λ is ``(N, N)`` 0/1 and the same for every coil.
``F`` is the centred orthonormal 2-D FFT of :mod:`ScoreReconLib.operators.mri`.

Two image domains:

- ``image_domain="real"`` (default; what the score prior, TV, CS and the samplers use): ``x`` is real
  and the adjoint is taken under ``Re <·,·>``, ``Aᴴ y = Re Σ_c S_cᴴ Fᴴ Λ y_c``. Real MR images have a
  phase; it is folded into the maps (``phase``: the maps used are ``S_c e^{iφ}``) so that the image
  left to reconstruct is the real magnitude (see :func:`ScoreReconLib.coils.absorb_phase`).
- ``image_domain="complex"``: ``x`` complex64, ``Aᴴ y = Σ_c S_cᴴ Fᴴ Λ y_c`` (SENSE).

``T = F S`` has ``Tᴴ T = Σ|S|²``, so ``T_inv = Tᴴ / Σ|S|²`` is exact where the maps cover the image.
The closed-form merge of the single-coil operator does not hold here (Λ does not commute with S):
:meth:`MultiCoilMRI.proximal` solves the same quadratic by ``cg_iterations`` conjugate-gradient
steps on its normal equations (as DDS, Chung et al. 2024, does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ScoreReconError
from ..limits import MAX_CG_ITERATIONS, check_count
from ..utils import resolve_device
from .base import MeasurementOperator, _inner
from .mri import _ALIASES, MIN_SIZE, fft2c, ifft2c, make_mask

#: values of ``image_domain``
IMAGE_DOMAINS = ("real", "complex")
#: default CG iterations of the data-consistency step
CG_ITERATIONS = 5


def _as_tensor(a: Any) -> torch.Tensor:
    return a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


class MultiCoilMRI(MeasurementOperator):
    """Multi-coil Cartesian MRI ``A = Λ F S`` on ``(B, 1, N, N)`` images (module docstring).

    ``maps``: (1 or B, C, N, N) complex; ``mask``: (N, N) 0/1; ``phase``: optional (1 or B, 1, N, N)
    real phase in radians folded into the maps (``S_c e^{iφ}``); ``maps_source`` names where the maps
    came from (kept in :meth:`spec`). ``kind``/``acceleration``/``center_fraction``/``seed`` describe the mask.
    """

    task = "mri"
    measurement_name = "k-space"

    def __init__(self, maps: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
                 phase: torch.Tensor | np.ndarray | None = None, image_domain: str = "real",
                 cg_iterations: int = CG_ITERATIONS, kind: str = "custom", acceleration: float | None = None,
                 center_fraction: float | None = None, seed: int | None = None, maps_source: str = "given",
                 device: str | torch.device = "cpu") -> None:
        dev = resolve_device(device)
        s = _as_tensor(maps)
        if s.ndim == 3:
            s = s[None]
        if s.ndim != 4 or s.shape[-1] != s.shape[-2]:
            raise ScoreReconError(f"coil maps must have shape (B or 1, coils, N, N), got {tuple(s.shape)}")
        if s.shape[-1] < MIN_SIZE:
            raise ScoreReconError(f"coil maps are {s.shape[-2]}x{s.shape[-1]}, too small; use at least "
                                  f"{MIN_SIZE}x{MIN_SIZE}")
        s = s.to(torch.complex64)
        if not bool(torch.isfinite(torch.view_as_real(s)).all()):
            raise ScoreReconError("coil maps hold NaN or inf; estimate them again")
        m = _as_tensor(mask).to(torch.float32)
        if m.ndim == 4 and m.shape[:2] == (1, 1):
            m = m[0, 0]
        n = int(s.shape[-1])
        if tuple(m.shape) != (n, n):
            raise ScoreReconError(f"MRI mask has shape {tuple(m.shape)} but the coil maps are {n}x{n}; pass an "
                                  "(N, N) mask of the maps' size")
        if not bool(((m == 0) | (m == 1)).all()) or float(m.sum()) == 0:
            raise ScoreReconError("MRI mask must hold only 0 and 1 and sample at least one point")
        if image_domain not in IMAGE_DOMAINS:
            raise ScoreReconError(f"image_domain must be one of {', '.join(IMAGE_DOMAINS)}, got {image_domain!r}")
        cg_iterations = check_count(cg_iterations, "cg_iterations", MAX_CG_ITERATIONS)
        self.image_size = n
        self.coils = int(s.shape[1])
        self.image_domain = image_domain
        self.cg_iterations = int(cg_iterations)
        self.kind = str(kind)
        self.requested_acceleration = None if acceleration is None else float(acceleration)
        self.center_fraction = None if center_fraction is None else float(center_fraction)
        self.seed = None if seed is None else int(seed)
        self.maps_source = str(maps_source)
        self._maps = s.to(dev)
        self._phase = None
        if phase is not None:
            p = _as_tensor(phase).to(torch.float32)
            if p.ndim == 3:
                p = p[:, None]
            if (p.ndim != 4 or p.shape[1] != 1 or tuple(p.shape[-2:]) != (n, n)
                    or (s.shape[0] > 1 and p.shape[0] not in (1, s.shape[0]))):
                raise ScoreReconError(f"phase must have shape ({s.shape[0]} or 1, 1, {n}, {n}), got {tuple(p.shape)}")
            self._phase = p.to(dev)
        self._mask = m.reshape(1, 1, n, n).to(dev)
        self._update_effective()

    def _update_effective(self) -> None:
        s = self._maps
        if self._phase is not None:
            s = s * torch.polar(torch.ones_like(self._phase), self._phase)
        self._eff = s
        self._coverage = (s.abs() ** 2).sum(dim=1, keepdim=True)
        inside = self._coverage > 1e-8
        self._support = None if bool(inside.all()) else inside

    # ------------------------------------------------------------------------------- properties
    @property
    def mask(self) -> torch.Tensor:
        """Λ as (1, 1, N, N) float32 0/1 (the same for every coil)."""
        return self._mask

    @property
    def maps(self) -> torch.Tensor:
        """The maps the operator applies, phase folded in: (1 or B, C, N, N) complex64."""
        return self._eff

    @property
    def coil_maps(self) -> torch.Tensor:
        """The coil maps as given, without the folded-in phase: (1 or B, C, N, N) complex64."""
        return self._maps

    @property
    def phase(self) -> torch.Tensor | None:
        """The folded-in phase (1 or B, 1, N, N) in radians, or None."""
        return self._phase

    @property
    def per_slice(self) -> bool:
        """True when the maps or the phase differ per batch item (then use :meth:`batch_subset` for a sub-batch)."""
        return self._eff.shape[0] > 1

    @property
    def batch_items(self) -> int:
        """Images the operator is made for: the maps' (or phase's) batch size (1 = any batch shares them)."""
        return int(self._eff.shape[0])

    def image_support(self) -> torch.Tensor | None:
        """Where the maps see the object: ``(1 or B, 1, N, N)`` bool, or None when they cover every pixel.

        Nothing is received from outside it, so reconstructions set the image to 0 there."""
        return self._support

    @property
    def acceleration(self) -> float:
        """Realised acceleration N² / (number of sampled points)."""
        return float(self._mask.numel() / self._mask.sum())

    # -------------------------------------------------------------------------------- transform
    def _maps_for(self, batch: int) -> torch.Tensor:
        if self._eff.shape[0] not in (1, batch):
            raise ScoreReconError(f"this operator holds coil maps for {self._eff.shape[0]} slices but got a batch "
                                  f"of {batch}; use batch_subset() for a sub-batch")
        return self._eff

    def T(self, x: torch.Tensor) -> torch.Tensor:
        """``F (S_c x)``: (B, 1, N, N) real or complex → (B, C, N, N) complex64."""
        s = self._maps_for(x.shape[0]).to(x.device)
        return fft2c(s * x.to(torch.complex64))

    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """``Σ_c S_cᴴ Fᴴ m_c``: (B, C, N, N) → (B, 1, N, N) (its real part in the real image domain)."""
        s = self._maps_for(m.shape[0]).to(m.device)
        x = (s.conj() * ifft2c(m.to(torch.complex64))).sum(dim=1, keepdim=True)
        return x.real if self.image_domain == "real" else x

    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        """``Tᴴ m / Σ|S|²`` (0 where the maps vanish): the exact inverse of T on the maps' support."""
        cov = self._coverage.to(m.device)
        return self.T_adjoint(m) / cov.clamp_min(1e-8) * (cov > 1e-8)

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.coils, self.image_size, self.image_size)

    @property
    def operator_label(self) -> str:
        return f"{self.coils}-coil MRI operator"

    def check_image(self, x: torch.Tensor) -> None:
        super().check_image(x)
        if x.is_complex() and self.image_domain == "real":
            raise ScoreReconError("this multi-coil operator works on real images (phase folded into the maps); "
                                  "pass a real image or build it with image_domain='complex'")

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled coil combination with the maps: ``T_inv(Λ y)`` → (B, 1, N, N)."""
        self.check_measurement(y)
        return self.T_inv(self.mask_apply(y.to(torch.complex64)))

    # ------------------------------------------------------------------------- data consistency
    def proximal(self, x: torch.Tensor, y_hat: torch.Tensor, lam: float) -> torch.Tensor:
        """Data-consistency step: ``argmin_x' (1−λ)/λ ‖x' − x‖² + ‖Λ(T x' − ŷ)‖²`` by CG from ``x``.

        λ = 1: ``cg_iterations`` CGLS steps on ``‖Λ(T(x + d) − ŷ)‖`` from ``d = 0`` (the smallest change
        that fits the data, stopped early as DDS does); λ ∈ (0, 1): CG on ``(μ I + AᴴA) d = Aᴴ(ŷ − A x)``,
        ``μ = (1−λ)/λ``; λ = 0 returns ``x``.
        """
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ScoreReconError(f"proximal weight λ = {lam} is outside [0, 1]; use a value between 0 and 1")
        if lam == 0:
            return x
        self.check_image(x)
        self.check_measurement(y_hat, "ŷ")
        r = y_hat.to(torch.complex64) - self.A(x)
        if lam == 1.0:
            return (x + self.least_squares(r, self.cg_iterations).to(x.dtype)).to(x.dtype)
        return (x + self.damped_least_squares(r, (1.0 - lam) / lam, self.cg_iterations)).to(x.dtype)

    def damped_least_squares(self, r: torch.Tensor, mu: float, iterations: int) -> torch.Tensor:
        """``d`` with ``(μ I + AᴴA) d = Aᴴ Λ r`` by ``iterations`` CG steps from 0, per batch item."""
        b = self.A_adjoint(self.mask_apply(r))
        d = torch.zeros_like(b)
        res = b.clone()
        p = res.clone()
        rr = _inner(res, res)
        tiny = torch.finfo(torch.float32).tiny
        for _ in range(int(iterations)):
            q = mu * p + self.A_adjoint(self.A(p))
            pq = _inner(p, q)
            alpha = torch.where(pq > tiny, rr / pq.clamp_min(tiny), torch.zeros_like(pq))
            d = d + alpha.to(d.dtype) * p
            res = res - alpha.to(res.dtype) * q
            rr_new = _inner(res, res)
            beta = torch.where(rr > tiny, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
            p = res + beta.to(p.dtype) * p
            rr = rr_new
        return d

    # ----------------------------------------------------------------------------- housekeeping
    def with_domain(self, image_domain: str) -> MultiCoilMRI:
        """The same operator on another image domain ("real" or "complex")."""
        return MultiCoilMRI(self._maps, self._mask, self._phase, image_domain, self.cg_iterations, self.kind,
                            self.requested_acceleration, self.center_fraction, self.seed, self.maps_source,
                            self._mask.device)

    def batch_subset(self, index: slice) -> MultiCoilMRI:
        """The operator for items ``index`` of the batch (per-slice maps sliced, shared maps kept)."""
        if not self.per_slice:
            return self
        phase = None if self._phase is None else (self._phase[index] if self._phase.shape[0] > 1 else self._phase)
        maps = self._maps[index] if self._maps.shape[0] > 1 else self._maps
        return MultiCoilMRI(maps, self._mask, phase, self.image_domain, self.cg_iterations, self.kind,
                            self.requested_acceleration, self.center_fraction, self.seed, self.maps_source,
                            self._mask.device)

    def to(self, device: torch.device | str) -> MultiCoilMRI:
        dev = torch.device(device)
        self._maps = self._maps.to(dev)
        self._mask = self._mask.to(dev)
        self._phase = None if self._phase is None else self._phase.to(dev)
        self._update_effective()
        return self

    def spec(self) -> dict:
        return {
            "task": self.task,
            "image_size": self.image_size,
            "coils": self.coils,
            "maps_source": self.maps_source,
            "image_domain": self.image_domain,
            "cg_iterations": self.cg_iterations,
            "mask": self.kind,
            "acceleration": self.requested_acceleration,
            "center_fraction": self.center_fraction,
            "seed": self.seed,
            "realised_acceleration": self.acceleration,
        }

    def arrays(self) -> dict:
        out = {"mask": self._mask[0, 0].detach().cpu().numpy().astype(np.float32),
               "maps": self._maps.detach().cpu().numpy().astype(np.complex64)}
        if self._phase is not None:
            out["phase"] = self._phase.detach().cpu().numpy().astype(np.float32)
        return out


def build_multicoil_operator(maps: torch.Tensor | np.ndarray, acceleration: float = 4, center_fraction: float = 0.08,
                             mask: str | np.ndarray | torch.Tensor = "equispaced", seed: int = 0,
                             device: str | torch.device = "cpu", **options: Any) -> MultiCoilMRI:
    """Operator for the given coil ``maps`` (1 or B, C, N, N) with a mask of kind ``mask`` (or a given array).

    ``options``: ``phase``, ``image_domain``, ``cg_iterations``, ``maps_source``.
    """
    n = int(_as_tensor(maps).shape[-1])
    if not isinstance(mask, str):
        return MultiCoilMRI(maps, mask, device=device, **options)
    name = _ALIASES.get(mask.lower(), mask)
    m = make_mask(mask, n, acceleration, center_fraction, seed)
    return MultiCoilMRI(maps, m, kind=name, acceleration=acceleration, center_fraction=center_fraction, seed=seed,
                        device=device, **options)


def multicoil_operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> MultiCoilMRI:
    """Rebuild a :class:`MultiCoilMRI` from ``op.spec()`` and ``op.arrays()`` (stored mask and maps)."""
    if "maps" not in arrays or "mask" not in arrays:
        raise ScoreReconError("the multi-coil MRI measurement lacks its stored coil maps or mask; import or "
                              "simulate it again")
    maps = np.asarray(arrays["maps"])
    if int(spec.get("coils", maps.shape[1] if maps.ndim == 4 else -1)) != (maps.shape[1] if maps.ndim == 4 else -2):
        raise ScoreReconError(f"stored coil maps have shape {maps.shape} but the header says {spec.get('coils')} "
                              "coils; the measurement file is inconsistent")
    if maps.shape[-1] != spec.get("image_size"):
        raise ScoreReconError(f"stored coil maps are {maps.shape} but image_size is {spec.get('image_size')}; the "
                              "measurement file is inconsistent")
    return MultiCoilMRI(maps, np.asarray(arrays["mask"]), arrays.get("phase"),
                        image_domain=spec.get("image_domain", "real"),
                        cg_iterations=int(spec.get("cg_iterations", CG_ITERATIONS)), kind=spec.get("mask", "custom"),
                        acceleration=spec.get("acceleration"), center_fraction=spec.get("center_fraction"),
                        seed=spec.get("seed"), maps_source=spec.get("maps_source", "given"), device=device)


__all__ = ["CG_ITERATIONS", "IMAGE_DOMAINS", "MultiCoilMRI", "build_multicoil_operator",
           "multicoil_operator_from_spec"]
