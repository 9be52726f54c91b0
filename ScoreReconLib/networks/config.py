"""A checkpoint's ``config.json``: what :func:`make_config` writes and what :func:`read_config` accepts."""

from __future__ import annotations

import math
from pathlib import Path

from .. import FORMAT_VERSION, __version__
from ..data import Normalization
from ..errors import ScoreReconError
from ..model_card import MAX_CONFIG_BYTES, plain_settings, read_config_json  # noqa: F401  (re-exported)
from ..sde import sde_from_dict
from .files import CONFIG_FILE
from .model import ScoreModel, network_config
from .prior import DEFAULT_RECOMMENDED, prior_spec

#: keys every config.json must hold
CONFIG_KEYS = ("format_version", "sde", "network", "image_size", "modality", "normalization")


def make_config(model: ScoreModel, image_size: int, modality: str, normalization: Normalization | dict,
                data: dict | None = None, steps: int = 0, final_loss: float | None = None,
                recommended: dict | None = None, **extra) -> dict:
    """The ``config.json`` content of a checkpoint."""
    modality = str(modality).upper()
    if modality not in ("CT", "MR"):
        raise ScoreReconError(f"modality must be CT or MR, got '{modality}'")
    norm = normalization.to_dict() if isinstance(normalization, Normalization) else dict(normalization)
    cfg = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "sde": model.sde.to_dict(),
        "network": dict(model.network),
        "image_size": int(image_size),
        "modality": modality,
        "normalization": norm,
        "data": dict(data or {}),
        "steps": int(steps),
        "final_loss": None if final_loss is None or not math.isfinite(final_loss) else float(final_loss),
        "recommended": dict(recommended or DEFAULT_RECOMMENDED[modality]),
    }
    cfg.update(extra)
    return cfg


#: image sizes a checkpoint may declare
MAX_IMAGE_SIZE = 16384


def read_config(folder: str | Path, raw: dict | None = None) -> dict:
    """Read and validate ``config.json`` of a checkpoint folder (or validate ``raw``, its parsed JSON).

    Every field that shapes the network is type- and range-checked before anything is allocated,
    so a corrupt or edited config gets a one-line :class:`ScoreReconError`.
    """
    import copy

    folder = Path(folder)
    path = folder / CONFIG_FILE
    if raw is None:
        if not path.is_file():
            raise ScoreReconError(
                f"checkpoint {folder} has no {CONFIG_FILE}; point to a folder written by scorerecon train"
            )
        raw = read_config_json(path)
    cfg = copy.deepcopy(raw)
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise ScoreReconError(f"{path} lacks the key(s) {missing}; this is not a ScoreRecon checkpoint config")
    if cfg["format_version"] != FORMAT_VERSION:
        raise ScoreReconError(
            f"{path} has checkpoint format version {str(cfg['format_version'])[:40]} but this ScoreReconLib "
            f"({__version__}) reads version {FORMAT_VERSION}; use a matching ScoreReconLib or retrain"
        )
    if not isinstance(cfg["modality"], str) or cfg["modality"].upper() not in ("CT", "MR"):
        raise ScoreReconError(f"{path}: modality {str(cfg['modality'])[:40]!r} must be CT or MR")
    for key in ("sde", "network"):
        if not isinstance(cfg[key], dict):
            raise ScoreReconError(f"{path}: '{key}' must be a JSON object of {key} options; restore the checkpoint")
    for key in ("recommended", "data", "training"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ScoreReconError(f"{path}: '{key}' must be a JSON object; restore the checkpoint")
    size = cfg["image_size"]
    if isinstance(size, bool) or not isinstance(size, int | float) or not float(size).is_integer() \
            or not 8 <= size <= MAX_IMAGE_SIZE:
        raise ScoreReconError(f"{path}: image_size {str(size)[:40]} must be a whole number of pixels from 8 to "
                              f"{MAX_IMAGE_SIZE}; restore the checkpoint")
    cfg["image_size"] = int(size)
    try:
        norm = Normalization.from_dict(cfg["normalization"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ScoreReconError(f"{path}: bad normalization ({exc}); re-save the checkpoint") from None
    if not (math.isfinite(norm.low) and math.isfinite(norm.high) and norm.high > norm.low):
        raise ScoreReconError(f"{path}: normalization needs finite low < high, got {cfg['normalization']}")
    rec = cfg.get("recommended")
    if rec is not None and (not plain_settings(rec)
                            or not all(isinstance(v, dict) for v in dict(rec.get("tasks") or {}).values())):
        raise ScoreReconError(f"{path}: 'recommended' must hold sampler settings (numbers or strings, per sampler "
                              "and task); restore the checkpoint")
    cfg["modality"] = cfg["modality"].upper()
    sde_from_dict(cfg["sde"])  # types and bounds (cheap: no allocation)
    network_config(cfg["network"])
    prior_spec(cfg)
    return cfg
