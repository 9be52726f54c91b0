"""Clinical-scale CT: the matrix-free projector, fan-beam geometry and FBP, the measurement format's geometry."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import head_hu, shepp_logan

from ScoreReconLib.data import Image
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.measurement import MEASUREMENT_FORMAT_VERSION, load_measurement, save_measurement, simulate
from ScoreReconLib.operators import build_operator, ct, operator_from_spec, projectors

ROOT = Path(__file__).resolve().parents[1]


def _psnr(x: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    d = (x - ref) if keep is None else (x - ref)[keep]
    return float(10 * torch.log10(1.0 / (d**2).mean()))


def _adjoint_error(p, x: torch.Tensor, y: torch.Tensor) -> float:
    lhs = (p.forward(x).double() * y.double()).sum()
    rhs = (x.double() * p.adjoint(y).double()).sum()
    return float((lhs - rhs).abs() / lhs.abs())


GEOMETRIES = {
    "parallel": lambda n: ct.ParallelBeamGeometry(n, 30),
    "fan-curved": lambda n: ct.FanBeamGeometry(n, 2.5 * n, 1.5 * n, 40),
    "fan-flat": lambda n: ct.FanBeamGeometry(n, 2.5 * n, 1.5 * n, 40, detector="flat"),
    "fan-short-arc": lambda n: ct.FanBeamGeometry(n, 3.0 * n, n, 24, arc=math.radians(250)),
}


# ------------------------------------------------------------------------------ the projectors
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_matrix_free_is_adjoint_exact_and_equals_the_stored_matrix(name):
    g = GEOMETRIES[name](40)
    mf, stored = ct.MatrixFreeJosephProjector(g), ct.JosephProjector(g)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 40, 40, generator=gen)
    y = torch.rand(3, 1, *g.sinogram_shape, generator=gen)
    assert _adjoint_error(mf, x, y) < 1e-5  # the bar is 1e-4
    assert _adjoint_error(stored, x, y) < 1e-5
    a, b = mf.forward(x), stored.forward(x)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4  # same Joseph weights, float32 vs float64 build
    a, b = mf.adjoint(y), stored.adjoint(y)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-4
    # a batch of one gives the same numbers as inside a batch (chunking is per ray, not per item)
    torch.testing.assert_close(mf.forward(x[1:2]), mf.forward(x)[1:2], rtol=1e-5, atol=1e-5)


def test_matrix_free_chunking_does_not_change_results(monkeypatch):
    g = ct.FanBeamGeometry(32, 80.0, 40.0, 12)
    x = torch.rand(2, 1, 32, 32)
    y = torch.rand(2, 1, *g.sinogram_shape)
    ref_f, ref_a = ct.MatrixFreeJosephProjector(g).forward(x), ct.MatrixFreeJosephProjector(g).adjoint(y)
    monkeypatch.setattr(projectors, "MATRIX_FREE_CHUNK_ELEMENTS", 32 * 7)  # 3 rays per chunk for a batch of 2
    p = ct.MatrixFreeJosephProjector(g)
    torch.testing.assert_close(p.forward(x), ref_f)
    torch.testing.assert_close(p.adjoint(y), ref_a, rtol=1e-5, atol=1e-4)


def test_fan_rays_follow_the_geometry():
    """A point's fan projection lands where the source-point-detector line says; far sources → parallel."""
    n = 32
    g = ct.FanBeamGeometry(n, 60.0, 30.0, 16)
    r, c = 9, 22
    img = torch.zeros(1, 1, n, n)
    img[0, 0, r, c] = 1.0
    sino = ct.MatrixFreeJosephProjector(g).forward(img)[0, 0].double().numpy()
    x, y = c - (n - 1) / 2, (n - 1) / 2 - r
    beta = g.angles
    # source at D(sin β, −cos β); the ray to the point makes fan angle γ with the central ray
    sx, sy = g.source_distance * np.sin(beta), -g.source_distance * np.cos(beta)
    to_point = np.arctan2(y - sy, x - sx)
    central = np.arctan2(-sy, -sx)
    gamma = (central - to_point + np.pi) % (2 * np.pi) - np.pi  # ray direction β − γ + π/2 (θ = β − γ)
    expected = gamma * g.source_distance + (g.n_det - 1) / 2
    seen = (sino * np.arange(g.n_det)).sum(1) / sino.sum(1)
    np.testing.assert_allclose(seen, expected, atol=0.35)
    far = ct.FanBeamGeometry(n, 1e6, 1.0, 8, arc=math.pi, n_det=ct.ParallelBeamGeometry(n).n_det)
    par = ct.ParallelBeamGeometry(n, 8)
    blob = shepp_logan(n)
    torch.testing.assert_close(ct.JosephProjector(far).forward(blob), ct.JosephProjector(par).forward(blob),
                               rtol=1e-3, atol=1e-3)


def test_auto_backend_picks_by_stored_size():
    assert ct.auto_backend(ct.ParallelBeamGeometry(128)) == "joseph"
    # full scans at 512²: the symmetry's base views fit (1/4 of a 180° parallel scan, 1/8 of a fan turn)
    assert ct.auto_backend(ct.ParallelBeamGeometry(512, 512)) == "joseph-symmetric"
    assert ct.auto_backend(ct.FanBeamGeometry(512, 1400.0, 1100.0, 512)) == "joseph-symmetric"
    # angles without the square's symmetry (a 127° arc of 512 views) and a larger image go matrix-free
    assert ct.auto_backend(ct.ParallelBeamGeometry(512, 512, arc=2.2)) == "matrix-free"
    assert ct.auto_backend(ct.ParallelBeamGeometry(1024, 1024)) == "matrix-free"
    assert ct.stored_matrix_bytes(ct.ParallelBeamGeometry(256, 256)) <= ct.STORED_MATRIX_MAX_BYTES
    op = build_operator("sparse-ct", 64, views=8, backend="matrix-free")
    assert op.projector.name == "matrix-free" and op.spec()["backend"] == "matrix-free"
    with pytest.raises(ScoreReconError, match="parallel beam only"):
        ct.make_projector(ct.FanBeamGeometry(32, 80.0, 40.0, 8), "torch-radon")


def test_operator_memory_at_512_is_within_budget():
    """512², 512 angles: the matrix-free projector's own tensors plus a forward and adjoint's working set.

    The working set is per chunk of rays, so it is measured on 8 of the angles in a fresh process
    (the whole 512-angle run is the benchmark's, benchmarks/clinical_ct.py); the bound is generous."""
    for g in (ct.ParallelBeamGeometry(512, 512), ct.FanBeamGeometry(512, 1400.0, 1100.0, 512)):
        p = ct.MatrixFreeJosephProjector(g)
        own = sum(t.numel() * t.element_size() for t in (p._a, p._b, p._length, p._rows, p._k, p._steps))
        assert own < 64 * 2**20, own
    code = textwrap.dedent("""
        import resource, torch
        from ScoreReconLib.operators import ct
        torch.set_num_threads(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        p = ct.MatrixFreeJosephProjector(ct.FanBeamGeometry(512, 1400.0, 1100.0, 8))
        x = torch.rand(8, 1, 512, 512)
        p.adjoint(p.forward(x))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 2 * 2**30, grown


# --------------------------------------------------------------------------------- astra oracle
def test_astra_agreement_parallel_and_fan():
    astra = pytest.importorskip("astra")
    n = 48
    x = shepp_logan(n)
    vol = astra.create_vol_geom(n, n)

    def astra_sino(proj_geom, kind):
        pid = astra.create_projector(kind, proj_geom, vol)
        try:
            sid, sino = astra.create_sino(x[0, 0].numpy(), pid)
            astra.data2d.delete(sid)
            return sino
        finally:
            astra.projector.delete(pid)

    g = ct.ParallelBeamGeometry(n, 36)
    ref = astra_sino(astra.create_proj_geom("parallel", 1.0, g.n_det, g.angles), "linear")
    ours = ct.MatrixFreeJosephProjector(g).forward(x)[0, 0].numpy()
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-4  # the same Joseph / linear kernel
    f = ct.FanBeamGeometry(n, 120.0, 80.0, 36, detector="flat")
    ref = astra_sino(astra.create_proj_geom("fanflat", f.detector_pitch, f.n_det, f.angles, f.source_distance,
                                            f.detector_distance), "strip_fanflat")
    ours = ct.MatrixFreeJosephProjector(f).forward(x)[0, 0].numpy()
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.02  # strip (area) vs Joseph (line) kernel


# ------------------------------------------------------------------------------------ fan FBP
def test_fan_fbp_is_close_to_parallel_fbp():
    n = 64
    x = shepp_logan(n)
    par = build_operator("sparse-ct", n, views=n)
    base = _psnr(par.A_dagger(par.A(x)), x)
    for det in ("curved", "flat"):
        fan = build_operator("sparse-ct", n, views=2 * n, geometry="fan", source_distance=2.0 * n,
                             detector_distance=1.5 * n, detector=det)
        assert fan.geometry.n_angles == 2 * n and fan.geometry.kind == "fan"
        got = _psnr(fan.A_dagger(fan.A(x)), x)
        assert got > base - 1.0, (det, got, base)


def test_fan_limited_arc_sparse_and_metal():
    n = 48
    x = shepp_logan(n)
    geo = {"geometry": "fan", "source_distance": 2.0 * n, "detector_distance": n}
    full = _psnr(build_operator("sparse-ct", n, views=2 * n, **geo).A_dagger(
        build_operator("sparse-ct", n, views=2 * n, **geo).A(x)), x)
    arc = build_operator("limited-angle-ct", n, arc=270.0, **geo)
    assert len(arc.views) == math.ceil(2 * n * 270 / 360)
    # 270° of a fan still sees every line at least once: the rebinned FBP keeps most of the quality
    assert _psnr(arc.A_dagger(arc.A(x)), x) > full - 1.5
    half = build_operator("limited-angle-ct", n, arc=120.0, **geo)
    assert _psnr(half.A_dagger(half.A(x)), x) < full - 3.0  # a real gap in the data
    with pytest.raises(ScoreReconError, match=r"\(0, 360\]"):
        build_operator("limited-angle-ct", n, arc=400.0, **geo)
    with pytest.raises(ScoreReconError, match=r"\(0, 180\]"):
        build_operator("limited-angle-ct", n, arc=270.0)
    sparse = build_operator("sparse-ct", n, views=12, **geo)
    assert _psnr(sparse.A_dagger(sparse.A(x)), x) < full
    metal = ct.random_metal_mask(n, 2, seed=2, inside=x[0, 0] > 0.05)
    op = build_operator("metal-ct", n, metal_mask=metal, **geo)
    trace = op.mask < 0.5
    assert 0.01 < float(trace.float().mean()) < 0.5
    # every view's trace follows the metal: bins whose rays miss the metal stay measured
    ray_through_metal = op.T(metal.float()) > ct.TRACE_THRESHOLD
    assert bool((trace | ~ray_through_metal).all())
    x_metal = torch.where(metal, torch.full_like(x, 3.0), x)
    keep = ~metal
    li = _psnr(op.A_dagger(op.A(x_metal)), x, keep)
    plain = _psnr(build_operator("sparse-ct", n, views=2 * n, **geo).A_dagger(
        build_operator("sparse-ct", n, views=2 * n, **geo).A(x_metal)), x, keep)
    assert li > plain + 3.0  # inpainting the fan trace removes the metal streaks FBP shows


def test_fan_spec_round_trip_and_errors():
    op = build_operator("sparse-ct", 32, views=6, geometry="fan", source_distance=90.0, detector_distance=45.0,
                        detector="flat")
    spec = json.loads(json.dumps(op.spec()))
    assert spec["geometry"] == "fan" and spec["detector"] == "flat"
    back = operator_from_spec(spec, op.arrays())
    assert back.geometry == op.geometry and np.array_equal(back.views, op.views)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(back.A(x), op.A(x))
    with pytest.raises(ScoreReconError, match="cone"):
        operator_from_spec(dict(spec, geometry="cone"), op.arrays())
    with pytest.raises(ScoreReconError, match="source distance"):
        build_operator("sparse-ct", 32, views=6, geometry="fan", source_distance=10.0, detector_distance=45.0)
    with pytest.raises(ScoreReconError, match="needs source_distance"):
        build_operator("sparse-ct", 32, views=6, geometry="fan")


# ------------------------------------------------------------------------ measurement files
def _head_image(n: int = 48, slices: int = 1) -> Image:
    img = head_hu(n, 40.0, (300.0,))
    arr = img if slices == 1 else np.stack([img] * slices)
    spacing = (2.0, 2.0) if slices == 1 else (2.0, 2.0, 3.0)
    return Image(arr, spacing, (0.0,) * len(spacing), tuple(np.eye(len(spacing)).ravel()), "CT")


def test_fan_simulate_file_fbp_round_trip(tmp_path):
    img = _head_image()
    m, ref, _ = simulate(img, "sparse-ct", views=96, geometry="fan", source_distance=300.0,
                         detector_distance=200.0)
    assert m.operator_spec["geometry"] == "fan"
    assert m.operator_spec["source_distance"] == pytest.approx(150.0)  # 300 mm / 2 mm pixels
    assert m.options["source_distance_mm"] == 300.0 and m.options["pixel_size_mm"] == 2.0
    assert m.y.shape == (1, 1, 96, m.operator_spec["n_det"])
    path = save_measurement(tmp_path / "fan.npz", m)
    back = load_measurement(path)
    assert back.format_version == MEASUREMENT_FORMAT_VERSION
    op = back.operator()
    assert op.geometry.kind == "fan"
    recon = op.A_dagger(back.y_tensor())
    par, _, _ = simulate(img, "sparse-ct", views=48)
    par_recon = par.operator().A_dagger(par.y_tensor())
    assert _psnr(recon, ref) > _psnr(par_recon, ref) - 1.0
    with pytest.raises(ScoreReconError, match="inside"):
        simulate(img, "sparse-ct", geometry="fan", source_distance=40.0, detector_distance=200.0)
    with pytest.raises(ScoreReconError, match="fan only"):
        simulate(img, "sparse-ct", source_distance=400.0)


def test_fan_metal_and_limited_arc_simulate(tmp_path):
    img = _head_image(40)
    m, ref, extra = simulate(img, "metal-ct", geometry="fan", source_distance=250.0, detector_distance=200.0,
                             seed=1)
    assert m.metal["source"] == "inserted" and m.operator_spec["geometry"] == "fan"
    op = load_measurement(save_measurement(tmp_path / "metal.npz", m)).operator()
    assert float((op.mask < 0.5).float().mean()) > 0.01
    lim, _, _ = simulate(img, "limited-angle-ct", arc=300.0, geometry="fan", source_distance=250.0,
                         detector_distance=200.0)
    assert len(load_measurement(save_measurement(tmp_path / "lim.npz", lim)).operator().views) == 67
    with pytest.raises(ScoreReconError, match=r"\(0, 360\]"):
        simulate(img, "limited-angle-ct", arc=365.0, geometry="fan", source_distance=250.0,
                 detector_distance=200.0)


def _rewrite(src: Path, dst: Path, header: dict | None = None, operator: dict | None = None) -> Path:
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    h = json.loads(str(arrays["header"][()]))
    h.update(header or {})
    h["operator"].update(operator or {})
    arrays["header"] = np.array(json.dumps(h))
    np.savez_compressed(dst, **arrays)
    return dst


def test_measurement_version_bump_and_geometry_validation(tmp_path):
    m, _, _ = simulate(_head_image(32), "sparse-ct", views=8, geometry="fan", source_distance=200.0,
                       detector_distance=100.0)
    good = save_measurement(tmp_path / "good.npz", m)
    assert json.loads(str(np.load(good)["header"][()]))["format_version"] == MEASUREMENT_FORMAT_VERSION == 2
    old = _rewrite(good, tmp_path / "v1.npz", header={"format_version": 1})
    with pytest.raises(ScoreReconError, match=r"version 1 .*reads version 2; re-simulate"):
        load_measurement(old)
    with pytest.raises(ScoreReconError, match="geometry is 'cone'"):
        load_measurement(_rewrite(good, tmp_path / "cone.npz", operator={"geometry": "cone"}))
    with pytest.raises(ScoreReconError, match="source_distance"):
        load_measurement(_rewrite(good, tmp_path / "neg.npz", operator={"source_distance": -5.0}))
    with pytest.raises(ScoreReconError, match="inside the image"):
        load_measurement(_rewrite(good, tmp_path / "inside.npz", operator={"source_distance": 3.0}))
    with pytest.raises(ScoreReconError, match="detector"):
        load_measurement(_rewrite(good, tmp_path / "det.npz", operator={"detector": "spherical"}))


# ------------------------------------------------------------------------ 3-D consistency (z-TV)
def _volume_problem(slices: int = 3, fan: bool = False):
    from helpers import GaussianPrior, smooth_mean

    n = 24
    geo = {"geometry": "fan", "source_distance": 60.0, "detector_distance": 30.0} if fan else {}
    op = build_operator("sparse-ct", n, views=8, **geo)
    mu = smooth_mean(n)
    prior = GaussianPrior(mu, 0.1, "CT")
    g = torch.Generator().manual_seed(5)
    base = mu + 0.1 * torch.randn(mu.shape, generator=g)
    x_true = torch.cat([base + 0.01 * k for k in range(slices)])  # slowly varying along z
    return op, prior, x_true, op.A(x_true)


def test_z_tv_proximal_is_a_tv_prox_along_the_batch():
    from ScoreReconLib.sampling import z_tv_proximal

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    assert torch.equal(z_tv_proximal(x, 0.0), x) and torch.equal(z_tv_proximal(x[:1], 0.5), x[:1])
    u = z_tv_proximal(x, 0.05, iters=200)

    def energy(v):
        return 0.5 * ((v - x) ** 2).sum() + 0.05 * (v[1:] - v[:-1]).abs().sum()

    assert float(energy(u)) < float(energy(x))
    assert float((u[1:] - u[:-1]).abs().sum()) < float((x[1:] - x[:-1]).abs().sum())
    torch.testing.assert_close(u.mean(0), x.mean(0), rtol=1e-5, atol=1e-5)  # the z-mean is kept
    # a huge weight flattens each pixel's z-profile to its mean
    torch.testing.assert_close(z_tv_proximal(x, 10.0, iters=2000), x.mean(0, keepdim=True).expand_as(x),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ScoreReconError, match="z-TV weight"):
        z_tv_proximal(x, -1.0)


@pytest.mark.parametrize("fan", [False, True])
def test_z_coupled_volume_runs_and_is_reproducible(fan):
    from ScoreReconLib.reconstruction import reconstruct_volume

    op, prior, x_true, y = _volume_problem(3, fan)
    a = reconstruct_volume(y, op, prior, steps=6, seed=4, z_tv=0.02)
    b = reconstruct_volume(y, op, prior, steps=6, seed=4, z_tv=0.02)
    assert a.mean.shape == (3, 1, 24, 24) and torch.equal(a.mean, b.mean)
    assert a.settings["z_tv"] == 0.02
    plain = reconstruct_volume(y, op, prior, steps=6, seed=4, batch_size=3)
    assert not torch.equal(plain.mean, a.mean)

    def z_variation(v):
        return float((v[1:] - v[:-1]).abs().mean())

    assert z_variation(a.mean) < z_variation(plain.mean)  # neighbouring slices agree more
    with pytest.raises(ScoreReconError, match="only to the proximal sampler"):
        reconstruct_volume(y, op, prior, method="fast", steps=4, z_tv=0.02)
    with pytest.raises(ScoreReconError, match="--z-tv must be >= 0"):
        reconstruct_volume(y, op, prior, steps=4, z_tv=-0.1)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_fan_simulate_reconstruct_and_z_tv_flag(tmp_path, capsys):
    from ScoreReconLib.cli import main
    from ScoreReconLib.data import read_image, write_image

    src = tmp_path / "head.nrrd"
    write_image(_head_image(32, slices=3), src)
    meas = tmp_path / "fan.npz"
    assert main(["simulate", "--task", "limited-angle-ct", "--arc", "270", "--geometry", "fan",
                 "--source-distance", "200", "--detector-distance", "150", "--detector", "flat",
                 "--input", str(src), "--output", str(meas)]) == 0
    assert "fan beam (flat detector, source 200 mm, detector 150 mm)" in capsys.readouterr().out
    m = load_measurement(meas)
    assert m.operator_spec["geometry"] == "fan" and m.operator_spec["detector"] == "flat"
    out = tmp_path / "fbp.nrrd"
    assert main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(out),
                 "--progress-format", "none"]) == 0
    assert read_image(out).array.shape == (3, 32, 32)
    capsys.readouterr()
    assert main(["reconstruct", "--input", str(meas), "--method", "tv", "--z-tv", "0.01",
                 "--output", str(tmp_path / "x.nrrd"), "--progress-format", "none"]) == 2
    assert "--z-tv only applies to --method score" in capsys.readouterr().err
    assert main(["simulate", "--task", "sparse-ct", "--geometry", "fan", "--source-distance", "10",
                 "--input", str(src), "--output", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "inside" in err and err.count("\n") == 1 and not (tmp_path / "bad.npz").exists()


def test_shared_noise_volume_is_reproducible_and_more_consistent():
    from ScoreReconLib.reconstruction import reconstruct_volume

    op, prior, x_true, y = _volume_problem(3)
    a = reconstruct_volume(y, op, prior, steps=6, seed=4, z_shared_noise=True)
    b = reconstruct_volume(y, op, prior, steps=6, seed=4, z_shared_noise=True)
    assert torch.equal(a.mean, b.mean) and a.settings["z_shared_noise"] is True
    plain = reconstruct_volume(y, op, prior, steps=6, seed=4, batch_size=3)
    assert float((a.mean[1:] - a.mean[:-1]).abs().mean()) < float((plain.mean[1:] - plain.mean[:-1]).abs().mean())
    # one slice alone: shared noise is the ordinary sampler
    one = reconstruct_volume(y[:1], op, prior, steps=6, seed=4, z_shared_noise=True)
    assert torch.equal(one.mean, reconstruct_volume(y[:1], op, prior, steps=6, seed=4, batch_size=1).mean)
    with pytest.raises(ScoreReconError, match="only to the proximal sampler"):
        reconstruct_volume(y, op, prior, method="fast", steps=4, z_shared_noise=True)


def test_a_flat_detector_at_the_image_edge_is_refused_before_memory_is_spent():
    """Issue 24: a flat detector with the source just outside the image needed thousands of bins and 4 GB; the
    geometry is refused by name before any projector is built."""
    import time

    from ScoreReconLib.errors import ScoreReconError
    from ScoreReconLib.operators.ct import FanBeamGeometry

    t0 = time.perf_counter()
    with pytest.raises(ScoreReconError, match="more than 8 per image pixel.*larger --source-distance"):
        FanBeamGeometry(128, 91.6, 100.0, detector="flat")
    assert time.perf_counter() - t0 < 1
    assert FanBeamGeometry(128, 91.6, 100.0, detector="curved").n_det < 8 * 128  # a curved one is fine
