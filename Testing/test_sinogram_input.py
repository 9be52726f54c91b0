"""Measured sinograms → measurement files (``python -m ScoreReconLib.sinogram_input``), fan beam.

A fan-beam measurement simulated by the library is taken apart into its sinogram and rebuilt by the
sinogram conversion with the same geometry: the operator spec, its arrays and ``y`` must come back
exactly. Bad geometry options give one error line and exit status 2, and nothing is written.
Seeded fuzzed sinogram files end in exit 0 or a one-line refusal, never an internal error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import check_fuzz_case, pick, two_slice_blocks_hu

from ScoreReconLib import sinogram_input as si
from ScoreReconLib.data import Image
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.measurement import load_measurement, simulate
from ScoreReconLib.operators import operator_from_spec

PIXEL = 0.8  # mm
SRC, DET = 100.0, 80.0  # mm: 125 and 100 pixels, outside the 32² image (radius 23.6 px)


def _phantom(metal: bool = False) -> Image:
    return Image(two_slice_blocks_hu(metal), spacing=(PIXEL, PIXEL, 2.0), origin=(0.0, 0.0, 10.0),
                 direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), modality="CT")


def _fan(detector: str) -> dict:
    return {"geometry": "fan", "source_distance": SRC, "detector_distance": DET, "detector": detector}


@pytest.mark.parametrize("detector", ["curved", "flat"])
@pytest.mark.parametrize("task,options", [("sparse-ct", {"views": 16}), ("limited-angle-ct", {"arc": 200.0})])
def test_fan_sinogram_round_trips_to_the_simulated_measurement(task, options, detector):
    m, _, _ = simulate(_phantom(), task, **options, **_fan(detector))
    full = m.y[:, 0]  # (S, 2N, n_det): the full set, unmeasured views zero
    assert full.shape[1] == 64 and m.operator_spec["geometry"] == "fan"
    r = si.sinogram_to_measurement(full, task, spacing=(PIXEL, 1.0, 2.0), z0=10.0, **options, **_fan(detector))
    assert r.operator_spec == m.operator_spec
    assert r.operator_arrays.keys() == m.operator_arrays.keys()
    for key, value in r.operator_arrays.items():
        np.testing.assert_array_equal(value, m.operator_arrays[key])
    np.testing.assert_array_equal(r.y, m.y)
    assert r.image_size == 32
    np.testing.assert_allclose(r.geometry["spacing"], [PIXEL, PIXEL, 2.0])
    assert {k: r.options[k] for k in ("geometry", "source_distance_mm", "detector_distance_mm", "detector")} == {
        "geometry": "fan", "source_distance_mm": SRC, "detector_distance_mm": DET, "detector": detector}
    if task == "limited-angle-ct":  # only the measured rows (the first angles of the arc): the same measurement
        rows = len(m.operator_arrays["views"])
        compact = si.sinogram_to_measurement(full[:, :rows], task, spacing=(PIXEL, 1.0, 2.0), **options,
                                             **_fan(detector))
        np.testing.assert_array_equal(compact.y, m.y)
    # a parallel-beam reading of the same rows fits no geometry (fan detector count, 64 rows)
    with pytest.raises(ScoreReconError):
        si.sinogram_to_measurement(full, task, spacing=(PIXEL, 1.0, 2.0), **options)


def test_fan_metal_sinogram_finds_the_metal_with_the_fan_fbp():
    m, _, _ = simulate(_phantom(metal=True), "sparse-ct", views=64, **_fan("curved"))  # every view: the full set
    r = si.sinogram_to_measurement(m.y[:, 0], "metal-ct", metal_threshold=3000.0, spacing=(PIXEL, 1.0, 2.0),
                                   **_fan("curved"))
    assert r.operator_spec["geometry"] == "fan" and r.metal["pixels"] > 0
    assert r.metal_mask[:, 0, 15:18, 19:22].all()  # the inserted metal, found in the fan-beam FBP image
    assert r.metal_mask.sum() < 0.1 * r.metal_mask.size
    op = operator_from_spec(r.operator_spec, r.operator_arrays)
    assert 0 < float(op.mask.mean()) < 1  # its trace is excluded from the measured bins


def _write(tmp_path: Path, sinogram: np.ndarray) -> Path:
    path = tmp_path / "sino.npz"
    np.savez(path, sinogram=sinogram, spacing=np.array([PIXEL, 1.0, 2.0]), z0=np.float64(10.0))
    return path


def test_cli_fan_geometry_writes_the_fan_measurement(tmp_path, capsys):
    m, _, _ = simulate(_phantom(), "sparse-ct", views=16, **_fan("flat"))
    out = tmp_path / "m.npz"
    rc = si.main(["--input", str(_write(tmp_path, m.y[:, 0])), "--output", str(out), "--views", "16",
                  "--geometry", "fan", "--source-distance", str(SRC), "--detector-distance", str(DET),
                  "--detector", "flat"])
    assert rc == 0, capsys.readouterr().err
    loaded = load_measurement(out)
    assert loaded.operator_spec == m.operator_spec
    np.testing.assert_array_equal(loaded.y, m.y)
    assert loaded.geometry["origin"][2] == 10.0


@pytest.mark.parametrize("extra,needle", [
    (["--geometry", "cone"], "--geometry"),
    (["--geometry", "fan", "--detector", "round"], "--detector"),
    (["--geometry", "fan", "--source-distance", "-5"], "--source-distance must be a positive distance"),
    (["--geometry", "fan", "--detector-distance", "0"], "--detector-distance must be a positive distance"),
    (["--geometry", "fan", "--source-distance", "nan"], "--source-distance must be a positive distance"),
    (["--source-distance", "500"], "apply to --geometry fan only"),
    (["--geometry", "fan", "--source-distance", "10"], "fits no square image"),  # source inside any image
    (["--geometry", "fan", "--source-distance", str(SRC), "--detector-distance", str(DET), "--size", "40"],
     "at size 40"),  # 49 bins fit 31 or 32 pixels, not 40
    (["--geometry", "fan", "--source-distance", str(SRC), "--detector-distance", str(DET), "--task",
      "limited-angle-ct", "--arc", "400"], "outside (0, 360]"),
])
def test_bad_geometry_gives_one_error_line_and_exit_2(tmp_path, capsys, extra, needle):
    m, _, _ = simulate(_phantom(), "sparse-ct", views=16, **_fan("curved"))
    out = tmp_path / "m.npz"
    args = ["--input", str(_write(tmp_path, m.y[:, 0])), "--output", str(out), *extra]
    try:
        rc = si.main(args)
    except SystemExit as exc:  # argparse's usage errors (choices), one line through OneLineParser
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("scorerecon import-sinogram: error: "), err
    assert needle in err
    assert not out.exists()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_import_sinogram_is_a_command_with_the_cli_guarantees(tmp_path, capsys):
    """Truncated or malformed inputs and blocked outputs are one line, exit 2, nothing written (issue 24); the
    converter is `scorerecon import-sinogram` (issue 18), also reachable as python -m ScoreReconLib.sinogram_input."""
    from ScoreReconLib.cli import main

    m, _, _ = simulate(_phantom(), "sparse-ct", views=16)
    good = _write(tmp_path, m.y[:, 0])
    out = tmp_path / "m.npz"
    assert main(["import-sinogram", "--input", str(good), "--output", str(out)]) == 0 and out.is_file()
    out.unlink()
    capsys.readouterr()
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["import-sinogram", "--input", str(truncated), "--output", str(out)]) == 2
    assert _one_line(capsys).startswith("scorerecon import-sinogram: error: ") and not out.exists()
    bad_spacing = tmp_path / "bad_spacing.npz"
    np.savez(bad_spacing, sinogram=m.y[:, 0].astype(np.float32), spacing=np.array(["a", "b", "c"]))
    assert main(["import-sinogram", "--input", str(bad_spacing), "--output", str(out)]) == 2
    assert _one_line(capsys).startswith("scorerecon import-sinogram: error: ") and not out.exists()
    blocked = tmp_path / "blocked.npz"
    blocked.mkdir()
    assert main(["import-sinogram", "--input", str(good), "--output", str(blocked)]) == 2
    _one_line(capsys)
    assert si.main(["--input", str(truncated), "--output", str(out)]) == 2  # the module entry point: the same
    assert _one_line(capsys).startswith("scorerecon import-sinogram: error: ")


def test_a_huge_declared_sinogram_and_non_finite_geometry_are_refused_before_loading(tmp_path):
    import zipfile

    huge = tmp_path / "huge.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (64, 4096, 4096)  # 4 GiB declared, a few bytes stored
    with zipfile.ZipFile(huge, "w") as archive, archive.open("sinogram.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 16)
    with pytest.raises(ScoreReconError, match="declares .*GiB.*split the volume"):
        si.read_sinogram_file(huge)
    sino = np.zeros((16, 47), np.float32)
    for name, extra, needle in (("inf.npz", {"spacing": np.array([np.inf, 1.0, 1.0])}, "finite positive"),
                                ("nan.npz", {"z0": np.float64(np.nan)}, "z0 nan must be a finite"),
                                ("text.npz", {"sinogram": np.array(["a", "b"])}, "expected a real")):
        np.savez(tmp_path / name, **({"sinogram": sino} | extra))
        with pytest.raises(ScoreReconError, match=needle):
            si.read_sinogram_file(tmp_path / name)


def test_fan_options_are_checked_alike_by_simulate_and_the_import():
    """One check of the CT source geometry serves both entry points, with the same messages."""
    sino = np.zeros((64, 61), np.float32)
    for kwargs, match in [({"geometry": "cone"}, "unknown CT geometry 'cone'"),
                          ({"source_distance": 300.0}, "apply to --geometry fan only"),
                          ({**_fan("curved"), "source_distance": -1.0}, "--source-distance must be a positive"),
                          ({**_fan("curved"), "detector_distance": float("nan")}, "--detector-distance must be"),
                          ({**_fan("bent")}, "unknown fan-beam detector 'bent'; choose one of curved, flat")]:
        with pytest.raises(ScoreReconError, match=match):
            simulate(_phantom(), "sparse-ct", **kwargs)
        with pytest.raises(ScoreReconError, match=match):
            si.sinogram_to_measurement(sino, "sparse-ct", **kwargs)


def test_parser_is_named_after_the_command():
    assert si.build_parser().prog == "scorerecon import-sinogram"


# -------------------------------------------------------------------------------- fuzzed sinogram files
DTYPES = [np.float32, np.float64, np.int16, np.uint8, np.complex64, np.bool_, "U3"]


def _sinogram_case(rng: np.random.Generator) -> dict:
    shape = [int(v) for v in rng.choice([0, 1, 2, 3, 16, 47, 91], size=int(rng.integers(1, 5)))]
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    if dtype == "U3":
        sino = np.full(shape, "abc")
    else:
        sino = (rng.standard_normal(shape) * 10).astype(dtype)
        if dtype in (np.float32, np.float64) and sino.size and rng.random() < 0.3:
            sino.flat[int(rng.integers(sino.size))] = pick(rng, [np.nan, np.inf, -np.inf])
    case = {"sinogram": sino}
    if rng.random() < 0.7:
        case["spacing"] = pick(rng, [np.array([0.5, 1.0, 2.0]), np.array([0.0, 1.0, 1.0]), np.array([1.0]),
                                      np.array([np.nan, 1.0, 1.0]), np.array(["a", "b", "c"]), np.ones((2, 3))])
    if rng.random() < 0.5:
        case["z0"] = pick(rng, [np.float64(0.0), np.float64(np.nan), np.array([1.0, 2.0]), np.array("x")])
    return case


@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_sinogram_files(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    src = tmp_path / "s.npz"
    np.savez(src, **_sinogram_case(rng))
    if rng.random() < 0.25:  # truncated on disk
        src.write_bytes(src.read_bytes()[: max(1, int(src.stat().st_size * rng.random()))])
    task = ["sparse-ct", "limited-angle-ct", "metal-ct"][seed % 3]
    out = tmp_path / "m.npz"
    check_fuzz_case(["import-sinogram", "--input", src, "--output", out, "--task", task, "--views",
                     str(1 + seed % 20)], out, capsys)
