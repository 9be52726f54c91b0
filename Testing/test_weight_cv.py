"""Cross-validated weights: the hold-out operator (ScoreReconLib.operators.holdout) and the rule that uses it
(ScoreReconLib.parameter_choice.cross_validated_weight)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SHEPP_LIKE_ELLIPSES, blurred_ellipses

from ScoreReconLib import parameter_choice as PC
from ScoreReconLib.baselines import _TV, classical_reconstruct
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.metrics import psnr
from ScoreReconLib.operators import build_operator
from ScoreReconLib.operators.holdout import HoldoutOperator, _centre_run, holdout_masks


def _inner(a, b):
    return float((a.conj() * b).real.sum()) if a.is_complex() else float((a * b).sum())


def _ops():
    metal = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    metal[0, 0, 14:17, 10:13] = True
    return {
        "sparse": build_operator("sparse-ct", 32, views=12),
        "limited": build_operator("limited-angle-ct", 32, arc=90.0),
        "mri-1d": build_operator("mri", 64, acceleration=4, mask="equispaced", center_fraction=0.125),
        "mri-2d": build_operator("mri", 32, acceleration=4, mask="poisson"),
        "metal": build_operator("metal-ct", 32, metal_mask=metal),
    }


@pytest.mark.parametrize("name", ["sparse", "limited", "mri-1d", "mri-2d"])
def test_folds_partition_the_outer_units_and_keep_a_subset(name):
    op = _ops()[name]
    masks = holdout_masks(op, folds=4, seed=3)
    assert masks is not None and len(masks) == 4
    measured = (op.mask > 0).float()
    held = [measured - k for k in masks]
    for k, h in zip(masks, held, strict=True):
        assert k.shape == op.mask.shape
        assert bool(((k > 0) <= (measured > 0)).all())  # a subset of the measured entries
        assert float(h.sum()) > 0 and float(k.sum()) > 0
    total = sum(held)
    assert float(total.max()) == 1.0  # every entry is held out at most once
    # the same seed gives the same folds; another seed other folds (random order for MRI)
    again = holdout_masks(op, folds=4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(masks, again, strict=True))
    if name.startswith("mri"):
        other = holdout_masks(op, folds=4, seed=4)
        assert not all(torch.equal(a, b) for a, b in zip(masks, other, strict=True))


def test_ct_folds_hold_out_whole_views_interleaved():
    op = _ops()["sparse"]
    masks = holdout_masks(op, folds=3)
    views = torch.nonzero(op.mask.reshape(-1) > 0).reshape(-1)
    held = torch.nonzero((op.mask - masks[1]).reshape(-1) > 0).reshape(-1)
    assert torch.equal(held, views[1::3])
    assert float(sum(op.mask - m for m in masks).sum()) == len(views)  # every view once


def test_mri_line_folds_never_hold_out_the_centre():
    op = _ops()["mri-1d"]
    plane = op.mask.reshape(-1, 64, 64)[0] > 0
    lines = plane[0, :]
    centre = _centre_run(lines)
    assert int(centre.sum()) >= 4
    for keep in holdout_masks(op, folds=5):
        k = keep.reshape(-1, 64, 64)[0] > 0
        assert bool(k[:, centre].all())  # the calibration lines stay
        held = plane & ~k
        assert bool((held == held[:1, :]).all())  # whole lines


def test_operators_without_units_give_none():
    assert holdout_masks(_ops()["metal"]) is None
    op = build_operator("sparse-ct", 32, views=3)
    assert holdout_masks(op, folds=5) is None  # fewer views than folds + 1
    with pytest.raises(ScoreReconError, match="at least 2 folds"):
        holdout_masks(op, folds=1)


@pytest.mark.parametrize("name", ["sparse", "mri-2d"])
def test_holdout_operator_is_adjoint_and_zero_on_held_entries(name):
    op = _ops()[name]
    keep = holdout_masks(op, folds=4)[0]
    h = HoldoutOperator(op, keep)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=g)
    ax = h.A(x)
    y = op.A(torch.rand(1, 1, 32, 32, generator=g))
    assert math.isclose(_inner(ax, y), _inner(x, h.A_adjoint(y).float()), rel_tol=1e-4)
    held = ((op.mask > 0).float() - keep) > 0
    assert float(torch.broadcast_to(held, ax.shape).float().mul(ax.abs()).sum()) == 0.0
    assert torch.allclose(ax, op.A(x) * keep.to(ax.real.dtype))
    assert h.task == op.task and h.image_size == op.image_size and h.measurement_shape(2) == op.measurement_shape(2)
    assert h.norm() >= float(torch.linalg.vector_norm(ax) / torch.linalg.vector_norm(x)) * 0.999


def test_holdout_operator_rejects_bad_masks():
    op = _ops()["sparse"]
    with pytest.raises(ScoreReconError, match="shape"):
        HoldoutOperator(op, torch.ones(3, 3))
    outside = torch.ones_like(op.mask)
    with pytest.raises(ScoreReconError, match="subset"):
        HoldoutOperator(op, outside)
    with pytest.raises(ScoreReconError, match="keeps no"):
        HoldoutOperator(op, torch.zeros_like(op.mask))
    with pytest.raises(ScoreReconError, match="no file form"):
        HoldoutOperator(op, holdout_masks(op, folds=3)[0]).spec()


def _psnr(a, b):
    return float(psnr(a.clamp(0, 1), b.clamp(0, 1), data_range=1.0)[0])


def test_cross_validation_finds_a_weight_near_the_best_for_noisy_ct():
    """Noisy sparse-view CT: the cross-validated weight, which sees no noise level, lands within 0.5 dB of the best
    weight of a grid (the curve it follows is recorded, falling then rising)."""
    x = blurred_ellipses(48, SHEPP_LIKE_ELLIPSES)
    op = build_operator("sparse-ct", 48, views=23)
    y = op.A(x)
    y = y + 0.03 * float(y.abs().max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) * op.mask
    grid = [10 ** (e / 2) for e in range(-9, -1)]
    scores = {w: _psnr(classical_reconstruct("tv", y, op, weight=w), x) for w in grid}
    weight, curve, probes, held_out = PC.cross_validated_weight(y, op, _TV())
    assert "views held out" in held_out and probes == 2 * len(curve)
    errors = [e for _, e in curve]
    assert errors.index(min(errors)) not in (0,)  # the largest weight predicts worst
    got = _psnr(classical_reconstruct("tv", y, op, weight=weight), x)
    assert got >= max(scores.values()) - 0.5, (weight, got, scores)


def test_choose_weight_records_the_cross_validation(monkeypatch):
    x = blurred_ellipses(48, SHEPP_LIKE_ELLIPSES)
    op = build_operator("mri", 48, acceleration=4, mask="poisson")
    y = op.A(x)
    monkeypatch.setitem(PC.WEIGHT_RULES, "MR", {"noisy": "cross-validation", "noise-free": "cross-validation",
                                                "unknown": "cross-validation"})
    choice = PC.choose_weight(y, op, "cs")
    assert choice.rule == "cross-validation" and choice.image is not None
    assert PC.CV_BOTTOM <= choice.weight <= PC.CV_TOP
    assert "cross-validation" in choice.line() and "outer points" in choice.line()
    record = choice.to_dict()
    assert record["curve"] and all(len(p) == 2 for p in record["curve"])
    # passing the weight back reproduces the image
    assert torch.equal(classical_reconstruct("cs", y, op, weight=choice.weight), choice.image)
    # metal CT has nothing to hold out: the discrepancy path with its noise-free floor
    metal = _ops()["metal"]
    phantom = blurred_ellipses(32, SHEPP_LIKE_ELLIPSES)
    monkeypatch.setitem(PC.WEIGHT_RULES, "CT", {"noisy": "cross-validation", "noise-free": "cross-validation",
                                                "unknown": "cross-validation"})
    assert PC.choose_weight(metal.A(phantom), metal, "tv").rule == "noise-free"


def test_few_units_per_fold_can_score_more_folds(monkeypatch):
    """With CV_MIN_HELD set (off by default), 8× 1-D MRI at 128² (eleven outer lines, two or three per fold) scores
    enough folds to hold out that many lines in all."""
    x = blurred_ellipses(128, SHEPP_LIKE_ELLIPSES)
    op = build_operator("mri", 128, acceleration=8, mask="equispaced", center_fraction=0.04)
    y = op.A(x)
    _, curve, probes, _ = PC.cross_validated_weight(y, op, _TV())
    assert probes == PC.CV_SCORED * len(curve)
    monkeypatch.setattr(PC, "CV_MIN_HELD", 8)
    _, curve, probes, held_out = PC.cross_validated_weight(y, op, _TV())
    chains = probes // len(curve)
    assert probes == chains * len(curve) and chains > PC.CV_SCORED
    assert held_out.startswith(f"{chains} × 20 %") and "outer lines" in held_out
    masks = holdout_masks(op, PC.CV_FOLDS)
    assert sum(PC._held_units((op.mask > 0).float() - m) for m in masks[:chains]) >= 8
    assert sum(PC._held_units((op.mask > 0).float() - m) for m in masks[:chains - 1]) < 8


def test_noise_class_reads_the_data():
    x = blurred_ellipses(48, SHEPP_LIKE_ELLIPSES)
    op = build_operator("sparse-ct", 48, views=23)
    clean = op.A(x)
    noisy = clean + 0.02 * float(clean.abs().max()) * torch.randn(clean.shape,
                                                                   generator=torch.Generator().manual_seed(0)) * op.mask
    assert PC.noise_class(clean, op) == "noise-free"
    assert PC.noise_class(noisy, op) == "noisy"
    assert PC.noise_class(noisy, op, noise_std=0.0) == "noise-free"


def test_mri_noise_not_estimable_still_cross_validates():
    """Too few outer k-space points for a noise estimate (16², Poisson 4×): MRI needs none; the line says so and no
    warning is raised, where the discrepancy rule would warn and fall back."""
    from ScoreReconLib.noise import noise_estimable

    op = build_operator("mri", 16, acceleration=4, mask="poisson")
    y = op.A(blurred_ellipses(16, SHEPP_LIKE_ELLIPSES))
    assert not noise_estimable(op, y)
    choice = PC.choose_weight(y, op, "cs")
    assert choice.rule == "cross-validation" and choice.warning is None
    assert choice.noise_source == "not estimable" and "σ_y not estimable" in choice.line()
    assert math.isnan(choice.residual) and choice.to_dict()["residual"] is None


@pytest.mark.parametrize("mask", ["poisson", "random"])
def test_mri_units_go_with_their_kspace_mirror(mask):
    """A real image's k-space is Hermitian: no held-out outer entry may keep its mirror (−k) in the kept set, or it
    would be fitted, not predicted."""
    from ScoreReconLib.operators.holdout import _mirror

    op = build_operator("mri", 64, acceleration=4, mask=mask, center_fraction=0.08)
    n = 64
    measured = op.mask.reshape(n, n) > 0
    for keep in holdout_masks(op, folds=5):
        k = keep.reshape(n, n) > 0
        held = torch.nonzero(measured & ~k)
        mirror_r, mirror_c = _mirror(held[:, 0], n), _mirror(held[:, 1], n)
        assert not bool(k[mirror_r, mirror_c].any())


def test_the_search_reaches_its_bottom_weight():
    """Noise-free data, whose held-out error keeps falling with the weight: the last weight probed is CV_BOTTOM
    itself (whole half-decades, no floating-point drift past it)."""
    op = build_operator("mri", 64, acceleration=4, mask="poisson")
    _, curve, _, _ = PC.cross_validated_weight(op.A(blurred_ellipses(64, SHEPP_LIKE_ELLIPSES)), op, _TV())
    weights = [w for w, _ in curve]
    assert weights[0] == PC.CV_TOP
    assert all(math.isclose(a / b, math.sqrt(10.0)) for a, b in zip(weights, weights[1:], strict=False))
    assert len(weights) == 7 and math.isclose(weights[-1], PC.CV_BOTTOM)


def test_volume_start_choice_reports_the_estimated_noise_as_estimated():
    """The score method fixes σ_y once per volume and hands it (0 for noise-free data) to the weight choice; the
    record says it was estimated, not given by the user."""
    from ScoreReconLib.reconstruction import fix_volume_settings
    from ScoreReconLib.settings import SamplerSettings

    op = build_operator("mri", 64, acceleration=4, mask="poisson")
    y = op.A(blurred_ellipses(64, SHEPP_LIKE_ELLIPSES))
    settings, choice = fix_volume_settings(y, op, SamplerSettings(steps=5, lam=1.0, init="classical"))
    assert choice is not None and choice["noise_source"] == "estimated"
    assert choice["noise_std"] == settings.noise_std and "given" not in PC.describe_choice(choice)


def test_a_rule_can_be_asked_for_whatever_the_table_says(monkeypatch):
    """``rule=`` overrides WEIGHT_RULES for one call (the benchmarks compare rules this way) and gives what setting
    the table would give; an unknown rule is refused."""
    op = build_operator("mri", 48, acceleration=4, mask="poisson")
    y = op.A(blurred_ellipses(48, SHEPP_LIKE_ELLIPSES))
    asked = PC.choose_weight(y, op, "cs", rule="discrepancy")
    monkeypatch.setitem(PC.WEIGHT_RULES, "MR", dict.fromkeys(("noisy", "noise-free", "unknown"), "discrepancy"))
    tabled = PC.choose_weight(y, op, "cs")
    assert asked.rule == tabled.rule in ("noise-free", "discrepancy") and asked.weight == tabled.weight
    assert PC.choose_weight(y, op, "cs", rule="cross-validation").rule == "cross-validation"
    with pytest.raises(ScoreReconError, match="unknown weight rule"):
        PC.choose_weight(y, op, "cs", rule="gcv")


def test_noisy_ct_images_from_the_large_size_up_choose_by_cross_validation(monkeypatch):
    """WEIGHT_RULES["CT-large"]: noisy CT of at least LARGE_IMAGE pixels a side and LARGE_IMAGE_MIN_VIEWS views is
    cross-validated; smaller noisy CT, fewer views and noise-free CT of any size keep the discrepancy path, and
    metal CT (nothing to hold out) falls back to it."""
    assert PC.LARGE_IMAGE == 256
    assert PC.weight_rule(build_operator("sparse-ct", 256, views=23), "noisy") == "cross-validation"
    assert PC.weight_rule(build_operator("sparse-ct", 128, views=23), "noisy") == "discrepancy"
    assert PC.weight_rule(build_operator("sparse-ct", 512, views=23), "noise-free") == "discrepancy"
    assert PC.weight_rule(build_operator("limited-angle-ct", 256, arc=90.0), "noisy") == "cross-validation"
    # too few views to hold out (8: one or two per fold) keep the discrepancy rule at any size
    assert PC.LARGE_IMAGE_MIN_VIEWS > 8
    assert PC.weight_rule(build_operator("sparse-ct", 512, views=8), "noisy") == "discrepancy"
    assert PC.weight_rule(build_operator("mri", 64, acceleration=4), "noisy") == "cross-validation"
    # the same path at a size a test can afford: the thresholds lowered to 32² and the 12 views of _ops()
    monkeypatch.setattr(PC, "LARGE_IMAGE", 32)
    monkeypatch.setattr(PC, "LARGE_IMAGE_MIN_VIEWS", 12)
    x = blurred_ellipses(32, SHEPP_LIKE_ELLIPSES)
    g = torch.Generator().manual_seed(0)
    noisy = {}
    for name in ("sparse", "metal"):
        op = _ops()[name]
        y = op.A(x)
        noisy[name] = (y + 0.01 * float(y.abs().max()) * torch.randn(y.shape, generator=g) * op.mask, op)
        choice = PC.choose_weight(*noisy[name], "tv")
        assert choice.rule == ("cross-validation" if name == "sparse" else "discrepancy"), (name, choice.rule)
    monkeypatch.setattr(PC, "LARGE_IMAGE", 64)
    assert PC.choose_weight(*noisy["sparse"], "tv").rule == "discrepancy"
