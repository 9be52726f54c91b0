"""Score network on MONAI's ``DiffusionModelUNet``, the :class:`Prior` and its checkpoint format.

:class:`ScoreModel` turns the UNet into a noise-conditional score ``s(x, t) ~ grad_x log p_t(x)``:

* the UNet's sinusoidal timestep embedding receives ``c_noise = 999 t``. For the VE-SDE ``t`` is an
  affine function of ``log sigma(t)`` (``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``), so
  this is the NCSN++ ``log sigma`` conditioning rescaled to the DDPM label range; for the VP-SDE it
  is the usual DDPM step index.
* VE: the input is scaled by ``c_in = 1 / sqrt(sigma^2 + 0.25)`` (unit-variance input for ``[0, 1]``
  data, as in EDM preconditioning; ``network["input_scaling"]``) and the output is divided by
  ``sigma`` (NCSN++ output scaling), so the UNet predicts ``-z`` of ``x_t = x_0 + sigma z``.
* VP: the output is ``-net / std``, so the UNet predicts the noise ``z`` (DDPM epsilon).

A checkpoint is a folder with ``model.safetensors`` (EMA weights, no pickle) and ``config.json``
(see :data:`CONFIG_KEYS`); ``training_state.pt`` (optimizer, raw weights, RNG) sits beside them
while training and is only read by :mod:`ScoreReconLib.training`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from . import FORMAT_VERSION, __version__
from .data import Normalization
from .errors import ScoreReconError
from .patches import random_offset, tiled_score
from .sde import SDE, VESDE, VPSDE, sde_from_dict

#: files of a checkpoint folder
WEIGHTS_FILE = "model.safetensors"
#: optional sidecar written by ``scorerecon tune``: {"tasks": {task: {sampler: {"lam": ..., "snr": ...}}}}
TUNED_FILE = "tuned.json"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"

#: keys every config.json must hold
CONFIG_KEYS = ("format_version", "sde", "network", "image_size", "modality", "normalization")

#: default network shape (MONAI DiffusionModelUNet arguments plus ``input_scaling``)
DEFAULT_NETWORK: dict = {
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": None,  # None → the largest of 32, 16, 8, 4, 2, 1 dividing every channel count
    "use_flash_attention": True,
    "input_scaling": True,
    "coord_channels": 0,  # 2 for a patch prior: the pixels' (u, v) field-of-view coordinates
}

#: prior kinds: a whole-image network, or a position-aware patch network (:mod:`ScoreReconLib.patches`)
PRIOR_KINDS = ("patch", "whole")

#: sampler settings stored with a new checkpoint until tuned (official LIDC / BraTS λ and snr, 25 steps)
DEFAULT_RECOMMENDED = {
    "CT": {"sampler": "proximal", "steps": 25, "lam": 0.841, "snr": 0.246},
    "MR": {"sampler": "proximal", "steps": 25, "lam": 1.0, "snr": 0.517},
}

#: sigma_data of [0, 1] images used by the VE input scaling
SIGMA_DATA = 0.5


def network_config(overrides: dict | None = None) -> dict:
    """Complete network config: :data:`DEFAULT_NETWORK` updated with ``overrides``, validated."""
    cfg = dict(DEFAULT_NETWORK)
    unknown = set(overrides or {}) - set(cfg)
    if unknown:
        raise ScoreReconError(f"unknown network option(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides or {})
    try:
        return _checked_network(cfg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScoreReconError(f"network options hold a value of the wrong type ({' '.join(str(exc).split())[:120]}); "
                              "channels and attention_levels are lists, the rest numbers or booleans") from None


#: sane bounds of a network config (a config outside them is refused before anything is allocated)
MAX_LEVELS = 8
MAX_CHANNELS = 4096
MAX_RES_BLOCKS = 16


def _int(value, what: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ScoreReconError(f"network option {what} must be an integer, got {value!r}")
    return int(value)


def _checked_network(cfg: dict) -> dict:
    if not isinstance(cfg["channels"], list | tuple) or not isinstance(cfg["attention_levels"], list | tuple):
        raise ScoreReconError("network channels and attention_levels must be lists, e.g. [32, 64, 64] and "
                              "[false, false, true]")
    channels = [_int(c, "channels") for c in cfg["channels"]]
    attention = [bool(a) for a in cfg["attention_levels"]]
    if not channels or any(c <= 0 for c in channels):
        raise ScoreReconError(f"network channels {channels} must be positive integers, e.g. 32,64,64")
    if len(channels) > MAX_LEVELS or max(channels) > MAX_CHANNELS:
        raise ScoreReconError(f"network channels {channels[:10]} exceed the limits ({MAX_LEVELS} levels, "
                              f"{MAX_CHANNELS} channels per level); the config is corrupt")
    if len(attention) != len(channels):
        raise ScoreReconError(
            f"attention levels {attention} must have one entry per channel level ({len(channels)}), "
            f"e.g. {','.join(['0'] * (len(channels) - 1) + ['1'])}"
        )
    groups = cfg["norm_num_groups"]
    if groups is None:
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))
    groups = _int(groups, "norm_num_groups")
    if groups < 1:
        raise ScoreReconError(f"norm_num_groups must be at least 1, got {groups}")
    if any(c % groups for c in channels):
        raise ScoreReconError(f"every channel count in {channels} must be a multiple of norm_num_groups={groups}")
    heads = _int(cfg["num_head_channels"], "num_head_channels")
    if heads < 1:
        raise ScoreReconError(f"num_head_channels must be at least 1, got {heads}")
    for c, a in zip(channels, attention, strict=True):
        if a and c % min(heads, c):
            raise ScoreReconError(f"attention level with {c} channels is not a multiple of num_head_channels={heads}")
    cfg.update(channels=channels, attention_levels=attention, norm_num_groups=groups,
               num_res_blocks=_int(cfg["num_res_blocks"], "num_res_blocks"), num_head_channels=heads,
               use_flash_attention=bool(cfg["use_flash_attention"]), input_scaling=bool(cfg["input_scaling"]),
               coord_channels=_int(cfg["coord_channels"], "coord_channels"))
    if not 1 <= cfg["num_res_blocks"] <= MAX_RES_BLOCKS:
        raise ScoreReconError(f"num_res_blocks must be between 1 and {MAX_RES_BLOCKS}, got {cfg['num_res_blocks']}")
    if cfg["coord_channels"] not in (0, 2):
        raise ScoreReconError(f"coord_channels must be 0 (whole-image prior) or 2 (patch prior), got "
                              f"{cfg['coord_channels']}")
    return cfg


class ScoreModel(nn.Module):
    """Noise-conditional score network ``s_theta(x, t)`` for ``x`` (B,1,H,W) and ``t`` (B,) in (0, 1].

    With ``network["coord_channels"] = 2`` (a patch network) ``forward`` also takes ``coords``
    ``(B, 2, H, W)``, the pixels' field-of-view coordinates (see :mod:`ScoreReconLib.patches`).
    """

    def __init__(self, sde: SDE, network: dict | None = None) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.sde = sde
        self.network = network_config(network)
        cfg = self.network
        heads = [min(cfg["num_head_channels"], c) for c in cfg["channels"]]
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1 + cfg["coord_channels"], out_channels=1, channels=cfg["channels"],
            attention_levels=cfg["attention_levels"], num_res_blocks=cfg["num_res_blocks"],
            num_head_channels=heads, norm_num_groups=cfg["norm_num_groups"], with_conditioning=False,
            use_flash_attention=cfg["use_flash_attention"],
        )

    def min_size_multiple(self) -> int:
        """Image sizes must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.network["channels"]) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Score ``grad_x log p_t(x)``, same shape as ``x`` (``coords`` required for a patch network)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        std = self.sde.beta(t).reshape(-1, 1, 1, 1).to(x.dtype)
        x_in = x
        if isinstance(self.sde, VESDE) and self.network["input_scaling"]:
            x_in = x * torch.rsqrt(std**2 + SIGMA_DATA**2)
        if self.network["coord_channels"]:
            want = (x.shape[0], 2, *x.shape[2:])
            if coords is None or tuple(coords.shape) != want:
                got = None if coords is None else tuple(coords.shape)
                raise ScoreReconError(f"a patch score network needs coordinate channels (B, 2, H, W) matching x "
                                      f"{tuple(x.shape)}; got {got}")
            x_in = torch.cat([x_in, coords.to(x_in)], 1)
        out = self.unet(x_in, 999.0 * t)
        if isinstance(self.sde, VPSDE):
            return -out / std
        return out / std


def build_score_model(sde: SDE, network: dict | None = None) -> ScoreModel:
    """A fresh (untrained) :class:`ScoreModel`."""
    return ScoreModel(sde, network)


# ---------------------------------------------------------------------------------------- Prior
class Prior:
    """A trained score prior: EMA network (eval mode), its SDE, image size, modality and normalisation."""

    def __init__(self, model: ScoreModel, config: dict, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.config = config
        self.sde: SDE = model.sde
        self.image_size = int(config["image_size"])
        self.modality = str(config["modality"])
        self.normalization = Normalization.from_dict(config["normalization"])
        self.recommended = dict(config.get("recommended") or DEFAULT_RECOMMENDED.get(self.modality, {}))
        spec = prior_spec(config)
        self.kind: str = spec["kind"]
        self.patch_size: int | None = spec.get("patch_size")
        self.device = torch.device("cpu")
        self.model.eval().requires_grad_(False)
        self.to(device)

    def to(self, device: torch.device | str) -> Prior:
        """Move the network to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def working_size(self) -> int:
        """Grid on which tools without an input grid of their own (demo, evaluate, tune, sample) work:
        the training size of a whole-image prior; ``prior.default_size`` (128) for a patch prior."""
        if self.kind == "patch":
            return int(prior_spec(self.config).get("default_size", 128))
        return self.image_size

    def size_for(self, requested: int | None) -> int:
        """``requested`` if this prior can work on that grid (else a clear error), or :attr:`working_size`."""
        if requested is None:
            return self.working_size
        self.check_compatible(int(requested))
        return int(requested)

    @property
    def any_size(self) -> bool:
        """True for a patch prior: it scores images of any size at their own grid."""
        return self.kind == "patch"

    def score(self, x: torch.Tensor, t: torch.Tensor | float,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``grad_x log p_t(x)`` for ``x`` (B,1,H,W) normalised images and ``t`` (B,) or a scalar.

        A patch prior tiles ``x`` at a random grid offset drawn from ``generator`` (and fills the
        padding with noise from it); a whole-image prior ignores ``generator``.
        """
        if not isinstance(t, torch.Tensor):
            t = torch.full((x.shape[0],), float(t), device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.to(x.device, torch.float32)
        if self.kind != "patch":
            return self.model(x, t)
        p = int(self.patch_size)
        offset = random_offset(p, generator, x.device)
        return tiled_score(self.model, x, t, self.sde.beta(t), p, offset, generator)

    def check_compatible(self, image_size: int, modality: str | None = None) -> None:
        """Raise :class:`ScoreReconError` if images of ``image_size``/``modality`` do not fit this prior.

        A patch prior accepts any size of at least 8 pixels; a whole-image prior only its own."""
        name = self.config.get("name", "this prior")
        if self.any_size:
            if int(image_size) < 8:
                raise ScoreReconError(f"{name}: images must be at least 8x8 pixels, got {image_size}x{image_size}")
        elif int(image_size) != self.image_size:
            raise ScoreReconError(
                f"{name} was trained on {self.image_size}x{self.image_size} images but got "
                f"{image_size}x{image_size}; resample the input to {self.image_size} (e.g. --size "
                f"{self.image_size}) or train a prior for size {image_size}"
            )
        if modality is not None and str(modality).upper() != self.modality:
            raise ScoreReconError(
                f"{name} is a {self.modality} prior but the input is {str(modality).upper()}; "
                f"use a {str(modality).upper()} prior (e.g. default-{'ct' if str(modality).upper() == 'CT' else 'mri'})"
            )

    def __repr__(self) -> str:
        size = f"{self.patch_size}px patches" if self.any_size else f"{self.image_size}px"
        return (f"Prior({self.config.get('name', '?')}, {self.kind}, {self.modality}, {size}, {self.sde!r}, "
                f"device={self.device})")


#: largest patch a patch prior's config may declare (a larger one is a corrupt or hostile config)
MAX_PATCH_SIZE = 1024


def prior_spec(config: dict) -> dict:
    """The ``prior`` section of a checkpoint config, validated: ``{"kind": "whole"}`` or
    ``{"kind": "patch", "patch_size": P, ...}``. Configs without the section are whole-image priors."""
    spec = config.get("prior") or {"kind": "whole"}
    if not isinstance(spec, dict) or spec.get("kind") not in PRIOR_KINDS:
        raise ScoreReconError(f"config 'prior' must be an object with kind one of {PRIOR_KINDS}, got {spec!r}; "
                              "re-save the checkpoint")
    spec = dict(spec)
    net = config.get("network") or {}
    if spec["kind"] == "patch":
        try:
            spec["patch_size"] = int(spec["patch_size"])
        except (KeyError, TypeError, ValueError):
            raise ScoreReconError(f"a patch prior's config needs an integer prior.patch_size, got {spec!r}") from None
        if not 4 <= spec["patch_size"] <= MAX_PATCH_SIZE:
            raise ScoreReconError(f"prior.patch_size {spec['patch_size']} must be from 4 to {MAX_PATCH_SIZE}; the "
                                  "config is corrupt")
        levels = len(net.get("channels") or []) if isinstance(net, dict) else 0
        factor = 2 ** max(levels - 1, 0)
        if spec["patch_size"] % factor:
            near = factor * max(1, spec["patch_size"] // factor)
            raise ScoreReconError(f"prior.patch_size {spec['patch_size']} must be a multiple of {factor} (the "
                                  f"network halves it {levels - 1} times), e.g. {near}")
        if "default_size" in spec:
            try:
                spec["default_size"] = int(spec["default_size"])
            except (TypeError, ValueError):
                raise ScoreReconError(f"prior.default_size {spec['default_size']!r} must be a whole number of pixels "
                                      "such as 128; fix the config") from None
            if not 16 <= spec["default_size"] <= 4096:
                raise ScoreReconError(f"prior.default_size {spec['default_size']} must be from 16 to 4096 pixels")
        if isinstance(net, dict) and int(net.get("coord_channels", 0)) != 2:
            raise ScoreReconError("a patch prior's network must have coord_channels = 2; the config is inconsistent")
    elif isinstance(net, dict) and int(net.get("coord_channels", 0)) != 0:
        raise ScoreReconError("a whole-image prior's network must have coord_channels = 0; the config is inconsistent")
    return spec


# ----------------------------------------------------------------------------------- checkpoints
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


#: config keys that decide how the weights are used; ``config_sha256`` covers them and the weights' checksum
SIGNED_KEYS = ("format_version", "image_size", "modality", "normalization", "network", "sde", "prior",
               "weights_sha256")
#: environment variable that, set to 1, lets models without checksums load (as ``--trust-unverified``)
TRUST_ENV = "SCORERECON_TRUST_UNVERIFIED"


def config_digest(config: dict) -> str:
    """SHA-256 of the :data:`SIGNED_KEYS` of ``config`` (canonical JSON), for ``config_sha256``."""
    payload = {k: config.get(k) for k in SIGNED_KEYS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sign_config(config: dict) -> dict:
    """``config`` with ``config_sha256`` set (it must already hold ``weights_sha256``)."""
    return dict(config, config_sha256=config_digest(config))


def sign_checkpoint(folder: str | Path) -> Path:
    """Add ``weights_sha256`` and ``config_sha256`` to an existing checkpoint you trust (e.g. one written
    before checksums covered the config); rewrites ``config.json`` atomically. Returns the folder."""
    from .utils import atomic_path

    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoreReconError(f"cannot read {path} ({exc}); point to a checkpoint folder") from None
    if not isinstance(cfg, dict):
        raise ScoreReconError(f"{path} must hold a JSON object")
    cfg = sign_config(dict(cfg, weights_sha256=file_sha256(folder / WEIGHTS_FILE)))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return folder


def trust_unverified_from_env() -> bool:
    return str(os.environ.get(TRUST_ENV, "")).strip().lower() in ("1", "true", "yes")


def verify_checkpoint(folder: Path, raw: dict, trust_unverified: bool = False) -> None:
    """Refuse a checkpoint whose weights or config do not match their checksums, or that has none
    (unless ``trust_unverified`` or ``SCORERECON_TRUST_UNVERIFIED=1``)."""
    weights = folder / WEIGHTS_FILE
    have_w, have_c = isinstance(raw.get("weights_sha256"), str), isinstance(raw.get("config_sha256"), str)
    if not (have_w and have_c):
        if trust_unverified or trust_unverified_from_env():
            return
        missing = " and ".join(k for k, ok in (("weights_sha256", have_w), ("config_sha256", have_c)) if not ok)
        raise ScoreReconError(
            f"model {folder} has no {missing} in {CONFIG_FILE}, so its integrity cannot be checked; if you trust it, "
            f"pass --trust-unverified (or set {TRUST_ENV}=1, or sign it once with "
            "ScoreReconLib.networks.sign_checkpoint)"
        )
    if weights.is_file() and file_sha256(weights) != raw["weights_sha256"]:
        raise ScoreReconError(
            f"{weights} does not match the checksum in {CONFIG_FILE} (interrupted write or edited file); "
            "restore the checkpoint folder or retrain"
        )
    if config_digest(raw) != raw["config_sha256"]:
        raise ScoreReconError(
            f"{folder / CONFIG_FILE} was edited after it was written (its network, SDE, size, modality or "
            "normalisation no longer match config_sha256); restore the checkpoint folder or retrain"
        )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    from .utils import make_temp_beside, sweep_stale_temps

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


def _read_config_json(path: Path) -> dict:
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


#: a config.json larger than this is refused unread (real ones are a few kB)
MAX_CONFIG_BYTES = 4 << 20
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
        raw = _read_config_json(path)
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
    if rec is not None and (not _plain_settings(rec)
                            or not all(isinstance(v, dict) for v in dict(rec.get("tasks") or {}).values())):
        raise ScoreReconError(f"{path}: 'recommended' must hold sampler settings (numbers or strings, per sampler "
                              "and task); restore the checkpoint")
    cfg["modality"] = cfg["modality"].upper()
    sde_from_dict(cfg["sde"])  # types and bounds (cheap: no allocation)
    network_config(cfg["network"])
    prior_spec(cfg)
    return cfg


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
    folder = Path(folder)
    if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise ScoreReconError(
            f"model {folder} does not exist; give a checkpoint folder (model.safetensors + config.json) "
            "or default-ct / default-mri"
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ScoreReconError(f"checkpoint {folder} has no {CONFIG_FILE}; point to a folder written by "
                              "scorerecon train")
    raw = _read_config_json(path)
    cfg = read_config(folder, raw)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ScoreReconError(f"checkpoint weights {weights} are missing; the checkpoint folder is incomplete")
    verify_checkpoint(folder, raw, trust_unverified)
    sde = sde_from_dict(cfg["sde"])
    model = ScoreModel(sde, cfg["network"])
    load_weights(model, weights)
    cfg.setdefault("name", folder.name)
    tuned = folder / TUNED_FILE
    if tuned.is_file():  # λ/snr chosen by `scorerecon tune`, per task and sampler
        try:
            side = json.loads(tuned.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ScoreReconError(f"{tuned} is not valid JSON ({exc}); delete it or re-run scorerecon tune") from None
        if not isinstance(side, dict) or not isinstance(side.get("tasks", {}), dict) \
                or not _plain_settings(side) \
                or not all(isinstance(v, dict) for v in dict(side.get("tasks") or {}).values()):
            raise ScoreReconError(f"{tuned} is not a tune sidecar (a JSON object with 'tasks' of per-sampler "
                                  "settings: numbers or strings); delete it or re-run scorerecon tune")
        rec = dict(cfg.get("recommended") or {})
        tasks = {t: dict(v) for t, v in dict(rec.get("tasks") or {}).items()}
        for task, per in side.get("tasks", {}).items():
            tasks.setdefault(task, {}).update(per)
        cfg["recommended"] = {**rec, **{k: v for k, v in side.items() if k != "tasks"}, "tasks": tasks}
    cfg["path"] = str(folder)
    return Prior(model, cfg, device)


#: shipped default priors
DEFAULT_PRIORS = ("default-ct", "default-mri")


def _plain_settings(obj, depth: int = 0) -> bool:
    """True if ``obj`` is nested dicts / lists (≤ 8 deep) whose leaves are finite numbers, strings, booleans or
    null (what ``recommended`` and ``tuned.json`` hold: settings per sampler and task, and tuning grids)."""
    if isinstance(obj, dict):
        return depth < 8 and all(isinstance(k, str) and _plain_settings(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, list):
        return depth < 8 and all(_plain_settings(v, depth + 1) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return obj is None or isinstance(obj, str | int | bool)


def load_prior(name_or_path: str | Path, device: torch.device | str = "cpu", trust_unverified: bool = False) -> Prior:
    """Load ``"default-ct"``/``"default-mri"`` (from ``Resources/models``) or a checkpoint folder
    (``trust_unverified``: see :func:`load_checkpoint`)."""
    name = str(name_or_path)
    if name in DEFAULT_PRIORS:
        from .resources import resource_path

        prior = load_checkpoint(resource_path("models", name), device)
        prior.config["name"] = name
        return prior
    return load_checkpoint(Path(name_or_path).expanduser(), device, trust_unverified)
