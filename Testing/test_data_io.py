"""Image I/O round trips with geometry, readers for PNG / DICOM / .npy, resampling and normalisation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ScoreReconLib.data import (
    Image,
    ct_normalization,
    guess_modality,
    image_from_geometry,
    image_slices,
    mr_normalization,
    read_image,
    resample_image,
    window,
    write_image,
)
from ScoreReconLib.errors import ScoreReconError


def _volume(ndim: int) -> Image:
    rng = np.random.default_rng(0)
    if ndim == 2:
        arr = rng.normal(0, 500, (12, 9)).astype(np.float32)
        return Image(arr, (0.5, 0.75), (-10.0, 20.5), (0.0, 1.0, 1.0, 0.0))
    arr = rng.normal(0, 500, (3, 12, 9)).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    return Image(arr, (0.5, 0.75, 2.5), (-10.0, 20.5, 7.25), direction)


def _same_geometry(a: Image, b: Image) -> None:
    assert a.array.shape == b.array.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip_keeps_array_and_geometry(tmp_path, suffix, ndim):
    img = _volume(ndim)
    path = write_image(img, tmp_path / f"x{suffix}")
    back = read_image(path)
    _same_geometry(img, back)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.array.dtype == np.float32
    # nothing but the target was left in the folder (atomic write, temporary removed)
    assert [p.name for p in tmp_path.iterdir()] == [f"x{suffix}"]


def test_npy_round_trip_and_bad_npy(tmp_path):
    img = _volume(3)
    write_image(img, tmp_path / "v.npy")
    back = read_image(tmp_path / "v.npy")
    np.testing.assert_array_equal(back.array, img.array)
    assert back.spacing == (1.0, 1.0, 1.0)
    np.save(tmp_path / "line.npy", np.arange(5.0))
    np.save(tmp_path / "cplx.npy", np.ones((4, 4), np.complex64))
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    for name in ("line.npy", "cplx.npy", "junk.npy"):
        with pytest.raises(ScoreReconError, match="npy"):
            read_image(tmp_path / name)


def test_png_read_gray_and_rgb(tmp_path):
    from PIL import Image as PILImage

    gray = (np.arange(20 * 16) % 251).reshape(20, 16).astype(np.uint8)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.array.shape == (20, 16)
    np.testing.assert_array_equal(got.array, gray.astype(np.float32))
    rgb = np.stack([gray, gray, gray], axis=-1)
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    got = read_image(tmp_path / "c.png")
    assert got.array.shape == (20, 16)
    np.testing.assert_allclose(got.array, gray.astype(np.float32))


def test_dicom_file_and_series_folder(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    img = read_image(path)
    assert img.array.shape == (1, 128, 128)  # one slice, kept 3-D with its z position
    assert img.modality == "CT"
    np.testing.assert_allclose(img.spacing[:2], (0.661468, 0.661468), rtol=1e-5)
    assert img.origin[2] == pytest.approx(-75.7, abs=0.05)
    assert img.array.min() < -200 and guess_modality(img) == "CT"  # rescaled to HU
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(path, series / "slice1.dcm")
    vol = read_image(series)
    np.testing.assert_array_equal(vol.array, img.array)
    # written back as NRRD, the slice keeps its in-plane geometry
    back = read_image(write_image(img, tmp_path / "ct.nrrd"))
    _same_geometry(img, back)


def test_read_errors(tmp_path):
    with pytest.raises(ScoreReconError, match="does not exist"):
        read_image(tmp_path / "missing.nrrd")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScoreReconError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "broken.nrrd").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ScoreReconError, match="corrupt or unsupported"):
        read_image(tmp_path / "broken.nrrd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreReconError, match="no DICOM series"):
        read_image(tmp_path / "empty")


@pytest.mark.parametrize("name", ["out.png", "out.mhd", "out"])
def test_write_refuses_unsupported_formats(tmp_path, name):
    with pytest.raises(ScoreReconError, match="cannot write"):
        write_image(_volume(2), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_resample_keeps_field_of_view():
    img = _volume(3)
    img = img.with_array(np.full(img.array.shape, 7.0, np.float32))
    out = resample_image(img, 16)
    assert out.array.shape == (3, 16, 16)
    np.testing.assert_allclose(out.array, 7.0, rtol=1e-5)
    h, w = img.array.shape[-2:]
    # extent (x ↔ columns W, y ↔ rows H) unchanged, slice spacing kept
    assert out.spacing[0] * 16 == pytest.approx(img.spacing[0] * w)
    assert out.spacing[1] * 16 == pytest.approx(img.spacing[1] * h)
    assert out.spacing[2] == img.spacing[2]
    # the physical position of the image's outer corner (edge of the first pixel) is unchanged
    d = np.asarray(img.direction).reshape(3, 3)
    corner_in = np.asarray(img.origin) - d @ (np.asarray(img.spacing) * [0.5, 0.5, 0])
    corner_out = np.asarray(out.origin) - d @ (np.asarray(out.spacing) * [0.5, 0.5, 0])
    np.testing.assert_allclose(corner_out, corner_in, atol=1e-9)
    assert resample_image(out, 16).array.shape == (3, 16, 16)


def test_normalisations_and_helpers():
    ct = ct_normalization()
    assert ct.forward(-1000.0) == 0.0 and ct.forward(2000.0) == 1.0
    assert ct.forward(4000.0) > 1.0  # unclipped: metal stays representable
    np.testing.assert_allclose(ct.inverse(ct.forward(np.array([-500.0, 123.0]))), [-500.0, 123.0], rtol=1e-6)
    assert type(ct).from_dict(ct.to_dict()) == ct
    a = np.linspace(0, 200, 1001, dtype=np.float32)
    mr = mr_normalization(a)
    assert mr.kind == "scale" and mr.low == 0.0 and 195 < mr.high <= 200
    np.testing.assert_array_equal(window(np.array([-2000.0, 500.0, 3000.0]), -1000, 2000), [0.0, 0.5, 1.0])
    assert image_slices(np.zeros((4, 5))).shape == (1, 4, 5)
    assert image_slices(np.zeros((2, 4, 5))).shape == (2, 4, 5)
    img = image_from_geometry(np.zeros((2, 4, 5)), _volume(3).geometry())
    assert img.spacing == _volume(3).spacing
    with pytest.raises(ScoreReconError):
        image_slices(np.zeros(5))
    assert guess_modality(Image(np.full((4, 4), -1000.0, np.float32))) == "CT"
    assert guess_modality(Image(np.full((4, 4), 30.0, np.float32))) == "MR"


def test_sitk_reads_what_write_image_writes_for_a_volume(tmp_path):
    img = _volume(3)
    path = write_image(img, tmp_path / "v.nii.gz")
    s = sitk.ReadImage(str(path))
    assert s.GetSize() == (9, 12, 3)  # SimpleITK (x, y, z) = (W, H, Z)
    np.testing.assert_allclose(s.GetSpacing(), img.spacing, rtol=1e-6)


def test_single_dicom_slice_keeps_its_z_position_through_simulate_and_reconstruct(tmp_path):
    """CT_small.dcm lies at z = −75.7 mm: the reconstruction must land there too, not at z = 0 (issue 20)."""
    pydicom_data = pytest.importorskip("pydicom.data")
    from ScoreReconLib import cli

    path = pydicom_data.get_testdata_file("CT_small.dcm")
    src = read_image(path)
    meas, out = tmp_path / "m.npz", tmp_path / "r.nrrd"
    assert cli.main(["simulate", "--task", "sparse-ct", "--views", "16", "--input", path, "--output", str(meas),
                     "--size", "32"]) == 0
    assert cli.main(["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(out),
                     "--progress-format", "none"]) == 0
    got = read_image(out)
    assert got.array.shape == (1, 32, 32)
    assert got.origin[2] == pytest.approx(src.origin[2], abs=1e-3)
    np.testing.assert_allclose(got.direction, src.direction, atol=1e-6)
    assert got.spacing[2] == pytest.approx(src.spacing[2])


def test_mri_per_image_scale_is_no_mismatch_but_a_wrong_ct_window_is():
    from ScoreReconLib.data import Normalization, ct_normalization, normalization_mismatch

    model_mr = Normalization("scale", 0.0, 1.0)
    assert normalization_mismatch(Normalization("scale", 0.0, 186.96), model_mr) is None
    assert normalization_mismatch(ct_normalization(), ct_normalization()) is None
    wrong = normalization_mismatch(ct_normalization(-1000.0, 1000.0), ct_normalization())
    assert "HU [-1000, 1000]" in wrong and "re-simulate" in wrong
    assert "use a model of the measurement's modality" in normalization_mismatch(ct_normalization(), model_mr)


def test_the_documented_mri_workflow_prints_no_normalisation_warning(tmp_path, capsys):
    """The shipped MRI sample as NIfTI → simulate --task mri → reconstruct --method score: no warning (issue 20)."""
    from ScoreReconLib import cli
    from ScoreReconLib.resources import resource_path

    nii, meas = tmp_path / "brain.nii.gz", tmp_path / "k.npz"
    write_image(read_image(resource_path("samples", "mri_sample.nrrd")), nii)
    assert cli.main(["simulate", "--task", "mri", "--input", str(nii), "--output", str(meas), "--size", "32"]) == 0
    capsys.readouterr()
    assert cli.main(["reconstruct", "--input", str(meas), "--method", "score", "--output", str(tmp_path / "r.nrrd"),
                     "--steps", "1", "--samples", "1", "--progress-format", "none", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "normalised" not in err and "results may be off" not in err, err
