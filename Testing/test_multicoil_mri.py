"""Multi-coil MRI: the operator, coil maps, the measurement file, and fastMRI-format HDF5 import (fuzzed too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import check_fuzz_case, cli, mr_ellipse, pick

from ScoreReconLib.coils import (
    absorb_phase,
    calibration_width,
    estimate_maps,
    lowres_maps,
    rss_reconstruct,
    sense_reconstruct,
    sigpy_available,
    synthetic_maps,
)
from ScoreReconLib.data import Image, read_image
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.measurement import load_measurement, save_measurement, simulate
from ScoreReconLib.operators.mri import fft2c
from ScoreReconLib.operators.multicoil import MultiCoilMRI, build_multicoil_operator

N = 32
COILS = 6


def rand_complex(shape, g) -> torch.Tensor:
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


# ------------------------------------------------------------------------------------ operator
def test_synthetic_maps_are_normalised_and_smooth():
    s = synthetic_maps(N, COILS, seed=3)
    assert s.shape == (1, COILS, N, N) and s.dtype == torch.complex64
    assert torch.allclose((s.abs() ** 2).sum(1), torch.ones(1, N, N), atol=1e-5)
    assert float((s[..., 1:, :] - s[..., :-1, :]).abs().max()) < 0.3  # smooth: small neighbour steps
    assert not torch.equal(s, synthetic_maps(N, COILS, seed=4))


@pytest.mark.parametrize("domain", ["complex", "real"])
def test_adjoint_identity(domain):
    g = torch.Generator().manual_seed(0)
    op = build_multicoil_operator(synthetic_maps(N, COILS), acceleration=4, center_fraction=0.1,
                                  image_domain=domain)
    u = rand_complex((3, 1, N, N), g) if domain == "complex" else torch.randn(3, 1, N, N, generator=g)
    v = rand_complex((3, COILS, N, N), g)
    lhs = (op.A(u).conj() * v).sum()
    rhs = (u.conj() * op.A_adjoint(v)).sum()
    if domain == "complex":
        assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-3)
    else:  # real images: <A u, v> under Re
        assert op.A_adjoint(v).dtype == torch.float32
        assert abs(float(lhs.real) - float(rhs.real)) < 1e-3 * abs(float(lhs.real)) + 1e-3


def test_full_sampling_with_true_maps_recovers_the_image_exactly():
    x = mr_ellipse()
    op = MultiCoilMRI(synthetic_maps(N, COILS), torch.ones(N, N), image_domain="complex")
    xc = x.to(torch.complex64) * torch.exp(1j * torch.linspace(0, 2, N))  # a complex image with phase
    assert float((op.A_dagger(op.A(xc)) - xc).abs().max()) < 1e-5
    real = op.with_domain("real")
    assert float((real.A_dagger(real.A(x)) - x).abs().max()) < 1e-5
    assert float((real.proximal(torch.zeros_like(x), real.A(x), 1.0) - x).abs().max()) < 1e-4


def test_proximal_step_fits_the_data_and_lambda_zero_keeps_x():
    x = mr_ellipse()
    op = build_multicoil_operator(synthetic_maps(N, COILS), acceleration=4, center_fraction=0.1)
    y = op.A(x)
    start = torch.zeros_like(x)
    before = float((op.A(start) - y).abs().pow(2).sum())
    after = float((op.A(op.proximal(start, y, 1.0)) - y).abs().pow(2).sum())
    half = op.proximal(start, y, 0.5)
    assert after < 0.01 * before
    assert float((op.A(half) - y).abs().pow(2).sum()) < before
    assert torch.equal(op.proximal(x, y, 0.0), x)
    with pytest.raises(ScoreReconError):
        op.proximal(x, y, 1.5)


def test_batch_shapes_per_slice_maps_and_errors():
    maps = torch.cat([synthetic_maps(N, COILS, seed=0), synthetic_maps(N, COILS, seed=1)])
    op = build_multicoil_operator(maps, acceleration=4, center_fraction=0.1)
    x = mr_ellipse().repeat(2, 1, 1, 1)
    y = op.A(x)
    assert y.shape == (2, COILS, N, N) and y.dtype == torch.complex64
    sub = op.batch_subset(slice(1, 2))
    assert torch.allclose(sub.A(x[1:]), y[1:])
    with pytest.raises(ScoreReconError, match="batch_subset"):
        op.A(x[:1])
    with pytest.raises(ScoreReconError, match="mask"):
        MultiCoilMRI(maps, torch.ones(N, N + 1))
    with pytest.raises(ScoreReconError, match="real images"):
        op.A(x.to(torch.complex64))


# ------------------------------------------------------------------------------------ coil maps
def _agreement(est: torch.Tensor, true: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """|<S_est, S_true>| per pixel over ``where``: 1 when equal up to a per-pixel phase."""
    return (est.conj() * true).sum(1).abs()[0][where]


def test_own_map_estimate_recovers_smooth_maps_up_to_phase():
    x = mr_ellipse(64)
    true = synthetic_maps(64, COILS, seed=2)
    op = build_multicoil_operator(true, acceleration=4, center_fraction=0.16)
    y = op.A(x)
    width = calibration_width(op.mask)
    assert width == round(64 * 0.16)
    est = lowres_maps(y, width)
    inside = x[0, 0] > 0.1
    agree = _agreement(est, true, inside)
    assert float(agree.mean()) > 0.99 and float(agree.min()) > 0.9
    assert float(est[0, :, 0, 0].abs().sum()) == 0  # outside the object: no map
    # the phase folded into the estimated maps makes the image real again: least squares recovers it
    op_est = build_multicoil_operator(est, acceleration=4, center_fraction=0.16, phase=absorb_phase(est, y, op.mask))
    full = MultiCoilMRI(op_est.maps, torch.ones(64, 64))
    rec = full.A_dagger(op.with_domain("real").T(x))
    assert float((rec - x)[0, 0][inside].abs().mean()) < 0.02


@pytest.mark.skipif(not sigpy_available(), reason="sigpy not installed")
def test_espirit_maps_agree_with_true_maps():
    x = mr_ellipse(64)
    true = synthetic_maps(64, COILS, seed=2)
    op = build_multicoil_operator(true, acceleration=4, center_fraction=0.2)
    est, used = estimate_maps(op.A(x), op.mask, "espirit")
    assert used == "espirit"
    assert float(_agreement(est, true, x[0, 0] > 0.1).mean()) > 0.98


def test_sense_and_rss_baselines():
    x = mr_ellipse()
    op = build_multicoil_operator(synthetic_maps(N, COILS), acceleration=3, center_fraction=0.1)
    y = op.A(x)
    zf = op.A_dagger(y)
    err = lambda a: float((a - x).pow(2).mean())  # noqa: E731
    assert err(sense_reconstruct(y, op)) < 0.5 * err(zf)
    full = MultiCoilMRI(synthetic_maps(N, COILS), torch.ones(N, N))
    assert float((rss_reconstruct(full.A(x), full.mask) - x).abs().max()) < 1e-5  # Σ|S|² = 1


# --------------------------------------------------------------------------- measurement files
def test_simulate_multicoil_measurement_round_trip(tmp_path):
    img = Image((mr_ellipse()[0, 0].numpy() * 80.0), (0.7, 0.7))
    m, ref, _ = simulate(img, "mri", acceleration=4, center_fraction=0.1, coils=4, seed=5, phase="zero")
    assert m.y.shape == (1, 4, N, N) and m.coils == 4
    path = save_measurement(tmp_path / "k.npz", m)
    back = load_measurement(path)
    op = back.operator()
    assert isinstance(op, MultiCoilMRI) and op.coils == 4
    assert torch.allclose(op.A(ref), back.y_tensor(), atol=1e-5)
    # with the image phase (the default) the file carries the phase estimated from the data: A x ≈ y
    m, ref, _ = simulate(img, "mri", acceleration=4, center_fraction=0.1, coils=4, seed=5)
    op = load_measurement(save_measurement(tmp_path / "p.npz", m)).operator()
    y = m.y_tensor()
    assert op.phase is not None and float((op.A(ref) - y).norm() / y.norm()) < 0.2
    with pytest.raises(ScoreReconError, match="--coils"):
        simulate(img, "sparse-ct", coils=4)


def test_cli_simulate_coils_and_reconstruct(tmp_path, capsys):
    src = tmp_path / "img.npy"
    np.save(src, mr_ellipse()[0, 0].numpy() * 50.0)
    rc, out, _ = cli(["simulate", "--task", "mri", "--coils", "4", "--acceleration", "3", "--center-fraction",
                      "0.12", "--phase", "zero", "--input", src, "--output", tmp_path / "k.npz"], capsys)
    assert rc == 0 and "4 coils" in out and "zero phase" in out
    psnr = {}
    for method in ("zero-filled", "rss", "sense", "tv"):
        rc, out, err = cli(["reconstruct", "--input", tmp_path / "k.npz", "--output", tmp_path / f"{method}.nrrd",
                            "--method", method, "--reference", src, "--progress-format", "none",
                            "--metrics-json", tmp_path / f"{method}.json"], capsys)
        assert rc == 0, err
        psnr[method] = json.loads((tmp_path / f"{method}.json").read_text())["psnr"]
    # maps that vanish outside the object (a receive array's, as ESPIRiT would give): noise-free SENSE is near
    # exact at 3x with 4 coils; TV and SENSE both far above the zero-filled coil combination
    assert psnr["sense"] > psnr["zero-filled"] + 10 and psnr["tv"] > psnr["zero-filled"] + 5


# --------------------------------------------------------------------------------- HDF5 import
def write_fastmri(path: Path, x: np.ndarray, maps: np.ndarray, scale: float = 1e-4, oversample: int = 2,
                  columns: np.ndarray | None = None, store_maps: bool = True, header: bool = True) -> None:
    """A fastMRI-layout file of slices ``x`` (S, N, N) with coil ``maps`` (C, N, N): readout oversampled."""
    h5py = pytest.importorskip("h5py")
    s, n = x.shape[0], x.shape[-1]
    h = oversample * n
    coil = np.zeros((s, maps.shape[0], h, n), np.complex64)
    top = h // 2 - n // 2
    coil[:, :, top:top + n] = maps[None] * x[:, None]
    k = fft2c(torch.from_numpy(coil)).numpy() * scale
    if columns is not None:
        k = k * columns
    with h5py.File(path, "w") as f:
        f["kspace"] = k.astype(np.complex64)
        if columns is not None:
            f["mask"] = columns
        if store_maps:
            padded = np.zeros((s, maps.shape[0], h, n), np.complex64)
            padded[:, :, top:top + n] = maps[None]
            f["sens_maps"] = padded
        if header:
            f["ismrmrd_header"] = (
                '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace>'
                f"<matrixSize><x>{h}</x><y>{n}</y><z>1</z></matrixSize><fieldOfView_mm><x>{h * 0.5}</x>"
                f"<y>{n * 0.5}</y><z>3</z></fieldOfView_mm></encodedSpace></encoding></ismrmrdHeader>")
        f.attrs["acquisition"] = "AXT1"


def test_hdf5_fully_sampled_round_trip_is_exact(tmp_path, capsys):
    pytest.importorskip("h5py")
    x = np.stack([mr_ellipse()[0, 0].numpy(), 0.5 * mr_ellipse()[0, 0].numpy()[::-1]]).astype(np.float32)
    maps = synthetic_maps(N, COILS, seed=1)[0].numpy()
    write_fastmri(tmp_path / "full.h5", x, maps)
    rc, out, err = cli(["import-kspace", "--input", tmp_path / "full.h5", "--output", tmp_path / "m.npz",
                        "--acceleration", "1"], capsys)
    assert rc == 0, err
    m = load_measurement(tmp_path / "m.npz")
    assert m.y.shape == (2, COILS, N, N) and m.options["maps"] == "file"
    rc, _, err = cli(["reconstruct", "--input", tmp_path / "m.npz", "--output", tmp_path / "r.nrrd",
                      "--method", "sense", "--progress-format", "none"], capsys)
    assert rc == 0, err
    r = read_image(tmp_path / "r.nrrd")
    assert r.array.shape == (2, N, N)
    assert np.allclose(r.spacing, (0.5, 0.5, 3.0))
    assert np.abs(r.array - x * 1e-4).max() < 1e-4 * 1e-3  # back in the file's units, exact


def test_hdf5_undersampled_with_mask_and_estimated_maps(tmp_path, capsys):
    pytest.importorskip("h5py")
    x = mr_ellipse()[0, 0].numpy()[None]
    cols = np.zeros(N, bool)
    cols[::3] = True
    cols[N // 2 - 4:N // 2 + 4] = True
    write_fastmri(tmp_path / "u.h5", x, synthetic_maps(N, COILS, seed=1)[0].numpy(), columns=cols,
                  store_maps=False, header=False)
    rc, out, err = cli(["import-kspace", "--input", tmp_path / "u.h5", "--output", tmp_path / "m.npz",
                        "--maps", "lowres"], capsys)
    assert rc == 0, err
    assert "as acquired" in out
    m = load_measurement(tmp_path / "m.npz")
    assert m.operator_spec["maps_source"] == "lowres" and m.geometry["spacing"] == [1.0, 1.0]
    assert np.array_equal(m.operator_arrays["mask"][0] > 0, cols)
    errs = {}
    for method in ("zero-filled", "tv"):
        rc, _, err = cli(["reconstruct", "--input", tmp_path / "m.npz", "--output", tmp_path / f"{method}.nrrd",
                          "--method", method, "--progress-format", "none"], capsys)
        assert rc == 0, err
        errs[method] = float(np.abs(read_image(tmp_path / f"{method}.nrrd").array - x * 1e-4).mean())
    assert errs["tv"] < errs["zero-filled"]
    # already undersampled: a retrospective acceleration is refused
    rc, _, err = cli(["import-kspace", "--input", tmp_path / "u.h5", "--output", tmp_path / "n.npz",
                      "--acceleration", "4"], capsys)
    assert rc == 2 and "already undersampled" in err and not (tmp_path / "n.npz").exists()


def test_hdf5_retrospective_undersampling_and_slices(tmp_path, capsys):
    pytest.importorskip("h5py")
    x = np.stack([mr_ellipse()[0, 0].numpy()] * 3).astype(np.float32)
    write_fastmri(tmp_path / "f.h5", x, synthetic_maps(N, COILS, seed=1)[0].numpy())
    rc, _, err = cli(["import-kspace", "--input", tmp_path / "f.h5", "--output", tmp_path / "m.npz",
                      "--acceleration", "4", "--center-fraction", "0.125", "--slices", "1:3"], capsys)
    assert rc == 0, err
    m = load_measurement(tmp_path / "m.npz")
    assert m.n_slices == 2 and m.source["slices"] == [1, 3]
    assert m.operator_spec["acceleration"] == 4 and round(m.operator_spec["realised_acceleration"]) == 4


def _bad_file(path: Path, kind: str) -> None:
    h5py = pytest.importorskip("h5py")
    k = (np.random.default_rng(0).standard_normal((1, 2, 32, 32)) * (1 + 1j)).astype(np.complex64)
    with h5py.File(path, "w") as f:
        if kind == "missing":
            f["reconstruction_rss"] = np.zeros((1, 32, 32), np.float32)
        elif kind == "rank":
            f["kspace"] = k[0, 0]
        elif kind == "nan":
            k[0, 1, 3, 4] = np.nan
            f["kspace"] = k
        elif kind == "real":
            f["kspace"] = k.real
    if kind == "not-hdf5":
        path.write_text("not an HDF5 file")


@pytest.mark.parametrize("kind,needle", [("missing", "no 'kspace'"), ("rank", "shape"), ("nan", "NaN"),
                                         ("real", "not complex"), ("not-hdf5", "not an HDF5")])
def test_bad_hdf5_input_is_one_line_exit_2(tmp_path, capsys, kind, needle):
    _bad_file(tmp_path / "bad.h5", kind)
    rc, out, err = cli(["import-kspace", "--input", tmp_path / "bad.h5", "--output", tmp_path / "m.npz"], capsys)
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and err.startswith("scorerecon import-kspace: error")
    assert not (tmp_path / "m.npz").exists()


def test_bad_slices_are_refused(tmp_path, capsys):
    pytest.importorskip("h5py")
    write_fastmri(tmp_path / "f.h5", mr_ellipse()[0, 0].numpy()[None], synthetic_maps(N, 2)[0].numpy())
    for text in ("3:5", "a:b"):
        rc, _, err = cli(["import-kspace", "--input", tmp_path / "f.h5", "--output", tmp_path / "m.npz",
                          "--slices", text], capsys)
        assert rc == 2 and "--slices" in err


def test_complex_output_carries_the_image_phase(tmp_path, capsys):
    pytest.importorskip("h5py")
    mag = mr_ellipse()[0, 0].numpy()
    t = (np.arange(N) - N // 2) / (N / 2)
    theta = (0.8 + 0.9 * t[:, None] - 0.6 * t[None, :]).astype(np.float32)  # smooth phase
    write_fastmri(tmp_path / "p.h5", (mag * np.exp(1j * theta))[None].astype(np.complex64),
                  synthetic_maps(N, COILS, seed=1)[0].numpy())
    assert cli(["import-kspace", "--input", tmp_path / "p.h5", "--output", tmp_path / "m.npz", "--acceleration",
                "1"], capsys)[0] == 0
    rc, _, err = cli(["reconstruct", "--input", tmp_path / "m.npz", "--output", tmp_path / "r.nrrd", "--method",
                      "tv", "--weight", "0", "--iters", "50", "--complex-output", tmp_path / "c.npy",
                      "--progress-format", "none"], capsys)
    assert rc == 0, err
    c = np.load(tmp_path / "c.npy")
    assert c.shape == (N, N) and c.dtype == np.complex64
    inside = mag > 0.1
    # the real-valued reconstruction recovered the magnitude, and the folded-in phase is the image's
    assert np.abs(np.abs(c) - mag * 1e-4)[inside].max() < 0.05 * 1e-4
    assert np.abs(np.angle(c * np.exp(-1j * theta)))[inside].max() < 0.1
    rc, _, err = cli(["reconstruct", "--input", tmp_path / "m.npz", "--output", tmp_path / "r.nrrd", "--method",
                      "sense", "--complex-output", tmp_path / "c.nrrd"], capsys)
    assert rc == 2 and ".npy" in err


@pytest.mark.parametrize("method", ["proximal", "fast"])
def test_samplers_with_the_multicoil_operator_find_the_gaussian_posterior_mean(method):
    """Under an exact Gaussian prior the posterior mean is the min-norm correction of μ (converged CGLS);
    the samplers with the multi-coil CG data-consistency step must land much closer to it than μ is."""
    from helpers import GaussianPrior, smooth_mean

    from ScoreReconLib.reconstruction import reconstruct
    from ScoreReconLib.sampling import cgls

    n = 16
    op = build_multicoil_operator(synthetic_maps(n, 4, seed=0), acceleration=2, center_fraction=0.25,
                                  mask="random", seed=1)
    mu = smooth_mean(n)
    prior = GaussianPrior(mu, 0.1, "MR")
    x_true = mu + 0.1 * torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
    y = op.A(x_true)
    post_mean = cgls(op, mu, y, 300)
    steps = {"proximal": 40, "fast": 30}[method]
    res = reconstruct(y, op, prior, method=method, steps=steps, lam=1.0, samples=4, seed=0, noise_std=0.0,
                      **({"snr": 0.16} if method == "proximal" else {}))
    rmse = lambda a, b: float(((a - b) ** 2).mean().sqrt())  # noqa: E731
    assert rmse(res.mean, post_mean) < 0.5 * rmse(mu, post_mean)
    assert float((op.A(res.mean) - y).abs().max()) < 0.05 * float(y.abs().max())


def test_missing_h5py_says_how_to_install(tmp_path, capsys, monkeypatch):
    (tmp_path / "f.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    rc, _, err = cli(["import-kspace", "--input", tmp_path / "f.h5", "--output", tmp_path / "m.npz"], capsys)
    assert rc == 2 and "pip install h5py" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------- issue 24: hostile HDF5 files
def _fastmri_variant(tmp_path: Path, edit) -> Path:
    h5py = pytest.importorskip("h5py")
    x = mr_ellipse()[0, 0].numpy()[None].astype(np.float32)
    maps = synthetic_maps(N, COILS, seed=1)[0].numpy()
    cols = np.zeros(N, np.float32)
    cols[::4] = 1
    cols[N // 2 - 2:N // 2 + 2] = 1
    path = tmp_path / "scan.h5"
    write_fastmri(path, x, maps, columns=cols)
    with h5py.File(path, "a") as f:
        edit(f, h5py)
    return path


@pytest.mark.parametrize("case, needle", [
    ("external-link", "link to another file"), ("parent-link", "link to another file"),
    ("external-storage", "external files"), ("virtual", "virtual dataset"),
    ("mask-half", "holds 0.5"), ("mask-two", "holds 2"), ("mask-nan", "holds nan"), ("mask-text", "expected 0/1"),
    ("maps-nan", "NaN or inf"), ("maps-zero", "all zero"), ("zero-coils", "zero coils"),
])
def test_hostile_hdf5_inputs_are_refused_by_name(tmp_path, capsys, case, needle):
    """A k-space file is read only from itself; masks hold 0/1; maps are finite and not empty (issue 24)."""
    other = tmp_path / "other.h5"

    def edit(f, h5py):
        k = np.asarray(f["kspace"])
        if case in ("external-link", "parent-link", "virtual"):
            with h5py.File(other, "w") as g:
                g["data"] = k
            del f["kspace"]
            if case == "virtual":
                layout = h5py.VirtualLayout(shape=k.shape, dtype=k.dtype)
                layout[...] = h5py.VirtualSource(str(other), "data", shape=k.shape)
                f.create_virtual_dataset("kspace", layout)
            else:
                target = str(other) if case == "external-link" else "../" + tmp_path.name + "/other.h5"
                f["kspace"] = h5py.ExternalLink(target, "/data")
        elif case == "external-storage":
            raw = tmp_path / "raw.bin"
            raw.write_bytes(k.tobytes())
            del f["kspace"]
            f.create_dataset("kspace", shape=k.shape, dtype=k.dtype, external=[(str(raw), 0, k.nbytes)])
        elif case.startswith("mask"):
            m = np.asarray(f["mask"]).astype(np.float32)
            del f["mask"]
            if case == "mask-text":
                f["mask"] = np.array([b"1"] * m.shape[0])
            else:
                m[1] = {"mask-half": 0.5, "mask-two": 2.0, "mask-nan": np.nan}[case]
                f["mask"] = m
        elif case.startswith("maps"):
            mp = np.asarray(f["sens_maps"])
            mp[...] = np.nan if case == "maps-nan" else 0
            f["sens_maps"][...] = mp
        elif case == "zero-coils":
            del f["kspace"]
            del f["sens_maps"]
            f["kspace"] = np.zeros((1, 0, 2 * N, N), np.complex64)

    path = _fastmri_variant(tmp_path, edit)
    rc, _, err = cli(["import-kspace", "--input", path, "--output", tmp_path / "m.npz"], capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "m.npz").exists()


def test_a_huge_declared_kspace_is_refused_before_it_is_read(tmp_path, capsys):
    """The expanded size is checked on the declared shape: a compressed dataset of zeros that would expand to
    8 GiB is refused at once (issue 24), and --slices is the way out."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "zeros.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(64, 32, 640, 640), dtype=np.complex64, chunks=(1, 1, 640, 640),
                         compression="gzip")  # nothing written: fill value zero, a few KB on disk
    t0 = __import__("time").perf_counter()
    rc, _, err = cli(["import-kspace", "--input", path, "--output", tmp_path / "m.npz"], capsys)
    assert rc == 2 and "expand to 6.2 GiB" in err and "--slices" in err, err
    assert __import__("time").perf_counter() - t0 < 10


def test_simulate_refuses_more_angles_than_the_reader_accepts(tmp_path, capsys):
    from ScoreReconLib.data import write_image

    img = tmp_path / "x.nrrd"
    write_image(Image(mr_ellipse()[0, 0].numpy() * 1000.0 - 1000.0, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "CT"),
                img)
    rc, _, err = cli(["simulate", "--task", "sparse-ct", "--n-angles", "10000000", "--input", img, "--output",
                      tmp_path / "m.npz"], capsys)
    assert rc == 2 and "--n-angles must be from 2 to 32768" in err


# ------------------------------------------------------------------------- h5py hint, fuzzed HDF5 files
def test_the_h5py_hint_names_what_works_from_a_checkout():
    from ScoreReconLib.kspace_io import INSTALL_H5PY

    assert "pip install h5py" in INSTALL_H5PY and 'pip install -e ".[mri]"' in INSTALL_H5PY
    assert "scorerecon[mri]'" not in INSTALL_H5PY  # not on the package index


@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_kspace_files(tmp_path, capsys, seed):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(100 + seed)
    path = tmp_path / "k.h5"
    n = 32
    with h5py.File(path, "w") as f:
        kind = seed % 6
        shape = [int(v) for v in rng.choice([0, 1, 2, 4, 16, n, 2 * n], size=int(rng.integers(2, 6)))]
        if kind == 0:  # plausible k-space of a random shape and dtype
            f["kspace"] = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        elif kind == 1:
            f["kspace"] = rng.standard_normal(shape).astype(np.float32)  # real-valued
        elif kind == 2:
            f.create_group("kspace")  # a group, not a dataset
        elif kind == 3:
            k = (rng.standard_normal((1, 2, 2 * n, n)) + 1j * rng.standard_normal((1, 2, 2 * n, n)))
            k = k.astype(np.complex64)
            f.create_dataset("kspace", data=k, compression="gzip", shuffle=True)
            f["mask"] = rng.choice(np.array([0.0, 1.0, 0.5, np.nan]), size=int(rng.choice([n, n + 1])))
        elif kind == 4:
            k = (rng.standard_normal((2, 2, 2 * n, n)) + 1j * rng.standard_normal((2, 2, 2 * n, n)))
            k = k.astype(np.complex64)
            f["kspace"] = k
            f["sens_maps"] = rng.standard_normal(shape).astype(np.complex64)
        else:
            f["kspace"] = np.zeros((1, 1, 2 * n, n), np.complex64)
            f["ismrmrd_header"] = pick(rng, ["<bad", "", "<ismrmrdHeader/>", "x" * 4])
    out = tmp_path / "m.npz"
    check_fuzz_case(["import-kspace", "--input", path, "--output", out, "--slices",
                     pick(rng, ["0:1", "5:9", "1:0", "0:2"])], out, capsys)
