"""CT operators: Joseph projector, FBP, sparse / limited / metal operators, cache, specs, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import shepp_logan

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.operators import build_operator, ct, operator_from_spec
from ScoreReconLib.operators import torch_radon_backend as trb


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((x - ref) ** 2).mean()))


def _rel_adjoint_error(forward, adjoint, x: torch.Tensor, y: torch.Tensor) -> float:
    lhs = (forward(x).double() * y.double()).sum()
    rhs = (x.double() * adjoint(y).double()).sum()
    return float((lhs - rhs).abs() / lhs.abs())


# ----------------------------------------------------------------------------------- geometry
def test_geometry_defaults_and_key():
    g = ct.ParallelBeamGeometry(64)
    assert g.n_angles == 64 and g.n_det % 2 == 1 and g.n_det >= math.ceil(math.sqrt(2) * 64)
    assert g.n_det == 91
    np.testing.assert_allclose(g.angles, np.pi * np.arange(64) / 64)
    assert g.key() == ct.ParallelBeamGeometry(64).key()
    assert g.key() != ct.ParallelBeamGeometry(64, 65).key()
    assert ct.ParallelBeamGeometry(256).n_det == 363


def test_point_lands_where_the_geometry_says():
    """A single pixel's detector centre of mass follows t = x cos θ + y sin θ (x right, y up)."""
    n = 32
    g = ct.ParallelBeamGeometry(n, 24)
    r, c = 7, 21
    img = torch.zeros(1, 1, n, n)
    img[0, 0, r, c] = 1.0
    sino = ct.JosephProjector(g).forward(img)[0, 0].double().numpy()
    x, y = c - (n - 1) / 2, (n - 1) / 2 - r
    expected = x * np.cos(g.angles) + y * np.sin(g.angles) + (g.n_det - 1) / 2
    seen = (sino * np.arange(g.n_det)).sum(1) / sino.sum(1)
    np.testing.assert_allclose(seen, expected, atol=0.3)  # sampling a narrow tent shifts it < 1/3 bin
    # line integrals in pixel units: every view of a smooth blob carries the blob's mass
    yy, xx = np.mgrid[0:n, 0:n]
    blob = torch.from_numpy(np.exp(-((yy - 14.3) ** 2 + (xx - 17.6) ** 2) / 18.0).astype(np.float32))
    views = ct.JosephProjector(g).forward(blob[None, None])[0, 0].double().sum(1).numpy()
    np.testing.assert_allclose(views, float(blob.double().sum()), rtol=5e-3)


def test_projection_is_line_integral_in_pixels():
    n = 32
    g = ct.ParallelBeamGeometry(n, 4)
    sino = ct.JosephProjector(g).forward(torch.ones(1, 1, n, n))[0, 0]
    # a central ray at θ = 0 crosses n pixels of value 1; at 45° it crosses the diagonal (√2·n)
    centre = (g.n_det - 1) // 2
    assert abs(float(sino[0, centre]) - n) < 1e-4
    assert abs(float(sino[1, centre]) - math.sqrt(2) * n) < 0.05 * n


# ----------------------------------------------------------------------------------- adjoints
def test_adjoint_identity_bare_projector_and_batch():
    g = ct.ParallelBeamGeometry(48, 30)
    p = ct.JosephProjector(g)
    x = torch.rand(3, 1, 48, 48)
    y = torch.rand(3, 1, 30, g.n_det)
    assert _rel_adjoint_error(p.forward, p.adjoint, x, y) < 1e-4
    batched = p.forward(x)
    single = torch.cat([p.forward(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task", ["sparse-ct", "limited-angle-ct", "metal-ct"])
def test_adjoint_identity_operators(task):
    n = 32
    if task == "metal-ct":
        masks = torch.cat([ct.random_metal_mask(n, 2, seed=s) for s in (1, 2)])
        op = ct.MetalTraceCT(n, masks)
    elif task == "sparse-ct":
        op = ct.SparseViewCT(n, 8)
    else:
        op = ct.LimitedAngleCT(n, 60.0)
    x = torch.rand(2, 1, n, n)
    y = torch.rand(op.measurement_shape(2))
    assert _rel_adjoint_error(op.A, op.A_adjoint, x, y) < 1e-4
    assert _rel_adjoint_error(op.T, op.T_adjoint, x, y) < 1e-4


def test_masks_shapes_and_views():
    n = 64
    sp = ct.SparseViewCT(n, 23)
    assert tuple(sp.mask.shape) == (1, 1, n, 1) and int(sp.mask.sum()) == 23
    np.testing.assert_array_equal(sp.views, np.round(np.linspace(0, n - 1, 23)).astype(int))
    la = ct.LimitedAngleCT(n, 90.0)
    assert tuple(la.mask.shape) == (1, 1, n, 1)
    assert int(la.mask.sum()) == 32 and np.all(la.geometry.angles[la.views] < np.pi / 2)
    mt = ct.MetalTraceCT(n, ct.random_metal_mask(n, 2, seed=0))
    assert tuple(mt.mask.shape) == (1, 1, n, mt.geometry.n_det)
    frac = float(1 - mt.mask.mean())
    assert 0.01 < frac < 0.4  # some bins lie in the trace, most do not
    # every view loses some bins: metal is seen from all angles
    assert bool(((1 - mt.mask[0, 0]).sum(1) > 0).all())


# ------------------------------------------------------------------------------------------ FBP
def test_fbp_full_view_shepp_logan_psnr():
    ref = shepp_logan(128)
    g = ct.ParallelBeamGeometry(128)
    sino = ct.JosephProjector(g).forward(ref)
    rec = ct.fbp(sino, g, "ram-lak")
    assert _psnr(rec, ref) >= 28.0
    assert abs(float(rec.mean() - ref.mean())) < 2e-3  # no DC bias
    for name in ("hann", "shepp-logan"):
        assert _psnr(ct.fbp(sino, g, name), ref) > 24.0
    sparse = ct.SparseViewCT(128, 23)
    rec23 = sparse.A_dagger(sparse.A(ref))
    assert _psnr(rec23, ref) < _psnr(rec, ref) - 6.0
    # without the N/n view weights the sparse FBP would be ~n/N too dark
    assert abs(float(rec23.mean() - ref.mean())) < 0.01


def test_limited_angle_dagger_is_plain_fbp_of_measured_views():
    n = 32
    op = ct.LimitedAngleCT(n, 90.0)
    x = shepp_logan(n)
    y = op.A(x)
    expected = ct.fbp(y * op.mask, op.geometry, "ram-lak")
    torch.testing.assert_close(op.A_dagger(y), expected)


def test_interpolate_trace_is_linear():
    y = torch.arange(10, dtype=torch.float32).reshape(1, 1, 1, 10) * 2.0 + 1.0
    measured = torch.ones_like(y, dtype=torch.bool)
    measured[..., 3:7] = False
    measured[..., 0] = False
    out = ct.interpolate_trace(y * measured, measured)
    expected = y.clone()
    expected[..., 0] = y[..., 1]  # before the first measured bin: its value
    torch.testing.assert_close(out, expected)


def test_metal_dagger_beats_zero_filled_trace():
    n = 64
    ref = shepp_logan(n)
    metal = ct.random_metal_mask(n, 2, seed=3, inside=ref[0, 0] > 0.05)
    op = ct.MetalTraceCT(n, metal)
    y = op.A(ref)
    outside = ~metal
    li = op.A_dagger(y)
    zero_filled = op.T_inv(y)
    assert _psnr(li[outside], ref[outside]) > _psnr(zero_filled[outside], ref[outside]) + 3.0


# -------------------------------------------------------------------------------------- proximal
@pytest.mark.parametrize("solver", ["fbp", "cg"])
def test_proximal_lam_zero_is_identity(solver):
    op = ct.SparseViewCT(32, 8)
    x = torch.rand(2, 1, 32, 32)
    y = op.A(torch.rand(2, 1, 32, 32))
    assert torch.equal(op.proximal(x, y, 0.0, solver=solver), x)


def test_proximal_cg_reproduces_measured_rows():
    assert ct.CTOperator.default_solver == "cg"
    n = 32
    torch.manual_seed(1)
    truth = shepp_logan(n)
    for op in (ct.SparseViewCT(n, 8), ct.MetalTraceCT(n, ct.random_metal_mask(n, 1, seed=0))):
        y = op.A(truth)
        x = torch.rand(1, 1, n, n)
        before = float((op.A(x) - y).norm() / y.norm())
        x1 = op.proximal(x, y, 1.0, solver="cg", iterations=200)
        after = float((op.A(x1) - y).norm() / y.norm())
        assert before > 0.5 and after < 1e-3, (op.task, before, after)
        # lam = 1/2 moves the measured rows half way (up to the same solver tolerance)
        xh = op.proximal(x, y, 0.5, solver="cg", iterations=200)
        half = op.A(x) + 0.5 * (y - op.A(x))
        assert float((op.A(xh) - half).norm() / y.norm()) < 1e-3
        # the fbp form is the paper's cheaper, inexact step: it moves toward y but not onto it
        xf = op.proximal(x, y, 1.0, solver="fbp")
        assert 1e-3 < float((op.A(xf) - y).norm() / y.norm()) < before


# ---------------------------------------------------------------------------------------- cache
def test_cache_second_build_loads_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORERECON_CACHE", str(tmp_path))
    g = ct.ParallelBeamGeometry(24, 10)
    ct.clear_memo()
    built, loaded = ct.STATS["built"], ct.STATS["loaded"]
    a1, _ = ct.joseph_matrices(g)
    assert ct.STATS["built"] == built + 1 and ct.cache_path(g).exists()
    assert ct.cache_path(g).parent == tmp_path / "projectors"
    assert [p.name for p in ct.cache_path(g).parent.iterdir()] == [ct.cache_path(g).name]  # no temp files
    assert ct.joseph_matrices(g)[0] is a1  # memo: no work at all
    ct.clear_memo()
    a2, at2 = ct.joseph_matrices(g)
    assert ct.STATS["built"] == built + 1 and ct.STATS["loaded"] == loaded + 1
    torch.testing.assert_close(a2.to_dense(), a1.to_dense())
    torch.testing.assert_close(at2.to_dense(), a1.to_dense().t())
    # a corrupt cache file is rebuilt, not trusted
    ct.cache_path(g).write_bytes(b"not a zip file")
    ct.clear_memo()
    a3, _ = ct.joseph_matrices(g)
    assert ct.STATS["built"] == built + 2
    torch.testing.assert_close(a3.to_dense(), a1.to_dense())
    ct.clear_memo()


@pytest.mark.parametrize("tamper", ["index-out-of-range", "negative-index", "unsorted-indptr", "nan-weight"])
def test_tampered_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, tamper):
    """A cached matrix that would corrupt memory in torch's unchecked CSR kernels is refused and rebuilt."""
    monkeypatch.setenv("SCORERECON_CACHE", str(tmp_path))
    g = ct.ParallelBeamGeometry(16, 6)
    ct.clear_memo()
    a1, _ = ct.joseph_matrices(g)
    path = ct.cache_path(g)
    with np.load(path) as z:
        fields = {k: z[k].copy() for k in z.files}
    if tamper == "index-out-of-range":
        fields["indices"][3] = 10**6
    elif tamper == "negative-index":
        fields["indices"][0] = -5
    elif tamper == "unsorted-indptr":
        fields["indptr"][5], fields["indptr"][6] = fields["indptr"][6] + 3, fields["indptr"][5]
    else:
        fields["data"][1] = np.nan
    with open(path, "wb") as fh:
        np.savez(fh, **fields)
    ct.clear_memo()
    built = ct.STATS["built"]
    with pytest.warns(UserWarning, match="invalid"):
        a2, _ = ct.joseph_matrices(g)
    assert ct.STATS["built"] == built + 1
    torch.testing.assert_close(a2.to_dense(), a1.to_dense())
    ct.clear_memo()


# ----------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize("task", ["sparse-ct", "limited-angle-ct", "metal-ct"])
def test_spec_round_trip(task):
    n = 32
    opts = {"sparse-ct": {"views": 9}, "limited-angle-ct": {"arc": 120.0},
            "metal-ct": {"metal_mask": ct.random_metal_mask(n, 2, seed=5), "dilation": 2}}[task]
    op = build_operator(task, n, solver="fbp", **opts)
    spec, arrays = op.spec(), op.arrays()
    spec = json.loads(json.dumps(spec))
    assert spec["task"] == task and spec["image_size"] == n
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    back = operator_from_spec(spec, arrays)
    assert type(back) is type(op) and back.default_solver == "fbp"
    torch.testing.assert_close(back.mask, op.mask)
    x = torch.rand(1, 1, n, n)
    torch.testing.assert_close(back.A(x), op.A(x))
    if task == "metal-ct":
        assert torch.equal(back.metal_mask, op.metal_mask)


def test_to_device_keeps_results():
    op = ct.SparseViewCT(32, 8).to("cpu")
    x = torch.rand(1, 1, 32, 32)
    assert op.A(x).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    op = ct.MetalTraceCT(32, ct.random_metal_mask(32, 1, seed=0))
    x = torch.rand(2, 1, 32, 32)
    y_cpu = op.A(x)
    op.to("cuda")
    torch.testing.assert_close(op.A(x.cuda()).cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(op.A_dagger(y_cpu.cuda()).cpu(), op.to("cpu").A_dagger(y_cpu), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------ metal
def test_metal_helpers():
    hu = torch.full((1, 1, 32, 32), 40.0)
    hu[0, 0, 10:12, 5:7] = 3500.0
    m = ct.metal_mask_from_image(hu)
    assert m.dtype == torch.bool and int(m.sum()) == 4
    assert int(ct.metal_mask_from_image(hu.numpy(), threshold=4000.0).sum()) == 0
    body = torch.zeros(64, 64, dtype=torch.bool)
    body[16:48, 8:40] = True
    a = ct.random_metal_mask(64, 3, seed=7, inside=body)
    b = ct.random_metal_mask(64, 3, seed=7, inside=body)
    assert torch.equal(a, b) and tuple(a.shape) == (1, 1, 64, 64)
    assert not bool((a[0, 0] & ~body).any())
    from scipy import ndimage

    assert ndimage.label(a[0, 0].numpy())[1] == 3
    assert 0 < int(a.sum()) < 0.05 * 64 * 64
    assert not torch.equal(a, ct.random_metal_mask(64, 3, seed=8, inside=body))


# ------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("make", [
    lambda: ct.SparseViewCT(8, 4),
    lambda: ct.SparseViewCT(32, 0),
    lambda: ct.SparseViewCT(32, 40),
    lambda: ct.SparseViewCT(32, 2.5),
    lambda: ct.LimitedAngleCT(32, 0.0),
    lambda: ct.LimitedAngleCT(32, 200.0),
    lambda: ct.LimitedAngleCT(32, float("nan")),
    lambda: ct.SparseViewCT(32, 8, filter="butterworth"),
    lambda: ct.SparseViewCT(32, 8, backend="magic"),
    lambda: ct.MetalTraceCT(32),
    lambda: ct.MetalTraceCT(32, torch.zeros(1, 1, 16, 16, dtype=torch.bool)),
    lambda: build_operator("sparse-ct", 32, view=8),
    lambda: ct.ParallelBeamGeometry(32, arc=4.0),
])
def test_bad_construction_raises(make):
    with pytest.raises(ScoreReconError):
        make()


def test_bad_call_inputs_raise():
    op = ct.SparseViewCT(32, 8)
    with pytest.raises(ScoreReconError, match="square|32x32"):
        op.A(torch.rand(1, 1, 32, 30))
    with pytest.raises(ScoreReconError, match="NaN"):
        op.A(torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(ScoreReconError, match="NaN"):
        op.A_dagger(torch.full(op.measurement_shape(1), float("inf")))
    with pytest.raises(ScoreReconError, match="shape"):
        ct.fbp(torch.rand(1, 1, 10, 10), op.geometry)
    with pytest.raises(ScoreReconError, match="square"):
        ct.JosephProjector(op.geometry).forward(torch.rand(1, 1, 32, 31))
    with pytest.raises(ScoreReconError, match="solver"):
        op.proximal(torch.rand(1, 1, 32, 32), torch.zeros(op.measurement_shape(1)), 1.0, solver="admm")


# ------------------------------------------------------------------------------- other backends
def test_astra_cpu_linear_projector_agrees():
    astra = pytest.importorskip("astra")
    n = 48
    g = ct.ParallelBeamGeometry(n, 36)
    rng = np.random.default_rng(0)
    img = rng.random((n, n)).astype(np.float32)
    ours = ct.JosephProjector(g).forward(torch.from_numpy(img)[None, None])[0, 0].numpy()
    vol = astra.create_vol_geom(n, n)
    proj = astra.create_proj_geom("parallel", 1.0, g.n_det, g.angles)
    pid = astra.create_projector("linear", proj, vol)
    try:
        sid, theirs = astra.create_sino(img, pid)
        astra.data2d.delete(sid)
    finally:
        astra.projector.delete(pid)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-3


def test_torch_radon_missing_names_joseph_fallback():
    if trb.torch_radon_available():
        pytest.skip("torch_radon is installed")
    with pytest.raises(ScoreReconError, match="joseph"):
        ct.SparseViewCT(32, 8, backend="torch-radon")
    # auto never needs it
    assert ct.SparseViewCT(32, 8, backend="auto").projector.name == "joseph"


@pytest.mark.skipif(not trb.torch_radon_available(), reason="torch_radon not installed (CUDA-only, not on PyPI)")
def test_torch_radon_matches_joseph():
    g = ct.ParallelBeamGeometry(64)
    x = shepp_logan(64).cuda()
    theirs = trb.TorchRadonProjector(g, "cuda").forward(x)
    ours = ct.JosephProjector(g, "cuda").forward(x)
    assert float((theirs - ours).norm() / ours.norm()) < 0.05


# ------------------------------------------------------------------------- measured views only
@pytest.mark.parametrize("backend", ["joseph", "joseph-symmetric", "matrix-free"])
@pytest.mark.parametrize("task,options", [
    ("sparse-ct", {"views": 7}),
    ("limited-angle-ct", {"arc": 60.0}),
    ("sparse-ct", {"views": 9, "geometry": "fan", "source_distance": 90.0, "detector_distance": 45.0}),
])
def test_view_subset_operators_project_only_the_measured_views(task, options, backend):
    """A and Aᴴ of sparse-view and limited-angle CT compute the measured views only (ViewSubsetGeometry) and
    equal the full projection masked, in parallel and fan beam, with the adjoint identity kept."""
    op = build_operator(task, 32, backend=backend, **options)
    sub = op.measured_projector
    assert sub is not op.projector and sub.geometry.n_angles == len(op.views) < op.geometry.n_angles
    np.testing.assert_allclose(sub.geometry.angles, op.geometry.angles[op.views])
    x = shepp_logan(32).repeat(2, 1, 1, 1)
    full = op.mask_apply(op.T(x))
    torch.testing.assert_close(op.A(x), full, atol=1e-4, rtol=1e-4)
    y = torch.randn_like(full)
    torch.testing.assert_close(op.A_adjoint(y), op.T_adjoint(op.mask_apply(y)), atol=1e-3, rtol=1e-4)
    assert _rel_adjoint_error(op.A, op.A_adjoint, x, y * op.mask) < 1e-5
    # A_dagger (FBP) filters and back-projects the measured views only: the same image as FBP over the full set
    full_fbp = ct.fbp(op.mask_apply(y), op.geometry, op.filter, op.view_weights, projector=op.projector,
                      coverage=None if op._reweight else op.mask.reshape(-1))
    torch.testing.assert_close(op.A_dagger(y), full_fbp, atol=1e-4, rtol=1e-4)


def test_view_subset_geometry_checks_and_keys():
    g = ct.ParallelBeamGeometry(32, 16)
    sub = ct.ViewSubsetGeometry(g, np.array([5, 1, 9]))
    assert sub.n_angles == 3 and sub.views.tolist() == [1, 5, 9] and sub.n_det == g.n_det
    theta, _ = sub.rays()
    np.testing.assert_allclose(theta[:, 0], g.angles[[1, 5, 9]])
    assert sub.key() != ct.ViewSubsetGeometry(g, np.array([1, 5])).key() and sub.key() != g.key()
    for bad in (np.array([], dtype=np.int64), np.array([3, 3]), np.array([16])):
        with pytest.raises(ScoreReconError, match="distinct indices"):
            ct.ViewSubsetGeometry(g, bad)
    full = build_operator("sparse-ct", 32, views=32)  # every view measured: the full projector itself
    assert full.measured_projector is full.projector


def test_sparse_view_operator_never_builds_the_full_set_projector():
    """A, Aᴴ, A† (parallel beam) and the proximal step of a sparse-view scan use the measured views only, so the
    full set's projector (at 512² a 0.9 GB stored matrix) is made on first use of T, not before."""
    op = build_operator("sparse-ct", 32, views=8)
    x = shepp_logan(32)
    y = op.A(x)
    op.A_adjoint(y)
    op.A_dagger(y)
    op.proximal(x, y, 1.0)
    assert op._projector is None
    assert op.T(x).shape == y.shape and op._projector is not None
