"""CT and MR kept apart: data of the other modality under a task, by metadata or intensities."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import assert_refused, disc_hu

from ScoreReconLib.cli import main
from ScoreReconLib.data import Image, write_image
from ScoreReconLib.resources import resource_path


def test_evaluate_refuses_mr_images_for_a_ct_task(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(resource_path("samples", "mri_sample.nrrd"), data / "brain.nrrd")  # tagged MR
    rc = main(["evaluate", "--data", str(data), "--task", "sparse-ct", "--model", "default-ct", "--methods", "fbp",
               "--n-images", "1", "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "brain.nrrd does not look like CT: its metadata say MR" in err and "choose a task and model" in err


def test_evaluate_warns_when_only_the_intensities_disagree(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    write_image(Image(((xx**2 + yy**2) < 0.6).astype(np.float32) * 500.0, (1.0, 1.0), (0.0, 0.0),
                      (1.0, 0.0, 0.0, 1.0)), data / "disc.nrrd")  # untagged, no HU values
    rc = main(["evaluate", "--data", str(data), "--task", "sparse-ct", "--model", "default-ct", "--methods", "fbp",
               "--n-images", "1", "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "disc.nrrd does not look like CT: its intensities look like MR; it is evaluated as CT" in err


def test_simulate_mri_from_a_ct_image_warns(tmp_path, capsys):
    rc = main(["simulate", "--task", "mri", "--input", str(resource_path("samples", "ct_head_sample.nrrd")),
               "--output", str(tmp_path / "k.npz"), "--size", "32"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "does not look like MR: its metadata say CT, but --task mri simulates MR measurements" in err
    capsys.readouterr()
    assert main(["simulate", "--task", "sparse-ct", "--input", str(resource_path("samples", "ct_head_sample.nrrd")),
                 "--output", str(tmp_path / "s.npz"), "--size", "32"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("want", ["CT", "MR"])
def test_modality_mismatch_says_how_it_knows(want):
    from ScoreReconLib.data import modality_mismatch

    hu = Image(np.full((4, 4), -1000.0, np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    tagged_mr = Image(np.ones((4, 4), np.float32), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "MR")
    if want == "CT":
        assert modality_mismatch(hu, "CT") is None
        assert modality_mismatch(tagged_mr, "CT", "x.nrrd") == ("x.nrrd does not look like CT: its metadata say MR",
                                                                True)
    else:
        assert modality_mismatch(tagged_mr, "MR") is None
        assert modality_mismatch(hu, "MR")[1] is False


def test_train_refuses_a_folder_mixing_ct_and_mr(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "a_ct.npy", np.stack([disc_hu()] * 2))
    np.save(data / "b_mr.npy", np.stack([np.abs(disc_hu()) / 10 + 5] * 2))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["train", "--data", data, "--output", out / "ckpt", "--size", "16", "--steps", "2", "--prior",
                    "whole"], capsys, out, "one prior learns one modality")
