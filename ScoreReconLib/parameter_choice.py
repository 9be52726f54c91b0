"""The regularisation weight of TV / CS chosen from the measurement itself, without ground truth.

``weight="auto"`` (the default of ``tv``, ``cs`` and the score method's classical start) runs
:func:`choose_weight`, which applies the rule :data:`WEIGHT_RULES` names for the modality and for what the data's
noise looks like (:func:`noise_class`): CT the discrepancy rule (1–3), except noisy CT images of at least
:data:`LARGE_IMAGE` pixels a side with at least :data:`LARGE_IMAGE_MIN_VIEWS` views, and MRI: cross-validation (4).

1. ``σ_y``, the noise std of one measured entry, from :func:`~ScoreReconLib.noise.estimate_noise_std`
   (or as given), and ``m``, the number of measured entries.
2. The **noise-free weight** of the task, :data:`NOISE_FREE_WEIGHT` (the weight best on average over the
   validation subjects' noise-free measurements), is solved first. It is also the answer when the data
   look noise-free: ``σ_y`` at most :data:`NOISE_FREE_LEVEL` of the peak |y|, or 0, or (MRI, estimated ``σ_y``)
   outer k-space rings that fall with the radius (:func:`~ScoreReconLib.noise.kspace_looks_noise_free`), where
   the estimate reads the signal's tail rather than noise.
3. Otherwise the **discrepancy principle** (Morozov): the weight ``w`` whose reconstruction leaves a mean
   measured-row residual ``‖Λ(A x_w − y)‖² / m = τ σ_y²``, searched upward from the noise-free weight
   (the residual grows with ``w``): steps of ×10 until the residual passes the target, then regula falsi
   in (log w, log residual). Every probe warm-starts PDHG (primal and duals) from the nearest solved
   weight, so the search costs about three solves. A weight below the noise-free one is never chosen:
   the residual is already at or above the target there, and lower weights only fit noise.
4. **Cross-validation** (:func:`cross_validated_weight`): measured views or outer k-space lines / points
   (:mod:`~ScoreReconLib.operators.holdout`) held out in turn; the weight whose reconstructions from the rest
   predict them best. It needs no noise level; operators without such units (metal CT) use 1–3.

``τ`` (:data:`DISCREPANCY_FACTOR`) is below 1 because TV reconstructions after a finite number of PDHG
iterations leave less than the noise in the residual only slowly; its value per modality, like the
noise-free weights, was chosen on the validation subjects only (``benchmarks/auto_weight.py``,
"auto-weight-validation" in ``benchmarks/RESULTS.md``; docs/baselines.md says why these rules).

A number for ``weight`` always overrides; the chosen weight reproduces the image exactly when passed back.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass

import torch

from .baselines import AUTO, PDHGState, _check_y, _default, _modality, _pdhg, default_key, make_regularizer
from .errors import ScoreReconError
from .noise import estimate_noise_std, looks_noise_free, noise_estimable
from .operators.base import MeasurementOperator
from .utils import check_cancel

#: weight (relative to ‖A‖², [0, 1] images) of TV (CT) / CS-TV (MRI) on noise-free data, per task: the grid
#: weight with the best mean PSNR over the validation subjects' noise-free 128² measurements
#: MRI by sampling pattern: "mri-1d" (Cartesian lines: equispaced, random) and "mri-2d" (points: Poisson disc,
#: 2-D variable density); see :func:`operator_kind`
#: MRI with several coils ("-coils", :func:`weight_kind`) from the realistic simulation (smooth phase, receive-coil
#: maps, fine grid; ``benchmarks/mri_realism.py --part floor``, *mri-realism-floor*). One coil with an estimated
#: image phase has no fixed value: :func:`noise_free_weight` scales it with the data's phase inconsistency
NOISE_FREE_WEIGHT: dict[str, float] = {"sparse-ct": 1e-4, "limited-angle-ct": 1e-4, "metal-ct": 3.16e-6,
                                       "mri-1d": 1e-3, "mri-2d": 1e-4,
                                       "mri-1d-coils": 3.16e-3, "mri-2d-coils": 1e-3}
#: sparse-view CT's noise-free weight by the number of measured views, in place of NOISE_FREE_WEIGHT["sparse-ct"]:
#: the half-decade grid weight with the least mean loss on the validation subjects' noise-free 128² cases at 8 and
#: 23 views (``benchmarks/auto_weight.py``, *auto-weight-validation*), log-log interpolated between and held at the
#: ends outside. One weight for both (1e-4) lost 0.30 dB (8 views) and 0.33 (23) on average; these 0.15 and 0.00.
#: Fewer views leave more of the image to the regulariser
NOISE_FREE_WEIGHT_BY_VIEWS: dict[str, dict[int, float]] = {"sparse-ct": {8: 3.16e-4, 23: 3.16e-5}}
#: one coil with an estimated phase: noise-free weight = PHASE_WEIGHT_FACTOR · ρ², ρ the phase inconsistency
#: (:func:`~ScoreReconLib.coils.phase_inconsistency`), at least the plain kind's. On the validation subjects
#: (*mri-realism-floor*) factor 1 lost 0.92 dB on average against each case's best grid weight (0.5: 1.57, 2:
#: 1.08), a fixed 3.2e-2 1.17 dB and 1e-2 1.60 dB: the phase estimate's error acts like noise of relative size ρ
PHASE_WEIGHT_FACTOR = 1.0
#: target of the discrepancy principle, mean measured-row residual = τ σ_y², per modality
DISCREPANCY_FACTOR: dict[str, float] = {"CT": 0.95, "MR": 0.5, "other": 0.95}
#: σ_y / peak |y| at or below which data count as noise-free. CT: the sinogram estimate reads at most 0.03 %
#: of the peak on noise-free data; MR: 0 (the k-space estimate's floor, 0.02–0.1 %, overlaps real noise levels;
#: MRI weights come from cross-validation, which needs no noise level, and the score method reads the class)
NOISE_FREE_LEVEL: dict[str, float] = {"CT": 5e-4, "MR": 0.0, "other": 0.0}
#: PDHG iterations of each warm-started probe of the search
PROBE_ITERS = 100
#: regula-falsi steps after the bracket is found
REFINE_STEPS = 2
#: the largest weight the search tries
MAX_WEIGHT = 1.0
#: the rule :func:`choose_weight` applies, per modality and by what the data's noise looks like
#: (:func:`noise_class`: "noisy", "noise-free", or "unknown" where it cannot be estimated): "discrepancy" (the
#: task's noise-free weight, raised by the discrepancy principle on noisy data; the noise-free weight with a warning
#: where the noise is unknown) or "cross-validation" (:func:`cross_validated_weight`; operators without hold-out
#: units, metal CT, fall back to "discrepancy"); "CT-large" for CT images of at least :data:`LARGE_IMAGE` pixels a
#: side. Chosen on the validation subjects only (``benchmarks/weight_rules.py``, *weight-rule-validation*, at 128²;
#: ``benchmarks/auto_weight_native.py``, *auto-weight-native*, at 256² and 512²; docs/baselines.md says why)
WEIGHT_RULES: dict[str, dict[str, str]] = {
    "CT": {"noisy": "discrepancy", "noise-free": "discrepancy", "unknown": "discrepancy"},
    "CT-large": {"noisy": "cross-validation", "noise-free": "discrepancy", "unknown": "discrepancy"},
    "MR": {"noisy": "cross-validation", "noise-free": "cross-validation", "unknown": "cross-validation"},
    "other": {"noisy": "discrepancy", "noise-free": "discrepancy", "unknown": "discrepancy"},
}
#: images with at least LARGE_IMAGE pixels a side take the rules of "<modality>-large" where WEIGHT_RULES has
#: them (:func:`weight_rule`); CT only where at least LARGE_IMAGE_MIN_VIEWS views are measured. CT, noisy, on the
#: validation subjects (``benchmarks/auto_weight_native.py``, *auto-weight-native*; mean loss against the best grid
#: weight): 23 views, the discrepancy rule lost 0.12 dB at 128², 0.40 at 256² and 0.69 at 512² (1.29 on the native
#: 512² spine, whose fine detail the best weight leaves in the residual), cross-validation 0.39, 0.11 and 0.08;
#: 90° arc (256 views at 512²) likewise (spine 512²: 1.25 against 0.03). With 8 views (one or two held out per
#: fold) cross-validation lost more at every size, so LARGE_IMAGE_MIN_VIEWS lies between 8 and 23 (16: untested
#: in between)
LARGE_IMAGE = 256
LARGE_IMAGE_MIN_VIEWS = 16
#: cross-validation: the measured units (views, k-space lines or points) split into CV_FOLDS folds, the first
#: CV_SCORED of them held out in turn (each time 1 / CV_FOLDS of the units); more folds where those would hold out
#: fewer than CV_MIN_HELD units in all. 0: off. 8 (four folds for 8× 1-D MRI at 128², eleven outer lines) did not
#: help on the validation subjects and cost 1.5× (``benchmarks/weight_rules.py --cv-min-held 8``; measured with
#: 100-iteration probes, before the grid reached CV_BOTTOM and mirror pairs were held out together)
CV_FOLDS = 5
CV_SCORED = 2
CV_MIN_HELD = 0
#: cross-validation weights: from CV_TOP down in steps of √10 to CV_BOTTOM. Going lower lost on the validation
#: subjects even with the primal step growing as 1/√w below 1e-4 (``baselines.RHO_CAP``): MRI noise-free 0.38 dB
#: mean loss against each case's best grid weight with CV_BOTTOM 1e-5 (0.20 with 1e-4), CT noise-free 0.57 dB with
#: 1e-6 (the discrepancy rule's noise-free weight 0.26). On noise-free single-coil MRI the held-out error kept
#: falling down to 1e-5 where the best weights were 3e-4–3e-3 (up to 3.7 dB lost); on noise-free 23-view CT it
#: chose 2e-4–4e-4 where the best were 3e-5 (``benchmarks/weight_rules.py --cv-bottom``)
CV_TOP = 0.1
CV_BOTTOM = 1e-4
#: stop descending once the last three held-out errors lie within CV_FLAT of each other (relative), or once the two
#: weights after the smallest error both raise it by more than CV_RISE (relative)
CV_FLAT = 0.01
CV_RISE = 0.1
#: PDHG iterations of each warm-started cross-validation probe: on the MRI validation cases 50 lost 0.06 dB (noisy)
#: and 0.21 dB (noise-free) on average to the best grid weight, 100 lost 0.12 and 0.21, at 1.5× the seconds
#: (``benchmarks/weight_rules.py --cv-probe-iters 100``; measured before the grid reached CV_BOTTOM and before
#: mirror pairs were held out together)
CV_PROBE_ITERS = 50


@dataclass
class WeightChoice:
    """What :func:`choose_weight` chose and why.

    ``residual``: mean measured-row residual ‖Λ(A x − y)‖² / m at the chosen weight's probe (cross-validation:
    of its full solve), in units of σ_y² (NaN when σ_y = 0 or not estimable); ``target``: τ (the discrepancy
    target in the same units; not used by cross-validation); ``image``: the reconstruction at the chosen weight
    with the method's full iterations from a cold start when the search computed it (the noise-free weight,
    cross-validation), else None; ``held_out`` and ``curve`` (cross-validation only): what was held out, and the
    mean held-out error at each weight probed.
    """

    weight: float
    rule: str  # "discrepancy" | "noise-free" | "noise unknown" | "cross-validation"
    noise_std: float
    noise_source: str  # "estimated" | "given" | "not estimable" (σ_y then 0)
    residual: float
    target: float
    measured: int
    solves: int
    seconds: float
    warning: str | None = None
    image: torch.Tensor | None = None
    held_out: str | None = None
    curve: list[tuple[float, float]] | None = None

    def line(self) -> str:
        """One line for a log: weight, rule, residual, σ_y (:func:`describe_choice`)."""
        return describe_choice(self.to_dict())

    def to_dict(self) -> dict:
        """JSON-ready record (without the image)."""
        d = asdict(self)
        d.pop("image", None)
        if math.isnan(d["residual"]):
            d["residual"] = None
        if d["curve"] is not None:
            d["curve"] = [[float(w), float(e)] for w, e in d["curve"]]
        return d


def describe_choice(record: dict) -> str:
    """One line for a weight choice record (:meth:`WeightChoice.to_dict`, or the ``weight_choice`` of metrics.json,
    whose ``final_residual`` is preferred): the weight, the rule and what it read, σ_y, the cost."""
    res = record.get("final_residual", record.get("residual"))
    res_text = "n/a" if res is None or (isinstance(res, float) and math.isnan(res)) else f"{res:.2f} σ_y²"
    if record["rule"] == "cross-validation":
        how = f"cross-validation, {record.get('held_out') or 'held-out units'}; residual {res_text}"
    else:
        how = f"{record['rule']}; residual {res_text}, target {record['target']:.2f} σ_y²"
    sigma = ("σ_y not estimable" if record["noise_source"] == "not estimable"
             else f"σ_y {record['noise_std']:.4g} {record['noise_source']}")
    return (f"auto weight {record['weight']:.3g} ({how}; {sigma}; "
            f"{record['solves']} solve(s), {record['seconds']:.1f} s)")


def operator_kind(op: MeasurementOperator) -> str:
    """The key of :data:`NOISE_FREE_WEIGHT`: the task, and for MRI "mri-1d" when the mask samples whole lines (it
    is constant along one image axis) or "mri-2d" when it samples points (a 2-D pattern such as Poisson disc)."""
    if op.task != "mri":
        return op.task
    mask = op.mask.detach()
    plane = (mask.reshape(-1, *mask.shape[-2:])[0] > 0).cpu()
    lines = bool((plane == plane[:1, :]).all()) or bool((plane == plane[:, :1]).all())
    return "mri-1d" if lines else "mri-2d"


def weight_kind(op: MeasurementOperator) -> str:
    """The key of :data:`NOISE_FREE_WEIGHT`: :func:`operator_kind`, for MRI followed by "-coils" (several coils) or
    "-phase" (one coil with an image phase estimated from the data folded in, as ``simulate`` and ``import-kspace``
    make); the plain kind for single-coil data without a phase."""
    kind = operator_kind(op)
    if op.task != "mri":
        return kind
    if int(getattr(op, "coils", 1)) > 1:
        return f"{kind}-coils"
    return f"{kind}-phase" if getattr(op, "phase", None) is not None else kind


def noise_free_weight(op: MeasurementOperator, method: str, regularizer: str = "tv",
                      y: torch.Tensor | None = None) -> float:
    """The noise-free weight of the operator's kind (:data:`NOISE_FREE_WEIGHT`, :func:`weight_kind`); the
    method's fixed default for the wavelet regulariser and for tasks without a validated value. One coil with an
    estimated phase ("-phase", needs ``y``): :data:`PHASE_WEIGHT_FACTOR` · ρ², at least the plain kind's value."""
    kind = weight_kind(op)
    if regularizer == "tv" and kind.endswith("-phase") and y is not None:
        from .coils import phase_inconsistency

        rho = phase_inconsistency(y, op.mask, op.maps)
        return max(NOISE_FREE_WEIGHT[operator_kind(op)], PHASE_WEIGHT_FACTOR * rho**2)
    views = measured_views(op)
    if regularizer == "tv" and kind in NOISE_FREE_WEIGHT_BY_VIEWS and views is not None:
        return _by_views(NOISE_FREE_WEIGHT_BY_VIEWS[kind], views)
    if regularizer == "tv" and kind in NOISE_FREE_WEIGHT:
        return NOISE_FREE_WEIGHT[kind]
    return float(_default(default_key(method, regularizer), op, "weight", None))


def measured_views(op: MeasurementOperator) -> int | None:
    """How many views a view-selecting CT operator (sparse-view, limited-angle: ``op.views``) measures; None for
    operators that select no views (metal CT, MRI)."""
    views = getattr(op, "views", None)
    return None if views is None else len(views)


def _by_views(table: dict[int, float], views: int) -> float:
    """``table`` {views: weight} log-log interpolated at ``views``, held at its ends outside (3 significant digits)."""
    points = sorted(table.items())
    if views <= points[0][0]:
        return points[0][1]
    if views >= points[-1][0]:
        return points[-1][1]
    for (v0, w0), (v1, w1) in zip(points[:-1], points[1:], strict=True):
        if v0 <= views <= v1:
            f = math.log(views / v0) / math.log(v1 / v0)
            return float(f"{math.exp(math.log(w0) + f * math.log(w1 / w0)):.3g}")
    raise AssertionError("unreachable: views lies between the table's ends")


def measured_count(op: MeasurementOperator, y: torch.Tensor) -> int:
    """Number of measured entries of the full-layout ``y`` (all batch items and coils)."""
    return int(torch.broadcast_to(op.mask.to(y.device) > 0, y.shape).sum())


def mean_residual(op: MeasurementOperator, x: torch.Tensor, y: torch.Tensor, m: int) -> float:
    """‖Λ(A x − y)‖² / m."""
    r = op.mask_apply(op.A(x) - y)
    return float((r.abs() ** 2).sum()) / max(m, 1)


def _log_interpolate(lo: tuple, hi: tuple, target: float, margin: float) -> float:
    """The weight where the line through ``lo`` and ``hi`` ((weight, residual, …) pairs) in (log w, log residual)
    meets ``target``, kept within ``margin`` (a fraction of the bracket) of either end."""
    lw0, lr0 = math.log(lo[0]), math.log(max(lo[1], 1e-300))
    lw1, lr1 = math.log(hi[0]), math.log(max(hi[1], 1e-300))
    frac = (math.log(target) - lr0) / (lr1 - lr0) if lr1 > lr0 else 0.5
    return math.exp(lw0 + min(max(frac, margin), 1.0 - margin) * (lw1 - lw0))


def _held_out_error(op: MeasurementOperator, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor,
                    count: int) -> float:
    """Mean |A x − y|² over the held-out entries ``held`` (0/1, the mask's shape; ``count`` of them in ``y``)."""
    r = (op.A(x) - y) * held.to(y.device)
    return float((r.abs() ** 2).sum()) / max(count, 1)


def _held_units(held: torch.Tensor) -> int:
    """Units in a held-out mask: views (CT, one entry each in the (1, 1, A, 1) mask), lines or points (MRI plane)."""
    plane = held.reshape(-1, *held.shape[-2:])[0] > 0
    if held.shape[-1] == 1:
        return int(plane.sum())
    if bool((plane == plane[:1, :]).all()):  # whole columns
        return int(plane.any(0).sum())
    if bool((plane == plane[:, :1]).all()):  # whole rows
        return int(plane.any(1).sum())
    return int(plane.sum())


def _log_parabola_minimum(points: list[tuple[float, float]], i: int) -> float:
    """The weight at the minimum of the parabola in log w through ``points[i]`` and its neighbours (the point's
    own weight at an end of the list, or where the three do not bend upward), kept within half a step of it."""
    if i == 0 or i == len(points) - 1:
        return points[i][0]
    (w0, e0), (w1, e1), (w2, e2) = points[i - 1], points[i], points[i + 1]
    x0, x1, x2 = math.log(w0), math.log(w1), math.log(w2)
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (e1 - e0) + x1 * (e0 - e2) + x0 * (e2 - e1)) / denom
    b = (x2**2 * (e0 - e1) + x1**2 * (e2 - e0) + x0**2 * (e1 - e2)) / denom
    if a <= 0:
        return w1
    half = 0.5 * min(abs(x0 - x1), abs(x2 - x1))
    return math.exp(min(max(-b / (2 * a), x1 - half), x1 + half))


def cross_validated_weight(y: torch.Tensor, op: MeasurementOperator, reg, nonneg: bool = True,
                           cancel: threading.Event | None = None, iters: int | None = None, folds: int = CV_FOLDS,
                           scored: int = CV_SCORED, seed: int = 0, label: str = "weight choice"
                           ) -> tuple[float, list[tuple[float, float]], int, str] | None:
    """The weight whose reconstructions from part of the measured units best predict the units held out.

    The measured units of ``op`` (:func:`~ScoreReconLib.operators.holdout.holdout_masks`) are split into ``folds``
    folds; for each of the first ``scored`` folds, PDHG with regulariser ``reg`` reconstructs from the other folds
    (``iters`` iterations per weight, warm-started from the previous, larger weight) and the mean squared error
    of ``A x`` on the held-out entries is recorded. The weights run from :data:`CV_TOP` down by √10 until the error
    is flat or rising (:data:`CV_FLAT`, :data:`CV_RISE`); the minimum is refined by a parabola in log w. No noise
    level is needed. Returns (weight, [(weight, held-out error), …], PDHG solves in units of ``iters``, what was
    held out), or None where the operator has no units to hold out (metal CT).
    """
    from .operators.holdout import HoldoutOperator, holdout_masks

    iters = CV_PROBE_ITERS if iters is None else int(iters)
    masks = holdout_masks(op, folds, seed)
    if masks is None:
        return None
    measured = (op.mask > 0).float().cpu()
    units = [_held_units(measured - keep) for keep in masks]
    while scored < folds and sum(units[:scored]) < CV_MIN_HELD:
        scored += 1
    chains = []
    for keep in masks[:scored]:
        held = measured - keep
        count = int(torch.broadcast_to(held > 0, y.shape).sum())
        chains.append([HoldoutOperator(op, keep.to(op.mask.device)), held, count, None])
    curve: list[tuple[float, float]] = []
    solves = 0
    steps = round(2 * math.log10(CV_TOP / CV_BOTTOM))  # whole half-decades: CV_BOTTOM itself is probed
    for k in range(steps + 1):
        w = CV_TOP * 10.0 ** (-k / 2)
        error = 0.0
        for chain in chains:
            check_cancel(cancel)
            chain[3] = _pdhg(y, chain[0], reg, w, iters, nonneg, None, None, cancel, label, state=chain[3])
            solves += 1
            error += _held_out_error(op, chain[3].x, y, chain[1], chain[2])
        curve.append((w, error / len(chains)))
        errors = [e for _, e in curve]
        best = min(range(len(errors)), key=errors.__getitem__)
        last = errors[-3:]
        if len(last) == 3 and max(last) - min(last) <= CV_FLAT * min(last):
            break
        if best <= len(errors) - 3 and min(errors[-2:]) > (1.0 + CV_RISE) * errors[best]:
            break
    errors = [e for _, e in curve]
    best = min(range(len(errors)), key=errors.__getitem__)
    weight = float(f"{_log_parabola_minimum(curve, best):.3g}")
    unit = "views" if op.task.endswith("-ct") else ("outer lines" if operator_kind(op) == "mri-1d" else "outer points")
    held_out = f"{len(chains)} × {100 // folds} % of the measured {unit} held out"
    return weight, curve, solves, held_out


@dataclass(frozen=True)
class _NoiseReading:
    """σ_y of ``y`` as :func:`choose_weight` reads it: ``sigma`` (0 when not estimable), ``source`` ("given",
    "estimated", "not estimable"), ``peak`` (the largest |y| over coils) and ``clean`` (the data count as
    noise-free: σ_y at most :data:`NOISE_FREE_LEVEL` of the peak, 0, or MRI k-space whose outer rings fall with the
    radius)."""

    sigma: float
    source: str
    peak: float
    clean: bool

    @property
    def noise_class(self) -> str:
        """The key of :data:`WEIGHT_RULES`."""
        return "unknown" if self.source == "not estimable" else ("noise-free" if self.clean else "noisy")


def _read_noise(y: torch.Tensor, op: MeasurementOperator, noise_std: float | None) -> _NoiseReading:
    """:class:`_NoiseReading` of a checked ``y``: ``noise_std`` if given (finite, ≥ 0), else estimated."""
    signal_floor = False
    if noise_std is None:
        if noise_estimable(op, y):
            source, sigma = "estimated", float(estimate_noise_std(op, y))
            signal_floor = looks_noise_free(op, y)  # MRI: the estimate read the signal's tail
        else:
            source, sigma = "not estimable", 0.0
    elif not (math.isfinite(float(noise_std)) and noise_std >= 0):
        raise ScoreReconError(f"noise_std must be a finite number >= 0, got {noise_std}")
    else:
        source, sigma = "given", float(noise_std)
    peak = float(y.abs().pow(2).sum(dim=1).sqrt().max())
    clean = sigma <= NOISE_FREE_LEVEL[_modality(op)] * peak or sigma <= 0 or signal_floor
    return _NoiseReading(sigma, source, peak, clean)


def noise_class(y: torch.Tensor, op: MeasurementOperator, noise_std: float | None = None) -> str:
    """What the noise of ``y`` looks like to :func:`choose_weight`, the key of :data:`WEIGHT_RULES`: "unknown" (it
    cannot be estimated), "noise-free" (σ_y at most :data:`NOISE_FREE_LEVEL` of the peak, 0, or MRI k-space whose
    outer rings fall with the radius) or "noisy"."""
    return _read_noise(_check_y(y, op), op, noise_std).noise_class


def weight_rule(op: MeasurementOperator, noise_class: str) -> str:
    """The rule :data:`WEIGHT_RULES` names for ``op``'s modality, image size (:data:`LARGE_IMAGE`; CT: and number
    of measured views, :data:`LARGE_IMAGE_MIN_VIEWS`) and ``noise_class`` (:func:`noise_class`): "discrepancy" or
    "cross-validation"."""
    kind = _modality(op)
    large = op.image_size >= LARGE_IMAGE and f"{kind}-large" in WEIGHT_RULES
    if large and kind == "CT":
        large = (measured_views(op) or 0) >= LARGE_IMAGE_MIN_VIEWS
    return WEIGHT_RULES[f"{kind}-large" if large else kind][noise_class]


def choose_weight(y: torch.Tensor, op: MeasurementOperator, method: str = "tv", regularizer: str = "tv",
                  noise_std: float | None = None, iters: int | None = None, levels: int = 3, nonneg: bool = True,
                  cancel: threading.Event | None = None, rule: str | None = None) -> WeightChoice:
    """Choose the ``method`` ("tv" or "cs") weight for the measurements ``y`` (B, ...) of ``op``.

    One weight for the whole batch (the slices of a volume share it). ``noise_std``: σ_y of one measured
    entry if known (else estimated). ``iters``: PDHG iterations of a full solve (default 300). ``rule``:
    "discrepancy" or "cross-validation" instead of what :data:`WEIGHT_RULES` names for the data (comparisons).
    """
    if method not in ("tv", "cs"):
        raise ScoreReconError(f"automatic weights exist for tv and cs, not '{method}'")
    if rule not in (None, "discrepancy", "cross-validation"):
        raise ScoreReconError(f"unknown weight rule '{rule}'; use 'discrepancy' or 'cross-validation'")
    t0 = time.perf_counter()
    y = _check_y(y, op)
    kind = _modality(op)
    reg = make_regularizer(op, regularizer, levels)
    full_iters = int(_default(default_key(method, regularizer), op, "iters", iters))
    m = measured_count(op, y)
    reading = _read_noise(y, op, noise_std)
    sigma, source, peak, clean = reading.sigma, reading.source, reading.peak, reading.clean
    unknown = source == "not estimable"
    tau = DISCREPANCY_FACTOR[kind]
    w_floor = noise_free_weight(op, method, regularizer, y)
    label = f"{method} weight choice"

    def solve(w: float, n: int, start: PDHGState | None) -> PDHGState:
        check_cancel(cancel)
        return _pdhg(y, op, reg, w, n, nonneg, None, None, cancel, label, state=start)

    if peak > 0 and (rule or weight_rule(op, reading.noise_class)) == "cross-validation":
        cv = cross_validated_weight(y, op, reg, nonneg, cancel, label=label)
        if cv is not None:
            w, curve, probes, held_out = cv
            final = solve(w, full_iters, None)
            residual = mean_residual(op, final.x, y, m) / sigma**2 if sigma > 0 else float("nan")
            solves = 1 + math.ceil(probes * CV_PROBE_ITERS / full_iters)
            return WeightChoice(w, "cross-validation", sigma, source, residual, tau, m, solves,
                                time.perf_counter() - t0, None, final.x, held_out, curve)
    if not (clean or unknown or peak <= 0) and regularizer == "tv" and weight_kind(op) in NOISE_FREE_WEIGHT_BY_VIEWS:
        # noisy sparse-view CT: the discrepancy search starts from the kind's one weight (1e-4), where it was
        # validated; the per-view-count weight is for noise-free data (started from 3.16e-5 at 23 views, the
        # warm-started probes bracketed the residual differently: 0.25 dB lost on the held-out noisy 23-view cases)
        w_floor = NOISE_FREE_WEIGHT[weight_kind(op)]
    base = solve(w_floor, full_iters, None)
    solves = 1
    warning = None
    if unknown or peak <= 0:
        rule = "noise unknown"
        warning = ("the noise level could not be estimated from the data (too few measured entries far from the "
                   f"k-space centre, or a constant measurement); used the noise-free weight {w_floor:.3g}. Pass "
                   "--noise-std (noise_std=) or --weight to set it")
        return WeightChoice(w_floor, rule, sigma, source, float("nan"), tau, m, solves,
                            time.perf_counter() - t0, warning, base.x)
    target = tau * sigma**2
    r_floor = mean_residual(op, base.x, y, m)
    if clean or r_floor >= target:
        rule = "noise-free" if clean else "discrepancy"
        return WeightChoice(w_floor, rule, sigma, source, r_floor / sigma**2 if sigma > 0 else float("nan"), tau,
                            m, solves, time.perf_counter() - t0, warning, base.x)
    def probe(w: float, start: PDHGState) -> tuple[float, float, PDHGState]:
        st = solve(w, PROBE_ITERS, start)
        return w, mean_residual(op, st.x, y, m), st

    # bracket: lo below the target, hi at or above it
    lo = (w_floor, r_floor, base)
    hi = None
    while hi is None:
        point = probe(min(lo[0] * 10.0, MAX_WEIGHT), lo[2])
        solves += 1
        if point[1] >= target:
            hi = point
        else:
            lo = point
            if point[0] >= MAX_WEIGHT:
                warning = (f"the residual stays below the noise level up to weight {MAX_WEIGHT:g}; the noise "
                           "estimate may be too high: pass --noise-std or --weight")
                return WeightChoice(point[0], "discrepancy", sigma, source, point[1] / sigma**2, tau, m, solves,
                                    time.perf_counter() - t0, warning)
    for _ in range(REFINE_STEPS):
        w = _log_interpolate(lo, hi, target, 0.1)  # stay inside the bracket
        near = lo if abs(math.log(w / lo[0])) <= abs(math.log(w / hi[0])) else hi
        point = probe(w, near[2])
        solves += 1
        if point[1] >= target:
            hi = point
        else:
            lo = point
    # the final weight: log-linear interpolation of the bracket at the target
    w = _log_interpolate(lo, hi, target, 0.0)
    w = float(f"{w:.3g}")  # a printable weight that reproduces the image when passed back
    return WeightChoice(w, "discrepancy", sigma, source, target / sigma**2, tau, m, solves,
                        time.perf_counter() - t0, warning)


#: the score method's classical start where it differs from the automatic TV / CS weight, per operator kind
#: (:func:`weight_kind`): ``factor`` × the discrepancy weight on noisy data, ``noise_free`` on noise-free data.
#: Metal CT, chosen on the CT validation subjects at 128² (``benchmarks/start_weight.py``, *start-weight-metal*):
#: the sampler does best from a start at half the TV-optimal weight on noisy data (mean score PSNR 36.41 dB at
#: ×0.5 against 36.08 at ×1) and from a smoother start than TV's own noise-free weight (43.85 at 1e-5 against
#: 43.68 at 3.16e-6 and 43.63 at 4e-5, the value before PDHG's small-weight step was fixed)
START_RULES: dict[str, dict[str, float]] = {"metal-ct": {"factor": 0.5, "noise_free": 1e-5}}


def start_weight(choice: WeightChoice, op: MeasurementOperator) -> float:
    """The weight of the score method's classical start from the automatic choice ``choice`` for ``op``: the
    choice's own weight, or the kind's :data:`START_RULES` (a printable number that reproduces the start)."""
    rule = START_RULES.get(weight_kind(op))
    if rule is None or choice.rule == "noise unknown":
        return choice.weight
    if choice.rule == "noise-free":
        return float(rule["noise_free"])
    return float(f"{choice.weight * rule['factor']:.3g}")


#: mean measured-row residual of a final image, in units of σ_y², inside which it neither fits the noise (below)
#: nor leaves signal in the data (above); chosen on the validation subjects (benchmarks/score_discrepancy.py)
DISCREPANCY_BAND: tuple[float, float] = (0.5, 2.5)
#: estimated σ_y / peak |y| below which a residual under the band is not called noise fitting: the MRI k-space
#: estimate reads 0.02–0.1 % of the peak on noise-free data (the signal floor), so below this it may be no noise
ESTIMATE_FLOOR: dict[str, float] = {"CT": NOISE_FREE_LEVEL["CT"], "MR": 1.5e-3, "other": 0.0}


def check_discrepancy(op: MeasurementOperator, x: torch.Tensor, y: torch.Tensor,
                      noise_std: float | None = None, residual: torch.Tensor | None = None) -> dict:
    """The discrepancy principle as a check of a final image ``x`` (B, 1, N, N) for measurements ``y``.

    Returns a JSON-ready record: ``residual`` (mean measured-row residual ‖Λ(A x − y)‖² / m in units of σ_y², the
    χ² per measured entry; None for noise-free data) and ``residual_per_slice``, ``noise_std`` (σ_y, given or
    estimated), ``band`` (:data:`DISCREPANCY_BAND`) and
    ``verdict``: "consistent" (inside the band), "fits the noise" (below: the data's noise was copied into the
    image), "leaves signal" (above: the image disagrees with the data by more than their noise), "below the
    noise estimate" (below, but an estimated σ_y under :data:`ESTIMATE_FLOOR` may be the signal floor of
    noise-free data), "noise-free data" or "noise unknown"; ``warning`` (a sentence) for the two failures.
    ``residual``: ``Λ(A x − y)`` when the caller has computed it already (it is not computed again).
    """
    y = _check_y(y, op)
    kind = _modality(op)
    m = measured_count(op, y)
    reading = _read_noise(y, op, noise_std)
    if reading.source == "not estimable":
        return {"residual": None, "residual_per_slice": None, "noise_std": None, "band": list(DISCREPANCY_BAND),
                "verdict": "noise unknown", "warning": None}
    sigma, peak = reading.sigma, reading.peak
    record = {"residual": None, "residual_per_slice": None, "noise_std": sigma, "band": list(DISCREPANCY_BAND),
              "verdict": "noise-free data", "warning": None}
    if reading.clean:
        return record
    r = op.mask_apply(op.A(x.to(y.device)) - y) if residual is None else residual
    per_entry = r.abs().pow(2).flatten(1).sum(1)
    per_count = torch.broadcast_to(op.mask.to(y.device) > 0, y.shape).flatten(1).sum(1).clamp(min=1)
    record["residual_per_slice"] = [float(v) for v in (per_entry / per_count / sigma**2)]
    ratio = float(per_entry.sum()) / max(m, 1) / sigma**2
    record["residual"] = ratio
    lo, hi = DISCREPANCY_BAND
    if ratio < lo and reading.source == "estimated" and sigma <= ESTIMATE_FLOOR[kind] * peak:
        record["verdict"] = "below the noise estimate"
    elif ratio < lo:
        record["verdict"] = "fits the noise"
        record["warning"] = (f"the image fits the data to {ratio:.2f} σ_y², below the noise ({lo:g}–{hi:g} σ_y² "
                             "expected): noise was copied into it; a lower --lam or the default --final-lam helps")
    elif ratio > hi:
        record["verdict"] = "leaves signal"
        record["warning"] = (f"the image departs from the data by {ratio:.2f} σ_y², more than their noise ({lo:g}–"
                             f"{hi:g} σ_y² expected): the prior overrides measured signal; check that the model "
                             "fits the data (modality, normalisation) or raise --lam")
    else:
        record["verdict"] = "consistent"
    return record


__all__ = ["AUTO", "CV_FOLDS", "CV_SCORED", "DISCREPANCY_BAND", "DISCREPANCY_FACTOR", "LARGE_IMAGE",
           "LARGE_IMAGE_MIN_VIEWS", "NOISE_FREE_LEVEL", "NOISE_FREE_WEIGHT", "NOISE_FREE_WEIGHT_BY_VIEWS",
           "PHASE_WEIGHT_FACTOR", "START_RULES", "WEIGHT_RULES", "WeightChoice", "check_discrepancy",
           "choose_weight", "cross_validated_weight", "describe_choice", "measured_count", "measured_views",
           "noise_class", "noise_free_weight", "operator_kind", "start_weight", "weight_kind", "weight_rule"]
