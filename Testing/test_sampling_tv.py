"""The TV-regularised proximal step, the classical warm start and their settings / CLI plumbing.

Uses the analytic Gaussian prior and the tiny operators of test_sampling.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GaussianPrior, gaussian_problem, head_hu, smooth_mean

from ScoreReconLib.baselines import classical_reconstruct, operator_norm
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.reconstruction import reconstruct, resolve_settings
from ScoreReconLib.sampling import (
    classical_init,
    reverse_grid,
    total_variation,
    tv_proximal,
    tv_proximal_objective,
)
from ScoreReconLib.sde import VESDE


def _noisy_start(op, x_true, y, noise=0.1, seed=0):
    """A sampler-like iterate and noisy measurement: x_true + noise, y + A(noise)."""
    g = torch.Generator().manual_seed(seed)
    x0 = x_true + noise * torch.randn(x_true.shape, generator=g)
    y_hat = y + op.A(noise * torch.randn(x_true.shape, generator=g))
    return x0, y_hat


TASKS = ["sparse-ct", "mri"]


# ------------------------------------------------------------------------------------- TV step
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.841, 1.0])
def test_zero_tv_weight_is_the_existing_proximal_step(task, lam):
    op, prior, x_true, y, _ = gaussian_problem(task)
    x0, y_hat = _noisy_start(op, x_true, y)
    assert torch.equal(tv_proximal(op, x0, y_hat, lam, 0.0), op.proximal(x0, y_hat, lam))


@pytest.mark.parametrize("task", TASKS)
def test_zero_tv_weight_sampler_is_the_default_sampler(task):
    op, prior, x_true, y, _ = gaussian_problem(task)
    a = reconstruct(y, op, prior, steps=6, seed=2).mean
    b = reconstruct(y, op, prior, steps=6, seed=2, tv_weight=0.0, init="noise", t_start=1.0).mean
    assert torch.equal(a, b)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("lam", [0.7, 1.0])
def test_tv_step_lowers_objective_and_tv(task, lam):
    op, prior, x_true, y, _ = gaussian_problem(task)
    x0, y_hat = _noisy_start(op, x_true, y)
    p = op.proximal(x0, y_hat, lam)
    for w in (1e-3, 1e-2):
        x = tv_proximal(op, x0, y_hat, lam, w, iters=10)
        e_start = tv_proximal_objective(op, p, p, lam, w)
        e_end = tv_proximal_objective(op, x, p, lam, w)
        assert bool((e_end < e_start).all()), (task, lam, w, e_start, e_end)
        assert bool((total_variation(x) < total_variation(p)).all())
        assert x.shape == x0.shape and x.dtype == x0.dtype


@pytest.mark.parametrize("lam", [0.7, 1.0])
def test_mri_objective_is_the_x0_centred_one_up_to_a_constant(lam):
    """MRI's merge is the exact minimiser, so E(x) − E(p) = F(x) − F(p) with
    F(x) = ½‖Ax − ŷ‖² + (1/(2γ))‖x − x₀‖² + w‖A‖²TV(x), γ = λ/(1−λ)."""
    op, prior, x_true, y, _ = gaussian_problem("mri")
    x0, y_hat = _noisy_start(op, x_true, y)
    w = 1e-2
    L = operator_norm(op) ** 2
    gamma_inv = (1 - lam) / lam

    def F(x):
        return float(0.5 * (op.A(x) - y_hat).abs().pow(2).sum() + 0.5 * gamma_inv * (x - x0).pow(2).sum()
                     + w * L * total_variation(x).sum())

    p = op.proximal(x0, y_hat, lam)
    x = tv_proximal(op, x0, y_hat, lam, w, iters=10)
    dE = float(tv_proximal_objective(op, x, p, lam, w).sum() - tv_proximal_objective(op, p, p, lam, w).sum())
    dF = F(x) - F(p)
    assert dF < 0
    assert abs(dE - dF) < 1e-3 * abs(dF) + 1e-5


def test_tv_step_converges_to_tv_reconstruction_at_lam_one():
    """λ = 1, consistent data: E is --method tv's objective (same weight units), so many iterations meet it."""
    op, prior, x_true, y, _ = gaussian_problem("mri")
    w = 1e-2
    x = tv_proximal(op, op.A_dagger(y), y, 1.0, w, iters=400)
    ref = classical_reconstruct("tv", y, op, weight=w, iters=400, nonneg=False)
    assert float((x - ref).abs().max()) < 0.02
    assert float((x - ref).pow(2).mean().sqrt()) < 0.005


def test_tv_step_rejects_bad_arguments():
    op, prior, x_true, y, _ = gaussian_problem("mri")
    for w in (-1e-3, float("nan")):
        with pytest.raises(ScoreReconError, match="TV weight"):
            tv_proximal(op, x_true, y, 1.0, w)
    with pytest.raises(ScoreReconError, match="iterations"):
        tv_proximal(op, x_true, y, 1.0, 1e-3, iters=0)


def test_proximal_sampler_with_tv_is_reproducible_and_smoother():
    op, prior, x_true, y, _ = gaussian_problem("sparse-ct")
    plain = reconstruct(y, op, prior, steps=8, seed=1).mean
    a = reconstruct(y, op, prior, steps=8, seed=1, tv_weight=1e-2)
    b = reconstruct(y, op, prior, steps=8, seed=1, tv_weight=1e-2)
    assert torch.equal(a.mean, b.mean) and torch.isfinite(a.mean).all()
    assert a.settings["tv_weight"] == 1e-2 and a.settings["tv_iters"] == 10
    assert float(total_variation(a.mean)) < float(total_variation(plain))
    assert a.nfe == 2 * 8 + 1


# ---------------------------------------------------------------------------------- warm start
def test_reverse_grid_from_t_start():
    sde = VESDE(0.01, 5.0, N=200)
    full, ts = reverse_grid(sde, 25, 1.0, 1e-5, "cpu")
    assert full.N == 25 and torch.equal(ts, torch.linspace(1.0, 1e-5, 25))
    sub, ts = reverse_grid(sde, 10, 0.4, 1e-5, "cpu")
    assert len(ts) == 10 and abs(float(ts[0]) - 0.4) <= 0.5 / (sub.N - 1)
    # consecutive times are adjacent noise levels of the discretisation (what the ancestral step assumes)
    idx = sub.timestep_index(ts)
    assert torch.equal(idx, torch.arange(9, -1, -1))


@pytest.mark.parametrize("task", TASKS)
def test_classical_warm_start_runs_fewer_evaluations_and_is_reproducible(task):
    op, prior, x_true, y, post_mean = gaussian_problem(task)
    cold = reconstruct(y, op, prior, steps=10, seed=4)
    kw = {"init": "classical", "t_start": 0.3, "steps": 3, "seed": 4}
    warm = reconstruct(y, op, prior, **kw)
    again = reconstruct(y, op, prior, **kw)
    other = reconstruct(y, op, prior, **{**kw, "seed": 5})
    assert cold.nfe == 21 and warm.nfe == 2 * 3 + 1
    assert torch.equal(warm.mean, again.mean) and not torch.equal(warm.mean, other.mean)
    assert warm.settings["init"] == "classical" and warm.settings["t_start"] == 0.3
    assert torch.isfinite(warm.mean).all()


def test_fast_and_song2021_accept_the_warm_start():
    op, prior, x_true, y, _ = gaussian_problem("mri")
    fast = reconstruct(y, op, prior, method="fast", steps=4, init="classical", t_start=0.5, seed=0)
    assert fast.nfe == 4 and torch.isfinite(fast.mean).all()
    song = reconstruct(y, op, prior, method="song2021", steps=5, init="classical", t_start=0.5, seed=0)
    assert song.nfe == 2 * 5 + 1 and torch.isfinite(song.mean).all()


def test_classical_init_is_tv_for_ct_and_cs_for_mri():
    for task, method in (("sparse-ct", "tv"), ("mri", "cs")):
        op, prior, x_true, y, _ = gaussian_problem(task)
        assert torch.equal(classical_init(op, y, 1e-3), classical_reconstruct(method, y, op, weight=1e-3))


def test_warm_start_starts_from_the_noised_classical_image():
    """One step at the grid's smallest time, no corrector: the output stays next to the classical start."""
    op, prior, x_true, y, _ = gaussian_problem("mri")
    res = reconstruct(y, op, prior, init="classical", t_start=0.01, steps=1, lam=1.0, snr=0.0, seed=0)
    xc = classical_init(op, y)
    assert float((res.mean - xc).abs().mean()) < 0.01 < float((prior.mu - xc).abs().mean())


# ------------------------------------------------------------------------------------ settings
BAD = [
    ({"tv_weight": -1e-4}, "--tv-weight must be >= 0"),
    ({"tv_weight": float("nan")}, "--tv-weight must be a finite"),
    ({"tv_iters": 0}, "tv_iters"),
    ({"t_start": 0.0, "init": "classical"}, r"--t-start must lie in \(0, 1\]"),
    ({"t_start": 1.5, "init": "classical"}, r"\(0, 1\], got 1.5"),
    ({"t_start": -0.2, "init": "classical"}, r"\(0, 1\]"),
    ({"t_start": 0.5}, "needs --init classical"),
    ({"init": "warm"}, "--init must be one of noise, classical, got 'warm'"),
    ({"init_weight": -1.0, "init": "classical"}, "--init-weight"),
]


@pytest.mark.parametrize("extra, pattern", BAD)
def test_invalid_settings_raise(extra, pattern):
    op, prior, x_true, y, _ = gaussian_problem("mri")
    with pytest.raises(ScoreReconError, match=pattern):
        resolve_settings("proximal", prior, **extra)
    with pytest.raises(ScoreReconError, match=pattern):
        reconstruct(y, op, prior, steps=2, **extra)


def test_tv_weight_only_for_the_proximal_sampler():
    prior = GaussianPrior(smooth_mean(16), 0.1, "MR")
    for method in ("fast", "song2021"):
        with pytest.raises(ScoreReconError, match="only to the proximal sampler"):
            resolve_settings(method, prior, tv_weight=1e-4)
    assert resolve_settings("fast", prior, tv_weight=0.0).tv_weight == 0.0


def test_defaults_unchanged_and_tuned_values_carry_the_new_keys():
    prior = GaussianPrior(smooth_mean(16), 0.1, "CT")
    s = resolve_settings("proximal", prior, task="sparse-ct")
    assert (s.tv_weight, s.tv_iters, s.init, s.t_start, s.init_weight) == (0.0, 10, "noise", 1.0, None)
    prior.recommended = {"tasks": {"sparse-ct": {"proximal": {"tv_weight": 2e-4, "tv_iters": 5, "init": "classical",
                                                              "t_start": 0.5, "init_weight": 1e-3}}}}
    s = resolve_settings("proximal", prior, task="sparse-ct")
    assert (s.tv_weight, s.tv_iters, s.init, s.t_start, s.init_weight) == (2e-4, 5, "classical", 0.5, 1e-3)
    s = resolve_settings("proximal", prior, task="sparse-ct", tv_weight=0.0, t_start=1.0)
    assert (s.tv_weight, s.t_start, s.init) == (0.0, 1.0, "classical")
    assert resolve_settings("proximal", prior, task="limited-angle-ct").init == "noise"


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A 32² sparse-ct measurement file (the untrained tiny CT prior is conftest's ``tiny_ct``)."""
    from ScoreReconLib.cli import main
    from ScoreReconLib.data import Image, write_image

    d = tmp_path_factory.mktemp("tvcli")
    write_image(Image(np.stack([head_hu(32, 40.0, offsets=(300.0, -250.0))]), modality="CT"), d / "ct.nrrd")
    assert main(["simulate", "--task", "sparse-ct", "--input", str(d / "ct.nrrd"), "--output", str(d / "m.npz"),
                 "--views", "8", "--seed", "1"]) == 0
    return d


def test_cli_score_accepts_tv_and_warm_start_flags(cli_setup, tiny_ct, tmp_path, capsys):
    from ScoreReconLib.cli import main

    d = cli_setup
    metrics = tmp_path / "m.json"
    rc = main(["reconstruct", "--input", str(d / "m.npz"), "--method", "score", "--model", str(tiny_ct),
               "--sampler", "proximal", "--steps", "2", "--tv-weight", "1e-4", "--init", "classical",
               "--t-start", "0.5", "--init-weight", "1e-3", "--output", str(tmp_path / "out.nrrd"),
               "--metrics-json", str(metrics), "--device", "cpu", "--progress-format", "none"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads(metrics.read_text())
    assert (m["tv_weight"], m["init"], m["t_start"], m["steps"], m["nfe"]) == (1e-4, "classical", 0.5, 2, 5)
    assert Path(tmp_path / "out.nrrd").exists()


@pytest.mark.parametrize("argv, pattern", [
    (["--method", "score", "--t-start", "1.5", "--init", "classical"], "--t-start must lie in (0, 1]"),
    (["--method", "score", "--t-start", "0.5"], "needs --init classical"),
    (["--method", "score", "--tv-weight", "-1"], "--tv-weight must be >= 0"),
    (["--method", "score", "--sampler", "fast", "--tv-weight", "1e-4"], "only to the proximal sampler"),
    (["--method", "fbp", "--tv-weight", "1e-4"], "--tv-weight only applies to --method score"),
    (["--method", "fbp", "--t-start", "0.5"], "--t-start only applies to --method score"),
])
def test_cli_rejects_bad_flags_with_one_line(cli_setup, tiny_ct, tmp_path, capsys, argv, pattern):
    from ScoreReconLib.cli import main

    d = cli_setup
    rc = main(["reconstruct", "--input", str(d / "m.npz"), "--model", str(tiny_ct), "--output",
               str(tmp_path / "never.nrrd"), "--device", "cpu", "--progress-format", "none", *argv]
              if argv[1] == "score" else
              ["reconstruct", "--input", str(d / "m.npz"), "--output", str(tmp_path / "never.nrrd"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and pattern in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never.nrrd").exists()


def test_cli_init_choice_is_checked_by_argparse(cli_setup, capsys):
    from ScoreReconLib.cli import main

    rc = main(["reconstruct", "--input", "x.npz", "--output", "y.nrrd", "--method", "score", "--init", "warm"])
    err = capsys.readouterr().err
    assert rc == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_cli_help_documents_the_flags(capsys):
    from ScoreReconLib.cli import main

    assert main(["reconstruct", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--tv-weight", "--init", "--t-start", "--init-weight"):
        assert flag in out
    assert "--method tv --weight" in " ".join(out.split())
