"""Training data, denoising score matching, checkpoints, exact resume, DDP and the train/sample CLI."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading

import numpy as np
import pytest
import torch

from ScoreReconLib.cli import main as cli_main
from ScoreReconLib.datasets import SliceDataset, augment_batch, square_resize
from ScoreReconLib.errors import CancelledError, ScoreReconError
from ScoreReconLib.networks import CONFIG_FILE, TRAINING_STATE_FILE, WEIGHTS_FILE, load_prior
from ScoreReconLib.training import TrainConfig, estimate_sigma_max, save_image_grid, train

TINY = {"channels": [8, 16, 16], "attention_levels": [False, False, True]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def ellipses(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` random-ellipse phantoms (count, n, n) in HU (air -1000, tissue up to ~1000)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    out = np.full((count, n, n), -1000.0, np.float32)
    for k in range(count):
        body = (xx / 0.8) ** 2 + (yy / 0.7) ** 2 < 1
        out[k][body] = 0.0
        for _ in range(3):
            cx, cy = rng.uniform(-0.4, 0.4, 2)
            a, b = rng.uniform(0.1, 0.3, 2)
            out[k][((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1] = rng.uniform(-200, 1000)
    return out


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    vol = ellipses(24, 12, 0)
    vol[:2] = -1000.0  # two empty slices, to be skipped
    np.save(root / "patient1.npy", vol)
    (root / "sub").mkdir()
    np.save(root / "sub" / "slice.npy", ellipses(20, 1, 1)[0])
    (root / "notes.txt").write_text("not an image")
    (root / "broken.nii.gz").write_bytes(b"this is not a nifti file")
    return root


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), output=str(out), image_size=16, steps=6, batch_size=4, network=TINY,
                modality="CT", device="cpu", show_progress=False, checkpoint_every=3, warmup=2, log_every=2,
                prior="whole")  # the whole-image path; patch priors are tested in test_patches.py
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------- data
def test_slice_dataset_reads_skips_and_reports(ct_folder):
    ds = SliceDataset(ct_folder, 16, modality=None, axis=0)
    assert ds.modality == "CT"  # guessed from negative HU
    assert len(ds) == 10 + 1  # 12 slices minus 2 empty, plus one 2-D image
    assert ds.slices.shape == (11, 1, 16, 16) and ds.slices.dtype == torch.float32
    assert 0.0 <= ds.slices.min() and ds.slices.max() <= 1.0
    joined = " | ".join(ds.warnings)
    assert "broken.nii.gz" in joined and "notes.txt" in joined
    desc = ds.describe()
    assert desc["n_slices"] == 11 and desc["hu_window"] == [-1000.0, 2000.0]
    both = SliceDataset(ct_folder, 16, modality="CT", axis="all")
    assert len(both) > len(ds)  # coronal and sagittal slices of the volume too
    narrow = SliceDataset(ct_folder, 16, modality="CT", hu_window=(-100, 100))
    assert not torch.allclose(narrow.slices, ds.slices)


def test_dicom_series_folder(tmp_path):
    import shutil

    pydicom_data = pytest.importorskip("pydicom.data")
    series = tmp_path / "patient" / "series1"
    series.mkdir(parents=True)
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), series / "IM0001")  # no suffix: DICM magic
    ds = SliceDataset(tmp_path, 32, axis="all")
    assert ds.modality == "CT" and len(ds) == 1 and ds.sources[0]["path"].endswith("series1")
    assert float(ds.slices.std()) > 0.01


def test_mr_percentile_scaling(tmp_path):
    vol = np.abs(ellipses(16, 3, 2)) * 3.0
    np.save(tmp_path / "mr.npy", vol)
    ds = SliceDataset(tmp_path, 16, modality="MR")
    assert ds.modality == "MR"
    nz = ds.slices[ds.slices > 0]
    assert ds.slices.max() <= 1.0 and float(nz.max()) == pytest.approx(1.0, abs=1e-6)


def test_bad_data_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScoreReconError, match="no images found"):
        SliceDataset(empty, 16)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.nii.gz").write_bytes(b"junk")
    (bad / "b.npy").write_bytes(b"junk")
    with pytest.raises(ScoreReconError, match=r"no usable training slices.*a\.nii\.gz"):
        SliceDataset(bad, 16)
    blank = tmp_path / "blank"
    blank.mkdir()
    np.save(blank / "air.npy", np.full((3, 16, 16), -1000.0, np.float32))
    with pytest.raises(ScoreReconError, match="nearly empty"):
        SliceDataset(blank, 16, modality="CT")
    with pytest.raises(ScoreReconError, match="does not exist"):
        SliceDataset(tmp_path / "missing", 16)
    with pytest.raises(ScoreReconError, match="axis"):
        SliceDataset(blank, 16, axis=3)


def test_square_resize_keeps_aspect():
    img = torch.ones(10, 20)
    out = square_resize(img, (1.0, 1.0), 16)
    assert out.shape == (16, 16)
    rows = out.sum(dim=1) > 0
    assert int(rows.sum()) == 8 and bool(out[:, 0].any())  # 20 wide fills 16, 10 high → 8 rows, centred
    assert not out[0].any() and not out[-1].any()
    # anisotropic pixels: 10 rows of 2 mm = 20 mm high, 20 columns of 1 mm → square
    assert bool((square_resize(img, (2.0, 1.0), 16) > 0.99).all())


def test_augment_is_deterministic_and_mild():
    x = torch.rand(4, 1, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ident = augment_batch(x, torch.Generator().manual_seed(5), flip=False, max_rotate_deg=0, zoom=(1, 1), max_shift=0)
    torch.testing.assert_close(ident, x, atol=1e-5, rtol=0)


def test_estimate_sigma_max_is_max_pairwise_distance():
    x = torch.rand(7, 1, 4, 4)
    flat = x.flatten(1)
    brute = max(float((flat[i] - flat[j]).norm()) for i in range(7) for j in range(7))
    assert estimate_sigma_max(x) == pytest.approx(round(brute, 1))
    assert estimate_sigma_max(x[:1]) == pytest.approx(1.6)  # 0.4 * size fallback


def test_save_image_grid(tmp_path):
    from PIL import Image

    path = save_image_grid(torch.rand(5, 1, 8, 8), tmp_path / "g.png")
    img = Image.open(path)
    assert img.mode == "L" and img.size == (3 * 10 + 2, 2 * 10 + 2)


# ------------------------------------------------------------------------------------- train
def test_training_loss_drops_and_checkpoint_loads(ct_folder, tmp_path):
    out = tmp_path / "ckpt"
    res = train(_cfg(ct_folder, out, steps=30, batch_size=8, lr=2e-3, warmup=3, sample_every=30, log_every=5))
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert first > 0.8 and last < 0.8 * first, (first, last)
    for name in (WEIGHTS_FILE, CONFIG_FILE, TRAINING_STATE_FILE, "loss_log.csv", "samples/step_0000030.png"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["steps"] == 30 and cfg["modality"] == "CT" and cfg["image_size"] == 16
    assert cfg["sde"]["sigma_max"] == res.sigma_max and cfg["final_loss"] == pytest.approx(res.final_loss)
    with open(out / "loss_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [3, 5, 6, 9, 10, 12, 15, 18, 20, 21, 24, 25, 27, 30]
    prior = load_prior(out)
    prior.precision = "fp32"  # the training network's arithmetic ("auto" may be bf16 on this CPU)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(prior.score(x, 0.5), res.ema_model(x, torch.full((2,), 0.5)))
    with pytest.raises(ScoreReconError, match="trained on 16x16"):
        prior.check_compatible(32, "CT")
    with pytest.raises(ScoreReconError, match="CT prior but the input is MR"):
        prior.check_compatible(16, "MR")
    state = torch.load(out / TRAINING_STATE_FILE, weights_only=True)
    assert int(state["step"]) == 30 and state["rng"].dtype == torch.uint8


def test_resume_continues_exactly(ct_folder, tmp_path):
    full = train(_cfg(ct_folder, tmp_path / "full", steps=6))
    part = train(_cfg(ct_folder, tmp_path / "part", steps=3))
    assert part.losses == full.losses[:3]
    rest = train(_cfg(ct_folder, tmp_path / "part", steps=6, resume=True))
    assert rest.start_step == 3 and rest.steps == 6
    assert rest.losses == full.losses[3:]  # same batch, t, z, weights and Adam state: identical losses
    a = load_prior(tmp_path / "full").model.state_dict()
    b = load_prior(tmp_path / "part").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "part" / "loss_log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [2, 3, 4, 6]


def test_output_and_resume_errors(ct_folder, tmp_path):
    out = tmp_path / "ckpt"
    train(_cfg(ct_folder, out, steps=2))
    with pytest.raises(ScoreReconError, match="already holds a checkpoint.*--resume"):
        train(_cfg(ct_folder, out, steps=2))
    with pytest.raises(ScoreReconError, match="already at step 2"):
        train(_cfg(ct_folder, out, steps=2, resume=True))
    (out / TRAINING_STATE_FILE).unlink()
    with pytest.raises(ScoreReconError, match="cannot resume"):
        train(_cfg(ct_folder, out, steps=4, resume=True))
    with pytest.raises(ScoreReconError, match="has no config.json"):
        train(_cfg(ct_folder, tmp_path / "new", steps=4, resume=True))
    with pytest.raises(ScoreReconError, match="multiple of 4"):
        train(_cfg(ct_folder, tmp_path / "odd", image_size=18))


def test_cancel_keeps_a_checkpoint(ct_folder, tmp_path):
    cancel = threading.Event()

    def progress(done, total, message):
        if done >= 2:
            cancel.set()

    out = tmp_path / "ckpt"
    with pytest.raises(CancelledError):
        train(_cfg(ct_folder, out, steps=50, checkpoint_every=0), progress=progress, cancel=cancel)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["steps"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    rest = train(_cfg(ct_folder, out, steps=4, resume=True))
    assert rest.start_step == 2


# --------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, dump: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    res = train(_cfg(data, out, steps=2, checkpoint_every=0))
    torch.save({"model": res.model.state_dict(), "losses": res.losses}, f"{dump}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_stay_in_sync(ct_folder, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(ct_folder), str(out), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert r0["losses"] == r1["losses"]  # losses are averaged over ranks
    state = torch.load(out / TRAINING_STATE_FILE, weights_only=True)
    assert state["rng"].shape[0] == 2 and not torch.equal(state["rng"][0], state["rng"][1])
    assert json.loads((out / CONFIG_FILE).read_text())["steps"] == 2


# --------------------------------------------------------------------------------------- CLI
def test_cli_train_and_sample_round_trip(ct_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["train", "--data", str(ct_folder), "--output", str(out), "--size", "16", "--steps", "4",
                   "--prior", "whole", "--channels", "8,16,16", "--batch-size", "2", "--checkpoint-every", "2",
                   "--device", "cpu", "--quiet", "--description", "ellipses"])
    assert rc == 0
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["data"]["description"] == "ellipses" and cfg["network"]["channels"] == [8, 16, 16]
    rc = cli_main(["train", "--data", str(ct_folder), "--output", str(out), "--steps", "6", "--resume",
                   "--device", "cpu", "--quiet"])
    assert rc == 0 and json.loads((out / CONFIG_FILE).read_text())["steps"] == 6
    grid = tmp_path / "grid.png"
    rc = cli_main(["sample", "--model", str(out), "--n", "2", "--output", str(grid), "--steps", "3",
                   "--sampler", "em", "--device", "cpu", "--quiet"])
    assert rc == 0 and grid.is_file()
    # predictor-corrector sampler of ScoreReconLib.sampling
    rc = cli_main(["sample", "--model", str(out), "--n", "1", "--output", str(grid), "--steps", "2",
                   "--device", "cpu", "--quiet", "--threads", "1"])
    assert rc == 0
    rc = cli_main(["sample", "--model", str(out), "--n", "1", "--output", str(tmp_path / "g.jpg"), "--quiet"])
    assert rc == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    rc = cli_main(["train", "--data", str(empty), "--output", str(tmp_path / "x"), "--size", "64", "--steps", "2",
                   "--device", "cpu", "--quiet"])
    assert rc == 2 and "no images found" in capsys.readouterr().err
