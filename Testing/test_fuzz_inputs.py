"""Seeded fuzzing of the inputs added since the first hardening round (issue 24): sinogram .npz files for
import-sinogram and fastMRI-format HDF5 files for import-kspace. Every case must end in exit 0 or a one-line
refusal (exit 2) that leaves no output: never an internal error (exit 1) or a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from ScoreReconLib.cli import main

DTYPES = [np.float32, np.float64, np.int16, np.uint8, np.complex64, np.bool_, "U3"]


def _check(argv, out, capsys):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "warning" not in ln and "note:" not in ln]
    assert rc in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if rc == 2:
        assert len(lines) == 1, err
        assert not out.exists()
    return rc


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _sinogram_case(rng: np.random.Generator) -> dict:
    shape = [int(v) for v in rng.choice([0, 1, 2, 3, 16, 47, 91], size=int(rng.integers(1, 5)))]
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    if dtype == "U3":
        sino = np.full(shape, "abc")
    else:
        sino = (rng.standard_normal(shape) * 10).astype(dtype)
        if dtype in (np.float32, np.float64) and sino.size and rng.random() < 0.3:
            sino.flat[int(rng.integers(sino.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
    case = {"sinogram": sino}
    if rng.random() < 0.7:
        case["spacing"] = _pick(rng, [np.array([0.5, 1.0, 2.0]), np.array([0.0, 1.0, 1.0]), np.array([1.0]),
                                      np.array([np.nan, 1.0, 1.0]), np.array(["a", "b", "c"]), np.ones((2, 3))])
    if rng.random() < 0.5:
        case["z0"] = _pick(rng, [np.float64(0.0), np.float64(np.nan), np.array([1.0, 2.0]), np.array("x")])
    return case


@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_sinogram_files(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    src = tmp_path / "s.npz"
    np.savez(src, **_sinogram_case(rng))
    if rng.random() < 0.25:  # truncated on disk
        src.write_bytes(src.read_bytes()[: max(1, int(src.stat().st_size * rng.random()))])
    task = ["sparse-ct", "limited-angle-ct", "metal-ct"][seed % 3]
    out = tmp_path / "m.npz"
    _check(["import-sinogram", "--input", src, "--output", out, "--task", task, "--views", str(1 + seed % 20)],
           out, capsys)


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
            f["ismrmrd_header"] = _pick(rng, ["<bad", "", "<ismrmrdHeader/>", "x" * 4])
    out = tmp_path / "m.npz"
    _check(["import-kspace", "--input", path, "--output", out, "--slices", _pick(rng, ["0:1", "5:9", "1:0", "0:2"])],
           out, capsys)


def _measurement(tmp_path):
    from ScoreReconLib.data import Image
    from ScoreReconLib.measurement import save_measurement, simulate

    yy, xx = np.mgrid[0:32, 0:32]
    img = np.where(np.hypot(yy - 16, xx - 16) < 12, 40.0, -1000.0).astype(np.float32)
    m, _, _ = simulate(Image(img, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "CT"), "sparse-ct", views=8)
    save_measurement(tmp_path / "base.npz", m)
    return tmp_path / "base.npz"


VALUES = [0, -1, 1, 2.5, 1e12, 10**9, float("nan"), float("inf"), "x", None, True, [1, 2], {"a": 1}, 33, 4096]


@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_measurement_header_counts(tmp_path, capsys, seed):
    """Counts and geometry numbers in a measurement header, set at random: exit 0 or one line, quickly."""
    import json
    import time

    rng = np.random.default_rng(500 + seed)
    base = _measurement(tmp_path)
    with np.load(base, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    header = json.loads(str(content["header"][()]))
    for _ in range(int(rng.integers(1, 4))):
        field = _pick(rng, [("operator", "n_angles"), ("operator", "n_det"), ("operator", "cg_iterations"),
                            ("operator", "image_size"), ("operator", "arc"), ("n_slices", None), ("noise_std", None),
                            ("geometry", "spacing"), ("geometry", "ndim"), ("seed", None)])
        value = _pick(rng, VALUES)
        if field[1] is None:
            header[field[0]] = value
        elif isinstance(header.get(field[0]), dict):
            header[field[0]][field[1]] = value
    content["header"] = np.array(json.dumps(header, allow_nan=True))
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as fh:
        np.savez_compressed(fh, **content)
    out = tmp_path / "r.nrrd"
    t0 = time.perf_counter()
    _check(["reconstruct", "--input", bad, "--output", out, "--method", "fbp", "--progress-format", "none"], out,
           capsys)
    assert time.perf_counter() - t0 < 30  # no number in the file can make it hang
