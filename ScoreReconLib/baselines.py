"""Classical reconstructions for any :class:`~ScoreReconLib.operators.base.MeasurementOperator`.

- ``fbp`` (CT): the operator's own ``A_dagger`` (filtered back-projection of the measured views,
  or of the inpainted sinogram for metal).
- ``zero-filled`` (MRI): the operator's ``A_dagger`` (inverse FFT of the measured k-space).
- ``tv``: total-variation regularised least squares, solved with PDHG (Chambolle & Pock 2011)::

      min_x  ½‖A x − y‖² + weight·‖A‖²·TV(x)   (+ x ≥ 0 when ``nonneg``)

  with isotropic TV on forward differences (Neumann boundary). The weight is relative to ‖A‖²
  (estimated by power iteration and cached per operator), so one weight fits operators of very
  different scale (MRI's unitary FFT, CT projections in pixel units).
- ``sense`` / ``rss`` (MRI, :mod:`ScoreReconLib.coils`): SENSE (CG on the complex normal equations with the
  coil maps, early-stopped, magnitude) and the root-sum-of-squares of the zero-filled coil images. With a
  multi-coil operator ``tv`` is SENSE-TV and ``cs --regularizer wavelet`` L1-wavelet CS.
- ``cs`` (MRI): compressed sensing — the same PDHG with TV (default) or an L1 penalty on an
  undecimated (shift-invariant) multi-level Haar wavelet frame (low-pass band not penalised).

All functions take full-layout measurements ``y`` of shape ``op.measurement_shape(B)`` (complex for
MRI) and return real ``(B, 1, N, N)`` float32 images on ``y``'s device.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ScoreReconError
from .operators.base import NORM_ITERS, MeasurementOperator, batch_items, operator_norm  # noqa: F401  (re-exported)
from .operators.preconditioning import fits as preconditioned
from .operators.preconditioning import ramp_metric
from .utils import ProgressFn, check_cancel
from .vocabulary import CLASSICAL_METHODS
from .vocabulary import classical_methods_for as methods_for  # noqa: F401  (the methods that fit a task)

#: methods :func:`classical_reconstruct` accepts
METHODS = CLASSICAL_METHODS
_METHOD_ALIASES = {"fbp": "fbp", "tv": "tv", "zero-filled": "zero-filled", "zero_filled": "zero-filled",
                   "zerofilled": "zero-filled", "zf": "zero-filled", "cs": "cs", "sense": "sense", "rss": "rss"}

#: default relative weights and iteration counts, per modality, tuned on [0, 1] images at 128²
#: (see docs/baselines.md for how)
DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "tv": {"CT": {"weight": 2e-4, "iters": 300}, "MR": {"weight": 1e-3, "iters": 300},
           "other": {"weight": 1e-3, "iters": 300}},
    "cs-tv": {"MR": {"weight": 1e-3, "iters": 300}},
    "cs-wavelet": {"MR": {"weight": 3e-4, "iters": 300}},
}
#: PDHG iterations of a full solve where the data dual steps in the ramp metric (CT measuring every view,
#: :func:`~ScoreReconLib.operators.preconditioning.fits`): metal CT came within 0.02 dB of convergence in 200 at
#: 512² (100 at 128², where 100 left 0.2–0.3 dB at 512²; ``benchmarks/tv_preconditioning.py``); the plain metric
#: had not converged in 300 at 256² and 512² and needed about 1000 at 256²
PRECONDITIONED_ITERS = 200
#: largest primal step enlargement ρ of PDHG (``_pdhg``: ρ = 1/√weight up to this): 1e4 keeps ρ = 1/√weight down
#: to 1e-8. On the validation subjects' noise-free 128² cases a cap of 100 (the earlier value) left cold
#: 300-iteration solves unconverged below weight 1e-4: metal CT at 1e-5 0.6–1.3 dB and MRI at 1e-5 up to 3.7 dB
#: below the uncapped step, sparse-view CT at 3e-6 up to 5.3 dB, and at most 0.12 dB above it in the few cases
#: where the cap did better; at weights ≥ 1e-4 nothing changes (``benchmarks/pdhg_step_cap.py``, *pdhg-step-cap*)
RHO_CAP = 1e4


# ------------------------------------------------------------------------------------- helpers
def _modality(op: MeasurementOperator) -> str:
    if op.task == "mri":
        return "MR"
    if op.task.endswith("ct"):
        return "CT"
    return "other"


def _check_y(y: torch.Tensor, op: MeasurementOperator) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise ScoreReconError("measurements must be a torch tensor; convert numpy arrays with torch.from_numpy")
    want = op.measurement_shape(1)[1:]
    if y.ndim != len(want) + 1 or tuple(y.shape[1:]) != tuple(want):
        raise ScoreReconError(
            f"measurement has shape {tuple(y.shape)} but the {op.task or 'given'} operator expects "
            f"(B, {', '.join(str(s) for s in want)}) in full layout; simulate or load y for this operator"
        )
    mb = batch_items(op)
    if mb > 1 and y.shape[0] != mb:
        raise ScoreReconError(f"this operator holds {mb} per-image masks but y has {y.shape[0]} images; "
                              "pass one measurement per mask")
    if not torch.isfinite(y).all():
        raise ScoreReconError("measurement contains NaN or infinite values; clean or mask them before reconstructing")
    if op.task == "mri" and not y.is_complex():
        y = y.to(torch.complex64)
    if op.task != "mri" and y.is_complex():
        raise ScoreReconError(f"{op.task or 'this'} operator takes real measurements but y is complex; "
                              "pass the real sinogram")
    return y


# -------------------------------------------------------------------------------- regularisers
def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences (Neumann boundary): (B, 1, H, W) → (B, 2, H, W) [d/dH, d/dW]."""
    gh = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    gw = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.cat([gh, gw], dim=1)


def gradient_adjoint(q: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`gradient` (= −divergence): (B, 2, H, W) → (B, 1, H, W)."""
    qh = q[:, 0:1, :-1, :]
    qw = q[:, 1:2, :, :-1]
    return (F.pad(qh, (0, 0, 1, 0)) - F.pad(qh, (0, 0, 0, 1))
            + F.pad(qw, (1, 0, 0, 0)) - F.pad(qw, (0, 1, 0, 0)))


def _low(x: torch.Tensor, d: int, dim: int) -> torch.Tensor:
    return (x + torch.roll(x, d, dims=dim)) / 2


def _high(x: torch.Tensor, d: int, dim: int) -> torch.Tensor:
    return (x - torch.roll(x, d, dims=dim)) / 2


def haar_frame(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Undecimated (shift-invariant) 2-D Haar transform, circular boundary, Parseval (Wᵀ W = I).

    (B, 1, H, W) → (B, 3·levels + 1, H, W): per level j (filter dilation 2^j) the bands
    [LH, HL, HH], then the final low-pass band LL.
    """
    bands = []
    a = x
    for j in range(levels):
        d = 2**j
        lo, hi = _low(a, d, -2), _high(a, d, -2)
        bands += [_high(lo, d, -1), _low(hi, d, -1), _high(hi, d, -1)]
        a = _low(lo, d, -1)
    return torch.cat(bands + [a], dim=1)


def haar_frame_adjoint(w: torch.Tensor, levels: int) -> torch.Tensor:
    """Adjoint (= inverse) of :func:`haar_frame`: (B, 3·levels + 1, H, W) → (B, 1, H, W)."""
    a = w[:, -1:]
    for j in reversed(range(levels)):
        d = 2**j
        lh, hl, hh = w[:, 3 * j:3 * j + 1], w[:, 3 * j + 1:3 * j + 2], w[:, 3 * j + 2:3 * j + 3]
        lo = _low(a, -d, -1) + _high(lh, -d, -1)
        hi = _low(hl, -d, -1) + _high(hh, -d, -1)
        a = _low(lo, -d, -2) + _high(hi, -d, -2)
    return a


def _haar_levels(size: int, levels: int) -> int:
    return max(1, min(int(levels), int(math.log2(max(size, 4))) - 2))


class _TV:
    norm_sq = 8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gradient(x)

    def adjoint(self, q: torch.Tensor) -> torch.Tensor:
        return gradient_adjoint(q)

    def project(self, q: torch.Tensor, weight: float) -> torch.Tensor:
        if weight == 0:
            return torch.zeros_like(q)
        mag = q.pow(2).sum(dim=1, keepdim=True).sqrt()
        return q / (mag / weight).clamp_min(1.0)


class _Wavelet:
    norm_sq = 1.0

    def __init__(self, size: int, levels: int) -> None:
        self.levels = _haar_levels(size, levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return haar_frame(x, self.levels)

    def adjoint(self, q: torch.Tensor) -> torch.Tensor:
        return haar_frame_adjoint(q, self.levels)

    def project(self, q: torch.Tensor, weight: float) -> torch.Tensor:
        detail = q[:, :-1].clamp(-weight, weight)
        return torch.cat([detail, torch.zeros_like(q[:, -1:])], dim=1)


# ------------------------------------------------------------------------------------------ PDHG
@dataclass
class PDHGState:
    """Primal ``x`` (B, 1, N, N) and dual variables ``p`` (data) and ``q`` (regulariser) of a PDHG solve at
    ``weight``: what a solve at a nearby weight warm-starts from (:mod:`ScoreReconLib.parameter_choice`)."""

    x: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    weight: float


def _pdhg(y: torch.Tensor, op: MeasurementOperator, reg: _TV | _Wavelet, weight: float, iters: int, nonneg: bool,
          x0: torch.Tensor | None, progress: ProgressFn | None, cancel: threading.Event | None,
          label: str, state: PDHGState | None = None, precondition: bool | str = True) -> PDHGState:
    """Chambolle–Pock for min ½‖Ãx − ỹ‖² + weight·R(Kx) with Ã = A/‖A‖, ỹ = y/‖A‖.

    Starts from ``state`` (its duals; the regulariser's dual rescaled to this weight's ball) when given,
    else from ``x0`` or ``op.A_dagger(y)`` with zero duals. CT's data dual steps in the ramp-filter metric of
    :mod:`~ScoreReconLib.operators.preconditioning` where it fits (``precondition=False``: the plain metric; the
    same solution, reached in several times more iterations at 256² and above; ``"force"``: the ramp metric on
    any CT operator, for comparisons). Returns the final state."""
    if not math.isfinite(float(weight)) or weight < 0:
        raise ScoreReconError(f"regularisation weight {weight} must be ≥ 0; use e.g. 1e-3")
    if int(iters) < 1:
        raise ScoreReconError(f"iters = {iters} must be at least 1; use e.g. 300")
    s = operator_norm(op, device=y.device)
    yn = op.mask_apply(y) / s
    metric = ramp_metric(op, y.device, force=precondition == "force") if precondition else None
    if state is not None:
        x = state.x.detach().float().clone()
    else:
        x = op.A_dagger(y).float() if x0 is None else x0.detach().float().clone()
    op.check_image(x)
    if nonneg:
        x = x.clamp_min(0.0)
    x = op.restrict_to_support(x)
    # τσ‖K‖² < 1 with ‖K‖² ≤ 1 + ‖R‖². Small weights move the unmeasured part of x only through
    # the regulariser, so the primal step is enlarged by ρ = 1/√weight, at most RHO_CAP (measured on
    # 128² MRI 8×, weight 1e-3: 300 iterations then beat 3000 with τ = σ by 2 dB). Weight 0: τ = σ.
    rho = min(max(1.0 / math.sqrt(weight), 1.0), RHO_CAP) if weight > 0 else 1.0
    norm_k = math.sqrt(1.0 + (reg.norm_sq if weight > 0 else 0.0))
    tau, sigma = 0.99 * rho / norm_k, 0.99 / (rho * norm_k)
    x_bar = x
    if state is not None:
        p = state.p.clone()
        scale = weight / state.weight if state.weight > 0 else 0.0
        q = reg.project(state.q * scale, weight)
    else:
        p = torch.zeros_like(yn)
        q = torch.zeros_like(reg.forward(x))
    iters = int(iters)
    report_every = max(1, iters // 50)
    for it in range(iters):
        check_cancel(cancel)
        if metric is None:
            p = (p + sigma * (op.A(x_bar) / s - yn)) / (1.0 + sigma)
        else:
            p = metric.dual_step(p, op.A(x_bar) / s - yn, sigma)
        q = reg.project(q + sigma * reg.forward(x_bar), weight)
        x_new = x - tau * (op.A_adjoint(p) / s + reg.adjoint(q))
        if nonneg:
            x_new = x_new.clamp_min(0.0)
        x_new = op.restrict_to_support(x_new)
        x_bar = 2.0 * x_new - x
        x = x_new
        if progress is not None and ((it + 1) % report_every == 0 or it + 1 == iters):
            progress(it + 1, iters, label)
    return PDHGState(x, p, q, float(weight))


def _default(key: str, op: MeasurementOperator, name: str, value: float | None) -> float:
    if value is not None:
        return value
    if name == "iters" and preconditioned(op):
        return PRECONDITIONED_ITERS
    table = DEFAULTS[key]
    return table.get(_modality(op), table.get("MR", next(iter(table.values()))))[name]


#: the weight value that asks for the automatic choice (:func:`~ScoreReconLib.parameter_choice.choose_weight`)
AUTO = "auto"

Weight = float | str | None


def check_weight(weight: Weight, flag: str = "weight") -> float | str | None:
    """``"auto"``, ``None`` (the fixed default of :data:`DEFAULTS`) or a finite number ≥ 0; else a one-line error."""
    if weight is None or (isinstance(weight, str) and weight.strip().lower() == AUTO):
        return None if weight is None else AUTO
    if isinstance(weight, bool):
        raise ScoreReconError(f"{flag} must be 'auto' or a number >= 0, got {weight!r}")
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ScoreReconError(f"{flag} must be 'auto' or a number >= 0, got {weight!r}; e.g. auto or 1e-4") from None
    if not math.isfinite(value) or value < 0:
        raise ScoreReconError(f"{flag} must be 'auto' or a finite number >= 0, got {weight}")
    return value


def make_regularizer(op: MeasurementOperator, regularizer: str = "tv", levels: int = 3) -> _TV | _Wavelet:
    """The PDHG regulariser ``"tv"`` (isotropic TV) or ``"wavelet"`` (L1 on an undecimated Haar frame)."""
    if regularizer == "tv":
        return _TV()
    if regularizer == "wavelet":
        return _Wavelet(op.image_size, levels)
    raise ScoreReconError(f"unknown cs regularizer '{regularizer}'; use 'tv', 'wavelet' or 'sigpy-wavelet'")


def default_key(method: str, regularizer: str = "tv") -> str:
    """Key of :data:`DEFAULTS` for ``method`` ("tv" or "cs") and its regulariser."""
    return "tv" if method == "tv" else f"cs-{regularizer}"


def _resolve_weight(y: torch.Tensor, op: MeasurementOperator, method: str, regularizer: str, weight: Weight,
                    iters: int | None, levels: int, nonneg: bool,
                    cancel: threading.Event | None) -> tuple[float, torch.Tensor | None]:
    """(weight, image): ``image`` is the choice's own full solve at that weight when it made one."""
    weight = check_weight(weight)
    if weight == AUTO:
        from .parameter_choice import choose_weight

        choice = choose_weight(y, op, method, regularizer=regularizer, iters=iters, levels=levels, nonneg=nonneg,
                               cancel=cancel)
        return choice.weight, choice.image
    return float(_default(default_key(method, regularizer), op, "weight", weight)), None


def tv_reconstruct(y: torch.Tensor, op: MeasurementOperator, weight: Weight = AUTO, iters: int | None = None,
                   nonneg: bool = True, x0: torch.Tensor | None = None, progress: ProgressFn | None = None,
                   cancel: threading.Event | None = None) -> torch.Tensor:
    """TV-regularised least squares by PDHG → (B, 1, N, N).

    Solves ``min ½‖Ax − y‖² + weight·‖A‖²·TV(x)`` (x ≥ 0 if ``nonneg``), starting from ``x0`` or
    ``op.A_dagger(y)``. ``weight="auto"`` (default) chooses it from ``y`` itself
    (:func:`~ScoreReconLib.parameter_choice.choose_weight`), ``None`` takes :data:`DEFAULTS` ["tv"] for the
    modality, a number is used as given. ``iters`` defaults to :data:`DEFAULTS` (300).
    """
    y = _check_y(y, op)
    w, done = _resolve_weight(y, op, "tv", "tv", weight, iters, 3, nonneg, cancel)
    if done is not None and x0 is None:
        return done
    return _pdhg(y, op, _TV(), w, int(_default("tv", op, "iters", iters)), nonneg, x0, progress, cancel, "tv").x


def cs_reconstruct(y: torch.Tensor, op: MeasurementOperator, regularizer: str = "tv", weight: Weight = AUTO,
                   iters: int | None = None, levels: int = 3, nonneg: bool = True,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> torch.Tensor:
    """Compressed-sensing MRI → (B, 1, N, N): TV (default), L1 on an undecimated Haar frame ("wavelet") or
    sigpy's L1-wavelet recon on the complex image ("sigpy-wavelet", optional dependency; magnitude out).

    Objective ``min ½‖Ax − y‖² + weight·‖A‖²·R(x)``; ``levels`` = Haar decomposition levels. ``weight`` as in
    :func:`tv_reconstruct` (``"auto"`` is the default; for sigpy-wavelet it means sigpy's default weight).
    """
    if op.task != "mri":
        raise ScoreReconError(f"cs (compressed sensing) is an MRI method but the task is '{op.task}'; use tv")
    y = _check_y(y, op)
    if regularizer == "sigpy-wavelet":
        from .coils import sigpy_l1_wavelet

        check_cancel(cancel)
        w = check_weight(weight)
        return sigpy_l1_wavelet(y, op, _default("cs-wavelet", op, "weight", None if w == AUTO else w),
                                int(iters or 100))
    reg = make_regularizer(op, regularizer, levels)
    w, done = _resolve_weight(y, op, "cs", regularizer, weight, iters, levels, nonneg, cancel)
    if done is not None:
        return done
    key = default_key("cs", regularizer)
    return _pdhg(y, op, reg, w, int(_default(key, op, "iters", iters)), nonneg, None, progress, cancel,
                 f"cs-{regularizer}").x


def fbp(y: torch.Tensor, op: MeasurementOperator) -> torch.Tensor:
    """Filtered back-projection (CT): the operator's ``A_dagger`` → (B, 1, N, N)."""
    if _modality(op) != "CT":
        raise ScoreReconError(f"fbp is a CT method but the task is '{op.task}'; use zero-filled for MRI")
    return op.A_dagger(_check_y(y, op)).float()


def zero_filled(y: torch.Tensor, op: MeasurementOperator) -> torch.Tensor:
    """Zero-filled inverse FFT (MRI): the operator's ``A_dagger`` → (B, 1, N, N)."""
    if op.task != "mri":
        raise ScoreReconError(f"zero-filled is an MRI method but the task is '{op.task}'; use fbp for CT")
    return op.A_dagger(_check_y(y, op)).float()


_OPTIONS: dict[str, tuple[str, ...]] = {
    "fbp": (),
    "zero-filled": (),
    "tv": ("weight", "iters", "nonneg", "x0"),
    "cs": ("regularizer", "weight", "iters", "levels", "nonneg"),
    "sense": ("iters",),
    "rss": (),
}


def classical_reconstruct(method: str, y: torch.Tensor, op: MeasurementOperator,
                          progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                          **kw: Any) -> torch.Tensor:
    """Run ``method`` (one of :data:`METHODS`) on ``y`` for ``op`` → (B, 1, N, N) float32."""
    name = _METHOD_ALIASES.get(str(method).lower())
    if name is None:
        raise ScoreReconError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if op.task and name not in methods_for(op.task):
        raise ScoreReconError(f"method '{name}' does not fit task '{op.task}'; use one of "
                              f"{', '.join(methods_for(op.task))}")
    extra = sorted(set(kw) - set(_OPTIONS[name]))
    if extra:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise ScoreReconError(f"option(s) {', '.join(extra)} do not apply to method '{name}'; allowed: {allowed}")
    run: Callable[..., torch.Tensor]
    if name in ("sense", "rss"):
        from .coils import SENSE_ITERS, rss_reconstruct, sense_reconstruct

        check_cancel(cancel)
        y = _check_y(y, op)
        out = rss_reconstruct(y, op.mask) if name == "rss" else sense_reconstruct(y, op, kw.get("iters") or SENSE_ITERS)
        if progress is not None:
            progress(1, 1, name)
        return out
    if name in ("fbp", "zero-filled"):
        check_cancel(cancel)
        out = (fbp if name == "fbp" else zero_filled)(y, op)
        if progress is not None:
            progress(1, 1, name)
        return out
    run = tv_reconstruct if name == "tv" else cs_reconstruct
    return run(y, op, progress=progress, cancel=cancel, **kw)


__all__ = [
    "AUTO", "DEFAULTS", "METHODS", "PDHGState", "check_weight", "classical_reconstruct", "cs_reconstruct",
    "fbp", "gradient", "gradient_adjoint", "make_regularizer",
    "haar_frame", "haar_frame_adjoint", "methods_for", "operator_norm", "tv_reconstruct", "zero_filled",
]
