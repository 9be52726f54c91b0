"""MRI simulated as a scanner acquires it: image phase, receive-coil maps with compact support, one noise σ per
acquisition, the estimated phase measured against the truth, the maps' support respected, the fine grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import cli, mr_ellipse

from ScoreReconLib.baselines import classical_reconstruct
from ScoreReconLib.coils import (
    _calibration_kspace,
    absorb_phase,
    calibration_rows,
    calibration_width,
    receive_coil_maps,
    sigpy_available,
)
from ScoreReconLib.data import Image
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.measurement import (
    crop_kspace,
    kspace_peak,
    load_measurement,
    object_support,
    phase_error,
    save_measurement,
    simulate,
    simulate_kspace,
    smooth_phase,
)
from ScoreReconLib.noise import estimate_noise_std
from ScoreReconLib.operators.mri import UndersampledMRI, ifft2c
from ScoreReconLib.operators.multicoil import MultiCoilMRI

N = 64


def phantom(n: int = N) -> torch.Tensor:
    """A smooth ellipse phantom (1, 1, n, n) in [0, 1]: edges blurred so a 64² grid resolves it."""
    x = mr_ellipse(n)
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def test_smooth_phase_is_seeded_smooth_and_spans_radians():
    a, b = smooth_phase(N, 3), smooth_phase(N, 4)
    assert a.shape == (1, 1, N, N) and a.dtype == torch.float32
    assert torch.equal(a, smooth_phase(N, 3)) and not torch.equal(a, b)
    step = max(float(a.diff(dim=-1).abs().max()), float(a.diff(dim=-2).abs().max()))
    assert step < 0.25  # radians per pixel at 64²: smooth, no wraps
    assert 0.5 < float(a.max() - a.min()) < 4 * math.pi  # a few radians across the field of view


def test_receive_maps_are_normalised_on_the_support_and_zero_outside():
    support = object_support(phantom())
    maps = receive_coil_maps(N, 8, seed=1, support=support)
    assert maps.shape == (1, 8, N, N) and maps.dtype == torch.complex64
    rss = (maps.abs() ** 2).sum(1, keepdim=True)
    assert torch.allclose(rss[support], torch.ones(()), atol=1e-5)
    assert float(rss[~support].abs().max()) == 0.0
    # roll-off: each coil is strongest near its own loop, so the coils' maxima sit in different places
    full = receive_coil_maps(N, 8, seed=1)
    peaks = {int(full[0, c].abs().argmax()) for c in range(8)}
    assert len(peaks) == 8
    assert not torch.equal(full, receive_coil_maps(N, 8, seed=2))


def test_object_support_covers_the_object_with_a_margin():
    x = phantom()
    support = object_support(x)
    assert support.dtype == torch.bool and bool(support[x > 0.02].all())
    assert int(support.sum()) > int((x > 0.02).sum())  # the margin
    assert not bool(object_support(torch.zeros(1, 1, N, N)).any())


@pytest.mark.parametrize("coils", [1, 4])
def test_default_simulation_has_phase_and_the_file_carries_the_estimate(tmp_path, coils):
    img = Image(phantom()[0, 0].numpy() * 100.0, (1.0, 1.0))
    m, ref, extra = simulate(img, "mri", acceleration=4, center_fraction=0.12, coils=coils, seed=2)
    assert m.options["phase"] == "smooth"
    acq = extra["mri"]
    assert acq.true_phase.abs().max() > 0.1
    op = load_measurement(save_measurement(tmp_path / "k.npz", m)).operator()
    assert isinstance(op, MultiCoilMRI) and op.coils == coils and op.phase is not None
    # the estimate is not the truth, but close: the measured error is recorded
    err = m.options["phase_error_rad"][0]
    assert 0 < err < 0.15
    assert err == pytest.approx(phase_error(op, acq.true_maps, acq.true_phase, ref)[0], abs=1e-3)
    # the real reconstructions work on the magnitude: TV with the estimated phase beats zero-filled
    y = m.y_tensor()
    tv = classical_reconstruct("tv", y, op)
    zf = classical_reconstruct("zero-filled", y, op)
    assert float((tv - ref).pow(2).mean()) < float((zf - ref).pow(2).mean())


def test_zero_phase_single_coil_keeps_the_exact_single_coil_operator():
    img = Image(phantom()[0, 0].numpy() * 100.0, (1.0, 1.0))
    m, ref, _ = simulate(img, "mri", acceleration=4, phase="zero", seed=2)
    op = m.operator()
    assert isinstance(op, UndersampledMRI) and "coils" not in m.operator_spec
    assert torch.allclose(op.A(ref), m.y_tensor(), atol=1e-5)


def test_noise_is_one_sigma_per_acquisition_for_any_number_of_coils():
    x = phantom()
    single = simulate_kspace(x, coils=1, noise=0.01, seed=0, noise_seed=5)
    multi = simulate_kspace(x, coils=8, noise=0.01, seed=0, noise_seed=5)
    expected = 0.01 * float(kspace_peak(x)[0])
    assert single.noise_std[0] == pytest.approx(expected, rel=1e-6)
    assert multi.noise_std[0] == pytest.approx(expected, rel=1e-6)
    clean = simulate_kspace(x, coils=8, noise=0.0, seed=0)
    eps = (multi.y - clean.y)[torch.broadcast_to(clean.operator.mask > 0, clean.y.shape)]
    assert float(eps.abs().pow(2).mean().sqrt()) == pytest.approx(expected, rel=0.05)
    # every coil gets the same σ, whatever its sensitivity
    per_coil = (multi.y - clean.y).abs().pow(2).sum(dim=(-2, -1)) / clean.operator.mask.sum()
    assert float(per_coil.max() / per_coil.min()) < 1.3


@pytest.mark.parametrize("coils", [1, 8])
def test_noise_estimate_is_within_20_percent_with_phase_and_coils(coils):
    x = phantom(128)
    for noise in (0.002, 0.01):
        acq = simulate_kspace(x, coils=coils, noise=noise, acceleration=4, seed=1)
        est = estimate_noise_std(acq.operator, acq.y)
        assert est == pytest.approx(acq.noise_std[0], rel=0.2)
    clean = simulate_kspace(x, coils=coils, noise=0.0, acceleration=4, seed=1)
    assert estimate_noise_std(clean.operator, clean.y) < 1e-3 * float(clean.y.abs().max())


def test_phase_estimate_uses_the_whole_readout_of_1d_masks():
    x = phantom(128)
    acq = simulate_kspace(x, coils=1, acceleration=4, center_fraction=0.08, seed=1)
    lam = acq.operator.mask[0, 0]
    width = calibration_width(lam)
    assert calibration_rows(lam, width) == 128  # equispaced columns: every row of the centre columns
    ones = torch.ones(1, 1, 128, 128, dtype=torch.complex64)
    square = torch.angle(ifft2c(_calibration_kspace(acq.y, width))).float()
    err_square = phase_error(MultiCoilMRI(ones, lam, square), ones, acq.true_phase, x)[0]
    err_readout = phase_error(MultiCoilMRI(ones, lam, absorb_phase(ones, acq.y, lam)), ones, acq.true_phase, x)[0]
    assert err_readout < 0.8 * err_square
    # a 2-D mask has no fully sampled readout: the square centre
    poisson = simulate_kspace(x, coils=1, acceleration=4, mask="poisson", seed=1).operator.mask[0, 0]
    w2 = calibration_width(poisson)
    assert calibration_rows(poisson, w2) == w2


def test_reconstructions_are_zero_outside_the_maps_support():
    x = phantom()
    acq = simulate_kspace(x, coils=4, acceleration=3, center_fraction=0.12, noise=0.005, seed=3)
    op = acq.operator
    support = op.image_support()
    assert support is not None and bool((~support).any())
    for method in ("zero-filled", "tv", "sense"):
        out = classical_reconstruct(method, acq.y, op)
        assert float(out[~torch.broadcast_to(support, out.shape)].abs().max()) == 0.0, method
    assert simulate_kspace(x, coils=1, seed=3).operator.image_support() is None  # a body coil sees everything


def test_fine_grid_data_match_the_grid_and_are_not_the_operator_s():
    fine = phantom(128)
    x = F.interpolate(fine, size=(N, N), mode="area")
    for coils in (1, 4):
        same = simulate_kspace(x, coils=coils, acceleration=1, seed=2)
        again = simulate_kspace(x, coils=coils, acceleration=1, seed=2, fine=x)
        assert torch.equal(same.y, again.y)
        finer = simulate_kspace(x, coils=coils, acceleration=1, seed=2, fine=fine)
        rel = float((finer.y - same.y).norm() / same.y.norm())
        assert 1e-4 < rel < 0.03  # registered (a half-pixel slip would be far larger), yet not identical
    with pytest.raises(ScoreReconError, match="fine grid"):
        crop_kspace(torch.zeros(1, 1, 8, 8, dtype=torch.complex64), 16)
    with pytest.raises(ScoreReconError, match="fine-grid"):
        simulate_kspace(x, fine=fine[..., :32, :32])


def test_acquisition_options_are_checked(tmp_path, capsys):
    img = Image(phantom()[0, 0].numpy(), (1.0, 1.0))
    with pytest.raises(ScoreReconError, match="--phase"):
        simulate(img, "mri", phase="random")
    with pytest.raises(ScoreReconError, match="single-coil"):
        simulate(img, "mri", maps="lowres")
    with pytest.raises(ScoreReconError, match="--maps"):
        simulate(img, "sparse-ct", maps="lowres")
    src = tmp_path / "img.npy"
    np.save(src, phantom()[0, 0].numpy() * 50.0)
    rc, out, _ = cli(["simulate", "--task", "mri", "--coils", "4", "--maps", "lowres", "--input", src,
                      "--output", tmp_path / "k.npz"], capsys)
    assert rc == 0 and "smooth phase" in out and "phase estimate off by" in out
    m = load_measurement(tmp_path / "k.npz")
    assert m.options["maps"] == "lowres" and m.operator_spec["maps_source"] == "lowres"


@pytest.mark.skipif(not sigpy_available(), reason="sigpy (optional, pip install sigpy) is not installed")
def test_espirit_gives_zero_maps_for_an_empty_slice():
    from ScoreReconLib.coils import espirit_maps

    x = torch.cat([phantom(), torch.zeros(1, 1, N, N)])
    acq = simulate_kspace(x, coils=4, acceleration=1, seed=0)
    maps = espirit_maps(acq.y, 12)
    assert bool(torch.isfinite(torch.view_as_real(maps)).all()) and float(maps[1].abs().max()) == 0.0


def test_phase_inconsistency_reads_the_phase_the_estimate_missed_and_sets_the_one_coil_weight():
    from ScoreReconLib.coils import phase_inconsistency
    from ScoreReconLib.parameter_choice import NOISE_FREE_WEIGHT, PHASE_WEIGHT_FACTOR, noise_free_weight

    x = phantom(128)
    real = simulate_kspace(x, coils=1, phase="zero", acceleration=4, seed=1)
    ones = torch.ones(1, 1, 128, 128, dtype=torch.complex64)
    assert phase_inconsistency(real.y, real.operator.mask, ones) < 1e-3  # a real image: nothing left over
    smooth = simulate_kspace(x, coils=1, acceleration=4, seed=1)
    op = smooth.operator
    rho = phase_inconsistency(smooth.y, op.mask, op.maps)
    assert 0.005 < rho < 0.5
    # the same data under a phase off by a ramp read a larger inconsistency
    ramp = torch.linspace(-0.6, 0.6, 128).reshape(1, 1, 1, 128)
    worse = MultiCoilMRI(ones, op.mask[0, 0], op.phase + ramp)
    assert phase_inconsistency(smooth.y, op.mask, worse.maps) > 1.5 * rho
    expected = max(NOISE_FREE_WEIGHT["mri-1d"], PHASE_WEIGHT_FACTOR * rho**2)
    assert noise_free_weight(op, "tv", "tv", smooth.y) == pytest.approx(expected)
    # several coils and the zero-phase single coil keep their fixed values
    multi = simulate_kspace(x, coils=4, acceleration=4, seed=1).operator
    assert noise_free_weight(multi, "tv", "tv", None) == NOISE_FREE_WEIGHT["mri-1d-coils"]
    assert noise_free_weight(real.operator, "tv", "tv", real.y) == NOISE_FREE_WEIGHT["mri-1d"]


def test_simulate_warns_when_the_estimated_phase_is_far_off(tmp_path, capsys):
    src = tmp_path / "img.npy"
    np.save(src, phantom()[0, 0].numpy() * 50.0)
    args = ["simulate", "--task", "mri", "--acceleration", "4", "--seed", "1", "--input", src, "--output"]
    rc, _, err = cli(args + [tmp_path / "narrow.npz", "--center-fraction", "0.04"], capsys)  # a 3-column centre
    m = load_measurement(tmp_path / "narrow.npz")
    assert rc == 0 and max(m.options["phase_error_rad"]) > 0.2
    assert "warning: the image phase estimated" in err and "--center-fraction" in err
    rc, _, err = cli(args + [tmp_path / "real.npz", "--center-fraction", "0.04", "--phase", "zero"], capsys)
    assert rc == 0 and "warning" not in err
