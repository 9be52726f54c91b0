"""Constants, errors and the settings of one run (options → ``scorerecon`` CLI arguments); no Qt, no numerics."""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, fields
from typing import Any

# the library's shared vocabulary (pure Python: importable in Slicer's process before torch is installed)
from ScoreReconLib.vocabulary import (  # noqa: F401  (re-exported to the module)
    ADAPT_MODES,
    CLASSICAL_METHODS,
    CT_TASKS,
    MIN_IMAGE_SIZE,
    MRI_MASKS,
    MRI_PHASES,
    TASKS,
    classical_methods_for,
)
from ScoreReconLib.vocabulary import SAMPLER_NAMES as SAMPLERS

#: reconstruction methods and the tasks they fit (as the CLI checks them); the score method first
METHODS = ("score", *CLASSICAL_METHODS)
METHODS_FOR_TASK = {task: ("score", *classical_methods_for(task)) for task in TASKS}
#: names used for output nodes
METHOD_LABELS = {"score": "ScoreRecon", "fbp": "FBP", "tv": "TV", "zero-filled": "zero-filled", "cs": "CS",
                 "sense": "SENSE", "rss": "RSS"}
DEVICES = ("auto", "cpu", "cuda")
#: where the measurements come from: simulated from an image volume, a measured sinogram volume, a
#: measurement file, or a fastMRI-format HDF5 k-space file (imported with ``scorerecon import-kspace``)
INPUT_MODES = ("image", "sinogram", "measurement", "kspace")
#: CT source geometries (``--geometry`` of simulate and of the sinogram conversion) and fan-beam detectors
CT_GEOMETRIES = ("parallel", "fan")
DETECTORS = ("curved", "flat")
MODEL_CHOICES = ("default", "checkpoint")
#: maps of a run the panel overlays on the reconstruction by one switch (``ScoreReconLogic.showOverlay``)
OVERLAYS = ("none", "std", "residual", "disagreement")
#: sinogram values: the library's units (pixel-length line integrals of the [0, 1]-normalised image),
#: or attenuation line integrals -ln(I/I0) (dimensionless, detector spacing in mm)
SINOGRAM_UNITS = ("normalized", "attenuation")
#: the one source of every numeric setting's range: the panel's parameter node (``WithinRange``), its .ui widgets
#: (tested to match) and :meth:`ScoreReconSettings.validate` all use it
RANGES: dict[str, tuple[float, float]] = {
    "kspaceAcceleration": (0.0, 64.0), "size": (0, 4096), "sourceDistance": (1.0, 5000.0),
    "detectorDistance": (1.0, 5000.0), "views": (1, 4096), "arc": (1.0, 360.0), "metalThreshold": (0.0, 30000.0),
    "acceleration": (1.0, 64.0), "centerFraction": (0.0, 0.5), "noise": (0.0, 0.5), "steps": (1, 10000),
    "lam": (0.0, 1.0), "snr": (0.0, 2.0), "samples": (1, 64), "seed": (0, 2147483647), "threads": (0, 1024),
}
#: settings whose range has a gap: ``(automatic value, smallest real value)``; values between the two are snapped
#: by the panel (:func:`snapSetting`) and refused by :meth:`ScoreReconSettings.validate`
GAPS: dict[str, tuple[float, float]] = {"size": (0, MIN_IMAGE_SIZE), "kspaceAcceleration": (0.0, 1.0)}


def snapSetting(name: str, value: float, previous: float) -> float:
    """``value`` moved out of a :data:`GAPS` gap: to the smallest real value when it rose from the automatic value
    (a spin box stepping up from "auto"), else back to the automatic value (stepping down, or typed)."""
    if name not in GAPS:
        return value
    automatic, smallest = GAPS[name]
    if automatic < value < smallest:
        return smallest if previous <= automatic else automatic
    return value


# ------------------------------------------------------------------------------------------- errors
class ScoreReconModuleError(ValueError):
    """A problem with the user's input or settings; the message names it and the fix."""


class ScoreReconDimensionError(ScoreReconModuleError):
    """An input has the wrong number of dimensions or a shape that does not fit the others."""


class ScoreReconProcessError(RuntimeError):
    """The reconstruction process failed for a reason other than bad input (crash, missing package)."""


class ScoreReconCancelledError(RuntimeError):
    """The run was cancelled."""


# ----------------------------------------------------------------------------------------- settings
@dataclass
class ScoreReconSettings:
    """The scalar settings of one run (defaults as in the panel); see :class:`ScoreReconParameterNode`.

    ``model``: "default" (the task's default prior), "default-ct", "default-mri" or a checkpoint
    folder. ``size``: resample slices to ``size``² (0 = automatic: the model's image size for the
    score method, otherwise the input's size). ``steps``/``lam``/``snr`` are used only when
    ``useRecommended`` is False (else the model's tuned values). ``keepTemporaryFiles``: keep the
    run's folder (inputs, measurement, results) for inspection instead of removing it.
    CT ``geometry`` "parallel" or "fan" (``sourceDistance`` source to rotation centre and
    ``detectorDistance`` centre to detector in mm, ``detector`` "curved" or "flat"): used when
    simulating CT and when reading a sinogram. k-space files: ``kspaceAcceleration`` 0 keeps an
    undersampled file's own sampling (a fully sampled file gets the library's default 8×), more
    undersamples a fully sampled file retrospectively (with ``centerFraction``, ``maskKind``, ``seed``);
    ``kspaceSlices`` "A:B" imports slices A..B-1 ("" = all). ``threads``: CPU threads of every
    ``scorerecon`` process of the run (0 = the CLI's default, the idle cores). ``weight``: the TV / CS
    regularisation weight, "auto" (chosen from the measurement) or a number. ``adapt``: test-time adaptation of
    the prior for the score method ("none" or "lora", ``reconstruct --adapt``). ``imagePhase``: MRI simulated
    from an image, "smooth" (a scanner-like image phase, ``simulate --phase``) or "zero" (a real image).
    """

    task: str = "sparse-ct"
    views: int = 23
    arc: float = 90.0
    metalThreshold: float = 3000.0
    acceleration: float = 8.0
    centerFraction: float = 0.08
    maskKind: str = "equispaced"
    imagePhase: str = "smooth"
    noise: float = 0.0
    size: int = 0
    sinogramUnits: str = "normalized"
    geometry: str = "parallel"
    sourceDistance: float = 595.0
    detectorDistance: float = 490.0
    detector: str = "curved"
    kspaceAcceleration: float = 0.0
    kspaceSlices: str = ""
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
    threads: int = 0
    weight: str = "auto"
    computeBaseline: bool = True
    keepTemporaryFiles: bool = False
    adapt: str = "none"

    @classmethod
    def fromOptions(cls, **options: Any) -> ScoreReconSettings:
        """Settings from keyword options; unknown names raise :class:`ScoreReconModuleError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ScoreReconModuleError(
                f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}")
        return cls(**options)

    @classmethod
    def fromParameterNode(cls, pn: Any) -> ScoreReconSettings:
        """Settings from the panel's parameter node."""
        values = {f.name: getattr(pn, f.name) for f in fields(cls) if f.name != "model"}
        if pn.modelChoice == "checkpoint":
            values["model"] = str(pn.checkpointPath) if pathIsSet(pn.checkpointPath) else ""
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
        choose("adapt", self.adapt, ADAPT_MODES)
        choose("maskKind", self.maskKind, MRI_MASKS)
        choose("imagePhase", self.imagePhase, MRI_PHASES)
        choose("sinogramUnits", self.sinogramUnits, SINOGRAM_UNITS)
        choose("geometry", self.geometry, CT_GEOMETRIES)
        choose("detector", self.detector, DETECTORS)
        if self.method not in METHODS_FOR_TASK[self.task]:
            raise ScoreReconModuleError(
                f"method {self.method} does not fit task {self.task}; use one of "
                f"{', '.join(METHODS_FOR_TASK[self.task])}")
        device = str(self.device)
        if device not in DEVICES and not device.startswith("cuda:"):
            raise ScoreReconModuleError(f"device '{device}' is unknown; choose auto, cpu, cuda or cuda:N")
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ScoreReconModuleError(f"{name} must be in [{low:g}, {high:g}], got {value}; change it in "
                                            "the settings")
        checks = [  # what a range cannot say: the arc's geometry-dependent end, the gaps, the weight's text
            (0.0 < self.arc <= self.maxArc, f"arc must be in (0, {self.maxArc:g}] degrees for {self.geometry} beam, "
                                            f"got {self.arc}"),
            (self.kspaceAcceleration == 0 or self.kspaceAcceleration >= GAPS["kspaceAcceleration"][1],
             f"kspaceAcceleration must be 0 (the file's sampling) or at least 1, got {self.kspaceAcceleration}"),
            (self.size == 0 or self.size >= MIN_IMAGE_SIZE,
             f"size must be 0 (automatic) or at least {MIN_IMAGE_SIZE} pixels, got {self.size}"),
            (self.weightValue is not None, f"weight must be auto or a positive number such as 0.0002, got "
                                           f"'{self.weight}'"),
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

    @property
    def maxArc(self) -> float:
        """Largest limited-angle arc in degrees: 180 (parallel beam) or 360 (fan beam)."""
        return 360.0 if self.geometry == "fan" else 180.0

    @property
    def weightValue(self) -> str | None:
        """The ``--weight`` value: "auto", or the number as text; None when ``weight`` is neither."""
        text = str(self.weight).strip().lower()
        if text in ("", "auto"):
            return "auto"
        try:
            value = float(text)
        except ValueError:
            return None
        return repr(value) if math.isfinite(value) and value > 0 else None

    def threadsArgs(self) -> list[str]:
        """``--threads N`` when a thread count is set (0: the CLI's load-aware default)."""
        return ["--threads", str(int(self.threads))] if int(self.threads) > 0 else []

    # ----------------------------------------------------------------------------- CLI arguments
    def geometryArgs(self) -> list[str]:
        """``--geometry`` (and, for fan beam, distances and detector) of a CT command."""
        if self.geometry != "fan":
            return ["--geometry", "parallel"]
        return ["--geometry", "fan", "--source-distance", repr(float(self.sourceDistance)),
                "--detector-distance", repr(float(self.detectorDistance)), "--detector", self.detector]

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
        if self.task in CT_TASKS:
            args += self.geometryArgs()
        else:
            args += ["--acceleration", repr(float(self.acceleration)),
                     "--center-fraction", repr(float(self.centerFraction)), "--mask", self.maskKind,
                     "--phase", self.imagePhase]
        if self.size:
            args += ["--size", str(int(self.size))]
        return args + self.threadsArgs()

    def sinogramArgs(self, inputPath: str, outputPath: str, name: str = "sinogram") -> list[str]:
        """``scorerecon import-sinogram`` arguments (after the command name): a measured sinogram → measurement
        file."""
        return ["--input", inputPath, "--output", outputPath, "--task", self.task, "--views", str(int(self.views)),
                "--arc", repr(float(self.arc)), "--metal-threshold", repr(float(self.metalThreshold)),
                "--units", self.sinogramUnits, "--size", str(int(self.size)), "--seed", str(int(self.seed)),
                "--name", name, *self.geometryArgs(), *self.threadsArgs()]

    def importKspaceArgs(self, inputPath: str, outputPath: str) -> list[str]:
        """``scorerecon import-kspace`` arguments: a fastMRI-format HDF5 file → measurement file."""
        args = ["import-kspace", "--input", inputPath, "--output", outputPath,
                "--center-fraction", repr(float(self.centerFraction)), "--mask", self.maskKind,
                "--seed", str(int(self.seed))]
        if self.kspaceAcceleration:
            args += ["--acceleration", repr(float(self.kspaceAcceleration))]
        if str(self.kspaceSlices).strip():
            args += ["--slices", str(self.kspaceSlices).strip()]
        return args + self.threadsArgs()

    def effectiveSamples(self) -> int:
        """Posterior samples to draw: the model's recommended count when ``useRecommended``, else ``samples``."""
        if self.useRecommended:
            facts = modelFacts(self.modelArgument)
            if facts is not None:
                try:
                    return facts.recommended_samples(self.task, self.sampler)
                except ValueError:  # a bad count in the model's files: the run itself reports it precisely
                    pass
        return int(self.samples)

    def reconstructArgs(self, measurementPath: str, outputPath: str, method: str,
                        referencePath: str | None = None, metricsPath: str | None = None,
                        stdPath: str | None = None, disagreementPath: str | None = None,
                        residualPath: str | None = None) -> list[str]:
        """``scorerecon reconstruct`` arguments (json progress on stdout)."""
        args = ["reconstruct", "--input", measurementPath, "--method", method, "--output", outputPath,
                "--device", str(self.device), "--seed", str(int(self.seed)), "--progress-format", "json"]
        if residualPath:
            args += ["--residual-output", residualPath]
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
            if disagreementPath:
                args += ["--disagreement-output", disagreementPath]
            if self.adapt != "none":
                args += ["--adapt", self.adapt]
        elif method in ("tv", "cs"):
            args += ["--weight", self.weightValue or "auto"]
        return args + self.threadsArgs()


def pathIsSet(path: Any) -> bool:
    """False for an empty path ("", or "." which is what ``pathlib.Path()`` gives)."""
    return path is not None and str(path) not in ("", ".")


def modelFacts(model: str) -> Any:
    """What the library reads from a prior's config.json and tuned.json (:func:`ScoreReconLib.model_card.model_facts`:
    modality, kind, image size, recommended settings per task), without torch; None if it cannot be read (the
    reconstruct command then reports the problem precisely)."""
    try:
        from ScoreReconLib.model_card import model_facts

        return model_facts(model)
    except Exception:  # missing, unreadable or invalid
        return None


def modelImageSize(model: str) -> int | None:
    """Image size a prior was trained on (0 for a patch prior, which works at any size); None if unreadable."""
    facts = modelFacts(model)
    return None if facts is None else int(facts.image_size)
