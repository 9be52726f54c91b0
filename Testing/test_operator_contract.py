"""The operator contract, checked on every operator kind: adjoint, shapes, mask, A_dagger, norm, input checks.

Each operator maps real ``(B, 1, N, N)`` images to full-layout measurements ``Λ ⊙ T x``
(``operators/base.py``); these tests hold every kind to the same interface, at 32² pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch

from ScoreReconLib.coils import synthetic_maps
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.operators import build_operator, operator_from_spec
from ScoreReconLib.operators.base import MeasurementOperator
from ScoreReconLib.operators.ct import random_metal_mask
from ScoreReconLib.operators.multicoil import build_multicoil_operator

N = 32
BATCH = 2

FAN = {"geometry": "fan", "source_distance": 80.0, "detector_distance": 40.0}

#: operator kind → how to build it (tiny sizes, fixed seeds)
KINDS: dict[str, Callable[[], MeasurementOperator]] = {
    "sparse-ct": lambda: build_operator("sparse-ct", N, views=8),
    "sparse-ct-matrix-free": lambda: build_operator("sparse-ct", N, views=8, backend="matrix-free"),
    "metal-ct-symmetric": lambda: build_operator("metal-ct", N, metal_mask=random_metal_mask(N, 2, seed=1),
                                                 backend="joseph-symmetric"),
    "fan-beam-ct-symmetric": lambda: build_operator("sparse-ct", N, views=12, backend="joseph-symmetric", **FAN),
    "limited-angle-ct": lambda: build_operator("limited-angle-ct", N, arc=60.0),
    "metal-ct": lambda: build_operator("metal-ct", N, metal_mask=random_metal_mask(N, 2, seed=1)),
    "fan-beam-ct": lambda: build_operator("sparse-ct", N, views=12, **FAN),
    "mri-1d-mask": lambda: build_operator("mri", N, acceleration=4, center_fraction=0.08, mask="equispaced"),
    "mri-2d-mask": lambda: build_operator("mri", N, acceleration=4, mask="poisson", seed=1),
    "multicoil-mri": lambda: build_multicoil_operator(synthetic_maps(N, 4, seed=0), acceleration=4,
                                                      center_fraction=0.1),
}


@cache
def _operator(kind: str) -> MeasurementOperator:
    return KINDS[kind]()


@pytest.fixture(params=sorted(KINDS))
def op(request) -> MeasurementOperator:
    return _operator(request.param)


def _image(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 1, N, N, generator=torch.Generator().manual_seed(seed))


def _phantom() -> torch.Tensor:
    """(1, 1, N, N) smooth disc, zero near the border."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    return (1.0 - (xx**2 + yy**2) / 0.5).clamp_min(0.0)[None, None]


def _measurement(op: MeasurementOperator, seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    """A random full-layout measurement (complex where the operator's are)."""
    shape = op.measurement_shape(batch)
    g = torch.Generator().manual_seed(seed)
    if op.A(_image(batch=1)).is_complex():
        return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return torch.randn(shape, generator=g)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product ``Re Σ conj(a) b``."""
    return float((a.conj() * b).real.sum() if a.is_complex() else (a * b).sum())


def test_adjoint_identity(op):
    x, y = _image(), _measurement(op)
    ax, ahy = op.A(x), op.A_adjoint(y)
    assert ahy.shape == x.shape and not ahy.is_complex()
    scale = float(ax.abs().norm() * y.abs().norm())
    assert abs(_inner(ax, y) - _inner(x, ahy)) <= 1e-4 * scale


def test_measurement_shape(op):
    x = _image()
    assert tuple(op.A(x).shape) == op.measurement_shape(BATCH)
    assert op.measurement_shape(1)[0] == 1 and op.measurement_shape(5)[1:] == op.measurement_shape(1)[1:]
    assert torch.broadcast_shapes(op.mask.shape, op.measurement_shape(BATCH)) == op.measurement_shape(BATCH)


def test_mask_apply_is_an_idempotent_selection(op):
    mask = op.mask
    assert bool(((mask == 0) | (mask == 1)).all()) and float(mask.sum()) > 0
    y = _measurement(op)
    once = op.mask_apply(y)
    assert torch.equal(op.mask_apply(once), once)
    assert torch.equal(once, torch.where(torch.broadcast_to(mask > 0, y.shape), y, torch.zeros_like(y)))
    ax = op.A(_image())
    assert torch.equal(op.mask_apply(ax), ax)  # A already measures only where Λ = 1
    assert torch.equal(op.expand(op.compact(once)), once)


def test_a_dagger_is_a_linear_image_estimate(op):
    y1, y2 = _measurement(op, seed=1), _measurement(op, seed=2)
    d1, d2 = op.A_dagger(y1), op.A_dagger(y2)
    assert d1.shape == (BATCH, 1, N, N) and d1.dtype == torch.float32 and bool(torch.isfinite(d1).all())
    both = op.A_dagger(y1 + 2.0 * y2)
    torch.testing.assert_close(both, d1 + 2.0 * d2, rtol=1e-4, atol=1e-4 * float(both.abs().max()))
    x = _phantom()
    rec = op.A_dagger(op.A(x))
    assert float((rec - x).norm()) < float(x.norm())  # closer to the image than the zero image


def test_norm_bounds_the_operator(op):
    norm = op.norm()
    assert 0.0 < norm < float("inf") and op.norm() == norm  # cached per operator
    for seed in range(3):
        v = _image(seed, batch=1)
        assert float(op.A(v).abs().norm()) <= norm * float(v.norm())
    if op.task == "mri":  # Λ F S with orthonormal F and Σ|S|² = 1: ‖A‖ ≤ 1 (the estimate is 1 % above)
        assert norm <= 1.01 * (1.0 + 1e-5)


def test_wrong_shapes_are_refused(op):
    good = op.measurement_shape(1)
    for shape in (good[:-1] + (good[-1] + 1,), good[1:], (1, good[1] + 1) + good[2:]):
        bad = torch.zeros(shape, dtype=_measurement(op, batch=1).dtype)
        with pytest.raises(ScoreReconError, match="has shape"):
            op.check_measurement(bad)
        with pytest.raises(ScoreReconError, match="has shape"):
            op.A_dagger(bad)
    with pytest.raises(ScoreReconError):
        op.A(torch.zeros(1, 1, N, N + 2))
    with pytest.raises(ScoreReconError):
        op.A(torch.zeros(N, N))


def test_spec_round_trip_rebuilds_the_same_operator(op):
    again = operator_from_spec(op.spec(), op.arrays())
    x = _image()
    assert type(again) is type(op) and again.measurement_shape(BATCH) == op.measurement_shape(BATCH)
    torch.testing.assert_close(again.A(x), op.A(x))
