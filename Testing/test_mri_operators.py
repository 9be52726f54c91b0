"""MRI operator: centred FFT, sampling masks, adjoint, proximal step, serialisation, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_ellipses

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.operators import build_operator, operator_from_spec
from ScoreReconLib.operators.mri import (
    MASK_KINDS,
    UndersampledMRI,
    build_mri_operator,
    equispaced_mask,
    fft2c,
    ifft2c,
    make_mask,
    mri_operator_from_spec,
    poisson_disc_mask,
    random_mask,
    variable_density_mask,
)

N = 32


def test_fft2c_is_centred_orthonormal_and_inverted():
    x = torch.rand(2, 1, N, N)
    k = fft2c(x)
    assert k.dtype == torch.complex64
    assert torch.allclose(k.abs().pow(2).sum(), x.pow(2).sum(), rtol=1e-5)
    assert torch.allclose(ifft2c(k).real, x, atol=1e-6)
    ones = fft2c(torch.ones(1, 1, N, N))
    assert ones.abs().argmax().item() == (N // 2) * N + N // 2  # DC at the centre
    odd = torch.rand(1, 1, 15, 15)
    assert torch.allclose(ifft2c(fft2c(odd)).real, odd, atol=1e-6)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_adjoint_identity(kind):
    op = build_mri_operator(N, acceleration=4, center_fraction=0.08, mask=kind, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, N, N, generator=g)
    y = torch.complex(torch.randn(3, 1, N, N, generator=g), torch.randn(3, 1, N, N, generator=g))
    lhs = (op.A(x).conj() * y).real.sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert op.A_adjoint(y).dtype == torch.float32
    assert abs(float(lhs - rhs)) / abs(float(rhs)) < 1e-4


def test_full_mask_recovers_image_exactly():
    op = build_mri_operator(N, acceleration=1, center_fraction=0.0)
    assert op.mask.sum() == N * N
    x = random_ellipses(batch=2)
    assert torch.allclose(op.A_dagger(op.A(x)), x, atol=1e-5)
    assert torch.allclose(op.T_inv(op.T(x)), x, atol=1e-5)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_proximal_lambda_one_puts_measurements_exactly(kind):
    op = build_mri_operator(N, acceleration=4, mask=kind, seed=2)
    x_true = random_ellipses(batch=2)
    y = op.A(x_true)
    x = torch.rand(2, 1, N, N)
    out = op.proximal(x, y, 1.0)
    assert out.dtype == torch.float32
    measured = op.mask.bool().expand_as(y)
    assert torch.allclose(op.T(out)[measured], y[measured], atol=1e-5)
    # unmeasured points keep x's k-space unless their conjugate mirror was measured
    free = ~(op.mask.bool() | op._mirror.bool()).expand_as(y)
    assert torch.allclose(op.T(out)[free], op.T(x)[free], atol=1e-5)
    assert op.proximal(x, y, 0.0) is x


def test_proximal_interpolates_between_lambda_zero_and_one():
    op = build_mri_operator(N, acceleration=4, mask="random", seed=0)
    y = op.A(random_ellipses())
    x = torch.rand(1, 1, N, N)
    errors = [float((op.A(op.proximal(x, y, lam)) - y).abs().norm()) for lam in (0.0, 0.3, 0.7, 1.0)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-4 * errors[0]


def test_zero_filled_uses_conjugate_symmetry():
    """A_dagger is the minimum-norm real solution: it beats the plain real part of the IFFT."""
    op = build_mri_operator(N, acceleration=4, mask="random", seed=4)
    x = random_ellipses()
    y = op.A(x)
    err_dagger = float((op.A_dagger(y) - x).norm())
    err_plain = float((ifft2c(y).real - x).norm())
    assert err_dagger < err_plain
    assert torch.allclose(op.A(op.A_dagger(y)), y, atol=1e-5)


SIZES = (64, 96, 128, 256)
ACCELERATIONS = (2, 3, 4, 6, 8, 12, 16, 24)


@pytest.mark.parametrize("kind", ["equispaced", "random"])
def test_line_masks_hit_requested_acceleration(kind):
    for n in SIZES:
        for acc in ACCELERATIONS:
            cf = min(0.08, 0.5 / acc)
            mask = make_mask(kind, n, acc, cf, seed=0)
            lines = int(mask[0].sum())
            assert torch.equal(mask, mask[:1].expand(n, n))  # whole columns
            assert lines == round(n / acc)
            if abs(n / round(n / acc) - acc) <= 0.05 * acc:  # feasible with whole lines
                assert abs(n / lines - acc) <= 0.05 * acc
            centre = round(n * cf)
            start = (n - centre + 1) // 2
            assert mask[0, start:start + centre].all()


@pytest.mark.parametrize("kind", ["variable-density", "poisson"])
def test_2d_masks_hit_requested_acceleration(kind):
    grid = [(n, a) for n in (64, 96) for a in ACCELERATIONS] + [(128, 3), (128, 8), (128, 24)]
    for n, acc in grid:
        mask = make_mask(kind, n, acc, 0.04, seed=0)
        assert mask.dtype == torch.float32 and mask.shape == (n, n)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert abs(n * n / float(mask.sum()) - acc) <= 0.05 * acc
        assert mask[n // 2, n // 2] == 1  # DC always sampled


def test_poisson_disc_is_more_regular_than_random():
    """Poisson-disc points keep their distance: far fewer 4-neighbour pairs than an i.i.d. mask."""
    n, acc = 64, 6
    pd = poisson_disc_mask(n, acc, seed=0)
    rnd = variable_density_mask(n, acc, seed=0)
    outer = torch.from_numpy(np.hypot(*np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2)) > n / 4)

    def pairs(m):
        m = m * outer
        return float((m[1:, :] * m[:-1, :]).sum() + (m[:, 1:] * m[:, :-1]).sum())

    assert pairs(pd) < 0.5 * pairs(rnd)


def test_masks_are_deterministic_by_seed():
    assert torch.equal(equispaced_mask(64, 4, 0.08), equispaced_mask(64, 4, 0.08))
    for fn in (lambda s: random_mask(64, 4, 0.08, seed=s), lambda s: variable_density_mask(64, 4, seed=s),
               lambda s: poisson_disc_mask(64, 4, seed=s)):
        assert torch.equal(fn(5), fn(5))
        assert not torch.equal(fn(5), fn(6))


def test_spec_round_trip_and_registry():
    op = build_operator("mri", N, acceleration=4, mask="poisson", seed=3)
    assert isinstance(op, UndersampledMRI)
    spec, arrays = op.spec(), op.arrays()
    assert spec["task"] == "mri" and spec["image_size"] == N and spec["mask"] == "poisson"
    assert arrays["mask"].shape == (N, N) and arrays["mask"].dtype == np.float32
    again = operator_from_spec(spec, arrays)
    assert torch.equal(again.mask, op.mask)
    x = random_ellipses()
    assert torch.allclose(again.A(x), op.A(x))
    rebuilt = mri_operator_from_spec(spec, {})  # no array stored: rebuilt from kind + seed
    assert torch.equal(rebuilt.mask, op.mask)
    custom = build_mri_operator(N, mask=op.mask[0, 0].numpy())
    assert custom.spec()["mask"] == "custom" and torch.equal(custom.mask, op.mask)
    assert abs(op.acceleration - 4) <= 0.2


@pytest.mark.parametrize("call", [
    lambda: make_mask("equispaced", 64, 0.5, 0.08),
    lambda: make_mask("random", 64, 4, 1.0),
    lambda: make_mask("random", 64, 4, -0.1),
    lambda: make_mask("poisson", 4, 2, 0.0),
    lambda: make_mask("spiral", 64, 4, 0.08),
    lambda: make_mask("equispaced", 256, 24, 0.08),  # centre alone exceeds the budget
    lambda: build_mri_operator(64, views=23),
    lambda: build_mri_operator(64, mask=np.ones((32, 32))),
    lambda: UndersampledMRI(np.full((16, 16), 0.5)),
    lambda: UndersampledMRI(np.zeros((16, 16))),
    lambda: UndersampledMRI(np.ones((16, 8))),
])
def test_bad_input_raises(call):
    with pytest.raises(ScoreReconError):
        call()


def test_bad_operator_input_raises():
    op = build_mri_operator(N)
    x = torch.rand(1, 1, N, N)
    with pytest.raises(ScoreReconError):
        op.A(torch.rand(1, 1, N + 1, N + 1))
    with pytest.raises(ScoreReconError):
        op.proximal(x, op.A(x), 1.5)
    with pytest.raises(ScoreReconError):
        op.proximal(x, torch.zeros(1, 1, N, N - 1, dtype=torch.complex64), 1.0)
    with pytest.raises(ScoreReconError, match="center_fraction"):
        make_mask("equispaced", 256, 24, 0.08)
