"""What a checkpoint folder says about its prior, read without torch: its ``config.json`` (bounded, validated JSON),
its ``tuned.json`` sidecar merged into the recommendation, and the facts a user interface needs
(:func:`model_facts`: modality, image size, kind, recommended settings per task).

:func:`ScoreReconLib.networks.load_checkpoint` reads configs and sidecars through these functions, so the Slicer
module (which asks :func:`model_facts` before any reconstruction package is installed) sees what a run will use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ScoreReconError

#: files of a checkpoint folder
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: optional sidecar written by ``scorerecon tune``: {"tasks": {task: {sampler: {"lam": ..., "snr": ...}}}}
TUNED_FILE = "tuned.json"
#: a config.json larger than this is refused unread (real ones are a few kB)
MAX_CONFIG_BYTES = 4 << 20
#: shipped default priors (folders under ``Resources/models``)
DEFAULT_PRIORS = ("default-ct", "default-mri")


def read_config_json(path: Path) -> dict:
    """The parsed ``config.json`` at ``path`` (a JSON object of bounded size), with one-line errors."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ScoreReconError(f"{path} is {size} bytes, far more than a checkpoint config; restore it or retrain")
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        msg = " ".join(str(exc).split())[:120]
        raise ScoreReconError(f"{path} is not valid JSON ({msg}); restore it or retrain the checkpoint") from None
    if not isinstance(cfg, dict):
        raise ScoreReconError(f"{path} must hold a JSON object; restore it or retrain the checkpoint")
    return cfg


def plain_settings(obj: object, depth: int = 0) -> bool:
    """True if ``obj`` is nested dicts / lists (≤ 8 deep) whose leaves are finite numbers, strings, booleans or
    null (what ``recommended`` and ``tuned.json`` hold: settings per sampler and task, and tuning grids)."""
    if isinstance(obj, dict):
        return depth < 8 and all(isinstance(k, str) and plain_settings(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, list):
        return depth < 8 and all(plain_settings(v, depth + 1) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return obj is None or isinstance(obj, str | int | bool)


def with_tuned(recommended: dict, folder: Path) -> dict:
    """``recommended`` with the folder's ``tuned.json`` (if any) merged in: its top-level values replace the config's
    and its per-task settings are added to each task's."""
    tuned = folder / TUNED_FILE
    if not tuned.is_file():
        return dict(recommended)
    try:
        side = json.loads(tuned.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoreReconError(f"{tuned} is not valid JSON ({exc}); delete it or re-run scorerecon tune") from None
    if not isinstance(side, dict) or not isinstance(side.get("tasks", {}), dict) \
            or not plain_settings(side) \
            or not all(isinstance(v, dict) for v in dict(side.get("tasks") or {}).values()):
        raise ScoreReconError(f"{tuned} is not a tune sidecar (a JSON object with 'tasks' of per-sampler "
                              "settings: numbers or strings); delete it or re-run scorerecon tune")
    rec = dict(recommended or {})
    tasks = {t: dict(v) for t, v in dict(rec.get("tasks") or {}).items()}
    for task, per in side.get("tasks", {}).items():
        tasks.setdefault(task, {}).update(per)
    return {**rec, **{k: v for k, v in side.items() if k != "tasks"}, "tasks": tasks}


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or the folder of its ``model.safetensors`` / ``config.json``."""
    folder = Path(path)
    if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
        folder = folder.parent
    return folder


def model_folder(name_or_path: str | Path) -> Path:
    """The checkpoint folder of ``default-ct`` / ``default-mri`` (shipped) or of a path (a file in it names it)."""
    name = str(name_or_path)
    if name in DEFAULT_PRIORS:
        from .resources import resource_path

        return resource_path("models", name)
    return checkpoint_folder(Path(name).expanduser())


@dataclass(frozen=True)
class ModelFacts:
    """What a user interface shows and checks before a run: the prior's modality ("CT" / "MR"), kind ("whole" /
    "patch"), training image size (0 for a patch prior, which works at any size) and its recommended sampler
    settings (``config.json`` with ``tuned.json`` merged, as a run resolves them)."""

    name: str
    modality: str
    kind: str
    image_size: int
    recommended: dict = field(default_factory=dict)

    def recommended_samples(self, task: str | None = None, method: str | None = None) -> int:
        """Posterior samples a run of ``task`` with sampler ``method`` (None: the default) averages by default."""
        from .settings import DEFAULT_METHOD, recommended_samples

        return recommended_samples(self, method or DEFAULT_METHOD, task)


def model_facts(name_or_path: str | Path) -> ModelFacts:
    """:class:`ModelFacts` of ``default-ct`` / ``default-mri`` or a checkpoint folder, from its config.json and
    tuned.json (no weights are read, no torch is imported); :class:`ScoreReconError` when it cannot be read."""
    folder = model_folder(name_or_path)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ScoreReconError(f"model {name_or_path} has no {CONFIG_FILE} in {folder}; give default-ct, default-mri "
                              "or a checkpoint folder written by scorerecon train")
    cfg = read_config_json(path)
    spec = cfg.get("prior") or {"kind": "whole"}
    kind = spec.get("kind", "whole") if isinstance(spec, dict) else "whole"
    try:
        size = 0 if kind == "patch" else int(cfg["image_size"])
        modality = str(cfg["modality"]).upper()
    except (KeyError, TypeError, ValueError):
        raise ScoreReconError(f"{path} lacks a valid image_size / modality; restore it or retrain") from None
    rec = cfg.get("recommended") or {}
    if not isinstance(rec, dict) or not plain_settings(rec):
        raise ScoreReconError(f"{path}: 'recommended' must hold sampler settings; restore it or retrain")
    return ModelFacts(str(name_or_path), modality, str(kind), size, with_tuned(rec, folder))
