"""BART peer (benchmarks/bart_peer.py): the CFL format always; with BART installed, our k-space / FFT / axes / scaling
conventions against ``bart pics`` and ``bart ecalib`` on fully sampled noise-free data (skipped without BART)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ScoreReconLib.coils import synthetic_maps
from ScoreReconLib.operators.mri import equispaced_mask, fft2c

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks import bart_peer as bp  # noqa: E402

BART = bp.find_bart()
needs_bart = pytest.mark.skipif(BART is None, reason="BART not found ($BART_PATH, PATH, ~/.cache/scorerecon/bart); "
                                "'python benchmarks/bart_peer.py --install-bart' installs it without root")
N = 64
COILS = 8


def rand_complex(shape: tuple[int, ...], seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) + 1j * g.standard_normal(shape)).astype(np.complex64)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (N, N), true maps (C, N, N) with Σ|S|² = 1, fully sampled noise-free k-space (C, N, N))."""
    x = bp.test_image(N)
    s = synthetic_maps(N, COILS, seed=1)[0].numpy()
    return x, s, fft2c(torch.from_numpy(s * x)).numpy()


# ---------------------------------------------------------------------------------------- no BART needed
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 1, 4), (1, 2, 1, 1, 3), (2,) * 16])
def test_cfl_round_trip(tmp_path, shape):
    a = rand_complex(shape, 0)
    bp.write_cfl(tmp_path / "a", a)
    hdr = (tmp_path / "a.hdr").read_text().splitlines()
    assert hdr[0] == "# Dimensions" and len(hdr[1].split()) == 16
    b = bp.read_cfl(tmp_path / "a")
    assert b.dtype == np.complex64
    np.testing.assert_array_equal(b.reshape(b.shape + (1,) * (a.ndim - b.ndim)), a)


def test_cfl_is_column_major_complex64(tmp_path):
    a = np.arange(6).reshape(2, 3) + 1j * np.arange(6).reshape(2, 3)
    bp.write_cfl(tmp_path / "a", a)
    raw = np.fromfile(tmp_path / "a.cfl", dtype="<f4")
    np.testing.assert_array_equal(raw[0::2], [0, 3, 1, 4, 2, 5])  # first dim fastest
    assert (tmp_path / "a.hdr").read_text().split("\n")[1].startswith("2 3 1 1")


def test_cfl_reads_bart_headers_with_more_lines(tmp_path):
    (tmp_path / "b.hdr").write_text("# Dimensions\n2 1 3 1 1\n# Command\nbart fft 3 a b\n")
    a = rand_complex((2, 1, 3), 1)
    a.ravel(order="F").astype("<c8").tofile(tmp_path / "b.cfl")
    np.testing.assert_array_equal(bp.read_cfl(tmp_path / "b"), a)
    (tmp_path / "c.hdr").write_text("# Dimensions\n4 4\n")
    a[:1].ravel().astype("<c8").tofile(tmp_path / "c.cfl")
    with pytest.raises(ValueError, match="header says 16"):
        bp.read_cfl(tmp_path / "c")


def test_our_axes_to_bart_dims_and_back():
    y = rand_complex((3, 5, 5), 2)
    b = bp.to_bart(y)
    assert b.shape == (5, 5, 1, 3) and b[4, 1, 0, 2] == y[2, 1, 4]  # BART (x, y, z, coil) ← ours (coil, y, x)
    np.testing.assert_array_equal(bp.from_bart(b, coils=True), y)
    np.testing.assert_array_equal(bp.from_bart(bp.to_bart(y[0]), coils=False), y[0])


def test_missing_bart_names_the_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BART_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SCORERECON_CACHE", str(tmp_path))
    assert bp.find_bart() is None
    with pytest.raises(RuntimeError, match=r"--install-bart.*apt-get install bart"):
        bp.pics(np.zeros((1, 8, 8), np.complex64), np.ones((1, 8, 8), np.complex64))
    with pytest.raises(RuntimeError, match="not a working bart"):
        bp.find_bart(tmp_path / "nowhere" / "bart")


# --------------------------------------------------------------------------------------------- with BART
@needs_bart
def test_failing_command_raises_with_stderr(tmp_path):
    with pytest.raises(RuntimeError, match=r"'bart fft -u 3 missing out' failed.*missing"):
        BART.run(["fft", "-u", "3", "missing", "out"], threads=1, cwd=tmp_path)


@needs_bart
def test_bart_centred_fft_is_ours(tmp_path, phantom):
    x = phantom[0]
    bp.write_cfl(tmp_path / "x", bp.to_bart(x))
    BART.run(["fft", "-u", "3", "x", "k"], threads=1, cwd=tmp_path)
    k = bp.from_bart(bp.read_cfl(tmp_path / "k"), coils=False)
    assert bp.psnr(k, fft2c(torch.from_numpy(x)).numpy()) > 100


@needs_bart
def test_sense_fully_sampled_returns_the_image(phantom):
    x, s, y = phantom
    rec, seconds = bp.sense(y, s, 5, bart=BART, threads=1)
    assert rec.shape == (N, N) and rec.dtype == np.complex64 and seconds > 0
    assert bp.psnr(rec, x) > 100
    # transposed axes would be caught: the same data with rows and columns swapped is far off
    assert bp.psnr(bp.sense(y.transpose(0, 2, 1), s, 5, bart=BART, threads=1)[0], x) < 30


@pytest.mark.parametrize("regularizer", ["wavelet", "tv"])
@needs_bart
def test_pics_tiny_weight_returns_the_image_in_our_units(phantom, regularizer):
    """No data rescaling (-w 1): a 1000× k-space gives the 1000× image, also with a regulariser."""
    x, s, y = phantom
    for gain in (1.0, 1000.0):
        rec, _ = bp.pics(y * gain, s, regularizer, 1e-9 * gain, 30, bart=BART, threads=1)
        assert bp.psnr(rec / gain, x) > 100


@needs_bart
def test_pics_l2_weight_convention(phantom):
    x, s, y = phantom
    rec, _ = bp.pics(y, s, "l2", 1.0, 20, bart=BART, threads=1)  # argmin ½‖Ax − y‖² + ½·w‖x‖² = x / (1 + w)
    assert bp.psnr(rec, x / 2) > 100


@needs_bart
def test_pics_real_constraint(phantom):
    x, s, _ = phantom
    xr = np.abs(x)
    y = fft2c(torch.from_numpy(s * xr)).numpy() + 0.01 * rand_complex(s.shape, 3)
    free, _ = bp.pics(y, s, "wavelet", 1e-4, 30, bart=BART, threads=1)
    real, _ = bp.pics(y, s, "wavelet", 1e-4, 30, real=True, bart=BART, threads=1)
    assert np.abs(free.imag).max() > 1e-3 and np.abs(real.imag).max() == 0
    assert bp.psnr(real, xr) > bp.psnr(free, xr)


@needs_bart
def test_ecalib_gives_the_maps_up_to_a_phase(phantom):
    x, s, y = phantom
    support = np.abs(x) > 0.05
    maps, seconds = bp.ecalib(y, bart=BART, threads=1)
    assert maps.shape == (COILS, N, N) and seconds > 0
    assert np.abs((maps.conj() * s).sum(0))[support].min() > 0.99  # |<S_est, S>| = 1: S_est = S e^{iφ}
    combined = (maps.conj() * bp.ifft(y)).sum(0)
    assert bp.psnr(np.abs(combined), np.abs(x)) > 60
    mask = equispaced_mask(N, 4, 0.25).numpy()
    maps, _ = bp.ecalib(y * mask, calib_width=12, crop=0.0, bart=BART, threads=1)
    assert np.abs((maps.conj() * s).sum(0))[support].mean() > 0.99
