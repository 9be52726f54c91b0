"""``scorerecon simulate`` / ``reconstruct`` end to end through ``ScoreReconLib.cli.main``, extra outputs included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, disc_hu, head_hu, run

from ScoreReconLib.cli import main
from ScoreReconLib.commands.engine import METHODS_FOR_TASK
from ScoreReconLib.commands.planning import shard
from ScoreReconLib.data import Image, read_image, write_image
from ScoreReconLib.measurement import save_measurement, simulate
from ScoreReconLib.resources import resource_path

N = 32
REPO = Path(__file__).resolve().parents[1]
#: the two inserts of the phantoms here, relative to their soft tissue (helpers.head_hu)
CLI_INSERTS = (300.0, -250.0)


def ct_volume() -> Image:
    """3 slices with clearly different soft tissue (0, 400, 800 HU) and a non-trivial geometry."""
    arr = np.stack([head_hu(N, 400.0 * k, offsets=CLI_INSERTS) for k in range(3)])
    c, s = np.cos(0.2), np.sin(0.2)
    return Image(arr, (0.8, 0.9, 2.5), (-12.0, 4.0, 30.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0), "CT")


SIM_OPTIONS = {
    "sparse-ct": ["--views", "12"],
    "limited-angle-ct": ["--arc", "120"],
    "metal-ct": ["--n-metal", "2"],
    "mri": ["--acceleration", "4", "--center-fraction", "0.1", "--phase", "zero"],  # real images: exact checks
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Input images and one measurement file per task, made with the CLI."""
    d = tmp_path_factory.mktemp("cli")
    vol = ct_volume()
    write_image(vol, d / "ct.nrrd")
    write_image(vol.with_array(vol.array + 1000.0), d / "mr.nrrd")  # positive, MR-like intensities
    for task, options in SIM_OPTIONS.items():
        src = d / ("mr.nrrd" if task == "mri" else "ct.nrrd")
        assert main(["simulate", "--task", task, "--input", str(src), "--output", str(d / f"{task}.npz"),
                     "--seed", "1", *options]) == 0
    return d


def _check_image_like(path: Path, like: Image) -> Image:
    out = read_image(path)
    assert out.array.shape == like.array.shape
    np.testing.assert_allclose(out.spacing, like.spacing, rtol=1e-6)
    np.testing.assert_allclose(out.origin, like.origin, atol=1e-5)
    np.testing.assert_allclose(out.direction, like.direction, atol=1e-6)
    return out


ROUND_TRIPS = [("sparse-ct", "fbp"), ("sparse-ct", "tv"), ("limited-angle-ct", "fbp"), ("metal-ct", "fbp"),
               ("metal-ct", "tv"), ("mri", "zero-filled"), ("mri", "cs"), ("mri", "tv")]


@pytest.mark.parametrize("task, method", ROUND_TRIPS)
def test_simulate_reconstruct_round_trip(data, tmp_path, capsys, task, method):
    ref = data / ("mr.nrrd" if task == "mri" else "ct.nrrd")
    out, metrics = tmp_path / "recon.nii.gz", tmp_path / "m.json"
    extra = ["--iters", "40"] if method in ("tv", "cs") else []
    rc, stdout, err = cli(["reconstruct", "--input", data / f"{task}.npz", "--method", method, "--output", out,
                           "--reference", ref, "--metrics-json", metrics, "--progress-format", "none", *extra],
                          capsys)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    recon = _check_image_like(out, read_image(ref))
    m = json.loads(metrics.read_text())
    for key in ("psnr", "ssim", "seconds", "method", "task", "psnr_per_slice", "ssim_per_slice", "n_slices"):
        assert key in m
    assert m["method"] == method and m["task"] == task and m["n_slices"] == 3
    assert len(m["psnr_per_slice"]) == 3 and m["psnr"] == pytest.approx(np.mean(m["psnr_per_slice"]))
    assert 12.0 < m["psnr"] < 60.0 and 0.2 < m["ssim"] <= 1.0 and m["seconds"] > 0
    assert m["metal_excluded"] == (task == "metal-ct")
    # physical units: the reconstruction's mean intensity per slice tracks the reference's
    # (limited-angle FBP misses a wedge of frequencies, so it is biased more)
    truth = read_image(ref).array
    tol = 300.0 if task == "limited-angle-ct" else 150.0
    for k in range(3):
        assert abs(float(recon.array[k].mean() - truth[k].mean())) < tol


def test_regularised_methods_beat_the_direct_ones(data, tmp_path, capsys):
    """TV on sparse views beats FBP; CS beats zero-filled MRI (enough iterations to converge a bit)."""
    scores = {}
    for task, method, iters in (("sparse-ct", "fbp", None), ("sparse-ct", "tv", "150"),
                                ("mri", "zero-filled", None), ("mri", "cs", "150")):
        ref = data / ("mr.nrrd" if task == "mri" else "ct.nrrd")
        metrics = tmp_path / f"{task}-{method}.json"
        argv = ["reconstruct", "--input", data / f"{task}.npz", "--method", method, "--output",
                tmp_path / f"{task}-{method}.nrrd", "--reference", ref, "--metrics-json", metrics,
                "--progress-format", "none"] + (["--iters", iters] if iters else [])
        assert cli(argv, capsys)[0] == 0
        scores[method] = json.loads(metrics.read_text())["psnr"]
    assert scores["tv"] > scores["fbp"] + 1.0
    assert scores["cs"] > scores["zero-filled"] + 1.0


def test_volume_keeps_geometry_and_slice_order(data, tmp_path, capsys):
    out = tmp_path / "vol.nrrd"
    rc, _, err = cli(["reconstruct", "--input", data / "sparse-ct.npz", "--method", "fbp", "--output", out,
                      "--batch-size", "2"], capsys)
    assert rc == 0, err
    assert "100 % 3/3 slices" in err and "\r" not in err  # stderr is no terminal here: plain lines
    recon = _check_image_like(out, ct_volume())
    tissue = [float(np.median(recon.array[k][12:20, 12:20])) for k in range(3)]
    assert tissue[0] < tissue[1] < tissue[2]  # 0, 400, 800 HU in the input's slice order
    np.testing.assert_allclose(tissue, [0.0, 400.0, 800.0], atol=200.0)


def test_single_slice_png_gives_2d_output(tmp_path, capsys):
    from PIL import Image as PILImage

    img = np.clip((head_hu(N, 40.0, offsets=CLI_INSERTS) + 1000) / 12, 0, 255).astype(np.uint8)
    PILImage.fromarray(img).save(tmp_path / "slice.png")
    assert cli(["simulate", "--task", "sparse-ct", "--input", tmp_path / "slice.png", "--output",
                tmp_path / "s.npz", "--views", "16"], capsys)[0] == 0
    rc, _, err = cli(["reconstruct", "--input", tmp_path / "s.npz", "--method", "fbp", "--output",
                      tmp_path / "s.npy", "--reference", tmp_path / "slice.png", "--metrics-json",
                      tmp_path / "m.json", "--progress-format", "none"], capsys)
    assert rc == 0, err
    out = np.load(tmp_path / "s.npy")
    assert out.shape == (N, N)
    assert np.corrcoef(out.ravel(), img.astype(np.float32).ravel())[0, 1] > 0.9
    assert json.loads((tmp_path / "m.json").read_text())["psnr"] > 15


def test_json_progress_lines(data, tmp_path, capsys):
    rc, out, err = cli(["reconstruct", "--input", data / "mri.npz", "--method", "cs", "--iters", "10",
                        "--output", tmp_path / "r.nrrd", "--progress-format", "json", "--batch-size", "2"], capsys)
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    progress = [line for line in lines if "progress" in line]
    assert progress and all(line["total"] == progress[0]["total"] for line in progress)
    done = [line["progress"] for line in progress]
    assert done == sorted(done) and done[-1] == progress[-1]["total"]
    result = [line["result"] for line in lines if "result" in line]
    assert len(result) == 1 and result[0]["output"] == str(tmp_path / "r.nrrd")
    assert err == ""  # no bar on stderr in JSON mode


def test_batch_folder(data, tmp_path, capsys):
    inp, refs = tmp_path / "in", tmp_path / "refs"
    inp.mkdir()
    refs.mkdir()
    for name, task in (("a", "sparse-ct"), ("b", "metal-ct")):
        shutil.copy(data / f"{task}.npz", inp / f"{name}.npz")
        shutil.copy(data / "ct.nrrd", refs / f"{name}.nrrd")
    (inp / "notes.txt").write_text("ignored")
    rc, out, err = cli(["reconstruct", "--input", inp, "--output", tmp_path / "out", "--method", "fbp",
                        "--reference", refs, "--metrics-json", tmp_path / "all.json", "--output-suffix", ".nii.gz",
                        "--progress-format", "none"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    summary = json.loads((tmp_path / "all.json").read_text())
    assert summary["n_files"] == 2 and summary["n_slices"] == 6
    assert [Path(f["input"]).name for f in summary["files"]] == ["a.npz", "b.npz"]
    per_slice = [v for f in summary["files"] for v in f["psnr_per_slice"]]
    assert summary["psnr"] == pytest.approx(np.mean(per_slice))


def test_shard_takes_every_world_th_item():
    files = list("abcdefg")
    parts = [shard(files, r, 3) for r in range(3)]
    assert parts == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(sum(parts, [])) == files


@pytest.mark.slow
def test_torchrun_shards_files_and_merges_metrics(data, tmp_path):
    inp, refs = tmp_path / "in", tmp_path / "refs"
    inp.mkdir()
    refs.mkdir()
    for name, task in (("a", "sparse-ct"), ("b", "limited-angle-ct"), ("c", "metal-ct")):
        shutil.copy(data / f"{task}.npz", inp / f"{name}.npz")
        shutil.copy(data / "ct.nrrd", refs / f"{name}.nrrd")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ScoreReconLib", "reconstruct", "--input", str(inp), "--output", str(tmp_path / "out"),
           "--method", "fbp", "--reference", str(refs), "--metrics-json", str(tmp_path / "all.json"),
           "--progress-format", "none", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nrrd", "b.nrrd", "c.nrrd"]
    summary = json.loads((tmp_path / "all.json").read_text())
    assert [Path(f["input"]).name for f in summary["files"]] == ["a.npz", "b.npz", "c.npz"]


# ------------------------------------------------------------------------------------------ score
def test_score_round_trip_with_std(data, tiny_ct, tmp_path, capsys):
    out, std, metrics = tmp_path / "s.nrrd", tmp_path / "std.nrrd", tmp_path / "m.json"
    rc, _, err = cli(["reconstruct", "--input", data / "sparse-ct.npz", "--method", "score", "--model", tiny_ct,
                      "--sampler", "fast", "--steps", "2", "--samples", "2", "--seed", "3", "--std-output", std,
                      "--output", out, "--reference", data / "ct.nrrd", "--metrics-json", metrics,
                      "--batch-size", "2", "--device", "cpu", "--progress-format", "none"], capsys)
    assert rc == 0, err
    _check_image_like(out, ct_volume())
    s = _check_image_like(std, ct_volume())
    assert np.isfinite(s.array).all() and (s.array >= 0).all() and s.array.max() > 0
    m = json.loads(metrics.read_text())
    assert m["sampler"] == "fast" and m["seed"] == 3 and m["nfe"] >= 2 and m["samples"] == 2
    assert m["nfe_per_sample"] == m["nfe"] and m["nfe_per_slice"] == 2 * m["nfe_per_sample"]
    assert m["steps"] == 2 and np.isfinite(m["psnr"])
    assert m["discrepancy"]["verdict"] in ("consistent", "fits the noise", "leaves signal", "noise-free data",
                                           "below the noise estimate", "noise unknown")


def test_reconstruct_help_states_the_defaults_a_run_uses(capsys):
    """The help's sampler defaults come from the shipped models' recommendation, as a run resolves them."""
    from ScoreReconLib.networks import load_prior
    from ScoreReconLib.reconstruction import recommended_samples, resolve_settings

    rc, out, _ = cli(["reconstruct", "--help"], capsys)
    assert rc == 0
    text = " ".join(out.split())
    assert "25 steps unless" not in text and "(default, pure noise at t = 1)" not in text
    for name in ("default-ct", "default-mri"):
        prior = load_prior(name)
        task = "sparse-ct" if name == "default-ct" else "mri"
        run = resolve_settings("proximal", prior, task=task)
        assert f"{name} {run.steps}" in text  # --steps
        assert f"{name} {run.t_start:g}" in text  # --t-start
        assert f"{name} {run.init}" in text  # --init
        assert f"{name} {recommended_samples(prior, 'proximal', task)}" in text  # --samples


@pytest.mark.parametrize("task, pattern", [("mri", "MR"), ("sparse-ct", "64")])
def test_score_refuses_incompatible_model(data, tiny_ct, tmp_path, capsys, task, pattern):
    meas = data / f"{task}.npz"
    if task == "sparse-ct":  # the model is 32², this measurement 64²
        write_image(Image(np.stack([head_hu(64, 40.0, offsets=CLI_INSERTS)] * 1), modality="CT"), tmp_path / "big.nrrd")
        assert cli(["simulate", "--task", task, "--input", tmp_path / "big.nrrd", "--output", tmp_path / "big.npz"],
                   capsys)[0] == 0
        meas = tmp_path / "big.npz"
    out = tmp_path / "never.nrrd"
    rc, _, err = cli(["reconstruct", "--input", meas, "--method", "score", "--model", tiny_ct,
                      "--output", out, "--progress-format", "none"], capsys)
    assert rc == 2 and pattern in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# ------------------------------------------------------------------------------------- bad input
def _bad_inputs(d: Path) -> dict[str, tuple[list, str]]:
    base = head_hu(N, 40.0, offsets=CLI_INSERTS)
    write_image(Image(np.where(base > 1000, np.nan, base)), d / "nan.nrrd")
    write_image(Image(np.where(base > 1000, np.inf, base)), d / "inf.nrrd")
    write_image(Image(base[:, :24]), d / "rect.nrrd")
    write_image(Image(base[:12, :12]), d / "tiny.nrrd")
    (d / "corrupt.nrrd").write_bytes(b"NRRD0004\ngarbage\x00\x01")
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
    (d / "notes.txt").write_text("not an image")
    with np.load(d / "src" / "sparse-ct.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(str(arrays["header"][()]))
    header["format_version"] = 999
    arrays["header"] = np.array(json.dumps(header))
    np.savez_compressed(d / "future.npz", **arrays)
    sim = ["simulate", "--task", "sparse-ct", "--output"]
    rec = ["reconstruct", "--method", "fbp", "--output"]
    meas = d / "src" / "sparse-ct.npz"
    return {
        "nan": (sim + ["OUT.npz", "--input", d / "nan.nrrd"], "NaN"),
        "inf": (sim + ["OUT.npz", "--input", d / "inf.nrrd"], "infinite"),
        "non-square": (sim + ["OUT.npz", "--input", d / "rect.nrrd"], "--size"),
        "too-small": (sim + ["OUT.npz", "--input", d / "tiny.nrrd"], "smaller than 16"),
        "views>angles": (sim + ["OUT.npz", "--input", d / "src" / "ct.nrrd", "--views", "40"], "views"),
        "acceleration<1": (["simulate", "--task", "mri", "--output", "OUT.npz", "--input", d / "src" / "mr.nrrd",
                            "--acceleration", "0.5"], "acceleration"),
        "sim-missing": (sim + ["OUT.npz", "--input", d / "missing.nrrd"], "does not exist"),
        "sim-nan-threshold": (["simulate", "--task", "metal-ct", "--output", "OUT.npz", "--input",
                               d / "src" / "ct.nrrd", "--metal-threshold", "nan"], "finite"),
        "rec-nan-snr": (["reconstruct", "--method", "score", "--output", "OUT.nrrd", "--input", meas, "--snr", "nan"],
                        "finite"),
        "rec-metrics-is-output": (rec + ["OUT.nrrd", "--input", meas, "--metrics-json", "OUT.nrrd"], "same path"),
        "sim-corrupt": (sim + ["OUT.npz", "--input", d / "corrupt.nrrd"], "cannot read"),
        "sim-unsupported": (sim + ["OUT.npz", "--input", d / "notes.txt"], "unsupported"),
        "sim-output-suffix": (sim + ["OUT.nrrd", "--input", d / "src" / "ct.nrrd"], ".npz"),
        "rec-missing": (rec + ["OUT.nrrd", "--input", d / "missing.npz"], "does not exist"),
        "rec-corrupt": (rec + ["OUT.nrrd", "--input", d / "corrupt.npz"], "not a usable"),
        "rec-image-as-measurement": (rec + ["OUT.nrrd", "--input", d / "src" / "ct.nrrd"], "not a usable"),
        "rec-version": (rec + ["OUT.nrrd", "--input", d / "future.npz"], "re-simulate"),
        "rec-method-for-task": (["reconstruct", "--method", "zero-filled", "--output", "OUT.nrrd", "--input", meas],
                                "fbp, tv, score"),
        "rec-cs-on-ct": (["reconstruct", "--method", "cs", "--output", "OUT.nrrd", "--input", meas], "fbp"),
        "rec-fbp-on-mri": (["reconstruct", "--method", "fbp", "--output", "OUT.nrrd", "--input",
                            d / "src" / "mri.npz"], "zero-filled"),
        "rec-output-suffix": (rec + ["OUT.png", "--input", meas], "cannot write"),
        "rec-batch-size": (rec + ["OUT.nrrd", "--input", meas, "--batch-size", "0"], "--batch-size"),
        "rec-reference-size": (rec + ["OUT.nrrd", "--input", meas, "--reference", d / "rect.nrrd"], "reference"),
        "rec-std-without-samples": (["reconstruct", "--method", "score", "--output", "OUT.nrrd", "--input", meas,
                                     "--std-output", "STD.nrrd", "--samples", "1"], "--samples"),
        "rec-score-option-on-fbp": (rec + ["OUT.nrrd", "--input", meas, "--steps", "5"], "--steps"),
        "rec-missing-model": (["reconstruct", "--method", "score", "--output", "OUT.nrrd", "--input", meas,
                               "--model", d / "no-such-model"], "no-such-model"),
        "rec-empty-folder": (rec + ["OUTDIR", "--input", d / "emptydir"], "no .npz"),
    }


@pytest.fixture(scope="module")
def bad_cases(data, tmp_path_factory) -> dict[str, tuple[list, str]]:
    d = tmp_path_factory.mktemp("bad")
    (d / "src").symlink_to(data, target_is_directory=True)
    (d / "emptydir").mkdir()
    return _bad_inputs(d)


BAD_CASES = ["nan", "inf", "non-square", "too-small", "views>angles", "acceleration<1", "sim-missing",
             "sim-corrupt", "sim-unsupported", "sim-output-suffix", "rec-missing", "rec-corrupt",
             "rec-image-as-measurement", "rec-version", "rec-method-for-task", "rec-cs-on-ct", "rec-fbp-on-mri",
             "rec-output-suffix", "rec-batch-size", "rec-reference-size", "rec-std-without-samples",
             "rec-score-option-on-fbp", "rec-missing-model", "rec-empty-folder", "sim-nan-threshold", "rec-nan-snr",
             "rec-metrics-is-output"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_no_output(bad_cases, tmp_path, capsys, case):
    argv, pattern = bad_cases[case]
    names = {"OUT.npz", "OUT.nrrd", "OUT.png", "STD.nrrd", "OUTDIR"}
    argv = [tmp_path / a if isinstance(a, str) and a in names else a for a in argv]
    rc, out, err = cli(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("scorerecon ")
    assert pattern in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


def test_every_task_has_a_classical_method():
    for task, methods in METHODS_FOR_TASK.items():
        assert "score" in methods and len(methods) >= 3, task


# ---------------------------------------------- batch size, --reference, --residual-output, --disagreement-output
@pytest.mark.parametrize("task", ["sparse-ct", "mri"])
def test_batch_size_does_not_change_the_result(tmp_path, capsys, task):
    vol = np.stack([disc_hu(), np.roll(disc_hu(), 3, axis=1), np.roll(disc_hu(), -4, axis=0)])
    img = Image(vol, (0.9, 0.9, 2.0), (0, 0, 0), tuple(np.eye(3).ravel()), "CT")
    if task == "mri":
        img = Image(np.abs(vol + 1000.0) / 10.0, img.spacing, img.origin, img.direction, "MR")
    m, _, _ = simulate(img, task, views=8, acceleration=4, noise=0.01, seed=3)
    save_measurement(tmp_path / "m.npz", m)
    outs = {}
    for bs in (1, 2, 3):
        out = tmp_path / f"r{bs}.npy"
        rc, lines = run(["reconstruct", "--input", tmp_path / "m.npz", "--output", out, "--method", "score",
                         "--batch-size", bs, "--seed", "5", "--samples", "2", "--progress-format", "none",
                         "--precision", "fp32"], capsys)  # bf16 kernels may round differently per batch size
        assert rc == 0, lines
        outs[bs] = np.load(out)
    scale = 3000.0 if task != "mri" else float(np.abs(outs[1]).max())
    # a batch's projections round differently from a slice's (matrix products of another shape, ~1e-7), and the
    # sampler's score at small noise amplifies that to about 1e-3 of the range: equal up to that, not bit for bit
    for bs in (2, 3):
        assert np.abs(outs[bs] - outs[1]).max() / scale < 2.5e-3, bs
    rc, _ = run(["reconstruct", "--input", tmp_path / "m.npz", "--output", tmp_path / "other.npy", "--method",
                 "score", "--batch-size", "3", "--seed", "6", "--samples", "2", "--progress-format", "none",
                 "--precision", "fp32"], capsys)
    assert rc == 0 and np.abs(np.load(tmp_path / "other.npy") - outs[1]).max() / scale > 1e-2  # the seed matters


def test_reference_on_another_grid_is_named(tmp_path, capsys):
    src = read_image(resource_path("samples", "ct_head_sample.nrrd"))
    meas = tmp_path / "m.npz"
    assert main(["simulate", "--task", "sparse-ct", "--views", "16", "--input",
                 str(resource_path("samples", "ct_head_sample.nrrd")), "--output", str(meas)]) == 0
    other = tmp_path / "other.nrrd"  # the same pixels, declared on a 3x coarser grid
    write_image(Image(src.array, tuple(3 * s for s in src.spacing), src.origin, src.direction, src.modality), other)
    capsys.readouterr()
    rc = main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(tmp_path / "r.nrrd"),
               "--reference", str(other), "--progress-format", "none"])
    err = capsys.readouterr().err
    assert rc == 0
    sp = src.spacing[0]
    assert f"the reference's pixels are {3 * sp:.4g} x {3 * sp:.4g} mm" in err
    assert f"the measurement's are {sp:.4g} x {sp:.4g} mm" in err
    rc = main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(tmp_path / "r2.nrrd"),
               "--reference", str(resource_path("samples", "ct_head_sample.nrrd")), "--progress-format", "none"])
    assert rc == 0 and "fields of view" not in capsys.readouterr().err


def test_residual_output_holds_the_data_residual_its_backprojection_and_chi2(tmp_path, capsys):
    """--residual-output (issue 19): A x − y on the measured rows, Aᴴ of it, and χ² per slice and per file, the
    same χ² as metrics.json; recomputed here from the written image."""
    import json

    import torch

    from ScoreReconLib.measurement import load_measurement

    vol = tmp_path / "vol.nrrd"
    src = read_image(resource_path("samples", "ct_head_sample.nrrd"))
    write_image(Image(np.stack([src.array, np.roll(src.array, 5, axis=1)]), (*src.spacing[:2], 2.0),
                      (*src.origin[:2], 0.0), tuple(np.eye(3).ravel()), "CT"), vol)
    meas, out, res, met = (tmp_path / n for n in ("m.npz", "fbp.nrrd", "r.npz", "m.json"))
    assert main(["simulate", "--task", "sparse-ct", "--views", "16", "--noise", "0.01", "--size", "48",
                 "--input", str(vol), "--output", str(meas)]) == 0
    assert main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(out), "--residual-output",
                 str(res), "--metrics-json", str(met), "--progress-format", "none"]) == 0
    record = json.loads(met.read_text())
    with np.load(res) as f:
        residual, back, chi2, per_slice = f["residual"], f["backprojection"], float(f["chi2"]), f["chi2_per_slice"]
    m = load_measurement(meas)
    op = m.operator("cpu")
    assert residual.shape == m.y_tensor(None, "cpu").shape and back.shape == (2, 48, 48)
    assert np.all(residual[np.broadcast_to(op.mask.numpy() == 0, residual.shape)] == 0)  # measured rows only
    x = torch.from_numpy(m.normalization.forward(read_image(out).array).astype(np.float32))[:, None]
    again = op.mask_apply(op.A(x) - m.y_tensor(None, "cpu")).numpy()
    assert np.abs(again - residual).max() <= 1e-3 * np.abs(residual).max()
    assert chi2 == pytest.approx(record["chi2"]) and list(per_slice) == pytest.approx(record["chi2_per_slice"])
    assert len(per_slice) == 2 and np.isfinite(per_slice).all()


def test_disagreement_output_compares_score_and_classical_with_the_std(tmp_path, capsys):
    """--disagreement-output (issue 19 item 3): |score − classical| / std as an image with the input's geometry,
    the fraction above 1.645 in metrics; a classical method gets one note line and no file."""
    import json

    from ScoreReconLib.measurement import load_measurement

    meas, out, dis, met = (tmp_path / n for n in ("m.npz", "s.nrrd", "d.nrrd", "m.json"))
    assert main(["simulate", "--task", "sparse-ct", "--views", "16", "--noise", "0.01", "--size", "32",
                 "--input", str(resource_path("samples", "ct_head_sample.nrrd")), "--output", str(meas)]) == 0
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--samples", "2", "--steps", "2",
                 "--output", str(out), "--disagreement-output", str(dis), "--metrics-json", str(met),
                 "--progress-format", "none"]) == 0
    z = read_image(dis)
    assert z.array.shape == read_image(out).array.shape and np.isfinite(z.array).all() and (z.array >= 0).all()
    record = json.loads(met.read_text())
    assert record["disagreement_fraction"] == pytest.approx(float((z.array > 1.645).mean()), abs=1e-6)
    assert np.allclose(z.origin, read_image(out).origin)
    capsys.readouterr()
    assert main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(tmp_path / "f.nrrd"),
                 "--disagreement-output", str(tmp_path / "none.nrrd"), "--residual-output", str(tmp_path / "r.npz"),
                 "--progress-format", "none"]) == 0
    err = capsys.readouterr().err
    assert "needs --method score" in err and not (tmp_path / "none.nrrd").exists() and (tmp_path / "r.npz").exists()
    assert load_measurement(meas).n_slices == 1
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--samples", "1", "--output",
                 str(tmp_path / "x.nrrd"), "--disagreement-output", str(tmp_path / "y.nrrd")]) == 2
