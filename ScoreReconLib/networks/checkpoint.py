"""Writing a checkpoint folder atomically, and loading one (or a shipped default) as a :class:`Prior`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ScoreReconError
from ..model_card import DEFAULT_PRIORS, checkpoint_folder, model_folder, with_tuned
from ..sde import sde_from_dict
from .config import read_config, read_config_json
from .files import CONFIG_FILE, TRAINING_STATE_FILE, TUNED_FILE, WEIGHTS_FILE
from .integrity import file_sha256, sign_config, verify_checkpoint
from .model import ScoreModel
from .prior import Prior


def write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors (contiguous CPU tensors) to ``path`` (not atomic by itself)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "pt", "library": "ScoreReconLib"})


def save_checkpoint(folder: str | Path, model: ScoreModel, config: dict,
                    training_state: dict | None = None) -> Path:
    """Write ``model``'s weights, ``config`` (see :func:`make_config`) and optionally the training state.

    Every file is first written to a temporary name in ``folder``; only when all are complete are
    they renamed into place (weights, training state, then config) with Ctrl-C deferred, so the
    folder always holds a consistent last good checkpoint. ``config["weights_sha256"]`` ties
    config and weights together; a mismatched pair is refused on load.
    """
    import os
    import signal
    import threading

    from ..utils import make_temp_beside, sweep_stale_temps

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(folder)  # what a killed earlier write left behind
    temps: list[tuple[Path, Path]] = []

    def _tmp(name: str) -> Path:
        tmp = make_temp_beside(folder / name)
        temps.append((tmp, folder / name))
        return tmp

    try:
        tmp_w = _tmp(WEIGHTS_FILE)
        write_weights(model.state_dict(), tmp_w)
        if training_state is not None:
            torch.save(training_state, _tmp(TRAINING_STATE_FILE))
        cfg = sign_config(dict(config, weights_sha256=file_sha256(tmp_w)))
        _tmp(CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
        main = threading.current_thread() is threading.main_thread()
        interrupted: list[int] = []
        old: dict = {}
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda signum, frame: interrupted.append(signum))
        try:
            for tmp, final in temps:
                os.replace(tmp, final)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if interrupted:  # Ctrl-C / SIGTERM arrived while renaming: the checkpoint is complete, now stop
            if interrupted[0] == signal.SIGTERM and callable(old.get(signal.SIGTERM)):
                old[signal.SIGTERM](signal.SIGTERM, None)
            raise KeyboardInterrupt
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()
    return folder


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``model`` with clear errors for missing/extra/mis-shaped tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ScoreReconError(f"checkpoint weights {path} are missing; the checkpoint folder is incomplete")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ScoreReconError(f"cannot read {path} ({exc}); the file is corrupt, restore or retrain it") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ScoreReconError(
            f"{path} does not match the network in config.json: {len(missing)} missing tensor(s) "
            f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}; the weights belong to another network"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ScoreReconError(
                f"{path}: tensor {k} has shape {tuple(v.shape)} but the network in config.json expects "
                f"{tuple(expected[k].shape)}; the weights belong to another network"
            )
    model.load_state_dict(state)


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu", trust_unverified: bool = False) -> Prior:
    """Load a checkpoint folder as a :class:`Prior` on ``device``.

    The weights and the config must match their checksums (``weights_sha256``, ``config_sha256``);
    a checkpoint without them is refused unless ``trust_unverified`` (CLI ``--trust-unverified``,
    or ``SCORERECON_TRUST_UNVERIFIED=1``)."""
    folder = checkpoint_folder(folder)
    if not folder.is_dir():
        raise ScoreReconError(
            f"model {folder} does not exist; give a checkpoint folder (model.safetensors + config.json) "
            "or default-ct / default-mri"
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ScoreReconError(f"checkpoint {folder} has no {CONFIG_FILE}; point to a folder written by "
                              "scorerecon train")
    raw = read_config_json(path)
    cfg = read_config(folder, raw)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ScoreReconError(f"checkpoint weights {weights} are missing; the checkpoint folder is incomplete")
    verify_checkpoint(folder, raw, trust_unverified)
    sde = sde_from_dict(cfg["sde"])
    model = ScoreModel(sde, cfg["network"])
    load_weights(model, weights)
    cfg.setdefault("name", folder.name)
    if (folder / TUNED_FILE).is_file():  # λ/snr chosen by `scorerecon tune`, per task and sampler
        cfg["recommended"] = with_tuned(cfg.get("recommended") or {}, folder)
    cfg["path"] = str(folder)
    return Prior(model, cfg, device)




def load_prior(name_or_path: str | Path, device: torch.device | str = "cpu", trust_unverified: bool = False,
               precision: str = "auto") -> Prior:
    """Load ``"default-ct"``/``"default-mri"`` (from ``Resources/models``) or a checkpoint folder
    (``trust_unverified``: see :func:`load_checkpoint`); ``precision`` is the network's arithmetic
    (:attr:`Prior.precision`: "auto", "fp32" or "bf16")."""
    name = str(name_or_path)
    if name in DEFAULT_PRIORS:  # shipped and signed: no trust override needed
        prior = load_checkpoint(model_folder(name), device)
        prior.config["name"] = name
    else:
        prior = load_checkpoint(model_folder(name), device, trust_unverified)
    prior.precision = precision
    return prior
