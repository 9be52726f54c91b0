"""PDHG in the ramp-filter metric (ScoreReconLib.operators.preconditioning): same TV solution, fewer iterations."""

from __future__ import annotations

import pytest
import torch
from helpers import SHEPP_LIKE_ELLIPSES, blurred_ellipses

from ScoreReconLib.baselines import PRECONDITIONED_ITERS, _pdhg, make_regularizer, tv_reconstruct
from ScoreReconLib.commands.outputs import choice_line
from ScoreReconLib.operators import build_operator, ct, preconditioning
from ScoreReconLib.operators.base import operator_norm
from ScoreReconLib.parameter_choice import START_RULES, WeightChoice, choose_weight, start_weight
from ScoreReconLib.sampling import classical_init


def _metal(n=48, noise=0.01, seed=0):
    x = blurred_ellipses(n, SHEPP_LIKE_ELLIPSES)
    op = build_operator("metal-ct", n, metal_mask=ct.random_metal_mask(n, 2, seed=2, inside=x[0, 0] > 0.05))
    y = op.A(x)
    g = torch.Generator().manual_seed(seed)
    y = y + noise * float(y.abs().max()) * torch.randn(y.shape, generator=g) * op.mask
    return x, op, y


def test_metric_is_symmetric_positive_definite_and_its_dual_step_matches_the_formula():
    metric = preconditioning.RampMetric(37, 2.5)
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(3, 1, 5, 37, generator=g), torch.randn(3, 1, 5, 37, generator=g)
    assert torch.allclose((metric.apply(u) * v).sum(), (u * metric.apply(v)).sum(), rtol=1e-5)
    assert float((metric.apply(u) * u).sum()) > 0
    # (I + σP) p_new = p + σ P r
    p, r, sigma = u, v, 0.7
    new = metric.dual_step(p, r, sigma)
    assert torch.allclose(new + sigma * metric.apply(new), p + sigma * metric.apply(r), atol=1e-5)


def test_metric_is_scaled_so_the_preconditioned_operator_has_norm_one():
    _, op, _ = _metal(32)
    metric = preconditioning.ramp_metric(op)
    s = operator_norm(op)
    v = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    lam = 0.0
    for _ in range(40):
        w = op.A_adjoint(metric.apply(op.A(v))) / s**2
        lam = float(w.norm())
        v = w / lam
    assert 0.9 < lam <= 1.0


def test_metric_is_used_where_every_view_is_measured_only():
    _, metal, _ = _metal(32)
    assert preconditioning.fits(metal)
    assert not preconditioning.fits(build_operator("sparse-ct", 32, views=8))
    assert not preconditioning.fits(build_operator("limited-angle-ct", 32, arc=90))
    assert not preconditioning.fits(build_operator("mri", 32, acceleration=4))
    assert preconditioning.fits(build_operator("sparse-ct", 32, views=48, n_angles=48))  # every view measured
    preconditioning.ENABLED = False
    try:
        assert not preconditioning.fits(metal)
    finally:
        preconditioning.ENABLED = True


def test_same_solution_as_plain_pdhg_in_fewer_iterations():
    _, op, y = _metal(40)
    reg = make_regularizer(op, "tv")
    w = 3e-4
    reference = _pdhg(y, op, reg, w, 2500, True, None, None, None, "tv", precondition=False).x
    fast = _pdhg(y, op, reg, w, 1200, True, None, None, None, "tv").x
    assert float((fast - reference).norm() / reference.norm()) < 1e-3  # the same fixed point
    plain = _pdhg(y, op, reg, w, 60, True, None, None, None, "tv", precondition=False).x
    early = _pdhg(y, op, reg, w, 60, True, None, None, None, "tv").x
    assert (early - reference).norm() < 0.6 * (plain - reference).norm()  # closer after the same iterations


def test_metal_tv_runs_the_preconditioned_iteration_count_by_default():
    _, op, y = _metal(32)
    reg = make_regularizer(op, "tv")
    default = tv_reconstruct(y, op, weight=1e-3)
    explicit = _pdhg(y, op, reg, 1e-3, PRECONDITIONED_ITERS, True, None, None, None, "tv").x
    assert torch.equal(default, explicit)
    sparse = build_operator("sparse-ct", 32, views=8)
    assert tv_reconstruct(sparse.A(torch.zeros(1, 1, 32, 32)), sparse, weight=1e-3, iters=3).shape == (1, 1, 32, 32)


def _choice(rule, weight):
    return WeightChoice(weight=weight, rule=rule, noise_std=0.1, noise_source="estimated", residual=0.95, target=0.95,
                        measured=10, solves=3, seconds=0.1)


def test_score_start_weight_follows_the_metal_start_rule_only():
    _, metal, _ = _metal(32)
    sparse = build_operator("sparse-ct", 32, views=8)
    rule = START_RULES["metal-ct"]
    assert start_weight(_choice("discrepancy", 4.6e-4), metal) == pytest.approx(4.6e-4 * rule["factor"])
    assert start_weight(_choice("noise-free", 1e-5), metal) == rule["noise_free"]
    assert start_weight(_choice("noise unknown", 1e-5), metal) == 1e-5
    assert start_weight(_choice("discrepancy", 4.6e-4), sparse) == 4.6e-4
    text = choice_line({**_choice("discrepancy", 4.6e-4).to_dict(), "start_weight": 2.3e-4})
    assert "starts from weight 0.00023" in text
    assert "starts from" not in choice_line(_choice("discrepancy", 4.6e-4).to_dict())


def test_classical_start_on_metal_is_tv_at_the_start_weight():
    _, op, y = _metal(32)
    start = classical_init(op, y)
    weight = start_weight(choose_weight(y, op, "tv"), op)
    assert torch.equal(start, tv_reconstruct(y, op, weight=weight))


@pytest.mark.parametrize("task, kw", [("sparse-ct", {"views": 12}), ("mri", {"acceleration": 4})])
def test_small_weights_converge_because_the_primal_step_keeps_growing_as_one_over_root_weight(task, kw, monkeypatch):
    """At w = 1e-6 a 200-iteration cold solve lies closer to the converged TV solution with ρ = 1/√w (1000)
    than with the step capped at 100, the cap that left the validation subjects' noise-free solves unconverged."""
    from ScoreReconLib import baselines

    n, w = 24, 1e-6
    x = blurred_ellipses(n, SHEPP_LIKE_ELLIPSES)
    op = build_operator(task, n, **kw)
    y = op.A(x.to(torch.complex64) if task == "mri" else x)
    reg = make_regularizer(op, "tv")
    reference = _pdhg(y, op, reg, w, 1500, True, None, None, None, "tv").x

    def gap(cap: float) -> float:
        monkeypatch.setattr(baselines, "RHO_CAP", cap)
        return float((_pdhg(y, op, reg, w, 200, True, None, None, None, "tv").x - reference).norm() / reference.norm())

    shipped = baselines.RHO_CAP
    assert shipped >= 1.0 / w**0.5
    capped, uncapped = gap(100.0), gap(shipped)
    assert uncapped < 0.8 * capped, (uncapped, capped)
