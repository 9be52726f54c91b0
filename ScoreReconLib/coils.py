"""Coil sensitivities and coil-combining reconstructions for multi-coil MRI.

- :func:`synthetic_maps`: smooth, normalised (``Σ_c |S_c|² = 1``) maps of coils spaced on a circle
  around the field of view that cover the whole field of view (tests and older benchmarks).
- :func:`receive_coil_maps`: maps like a receive array's, what :func:`~ScoreReconLib.measurement.simulate`
  uses: loop coils on a ring whose sensitivity rolls off with the distance as a loop's on-axis field, a
  smooth phase per coil, normalised to ``Σ_c |S_c|² = 1`` on the object's support and 0 outside it
  (what a calibration such as ESPIRiT can know: nothing is received from where there is no object).
- :func:`estimate_maps`: maps from the fully sampled k-space centre (the calibration region):
  ``"espirit"`` through sigpy's ``EspiritCalib`` (optional dependency, ``pip install sigpy``),
  ``"lowres"`` the library's own estimate (windowed low-resolution coil images divided by their
  root-sum-of-squares; smooth maps are recovered up to a common per-pixel phase), ``"auto"``
  ESPIRiT when sigpy is installed, else ``lowres``.
- :func:`absorb_phase`: the image phase (from the low-resolution coil-combined image) folded into the
  maps, so that the image the real-valued reconstructions see is the magnitude.
- :func:`rss_reconstruct` (root-sum-of-squares of the zero-filled coil images) and
  :func:`sense_reconstruct` (SENSE: CG on the complex normal equations, early-stopped) as baselines.

Shapes: k-space ``(B, C, N, N)`` complex64 centred (DC at N//2), maps ``(B, C, N, N)`` complex64,
images ``(B, 1, N, N)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ScoreReconError
from .operators.mri import ifft2c

#: map estimators accepted by :func:`estimate_maps`
MAP_METHODS = ("auto", "espirit", "lowres")
#: relative RSS below which the own estimate sets the maps to 0 (outside the object)
LOWRES_THRESHOLD = 0.05
#: SENSE CG iterations (early stopping regularises)
SENSE_ITERS = 15


# ----------------------------------------------------------------------------------- synthetic
def synthetic_maps(size: int, coils: int, seed: int = 0) -> torch.Tensor:
    """Smooth coil maps (1, C, N, N) complex64 with ``Σ_c |S_c|² = 1`` everywhere.

    Coil ``c`` sits at angle ``2πc/C`` (plus a seeded jitter of ±0.1 rad) on a circle of radius 1.2
    (the image spans [−1, 1]²); its magnitude falls off as ``1 / (1 + (d/0.9)²)`` with the distance
    ``d`` to the coil, its phase is a seeded linear ramp of up to ±π/2 across the field of view plus
    a constant. Then every map is divided by the root-sum-of-squares of all of them.
    """
    if coils < 1:
        raise ScoreReconError(f"--coils must be at least 1, got {coils}")
    rng = np.random.default_rng(seed)
    t = (np.arange(size) - size // 2) / (size / 2)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    out = np.zeros((coils, size, size), dtype=np.complex128)
    for c in range(coils):
        ang = 2 * math.pi * c / coils + rng.uniform(-0.1, 0.1)
        cy, cx = 1.2 * math.sin(ang), 1.2 * math.cos(ang)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mag = 1.0 / (1.0 + d2 / 0.81)
        gy, gx = rng.uniform(-math.pi / 4, math.pi / 4, size=2)
        phase = rng.uniform(-math.pi, math.pi) + gy * yy + gx * xx
        out[c] = mag * np.exp(1j * phase)
    out /= np.sqrt((np.abs(out) ** 2).sum(0, keepdims=True))
    return torch.from_numpy(out.astype(np.complex64))[None]


#: receive array: coil centres on a ring of this radius (the image spans [−1, 1]²)
RING_RADIUS = 1.15
#: loop radius: a coil's sensitivity falls off as (1 + (d / LOOP_RADIUS)²)^(−3/2) with the distance d
LOOP_RADIUS = 0.6


def receive_coil_maps(size: int, coils: int, seed: int = 0, support: torch.Tensor | np.ndarray | None = None
                      ) -> torch.Tensor:
    """Receive-array maps ``(S or 1, C, N, N)`` complex64, zero outside ``support``.

    Coil ``c`` is a loop at angle ``2πc/C`` (plus a seeded jitter of ±0.15 rad) on a ring of radius
    :data:`RING_RADIUS`; its magnitude falls off as ``(1 + (d/a)²)^(−3/2)`` (the on-axis field of a loop
    of radius ``a`` = :data:`LOOP_RADIUS` at distance ``d``), its phase is a seeded constant plus a
    ramp of up to ±π/4 across the field of view. The maps are divided by their root-sum-of-squares so
    ``Σ_c |S_c|² = 1`` where ``support`` (``(S or 1, 1, N, N)`` or ``(N, N)`` bool, the object and a
    margin) is true and are 0 elsewhere; ``support`` None keeps every pixel (the whole field of view).
    """
    if isinstance(coils, bool) or int(coils) != coils or coils < 1:
        raise ScoreReconError(f"--coils must be a whole number of at least 1, got {coils}")
    rng = np.random.default_rng(seed)
    t = (np.arange(size) + 0.5 - size / 2) / (size / 2)  # pixel centres: the same points at every grid size
    yy, xx = np.meshgrid(t, t, indexing="ij")
    out = np.zeros((int(coils), size, size), dtype=np.complex128)
    for c in range(int(coils)):
        ang = 2 * math.pi * c / coils + rng.uniform(-0.15, 0.15)
        d2 = (yy - RING_RADIUS * math.sin(ang)) ** 2 + (xx - RING_RADIUS * math.cos(ang)) ** 2
        mag = (1.0 + d2 / LOOP_RADIUS**2) ** -1.5
        gy, gx = rng.uniform(-math.pi / 4, math.pi / 4, size=2)
        out[c] = mag * np.exp(1j * (rng.uniform(-math.pi, math.pi) + gy * yy + gx * xx))
    out /= np.sqrt((np.abs(out) ** 2).sum(0, keepdims=True))
    maps = torch.from_numpy(out.astype(np.complex64))[None]
    if support is None:
        return maps
    keep = torch.as_tensor(np.asarray(support.cpu() if isinstance(support, torch.Tensor) else support)).bool()
    keep = keep.reshape(-1, 1, size, size)
    return torch.where(keep, maps, torch.zeros((), dtype=torch.complex64))


# ---------------------------------------------------------------------------------- estimation
def calibration_width(mask: torch.Tensor | np.ndarray) -> int:
    """Width of the fully sampled centre: the largest ``w`` whose centred block of columns is sampled
    in every row (1-D masks) or whose centred ``w × w`` square is sampled (2-D masks); 0 if none."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).reshape(mask.shape[-2:]) > 0
    n = m.shape[-1]
    c = n // 2
    best = 0
    for w in range(1, n + 1):
        lo = c - w // 2
        hi = lo + w
        if lo < 0 or hi > n:
            break
        cols_full = m[:, lo:hi].all()
        rlo = m.shape[0] // 2 - w // 2
        square_full = rlo >= 0 and m[rlo:rlo + w, lo:hi].all()
        if not (cols_full or square_full):
            break
        best = w
    return best


def calibration_rows(mask: torch.Tensor | np.ndarray, width: int) -> int:
    """Rows of the fully sampled centre of ``width`` columns: every row when those columns are sampled in
    full (1-D Cartesian masks: the readout is fully sampled), else ``width`` (a square centre)."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).reshape(mask.shape[-2:]) > 0
    lo = m.shape[-1] // 2 - width // 2
    return int(m.shape[0]) if width > 0 and bool(m[:, lo:lo + width].all()) else int(width)


def _hann(length: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(length + 2, periodic=False, dtype=torch.float32, device=device)[1:-1]


def _calibration_kspace(y: torch.Tensor, width: int, rows: int | None = None) -> torch.Tensor:
    """The centred ``rows × width`` block (``rows`` default ``width``) of ``y`` (B, C, H, N) under a separable
    Hann window, zero elsewhere."""
    n = y.shape[-1]
    rows = int(width) if rows is None else int(rows)
    lo = n // 2 - width // 2
    out = torch.zeros_like(y)
    rlo = y.shape[-2] // 2 - rows // 2
    block = y[..., rlo:rlo + rows, lo:lo + width]
    out[..., rlo:rlo + rows, lo:lo + width] = block * (_hann(rows, y.device)[:, None] * _hann(width, y.device)[None, :])
    return out


def lowres_maps(y: torch.Tensor, width: int, threshold: float = LOWRES_THRESHOLD) -> torch.Tensor:
    """Own estimate: Hann-windowed calibration coil images over their RSS → (B, C, N, N) complex64.

    Pixels whose RSS is below ``threshold`` × its maximum get maps 0 (no object there)."""
    if width < 4:
        raise ScoreReconError(f"the fully sampled k-space centre is {width} lines wide; estimating coil maps needs "
                              "at least 4 (raise --center-fraction) or pass maps in the file")
    low = ifft2c(_calibration_kspace(y.to(torch.complex64), width))
    rss = (low.abs() ** 2).sum(dim=1, keepdim=True).sqrt()
    peak = rss.flatten(1).amax(dim=1).reshape(-1, 1, 1, 1)
    keep = rss > threshold * peak
    return torch.where(keep, low / rss.clamp_min(1e-30), torch.zeros_like(low)).to(torch.complex64)


def sigpy_available() -> bool:
    """Whether sigpy (for ESPIRiT) can be imported."""
    try:
        import sigpy.mri  # noqa: F401
    except ImportError:
        return False
    return True


def espirit_maps(y: torch.Tensor, width: int, threshold: float = 0.02, crop: float = 0.0) -> torch.Tensor:
    """ESPIRiT maps by sigpy's ``EspiritCalib`` (kernel 6, ``threshold``, eigenvalue ``crop``) per slice.

    ``crop`` 0 keeps every pixel: with sigpy's default 0.95 and the 10-line centre of a 128² 8× mask the
    maps were zeroed over most of a noise-free phantom (mean |<S_est, S_true>| 0.16 instead of 0.999)."""
    try:
        from sigpy.mri.app import EspiritCalib
    except ImportError:
        raise ScoreReconError("--maps espirit needs sigpy; install it with 'pip install sigpy' (or "
                              "'pip install scorerecon[mri]') or use --maps lowres") from None
    if width < 8:
        raise ScoreReconError(f"the fully sampled k-space centre is {width} lines wide; ESPIRiT needs at least 8 "
                              "(raise --center-fraction) or use --maps lowres")
    out = []
    for ksp in y.detach().cpu().numpy().astype(np.complex64):
        if not np.abs(ksp).any():  # an empty slice (air): no maps, where sigpy would return NaN
            out.append(np.zeros_like(ksp))
            continue
        maps = EspiritCalib(ksp, calib_width=int(width), thresh=threshold, crop=crop, show_pbar=False).run()
        out.append(np.nan_to_num(np.asarray(maps, dtype=np.complex64)))
    return torch.from_numpy(np.stack(out)).to(y.device)


def estimate_maps(y: torch.Tensor, mask: torch.Tensor, method: str = "auto") -> tuple[torch.Tensor, str]:
    """Coil maps (B, C, N, N) from the calibration region of ``y`` (B, C, N, N); returns (maps, method used)."""
    if method not in MAP_METHODS:
        raise ScoreReconError(f"unknown coil-map estimator '{method}'; choose one of {', '.join(MAP_METHODS)}")
    width = calibration_width(mask)
    if method == "espirit" or (method == "auto" and sigpy_available() and width >= 8):
        return espirit_maps(y, width), "espirit"
    return lowres_maps(y, width), "lowres"


def absorb_phase(maps: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Phase φ (B, 1, N, N) of the low-resolution coil-combined image ``Σ_c S_cᴴ x_c,low``.

    With the maps ``S_c e^{iφ}`` the image to reconstruct is about real and non-negative (its
    magnitude), which the real-valued reconstructions (score prior, TV, CS) need. The low-resolution
    image is the Hann-windowed fully sampled centre: with a 1-D mask its columns over the whole readout
    (:func:`calibration_rows`; on a 128² T1 slice at 4× the phase error fell from 0.094 to 0.035 rad RMS
    against the square centre, ``benchmarks/RESULTS.md``, *mri-realism*), with a 2-D mask its square."""
    width = max(calibration_width(mask), 2)
    low = ifft2c(_calibration_kspace(y.to(torch.complex64), width, calibration_rows(mask, width)))
    combined = (maps.conj() * low).sum(dim=1, keepdim=True)
    return torch.angle(combined).to(torch.float32)


#: pixels above this fraction of the calibration image's maximum count in :func:`phase_inconsistency`
PHASE_CHECK_LEVEL = 0.1


def phase_inconsistency(y: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor) -> float:
    """How far the data are from a real image under the folded-in phase: ``‖Im u‖ / ‖Re u‖`` (unitless).

    ``u = Σ_c conj(S_c) x_c`` is the coil-combined image of the fully sampled centre (its columns over the
    whole readout for 1-D masks, :func:`calibration_rows`; the largest block symmetric about DC, so a real
    image's is real) without a window, ``S_c`` the operator's maps with the estimated phase folded in
    (``op.maps``), over pixels above :data:`PHASE_CHECK_LEVEL` of its largest magnitude. The phase was
    estimated from the same centre under a Hann window, so this reads the phase detail the estimate smoothed
    away (and noise): about the RMS phase error in radians when small. 0 when nothing is measured there."""
    width = calibration_width(mask)
    if width < 3:
        return 0.0
    rows = calibration_rows(mask, width)
    n, h = y.shape[-1], y.shape[-2]
    hw, hr = (width - 1) // 2, (rows - 1) // 2  # a band symmetric about DC: a real image's is real
    band = torch.zeros_like(y)
    band[..., h // 2 - hr:h // 2 + hr + 1, n // 2 - hw:n // 2 + hw + 1] = \
        y[..., h // 2 - hr:h // 2 + hr + 1, n // 2 - hw:n // 2 + hw + 1]
    u = (maps.to(y.device).conj() * ifft2c(band.to(torch.complex64))).sum(dim=1)
    mag = u.abs()
    keep = mag > PHASE_CHECK_LEVEL * mag.amax(dim=(-2, -1), keepdim=True)
    re = float((u.real[keep] ** 2).sum())
    return math.sqrt(float((u.imag[keep] ** 2).sum()) / re) if re > 0 else 0.0


# ----------------------------------------------------------------------------------- baselines
def rss_reconstruct(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares of the zero-filled coil images: (B, C, N, N) → (B, 1, N, N) float32."""
    coil_images = ifft2c((y * mask.to(y.device)).to(torch.complex64))
    return (coil_images.abs() ** 2).sum(dim=1, keepdim=True).sqrt().float()


def sense_reconstruct(y: torch.Tensor, op, iters: int = SENSE_ITERS) -> torch.Tensor:
    """SENSE: ``iters`` CGLS steps on ``‖Λ F S x − y‖`` over complex ``x`` from 0 → |x| (B, 1, N, N) float32.

    ``op``: a :class:`~ScoreReconLib.operators.multicoil.MultiCoilMRI` (its complex-domain twin is used);
    a single-coil operator gives the real least-squares solution instead."""
    if hasattr(op, "with_domain"):
        cop = op.with_domain("complex")
        return cop.least_squares(y, iters).abs().float()
    return op.least_squares(y, iters).abs().float()


def sigpy_l1_wavelet(y: torch.Tensor, op, weight: float, iters: int = 100) -> torch.Tensor:
    """L1-wavelet CS by sigpy's ``L1WaveletRecon`` (Daubechies-4, complex image) → |x| (B, 1, N, N) float32.

    Objective ``½‖Λ F S x − y‖² + weight·‖A‖²·‖W x‖₁`` (``weight`` in the units of ``--method cs --weight``);
    ``iters`` iterations of sigpy's default (FISTA-type) solver. ``op``: a multi-coil or single-coil MRI operator."""
    try:
        import sigpy.mri as spmri
    except ImportError:
        raise ScoreReconError("--regularizer sigpy-wavelet needs sigpy; install it with 'pip install sigpy' or use "
                              "--regularizer wavelet (the own Haar frame)") from None
    from .operators.base import operator_norm

    lam = float(weight) * operator_norm(op) ** 2
    maps = op.maps if hasattr(op, "maps") else torch.ones(1, 1, op.image_size, op.image_size, dtype=torch.complex64)
    mask = op.mask[0, 0].detach().cpu().numpy()
    out = []
    for b in range(y.shape[0]):
        mps = maps[b if maps.shape[0] > 1 else 0].detach().cpu().numpy()
        ksp = (y[b] * op.mask[0].to(y.device)).detach().cpu().numpy().astype(np.complex64)
        x = spmri.app.L1WaveletRecon(ksp, mps, lam, weights=mask, max_iter=int(iters), show_pbar=False).run()
        out.append(np.abs(np.asarray(x)))
    return torch.from_numpy(np.stack(out).astype(np.float32))[:, None].to(y.device)


__all__ = ["LOOP_RADIUS", "MAP_METHODS", "PHASE_CHECK_LEVEL", "RING_RADIUS", "absorb_phase", "calibration_rows",
           "calibration_width", "espirit_maps", "estimate_maps", "lowres_maps", "phase_inconsistency",
           "receive_coil_maps", "rss_reconstruct", "sense_reconstruct", "sigpy_available", "sigpy_l1_wavelet",
           "synthetic_maps"]
