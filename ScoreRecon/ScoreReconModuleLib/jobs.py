"""A reconstruction that runs in the background: files of a run, the non-blocking job, loading its results.

:class:`ScoreReconJob` is what ``ScoreReconLogic.startJob`` returns: ``state`` / ``progress`` /
``message`` while it runs, ``cancel()``, ``result()`` once it is done, ``wait()`` to block while
keeping Slicer's GUI alive. Inside the application a timer polls it (results appear in the scene
by themselves); elsewhere call ``poll()`` or ``wait()``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer

from .process import ScoreReconProcess, ScoreReconStep, wait_until_done
from .settings import (
    METHOD_LABELS,
    ScoreReconCancelledError,
    ScoreReconModuleError,
    ScoreReconProcessError,
    ScoreReconSettings,
)
from .volumes import readVolumeFile, showAsMap, storeMetrics, storeVolume, writeVolumeFile

#: colour table of the disagreement map (a Slicer built-in) and the level above which the prior added structure the
#: data do not demand (|score − classical| > 1.645 calibrated std); the map is shown from 0 to twice that level
DISAGREEMENT_COLORS = "vtkMRMLColorTableNodeRainbow"
DISAGREEMENT_LEVEL = 1.645
#: colour table of the back-projected data residual (signed; shown symmetric about 0)
RESIDUAL_COLORS = "vtkMRMLColorTableNodeGrey"


@dataclass
class ScoreReconResult:
    """Outputs of a finished run.

    Arrays are in physical units (HU for CT) with the input's layout: ``(H, W)`` for a 2-D input,
    ``(Z, H, W)`` otherwise. ``metrics`` maps method ("score", "fbp", …) to its metrics record
    (``psnr`` in dB and ``ssim`` on [0, 1]-normalised images, per-slice lists, seconds, ``chi2``).
    ``disagreement``: |score − classical| / calibrated std per voxel (score runs with 2 or more samples);
    ``residual``: the back-projected data residual Aᴴ(A x − y) in physical units (every method). Node
    attributes are None when no nodes were added (array input without ``addNodes``).
    ``tempDir`` is the run's folder if it was kept (``keepTemporaryFiles``), else None.
    """

    reconstruction: np.ndarray
    ijkToRAS: np.ndarray
    baseline: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    residual: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)
    reconstructionNode: Any = None
    baselineNode: Any = None
    uncertaintyNode: Any = None
    disagreementNode: Any = None
    residualNode: Any = None
    metricsTableNode: Any = None
    seconds: float = 0.0
    log: list = field(default_factory=list)
    tempDir: str | None = None


def _hasApp() -> bool:
    return hasattr(slicer, "app") and slicer.app is not None


class ScoreReconJob:
    """A started reconstruction; never blocks unless :meth:`wait` is called.

    - ``state``: "running", "succeeded", "failed" or "cancelled"; ``done`` once it is not running;
    - ``progress`` (0…1) and ``message`` (the current step and slice);
    - ``poll()`` advances it (the application's timer does this every ``POLL_INTERVAL_MS``);
      when the process ends the results are loaded into nodes and the run's folder is removed;
    - ``cancel()`` stops the process and its children; nothing is added to the scene;
    - ``result()`` gives the :class:`ScoreReconResult` or raises the run's error
      (:class:`ScoreReconModuleError` for bad input, :class:`ScoreReconProcessError`,
      :class:`ScoreReconCancelledError`);
    - ``wait(timeout)`` polls until done while processing GUI events, then returns ``result()``.

    ``onProgress(job)`` is called after each poll that saw the job running, ``onFinished(job)``
    once when it is done (success, failure or cancel).
    """

    POLL_INTERVAL_MS = 200

    def __init__(self, settings: ScoreReconSettings, process: ScoreReconProcess, tempDir: str, inputName: str,
                 files: dict[str, str], targets: dict[str, Any], addNodes: bool, inputShape: tuple | None = None,
                 inputIJKToRAS: np.ndarray | None = None, inputNdim: int = 3, windowLevel: tuple | None = None,
                 baselineMethod: str | None = None, inputNode: Any = None,
                 showResults: Callable[[ScoreReconResult], None] | None = None) -> None:
        self.settings = settings
        self.process = process
        self.tempDir = tempDir
        self.inputName = inputName
        self.files = files
        self.targets = targets
        self.addNodes = addNodes
        self.inputShape = inputShape
        self.inputIJKToRAS = inputIJKToRAS
        self.inputNdim = inputNdim
        self.windowLevel = windowLevel
        self.baselineMethod = baselineMethod
        self.inputNode = inputNode
        self.showResults = showResults
        self.onProgress: Callable[[ScoreReconJob], None] | None = None
        self.onFinished: Callable[[ScoreReconJob], None] | None = None
        self._result: ScoreReconResult | None = None
        self._error: BaseException | None = None
        self._finalized = False
        self._timer = None

    # ------------------------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        if self._finalized and self._error is not None:
            return "cancelled" if isinstance(self._error, ScoreReconCancelledError) else "failed"
        if self._finalized:
            return "succeeded"
        return "running" if self.process.state in ("pending", "running") else self.process.state

    @property
    def done(self) -> bool:
        return self._finalized

    @property
    def progress(self) -> float:
        return self.process.progress

    @property
    def message(self) -> str:
        if self._finalized and self._error is not None and not isinstance(self._error, ScoreReconCancelledError):
            return str(self._error)
        return self.process.message

    @property
    def error(self) -> BaseException | None:
        """The run's error once it failed or was cancelled (else None)."""
        return self._error

    @property
    def log(self) -> list[str]:
        return list(self.process.log)

    # ---------------------------------------------------------------------------------- control
    def poll(self) -> str:
        """Advance the job (read progress, start the next step, load the results when done); return ``state``."""
        if self._finalized:
            return self.state
        processState = self.process.poll()
        if processState in ("pending", "running"):
            if self.onProgress is not None:
                self.onProgress(self)
            return "running"
        self._finalize()
        return self.state

    def cancel(self) -> None:
        """Stop the run (process and children) and remove its folder; ``result()`` then raises cancelled."""
        if self._finalized:
            return
        self.process.cancel()
        self._finalize()

    def result(self) -> ScoreReconResult:
        """The results of a finished run, or its error raised; RuntimeError while it still runs."""
        if not self._finalized:
            raise RuntimeError("the reconstruction is still running; poll() or wait() until it is done")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def wait(self, timeout: float | None = None,
             callback: Callable[[ScoreReconJob], None] | None = None) -> ScoreReconResult:
        """Block until done, keeping the GUI responsive (events are processed); return :meth:`result`.

        ``callback(job)`` after each poll (a cancel from it stops the run). On ``timeout`` seconds the
        job is cancelled and TimeoutError raised. Ctrl-C / KeyboardInterrupt cancels too.
        """
        def idle() -> None:
            if _hasApp():
                slicer.app.processEvents()

        try:
            wait_until_done(self, timeout, callback, self.process.POLL_INTERVAL_S / 2, idle)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self.result()

    def autoPoll(self, intervalMs: int | None = None) -> bool:
        """Poll from a Qt timer until done (only inside the application); False where there is no Qt."""
        if not _hasApp():
            return False
        import qt

        self._timer = qt.QTimer()
        self._timer.setInterval(int(intervalMs or self.POLL_INTERVAL_MS))
        self._timer.timeout.connect(self._onTimer)
        self._timer.start()
        return True

    def _onTimer(self) -> None:
        self.poll()

    # ---------------------------------------------------------------------------------- results
    def _finalize(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        process = self.process
        try:
            if process.state == "cancelled":
                raise ScoreReconCancelledError("the reconstruction was cancelled")
            if process.state == "failed":
                if process.returncode == 2:
                    raise ScoreReconModuleError(process.errorMessage)
                raise ScoreReconProcessError(process.errorMessage)
            self._result = loadResults(self)
            if self.showResults is not None:
                self.showResults(self._result)
        except Exception as exc:  # the run's error, raised again by result()
            self._error = exc
        finally:
            self._finalized = True
            self._cleanUp()
        if self.onFinished is not None:
            try:
                self.onFinished(self)
            except Exception:
                logging.exception("ScoreRecon: onFinished callback failed")

    def _cleanUp(self) -> None:
        keep = self.settings.keepTemporaryFiles and self.process.state != "cancelled"
        if keep:
            logging.info("ScoreRecon: the run's files are kept in %s", self.tempDir)
            if self._result is not None:
                self._result.tempDir = self.tempDir
        else:
            shutil.rmtree(self.tempDir, ignore_errors=True)


# ------------------------------------------------------------------------------------ run preparation
def prepareFiles(tempDir: str, python: str, settings: ScoreReconSettings, inputArray, inputMatrix, sinogramArray,
                 sinogramSpacing, sinogramMatrix, measurementFile, referenceArray, referenceMatrix,
                 inputName: str,
                 kspaceFile: str | None = None) -> tuple[dict[str, str], list[ScoreReconStep], str | None]:
    """Write the inputs into ``tempDir`` and list the commands; returns (files, steps, baselineMethod).

    Every computation (simulation, sinogram conversion incl. the metal-ct FBP, k-space import,
    reconstruction) is a step of the child process; this only writes files. ``kspaceFile``: a
    fastMRI-format HDF5 file, imported by ``scorerecon import-kspace`` into the run's measurement file.
    """
    cli = [python, "-m", "ScoreReconLib"]
    files = {"measurement": os.path.join(tempDir, "measurement.npz"),
             "reconstruction": os.path.join(tempDir, "reconstruction.nrrd"),
             "metrics": os.path.join(tempDir, "metrics.json"),
             "residual": os.path.join(tempDir, "residual.npz")}
    steps: list[ScoreReconStep] = []
    referencePath = None
    if inputArray is not None:
        files["input"] = os.path.join(tempDir, "input.nrrd")
        writeVolumeFile(inputArray, inputMatrix, files["input"])
        steps.append(ScoreReconStep("Simulating measurements", cli + settings.simulateArgs(
            files["input"], files["measurement"]), weight=1.0))
        referencePath = files["input"]
    elif sinogramArray is not None:
        files["sinogram"] = os.path.join(tempDir, "sinogram.npz")
        z0 = float(sinogramMatrix[2, 3]) if sinogramMatrix is not None else 0.0
        np.savez(files["sinogram"], sinogram=np.ascontiguousarray(sinogramArray, dtype=np.float32),
                 spacing=np.asarray(sinogramSpacing, dtype=np.float64), z0=np.float64(z0))
        steps.append(ScoreReconStep("Reading the sinogram", cli + ["import-sinogram"]
                                    + settings.sinogramArgs(files["sinogram"], files["measurement"], inputName),
                                    weight=0.5))
    elif kspaceFile is not None:
        files["kspace"] = str(pathlib.Path(str(kspaceFile)).expanduser().resolve())
        steps.append(ScoreReconStep("Importing k-space", cli + settings.importKspaceArgs(
            files["kspace"], files["measurement"]), weight=1.0))
    else:
        files["measurement"] = str(pathlib.Path(str(measurementFile)).expanduser().resolve())
    if referenceArray is not None:
        files["reference"] = os.path.join(tempDir, "reference.nrrd")
        writeVolumeFile(referenceArray, referenceMatrix, files["reference"])
        referencePath = files["reference"]

    method = settings.method
    stdPath = disagreementPath = None
    if method == "score" and settings.effectiveSamples() >= 2:
        files["uncertainty"] = os.path.join(tempDir, "uncertainty.nrrd")
        stdPath = files["uncertainty"]
        files["disagreement"] = os.path.join(tempDir, "disagreement.nrrd")
        disagreementPath = files["disagreement"]
    mainWeight = 8.0 if method == "score" else 3.0
    steps.append(ScoreReconStep(f"Reconstructing ({METHOD_LABELS[method]})", cli + settings.reconstructArgs(
        files["measurement"], files["reconstruction"], method, referencePath,
        files["metrics"] if referencePath else None, stdPath, disagreementPath, files["residual"]),
        weight=mainWeight))
    baselineMethod = None
    if settings.computeBaseline and method != settings.baselineMethod:
        baselineMethod = settings.baselineMethod
        files["baseline"] = os.path.join(tempDir, "baseline.nrrd")
        files["baselineMetrics"] = os.path.join(tempDir, "baseline_metrics.json")
        steps.append(ScoreReconStep(f"Baseline ({METHOD_LABELS[baselineMethod]})", cli + settings.reconstructArgs(
            files["measurement"], files["baseline"], baselineMethod, referencePath,
            files["baselineMetrics"] if referencePath else None), weight=1.0))
    if not referencePath:
        files.pop("metrics", None)
        files.pop("baselineMetrics", None)
    return files, steps, baselineMethod


def loadResults(job: ScoreReconJob) -> ScoreReconResult:
    """Read a succeeded job's files; fill or add nodes (only after everything loaded)."""
    arrays, matrices = {}, {}
    for key in ("reconstruction", "baseline", "uncertainty", "disagreement"):
        if key in job.files:
            arrays[key], fileMatrix = readVolumeFile(job.files[key])
            same = job.inputShape is not None and tuple(arrays[key].shape) == tuple(job.inputShape)
            matrices[key] = job.inputIJKToRAS if same and job.inputIJKToRAS is not None else fileMatrix
    if "residual" in job.files and os.path.isfile(job.files["residual"]):  # Aᴴ(A x − y), physical units
        with np.load(job.files["residual"], allow_pickle=False) as npz:
            arrays["residual"] = np.asarray(npz["backprojection"], dtype=np.float32)
        matrices["residual"] = matrices["reconstruction"]
    metrics = {}
    for key, method in (("metrics", job.settings.method), ("baselineMetrics", job.baselineMethod)):
        path = job.files.get(key)
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                metrics[method] = json.load(fh)

    def shaped(a):
        return a[0] if a is not None and job.inputNdim == 2 and a.shape[0] == 1 else a

    result = ScoreReconResult(
        reconstruction=shaped(arrays["reconstruction"]), ijkToRAS=matrices["reconstruction"],
        baseline=shaped(arrays.get("baseline")), uncertainty=shaped(arrays.get("uncertainty")),
        disagreement=shaped(arrays.get("disagreement")), residual=shaped(arrays.get("residual")),
        metrics=metrics, seconds=job.process.elapsed, log=list(job.process.log))
    targets = job.targets
    if not job.addNodes and not any(v is not None for v in targets.values()):
        return result
    label = METHOD_LABELS[job.settings.method]
    result.reconstructionNode = storeVolume(
        targets["reconstruction"], arrays["reconstruction"], matrices["reconstruction"],
        f"{job.inputName} {label}", job.windowLevel, job.inputNode)
    if "baseline" in arrays:
        result.baselineNode = storeVolume(
            targets["baseline"], arrays["baseline"], matrices["baseline"],
            f"{job.inputName} {METHOD_LABELS[job.baselineMethod]}", job.windowLevel, job.inputNode)
    if "uncertainty" in arrays:
        result.uncertaintyNode = storeVolume(
            targets["uncertainty"], arrays["uncertainty"], matrices["uncertainty"], f"{job.inputName} {label} std",
            None, job.inputNode)
    if "residual" in arrays:  # how the image departs from the data, back-projected: signed, grey about 0
        result.residualNode = storeVolume(
            targets.get("residual"), arrays["residual"], matrices["residual"], f"{job.inputName} {label} residual",
            None, job.inputNode)
        top = float(np.percentile(np.abs(arrays["residual"]), 99)) or 1.0
        showAsMap(result.residualNode, RESIDUAL_COLORS, -top, top)
    if "disagreement" in arrays:  # |score − classical| / calibrated std: a map, not an image
        result.disagreementNode = storeVolume(
            targets.get("disagreement"), arrays["disagreement"], matrices["disagreement"],
            f"{job.inputName} {label} disagreement", None, job.inputNode)
        showAsMap(result.disagreementNode, DISAGREEMENT_COLORS, 0.0, 2 * DISAGREEMENT_LEVEL)
    if metrics:
        result.metricsTableNode = storeMetrics(targets["metrics"], metrics, f"{job.inputName} {label} metrics",
                                               METHOD_LABELS, job.inputNode)
    return result
