"""Image I/O: round trips with geometry, readers (PNG/DICOM/.npy/NIfTI), resampling, normalisation, bad files."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import assert_no_crash, assert_refused, disc_hu, fuzz_bytes

from ScoreReconLib.cli import main
from ScoreReconLib.data import (
    Image,
    ct_normalization,
    guess_modality,
    image_from_geometry,
    image_slices,
    keep_locale,
    mr_normalization,
    read_image,
    resample_image,
    window,
    write_image,
)
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.measurement import load_measurement


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


# ---------------------------------------------------- bad images: one line, exit 2, nothing written
def test_truncated_nifti_is_refused(ct_files, tmp_path, capsys):
    raw = ct_files["nii"].read_bytes()
    (tmp_path / "in").mkdir()
    cut = tmp_path / "in" / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["simulate", "--input", cut, "--task", "sparse-ct", "--output", out / "m.npz"], capsys, out,
                   "truncated")
    gz = ct_files["niigz"].read_bytes()
    cutgz = tmp_path / "in" / "cut.nii.gz"
    cutgz.write_bytes(gz[: len(gz) // 2])
    assert_refused(["simulate", "--input", cutgz, "--task", "sparse-ct", "--output", out / "m.npz"], capsys, out,
                   "truncated")
    # a complete gzip stream whose voxel data are short
    short = tmp_path / "in" / "short.nii.gz"
    short.write_bytes(gzip.compress(gzip.decompress(gz)[:-100]))
    assert_refused(["simulate", "--input", short, "--task", "sparse-ct", "--output", out / "m.npz"], capsys, out,
                   "truncated")


def test_nan_and_inf_stored_in_nifti_are_refused(tmp_path, capsys):
    a = disc_hu()
    a[3, 3], a[5, 5] = np.nan, np.inf
    for name in ("nan.nii", "nan.nii.gz"):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name))
        # SimpleITK alone hands these back as zeros; the reader must not
        with pytest.raises(ScoreReconError, match="NaN or infinite"):
            read_image(tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["simulate", "--input", tmp_path / "nan.nii", "--task", "sparse-ct", "--output", out / "m.npz"],
                   capsys, out, "NaN")


def test_intact_nifti_still_reads_identically(ct_files):
    a = read_image(ct_files["nii"]).array
    b = read_image(ct_files["niigz"]).array
    np.testing.assert_array_equal(a, disc_hu())
    np.testing.assert_array_equal(b, disc_hu())


def _write_dicom_series(folder: Path, uid: str, n: int, value: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = sitk.GetImageFromArray((disc_hu() + value).astype(np.int16)[None])
        img.SetSpacing((0.9, 0.9, 2.0))
        img.SetOrigin((0.0, 0.0, 2.0 * k))
        for tag, v in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|0013", str(k + 1)),
                       ("0020|0032", f"0\\0\\{2.0 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                       ("0008|0018", f"{uid}.{k + 1}"), ("0028|1052", "0"), ("0028|1053", "1")):
            img.SetMetaData(tag, v)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{uid[-3:]}_{k}.dcm"))
        with keep_locale():  # GDCM's writer switches the C locale too
            writer.Execute(img)


def test_dicom_folder_with_two_series_is_refused(tmp_path, capsys):
    import locale

    encoding = locale.getpreferredencoding(False)
    folder = tmp_path / "dicom"
    _write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.1.111", 3, 0.0)
    _write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.1.222", 2, 100.0)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["simulate", "--input", folder, "--task", "sparse-ct", "--output", out / "m.npz"], capsys,
                          out, "holds 2 DICOM series")
    assert "111" in line and "222" in line and "own folder" in line
    one = tmp_path / "one"
    _write_dicom_series(one, "1.2.826.0.1.3680043.2.1125.1.333", 3, 0.0)
    assert read_image(one).array.shape == (3, 32, 32)
    # GDCM switches the C locale to "C"; the reader restores it, or Python's text I/O would turn ASCII
    assert locale.getpreferredencoding(False) == encoding


def test_empty_dicom_folder_is_one_quiet_line(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["simulate", "--input", str(tmp_path / "empty"), "--task", "sparse-ct", "--output", str(out / "m.npz")])
    err = capfd.readouterr().err  # capfd: ITK writes its warnings from C++ straight to fd 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "no DICOM series" in lines[0], err
    assert list(out.iterdir()) == []


def test_nifti_header_parser_rejects_garbage_dims(tmp_path):
    raw = bytearray((tmp_path / "x.nii").write_bytes(b"") or b"")
    img = sitk.GetImageFromArray(disc_hu())
    sitk.WriteImage(img, str(tmp_path / "x.nii"))
    raw = bytearray((tmp_path / "x.nii").read_bytes())
    raw[40:56] = struct.pack("<8h", 2, -5, 32, 1, 1, 1, 1, 1)
    (tmp_path / "bad.nii").write_bytes(bytes(raw))
    with pytest.raises(ScoreReconError):
        read_image(tmp_path / "bad.nii")


def test_float64_overflow_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.full((32, 32), 1e300))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["simulate", "--input", tmp_path / "big.npy", "--task", "sparse-ct", "--output", out / "m.npz"],
                   capsys, out, "float32")


def test_fuzz_images(ct_files, tmp_path, capsys):
    rng = np.random.default_rng(1)
    out = tmp_path / "out"
    out.mkdir()
    for k in range(30):
        src = [ct_files["nii"], ct_files["niigz"], ct_files["ct"]][k % 3]
        bad = tmp_path / f"img{k}{''.join(src.suffixes)}"
        bad.write_bytes(fuzz_bytes(src.read_bytes(), rng))
        if assert_no_crash(["simulate", "--input", bad, "--task", "sparse-ct", "--views", "4", "--output",
                             out / "m.npz"], capsys) == 0:
            load_measurement(out / "m.npz")  # whatever was accepted is a valid, finite measurement
            (out / "m.npz").unlink()
        assert list(out.iterdir()) == []
