"""ScoreRecon: a 3D Slicer module for CT and MRI reconstruction with score-based generative priors.

Implements the workflow of Song, Shen, Xing & Ermon, "Solving Inverse Problems in Medical Imaging
with Score-Based Generative Models" (ICLR 2022) on top of the ``ScoreReconLib`` library:

- input: an image volume (measurements are simulated from it: sparse-view, limited-angle or
  metal-trace CT, undersampled MRI), a measured CT sinogram volume, or a measurement ``.npz`` file;
- reconstruction: the score prior (posterior sampling with data consistency) or a classical method
  (FBP, TV, zero-filled, compressed sensing), plus a classical baseline for comparison;
- outputs: volume nodes with the input's geometry, the posterior standard deviation when several
  samples are drawn, and PSNR/SSIM in a table node when a reference exists.

The heavy work runs in a separate Python process (``python -m ScoreReconLib simulate`` /
``reconstruct``) on files in a temporary folder, so Slicer stays responsive and a run can be
cancelled. The logic class uses MRML only (no Qt) and is scriptable from the Python console::

    logic = slicer.util.getModuleLogic("ScoreRecon")
    result = logic.reconstruct(volumeNode, task="sparse-ct", views=23, method="score")

This file imports Qt only inside the widget, so the logic also runs on slicer-core (headless MRML).
"""

import dataclasses
import json
import logging
import math
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# ---------------------------------------------------------------------------------------- constants
#: inverse problems (same names as the ``scorerecon`` CLI)
TASKS = ("sparse-ct", "limited-angle-ct", "metal-ct", "mri")
CT_TASKS = ("sparse-ct", "limited-angle-ct", "metal-ct")
#: reconstruction methods and the tasks they fit (as the CLI checks them)
METHODS = ("score", "fbp", "tv", "zero-filled", "cs")
METHODS_FOR_TASK = {
    "sparse-ct": ("score", "fbp", "tv"),
    "limited-angle-ct": ("score", "fbp", "tv"),
    "metal-ct": ("score", "fbp", "tv"),
    "mri": ("score", "zero-filled", "cs", "tv"),
}
#: names used for output nodes
METHOD_LABELS = {"score": "ScoreRecon", "fbp": "FBP", "tv": "TV", "zero-filled": "zero-filled", "cs": "CS"}
SAMPLERS = ("proximal", "fast", "song2021")
DEVICES = ("auto", "cpu", "cuda")
MRI_MASKS = ("equispaced", "random", "variable-density", "poisson")
#: where the measurements come from: simulated from an image volume, a measured sinogram volume, a file
INPUT_MODES = ("image", "sinogram", "measurement")
MODEL_CHOICES = ("default", "checkpoint")
#: sinogram values: the library's units (pixel-length line integrals of the [0, 1]-normalised image),
#: or attenuation line integrals -ln(I/I0) (dimensionless, detector spacing in mm)
SINOGRAM_UNITS = ("normalized", "attenuation")
#: linear attenuation of water used to convert attenuation sinograms (1/mm, ~70 keV)
WATER_ATTENUATION_PER_MM = 0.0192
#: smallest image side the library accepts (pixels)
MIN_IMAGE_SIZE = 16
#: Python packages the reconstruction process needs besides torch (import name → pip requirement);
#: Slicer bundles numpy and SimpleITK, so they are only installed where they are really missing
PIP_REQUIREMENTS = {
    "monai": "monai[einops]>=1.4",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "pydicom": "pydicom>=2.4",
    "SimpleITK": "SimpleITK>=2.3",
}




def _ensureLibraryImportable() -> None:
    """In a source checkout (module folder added to Slicer's module paths) put the repository on sys.path.

    The extension package installs ScoreReconLib beside this file; a checkout keeps it one folder up.
    """
    import importlib.util

    if importlib.util.find_spec("ScoreReconLib") is not None:
        return
    checkout = pathlib.Path(__file__).resolve().parent.parent
    if (checkout / "ScoreReconLib" / "__init__.py").is_file():
        sys.path.append(str(checkout))


_ensureLibraryImportable()


# ------------------------------------------------------------------------------------------- errors
class ScoreReconModuleError(ValueError):
    """A problem with the user's input or settings; the message names it and the fix."""


class ScoreReconDimensionError(ScoreReconModuleError):
    """An input has the wrong number of dimensions or a shape that does not fit the others."""


class ScoreReconProcessError(RuntimeError):
    """The reconstruction process failed for a reason other than bad input (crash, missing package)."""


class ScoreReconCancelledError(RuntimeError):
    """The run was cancelled."""


# ------------------------------------------------------------------------------------------- module
class ScoreRecon(ScriptedLoadableModule):
    """Module metadata (see the module docstring for what it does)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ScoreRecon"
        self.parent.categories = ["Reconstruction"]
        self.parent.dependencies = []
        self.parent.contributors = ["ScoreRecon developers"]
        self.parent.helpText = """
Reconstruct CT and MRI images from incomplete measurements with a score-based generative prior:
sparse-view CT, limited-angle CT, metal artifact reduction and undersampled MRI. Measurements are
simulated from an image volume, or given as a measured CT sinogram volume or a ScoreRecon
measurement file (.npz). The reconstruction, a classical baseline (FBP or zero-filled), the
posterior standard deviation and PSNR/SSIM against a reference are added to the scene.
<br><br>
Method: Y. Song, L. Shen, L. Xing, S. Ermon, "Solving Inverse Problems in Medical Imaging with
Score-Based Generative Models", International Conference on Learning Representations (ICLR), 2022.
"""
        self.parent.acknowledgementText = """
Built on PyTorch, MONAI and 3D Slicer. The method is by Yang Song, Liyue Shen, Lei Xing and
Stefano Ermon (ICLR 2022); this is an independent implementation. The shipped priors are small and
trained on few subjects: see their model cards before drawing conclusions from a reconstruction.
"""


# ----------------------------------------------------------------------------------- parameter node
@parameterNodeWrapper
class ScoreReconParameterNode:
    """Every setting of the ScoreRecon panel (names match the ``SlicerParameterName`` of the .ui)."""

    # input
    inputMode: Annotated[str, Choice(INPUT_MODES), Default("image")]
    inputVolume: vtkMRMLScalarVolumeNode
    sinogramVolume: vtkMRMLScalarVolumeNode
    measurementFile: pathlib.Path
    referenceVolume: vtkMRMLScalarVolumeNode
    size: Annotated[int, WithinRange(0, 4096), Default(0)]
    sinogramUnits: Annotated[str, Choice(SINOGRAM_UNITS), Default("normalized")]
    # measurement
    task: Annotated[str, Choice(TASKS), Default("sparse-ct")]
    views: Annotated[int, WithinRange(1, 4096), Default(23)]
    arc: Annotated[float, WithinRange(1.0, 180.0), Default(90.0)]
    metalThreshold: Annotated[float, WithinRange(0.0, 30000.0), Default(3000.0)]
    acceleration: Annotated[float, WithinRange(1.0, 64.0), Default(8.0)]
    centerFraction: Annotated[float, WithinRange(0.0, 0.5), Default(0.08)]
    maskKind: Annotated[str, Choice(MRI_MASKS), Default("equispaced")]
    noise: Annotated[float, WithinRange(0.0, 0.5), Default(0.0)]
    # reconstruction
    method: Annotated[str, Choice(METHODS), Default("score")]
    modelChoice: Annotated[str, Choice(MODEL_CHOICES), Default("default")]
    checkpointPath: pathlib.Path
    sampler: Annotated[str, Choice(SAMPLERS), Default("proximal")]
    useRecommended: Annotated[bool, Default(True)]
    steps: Annotated[int, WithinRange(1, 10000), Default(50)]
    lam: Annotated[float, WithinRange(0.0, 1.0), Default(0.8)]
    snr: Annotated[float, WithinRange(0.0, 2.0), Default(0.16)]
    samples: Annotated[int, WithinRange(1, 64), Default(1)]
    seed: Annotated[int, WithinRange(0, 2147483647), Default(0)]
    device: Annotated[str, Choice(DEVICES), Default("auto")]
    computeBaseline: Annotated[bool, Default(True)]
    # outputs
    outputVolume: vtkMRMLScalarVolumeNode
    baselineVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode


# ----------------------------------------------------------------------------------------- settings
@dataclass
class ScoreReconSettings:
    """The scalar settings of one run (defaults as in the panel); see :class:`ScoreReconParameterNode`.

    ``model``: "default" (the task's default prior), "default-ct", "default-mri" or a checkpoint
    folder. ``size``: resample slices to ``size``² (0 = automatic: the model's image size for the
    score method, otherwise the input's size). ``steps``/``lam``/``snr`` are used only when
    ``useRecommended`` is False (else the model's tuned values).
    """

    task: str = "sparse-ct"
    views: int = 23
    arc: float = 90.0
    metalThreshold: float = 3000.0
    acceleration: float = 8.0
    centerFraction: float = 0.08
    maskKind: str = "equispaced"
    noise: float = 0.0
    size: int = 0
    sinogramUnits: str = "normalized"
    method: str = "score"
    model: str = "default"
    sampler: str = "proximal"
    useRecommended: bool = True
    steps: int = 50
    lam: float = 0.8
    snr: float = 0.16
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    computeBaseline: bool = True

    @classmethod
    def fromOptions(cls, **options: Any) -> "ScoreReconSettings":
        """Settings from keyword options; unknown names raise :class:`ScoreReconModuleError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ScoreReconModuleError(
                f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}")
        return cls(**options)

    @classmethod
    def fromParameterNode(cls, pn: ScoreReconParameterNode) -> "ScoreReconSettings":
        """Settings from the panel's parameter node."""
        values = {f.name: getattr(pn, f.name) for f in fields(cls) if f.name != "model"}
        if pn.modelChoice == "checkpoint":
            values["model"] = str(pn.checkpointPath) if _pathIsSet(pn.checkpointPath) else ""
        else:
            values["model"] = "default"
        return cls(**values)

    @property
    def modelArgument(self) -> str:
        """The ``--model`` value: the task's default prior or the given name/folder."""
        if self.model in ("", "default"):
            return "default-mri" if self.task == "mri" else "default-ct"
        return str(self.model)

    @property
    def baselineMethod(self) -> str:
        """Classical method shown beside the reconstruction: FBP (CT) or zero-filled (MRI)."""
        return "zero-filled" if self.task == "mri" else "fbp"

    def validate(self) -> None:
        """Raise :class:`ScoreReconModuleError` for a setting out of range or not fitting the task."""
        def choose(name: str, value: str, choices: tuple) -> None:
            if value not in choices:
                raise ScoreReconModuleError(f"{name} '{value}' is unknown; choose one of {', '.join(choices)}")

        choose("task", self.task, TASKS)
        choose("method", self.method, METHODS)
        choose("sampler", self.sampler, SAMPLERS)
        choose("maskKind", self.maskKind, MRI_MASKS)
        choose("sinogramUnits", self.sinogramUnits, SINOGRAM_UNITS)
        if self.method not in METHODS_FOR_TASK[self.task]:
            raise ScoreReconModuleError(
                f"method {self.method} does not fit task {self.task}; use one of "
                f"{', '.join(METHODS_FOR_TASK[self.task])}")
        device = str(self.device)
        if device not in DEVICES and not device.startswith("cuda:"):
            raise ScoreReconModuleError(f"device '{device}' is unknown; choose auto, cpu, cuda or cuda:N")
        checks = [
            (self.views >= 1, f"views must be at least 1, got {self.views}"),
            (0.0 < self.arc <= 180.0, f"arc must be in (0, 180] degrees, got {self.arc}"),
            (math.isfinite(self.metalThreshold), "metalThreshold must be a finite number of HU"),
            (self.acceleration >= 1.0, f"acceleration must be at least 1 (fully sampled), got {self.acceleration}"),
            (0.0 <= self.centerFraction < 1.0, f"centerFraction must be in [0, 1), got {self.centerFraction}"),
            (math.isfinite(self.noise) and self.noise >= 0.0, f"noise must be >= 0, got {self.noise}"),
            (self.size == 0 or self.size >= MIN_IMAGE_SIZE,
             f"size must be 0 (automatic) or at least {MIN_IMAGE_SIZE} pixels, got {self.size}"),
            (self.samples >= 1, f"samples must be at least 1, got {self.samples}"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (0.0 <= self.lam <= 1.0, f"lam must be in [0, 1], got {self.lam}"),
            (self.snr > 0.0, f"snr must be positive, got {self.snr}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ScoreReconModuleError(message + "; change it in the settings")
        if self.method == "score" and self.model not in ("", "default", "default-ct", "default-mri"):
            if not pathlib.Path(self.model).expanduser().exists():
                raise ScoreReconModuleError(
                    f"checkpoint {self.model} does not exist; pick a checkpoint folder (model.safetensors + "
                    "config.json) or use the default model")
        if self.method == "score" and self.model == "":
            raise ScoreReconModuleError("no checkpoint folder is set; pick one or choose the default model")

    # ----------------------------------------------------------------------------- CLI arguments
    def simulateArgs(self, inputPath: str, outputPath: str) -> list[str]:
        """``scorerecon simulate`` arguments for this task."""
        args = ["simulate", "--task", self.task, "--input", inputPath, "--output", outputPath,
                "--noise", repr(float(self.noise)), "--seed", str(int(self.seed))]
        if self.task == "sparse-ct":
            args += ["--views", str(int(self.views))]
        elif self.task == "limited-angle-ct":
            args += ["--arc", repr(float(self.arc))]
        elif self.task == "metal-ct":
            args += ["--metal-threshold", repr(float(self.metalThreshold))]
        else:
            args += ["--acceleration", repr(float(self.acceleration)),
                     "--center-fraction", repr(float(self.centerFraction)), "--mask", self.maskKind]
        if self.size:
            args += ["--size", str(int(self.size))]
        return args

    def effectiveSamples(self) -> int:
        """Posterior samples to draw: the model's recommended count when ``useRecommended``, else ``samples``."""
        if self.useRecommended and self.sampler == "proximal":
            recommended = _modelRecommendedSamples(self.modelArgument)
            if recommended is not None:
                return recommended
        return int(self.samples)

    def reconstructArgs(self, measurementPath: str, outputPath: str, method: str,
                        referencePath: str | None = None, metricsPath: str | None = None,
                        stdPath: str | None = None) -> list[str]:
        """``scorerecon reconstruct`` arguments (json progress on stdout)."""
        args = ["reconstruct", "--input", measurementPath, "--method", method, "--output", outputPath,
                "--device", str(self.device), "--seed", str(int(self.seed)), "--progress-format", "json"]
        if referencePath:
            args += ["--reference", referencePath]
        if metricsPath:
            args += ["--metrics-json", metricsPath]
        if method == "score":
            args += ["--model", self.modelArgument, "--sampler", self.sampler,
                     "--samples", str(int(self.effectiveSamples()))]
            if not self.useRecommended:
                args += ["--steps", str(int(self.steps)), "--lam", repr(float(self.lam)),
                         "--snr", repr(float(self.snr))]
            if stdPath:
                args += ["--std-output", stdPath]
        return args


def _pathIsSet(path: Any) -> bool:
    """False for the parameter node's empty path (``Path()`` is ".")."""
    return path is not None and str(path) not in ("", ".")


# ------------------------------------------------------------------------------- background process
@dataclass
class ScoreReconStep:
    """One command of a run: ``args`` is the full argv; ``weight`` its share of the progress bar."""

    label: str
    args: list[str]
    weight: float = 1.0


class ScoreReconProcess:
    """Runs commands one after another in a child process, without blocking the caller.

    ``start()`` launches the first; ``poll()`` (call it from a timer) reads progress lines, starts
    the next command when one ends and returns the state: "pending", "running", "succeeded",
    "failed" or "cancelled". ``wait()`` polls until done (synchronous use). ``cancel()`` kills the
    process and its children (its own process group / session). A reconstruct command's
    ``{"progress": done, "total": n}`` JSON lines move :attr:`progress` (0…1 over all steps);
    other output is kept in :attr:`log`. After a failure :attr:`errorMessage` holds the command's
    error line and :attr:`returncode` its exit status (2: bad input).
    """

    POLL_INTERVAL_S = 0.1
    TERMINATE_GRACE_S = 3.0

    def __init__(self, steps: list[ScoreReconStep], env: dict | None = None, cwd: str | None = None) -> None:
        if not steps:
            raise ValueError("a process needs at least one step")
        self.steps = list(steps)
        self.env = env
        self.cwd = cwd
        self.state = "pending"
        self.stepIndex = -1
        self.stepFraction = 0.0
        self.message = ""
        self.log: list[str] = []
        self.errorMessage = ""
        self.returncode: int | None = None
        self.startTime: float | None = None
        self.endTime: float | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._readers: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    @property
    def pid(self) -> int | None:
        """Process id of the current command (also its process group on POSIX)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def progress(self) -> float:
        """Overall progress in [0, 1], weighting each step by its ``weight``."""
        if self.state == "succeeded":
            return 1.0
        total = sum(s.weight for s in self.steps)
        before = sum(s.weight for s in self.steps[:max(self.stepIndex, 0)])
        current = self.steps[self.stepIndex].weight * self.stepFraction if self.stepIndex >= 0 else 0.0
        return min(max((before + current) / total, 0.0), 1.0)

    @property
    def elapsed(self) -> float:
        if self.startTime is None:
            return 0.0
        return (self.endTime or time.monotonic()) - self.startTime

    # ---------------------------------------------------------------------------------- control
    def start(self) -> None:
        if self.state != "pending":
            raise RuntimeError(f"process already {self.state}")
        self.state = "running"
        self.startTime = time.monotonic()
        self._startStep(0)

    def _startStep(self, index: int) -> None:
        step = self.steps[index]
        self.stepIndex = index
        self.stepFraction = 0.0
        self.message = step.label
        self._stderr = []
        self._lines = queue.Queue()
        kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      env=self.env, cwd=self.cwd)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        logging.debug("ScoreRecon: running %s", " ".join(step.args))
        try:
            self._proc = subprocess.Popen(step.args, **kwargs)
        except OSError as exc:
            self._finish("failed", f"cannot start {step.args[0]}: {exc}")
            return
        self._readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, "out", self._lines), daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stderr, "err", self._lines), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, kind: str, lines: queue.Queue) -> None:
        try:
            for line in stream:
                lines.put((kind, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed by cancel()
            pass

    def poll(self) -> str:
        """Process new output, advance to the next step when one ends; return the state."""
        if self.state != "running":
            return self.state
        self._drain()
        proc = self._proc
        if proc is None or proc.poll() is None:
            return self.state
        for t in self._readers:
            t.join(timeout=5.0)
        self._drain()
        self.returncode = proc.returncode
        if proc.returncode == 0:
            self.stepFraction = 1.0
            if self.stepIndex + 1 < len(self.steps):
                self._startStep(self.stepIndex + 1)
            else:
                self._finish("succeeded", "Done")
        elif proc.returncode == 130:
            self._finish("cancelled", "Cancelled")
        else:
            self._finish("failed", self._errorFromStderr())
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if kind == "err":
                self._stderr.append(line)
                if line.strip():
                    self.log.append(line)
            else:
                self._handleOutput(line)

    def _handleOutput(self, line: str) -> None:
        text = line.strip()
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict) and "progress" in record and "total" in record:
                try:
                    done, total = float(record["progress"]), float(record["total"])
                except (TypeError, ValueError):
                    done, total = 0.0, 1.0
                self.stepFraction = min(max(done / max(total, 1.0), 0.0), 1.0)
                label = self.steps[self.stepIndex].label
                self.message = f"{label}: {record.get('message') or f'{int(done)}/{int(total)}'}"
                return
            if isinstance(record, dict) and isinstance(record.get("result"), dict):
                self.log.append(json.dumps(record["result"]))
                return
        if text:
            self.log.append(text)

    def _errorFromStderr(self) -> str:
        lines = [ln.strip() for ln in self._stderr if ln.strip()]
        for ln in reversed(lines):
            if ": error: " in ln:
                return ln
        tail = " | ".join(lines[-5:]) if lines else "no error output"
        label = self.steps[self.stepIndex].label
        return f"{label} failed with exit status {self.returncode}: {tail}"

    def _finish(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        if state != "succeeded":
            self.errorMessage = message if state == "failed" else ""
        self.endTime = time.monotonic()

    def cancel(self) -> None:
        """Kill the running command and its children; the state becomes "cancelled"."""
        if self.done:
            return
        self._killTree()
        self._finish("cancelled", "Cancelled")

    def _killTree(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
            else:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=self.TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                if os.name != "nt":
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                proc.kill()
                proc.wait()
        elif os.name != "nt":  # the command ended; stop anything it left in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for t in self._readers:  # the pipes reach end-of-file once every writer is gone
            t.join(timeout=2.0)
        if not any(t.is_alive() for t in self._readers):
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def wait(self, timeout: float | None = None,
             callback: Callable[["ScoreReconProcess"], None] | None = None) -> str:
        """Poll until done; ``callback(self)`` after each poll. On timeout cancel and raise TimeoutError."""
        if self.state == "pending":
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if callback is not None:
                callback(self)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the reconstruction did not finish within {timeout} s and was cancelled")
            time.sleep(self.POLL_INTERVAL_S)
        if callback is not None:
            callback(self)
        return self.state


# ------------------------------------------------------------------------------------- job / result
@dataclass
class ScoreReconJob:
    """A started run: its process, temporary folder, result files and where results go."""

    settings: ScoreReconSettings
    process: ScoreReconProcess
    tempDir: str
    inputName: str
    files: dict[str, str]
    targets: dict[str, Any]
    addNodes: bool
    inputShape: tuple | None = None
    inputIJKToRAS: np.ndarray | None = None
    inputNdim: int = 3
    windowLevel: tuple | None = None
    baselineMethod: str | None = None


@dataclass
class ScoreReconResult:
    """Outputs of a finished run.

    Arrays are in physical units (HU for CT) with the input's layout: ``(H, W)`` for a 2-D input,
    ``(Z, H, W)`` otherwise. ``metrics`` maps method ("score", "fbp", …) to its metrics record
    (``psnr`` in dB and ``ssim`` on [0, 1]-normalised images, per-slice lists, seconds). Node
    attributes are None when no nodes were added (array input without ``addNodes``).
    """

    reconstruction: np.ndarray
    ijkToRAS: np.ndarray
    baseline: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)
    reconstructionNode: Any = None
    baselineNode: Any = None
    uncertaintyNode: Any = None
    metricsTableNode: Any = None
    seconds: float = 0.0
    log: list = field(default_factory=list)


# ---------------------------------------------------------------------------------- volume helpers
def _ijkToRASArray(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtkMatrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def _volumeArray(node, what: str) -> np.ndarray:
    """Voxels of a scalar volume node as (K, J, I) float32 (a copy); clear errors otherwise."""
    if node is None:
        raise ScoreReconModuleError(f"no {what} is selected; choose a volume")
    image = node.GetImageData() if hasattr(node, "GetImageData") else None
    if image is None:
        raise ScoreReconModuleError(f"{what} '{node.GetName()}' has no voxels; load or compute it first")
    if image.GetNumberOfScalarComponents() != 1:
        raise ScoreReconDimensionError(
            f"{what} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel (a color "
            "or vector volume); convert it to a scalar volume (Vector to Scalar Volume module)")
    dims = image.GetDimensions()
    if min(dims) < 1 or dims[0] * dims[1] * dims[2] == 0:
        raise ScoreReconModuleError(f"{what} '{node.GetName()}' is empty; load or compute it first")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise ScoreReconDimensionError(f"{what} '{node.GetName()}' has voxel array shape {array.shape}; "
                                       "expected a scalar volume")
    return array


def _asVolumeArray(array: Any, what: str) -> np.ndarray:
    """A numpy (H, W) or (Z, H, W) real array as (Z, H, W) float32."""
    a = np.asarray(array)
    if a.ndim not in (2, 3):
        raise ScoreReconDimensionError(
            f"{what} array has shape {a.shape} ({a.ndim}-D); expected a 2-D (H, W) slice or a 3-D (Z, H, W) volume")
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ScoreReconModuleError(f"{what} array has dtype {a.dtype}; expected real numbers")
    a = a.astype(np.float32)
    return a[None] if a.ndim == 2 else a


def _checkFinite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ScoreReconModuleError(f"{what} contains NaN or infinite values; clean or mask them first")


def _writeVolumeFile(array: np.ndarray, ijkToRAS: np.ndarray, path: str) -> None:
    """Write (K, J, I) voxels with an IJK-to-RAS matrix as NRRD through an MRML storage node."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetIJKToRASMatrix(_vtkMatrix(ijkToRAS))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    _writeNodeFile(node, path)


def _writeNodeFile(node, path: str) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetUseCompression(False)
    if not storage.WriteData(node) or not os.path.isfile(path):
        raise ScoreReconProcessError(f"could not write {path}; check free disk space in the temporary folder")


def _readVolumeFile(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume file: ((K, J, I) float32 voxels, IJK-to-RAS 4×4)."""
    if not os.path.isfile(path):
        raise ScoreReconProcessError(f"the reconstruction process finished but wrote no {os.path.basename(path)}")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ScoreReconProcessError(f"could not read the result file {path}")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    return array, _ijkToRASArray(node)


def _modelConfig(model: str) -> dict | None:
    """A prior's config.json (``default-ct`` / ``default-mri`` or a checkpoint folder); None if unreadable."""
    try:
        if model in ("default-ct", "default-mri"):
            from ScoreReconLib.resources import resources_dir

            folder = resources_dir() / "models" / model
        else:
            folder = pathlib.Path(model).expanduser()
            if folder.is_file():
                folder = folder.parent
        config = json.loads((folder / "config.json").read_text())
        return config if isinstance(config, dict) else None
    except Exception:  # missing or unreadable: the reconstruct command reports it precisely
        return None


def _modelRecommendedSamples(model: str) -> int | None:
    """The posterior sample count a prior's config.json recommends for its sampler (None if it says none)."""
    try:
        value = ((_modelConfig(model) or {}).get("recommended") or {}).get("samples")
        return max(1, int(value)) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def _imageSizeForDetectors(nDet: int) -> int | None:
    """Image side N whose default parallel-beam detector count (smallest odd ≥ ceil(√2·N)) is ``nDet``."""
    for n in range(MIN_IMAGE_SIZE, nDet + 1):
        minDet = math.ceil(math.sqrt(2.0) * n)
        if minDet + (1 - minDet % 2) == nDet:
            return n
    return None


def _modelImageSize(model: str) -> int | None:
    """Image size a prior was trained on, from its config.json (None if it cannot be read).

    A patch prior (config ``prior.kind == "patch"``) works at any size: this returns 0 for it."""
    config = _modelConfig(model)
    if config is None:
        return None
    try:
        if (config.get("prior") or {}).get("kind") == "patch":
            return 0
        return int(config["image_size"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _libraryParentDir() -> str:
    """Folder that holds the ``ScoreReconLib`` package (put on the child's PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("ScoreReconLib")
    if spec is None or not spec.origin:
        raise ScoreReconProcessError(
            "ScoreReconLib is not importable; reinstall the ScoreRecon extension (or add the repository to the "
            "Python path)")
    return str(pathlib.Path(spec.origin).resolve().parent.parent)


# -------------------------------------------------------------------------------------------- logic
class ScoreReconLogic(ScriptedLoadableModuleLogic):
    """Runs reconstructions on MRML volume nodes (or numpy arrays); no Qt.

    Synchronous: :meth:`reconstruct`. Asynchronous (the panel): :meth:`start` (or
    :meth:`startFromParameterNode`) returns a :class:`ScoreReconJob` whose ``process`` is polled;
    then :meth:`finish` loads the results (or raises the run's error) and :meth:`discard` cancels
    and cleans up. Nodes are created or filled only after the run succeeded, so a failed or
    cancelled run leaves the scene as it was. Errors a user can fix raise
    :class:`ScoreReconModuleError` (a ``ValueError``) with a message naming the fix.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> ScoreReconParameterNode:
        return ScoreReconParameterNode(super().getParameterNode())

    # ---------------------------------------------------------------------------- environment
    @staticmethod
    def pythonExecutable() -> str:
        """Python for the child process: this interpreter (PythonSlicer inside Slicer).

        Inside the application, if ``sys.executable`` is not a Python launcher, PythonSlicer is
        looked up on PATH (Slicer puts it there).
        """
        executable = sys.executable
        if hasattr(slicer, "app") and not os.path.basename(executable).lower().startswith("python"):
            executable = shutil.which("PythonSlicer") or executable
        return executable

    @staticmethod
    def processEnvironment() -> dict:
        """Environment of the child: this one, ScoreReconLib's folder first on PYTHONPATH, unbuffered output."""
        env = dict(os.environ)
        parent = _libraryParentDir()
        old = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = parent + (os.pathsep + old if old else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def missingDependencies() -> list[str]:
        """Requirements of the reconstruction process that cannot be imported ("torch" first if missing).

        Looks modules up without importing them (so a bundled package without pip metadata, like
        Slicer's SimpleITK, counts as present).
        """
        import importlib.util

        missing = []
        for name in ["torch", *PIP_REQUIREMENTS]:
            if importlib.util.find_spec(name) is None:
                missing.append("torch" if name == "torch" else PIP_REQUIREMENTS[name])
        return missing

    @staticmethod
    def defaultModelAvailable(task: str) -> bool:
        """Whether the task's shipped prior (default-ct / default-mri) is installed."""
        name = "default-mri" if task == "mri" else "default-ct"
        return _modelImageSize(name) is not None

    @staticmethod
    def makeTempDir() -> str:
        """A new folder for one run: ``slicer.util.tempDirectory`` in the application, else ``tempfile``."""
        if hasattr(slicer, "app"):
            return slicer.util.tempDirectory("ScoreRecon-")
        return tempfile.mkdtemp(prefix="ScoreRecon-")

    # ----------------------------------------------------------------------------------- runs
    def reconstruct(self, inputVolume: Any = None, *, sinogram: Any = None, measurementFile: str | None = None,
                    reference: Any = None, outputVolume: Any = None, baselineVolume: Any = None,
                    uncertaintyVolume: Any = None, metricsTable: Any = None, addNodes: bool | None = None,
                    ijkToRAS: np.ndarray | None = None, showResults: bool = True,
                    progress: Callable[[float, str], None] | None = None, timeout: float | None = None,
                    **options: Any) -> ScoreReconResult:
        """Run a reconstruction and wait for it; see :meth:`start` for the arguments.

        ``progress(fraction, message)`` is called while waiting. Returns a :class:`ScoreReconResult`;
        raises :class:`ScoreReconModuleError` for bad input (including the reconstruct command's
        exit-status-2 message), :class:`ScoreReconProcessError` if the process fails otherwise.
        """
        job = self.start(inputVolume, sinogram=sinogram, measurementFile=measurementFile, reference=reference,
                         outputVolume=outputVolume, baselineVolume=baselineVolume,
                         uncertaintyVolume=uncertaintyVolume, metricsTable=metricsTable, addNodes=addNodes,
                         ijkToRAS=ijkToRAS, **options)
        callback = None
        if progress is not None:
            def callback(p: ScoreReconProcess) -> None:
                progress(p.progress, p.message)
        try:
            job.process.wait(timeout=timeout, callback=callback)
        except BaseException:
            self.discard(job)
            raise
        return self.finish(job, showResults=showResults)

    def startFromParameterNode(self, pn: ScoreReconParameterNode) -> ScoreReconJob:
        """Start a run with the panel's settings and nodes."""
        settings = ScoreReconSettings.fromParameterNode(pn)
        kwargs: dict[str, Any] = {}
        if pn.inputMode == "image":
            kwargs["inputVolume"] = pn.inputVolume
            if pn.inputVolume is None:
                raise ScoreReconModuleError("no input volume is selected; choose the image to reconstruct")
        elif pn.inputMode == "sinogram":
            kwargs["sinogram"] = pn.sinogramVolume
            if pn.sinogramVolume is None:
                raise ScoreReconModuleError("no sinogram volume is selected; choose the measured sinogram")
        else:
            if not _pathIsSet(pn.measurementFile):
                raise ScoreReconModuleError("no measurement file is set; choose a .npz made by 'scorerecon simulate'")
            kwargs["measurementFile"] = str(pn.measurementFile)
        reference = pn.referenceVolume if pn.inputMode != "image" else None  # an image input is its own reference
        return self.start(reference=reference, outputVolume=pn.outputVolume,
                          baselineVolume=pn.baselineVolume, uncertaintyVolume=pn.uncertaintyVolume,
                          metricsTable=pn.metricsTable, settings=settings, **kwargs)

    def start(self, inputVolume: Any = None, *, sinogram: Any = None, measurementFile: str | None = None,
              reference: Any = None, outputVolume: Any = None, baselineVolume: Any = None,
              uncertaintyVolume: Any = None, metricsTable: Any = None, addNodes: bool | None = None,
              ijkToRAS: np.ndarray | None = None, settings: ScoreReconSettings | None = None,
              **options: Any) -> ScoreReconJob:
        """Validate the inputs, write them to a temporary folder and start the process.

        Exactly one input: ``inputVolume`` (an image volume node or (H, W)/(Z, H, W) array; the
        measurements are simulated from it and it is the reference for the metrics), ``sinogram``
        (a measured CT sinogram volume node or array, slices × angles × detector bins) or
        ``measurementFile`` (a .npz made by ``scorerecon simulate``). ``reference``: a clean image
        (node or array) for PSNR/SSIM when the input is not an image. Output nodes, if given, are
        filled after success; otherwise new nodes are added (for array inputs only when
        ``addNodes``). ``ijkToRAS``: geometry of an array input (default identity). Other keyword
        options are :class:`ScoreReconSettings` fields (task, views, method, model, …).
        """
        if settings is None:
            settings = ScoreReconSettings.fromOptions(**options)
        elif options:
            raise ScoreReconModuleError("pass either settings or keyword options, not both")
        given = [x is not None for x in (inputVolume, sinogram, measurementFile)]
        if sum(given) == 0:
            raise ScoreReconModuleError(
                "no input: pass an image volume (inputVolume), a measured sinogram volume (sinogram) or a "
                "measurement .npz file (measurementFile)")
        if sum(given) > 1:
            raise ScoreReconModuleError("give only one of inputVolume, sinogram and measurementFile")
        settings.validate()
        if sinogram is not None and settings.task not in CT_TASKS:
            raise ScoreReconModuleError(
                f"a sinogram input needs a CT task (sparse-ct, limited-angle-ct, metal-ct), not {settings.task}; "
                "for MRI k-space use a measurement file")
        isNodeInput = not isinstance(inputVolume if inputVolume is not None else sinogram, np.ndarray)
        if addNodes is None:
            addNodes = measurementFile is not None or isNodeInput
        targets = {"reconstruction": outputVolume, "baseline": baselineVolume,
                   "uncertainty": uncertaintyVolume, "metrics": metricsTable}

        # read and check every input before touching the disk
        inputArray = inputMatrix = sinogramArray = sinogramSpacing = sinogramMatrix = None
        windowLevel = None
        if inputVolume is not None:
            if isinstance(inputVolume, np.ndarray):
                inputArray = _asVolumeArray(inputVolume, "input")
                inputMatrix = np.eye(4) if ijkToRAS is None else np.asarray(ijkToRAS, dtype=np.float64)
                inputName, inputNdim = "array", np.asarray(inputVolume).ndim
            else:
                inputArray = _volumeArray(inputVolume, "input volume")
                inputMatrix = _ijkToRASArray(inputVolume)
                inputName, inputNdim = inputVolume.GetName(), 3
                display = inputVolume.GetDisplayNode() if hasattr(inputVolume, "GetDisplayNode") else None
                if display is not None and hasattr(display, "GetWindow"):
                    windowLevel = (display.GetWindow(), display.GetLevel())
            _checkFinite(inputArray, "the input volume")
            self._checkImageShape(inputArray, settings)
        elif sinogram is not None:
            if isinstance(sinogram, np.ndarray):
                sinogramArray = _asVolumeArray(sinogram, "sinogram")
                sinogramSpacing = (1.0, 1.0, 1.0)
                sinogramMatrix = np.eye(4)
                inputName, inputNdim = "sinogram", np.asarray(sinogram).ndim
            else:
                sinogramArray = _volumeArray(sinogram, "sinogram volume")
                sinogramSpacing = tuple(sinogram.GetSpacing())
                sinogramMatrix = _ijkToRASArray(sinogram)
                inputName, inputNdim = sinogram.GetName(), 3
            _checkFinite(sinogramArray, "the sinogram")
        else:
            path = pathlib.Path(str(measurementFile)).expanduser()
            if not path.is_file():
                raise ScoreReconModuleError(f"measurement file {path} does not exist; check the path")
            if path.suffix.lower() != ".npz":
                raise ScoreReconModuleError(f"{path.name} is not a .npz measurement file; make one with "
                                            "'scorerecon simulate' or the ScoreRecon panel")
            inputName, inputNdim = path.stem, 3

        referenceArray = referenceMatrix = None
        if reference is not None:
            if isinstance(reference, np.ndarray):
                referenceArray = _asVolumeArray(reference, "reference")
                referenceMatrix = inputMatrix if inputMatrix is not None else np.eye(4)
            else:
                referenceArray = _volumeArray(reference, "reference volume")
                referenceMatrix = _ijkToRASArray(reference)
            _checkFinite(referenceArray, "the reference volume")
            expected = inputArray if inputArray is not None else None
            if expected is not None and referenceArray.shape != expected.shape:
                raise ScoreReconDimensionError(
                    f"the reference has shape {referenceArray.shape} (slices, rows, columns) but the input has "
                    f"{expected.shape}; choose a reference of the input's size")
            if sinogramArray is not None and referenceArray.shape[0] != sinogramArray.shape[0]:
                raise ScoreReconDimensionError(
                    f"the reference has {referenceArray.shape[0]} slice(s) but the sinogram has "
                    f"{sinogramArray.shape[0]}; choose the reference volume of these slices")

        # a whole-image prior works at its training size: resample automatically unless told otherwise;
        # a patch prior (size 0) reconstructs at the input's own grid
        if settings.size == 0 and settings.method == "score" and inputArray is not None:
            modelSize = _modelImageSize(settings.modelArgument)
            if modelSize and tuple(inputArray.shape[1:]) != (modelSize, modelSize):
                logging.info("ScoreRecon: resampling slices to %d x %d, the model's image size", modelSize, modelSize)
                settings = dataclasses.replace(settings, size=modelSize)

        tempDir = self.makeTempDir()
        try:
            files, steps, baselineMethod = self._prepareFiles(
                tempDir, settings, inputArray, inputMatrix, sinogramArray, sinogramSpacing, sinogramMatrix,
                measurementFile, referenceArray, referenceMatrix, inputName, targets)
            process = ScoreReconProcess(steps, env=self.processEnvironment(), cwd=tempDir)
            job = ScoreReconJob(settings=settings, process=process, tempDir=tempDir, inputName=inputName,
                                files=files, targets=targets, addNodes=bool(addNodes),
                                inputShape=None if inputArray is None else tuple(inputArray.shape),
                                inputIJKToRAS=inputMatrix, inputNdim=int(inputNdim), windowLevel=windowLevel,
                                baselineMethod=baselineMethod)
            process.start()
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        if process.state == "failed":
            message = process.errorMessage
            shutil.rmtree(tempDir, ignore_errors=True)
            raise ScoreReconProcessError(message)
        return job

    @staticmethod
    def _checkImageShape(array: np.ndarray, settings: ScoreReconSettings) -> None:
        rows, cols = array.shape[1:]
        if settings.size:
            if min(rows, cols) < 2:
                raise ScoreReconDimensionError(f"input slices are {rows}x{cols}; they need at least 2x2 pixels")
            return
        if settings.method == "score":
            return  # resampled to the model's size
        if rows != cols:
            raise ScoreReconDimensionError(
                f"input slices are {rows}x{cols} (rows x columns) but ScoreRecon needs square slices; set "
                "'Resample to' (size) or crop the volume (Crop Volume module)")
        if rows < MIN_IMAGE_SIZE:
            raise ScoreReconDimensionError(
                f"input slices are {rows}x{cols}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; set 'Resample to' "
                f"(size) to at least {MIN_IMAGE_SIZE}")

    def _prepareFiles(self, tempDir, settings, inputArray, inputMatrix, sinogramArray, sinogramSpacing,
                      sinogramMatrix, measurementFile, referenceArray, referenceMatrix, inputName, targets):
        """Write the inputs into ``tempDir`` and list the commands; returns (files, steps, baselineMethod)."""
        python = self.pythonExecutable()
        cli = [python, "-m", "ScoreReconLib"]
        files = {"measurement": os.path.join(tempDir, "measurement.npz"),
                 "reconstruction": os.path.join(tempDir, "reconstruction.nrrd"),
                 "metrics": os.path.join(tempDir, "metrics.json")}
        steps: list[ScoreReconStep] = []
        referencePath = None
        if inputArray is not None:
            files["input"] = os.path.join(tempDir, "input.nrrd")
            _writeVolumeFile(inputArray, inputMatrix, files["input"])
            steps.append(ScoreReconStep("Simulating measurements", cli + settings.simulateArgs(
                files["input"], files["measurement"]), weight=1.0))
            referencePath = files["input"]
        elif sinogramArray is not None:
            self.sinogramToMeasurement(sinogramArray, settings, sinogramSpacing, sinogramMatrix,
                                       files["measurement"], name=inputName)
        else:
            files["measurement"] = str(pathlib.Path(str(measurementFile)).expanduser().resolve())
        if referenceArray is not None:
            files["reference"] = os.path.join(tempDir, "reference.nrrd")
            _writeVolumeFile(referenceArray, referenceMatrix, files["reference"])
            referencePath = files["reference"]

        method = settings.method
        stdPath = None
        if method == "score" and settings.effectiveSamples() >= 2:
            files["uncertainty"] = os.path.join(tempDir, "uncertainty.nrrd")
            stdPath = files["uncertainty"]
        mainWeight = 8.0 if method == "score" else 3.0
        steps.append(ScoreReconStep(f"Reconstructing ({METHOD_LABELS[method]})", cli + settings.reconstructArgs(
            files["measurement"], files["reconstruction"], method, referencePath,
            files["metrics"] if referencePath else None, stdPath), weight=mainWeight))
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

    # ------------------------------------------------------------------------------ sinograms
    def sinogramToMeasurement(self, sinogram: np.ndarray, settings: ScoreReconSettings,
                              spacing: tuple = (1.0, 1.0, 1.0), ijkToRAS: np.ndarray | None = None,
                              path: str = "measurement.npz", name: str = "sinogram") -> str:
        """Save a measured CT sinogram as a ScoreRecon measurement file; return the path.

        ``sinogram``: (S, A, D) (slices, angles, detector bins) or (A, D). ``D`` fixes the image size
        N (the library's default detector count for N×N images, e.g. 91 for 64², 363 for 256²).
        Rows are views over [0°, 180°): sparse-ct takes A = N (the full set; the task's ``views``
        are kept) or A = the measured views at angles 180°·k/A; limited-angle-ct takes A = N or
        the first A angles of 180°·k/N inside ``arc``; metal-ct takes the full set (A = N) and finds
        the metal trace from an FBP image above ``metalThreshold`` HU. ``spacing`` (detector, angle,
        slice) in mm sets the image's pixel size and slice spacing. Values are in
        ``settings.sinogramUnits`` (see :data:`SINOGRAM_UNITS`).
        """
        import torch

        from ScoreReconLib.data import DEFAULT_CT_WINDOW, ct_normalization
        from ScoreReconLib.measurement import Measurement, save_measurement
        from ScoreReconLib.operators import build_operator
        from ScoreReconLib.operators.ct import ParallelBeamGeometry, fbp, metal_mask_from_image

        s = _asVolumeArray(sinogram, "sinogram")
        nSlices, nAngles, nDet = s.shape
        n = _imageSizeForDetectors(nDet)
        if n is None:
            raise ScoreReconDimensionError(
                f"the sinogram has {nDet} detector bins per row, which fits no square image in ScoreRecon's "
                "geometry (the smallest odd count >= sqrt(2)*N: 47 for 32x32, 91 for 64x64, 363 for 256x256); "
                "resample the detector axis")
        if settings.size and settings.size != n:
            raise ScoreReconModuleError(
                f"the sinogram's {nDet} detector bins give {n}x{n} images but size is {settings.size}; set size to 0")
        pixel = float(spacing[0]) if spacing and spacing[0] > 0 else 1.0
        norm = ct_normalization()
        if settings.sinogramUnits == "attenuation":
            if norm.low != -1000.0:
                raise ScoreReconModuleError("attenuation sinograms need the CT window to start at -1000 HU (air)")
            s = s * np.float32(1000.0 / (WATER_ATTENUATION_PER_MM * (norm.high - norm.low) * pixel))
        task = settings.task
        full = np.zeros((nSlices, 1, n, nDet), dtype=np.float32)
        metalMask = None
        if task == "sparse-ct":
            if nAngles == n:
                op = build_operator(task, n, views=int(settings.views))
                full[:, 0] = s
            else:
                idx = np.unique(np.round(np.arange(nAngles) * n / nAngles).astype(np.int64) % n)
                if idx.size != nAngles:
                    raise ScoreReconDimensionError(
                        f"the sinogram has {nAngles} views, more than the {n} angles of a {n}x{n} image's full set; "
                        "use at most N views")
                op = build_operator(task, n, views=idx)
                full[:, 0, idx] = s
        elif task == "limited-angle-ct":
            op = build_operator(task, n, arc=float(settings.arc))
            measured = np.asarray(op.views)
            if nAngles == n:
                full[:, 0] = s
            elif nAngles == measured.size and np.array_equal(measured, np.arange(nAngles)):
                full[:, 0, :nAngles] = s
            else:
                raise ScoreReconDimensionError(
                    f"the sinogram has {nAngles} angle rows but a {settings.arc:g} degree arc holds {measured.size} "
                    f"of the {n} angles (step 180/{n} degrees); set the arc to {nAngles * 180.0 / n:g} degrees or "
                    f"give all {n} rows")
        else:
            if nAngles != n:
                raise ScoreReconDimensionError(
                    f"metal-ct needs the full sinogram: {n} angle rows over 180 degrees for {nDet} detector bins, "
                    f"got {nAngles}")
            geometry = ParallelBeamGeometry(n)
            with torch.no_grad():
                image = fbp(torch.from_numpy(np.ascontiguousarray(s[:, None])), geometry)
            metalMask = metal_mask_from_image(norm.inverse(image), threshold=float(settings.metalThreshold))
            if not bool(metalMask.any()):
                raise ScoreReconModuleError(
                    f"no metal above {settings.metalThreshold:g} HU in the FBP image of the sinogram; lower the metal "
                    "threshold or choose sparse-ct / limited-angle-ct")
            op = build_operator(task, n, metal_mask=metalMask)
            full[:, 0] = s
        with torch.no_grad():
            y = op.mask_apply(torch.from_numpy(full)).numpy().astype(np.float32)
        if not np.isfinite(y).all():
            raise ScoreReconModuleError("the sinogram contains NaN or infinite values; clean it first")
        sliceSpacing = float(spacing[2]) if len(spacing) > 2 and spacing[2] > 0 else 1.0
        z0 = float(ijkToRAS[2, 3]) if ijkToRAS is not None else 0.0
        half = (n - 1) / 2.0 * pixel
        if nSlices == 1:
            geometry_ = {"spacing": [pixel, pixel], "origin": [-half, -half], "direction": [1.0, 0.0, 0.0, 1.0],
                         "ndim": 2}
        else:
            geometry_ = {"spacing": [pixel, pixel, sliceSpacing], "origin": [-half, -half, z0],
                         "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "ndim": 3}
        m = Measurement(
            task=task, y=y, operator_spec=op.spec(),
            operator_arrays={k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in op.arrays().items()},
            normalization=ct_normalization(*DEFAULT_CT_WINDOW), geometry=geometry_, seed=int(settings.seed),
            metal=({"source": "sinogram", "threshold_hu": float(settings.metalThreshold),
                    "pixels": int(metalMask.sum())} if metalMask is not None else {}),
            metal_mask=None if metalMask is None else metalMask.cpu().numpy().astype(bool),
            options={"views": int(nAngles), "units": settings.sinogramUnits},
            source={"sinogram": name, "shape": [int(v) for v in s.shape], "modality": "CT"},
        )
        save_measurement(path, m)
        return path

    # ------------------------------------------------------------------------------- finishing
    def finish(self, job: ScoreReconJob, showResults: bool = True) -> ScoreReconResult:
        """Load a finished job's results into nodes and remove its temporary folder.

        Raises the run's error if it failed (exit status 2: :class:`ScoreReconModuleError` with the
        command's message) or :class:`ScoreReconCancelledError` if it was cancelled.
        """
        process = job.process
        try:
            if process.state in ("pending", "running"):
                raise RuntimeError("the job is still running; poll its process until it is done")
            if process.state == "cancelled":
                raise ScoreReconCancelledError("the reconstruction was cancelled")
            if process.state == "failed":
                if process.returncode == 2:
                    raise ScoreReconModuleError(process.errorMessage)
                raise ScoreReconProcessError(process.errorMessage)
            return self._loadResults(job, showResults)
        finally:
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def discard(self, job: ScoreReconJob) -> None:
        """Cancel a job if it runs and remove its temporary folder."""
        job.process.cancel()
        shutil.rmtree(job.tempDir, ignore_errors=True)

    def _loadResults(self, job: ScoreReconJob, showResults: bool) -> ScoreReconResult:
        # read everything first: nothing is added to the scene unless all of it loads
        arrays, matrices = {}, {}
        for key in ("reconstruction", "baseline", "uncertainty"):
            if key in job.files:
                arrays[key], fileMatrix = _readVolumeFile(job.files[key])
                same = job.inputShape is not None and tuple(arrays[key].shape) == tuple(job.inputShape)
                matrices[key] = job.inputIJKToRAS if same and job.inputIJKToRAS is not None else fileMatrix
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
            metrics=metrics, seconds=job.process.elapsed, log=list(job.process.log))
        targets = job.targets
        if not job.addNodes and not any(v is not None for v in targets.values()):
            return result
        label = METHOD_LABELS[job.settings.method]
        result.reconstructionNode = self._storeVolume(
            targets["reconstruction"], arrays["reconstruction"], matrices["reconstruction"],
            f"{job.inputName} {label}", job.windowLevel)
        if "baseline" in arrays:
            result.baselineNode = self._storeVolume(
                targets["baseline"], arrays["baseline"], matrices["baseline"],
                f"{job.inputName} {METHOD_LABELS[job.baselineMethod]}", job.windowLevel)
        if "uncertainty" in arrays:
            result.uncertaintyNode = self._storeVolume(
                targets["uncertainty"], arrays["uncertainty"], matrices["uncertainty"], f"{job.inputName} {label} std",
                None)
        if metrics:
            result.metricsTableNode = self._storeMetrics(targets["metrics"], metrics,
                                                         f"{job.inputName} {label} metrics")
        if showResults:
            self.showResults(result.reconstructionNode, result.baselineNode)
        return result

    @staticmethod
    def _storeVolume(node, array: np.ndarray, ijkToRAS: np.ndarray, name: str, windowLevel: tuple | None):
        scene = slicer.mrmlScene
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
        node.SetIJKToRASMatrix(_vtkMatrix(ijkToRAS))
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None and windowLevel is not None and windowLevel[0] > 0:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(float(windowLevel[0]), float(windowLevel[1]))
        node.Modified()
        return node

    @staticmethod
    def _storeMetrics(node, metrics: dict, name: str):
        """Write one row per method (PSNR in dB, SSIM, seconds) into a table node."""
        scene = slicer.mrmlScene
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
        table = node.GetTable()
        table.Initialize()
        columns = [("Method", vtk.vtkStringArray()), ("PSNR (dB)", vtk.vtkDoubleArray()),
                   ("SSIM", vtk.vtkDoubleArray()), ("Seconds", vtk.vtkDoubleArray())]
        for title, column in columns:
            column.SetName(title)
        for method, record in metrics.items():
            columns[0][1].InsertNextValue(METHOD_LABELS.get(method, method))
            for (_, column), key in zip(columns[1:], ("psnr", "ssim", "seconds"), strict=True):
                value = record.get(key)
                column.InsertNextValue(float(value) if value is not None else float("nan"))
        for _, column in columns:
            table.AddColumn(column)
        table.Modified()
        node.Modified()
        return node

    @staticmethod
    def showResults(reconstructionNode, baselineNode=None) -> None:
        """Show reconstruction and baseline side by side (only inside the Slicer application)."""
        if reconstructionNode is None or not hasattr(slicer, "app"):
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        if baselineNode is None:
            slicer.util.setSliceViewerLayers(background=reconstructionNode, fit=True)
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, node in (("Red", reconstructionNode), ("Yellow", baselineNode)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            sliceWidget.mrmlSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
            sliceNode = sliceWidget.mrmlSliceNode()
            if hasattr(sliceNode, "RotateToVolumePlane"):
                sliceNode.RotateToVolumePlane(node)
            sliceWidget.sliceLogic().FitSliceToAll()


# ------------------------------------------------------------------------------------------- widget
class ScoreReconWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: settings bound to the parameter node, Apply / Cancel, progress and status."""

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def setup(self) -> None:
        import ctk
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ScoreRecon.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ScoreReconLogic()

        self.ui.measurementFilePathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.ui.measurementFilePathLineEdit.nameFilters = ["ScoreRecon measurement (*.npz)"]
        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.enabled = False

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self.logic.discard(self._job)
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIState)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIState)
            self._updateGUIState()

    def _updateGUIState(self, caller=None, event=None) -> None:
        """Show only the widgets that apply to the current input mode, task and method."""
        pn = self._parameterNode
        if pn is None:
            return
        ui = self.ui
        mode, task, method = pn.inputMode, pn.task, pn.method
        for widgets, visible in (
            ((ui.inputVolumeLabel, ui.inputVolumeSelector), mode == "image"),
            ((ui.sinogramVolumeLabel, ui.sinogramVolumeSelector, ui.sinogramUnitsLabel, ui.sinogramUnitsComboBox),
             mode == "sinogram"),
            ((ui.measurementFileLabel, ui.measurementFilePathLineEdit), mode == "measurement"),
            ((ui.referenceVolumeLabel, ui.referenceVolumeSelector), mode != "image"),
            ((ui.viewsLabel, ui.viewsSpinBox), task == "sparse-ct"),
            ((ui.arcLabel, ui.arcSliderWidget), task == "limited-angle-ct"),
            ((ui.metalThresholdLabel, ui.metalThresholdSliderWidget), task == "metal-ct"),
            ((ui.accelerationLabel, ui.accelerationSliderWidget, ui.centerFractionLabel, ui.centerFractionSliderWidget,
              ui.maskKindLabel, ui.maskKindComboBox), task == "mri"),
            ((ui.noiseLabel, ui.noiseSliderWidget), mode == "image"),
            ((ui.checkpointPathLabel, ui.checkpointPathLineEdit), pn.modelChoice == "checkpoint"),
        ):
            for w in widgets:
                w.setVisible(visible)
        score = method == "score"
        for w in (ui.modelChoiceComboBox, ui.checkpointPathLineEdit, ui.samplerComboBox, ui.useRecommendedCheckBox,
                  ui.samplesSpinBox, ui.uncertaintyVolumeSelector):
            w.enabled = score
        for w in (ui.stepsSpinBox, ui.lamSliderWidget, ui.snrSliderWidget):
            w.enabled = score and not pn.useRecommended
        running = self._job is not None
        ui.applyButton.enabled = not running
        ui.cancelButton.enabled = running
        ui.applyButton.toolTip = "Run the reconstruction" if not running else "A reconstruction is running"

    # --------------------------------------------------------------------------------- running
    def ensureDependencies(self) -> bool:
        """Install what the reconstruction process needs, after asking; False if the user declines."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        text = ("ScoreRecon needs these Python packages, which are not installed yet:\n\n  "
                + "\n  ".join(missing)
                + "\n\nDownload and install them now? This can take several minutes (PyTorch is large).")
        if not slicer.util.confirmOkCancelDisplay(text, "ScoreRecon: install dependencies"):
            return False
        with slicer.util.WaitCursor():
            if "torch" in missing:
                try:
                    import PyTorchUtils
                except ImportError:
                    raise ScoreReconModuleError(
                        "PyTorch is missing and the PyTorch extension is not installed; install 'PyTorch' from the "
                        "Extensions Manager, restart Slicer and press Apply again") from None
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                if torch is None:
                    raise ScoreReconModuleError("PyTorch was not installed; install it with the PyTorch Utils module")
            others = [r for r in missing if r != "torch"]
            if others:
                self._pipInstall(others)
        return True

    @staticmethod
    def _pipInstall(requirements: list[str]) -> None:
        """pip_ensure of slicer.packaging / slicer.pydeps when this Slicer has it, else pip_install."""
        installer = None
        for name in ("packaging", "pydeps"):
            try:
                module = __import__(f"slicer.{name}", fromlist=["pip_ensure"])
            except ImportError:
                continue
            if hasattr(module, "pip_ensure"):
                installer = module
                break
        if installer is None:
            slicer.util.pip_install(" ".join(requirements))
            return
        from packaging.requirements import Requirement

        wanted = [Requirement(r) for r in requirements]
        try:  # keep the torch that PyTorch Utils installed for this GPU
            installer.pip_ensure(wanted, requester="ScoreRecon", skip_packages=["torch"])
        except TypeError:
            installer.pip_ensure(wanted, requester="ScoreRecon")

    def onApplyButton(self) -> None:
        if self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay("ScoreRecon could not start.", waitCursor=True):
            if not self.ensureDependencies():
                self.ui.statusLabel.text = "Dependencies not installed."
                return
            self._job = self.logic.startFromParameterNode(self._parameterNode)
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self._job.process.message
            self._timer.start()
            self._updateGUIState()

    def onCancelButton(self) -> None:
        if self._job is None:
            return
        self._timer.stop()
        self.logic.discard(self._job)
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.text = "Cancelled."
        self._updateGUIState()

    def _onPoll(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        state = job.process.poll()
        self.ui.progressBar.value = int(round(100 * job.process.progress))
        self.ui.statusLabel.text = job.process.message
        if state == "running":
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        try:
            result = self.logic.finish(job)
        except ScoreReconCancelledError:
            self.ui.statusLabel.text = "Cancelled."
        except Exception as exc:  # bad input (exit status 2), a crashed process, unreadable results
            logging.exception("ScoreRecon failed")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"ScoreRecon failed:\n\n{exc}", detailedText="\n".join(job.process.log[-50:]))
        else:
            pn = self._parameterNode
            if pn is not None:
                pn.outputVolume = result.reconstructionNode
                if result.baselineNode is not None:
                    pn.baselineVolume = result.baselineNode
                if result.uncertaintyNode is not None:
                    pn.uncertaintyVolume = result.uncertaintyNode
                if result.metricsTableNode is not None:
                    pn.metricsTable = result.metricsTableNode
            self.ui.statusLabel.text = self._summary(result)
        self._updateGUIState()

    @staticmethod
    def _summary(result: ScoreReconResult) -> str:
        text = f"Done in {result.seconds:.1f} s."
        for method, record in result.metrics.items():
            if record.get("psnr") is not None:
                name = METHOD_LABELS.get(method, method)
                text += f" {name}: PSNR {record['psnr']:.2f} dB, SSIM {record['ssim']:.3f}."
        return text


# --------------------------------------------------------------------------------------------- test
def makePhantom(size: int = 64, slices: int = 3) -> np.ndarray:
    """A small asymmetric head-like CT phantom in HU, (slices, size, size); every slice differs.

    Air -1000, soft tissue ~40, an off-centre skull ring 1000, a dark ventricle and a bright marker
    whose position moves with the slice index (so slice order and in-plane flips are detectable).
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    y = (rows - (size - 1) / 2.0) / (size / 2.0)
    x = (cols - (size - 1) / 2.0) / (size / 2.0)
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    for k in range(slices):
        scale = 1.0 - 0.08 * k
        outer = (x / (0.80 * scale)) ** 2 + ((y + 0.05) / (0.92 * scale)) ** 2 <= 1.0
        inner = (x / (0.70 * scale)) ** 2 + ((y + 0.05) / (0.82 * scale)) ** 2 <= 1.0
        volume[k][outer] = 1000.0
        volume[k][inner] = 40.0
        ventricle = ((x - 0.25) / 0.12) ** 2 + ((y + 0.2) / 0.25) ** 2 <= 1.0
        volume[k][ventricle & inner] = 0.0
        marker = ((x + 0.35 - 0.2 * k) / 0.1) ** 2 + ((y - 0.4) / 0.1) ** 2 <= 1.0
        volume[k][marker & inner] = 300.0
    return volume


class ScoreReconTest(ScriptedLoadableModuleTest):
    """Self-test on a synthetic 3-slice 64² phantom: FBP always, the score prior if it is installed."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    def runTest(self) -> None:
        self.setUp()
        self.test_ScoreRecon_fbp_geometry()
        self.setUp()
        self.test_ScoreRecon_bad_input()
        self.setUp()
        self.test_ScoreRecon_score()

    def _phantomNode(self, size: int = 64):
        ijkToRAS = np.array([[-0.8, 0.0, 0.0, 25.0], [0.0, -0.8, 0.0, -12.0], [0.0, 0.0, 2.5, 40.0], [0, 0, 0, 1]])
        node = slicer.util.addVolumeFromArray(makePhantom(size, 3), ijkToRAS=ijkToRAS, name="ScoreReconPhantom")
        return node

    def test_ScoreRecon_fbp_geometry(self) -> None:
        self.delayDisplay("ScoreRecon: FBP of a simulated sparse-view scan")
        node = self._phantomNode()
        result = ScoreReconLogic().reconstruct(node, task="sparse-ct", views=64, method="fbp", showResults=False)
        out = result.reconstructionNode
        self.assertIsNotNone(out)
        self.assertEqual(out.GetName(), "ScoreReconPhantom FBP")
        self.assertTrue(np.allclose(_ijkToRASArray(out), _ijkToRASArray(node)))
        recon, truth = slicer.util.arrayFromVolume(out), slicer.util.arrayFromVolume(node)
        self.assertEqual(recon.shape, truth.shape)
        for k in range(truth.shape[0]):
            scores = [np.corrcoef(recon[k].ravel(), truth[j].ravel())[0, 1] for j in range(truth.shape[0])]
            self.assertEqual(int(np.argmax(scores)), k)
            self.assertGreater(scores[k], 0.9)
        self.assertGreater(result.metrics["fbp"]["psnr"], 20.0)
        self.assertIsNotNone(result.metricsTableNode)
        self.delayDisplay("FBP test passed")

    def test_ScoreRecon_bad_input(self) -> None:
        self.delayDisplay("ScoreRecon: bad inputs are refused")
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic = ScoreReconLogic()
        with self.assertRaises(ScoreReconModuleError):
            logic.reconstruct(None, task="sparse-ct", method="fbp")
        with self.assertRaises(ScoreReconDimensionError):
            logic.reconstruct(np.zeros((4, 32, 32, 3), np.float32), task="sparse-ct", method="fbp")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("bad input test passed")

    def test_ScoreRecon_score(self) -> None:
        logic = ScoreReconLogic()
        if not logic.defaultModelAvailable("sparse-ct"):
            self.delayDisplay("ScoreRecon: default CT model not installed, score test skipped")
            return
        self.delayDisplay("ScoreRecon: score-based reconstruction (few steps)")
        node = self._phantomNode()
        result = logic.reconstruct(node, task="sparse-ct", views=23, method="score", sampler="fast",
                                   useRecommended=False, steps=5, lam=1.0, snr=0.16, showResults=False)
        recon = result.reconstruction
        self.assertTrue(np.isfinite(recon).all())
        self.assertIsNotNone(result.baselineNode)
        self.assertIn("score", result.metrics)
        self.delayDisplay("score test passed")
