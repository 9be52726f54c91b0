"""The symmetric Joseph projector: the stored matrix of a few base views, the others by the square's symmetries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import shepp_logan

from ScoreReconLib.operators import ct
from ScoreReconLib.operators.symmetric import (
    SymmetricJosephProjector,
    pixel_permutation,
    symmetric_matrix_bytes,
    symmetry_plan,
)

GEOMETRIES = {
    "parallel-180": lambda: ct.ParallelBeamGeometry(32, 32),
    "parallel-odd-size": lambda: ct.ParallelBeamGeometry(31, 24),
    "parallel-not-divisible-by-4": lambda: ct.ParallelBeamGeometry(32, 30),
    "parallel-90-degree-arc": lambda: ct.ParallelBeamGeometry(32, 16, arc=math.pi / 2),
    "fan-curved-full-turn": lambda: ct.FanBeamGeometry(32, 60.0, 40.0, 32),
    "fan-flat-full-turn": lambda: ct.FanBeamGeometry(32, 60.0, 40.0, 32, detector="flat"),
    "view-subset": lambda: ct.ViewSubsetGeometry(ct.ParallelBeamGeometry(32, 32), np.arange(0, 32, 4)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_equals_the_full_stored_matrix_and_keeps_the_adjoint_identity(name):
    g = GEOMETRIES[name]()
    sym, full = SymmetricJosephProjector(g), ct.JosephProjector(g)
    x = torch.rand(3, 1, g.image_size, g.image_size, generator=torch.Generator().manual_seed(0))
    s = torch.rand(3, 1, g.n_angles, g.n_det, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sym.forward(x), full.forward(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sym.adjoint(s), full.adjoint(s), rtol=1e-5, atol=1e-5)
    lhs, rhs = float((sym.forward(x) * s).sum()), float((x * sym.adjoint(s)).sum())
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    torch.testing.assert_close(sym.forward(x[:1]), full.forward(x[:1]), rtol=1e-5, atol=1e-5)  # batch of one


def test_full_scans_store_a_quarter_or_an_eighth_of_the_views():
    assert len(symmetry_plan(ct.ParallelBeamGeometry(64, 64)).base) == 17  # 0° … 45°
    assert len(symmetry_plan(ct.FanBeamGeometry(64, 100.0, 80.0, 64)).base) == 9  # one eighth of the turn
    # no symmetry maps 0.7 rad-spaced views onto each other: every view is stored
    assert len(symmetry_plan(ct.ParallelBeamGeometry(32, 4, arc=2.8)).base) == 4
    g = ct.ParallelBeamGeometry(512, 512)
    assert symmetric_matrix_bytes(g) < ct.stored_matrix_bytes(g) / 3.9


def test_45_degree_views_are_not_mapped_by_an_axis_swap():
    """At exactly 45° Joseph steps over rows whatever the symmetry, so such a view is only ever the image of
    itself or of a view under a symmetry that keeps the axes; the result still equals the full matrix."""
    g = ct.ParallelBeamGeometry(32, 8)  # 0°, 22.5°, 45°, …, 135°
    plan = symmetry_plan(g)
    for k in (2, 6):  # 45° and 135°
        assert plan.transform[k] in (0, 2, 4, 5)  # identity, 180° turn, the two axis mirrors
    x = shepp_logan(32)
    torch.testing.assert_close(SymmetricJosephProjector(g).forward(x), ct.JosephProjector(g).forward(x),
                               rtol=1e-5, atol=1e-5)


def test_pixel_permutation_is_the_array_symmetry():
    img = np.arange(25).reshape(5, 5)
    mirror_x = pixel_permutation(5, np.array([[-1, 0], [0, 1]]))  # (f ∘ Q)(x, y) = f(−x, y): columns reversed
    np.testing.assert_array_equal(img.reshape(-1)[mirror_x].reshape(5, 5), img[:, ::-1])
    turn = pixel_permutation(5, np.array([[-1, 0], [0, -1]]))
    np.testing.assert_array_equal(img.reshape(-1)[turn].reshape(5, 5), img[::-1, ::-1])
    for q in ([[0, -1], [1, 0]], [[0, 1], [1, 0]]):
        assert sorted(pixel_permutation(6, np.array(q)).tolist()) == list(range(36))


def test_sparse_and_metal_operators_take_the_backend():
    op = ct.MetalTraceCT(32, ct.random_metal_mask(32, 2, seed=3), backend="joseph-symmetric")
    ref = ct.MetalTraceCT(32, ct.random_metal_mask(32, 2, seed=3), backend="joseph")
    assert op.projector.name == "joseph-symmetric" and op.spec()["backend"] == "joseph-symmetric"
    x = shepp_logan(32)
    torch.testing.assert_close(op.A(x), ref.A(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op.A_dagger(op.A(x)), ref.A_dagger(ref.A(x)), rtol=1e-4, atol=1e-4)


def test_sparse_mm_in_column_groups_equals_one_product(monkeypatch):
    from ScoreReconLib.operators import system_matrix

    a = ct.JosephProjector(ct.ParallelBeamGeometry(16, 8)).matrix
    cols = torch.rand(256, 7, generator=torch.Generator().manual_seed(0))
    whole = system_matrix.sparse_mm(a, cols)
    monkeypatch.setattr(system_matrix, "DENSE_BLOCK_BYTES", 256 * 4 * 3)  # groups of 3 columns
    torch.testing.assert_close(system_matrix.sparse_mm(a, cols), whole)
    torch.testing.assert_close(system_matrix.sparse_mm(a, cols[:, :1]), whole[:, :1])
