"""What a training checkpoint holds beyond the network: the config sections that describe the run, and the
training state (``training_state.pt``: raw weights, EMA, optimiser, RNG) written at each checkpoint and read
back for an exact resume."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Normalization, ct_normalization
from ..datasets import MR_PERCENTILE, SliceDataset
from ..errors import ScoreReconError
from ..networks import TRAINING_STATE_FILE

if TYPE_CHECKING:
    from .config import TrainConfig


def normalization(modality: str, hu_window: tuple[float, float] | None) -> Normalization | dict:
    """The intensity normalisation a checkpoint of ``modality`` data records."""
    if modality == "CT":
        return ct_normalization(*hu_window)
    return {"kind": "scale", "low": 0.0, "high": 1.0, "percentile": MR_PERCENTILE}


def source_pixel_mm(dataset: SliceDataset) -> float | None:
    """Median pixel size (mm) of the stored training slices: the field of view over the stored grid."""
    fov = [s.get("fov_mm") for s in dataset.sources if s.get("fov_mm")]
    return round(float(np.median(fov)) / dataset.size, 4) if fov else None


def run_sections(cfg: TrainConfig, dataset: SliceDataset) -> tuple[dict, Normalization | dict, dict]:
    """The parts of ``config.json`` fixed for the whole run: ``data`` and ``training`` sections, the
    normalisation and the ``prior`` section."""
    base_config = {
        "data": dict(dataset.describe(), description=cfg.description),
        "training": {k: v for k, v in asdict(cfg).items() if k != "show_progress"},
    }
    norm = normalization(dataset.modality, dataset.hu_window)
    prior_section = ({"kind": "patch", "patch_size": int(cfg.patch_size), "scale_range": list(cfg.scale_range),
                      "default_size": 128,
                      "source_pixel_mm": source_pixel_mm(dataset)} if cfg.prior == "patch" else {"kind": "whole"})
    return base_config, norm, prior_section


def cpu_state(obj: Any) -> Any:
    """``obj`` (tensors in nested dicts and lists, e.g. an optimiser state) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_state(v) for v in obj]
    return obj


def training_state(step: int, seconds: float, model: torch.nn.Module, ema_model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, rng: torch.Tensor, world: int) -> dict:
    """The content of ``training_state.pt`` (CPU tensors only)."""
    return {
        "step": torch.tensor(step, dtype=torch.int64),
        "seconds": torch.tensor(seconds, dtype=torch.float64),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in ema_model.state_dict().items()},
        "optimizer": cpu_state(optimizer.state_dict()),
        "rng": rng,
        "world_size": torch.tensor(world, dtype=torch.int64),
    }


def load_training_state(path: Path) -> dict:
    """Read and check ``training_state.pt`` (tensors only; one-line errors for unreadable or corrupt files)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO problem is one user-facing error
        why = "it holds pickled objects other than tensors, which are refused for safety" \
            if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__ else \
            f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:100]}"
        raise ScoreReconError(f"cannot read the training state {path} ({why}); it cannot be resumed: restore it "
                              "or train afresh into another --output") from None
    needed = ("step", "seconds", "model", "ema", "optimizer", "rng")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise ScoreReconError(f"{path} lacks training state entries {list(needed)}; it cannot be resumed")
    checks = (
        (torch.is_tensor(state["step"]) and state["step"].numel() == 1 and not state["step"].is_floating_point()
         and int(state["step"].item()) >= 0, "step is not a non-negative integer"),
        (torch.is_tensor(state["seconds"]) and state["seconds"].numel() == 1
         and math.isfinite(float(state["seconds"].item())) and float(state["seconds"].item()) >= 0,
         "seconds is not a finite non-negative number"),
        (isinstance(state["model"], dict) and isinstance(state["ema"], dict), "model / ema are not state dicts"),
        (isinstance(state["optimizer"], dict) and "state" in state["optimizer"]
         and "param_groups" in state["optimizer"], "optimizer is not an optimizer state"),
        (torch.is_tensor(state["rng"]) and state["rng"].ndim == 2 and state["rng"].shape[0] >= 1
         and state["rng"].dtype == torch.uint8, "rng is not a stack of generator states"),
    )
    for ok, why in checks:
        if not ok:
            raise ScoreReconError(f"the training state {path} is corrupt ({why}); it cannot be resumed: restore it "
                                  "or train afresh into another --output")
    return state


def resume_state(out: Path, cfg: TrainConfig, model: torch.nn.Module, ema_model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, gen: torch.Generator, rank: int, world: int, device: torch.device,
                 warnings: list[str]) -> tuple[int, float]:
    """Load the training state of checkpoint ``out`` into the model, EMA, optimiser and this rank's generator;
    return the step and seconds it had reached. With another number of processes than it was trained on the
    random stream restarts (a warning is added to ``warnings``)."""
    state_path = out / TRAINING_STATE_FILE
    state = load_training_state(state_path)
    try:
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        for st in optimizer.state.values():  # fused CUDA Adam wants its step counters on the parameters' device
            if torch.is_tensor(st.get("step")) and device.type == "cuda":
                st["step"] = st["step"].to(device=device, dtype=torch.float32)
        for group in optimizer.param_groups:  # the saved groups carry the old device's kernel choice
            group["fused"] = device.type == "cuda"
            group["foreach"] = None
        start = int(state["step"].item())
        elapsed = float(state["seconds"].item())
        rng = state["rng"]
        if rng.shape[0] == world:
            gen.set_state(rng[rank].clone())
        else:
            gen.manual_seed(cfg.seed * 1000 + 7919 * start + rank + 1)
            warnings.append(f"checkpoint was trained on {rng.shape[0]} process(es), now {world}: the random "
                            "stream restarts (training continues, but not bit-identically)")
    except ScoreReconError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
        raise ScoreReconError(
            f"{state_path} does not fit this checkpoint's network or is corrupt "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); restore it, or train afresh into "
            "another --output"
        ) from None
    if start >= cfg.steps:
        raise ScoreReconError(f"{out} is already at step {start} >= --steps {cfg.steps}; ask for more --steps")
    return start, elapsed
