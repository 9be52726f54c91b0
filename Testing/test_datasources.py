"""Offline data sources: the .inv3 and .deb readers, the shipped demo samples, manifest and CLI errors.

No test downloads anything: packages are built here in memory, and fetching is exercised only
through its cached-file and error paths.
"""

from __future__ import annotations

import io
import json
import plistlib
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ScoreReconLib import datasources as ds
from ScoreReconLib.cli import build_parser, main
from ScoreReconLib.data import Image, read_image
from ScoreReconLib.datasources import fetch, registry
from ScoreReconLib.errors import ScoreReconError


# ------------------------------------------------------------------------------ helpers
def _tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _inv3(volume: np.ndarray, spacing=(0.5, 0.6, 1.5), orientation=1, matrix_bytes: bytes | None = None,
          with_plist: bool = True) -> bytes:
    """A Cranium-like InVesalius project: folder/main.plist + folder/matrix.dat (little-endian)."""
    plist = {
        "format_version": 1,
        "modality": "CT",
        "name": "synthetic",
        "orientation": orientation,
        "matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(volume.shape)},
        "spacing": list(spacing),
        "scalar_range": [int(volume.min()), int(volume.max())],
    }
    files = {"tmpabc/matrix.dat": volume.astype("<i2").tobytes() if matrix_bytes is None else matrix_bytes,
             "tmpabc/mask_0.plist": b"<plist/>"}
    if with_plist:
        files["tmpabc/main.plist"] = plistlib.dumps(plist)
    return _tar_bytes(files)


def _ar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _deb(files: dict[str, bytes]) -> bytes:
    data = _tar_bytes({f"./{k}": v for k, v in files.items()}, mode="w:xz")
    control = _tar_bytes({"./control": b"Package: fake\n"})
    return _ar({"debian-binary": b"2.0\n", "control.tar.gz": control, "data.tar.xz": data})


# ------------------------------------------------------------------------------ InVesalius
def test_read_inv3_parses_plist_and_matrix():
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 3000, size=(3, 4, 5)).astype(np.int16)
    img = ds.read_inv3(_inv3(vol))
    assert img.array.shape == (3, 4, 5) and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array, vol[:, ::-1, :].astype(np.float32))  # rows flipped → anterior up
    assert img.spacing == (0.5, 0.6, 1.5)
    assert img.modality == "CT"
    assert len(img.direction) == 9 and img.metadata["name"] == "synthetic"


def test_read_inv3_from_file(tmp_path):
    vol = np.arange(2 * 3 * 3, dtype=np.int16).reshape(2, 3, 3) - 5
    path = tmp_path / "Cranium.inv3"
    path.write_bytes(_inv3(vol))
    np.testing.assert_array_equal(ds.read_inv3(path).array[1, 0], vol[1, 2])


@pytest.mark.parametrize("kwargs, match", [
    ({"matrix_bytes": b"\x00" * 10}, "holds 10 bytes"),
    ({"with_plist": False}, "no main.plist"),
    ({"orientation": 2}, "only axial"),
    ({"spacing": (1.0, 0.0, 1.0)}, "positive"),
])
def test_read_inv3_rejects_bad_projects(kwargs, match):
    with pytest.raises(ScoreReconError, match=match):
        ds.read_inv3(_inv3(np.zeros((2, 2, 2), np.int16), **kwargs))


def test_read_inv3_rejects_non_tar():
    with pytest.raises(ScoreReconError, match="tar"):
        ds.read_inv3(b"not a tar file at all")


# ------------------------------------------------------------------------------ .deb and wheels
def test_read_deb_member_pure_python(tmp_path):
    deb = tmp_path / "fake_1.0_all.deb"
    deb.write_bytes(_deb({"usr/share/doc/fake/copyright": b"License: GPL-2\n", "usr/share/fake/x.bin": b"\x01" * 7}))
    assert ds.read_deb_member(deb, "usr/share/doc/fake/copyright") == b"License: GPL-2\n"
    assert ds.read_deb_member(deb, "./usr/share/fake/x.bin") == b"\x01" * 7
    with pytest.raises(ScoreReconError, match="holds no file"):
        ds.read_deb_member(deb, "usr/share/fake/missing")
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(ScoreReconError, match="not a Debian package"):
        ds.read_deb_member(bad, "x")


def test_fetch_deb_uses_cached_file_without_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    (tmp_path / "debs").mkdir()
    cached = tmp_path / "debs" / "mricron-data_1.0_all.deb"
    cached.write_bytes(_deb({"a": b"b"}))
    assert ds.fetch_deb("mricron-data", tmp_path) == cached
    with pytest.raises(ScoreReconError, match="invesalius-examples.*apt-get is not available"):
        ds.fetch_deb("invesalius-examples", tmp_path)


def test_fetch_wheel_cached_and_member_pattern(tmp_path):
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "nilearn-0.14.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("nilearn-0.14.1.dist-info/licenses/LICENSE", "BSD")
        z.writestr("nilearn/datasets/data/t1.nii.gz", b"x")
    assert ds.fetch_wheel("nilearn==0.14.1", tmp_path) == whl
    assert ds.read_wheel_member(whl, "nilearn-*.dist-info/licenses/LICENSE") == b"BSD"
    with pytest.raises(ScoreReconError, match="holds no file"):
        ds.read_wheel_member(whl, "nilearn/other.nii.gz")


# ------------------------------------------------------------------------------ split and samples
def test_split_keeps_training_and_heldout_apart():
    train = {s.key for s in ds.SOURCES if s.role == "train"}
    heldout = {s.key for s in ds.SOURCES if s.role == "heldout"}
    assert train and heldout and not train & heldout
    assert all(s.output.startswith("heldout/") == (s.role == "heldout") for s in ds.SOURCES)
    assert len({s.output for s in ds.SOURCES}) == len(ds.SOURCES)
    assert all(ds.source(spec.source).role == "heldout" for spec in ds.SAMPLES.values())
    assert all(s.licence and s.sha256 for s in ds.SOURCES)


@pytest.mark.parametrize("task", ["sparse-ct", "limited-angle-ct", "metal-ct", "mri", "ct-head", "ct-neck"])
def test_shipped_samples_are_valid(task):
    path = ds.sample_path(task)
    assert path.suffix == ".nrrd" and path.stat().st_size <= 200 * 1024
    img = read_image(path)
    a = img.array
    assert a.ndim == 2 and a.shape[0] == a.shape[1] == 128
    assert np.isfinite(a).all() and a.std() > 0
    assert len(img.spacing) == 2 and all(0.1 < s < 5 for s in img.spacing)
    assert len(img.origin) == 2 and len(img.direction) == 4
    ct = task != "mri"
    assert img.modality == ("CT" if ct else "MR")
    if ct:  # HU: air or lung, soft tissue and bone all present
        assert a.min() >= -1100 and (a < -700).any() and (np.abs(a - 40) < 60).any() and a.max() > 700
    else:
        assert a.min() >= 0 and (a == 0).mean() > 0.2
    header = sitk.ReadImage(str(path))
    assert "licence" in header.GetMetaData(ds.PROVENANCE_KEY)


def test_sample_path_unknown_task():
    with pytest.raises(ScoreReconError, match="no demo sample"):
        ds.sample_path("pet")


def test_sample_readme_names_every_sample():
    text = (ds.sample_path("mri").parent / "README.md").read_text()
    for spec in ds.SAMPLES.values():
        assert spec.filename in text


# ------------------------------------------------------------------------------ conversion
def test_square_slice_block_mean_keeps_centre():
    arr = np.arange(64, dtype=np.float32).reshape(8, 8)
    img = Image(arr, (0.5, 0.5), (10.0, 20.0), (1.0, 0.0, 0.0, 1.0), "CT")
    out = ds.square_slice(img, 2, 2.0, fill=-1024.0)
    np.testing.assert_allclose(out.array, arr.reshape(2, 4, 2, 4).mean(axis=(1, 3)), atol=1e-4)
    # the centre of the first output pixel is the centre of the first 4×4 block
    np.testing.assert_allclose(out.origin, (10.0 + 0.75, 20.0 + 0.75))


def test_square_slice_pads_with_fill_and_keeps_values():
    img = Image(np.full((4, 6), 7.0, np.float32), (2.0, 3.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), "MR")
    out = ds.square_slice(img, 16, 2.0, fill=0.0)
    assert out.array.shape == (16, 16)
    assert out.array.max() == pytest.approx(7.0) and out.array.min() == 0.0
    assert out.array[8, 8] == pytest.approx(7.0) and out.array[0, 0] == 0.0


def test_convert_pydicom_ct_and_write_nrrd_roundtrip(tmp_path):
    src = ds.source("pydicom-ct-small")
    data, licence, package = ds.source_bytes(src, tmp_path)  # installed pydicom: no download
    assert package.startswith("installed:pydicom==") and b"MIT" in licence
    img = ds.convert_source(src, data)
    assert img.array.shape == (128, 128) and img.modality == "CT" and img.array.min() >= -1024
    path = ds.write_nrrd(img, tmp_path / "x.nrrd", "test provenance")
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkInt16
    back = read_image(path)
    np.testing.assert_array_equal(back.array, np.rint(img.array))
    assert back.modality == "CT" and back.spacing == pytest.approx(img.spacing)


def test_prepare_offline_source_writes_manifest_and_licences(tmp_path):
    rec = ds.prepare_source(ds.source("pydicom-mr-small"), tmp_path / "out", tmp_path / "cache", log=lambda m: None)
    assert rec.shape == [64, 64] and rec.member_sha256 == ds.source("pydicom-mr-small").sha256
    entries = ds.update_manifest(tmp_path / "out", [rec])
    entries = ds.update_manifest(tmp_path / "out", [rec])  # merging again keeps one entry
    assert [e["key"] for e in entries] == ["pydicom-mr-small"]
    lic = ds.write_licenses(tmp_path / "out", entries).read_text()
    assert "heldout/mri/pydicom_mr_small.nrrd" in lic and "MIT" in lic
    assert (tmp_path / "out" / rec.licence_copy).is_file()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["files"][0]["role"] == "heldout"


# ------------------------------------------------------------------------------ CLI
def test_cli_registers_prepare_data():
    args = build_parser().parse_args(["prepare-data", "--output", "x", "--only", "ct", "--only", "samples"])
    assert args.only == ["ct", "samples"] and args.output == "x" and callable(args.func)


def test_cli_reports_missing_apt_as_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    rc = main(["prepare-data", "--output", str(tmp_path / "out"), "--only", "ct", "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "invesalius-examples" in err and "apt-get" in err
    assert not Path(tmp_path / "out" / "ct").exists()


def test_prepared_files_reads_manifest(tmp_path):
    out = tmp_path / "out"
    rec = ds.prepare_source(ds.source("pydicom-ct-small"), out, tmp_path / "cache", log=lambda m: None)
    ds.update_manifest(out, [rec])
    assert ds.prepared_files(out, "heldout", "CT") == [out / "heldout/ct/pydicom_ct_small.nrrd"]
    with pytest.raises(ScoreReconError, match="--only ct"):
        ds.prepared_files(out, "train", "CT")


# ------------------------------------------------------------------------------ pydicom-data sources
def test_dicom_slice_radiological_flips_only_mirrored_axes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(ds.dicom_slice_radiological(a, (1.0, 0.0, 0.0, 1.0)), a)
    np.testing.assert_array_equal(ds.dicom_slice_radiological(a, (1.0, 0.0, 0.0, -1.0)), a[::-1, :])
    np.testing.assert_array_equal(ds.dicom_slice_radiological(a, (-1.0, 0.0, 0.0, 1.0)), a[:, ::-1])
    np.testing.assert_array_equal(ds.dicom_slice_radiological(a, (0.57, 0.0, 0.82, 0.0)), a)  # oblique coronal


def test_pydicom_data_sources_are_pinned_heldout():
    keys = [s.key for s in ds.SOURCES if s.package == f"pypi:{ds.PYDICOM_DATA_REQUIREMENT}"]
    assert keys == ["pydicom-data-abdomen-ct", "pydicom-data-spine-ct", "pydicom-data-shoulder-mr",
                    "pydicom-data-abdomen-mr"]
    assert ds.PYDICOM_DATA_REQUIREMENT.count("==") == 1
    for key in keys:
        src = ds.source(key)
        assert src.role == "heldout" and key in ds.GROUPS["heldout"]
        assert src.member.startswith("data_store/data/") and len(src.sha256) == 64
        assert src.licence_file == "pydicom_data-*.dist-info/LICENSE"


def test_fetch_wheel_finds_cached_pydicom_data_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    whl = wheels / "pydicom_data-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("data_store/data/x.dcm", b"DICM")
        z.writestr("pydicom_data-1.0.0.dist-info/LICENSE", b"MIT License")
    got = ds.fetch_wheel(ds.PYDICOM_DATA_REQUIREMENT, tmp_path, log=lambda m: None)
    assert got == whl
    assert ds.read_wheel_member(got, "pydicom_data-*.dist-info/LICENSE") == b"MIT License"


# ------------------------------------------------------------------------------ the registry file
def test_registry_is_loaded_from_the_packaged_json():
    text = (Path(registry.__file__).parent / registry.SOURCES_FILE).read_text(encoding="utf-8")
    assert registry.parse_sources(text) == ds.SOURCES
    assert ds.NILEARN_REQUIREMENT == "nilearn==0.14.1" and ds.PYDICOM_DATA_REQUIREMENT == "pydicom-data==1.0.0"
    assert ds.source("mni152-2009a").package == f"pypi:{ds.NILEARN_REQUIREMENT}"
    assert sum(len(keys) for keys in ds.GROUPS.values()) == len(ds.SOURCES)


def _registry_text(**change) -> str:
    entries = [dict(s.__dict__) for s in ds.SOURCES[:2]]
    entries[0].update(change)
    return json.dumps({"format_version": 1, "sources": [{k: v for k, v in e.items() if v is not None}
                                                        for e in entries]})


@pytest.mark.parametrize("change, match", [
    ({"role": "test"}, "role 'test'"),
    ({"modality": "PET"}, "modality 'PET'"),
    ({"package": "conda:x"}, "package 'conda:x'"),
    ({"package": "pypi:nilearn"}, "pinned"),
    ({"output": "../ct/x.nrrd"}, "relative .nrrd"),
    ({"output": "heldout/ct/x.nrrd"}, "under heldout/"),
    ({"sha256": "abc"}, "sha256"),
    ({"subject": None}, "lacks subject"),
    ({"extra": "x"}, "unknown fields extra"),
    ({"licence": 3}, "licence must be"),
    ({"key": "colin27"}, "key colin27 appears more than once"),
])
def test_registry_rejects_bad_entries(change, match):
    with pytest.raises(ScoreReconError, match=match):
        registry.parse_sources(_registry_text(**change), "bad.json")


def test_registry_rejects_bad_files():
    with pytest.raises(ScoreReconError, match="not valid JSON"):
        registry.parse_sources("{", "bad.json")
    with pytest.raises(ScoreReconError, match="format_version 1"):
        registry.parse_sources(json.dumps({"format_version": 2, "sources": []}), "bad.json")
    with pytest.raises(ScoreReconError, match="no 'sources' list"):
        registry.parse_sources(json.dumps({"format_version": 1}), "bad.json")
