"""Settings of a training run (:class:`TrainConfig`), its outcome (:class:`TrainResult`), their checks and resuming."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScoreReconError
from ..networks import CONFIG_FILE, TRAINING_STATE_FILE, ScoreModel, read_config
from ..patches import DEFAULT_PATCH_SIZE

#: keys of TrainConfig that a resumed run takes from the command line instead of the checkpoint
RESUME_OVERRIDES = ("steps", "checkpoint_every", "sample_every", "sample_count", "sample_steps", "log_every",
                    "device", "num_workers", "resume", "show_progress")


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI ``scorerecon train`` fills this).

    ``sigma_max=None`` (VE) is measured on the data: the largest pairwise L2 distance between up to
    1000 training slices (Song & Ermon 2020, technique 1). ``warmup=None`` means
    ``min(1000, steps // 10)`` steps. ``network`` overrides :data:`ScoreReconLib.networks.DEFAULT_NETWORK`.
    """

    data: str
    output: str
    image_size: int = 128
    steps: int = 10000
    batch_size: int = 8
    lr: float = 2e-4
    warmup: int | None = None
    grad_clip: float = 1.0
    ema: float = 0.999
    modality: str | None = None
    hu_window: tuple[float, float] | None = None
    axis: str = "0"
    min_foreground: float = 0.05
    augment: bool = True
    network: dict = field(default_factory=dict)
    sde: str = "ve"
    sigma_min: float = 0.01
    sigma_max: float | None = None
    beta_min: float = 0.1
    beta_max: float = 20.0
    num_scales: int = 1000
    eps: float = 1e-5
    checkpoint_every: int = 1000
    sample_every: int = 0
    sample_count: int = 16
    sample_steps: int = 100
    log_every: int = 10
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    description: str = ""
    show_progress: bool = True
    #: start from this checkpoint's EMA weights (fine-tuning / continuing with a fresh optimizer)
    init_from: str | None = None
    #: let ``init_from`` be a checkpoint without checksums (see :func:`ScoreReconLib.networks.load_checkpoint`)
    trust_unverified: bool = False
    #: held-out folder of OTHER subjects: its denoising loss is logged at every checkpoint (split by subject)
    val_data: str | None = None
    #: "patch" (default): a position-aware patch network trained on random patches; "whole": whole images
    prior: str = "patch"
    #: patch side in pixels (patch priors)
    patch_size: int = DEFAULT_PATCH_SIZE
    #: patch priors: feed each pixel's field-of-view coordinates as two extra input channels (False: a
    #: translation-invariant patch network that sees intensities only)
    coordinates: bool = True
    #: canvas-size range of patch training relative to the stored ``image_size`` grid (pixel-size augmentation)
    scale_range: tuple[float, float] = (0.5, 2.0)
    #: intensity gain range of patch training (None: 0.95–1.05 for CT, 0.85–1.15 for MR)
    intensity_range: tuple[float, float] | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train`: last step, per-step losses of this run, where the checkpoint is."""

    steps: int
    start_step: int
    losses: list[float]
    final_loss: float
    seconds: float
    output: Path
    warnings: list[str]
    sigma_max: float | None = None
    #: the trained network (raw weights) and its EMA copy, on the training device
    model: ScoreModel | None = None
    ema_model: ScoreModel | None = None


def validate_config(cfg: TrainConfig) -> None:
    """Raise :class:`ScoreReconError` naming the first setting of ``cfg`` out of range."""
    lo, hi = (float(v) for v in cfg.scale_range)
    checks = [
        (cfg.prior in ("patch", "whole"), f"--prior {cfg.prior} must be patch or whole"),
        (cfg.prior == "patch" or cfg.coordinates, "--no-coordinates applies to --prior patch only"),
        (cfg.prior != "patch" or 4 <= cfg.patch_size <= cfg.image_size,
         f"--patch-size {cfg.patch_size} must lie in [4, --size {cfg.image_size}]"),
        (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi,
         f"scale range {cfg.scale_range} must be two positive numbers LOW <= HIGH"),
        (cfg.steps >= 1, f"--steps {cfg.steps} must be at least 1"),
        (cfg.batch_size >= 1, f"--batch-size {cfg.batch_size} must be at least 1"),
        (cfg.lr > 0, f"--lr {cfg.lr} must be positive, e.g. 2e-4"),
        (0 <= cfg.ema < 1, f"--ema {cfg.ema} must be in [0, 1), e.g. 0.999"),
        (cfg.checkpoint_every >= 0, "--checkpoint-every must be >= 0 (0: only at the end)"),
        (cfg.sample_every >= 0, "--sample-every must be >= 0 (0: never)"),
        (cfg.log_every >= 1, "log_every must be at least 1"),
        (cfg.sde.lower() in ("ve", "vp"), f"--sde {cfg.sde} must be ve or vp"),
        (cfg.sigma_max is None or cfg.sigma_max > cfg.sigma_min,
         f"--sigma-max {cfg.sigma_max} must exceed sigma_min {cfg.sigma_min}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ScoreReconError(msg)


def resume_config(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, dict]:
    """The settings a resumed run continues with (the checkpoint's, except :data:`RESUME_OVERRIDES`
    from ``cfg``) and the checkpoint's validated ``config.json``."""
    saved = read_config(out)
    if not (out / TRAINING_STATE_FILE).is_file():
        raise ScoreReconError(
            f"{out} holds no {TRAINING_STATE_FILE}, so training cannot resume from it; drop --resume "
            "and choose a new --output"
        )
    tc = dict(saved.get("training") or {})
    if not tc:
        raise ScoreReconError(f"{out / CONFIG_FILE} has no 'training' section; it cannot be resumed")
    known = {f for f in TrainConfig.__dataclass_fields__}
    merged = {k: v for k, v in tc.items() if k in known}
    for k in RESUME_OVERRIDES:
        merged[k] = getattr(cfg, k)
    merged["output"] = str(out)
    merged.setdefault("prior", "whole")  # checkpoints written before patch priors existed
    for key in ("hu_window", "scale_range", "intensity_range"):
        if merged.get(key) is not None:
            merged[key] = tuple(merged[key])
    return TrainConfig(**merged), saved
