"""The module's non-blocking job, result placement, dependency checks and sample data, on slicer-core.

Loads the module through the stand-ins of ``Testing/slicer_stub`` like ``test_slicer_module.py``.
Real runs are tiny (one 32² slice, FBP) so each child process takes a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]





@pytest.fixture
def deps(sr):
    import ScoreReconModuleLib.dependencies as module

    return module


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def _fake_job(sr, tmp_path, script: str, name: str = "run", **settings):
    """A job whose only step is ``python -c script`` (no result files: for state, progress and cancel)."""
    folder = tmp_path / name
    folder.mkdir()
    process = sr.ScoreReconProcess([sr.ScoreReconStep("fake", [sys.executable, "-c", script])])
    job = sr.ScoreReconJob(settings=sr.ScoreReconSettings(**settings), process=process, tempDir=str(folder),
                           inputName="fake", files={"reconstruction": str(folder / "reconstruction.nrrd")},
                           targets={}, addNodes=False)
    process.start()
    return job, folder


_SLOW = ("import json, time\n"
         "for i in range(1, 600):\n"
         "    print(json.dumps({'progress': i, 'total': 1000}), flush=True)\n"
         "    time.sleep(0.1)\n")


# ------------------------------------------------------------------------------------ non-blocking job
def test_start_job_returns_at_once_then_polls_to_a_result_in_the_inputs_study_and_transform(sr, slicer):
    scene = slicer.mrmlScene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    node = slicer.util.addVolumeFromArray(sr.makePhantom(32, 1), ijkToRAS=np.diag([-0.8, -0.8, 2.0, 1.0]),
                                          name="Head")
    node.SetAndObserveTransformNodeID(transform.GetID())
    sh.CreateItem(study, node)  # the application's subject-hierarchy logic does this on its own
    given = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MyOutput")  # a node the user picked: stays put

    t0 = time.monotonic()
    job = sr.ScoreReconLogic().startJob(node, task="sparse-ct", views=16, method="fbp", computeBaseline=True,
                                        baselineVolume=given, outputVolume=None, showResults=False)
    assert time.monotonic() - t0 < 5.0  # returns while the child runs
    assert job.state == "running" and not job.done and 0.0 <= job.progress < 1.0
    with pytest.raises(RuntimeError, match="still running"):
        job.result()
    seen, finished = [], []
    job.onProgress = lambda j: seen.append(j.progress)
    job.onFinished = lambda j: finished.append(j.state)
    deadline = time.monotonic() + 240
    while job.poll() == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.state == "succeeded" and job.done and job.progress == 1.0 and finished == ["succeeded"]
    assert seen == sorted(seen)  # progress never goes back
    result = job.result()
    assert not os.path.exists(job.tempDir)  # removed (keepTemporaryFiles is off)

    out, table = result.reconstructionNode, result.metricsTableNode
    assert out.GetName() == "Head FBP" and result.baselineNode is None  # fbp is its own baseline
    for created in (out, table):
        assert sh.GetItemParent(sh.GetItemByDataNode(created)) == study
    assert out.GetTransformNodeID() == transform.GetID()
    assert given.GetImageData() is None  # no baseline was computed, the picked node is untouched
    np.testing.assert_allclose(sr.ijkToRASArray(out), sr.ijkToRASArray(node))


def test_user_picked_output_gets_the_transform_but_keeps_its_place(sr, slicer):
    from ScoreReconModuleLib.volumes import storeVolume

    scene = slicer.mrmlScene
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "P"), "S")
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "Mine")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    inputNode = slicer.util.addVolumeFromArray(np.zeros((1, 8, 8), np.float32), name="In")
    inputNode.SetAndObserveTransformNodeID(transform.GetID())
    sh.CreateItem(study, inputNode)
    picked = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Picked")
    sh.CreateItem(folder, picked)
    filled = storeVolume(picked, np.ones((1, 8, 8), np.float32), np.eye(4), "unused", None, inputNode)
    assert filled is picked and sh.GetItemParent(sh.GetItemByDataNode(picked)) == folder
    assert picked.GetTransformNodeID() == transform.GetID()
    new = storeVolume(None, np.ones((1, 8, 8), np.float32), np.eye(4), "New", (100.0, 50.0), inputNode)
    assert sh.GetItemParent(sh.GetItemByDataNode(new)) == study and new.GetTransformNodeID() == transform.GetID()
    assert new.GetDisplayNode().GetWindow() == pytest.approx(100.0)
    # an input outside any study: the result stays at the top level, without a transform
    loose = slicer.util.addVolumeFromArray(np.zeros((1, 8, 8), np.float32), name="Loose")
    top = storeVolume(None, np.ones((1, 8, 8), np.float32), np.eye(4), "Top", None, loose)
    assert top.GetTransformNodeID() is None and not sh.GetItemByDataNode(top)


def test_cancel_stops_the_child_and_result_raises_cancelled(sr, tmp_path):
    job, folder = _fake_job(sr, tmp_path, _SLOW)
    finished = []
    job.onFinished = lambda j: finished.append(j.state)
    deadline = time.monotonic() + 60
    while job.poll() == "running" and job.progress == 0.0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 0.0 < job.progress < 0.6 and "fake" in job.message
    pid = job.process.pid
    job.cancel()
    assert job.state == "cancelled" and job.done and finished == ["cancelled"]
    assert job.process._proc.poll() is not None
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not folder.exists()
    with pytest.raises(sr.ScoreReconCancelledError):
        job.result()
    job.cancel()  # a second cancel is harmless
    assert finished == ["cancelled"]


def test_wait_keeps_the_gui_alive_and_a_callback_can_cancel(sr, slicer, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: events.append(1)), raising=False)
    job, _ = _fake_job(sr, tmp_path, _SLOW)

    def stop_when_started(j):
        if j.progress > 0.0:
            j.cancel()

    with pytest.raises(sr.ScoreReconCancelledError):
        job.wait(timeout=60, callback=stop_when_started)
    assert len(events) >= 1  # Qt events were processed while waiting
    monkeypatch.delattr(slicer, "app")

    job2, folder2 = _fake_job(sr, tmp_path, _SLOW, name="second")
    with pytest.raises(TimeoutError, match="cancelled"):
        job2.wait(timeout=0.5)
    assert job2.state == "cancelled" and not folder2.exists()


def test_a_failed_step_surfaces_its_error_line_and_keep_temporary_files(sr, tmp_path):
    bad = "import sys; print('scorerecon import-sinogram: error: the sinogram is empty; load it first', " \
          "file=sys.stderr); sys.exit(2)"
    job, folder = _fake_job(sr, tmp_path, bad, keepTemporaryFiles=True)
    with pytest.raises(sr.ScoreReconModuleError, match="the sinogram is empty"):
        job.wait(timeout=60)
    assert job.state == "failed" and "the sinogram is empty" in job.message
    assert folder.exists()  # kept for inspection
    crash = "import sys; print('Segmentation fault', file=sys.stderr); sys.exit(139)"
    job, _ = _fake_job(sr, tmp_path, crash, name="crash")
    with pytest.raises(sr.ScoreReconProcessError, match="exit status 139"):
        job.wait(timeout=60)


def test_child_output_goes_to_the_log(sr, tmp_path, caplog):
    script = "import sys; print('hello from the child', flush=True); print('a warning line', file=sys.stderr)"
    job, _ = _fake_job(sr, tmp_path, script)
    with caplog.at_level("INFO", logger="ScoreRecon"):
        with pytest.raises(sr.ScoreReconProcessError, match="wrote no reconstruction.nrrd"):  # the fake writes none
            job.wait(timeout=60)
    text = caplog.text
    assert "hello from the child" in text and "a warning line" in text


# ----------------------------------------------------------------------------------------- dependencies
def test_requirements_are_one_list_shared_with_pyproject(deps):
    import tomllib

    reqs = deps.loadRequirements()
    assert deps.requirementsPath() == REPO_ROOT / "Resources" / "requirements.txt"
    names = [r.key for r in reqs]
    assert names[0] == "torch" and {"monai", "simpleitk", "numpy", "safetensors"} <= set(names)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "dependencies" not in project["project"] and "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["Resources/requirements.txt"]
    torch = reqs[0]
    assert torch.specifier == ">=2.13.0"  # a minimum inside Slicer (issue 21) ...
    pinned = [ln for ln in deps.requirementsPath().read_text().splitlines() if ln.startswith("torch")]
    assert pinned == ["torch==2.13.0"]  # ... while pip install -e . keeps the exact, tested release
    newer = {r.name: (r.clauses[0][1] if r.clauses else "1") for r in reqs} | {"torch": "2.14.1+cu126"}
    assert all(p.requirement.key != "torch" for p in deps.checkRequirements(reqs, newer.get))
    older = newer | {"torch": "2.12.1"}
    assert [p.requirement.key for p in deps.checkRequirements(reqs, older.get)] == ["torch"]
    monai = deps.parseRequirement("monai[einops]==1.6.1  # a comment")
    assert (monai.name, monai.extras, monai.clauses) == ("monai", ("einops",), (("==", "1.6.1"),))
    with pytest.raises(ValueError):
        deps.parseRequirement("numpy >> 2")


@pytest.mark.parametrize(("version", "clauses", "ok"), [
    ("2.13.0", "==2.13.0", True), ("2.13.0+cu126", "==2.13.0", True), ("2.13", "==2.13.0", True),
    ("2.12.1", "==2.13.0", False), ("2.13.0rc1", ">=2.13.0", False), ("2.13.0.post1", ">=2.13.0", True),
    ("1.10.0", ">=1.9", True), ("1.9.9", ">=1.10", False), ("2.4.1", ">=2.3,<3", True), ("3.0", ">=2.3,<3", False),
    ("1.6.1", "~=1.6", True), ("2.0", "~=1.6", False), ("2.13.5", "==2.13.*", True), ("2.14.0", "==2.13.*", False),
    ("1.0", "!=1.0", False), ("v4.60.0", ">=4.60", True),
])
def test_version_comparison(deps, version, clauses, ok):
    req = deps.parseRequirement("pkg" + clauses)
    assert deps.versionSatisfies(version, req.clauses) is ok


def test_installed_versions_are_checked_not_just_presence(deps):
    reqs = [deps.parseRequirement(t) for t in ("torch==2.13.0", "monai[einops]==1.6.1", "SimpleITK>=2.3",
                                                "numpy>=1.24", "scipy>=1.10")]
    installed = {"torch": "2.12.1+cu121", "SimpleITK": "", "numpy": "1.26.4", "scipy": "1.9.3"}
    problems = deps.checkRequirements(reqs, installed.get)
    found = {p.requirement.name: p.installed for p in problems}
    assert found == {"torch": "2.12.1+cu121", "monai": None, "scipy": "1.9.3"}  # SimpleITK bundled: accepted
    assert "monai[einops]==1.6.1 (not installed)" in deps.describeProblems(problems)
    installed.update(torch="2.13.0+cpu", monai="1.6.1", scipy="1.14.0")
    assert deps.checkRequirements(reqs, installed.get) == []
    assert deps.checkRequirements() == []  # this environment runs the reconstruction process


def test_ensure_dependencies_asks_once_then_installs_torch_via_pytorchutils(sr, slicer, deps, monkeypatch):
    reqs = [deps.parseRequirement(t) for t in ("torch==2.13.0", "monai[einops]==1.6.1", "scipy>=1.10")]
    installed = {"scipy": "1.14.0"}
    calls = []

    class FakeTorchLogic:
        @staticmethod
        def torchInstalled():
            calls.append("torchInstalled")
            return False

        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **kwargs):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            installed["torch"] = "2.13.0+cpu"
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeTorchLogic))

    def pip_install(args):
        calls.append(("pip_install", list(args)))
        installed["monai"] = "1.6.1"

    answers = []
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None: answers.append(text) or False,
                        raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", lambda: __import__("contextlib").nullcontext(), raising=False)

    # outside the application: a clear error naming what to install
    with pytest.raises(sr.ScoreReconProcessError, match="torch==2.13.0"):
        deps.ensureDependencies(requirements=reqs, versionOf=installed.get)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(), raising=False)
    monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)

    assert deps.ensureDependencies(requirements=reqs, versionOf=installed.get) is False  # the user declined
    assert len(answers) == 1 and "torch==2.13.0" in answers[0] and "monai" in answers[0] and calls == []

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None: answers.append(text) or True)
    assert deps.ensureDependencies(requirements=reqs, versionOf=installed.get) is True
    assert len(answers) == 2  # one question per attempt, nothing asks again
    # torch is never imported into Slicer's process to check it (torchInstalled() would): metadata only
    assert calls == [("installTorch", False, "==2.13.0"), ("pip_install", ["monai[einops]==1.6.1"])]

    # where slicer.packaging has pip_ensure (Slicer 5.12+), it installs the rest without its own prompt
    ensured = []
    fake_packaging = types.ModuleType("slicer.packaging")
    fake_packaging.pip_ensure = lambda reqs, **kw: ensured.append((list(reqs), kw))
    monkeypatch.setitem(sys.modules, "slicer.packaging", fake_packaging)
    monkeypatch.setattr(slicer, "packaging", fake_packaging, raising=False)
    installed.pop("monai")
    deps.installRequirements(deps.checkRequirements(reqs, installed.get))
    assert ensured == [(["monai[einops]==1.6.1"], {"skip_packages": ["torch"], "prompt_install": False,
                                                   "requester": "ScoreRecon"})]


def test_console_start_checks_dependencies(sr, slicer, deps, monkeypatch):
    monkeypatch.setattr(deps, "installedVersion", lambda name: None if name == "monai" else "99")
    node = slicer.util.addVolumeFromArray(sr.makePhantom(32, 1), name="Head")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(sr.ScoreReconProcessError, match="monai"):
        sr.ScoreReconLogic().startJob(node, task="sparse-ct", method="fbp")
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_self_test_skips_with_a_message_where_packages_are_missing(sr, slicer, monkeypatch, caplog):
    monkeypatch.setattr(sr.ScoreReconLogic, "missingDependencies", staticmethod(lambda: ["torch==2.13.0"]))
    test = sr.ScoreReconTest()
    with caplog.at_level("INFO"):
        test.runTest()  # the bad-input checks run, the reconstructions are skipped
    assert test.skipReason == "missing Python packages: torch==2.13.0"
    assert "skipped, missing Python packages: torch==2.13.0" in caplog.text
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_self_test_skips_where_ctest_runs_each_method_directly(sr, slicer, monkeypatch):
    """ctest runs ``unittest.TestLoader().loadTestsFromName("ScoreRecon")``: every ``test_*`` method on its own,
    never ``runTest``. Without the packages, the reconstruction methods skip instead of erroring (issue 21)."""
    import unittest

    monkeypatch.setattr(sr.ScoreReconLogic, "missingDependencies", staticmethod(lambda: ["numpy>=1.24"]))
    suite = unittest.TestLoader().loadTestsFromTestCase(sr.ScoreReconTest)
    names = sorted(t._testMethodName for t in suite)
    assert {"test_ScoreRecon_bad_input", "test_ScoreRecon_fbp_geometry", "test_ScoreRecon_score"} <= set(names)
    result = unittest.TestResult()
    suite.run(result)
    assert result.errors == [] and result.failures == []
    assert sorted(t._testMethodName for t, _ in result.skipped) == ["test_ScoreRecon_fbp_geometry",
                                                                    "test_ScoreRecon_score"]
    assert all(reason == "missing Python packages: numpy>=1.24" for _, reason in result.skipped)


def test_too_old_slicer_is_refused_with_the_message(sr, slicer, monkeypatch):
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=8), raising=False)
    with pytest.raises(sr.ScoreReconModuleError, match="needs 3D Slicer 5.10 or later; this is Slicer 5.8"):
        sr.ScoreReconLogic().startJob(np.zeros((32, 32), np.float32), task="sparse-ct", method="fbp")


# ----------------------------------------------------------------------------------------- sample data
def test_register_sample_data_registers_the_shipped_samples(sr):
    from ScoreReconModuleLib import sampledata

    calls = []
    fake = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: calls.append(kw)))
    names = sr.registerSampleData(fake)
    assert names == [s[0] for s in sampledata.SAMPLES] and len(calls) == 3
    for call, (_, file_name, node_name) in zip(calls, sampledata.SAMPLES, strict=True):
        assert call["category"] == "ScoreRecon" and call["fileNames"] == file_name
        assert call["nodeNames"] == node_name
        assert call["uris"].startswith("file:")
        data = urllib.request.urlopen(call["uris"]).read()  # what Sample Data's urlretrieve reads
        assert data == (REPO_ROOT / "Resources" / "samples" / file_name).read_bytes()
        assert call["checksums"] == "SHA256:" + hashlib.sha256(data).hexdigest()
        assert Path(call["thumbnailFileName"]).is_file()


# ------------------------------------------------------------------------------------- panel helpers
def test_apply_needs_the_input_of_the_chosen_mode(sr, slicer):
    pn = sr.ScoreReconLogic().getParameterNode()
    assert not sr.hasInput(pn)  # nothing selected: Apply stays disabled
    pn.inputVolume = slicer.util.addVolumeFromArray(np.zeros((1, 16, 16), np.float32), name="V")
    assert sr.hasInput(pn)
    pn.inputMode = "sinogram"
    assert not sr.hasInput(pn)
    pn.inputMode = "measurement"
    assert not sr.hasInput(pn) and pn.measurementFile == ""
    pn.measurementFile = "/data/m.npz"
    assert sr.hasInput(pn)


def test_sinogram_arguments_are_the_library_commands_options(sr):
    from ScoreReconLib import sinogram_input

    settings = sr.ScoreReconSettings(task="metal-ct", views=40, arc=120.0, metalThreshold=2500.0,
                                     sinogramUnits="attenuation", size=64, seed=7)
    args = sinogram_input.build_parser().parse_args(settings.sinogramArgs("in.npz", "out.npz", "Sino"))
    assert (args.input, args.output, args.task, args.views, args.arc, args.metal_threshold, args.units, args.size,
            args.seed, args.name) == ("in.npz", "out.npz", "metal-ct", 40, 120.0, 2500.0, "attenuation", 64, 7, "Sino")
    assert set(sr.SINOGRAM_UNITS) == set(sinogram_input.SINOGRAM_UNITS)
    assert set(sr.CT_TASKS) == set(sinogram_input.SINOGRAM_TASKS)


def test_fan_sinogram_arguments_are_the_library_commands_options(sr):
    from ScoreReconLib import sinogram_input
    from ScoreReconLib.cli import build_parser

    parallel = sinogram_input.build_parser().parse_args(sr.ScoreReconSettings().sinogramArgs("i.npz", "o.npz"))
    assert (parallel.geometry, parallel.source_distance, parallel.detector_distance) == ("parallel", None, None)
    fan = sr.ScoreReconSettings(task="limited-angle-ct", arc=250.0, geometry="fan", sourceDistance=570.0,
                                detectorDistance=470.5, detector="flat")
    fan.validate()  # a fan-beam arc may exceed 180 degrees
    args = sinogram_input.build_parser().parse_args(fan.sinogramArgs("i.npz", "o.npz"))
    assert (args.geometry, args.source_distance, args.detector_distance, args.detector, args.arc) == (
        "fan", 570.0, 470.5, "flat", 250.0)
    # image input: the same geometry goes to 'scorerecon simulate'
    sim = build_parser().parse_args(fan.simulateArgs("in.nrrd", "m.npz"))
    assert (sim.geometry, sim.source_distance, sim.detector_distance, sim.detector) == ("fan", 570.0, 470.5, "flat")
    assert "--geometry" not in sr.ScoreReconSettings(task="mri").simulateArgs("in.nrrd", "m.npz")
    assert set(sr.CT_GEOMETRIES) == set(sinogram_input.CT_GEOMETRIES)
    assert set(sr.DETECTORS) == set(sinogram_input.DETECTORS)
    with pytest.raises(sr.ScoreReconModuleError, match="arc must be in"):
        sr.ScoreReconSettings(task="limited-angle-ct", arc=250.0).validate()  # parallel beam: at most 180
    with pytest.raises(sr.ScoreReconModuleError, match="sourceDistance"):
        sr.ScoreReconSettings(geometry="fan", sourceDistance=0.0).validate()
    with pytest.raises(sr.ScoreReconModuleError, match="geometry 'cone' is unknown"):
        sr.ScoreReconSettings(geometry="cone").validate()


def test_kspace_arguments_and_steps(sr, tmp_path):
    from ScoreReconLib.cli import build_parser

    s = sr.ScoreReconSettings(task="mri", method="sense", centerFraction=0.1, maskKind="random", seed=4)
    args = build_parser().parse_args(s.importKspaceArgs("f.h5", "m.npz"))
    assert (args.input, args.output, args.acceleration, args.slices, args.center_fraction, args.mask, args.seed) == (
        "f.h5", "m.npz", None, None, 0.1, "random", 4)  # 0: an undersampled file keeps its own sampling
    s2 = sr.ScoreReconSettings(task="mri", kspaceAcceleration=4.0, kspaceSlices=" 2:5 ")
    args = build_parser().parse_args(s2.importKspaceArgs("f.h5", "m.npz"))
    assert (args.acceleration, args.slices) == (4.0, "2:5")
    with pytest.raises(sr.ScoreReconModuleError, match="kspaceAcceleration"):
        sr.ScoreReconSettings(task="mri", kspaceAcceleration=0.5).validate()
    h5 = tmp_path / "scan.h5"
    h5.write_bytes(b"")
    files, steps, baseline = sr.prepareFiles(str(tmp_path), "python", s, None, None, None, None, None, None, None,
                                             None, "scan", kspaceFile=str(h5))
    assert [st.label for st in steps] == ["Importing k-space", "Reconstructing (SENSE)", "Baseline (zero-filled)"]
    assert steps[0].args[:4] == ["python", "-m", "ScoreReconLib", "import-kspace"]
    imported = build_parser().parse_args(steps[0].args[3:])
    assert imported.input == str(h5.resolve()) and imported.output == files["measurement"]
    assert os.path.dirname(files["measurement"]) == str(tmp_path)  # the temporary measurement of the run
    recon = build_parser().parse_args(steps[1].args[3:])
    assert (recon.input, recon.method, recon.output) == (files["measurement"], "sense", files["reconstruction"])
    assert baseline == "zero-filled"


def test_module_methods_are_the_library_reconstruct_methods(sr):
    from ScoreReconLib.commands.engine import METHODS_FOR_TASK

    assert set(sr.METHODS) == {m for ms in METHODS_FOR_TASK.values() for m in ms}
    for task, methods in METHODS_FOR_TASK.items():
        assert set(sr.METHODS_FOR_TASK[task]) == set(methods), task
    assert set(sr.METHOD_LABELS) == set(sr.METHODS)


def test_h5py_is_an_on_demand_requirement_of_kspace_input(sr, slicer, deps, monkeypatch, tmp_path):
    import tomllib

    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["mri"]
    h5 = [deps.parseRequirement(line) for line in extra if line.lower().startswith("h5py")]
    kspace = [r for r in deps.requirementsFor("kspace") if r.key == "h5py"]
    assert len(h5) == 1 and [(r.name, r.clauses) for r in kspace] == [(h5[0].name, h5[0].clauses)]
    assert not [r for r in deps.requirementsFor(None) if r.key == "h5py"]  # not needed by every run
    assert not [r for r in deps.loadRequirements() if r.key == "h5py"]
    real = deps.installedVersion
    monkeypatch.setattr(deps, "installedVersion", lambda name: None if name == "h5py" else real(name))
    assert sr.ScoreReconLogic.dependencyProblems() == []
    assert [p.requirement.key for p in sr.ScoreReconLogic.dependencyProblems("kspace")] == ["h5py"]
    monkeypatch.setattr(deps, "installedVersion", lambda name: "3.1" if name == "h5py" else real(name))
    assert [p.describe() for p in sr.ScoreReconLogic.dependencyProblems("kspace")] == [
        "h5py>=3.8 (installed: 3.1)"]  # the version is checked, not just presence
    h5file = tmp_path / "scan.h5"
    h5file.write_bytes(b"")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(sr.ScoreReconProcessError, match="h5py"):
        sr.ScoreReconLogic().startJob(kspaceFile=str(h5file), task="mri", method="zero-filled")
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def test_kspace_input_mode_of_the_panel(sr, slicer, tmp_path):
    logic = sr.ScoreReconLogic()
    pn = logic.getParameterNode()
    pn.inputMode = "kspace"
    assert not sr.hasInput(pn) and pn.kspaceFile == ""
    with pytest.raises(sr.ScoreReconModuleError, match="no k-space file"):
        logic.startFromParameterNode(pn, checkDependencies=False)
    pn.kspaceFile = str(tmp_path / "missing.h5")
    assert sr.hasInput(pn)
    pn.task = "mri"
    with pytest.raises(sr.ScoreReconModuleError, match="does not exist"):
        logic.startFromParameterNode(pn, checkDependencies=False)
    (tmp_path / "scan.npz").write_bytes(b"")
    with pytest.raises(sr.ScoreReconModuleError, match="not an HDF5 k-space file"):
        logic.startJob(kspaceFile=str(tmp_path / "scan.npz"), task="mri", method="zero-filled",
                       checkDependencies=False)
    (tmp_path / "scan.h5").write_bytes(b"")
    with pytest.raises(sr.ScoreReconModuleError, match="needs the mri task"):
        logic.startJob(kspaceFile=str(tmp_path / "scan.h5"), task="sparse-ct", method="fbp",
                       checkDependencies=False)


def test_threads_and_weight_settings_reach_every_command(sr):
    from ScoreReconLib.cli import build_parser

    parse = build_parser().parse_args
    auto = sr.ScoreReconSettings(task="sparse-ct", method="tv")
    assert parse(auto.simulateArgs("i.nrrd", "m.npz")).threads is None  # 0: the CLI's load-aware default
    tv = parse(auto.reconstructArgs("m.npz", "o.nrrd", "tv"))
    assert (tv.weight, tv.threads) == ("auto", None)
    s = sr.ScoreReconSettings(task="mri", method="cs", threads=3, weight=" 2e-4 ")
    s.validate()
    assert parse(s.simulateArgs("i.nrrd", "m.npz")).threads == 3
    assert parse(s.importKspaceArgs("f.h5", "m.npz")).threads == 3
    cs = parse(s.reconstructArgs("m.npz", "o.nrrd", "cs"))
    assert (cs.weight, cs.threads) == (2e-4, 3)
    score = parse(s.reconstructArgs("m.npz", "o.nrrd", "score"))
    assert score.weight is None and score.threads == 3  # the score method chooses its start's weight itself
    for bad in ("-1", "0", "nan", "heavy"):
        with pytest.raises(sr.ScoreReconModuleError, match="weight must be auto or a positive number"):
            sr.ScoreReconSettings(method="tv", weight=bad).validate()
    with pytest.raises(sr.ScoreReconModuleError, match=r"threads must be in \[0, 1024\]"):
        sr.ScoreReconSettings(threads=-2).validate()


def test_adapt_setting_reaches_reconstruct(sr):
    """The panel's Adapt prior setting (issue 25) becomes reconstruct --adapt for the score method only."""
    from ScoreReconLib.cli import build_parser

    parse = build_parser().parse_args
    plain = sr.ScoreReconSettings(task="sparse-ct", method="score")
    assert plain.adapt == "none" and parse(plain.reconstructArgs("m.npz", "o.nrrd", "score")).adapt is None
    lora = sr.ScoreReconSettings(task="sparse-ct", method="score", adapt="lora")
    lora.validate()
    assert parse(lora.reconstructArgs("m.npz", "o.nrrd", "score")).adapt == "lora"
    assert "--adapt" not in lora.reconstructArgs("m.npz", "o.nrrd", "fbp")  # the baseline does not adapt
    with pytest.raises(sr.ScoreReconModuleError, match="adapt"):
        sr.ScoreReconSettings(adapt="full").validate()
    assert set(sr.ADAPT_MODES) == set(build_parser()._subparsers._group_actions[0].choices["reconstruct"]
                                       ._option_string_actions["--adapt"].choices)


def test_library_steps_run_in_one_child(sr, tmp_path):
    """An Apply's library commands share one child process (torch loads once); step labels still advance and a
    failing step reports its own error line."""
    import json as _json

    from ScoreReconLib.resources import resource_path

    python = sys.executable
    meas, out = tmp_path / "m.npz", tmp_path / "fbp.nrrd"
    cli = [python, "-m", "ScoreReconLib"]
    steps = [sr.ScoreReconStep("Simulating", cli + ["simulate", "--task", "sparse-ct", "--views", "8", "--size", "32",
                                                    "--input", str(resource_path("samples", "ct_head_sample.nrrd")),
                                                    "--output", str(meas)]),
             sr.ScoreReconStep("FBP", cli + ["reconstruct", "--input", str(meas), "--method", "fbp", "--output",
                                             str(out), "--progress-format", "json"])]
    process = sr.ScoreReconProcess(steps, cwd=str(tmp_path))
    assert process.chained
    seen = []
    assert process.wait(timeout=600, callback=lambda p: seen.append(p.stepIndex)) == "succeeded"
    assert out.exists() and max(seen) == 1 and process.progress == 1.0
    assert _json.loads((tmp_path / "steps.json").read_text())[1][0] == "reconstruct"
    bad = [steps[0], sr.ScoreReconStep("FBP", cli + ["reconstruct", "--input", str(tmp_path / "none.npz"),
                                                     "--method", "fbp", "--output", str(out)])]
    failing = sr.ScoreReconProcess(bad, cwd=str(tmp_path))
    assert failing.wait(timeout=600) == "failed"
    assert failing.stepIndex == 1 and "does not exist" in failing.errorMessage and failing.returncode == 2
    single = sr.ScoreReconProcess([steps[0]])
    assert not single.chained  # one step: run as it is
    mixed = sr.ScoreReconProcess([steps[0], sr.ScoreReconStep("other", [python, "-c", "pass"])])
    assert not mixed.chained  # not all library commands: one child per step
