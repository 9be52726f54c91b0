"""Shared pytest setup: few threads, a private projector cache, fixed seeds, and the shared fixtures.

Shared fixtures: small input files (``ct_files``), tiny untrained priors (``tiny_ct``,
``tiny_ct_16``), tiny trained priors (``trained_whole_prior``, ``trained_patch_prior``). They are
session-scoped and read-only: a test that edits one copies it first. Plain helpers (phantoms, the analytic
Gaussian prior, the CLI refusal check) are in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_PATCH_NETWORK, disc_hu, random_insert_phantoms, save_tiny_checkpoint


def _threads() -> int:
    """At most 2 threads, fewer if ``OMP_NUM_THREADS`` says so (oversubscribed CPUs run far slower)."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS") or 2)
    except ValueError:
        wanted = 2
    return max(1, min(2, os.cpu_count() or 1, wanted))


torch.set_num_threads(_threads())
# the CLI's load-aware default (ScoreReconLib.threads) honours OMP_NUM_THREADS: commands run in-process by the
# tests keep this count whatever the machine's load, so results compared across runs use the same threads
os.environ["OMP_NUM_THREADS"] = str(_threads())


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the CT system-matrix cache of the test run out of the user's cache."""
    cache = tmp_path_factory.mktemp("scorerecon-cache")
    old = os.environ.get("SCORERECON_CACHE")
    os.environ["SCORERECON_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SCORERECON_CACHE", None)
    else:
        os.environ["SCORERECON_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny networks run fastest (and steadiest on a shared CPU) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ----------------------------------------------------------------------------- shared inputs and priors
@pytest.fixture(scope="session")
def ct_files(tmp_path_factory) -> dict[str, Path]:
    """The 32² disc phantom (helpers.disc_hu) as .nrrd / .nii / .nii.gz, and sparse-ct measurement files of it
    (8 views): ``meas`` one slice, ``meas2`` two. Read-only: tests write edited copies elsewhere."""
    import SimpleITK as sitk

    from ScoreReconLib.data import Image, write_image
    from ScoreReconLib.measurement import save_measurement, simulate

    d = tmp_path_factory.mktemp("small-ct")
    img = Image(disc_hu(), (0.9, 0.9), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "CT")
    write_image(img, d / "ct.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(disc_hu()), str(d / "ct.nii"))
    sitk.WriteImage(sitk.GetImageFromArray(disc_hu()), str(d / "ct.nii.gz"))
    m, _, _ = simulate(img, "sparse-ct", views=8)
    save_measurement(d / "meas.npz", m)
    m2, _, _ = simulate(Image(np.stack([disc_hu()] * 2), (0.9, 0.9, 2.0), (0, 0, 0), tuple(np.eye(3).ravel()), "CT"),
                        "sparse-ct", views=8)
    save_measurement(d / "meas2.npz", m2)
    return {"dir": d, "ct": d / "ct.nrrd", "nii": d / "ct.nii", "niigz": d / "ct.nii.gz", "meas": d / "meas.npz",
            "meas2": d / "meas2.npz"}


@pytest.fixture(scope="session")
def tiny_ct(tmp_path_factory) -> Path:
    """An untrained, tiny CT prior at 32² (checks plumbing, not quality). Read-only: copy it to edit it."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("prior") / "tiny-ct", 32, "CT")


@pytest.fixture(scope="session")
def tiny_ct_16(tmp_path_factory) -> Path:
    """The same tiny untrained CT prior at 16². Read-only: copy it to edit it."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("prior") / "tiny", 16, "CT")


@pytest.fixture(scope="session")
def trained_whole_prior(tmp_path_factory) -> tuple[Path, Path]:
    """A whole-image CT prior trained for 2 steps by ``scorerecon train`` at 16²: (its data, its checkpoint)."""
    from ScoreReconLib.cli import main

    d = tmp_path_factory.mktemp("train")
    np.save(d / "vol.npy", np.stack([disc_hu()] * 4))
    out = d / "ckpt"
    rc = main(["train", "--data", str(d / "vol.npy"), "--output", str(out), "--size", "16", "--steps", "2",
               "--batch-size", "2", "--channels", "8,8", "--attention-levels", "0,0", "--quiet", "--prior", "whole"])
    assert rc == 0
    return d / "vol.npy", out


@pytest.fixture(scope="session")
def trained_patch_prior(tmp_path_factory):
    """An MR patch prior (8² patches) trained for 8 steps on six 32² phantoms: (its folder, the TrainResult)."""
    from ScoreReconLib.training import TrainConfig, train

    data = tmp_path_factory.mktemp("mr")
    np.save(data / "vol.npy", random_insert_phantoms(32, 6, 0))
    out = tmp_path_factory.mktemp("ckpt") / "patch"
    cfg = TrainConfig(data=str(data), output=str(out), image_size=32, steps=8, batch_size=8,
                      network=TINY_PATCH_NETWORK, modality="MR", device="cpu", show_progress=False,
                      checkpoint_every=4, warmup=2, log_every=2, prior="patch", patch_size=8)
    res = train(cfg)
    return out, res


# ----------------------------------------------------------------------------- Slicer module tests
def _standin():
    """Testing/slicer_stub/standin.py, loaded by path (it is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "slicer_stub" / "standin.py"
    spec = importlib.util.spec_from_file_location("scorerecon_slicer_standin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sr():
    """The ScoreRecon module imported on slicer-core with the stand-ins in place (per test module)."""
    standin = _standin()
    if standin.slicer_core() is None:
        pytest.skip("slicer-core is not installed (pip install slicer-core==5.13.31053.0)")
    with standin.stand_ins() as module:
        yield module


@pytest.fixture
def slicer(sr):
    """The ``slicer`` package with a fresh, empty scene for each test."""
    import slicer as slicer_module

    slicer_module.mrmlScene = slicer_module.vtkMRMLScene()
    return slicer_module
