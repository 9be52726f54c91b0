"""What a new user tripped over (issue 20): mix-ups that passed silently (MR data under a CT task, a CT image
simulated as MRI, a reference on another grid) and first steps that failed without saying why."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ScoreReconLib.cli import main
from ScoreReconLib.data import Image, read_image, write_image
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


def test_a_missing_data_folder_says_how_to_make_it(tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tmp_path / "data" / "heldout" / "ct"), "--task", "sparse-ct",
               "--model", "default-ct", "--methods", "fbp"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "scorerecon prepare-data --output data" in err
    rc = main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "ckpt"), "--size", "32",
               "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "scorerecon prepare-data --output data" in err


def test_the_h5py_hint_names_what_works_from_a_checkout():
    from ScoreReconLib.kspace_io import INSTALL_H5PY

    assert "pip install h5py" in INSTALL_H5PY and 'pip install -e ".[mri]"' in INSTALL_H5PY
    assert "scorerecon[mri]'" not in INSTALL_H5PY  # not on the package index


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
