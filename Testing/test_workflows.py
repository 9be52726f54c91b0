"""End-to-end workflows: evaluate, tune, demo, the shipped priors and a new user's first steps.

tune's sidecar is picked up by load_prior; the proximal sampler beats FBP on a sparse-view problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, ellipse_insert

from ScoreReconLib.cli import main
from ScoreReconLib.data import Image, write_image
from ScoreReconLib.networks import load_prior

N = 32


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ct")
    for i, s in enumerate((-0.3, 0.3)):
        write_image(Image(ellipse_insert(N, insert_at=(s, 0.0)), (1.0, 1.0)), d / f"case{i}.nrrd")
    return d


def test_evaluate_writes_table_and_records(tiny_ct, ct_folder, tmp_path, capsys):
    rc, out, err = cli(["evaluate", "--model", tiny_ct, "--data", ct_folder, "--task", "sparse-ct", "--views", "8",
                        "--steps", "2", "--device", "cpu", "--output", tmp_path / "ev"], capsys)
    assert rc == 0, err
    assert "| fbp |" in out and "| tv |" in out and "| score-proximal |" in out
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {r["method"] for r in res["records"]} == {"fbp", "tv", "score-proximal"}
    assert len(res["records"]) == 6 and res["summary"]["fbp"]["n"] == 2


def test_evaluate_rejects_a_method_of_another_task(tiny_ct, ct_folder, capsys):
    rc, _, err = cli(["evaluate", "--model", tiny_ct, "--data", ct_folder, "--task", "sparse-ct",
                      "--methods", "zero-filled"], capsys)
    assert rc == 2 and "does not fit sparse-ct" in err


def test_tune_writes_sidecar_that_load_prior_uses(tiny_ct, ct_folder, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_ct, model)
    rc, out, err = cli(["tune", "--model", model, "--data", ct_folder, "--task", "sparse-ct", "--views", "8",
                        "--lams", "0.5,1.0", "--steps", "2", "--sampler", "fast", "--device", "cpu"], capsys)
    assert rc == 0, err
    choice = json.loads(out.strip().splitlines()[-1])["choice"]
    side = json.loads((model / "tuned.json").read_text())
    assert side["tasks"]["sparse-ct"]["fast"]["lam"] == choice["lam"]
    assert len(side["tasks"]["sparse-ct"]["fast"]["grid"]) == 2
    from ScoreReconLib.reconstruction import resolve_settings

    prior = load_prior(model)
    assert resolve_settings("fast", prior, task="sparse-ct").lam == choice["lam"]
    assert resolve_settings("fast", prior, task="sparse-ct", lam=0.3).lam == 0.3  # the call still wins


def test_demo_on_the_shipped_sample(tiny_ct, tmp_path, capsys):
    out_dir = tmp_path / "demo"
    rc, out, err = cli(["demo", "--model", tiny_ct, "--steps", "2", "--samples", "2", "--device", "cpu",
                        "--output", out_dir], capsys)
    assert rc == 0, err
    names = {p.name for p in out_dir.iterdir()}
    assert {"reference.nrrd", "fbp.nrrd", "tv.nrrd", "scorerecon.nrrd", "scorerecon-std.nrrd", "demo.png",
            "metrics.json"} <= names
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert [r["method"] for r in metrics["results"]] == ["fbp", "tv", "ScoreRecon"]
    assert "PSNR" in out
    assert metrics["nfe_per_slice"] == 2 * metrics["nfe_per_sample"] and metrics["samples"] == 2


def test_demo_covers_limited_angle_ct_with_noise(tiny_ct, tmp_path, capsys):
    """Every task the CLI simulates has a demo (issue 20), and the demo can add measurement noise."""
    from ScoreReconLib.operators import TASKS

    sub = next(a for a in __import__("ScoreReconLib.cli", fromlist=["x"]).build_parser()._actions
               if a.dest == "command").choices["demo"]
    task_action = next(a for a in sub._actions if a.dest == "task")
    assert set(task_action.choices) == set(TASKS)
    out_dir = tmp_path / "demo-la"
    rc, out, err = cli(["demo", "--task", "limited-angle-ct", "--arc", "100", "--noise", "0.01", "--model", tiny_ct,
                        "--steps", "2", "--samples", "1", "--device", "cpu", "--output", out_dir], capsys)
    assert rc == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["task"] == "limited-angle-ct" and metrics["noise"] == 0.01
    assert [r["method"] for r in metrics["results"]] == ["fbp", "tv", "ScoreRecon"]


@pytest.mark.parametrize("name,modality", [("default-ct", "CT"), ("default-mri", "MR")])
def test_shipped_priors_load_and_run(name, modality):
    from ScoreReconLib.operators import build_operator
    from ScoreReconLib.reconstruction import recommended_samples, reconstruct, resolve_settings

    prior = load_prior(name)
    assert prior.kind == "patch" and prior.any_size and prior.working_size == 128 and prior.modality == modality
    task = "sparse-ct" if modality == "CT" else "mri"
    settings = resolve_settings("proximal", prior, task=task)  # the shipped recommendation is valid
    assert settings.steps >= 1 and recommended_samples(prior, "proximal", task) >= 1
    for n in (64, 96):  # any size, at the input's own grid
        op = build_operator(task, n, **({"views": 23} if task == "sparse-ct" else {"acceleration": 8}))
        x = torch.zeros(1, 1, n, n)
        x[..., n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 0.4
        res = reconstruct(op.A(x), op, prior, method="fast", steps=3, seed=0, samples=1)
        assert res.mean.shape == (1, 1, n, n) and torch.isfinite(res.mean).all() and res.nfe == 3


def test_proximal_sampler_beats_fbp_on_sparse_view():
    """Gaussian prior (exact score): the posterior mean from 8 views is closer to the truth than FBP."""
    from helpers import gaussian_problem

    from ScoreReconLib.metrics import psnr
    from ScoreReconLib.reconstruction import reconstruct

    op, prior, x_true, y, _ = gaussian_problem("sparse-ct")
    res = reconstruct(y, op, prior, method="proximal", steps=100, lam=1.0, snr=0.16, samples=4, seed=0)
    fbp = op.A_dagger(y)
    assert float(psnr(res.mean, x_true, data_range=1.0)[0]) > float(psnr(fbp, x_true, data_range=1.0)[0]) + 2


def test_the_shipped_priors_calibrate_their_posterior_std():
    """The std is the samples' spread times the prior's std_scale for the task (issue 19), recorded in settings."""
    from ScoreReconLib.errors import ScoreReconError
    from ScoreReconLib.operators import build_operator
    from ScoreReconLib.reconstruction import reconstruct, std_scale_for

    prior = load_prior("default-ct")
    factor = std_scale_for(prior, "proximal", "sparse-ct")
    assert factor > 1 and std_scale_for(prior, "fast", "sparse-ct") == 1.0  # fitted for the default sampler only
    op = build_operator("sparse-ct", 32, views=8)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 8:24] = 0.5
    y = op.A(x)
    raw = reconstruct(y, op, prior, samples=2, steps=1, seed=0, std_scale=1.0)
    cal = reconstruct(y, op, prior, samples=2, steps=1, seed=0)
    assert cal.settings["std_scale"] == factor and raw.settings["std_scale"] == 1.0
    assert torch.allclose(cal.std, raw.std * factor) and torch.equal(cal.mean, raw.mean)
    with pytest.raises(ScoreReconError, match="std_scale"):
        reconstruct(y, op, prior, samples=2, steps=1, std_scale=float("nan"))


def test_std_scale_follows_the_sampling_of_the_operator():
    """std_scale as [undersampling, factor] points (log-linear between, clamped outside) and per operator kind."""
    import types

    from ScoreReconLib.errors import ScoreReconError
    from ScoreReconLib.operators import build_operator
    from ScoreReconLib.reconstruction import std_scale_for, undersampling

    ct = types.SimpleNamespace(recommended={"tasks": {"sparse-ct": {"proximal": {"std_scale": [[4, 2.0], [16, 6.0]]}}}})
    assert undersampling(build_operator("sparse-ct", 64, views=8)) == pytest.approx(8.0)
    assert std_scale_for(ct, "proximal", "sparse-ct", build_operator("sparse-ct", 64, views=8)) == pytest.approx(4.0)
    assert std_scale_for(ct, "proximal", "sparse-ct", build_operator("sparse-ct", 64, views=64)) == pytest.approx(2.0)
    assert std_scale_for(ct, "proximal", "sparse-ct", build_operator("sparse-ct", 64, views=2)) == pytest.approx(6.0)
    mr = types.SimpleNamespace(recommended={"tasks": {"mri": {"proximal": {"std_scale": {"mri-1d": 3.0,
                                                                                         "mri-2d": 5.0}}}}})
    assert std_scale_for(mr, "proximal", "mri", build_operator("mri", 64, acceleration=4)) == 3.0
    assert std_scale_for(mr, "proximal", "mri", build_operator("mri", 64, acceleration=4, mask="poisson")) == 5.0
    bad = types.SimpleNamespace(recommended={"tasks": {"mri": {"proximal": {"std_scale": [[0.5, 1.0]]}}}})
    with pytest.raises(ScoreReconError, match="undersampling values >= 1"):
        std_scale_for(bad, "proximal", "mri", build_operator("mri", 64, acceleration=4))


def test_panel_figure_draws_colour_bars_and_outlines(tmp_path):
    from PIL import Image as PILImage

    from ScoreReconLib.figures import BAR_WIDTH, panel_figure

    img = np.linspace(-1000, 2000, 32 * 32, dtype=np.float32).reshape(32, 32)
    metal = np.zeros((32, 32), bool)
    metal[10:14, 10:14] = True
    path = panel_figure([("a", img, -160.0, 240.0, "HU", metal), ("b", img, 0.0, 1.0)], tmp_path / "f.png", scale=4)
    rgb = np.asarray(PILImage.open(path).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red[:, :128].any() and not red[:, 128:].any()  # the outline only where it was asked for
    bar = rgb[16 + 2:16 + 126, 128 - BAR_WIDTH // 2, 0]  # the grey bar of panel a, top (bright) to bottom (dark)
    assert bar[0] > 200 and bar[-1] < 60 and (np.diff(bar) <= 0).all()


# ----------------------------------------------------------------------------- first steps
def test_a_missing_data_folder_says_how_to_make_it(tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tmp_path / "data" / "heldout" / "ct"), "--task", "sparse-ct",
               "--model", "default-ct", "--methods", "fbp"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "scorerecon prepare-data --output data" in err
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "ckpt"), "--size", "32",
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "scorerecon prepare-data --output data" in err


def test_evaluate_writes_a_comparison_figure_per_slice(tmp_path):
    """evaluate --output (issue 19 item 5): besides the table and JSON, one figure per slice with every method in
    the CT windows, |error| and std on one scale."""
    from PIL import Image as PILImage

    from ScoreReconLib.cli import main
    from ScoreReconLib.resources import resource_path

    out = tmp_path / "ev"
    assert main(["evaluate", "--model", "default-ct", "--data", str(resource_path("samples", "ct_head_sample.nrrd")),
                 "--task", "sparse-ct", "--n-images", "1", "--steps", "2", "--samples", "2", "--size", "64",
                 "--output", str(out)]) == 0
    figures = sorted((out / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["00_ct_head_sample_nrrd.png"]
    with PILImage.open(figures[0]) as img:  # 4 columns (reference, FBP, TV, ScoreRecon) × 3 rows of 64² at scale 2
        assert img.size == (4 * 128, 3 * (128 + 16))
    assert (out / "table.md").exists() and (out / "results.json").exists()
