"""The ScoreRecon Slicer module's logic on real MRML (slicer-core), without the Slicer application.

The module file is imported through test-only stand-ins for ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper`` (``Testing/slicer_stub``), installed into ``sys.modules`` by a
fixture. Reconstructions run the real ``python -m ScoreReconLib`` CLI in a child process.
Skipped when slicer-core (``pip install slicer-core==5.13.31053.0``) is not installed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_checkpoint


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep the child processes to few threads on shared CI machines."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


#: oblique, anisotropic IJK-to-RAS: rotated 30° about S, spacing 0.7 × 0.9 × 2.5 mm, off-centre origin
_ANGLE = np.deg2rad(30.0)
_OBLIQUE = np.array([
    [-0.7 * np.cos(_ANGLE), 0.9 * np.sin(_ANGLE), 0.0, 12.5],
    [-0.7 * np.sin(_ANGLE), -0.9 * np.cos(_ANGLE), 0.0, -40.0],
    [0.0, 0.0, 2.5, 71.25],
    [0.0, 0.0, 0.0, 1.0],
])


def _node_count(slicer) -> int:
    return slicer.mrmlScene.GetNumberOfNodes()


def _asymmetric_phantom(sr, size: int, slices: int) -> np.ndarray:
    """The module's phantom plus a bright block off every symmetry axis (flips and transposes show)."""
    volume = sr.makePhantom(size, slices)
    q = size // 8
    volume[:, 2 * q:3 * q, q + q // 2:4 * q] = 1500.0
    return volume


def _best_match(recon: np.ndarray, truth: np.ndarray) -> list[int]:
    """For each reconstructed slice, the index of the truth slice it correlates with best."""
    return [int(np.argmax([np.corrcoef(r.ravel(), t.ravel())[0, 1] for t in truth])) for r in recon]


# --------------------------------------------------------------------------------------- geometry
def test_volume_node_round_trip_keeps_geometry_and_slice_order(sr, slicer):
    phantom = _asymmetric_phantom(sr, 32, 3)
    node = slicer.util.addVolumeFromArray(phantom, ijkToRAS=_OBLIQUE, name="Head")
    before = _node_count(slicer)
    logic = sr.ScoreReconLogic()
    job = logic.start(node, task="sparse-ct", views=32, method="fbp", computeBaseline=False)
    assert os.path.isdir(job.tempDir)
    assert job.process.wait(timeout=240) == "succeeded", job.process.errorMessage
    result = logic.finish(job, showResults=False)
    assert not os.path.exists(job.tempDir)

    out = result.reconstructionNode
    assert out is not None and out.GetName() == "Head FBP"
    np.testing.assert_allclose(_ijk_to_ras(out), _OBLIQUE, atol=1e-9)
    np.testing.assert_allclose(out.GetSpacing(), node.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(out.GetOrigin(), node.GetOrigin(), atol=1e-9)
    recon = slicer.util.arrayFromVolume(out)
    assert recon.shape == phantom.shape
    assert _best_match(recon, phantom) == [0, 1, 2]
    for k in range(3):  # not flipped or transposed in-plane
        same = np.corrcoef(recon[k].ravel(), phantom[k].ravel())[0, 1]
        assert same > 0.95
        for other in (phantom[k][::-1], phantom[k][:, ::-1], phantom[k].T):
            assert same > np.corrcoef(recon[k].ravel(), other.ravel())[0, 1] + 0.1
    assert result.metrics["fbp"]["psnr"] > 20.0
    table = result.metricsTableNode.GetTable()
    assert table.GetNumberOfRows() == 1 and table.GetValue(0, 0).ToString() == "FBP"
    assert abs(table.GetValue(0, 1).ToDouble() - result.metrics["fbp"]["psnr"]) < 1e-9
    assert _node_count(slicer) > before


def test_array_input_returns_arrays_and_adds_no_nodes(sr, slicer):
    """A 2-D numpy MR image through the MRI task (simulate options of mri, zero-filled)."""
    image = np.clip(sr.makePhantom(32, 1)[0] + 1000.0, 0, None)  # non-negative "MR" intensities
    before = _node_count(slicer)
    result = sr.ScoreReconLogic().reconstruct(image, task="mri", acceleration=2.0, centerFraction=0.2,
                                              maskKind="equispaced", method="zero-filled", computeBaseline=True,
                                              showResults=False, timeout=240)
    assert result.reconstruction.shape == (32, 32)
    assert result.baseline is None  # the method is the baseline already
    assert result.reconstructionNode is None and result.metricsTableNode is None
    assert _node_count(slicer) == before
    assert set(result.metrics) == {"zero-filled"}
    # simulated with a smooth image phase (the default), which the 6-column centre of 32² estimates coarsely
    assert np.corrcoef(result.reconstruction.ravel(), image.ravel())[0, 1] > 0.85


# --------------------------------------------------------------------------------------- sinogram
def _normalized_sinogram(phantom_hu: np.ndarray) -> np.ndarray:
    """Full-set (N angles over 180°) sinograms of the [0, 1]-normalised phantom: (S, N, n_det)."""
    import torch

    from ScoreReconLib.data import ct_normalization
    from ScoreReconLib.operators import build_operator

    n = phantom_hu.shape[-1]
    x = np.maximum(ct_normalization().forward(phantom_hu), 0.0).astype(np.float32)
    op = build_operator("sparse-ct", n, views=n)
    with torch.no_grad():
        return op.T(torch.from_numpy(x)[:, None]).numpy()[:, 0]


def test_sinogram_node_reconstructs(sr, slicer):
    phantom = sr.makePhantom(32, 2)
    full = _normalized_sinogram(phantom)  # (2, 32, 47)
    measured = full[:, ::2]  # 16 views at 180°·k/16
    sino = slicer.util.addVolumeFromArray(measured, ijkToRAS=np.diag([-0.8, -1.0, 2.5, 1.0]), name="Sino")
    reference = slicer.util.addVolumeFromArray(phantom, ijkToRAS=np.diag([-0.8, -0.8, 2.5, 1.0]), name="Ref")
    result = sr.ScoreReconLogic().reconstruct(sinogram=sino, reference=reference, task="sparse-ct",
                                              method="tv", computeBaseline=True, showResults=False,
                                              timeout=240)
    out, baseline = result.reconstructionNode, result.baselineNode
    assert (out.GetName(), baseline.GetName()) == ("Sino TV", "Sino FBP")
    for node in (out, baseline):
        recon = slicer.util.arrayFromVolume(node)
        assert recon.shape == phantom.shape
        np.testing.assert_allclose(node.GetSpacing(), (0.8, 0.8, 2.5), atol=1e-6)
        assert _best_match(recon, phantom) == [0, 1]
    assert result.metrics["fbp"]["psnr"] > 18.0
    assert result.metrics["tv"]["psnr"] > result.metrics["fbp"]["psnr"]
    assert result.metricsTableNode.GetTable().GetNumberOfRows() == 2


def test_sinogram_units_and_layouts(sr, tmp_path):
    """Attenuation values are converted; full-set and compact layouts give the same measurement
    (the conversion runs in the library, in the child process, not in Slicer)."""
    from ScoreReconLib import sinogram_input as si
    from ScoreReconLib.errors import ScoreReconError

    phantom = sr.makePhantom(32, 1)
    full = _normalized_sinogram(phantom)
    pixel = 0.8
    a = si.sinogram_to_measurement(full[:, ::2], "sparse-ct", views=16, spacing=(pixel, 1.0, 1.0))
    factor = 3000.0 * si.WATER_ATTENUATION_PER_MM * pixel / 1000.0  # -ln(I/I0) per normalised pixel unit
    b = si.sinogram_to_measurement(full[:, ::2] * factor, "sparse-ct", views=16, units="attenuation",
                                   spacing=(pixel, 1.0, 1.0))
    np.testing.assert_allclose(b.y, a.y, rtol=1e-5, atol=1e-5)
    assert a.y.shape == (1, 1, 32, 47) and a.image_size == 32
    assert np.count_nonzero(np.abs(a.y[0, 0]).sum(axis=1)) == 16
    np.testing.assert_allclose(a.geometry["spacing"], [pixel, pixel])
    c = si.sinogram_to_measurement(full, "sparse-ct", views=16, spacing=(pixel, 1.0, 1.0))
    assert np.count_nonzero(np.abs(c.y[0, 0]).sum(axis=1)) == 16  # the task's views of the full set
    with pytest.raises(ScoreReconError, match="arc"):
        si.sinogram_to_measurement(full[:, :10], "limited-angle-ct", arc=90.0)
    with pytest.raises(ScoreReconError, match="detector bins"):
        si.sinogram_to_measurement(full[:, :, :40], "sparse-ct")

    # the command the module runs: one error line and exit status 2 for bad input, nothing written
    np.savez(tmp_path / "bad.npz", sinogram=full[:, :, :40])
    out = tmp_path / "m.npz"
    assert si.main(["--input", str(tmp_path / "bad.npz"), "--output", str(out)]) == 2
    assert not out.exists()
    np.savez(tmp_path / "good.npz", sinogram=full[:, ::2], spacing=np.array([pixel, 1.0, 1.0]), z0=np.float64(5.0))
    assert si.main(["--input", str(tmp_path / "good.npz"), "--output", str(out), "--views", "16"]) == 0
    from ScoreReconLib.measurement import load_measurement

    np.testing.assert_allclose(load_measurement(out).y, a.y)


def test_metal_sinogram_finds_the_metal_in_the_child(sr, slicer):
    """metal-ct from a sinogram node: the FBP that finds the metal trace runs in the child process."""
    phantom = sr.makePhantom(32, 1)
    phantom[0, 14:17, 20:23] = 8000.0  # a small metal insert
    full = _normalized_sinogram(phantom)
    sino = slicer.util.addVolumeFromArray(full, name="MetalSino")
    result = sr.ScoreReconLogic().reconstruct(sinogram=sino, task="metal-ct", metalThreshold=3000.0, method="fbp",
                                              computeBaseline=False, showResults=False, timeout=240)
    assert slicer.util.arrayFromVolume(result.reconstructionNode).shape == (1, 32, 32)
    with pytest.raises(sr.ScoreReconModuleError, match="scorerecon import-sinogram: error: no metal"):
        sr.ScoreReconLogic().reconstruct(sinogram=slicer.util.addVolumeFromArray(
            _normalized_sinogram(sr.makePhantom(32, 1))), task="metal-ct", metalThreshold=3000.0, method="fbp",
            computeBaseline=False, showResults=False, timeout=240)


# ----------------------------------------------------------------------------------- score method
def test_score_method_resamples_to_the_model_and_returns_uncertainty(sr, slicer, tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ct-prior", 32, "CT", seed=None)
    node = slicer.util.addVolumeFromArray(sr.makePhantom(40, 2), ijkToRAS=np.diag([-0.5, -0.5, 3.0, 1.0]),
                                          name="Small")
    result = sr.ScoreReconLogic().reconstruct(
        node, task="sparse-ct", views=12, method="score", model=str(checkpoint), sampler="fast",
        useRecommended=False, steps=3, lam=1.0, snr=0.16, samples=2, showResults=False, timeout=300)
    out, std = result.reconstructionNode, result.uncertaintyNode
    assert (out.GetName(), std.GetName(), result.baselineNode.GetName()) == (
        "Small ScoreRecon", "Small ScoreRecon std", "Small FBP")
    assert slicer.util.arrayFromVolume(out).shape == (2, 32, 32)  # resampled to the model's size
    np.testing.assert_allclose(out.GetSpacing(), (0.5 * 40 / 32, 0.5 * 40 / 32, 3.0), rtol=1e-6)
    np.testing.assert_allclose(std.GetSpacing(), out.GetSpacing())
    spread = slicer.util.arrayFromVolume(std)
    assert np.isfinite(spread).all() and spread.min() >= 0.0 and spread.max() > 0.0
    assert set(result.metrics) == {"score", "fbp"} and result.metrics["score"]["sampler"] == "fast"
    assert result.metricsTableNode.GetTable().GetNumberOfRows() == 2
    # issue 19: the disagreement map beside the std, shown as a map; chi2 in the metrics table
    dis = result.disagreementNode
    assert dis.GetName() == "Small ScoreRecon disagreement"
    np.testing.assert_allclose(dis.GetSpacing(), out.GetSpacing())
    values = slicer.util.arrayFromVolume(dis)
    assert values.shape == (2, 32, 32) and np.isfinite(values).all() and values.min() >= 0
    display = dis.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeRainbow"
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2 * 1.645, 1.645))
    table = result.metricsTableNode.GetTable()
    assert table.GetColumnByName("chi2") is not None
    res = result.residualNode  # the back-projected data residual, signed, grey about 0
    assert res.GetName() == "Small ScoreRecon residual"
    assert slicer.util.arrayFromVolume(res).shape == (2, 32, 32)
    np.testing.assert_allclose(res.GetSpacing(), out.GetSpacing())
    assert res.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert res.GetDisplayNode().GetLevel() == pytest.approx(0.0, abs=1e-6)
    assert "disagreement_fraction" in result.metrics["score"]


def test_patch_prior_reconstructs_at_the_input_grid(sr, slicer, tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "patch-prior", 32, "CT", seed=None, network={"coord_channels": 2},
                                  prior={"kind": "patch", "patch_size": 8},
                                  recommended={"sampler": "proximal", "steps": 2, "lam": 1.0, "snr": 0.0, "samples": 2})
    assert sr.ScoreReconSettings(model=str(folder)).effectiveSamples() == 2  # the model's recommendation
    node = slicer.util.addVolumeFromArray(sr.makePhantom(40, 1), ijkToRAS=np.diag([-0.5, -0.5, 3.0, 1.0]),
                                          name="Small")
    result = sr.ScoreReconLogic().reconstruct(node, task="sparse-ct", views=12, method="score", model=str(folder),
                                              showResults=False, timeout=300)
    out = result.reconstructionNode
    assert slicer.util.arrayFromVolume(out).shape == (1, 40, 40)  # no resampling: the input's own grid
    np.testing.assert_allclose(out.GetSpacing(), (0.5, 0.5, 3.0), rtol=1e-6)
    assert result.uncertaintyNode is not None  # 2 recommended samples give a std map


# ------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors_and_add_no_nodes(sr, slicer, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs))  # where the logic makes its run folders
    logic = sr.ScoreReconLogic()
    volume = slicer.util.addVolumeFromArray(sr.makePhantom(32, 3), ijkToRAS=_OBLIQUE, name="Head")
    single = slicer.util.addVolumeFromArray(sr.makePhantom(32, 1), name="OneSlice")
    rgb = slicer.util.addVolumeFromArray(np.zeros((3, 32, 32, 3), np.uint8), name="Color",
                                         nodeClassName="vtkMRMLVectorVolumeNode")
    oblong = slicer.util.addVolumeFromArray(np.zeros((2, 32, 40), np.float32), name="Oblong")
    before = _node_count(slicer)

    with pytest.raises(sr.ScoreReconModuleError, match="no input"):
        logic.reconstruct(None, task="sparse-ct", method="fbp")
    with pytest.raises(sr.ScoreReconDimensionError, match="1, 32, 32.*3, 32, 32"):
        logic.reconstruct(sinogram=None, inputVolume=volume, reference=single, task="sparse-ct", method="fbp")
    with pytest.raises(sr.ScoreReconDimensionError, match="components"):
        logic.reconstruct(rgb, task="sparse-ct", method="fbp")
    with pytest.raises(sr.ScoreReconDimensionError, match="4-D"):
        logic.reconstruct(np.zeros((2, 3, 32, 32), np.float32), task="sparse-ct", method="fbp")
    with pytest.raises(sr.ScoreReconDimensionError, match="square"):
        logic.reconstruct(oblong, task="sparse-ct", method="fbp")
    with pytest.raises(sr.ScoreReconModuleError, match="does not fit task"):
        logic.reconstruct(volume, task="sparse-ct", method="zero-filled")
    with pytest.raises(sr.ScoreReconModuleError, match="needs a CT task"):
        logic.reconstruct(sinogram=volume, task="mri", method="zero-filled")
    with pytest.raises(sr.ScoreReconModuleError, match="unknown option"):
        logic.reconstruct(volume, task="sparse-ct", method="fbp", view=3)
    with pytest.raises(sr.ScoreReconModuleError, match="does not exist"):
        logic.reconstruct(volume, task="sparse-ct", method="score", model=str(tmp_path / "missing"))
    with pytest.raises(sr.ScoreReconModuleError, match="measurement file .* does not exist"):
        logic.reconstruct(measurementFile=str(tmp_path / "nothing.npz"), task="sparse-ct", method="fbp")

    # a model of the wrong modality: the reconstruct command's exit-status-2 message is surfaced
    checkpoint = save_tiny_checkpoint(tmp_path / "mr-prior", 32, "MR", seed=None)
    with pytest.raises(sr.ScoreReconModuleError) as info:
        logic.reconstruct(volume, task="sparse-ct", method="score", model=str(checkpoint), timeout=240)
    message = str(info.value)
    assert "scorerecon reconstruct: error:" in message and "MR" in message and "CT" in message

    assert _node_count(slicer) == before
    assert list(runs.iterdir()) == []  # the failed run removed its temporary folder


# ------------------------------------------------------------------------------ background runs
def test_background_run_cancel_kills_process_and_removes_temp_files(sr, slicer):
    node = slicer.util.addVolumeFromArray(sr.makePhantom(64, 4), name="Big")
    before = _node_count(slicer)
    logic = sr.ScoreReconLogic()
    job = logic.start(node, task="sparse-ct", views=23, method="tv", computeBaseline=True)
    process = job.process
    deadline = time.monotonic() + 120
    while process.poll() == "running" and process.stepIndex < 1:  # wait for the TV step to start
        assert time.monotonic() < deadline, "the simulate step did not finish"
        time.sleep(0.05)
    assert process.state == "running" and process.stepIndex == 1
    time.sleep(0.5)
    pid = process.pid
    logic.discard(job)
    assert process.state == "cancelled"
    assert process._proc.poll() is not None
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing of the command's process group is left
    assert not os.path.exists(job.tempDir)
    with pytest.raises(sr.ScoreReconCancelledError):
        logic.finish(job)
    assert _node_count(slicer) == before


def test_process_runner_parses_progress_and_errors(sr):
    script_ok = ("import json,sys\n"
                 "print(json.dumps({'progress': 1, 'total': 4}), flush=True)\n"
                 "print('plain log line', flush=True)\n"
                 "print(json.dumps({'progress': 4, 'total': 4, 'message': 'slice 4/4'}), flush=True)\n")
    script_bad = ("import sys\n"
                  "print('Traceback-free noise', file=sys.stderr)\n"
                  "print('scorerecon reconstruct: error: the model is MR; use a CT prior', file=sys.stderr)\n"
                  "sys.exit(2)\n")
    steps = [sr.ScoreReconStep("first", [sys.executable, "-c", script_ok], weight=1.0),
             sr.ScoreReconStep("second", [sys.executable, "-c", script_bad], weight=3.0)]
    process = sr.ScoreReconProcess(steps)
    seen = []
    assert process.wait(timeout=60, callback=lambda p: seen.append((p.stepIndex, p.progress))) == "failed"
    assert process.returncode == 2 and process.stepIndex == 1
    assert process.errorMessage == "scorerecon reconstruct: error: the model is MR; use a CT prior"
    assert "plain log line" in process.log
    assert all(0.0 <= p <= 1.0 for _, p in seen)
    assert any(i == 1 and abs(p - 0.25) < 1e-9 for i, p in seen)  # first step done = 1 of 4 weight units

    ok = sr.ScoreReconProcess([sr.ScoreReconStep("only", [sys.executable, "-c", script_ok])])
    assert ok.wait(timeout=60) == "succeeded" and ok.progress == 1.0 and ok.message == "Done"

    missing = sr.ScoreReconProcess([sr.ScoreReconStep("x", [str(Path(sys.executable).parent / "no-such-exe")])])
    missing.start()
    assert missing.state == "failed" and "cannot start" in missing.errorMessage


# --------------------------------------------------------------------- parameter node, CLI args
def test_parameter_node_defaults_match_settings(sr, slicer):
    logic = sr.ScoreReconLogic()
    pn = logic.getParameterNode()
    assert sr.ScoreReconSettings.fromParameterNode(pn) == sr.ScoreReconSettings()
    assert logic.getParameterNode().parameterNode is pn.parameterNode  # singleton per scene
    with pytest.raises(ValueError):
        pn.task = "pet"
    with pytest.raises(ValueError):
        pn.views = 0
    volume = slicer.util.addVolumeFromArray(np.zeros((1, 16, 16), np.float32), name="V")
    pn.inputVolume = volume
    pn.modelChoice = "checkpoint"
    pn.checkpointPath = "/models/ct"
    assert pn.inputVolume is volume
    assert sr.ScoreReconSettings.fromParameterNode(pn).model == "/models/ct"
    with pytest.raises(sr.ScoreReconModuleError, match="no sinogram volume"):
        pn.inputMode = "sinogram"
        logic.startFromParameterNode(pn)


def test_cli_arguments(sr):
    assert sr.ScoreReconLogic.missingDependencies() == []  # this environment runs the CLI
    s = sr.ScoreReconSettings(task="mri", acceleration=4.0, centerFraction=0.1, maskKind="random", seed=3)
    sim = s.simulateArgs("in.nrrd", "m.npz")
    assert sim[:7] == ["simulate", "--task", "mri", "--input", "in.nrrd", "--output", "m.npz"]
    assert {"--acceleration", "--center-fraction", "--mask"} <= set(sim) and "--views" not in sim
    assert sim[sim.index("--phase") + 1] == "smooth"  # the default: MRI as a scanner records it
    real = sr.ScoreReconSettings(task="mri", imagePhase="zero").simulateArgs("in.nrrd", "m.npz")
    assert real[real.index("--phase") + 1] == "zero"
    with pytest.raises(sr.ScoreReconModuleError, match="imagePhase"):
        sr.ScoreReconSettings(task="mri", imagePhase="random").validate()
    assert "--phase" not in sr.ScoreReconSettings(task="sparse-ct").simulateArgs("in.nrrd", "s.npz")
    classical = s.reconstructArgs("m.npz", "o.nrrd", "zero-filled", "ref.nrrd", "m.json")
    assert not {"--model", "--sampler", "--steps", "--samples", "--std-output"} & set(classical)
    assert classical[classical.index("--progress-format") + 1] == "json"
    tuned = sr.ScoreReconSettings(task="metal-ct", useRecommended=False, steps=7, samples=2)
    score = tuned.reconstructArgs("m.npz", "o.nrrd", "score", stdPath="s.nrrd")
    assert score[score.index("--model") + 1] == "default-ct" and score[score.index("--steps") + 1] == "7"
    assert score[score.index("--std-output") + 1] == "s.nrrd"
    assert "--steps" not in sr.ScoreReconSettings().reconstructArgs("m.npz", "o.nrrd", "score")
    assert "--metal-threshold" in tuned.simulateArgs("i", "o")


# ------------------------------------------------------------------------------------- self-test
def test_module_metadata_and_self_test(sr, slicer):
    parent = types.SimpleNamespace(path=str(Path(sr.__file__)))
    sr.ScoreRecon(parent)
    assert parent.title == "ScoreRecon" and parent.categories == ["Tomographic Reconstruction"]
    assert "ICLR" in parent.helpText and "Song" in parent.helpText
    test = sr.ScoreReconTest()
    test.runTest()


# ------------------------------------------------------------------------------ fan beam and k-space
def test_fan_sinogram_node_reconstructs_in_the_child(sr, slicer):
    """A fan-beam sinogram volume (slices × 2N source angles × bins) with the panel's geometry fields."""
    from ScoreReconLib.data import Image
    from ScoreReconLib.measurement import simulate

    phantom = _asymmetric_phantom(sr, 32, 2)
    image = Image(phantom, spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0),
                  direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), modality="CT")
    fan = {"geometry": "fan", "source_distance": 100.0, "detector_distance": 80.0, "detector": "curved"}
    m, _, _ = simulate(image, "sparse-ct", views=64, **fan)
    sino = slicer.util.addVolumeFromArray(m.y[:, 0], ijkToRAS=np.diag([0.8, 1.0, 2.0, 1.0]), name="FanSino")
    reference = slicer.util.addVolumeFromArray(phantom, name="FanRef")
    logic = sr.ScoreReconLogic()
    result = logic.reconstruct(sinogram=sino, reference=reference, task="sparse-ct", views=64, method="fbp",
                               geometry="fan", sourceDistance=100.0, detectorDistance=80.0, detector="curved",
                               computeBaseline=False, showResults=False, timeout=240)
    recon = slicer.util.arrayFromVolume(result.reconstructionNode)
    assert recon.shape == (2, 32, 32) and _best_match(recon, phantom) == [0, 1]
    np.testing.assert_allclose(result.reconstructionNode.GetSpacing(), (0.8, 0.8, 2.0))
    assert result.metrics["fbp"]["psnr"] > 20.0  # all 64 fan views: a fair FBP
    # the same sinogram read as parallel beam fits no geometry: the library's one line comes back
    with pytest.raises(sr.ScoreReconModuleError, match="scorerecon import-sinogram: error: .*34x34 image"):
        logic.reconstruct(sinogram=sino, task="sparse-ct", method="fbp", computeBaseline=False, showResults=False,
                          timeout=240)


def _write_kspace_file(path: Path, slices: int = 2, n: int = 32, coils: int = 4) -> np.ndarray:
    """A fully sampled fastMRI-layout file (readout oversampled 2×, ISMRMRD header with 0.5 mm pixels)."""
    h5py = pytest.importorskip("h5py")
    import torch

    from ScoreReconLib.coils import synthetic_maps
    from ScoreReconLib.operators.mri import fft2c

    yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
    x = np.stack([((xx / 0.35) ** 2 + (yy / 0.42) ** 2 <= 1) * (1.0 + 0.5 * (xx > 0.1 * k)) for k in range(slices)])
    maps = synthetic_maps(n, coils, seed=1)[0].numpy()
    h = 2 * n
    coil = np.zeros((slices, coils, h, n), np.complex64)
    coil[:, :, h // 2 - n // 2:h // 2 + n // 2] = maps[None] * x[:, None]
    k = fft2c(torch.from_numpy(coil)).numpy() * 1e-4
    with h5py.File(path, "w") as f:
        f["kspace"] = k.astype(np.complex64)
        f["ismrmrd_header"] = (
            '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace>'
            f"<matrixSize><x>{h}</x><y>{n}</y><z>1</z></matrixSize><fieldOfView_mm><x>{h * 0.5}</x>"
            f"<y>{n * 0.5}</y><z>3</z></fieldOfView_mm></encodedSpace></encoding></ismrmrdHeader>")
    return x.astype(np.float32)


def test_kspace_file_is_imported_and_reconstructed_in_the_child(sr, slicer, tmp_path):
    """k-space in (fastMRI HDF5), volume nodes out: import-kspace then reconstruct, both in the child."""
    truth = _write_kspace_file(tmp_path / "scan.h5")
    before = _node_count(slicer)
    logic = sr.ScoreReconLogic()
    job = logic.startJob(kspaceFile=str(tmp_path / "scan.h5"), task="mri", method="sense", kspaceAcceleration=1.0,
                         keepTemporaryFiles=True, showResults=False)
    assert [step.label for step in job.process.steps][:2] == ["Importing k-space", "Reconstructing (SENSE)"]
    result = job.wait(timeout=240)
    out, base = result.reconstructionNode, result.baselineNode
    assert (out.GetName(), base.GetName()) == ("scan SENSE", "scan zero-filled")
    recon = slicer.util.arrayFromVolume(out)
    assert recon.shape == (2, 32, 32)
    np.testing.assert_allclose(out.GetSpacing(), (0.5, 0.5, 3.0))  # from the file's ISMRMRD header
    assert np.abs(recon - truth * 1e-4).max() < 1e-4 * 1e-2  # fully sampled: SENSE returns the file's image
    assert os.path.isfile(os.path.join(result.tempDir, "measurement.npz"))  # the imported measurement
    assert _node_count(slicer) > before
    # retrospective 4x undersampling of the same file, reconstructed with RSS
    r = logic.reconstruct(kspaceFile=str(tmp_path / "scan.h5"), task="mri", method="rss", kspaceAcceleration=4.0,
                          kspaceSlices="1:2", computeBaseline=False, showResults=False, timeout=240)
    assert slicer.util.arrayFromVolume(r.reconstructionNode).shape[-2:] == (32, 32)
    assert r.reconstruction.shape[0] == 1  # one slice imported
    # the library's one-line error comes back as the module's error
    with pytest.raises(sr.ScoreReconModuleError, match="scorerecon import-kspace: error: .*slices"):
        logic.reconstruct(kspaceFile=str(tmp_path / "scan.h5"), task="mri", method="zero-filled",
                          kspaceSlices="5:9", computeBaseline=False, showResults=False, timeout=240)
