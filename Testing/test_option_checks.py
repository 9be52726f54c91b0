"""Option values (CLI and API): non-finite numbers, out-of-range counts, bad devices refused before work."""

from __future__ import annotations

import pytest
from helpers import assert_refused

from ScoreReconLib.errors import ScoreReconError


@pytest.mark.parametrize("flag", ["--snr", "--lam", "--t-start"])
def test_nan_sampler_options_are_refused(ct_files, tmp_path, capsys, flag):
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "score", flag,
                    "nan"], capsys, out, "finite")


def test_api_refuses_nan_snr():
    from ScoreReconLib.networks import load_prior
    from ScoreReconLib.reconstruction import resolve_settings

    prior = load_prior("default-ct")
    with pytest.raises(ScoreReconError, match="finite"):
        resolve_settings("proximal", prior, snr=float("nan"))
    with pytest.raises(ScoreReconError, match="number"):
        resolve_settings("proximal", prior, lam="abc")


@pytest.mark.parametrize("device", ["mps", "xla", "meta", "garbage", "cuda:99", "cpu:x"])
def test_bad_device_values(ct_files, tmp_path, capsys, device):
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "fbp",
                    "--device", device], capsys, out, "--device")


def test_sampler_steps_are_bounded(ct_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "score",
                           "--steps", "1000000"], capsys, out, "--steps")
    assert "10000" in line
    line = assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "score",
                           "--steps", "1e6"], capsys, out, "--steps")


def test_sample_with_one_step_says_at_least_10(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["sample", "--model", "default-ct", "--output", out / "s.png", "--steps", "1", "--size",
                           "16", "--n", "1"], capsys, out)
    assert "at least 10" in line and "N=1000" not in line


def test_huge_counts_on_the_command_line_are_refused(ct_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "tv",
                    "--iters", "1000000000", "--progress-format", "none"], capsys, out, "--iters must be a whole")
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "score",
                    "--samples", "1000000000", "--progress-format", "none"], capsys, out, "from 1 to 1024")
    assert_refused(["import-kspace", "--input", ct_files["meas"], "--output", out / "k.npz", "--cg-iterations",
                    "1000000000"], capsys, out, "--cg-iterations must be a whole number from 1 to 1000")


def test_a_huge_sample_count_in_tuned_json_is_refused(tiny_ct_16, tmp_path, capsys):
    from ScoreReconLib.errors import ScoreReconError
    from ScoreReconLib.networks import load_prior
    from ScoreReconLib.reconstruction import recommended_samples

    prior = load_prior(str(tiny_ct_16))
    prior.recommended = {"sampler": "proximal", "samples": 1e9}
    with pytest.raises(ScoreReconError, match="recommended samples .* from 1 to 1024"):
        recommended_samples(prior, "proximal")
    prior.recommended = {"sampler": "proximal", "cg_iters": 10**9}
    from ScoreReconLib.reconstruction import resolve_settings

    with pytest.raises(ScoreReconError, match="cg_iters .* from 1 to 1000"):
        resolve_settings("proximal", prior)


def test_small_refusals_of_issue_24(ct_files, tmp_path, capsys):
    """--model '' is not silently default-ct; cpu:5 is no device; --noise-std without a use is refused."""
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "score",
                    "--model", "", "--progress-format", "none"], capsys, out, "--model is empty")
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "fbp",
                    "--device", "cpu:5", "--progress-format", "none"], capsys, out, "no numbered devices")
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "score",
                    "--sampler", "fast", "--init", "noise", "--noise-std", "0.1", "--progress-format", "none"],
                   capsys, out, "--noise-std applies to the proximal sampler")
