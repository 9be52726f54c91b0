"""Measured entries held out of an operator, for choosing a regularisation weight by cross-validation.

:class:`HoldoutOperator` is an operator with the same transform ``T`` as its base and a smaller mask: the base's
measured entries minus a held-out set. A reconstruction from the kept entries predicts the held-out ones; the
weight whose reconstructions predict them best is the cross-validated weight
(:func:`~ScoreReconLib.parameter_choice.cross_validated_weight`).

:func:`holdout_masks` splits the measured entries into folds in the units the operator measures, so that each
fold's kept data look like the task's own data, only sparser:

- sparse-view and limited-angle CT: whole views, interleaved (fold ``f`` holds out every ``K``-th measured view
  from the ``f``-th on);
- MRI with a 1-D (line) mask: whole phase-encode lines outside the fully sampled centre, in a seeded random order;
- MRI with a 2-D (point) mask: points outside the central calibration square (side ``N / 8``), in a seeded random
  order.

MRI units go with their k-space mirror (line ``−j``, point ``−k``) where that is measured too: a real image's
k-space is Hermitian, so a held-out entry whose mirror is kept would be fitted, not predicted.

Metal CT has no such units (its gap is the metal trace, one contiguous band per object): :func:`holdout_masks`
returns None for it, and for per-slice masks that differ between slices.
"""

from __future__ import annotations

import torch

from ..errors import ScoreReconError
from .base import _NORM_CACHE, MeasurementOperator, operator_norm

#: half-side of the MRI calibration square that is never held out, as a fraction of the image side
CENTRE_FRACTION = 1.0 / 16.0


class HoldoutOperator(MeasurementOperator):
    """``base`` measuring only the entries of ``keep`` (0/1, the base mask's shape, a subset of its measured
    entries). ``A``, ``Aᴴ`` and ``A_dagger`` are the base's with the held-out entries set to zero; every other
    attribute (coil maps, geometry, task, image size) is the base's."""

    def __init__(self, base: MeasurementOperator, keep: torch.Tensor):
        base_mask = base.mask
        keep = torch.as_tensor(keep).to(device=base_mask.device, dtype=torch.float32)
        if tuple(keep.shape) != tuple(base_mask.shape):
            raise ScoreReconError(f"hold-out mask has shape {tuple(keep.shape)} but the operator's mask is "
                                  f"{tuple(base_mask.shape)}; build it with holdout_masks(operator)")
        if bool(((keep > 0) & ~(base_mask > 0)).any()):
            raise ScoreReconError("hold-out mask keeps entries the operator does not measure; it must be a subset "
                                  "of the operator's mask")
        if not bool((keep > 0).any()):
            raise ScoreReconError("hold-out mask keeps no measured entry; hold out fewer entries")
        self.base = base
        self._keep = keep
        self.task = base.task
        self.image_size = base.image_size
        self.all_views = False  # CT: never the full angle set (the ramp metric of full scans does not apply)
        # ‖A‖ of the kept entries is at most the base's: the base's bound keeps PDHG's steps valid without
        # another power iteration
        _NORM_CACHE[self] = operator_norm(base)

    #: base methods that would act with the base's full mask (or rebuild it) and so are not delegated
    _NOT_DELEGATED = frozenset({"base", "batch_subset", "with_domain", "damped_least_squares", "_mask"})

    def __getattr__(self, name: str):
        # only reached for attributes not found on this object: the base's coil maps, geometry, phase, ...
        if name in HoldoutOperator._NOT_DELEGATED:
            raise AttributeError(f"{name} is not available on a hold-out operator")
        return getattr(self.base, name)

    @property
    def mask(self) -> torch.Tensor:
        """The kept entries (the base mask's shape)."""
        return self._keep

    def T(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.T(x)

    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        return self.base.T_adjoint(m)

    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        return self.base.T_inv(m)

    def _forward_measured(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_apply(self.base._forward_measured(x))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.A_adjoint(self.mask_apply(y))

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.A_dagger(self.mask_apply(y))

    def image_support(self) -> torch.Tensor | None:
        return self.base.image_support()

    def restrict_to_support(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.restrict_to_support(x)

    def check_image(self, x: torch.Tensor) -> None:
        self.base.check_image(x)

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        return self.base.measurement_shape(batch)

    def spec(self) -> dict:
        raise ScoreReconError("a hold-out operator exists only inside cross-validation and has no file form; "
                              "save the base operator instead")

    def to(self, device: torch.device | str) -> HoldoutOperator:
        """The hold-out operator on ``device`` (the base moves too, as its own ``to`` does)."""
        return HoldoutOperator(self.base.to(device), self._keep.to(device))


def _interleaved(units: torch.Tensor, folds: int) -> list[torch.Tensor]:
    return [units[f::folds] for f in range(folds)]


def _mirror_pairs(units: torch.Tensor, mirror: torch.Tensor) -> list[list[int]]:
    """Each unit with its k-space mirror when that is a unit too. The k-space of a real image is Hermitian, so a
    held-out entry whose mirror is kept would be fitted through the mirror rather than predicted (on Poisson masks
    about 30 % of single points had their mirror kept)."""
    present = set(units.tolist())
    seen: set[int] = set()
    groups = []
    for u, m in zip(units.tolist(), mirror.tolist(), strict=True):
        if u in seen:
            continue
        group = [u] + ([m] if m != u and m in present and m not in seen else [])
        seen.update(group)
        groups.append(group)
    return groups


def _shuffled(groups: list[list[int]], folds: int, seed: int) -> list[torch.Tensor]:
    """Fold ``f``: the groups at positions f, f + folds, … of a seeded random order, flattened."""
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [torch.tensor([u for i in order[f::folds] for u in groups[i]], dtype=torch.long) for f in range(folds)]


def _mirror(index: torch.Tensor, n: int) -> torch.Tensor:
    """The centred-FFT index of frequency −f for index ``index`` of frequency f (``fft2c``'s layout)."""
    return (2 * (n // 2) - index) % n


def _centre_run(measured: torch.Tensor) -> torch.Tensor:
    """Bool (N,): the contiguous run of measured lines through the centre line N // 2 (none if it is unmeasured)."""
    n = measured.numel()
    run = torch.zeros(n, dtype=torch.bool)
    for step in (1, -1):
        j = n // 2 if step == 1 else n // 2 - 1
        while 0 <= j < n and bool(measured[j]):
            run[j] = True
            j += step
    return run


def holdout_masks(op: MeasurementOperator, folds: int = 5, seed: int = 0) -> list[torch.Tensor] | None:
    """``folds`` keep-masks (each the shape of ``op.mask``), fold ``f`` holding out its share of the measured units
    (see the module docstring); None where the operator has no units to hold out (metal CT, per-slice masks that
    differ, fewer measured units than ``folds`` + 1). Deterministic for ``seed``."""
    if folds < 2:
        raise ScoreReconError(f"cross-validation needs at least 2 folds, got {folds}")
    mask = op.mask.detach().float().cpu()
    if op.task in ("sparse-ct", "limited-angle-ct") and mask.ndim == 4 and mask.shape[-1] == 1 \
            and mask.shape[0] == 1:
        views = torch.nonzero(mask.reshape(-1) > 0).reshape(-1)
        if views.numel() <= folds:
            return None
        out = []
        for held in _interleaved(views, folds):
            keep = mask.reshape(-1).clone()
            keep[held] = 0.0
            out.append(keep.reshape(mask.shape))
        return out
    if op.task != "mri":
        return None
    planes = mask.reshape(-1, *mask.shape[-2:])
    if planes.shape[0] > 1 and not bool((planes == planes[:1]).all()):
        return None
    plane = planes[0] > 0
    n = plane.shape[-1]
    from ..parameter_choice import operator_kind

    if operator_kind(op) == "mri-1d":
        along_rows = bool((plane == plane[:1, :]).all())  # constant down each column: the columns are the lines
        lines = plane[0, :] if along_rows else plane[:, 0]
        outer = torch.nonzero(lines & ~_centre_run(lines)).reshape(-1)
        groups = _mirror_pairs(outer, _mirror(outer, n))
        if len(groups) <= folds:
            return None
        out = []
        for held in _shuffled(groups, folds, seed):
            keep = plane.clone()
            if along_rows:
                keep[:, held] = False
            else:
                keep[held, :] = False
            out.append(keep.float().expand(mask.shape).clone())
        return out
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    radius = torch.maximum((yy - n // 2).abs(), (xx - n // 2).abs())
    outer = torch.nonzero((plane & (radius > max(1, round(n * CENTRE_FRACTION)))).reshape(-1)).reshape(-1)
    groups = _mirror_pairs(outer, _mirror(outer // n, n) * n + _mirror(outer % n, n))
    if len(groups) <= folds:
        return None
    out = []
    for held in _shuffled(groups, folds, seed):
        keep = plane.clone().reshape(-1)
        keep[held] = False
        out.append(keep.reshape(n, n).float().expand(mask.shape).clone())
    return out


__all__ = ["CENTRE_FRACTION", "HoldoutOperator", "holdout_masks"]
