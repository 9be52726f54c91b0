"""Train a score prior by denoising score matching, with EMA, exact resume and torchrun DDP.

Loss (Song et al. 2021, weighting ``lambda(t) = beta(t)^2``): for ``x_0`` a training slice,
``t ~ U(eps, 1)``, ``z ~ N(0, I)`` and ``x_t = alpha(t) x_0 + beta(t) z``,

    L = mean over batch and pixels of || beta(t) s_theta(x_t, t) + z ||^2

(1 for a network that outputs zero, 0 for the exact score). Adam with linear warm-up, gradient
clipping and an exponential moving average (EMA) of the weights; the EMA weights are what a
checkpoint's ``model.safetensors`` holds.

Every random draw of a step (batch indices, augmentation, ``t``, ``z``) comes from one CPU
``torch.Generator`` per rank whose state is saved in ``training_state.pt``, so ``resume=True``
continues exactly where the checkpoint left off, on any device. Under ``torchrun`` (env ``RANK``/
``WORLD_SIZE``) the model is wrapped in ``DistributedDataParallel`` (nccl on CUDA, gloo on CPU),
each rank draws from its own shard of the slices, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data import Normalization, ct_normalization
from .datasets import MR_PERCENTILE, SliceDataset, augment_batch, to_device
from .errors import ScoreReconError
from .networks import (
    CONFIG_FILE,
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    ScoreModel,
    make_config,
    network_config,
    read_config,
    save_checkpoint,
)
from .patches import DEFAULT_PATCH_SIZE, estimate_patch_sigma_max, random_offset, sample_patches, tiled_score
from .sde import SDE, VESDE, VPSDE, sde_from_dict
from .utils import ProgressFn, atomic_path, check_cancel, resolve_device

LOSS_LOG = "loss_log.csv"
#: validation loss per checkpoint (``--val-data``): ``step, val_loss``
VAL_LOG = "val_log.csv"
#: fixed validation examples (patches or slices) scored at every checkpoint
VAL_COUNT = 256
SAMPLES_DIR = "samples"

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


# ------------------------------------------------------------------------------------ helpers
def estimate_sigma_max(slices: torch.Tensor, max_items: int = 1000, seed: int = 0) -> float:
    """Largest pairwise L2 distance between (up to ``max_items``) slices ``(N, 1, H, W)``.

    Song & Ermon (2020) advise ``sigma_max`` about this large so the noisiest level covers the
    whole data set. Falls back to ``0.4 * H`` (the official 128 at 320 px) with fewer than 2 slices.
    """
    n = slices.shape[0]
    if n < 2:
        return round(0.4 * slices.shape[-1], 1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:max_items]
    flat = slices[idx].float().flatten(1)
    d = torch.cdist(flat, flat).max().item()
    return round(max(d, 1.0), 1)


def make_sde(cfg: TrainConfig, sigma_max: float | None) -> SDE:
    """The SDE a config asks for."""
    kind = cfg.sde.lower()
    if kind == "ve":
        return VESDE(cfg.sigma_min, float(sigma_max), cfg.num_scales)
    if kind == "vp":
        return VPSDE(cfg.beta_min, cfg.beta_max, cfg.num_scales)
    raise ScoreReconError(f"unknown SDE '{cfg.sde}'; use ve or vp")


def dsm_loss(model: torch.nn.Module, sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
             amp: bool = False, coords: torch.Tensor | None = None) -> torch.Tensor:
    """Denoising score-matching loss ``mean ||beta(t) s(x_t, t) + z||^2`` for ``x0``, ``z`` (B,1,H,W), ``t`` (B,).

    ``coords`` (B,2,H,W): coordinate channels of a patch network (None for a whole-image network)."""
    mean, std = sde.marginal_prob(x0, t)
    std_b = std.reshape(-1, 1, 1, 1)
    xt = mean + std_b * z
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=amp):
        score = model(xt, t) if coords is None else model(xt, t, coords)
    return ((score.float() * std_b + z) ** 2).mean()


@torch.no_grad()
def em_sample(score_fn, sde: SDE, shape: tuple[int, ...], steps: int = 100, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", eps: float = 1e-3, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> torch.Tensor:
    """Unconditional samples by Euler–Maruyama on the reverse SDE plus a final Tweedie denoising step.

    ``score_fn(x, t)`` with ``x`` ``(B, C, H, W)`` and ``t`` ``(B,)``; noise is drawn on the CPU from
    ``generator``. Returns ``(B, C, H, W)`` on ``device`` (normalised images, not clipped).
    """
    device = torch.device(device)
    rsde = sde.reverse(score_fn)
    x = sde.prior_sampling(shape, generator=generator).to(device)
    ts = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        check_cancel(cancel)
        t = torch.full((shape[0],), float(ts[i]), device=device)
        dt = float(ts[i + 1] - ts[i])  # negative
        drift, diffusion = rsde.sde(x, t)
        z = torch.randn(shape, generator=generator).to(device)
        x = x + drift * dt + diffusion.reshape(-1, 1, 1, 1) * math.sqrt(-dt) * z
        if progress is not None:
            progress(i + 1, steps, "sampling")
    t = torch.full((shape[0],), eps, device=device)
    alpha, beta = sde.alpha(t).reshape(-1, 1, 1, 1), sde.beta(t).reshape(-1, 1, 1, 1)
    return (x + beta**2 * score_fn(x, t)) / alpha  # Tweedie: E[x_0 | x_eps]


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Write images ``(B, 1, H, W)`` in ``[0, 1]`` (clipped) as one 8-bit grayscale PNG grid, atomically."""
    from PIL import Image as PILImage

    imgs = images.detach().float().cpu().clamp(0, 1)
    b, _, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding), np.uint8)
    for k in range(b):
        r, c = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = np.round(imgs[k, 0].numpy() * 255).astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        PILImage.fromarray(grid, mode="L").save(tmp, format="PNG")
    return path


class EMA:
    """Exponential moving average of a model's parameters (buffers copied).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates so short runs
    are not dominated by the initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ScoreReconError(f"EMA decay {decay} must be in [0, 1), e.g. 0.999")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # one fused call instead of one per tensor
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _init_distributed(world: int, rank: int, local: int, device_arg: str) -> tuple[torch.device, bool]:
    """Initialise the process group when launched by torchrun; return this rank's device and whether
    this call created the group (and so must destroy it)."""
    device = resolve_device(device_arg)
    created = False
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank,
                                    world_size=world)
            created = True
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device, created


def _lr_at(cfg: TrainConfig, step: int) -> float:
    warmup = int(cfg.warmup or 0)
    return cfg.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.lr


def _gather_rng(g: torch.Generator, world: int, device: torch.device) -> torch.Tensor:
    state = g.get_state()
    if world == 1:
        return state[None].clone()
    comm_dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    local = state.to(comm_dev)
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return torch.stack([o.cpu() for o in out])


def _normalization(modality: str, hu_window) -> Normalization | dict:
    if modality == "CT":
        return ct_normalization(*hu_window)
    return {"kind": "scale", "low": 0.0, "high": 1.0, "percentile": MR_PERCENTILE}


def _resume_config(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, dict]:
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


# --------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, progress: ProgressFn | None = None,
          cancel: threading.Event | None = None) -> TrainResult:
    """Train (or resume) a score prior as ``cfg`` says; writes a checkpoint folder at ``cfg.output``."""
    rank, world, local = _dist_info()
    out = Path(cfg.output)
    saved_cfg: dict | None = None
    if cfg.resume:
        cfg, saved_cfg = _resume_config(cfg, out)
    elif (out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists():
        raise ScoreReconError(
            f"{out} already holds a checkpoint; pass --resume to continue it or choose another --output"
        )
    _validate(cfg)
    if cfg.warmup is None:  # fixed at the first run so a resumed run keeps the same schedule
        cfg.warmup = min(1000, cfg.steps // 10)
    device, created_group = _init_distributed(world, rank, local, cfg.device)
    try:
        return _train(cfg, saved_cfg, out, device, rank, world, progress, cancel)
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, saved_cfg: dict | None, out: Path, device: torch.device, rank: int, world: int,
           progress: ProgressFn | None, cancel: threading.Event | None) -> TrainResult:
    is_main = rank == 0

    dataset = SliceDataset(cfg.data, cfg.image_size, cfg.modality, cfg.hu_window, cfg.axis, cfg.min_foreground,
                           cfg.num_workers)
    modality = dataset.modality
    cfg.modality = modality  # record what was guessed, so a resumed run reads the data the same way
    is_patch = cfg.prior == "patch"
    if is_patch and cfg.intensity_range is None:
        cfg.intensity_range = (0.95, 1.05) if modality == "CT" else (0.85, 1.15)
    if saved_cfg is not None and modality != saved_cfg["modality"]:
        raise ScoreReconError(f"the data are {modality} but the checkpoint is {saved_cfg['modality']}; pass "
                              f"--modality {saved_cfg['modality']}")
    if is_main and cfg.show_progress:
        for w in dataset.warnings:
            print(f"warning: {w}", file=sys.stderr)

    init = None
    if cfg.init_from and saved_cfg is None:
        from .networks import load_checkpoint

        init = load_checkpoint(cfg.init_from, "cpu", trust_unverified=cfg.trust_unverified)
        if init.kind == "patch" and not is_patch:
            raise ScoreReconError(f"--init-from {cfg.init_from} is a patch prior but this run trains a whole-image "
                                  "prior; pass --prior patch or start from scratch")
        if not is_patch:
            init.check_compatible(cfg.image_size, modality)
        elif modality != init.modality:
            raise ScoreReconError(f"--init-from {cfg.init_from} is a {init.modality} prior but the data are {modality}")

    if saved_cfg is not None:
        sde = sde_from_dict(saved_cfg["sde"])
        network = saved_cfg["network"]
    elif init is not None and cfg.sigma_max is None:  # keep the starting network's noise scale and shape
        sde = init.sde
        network = network_config({**init.model.network, "coord_channels": 2 if is_patch else 0})
    else:
        sigma_max = cfg.sigma_max
        if cfg.sde.lower() == "ve" and sigma_max is None:
            sigma_max = (estimate_patch_sigma_max(dataset.slices, cfg.patch_size, seed=cfg.seed) if is_patch
                         else estimate_sigma_max(dataset.slices, seed=cfg.seed))
        sde = make_sde(cfg, sigma_max)
        base = dict(init.model.network) if init is not None else dict(cfg.network)
        network = network_config({**base, "coord_channels": 2 if is_patch else 0})
    if isinstance(sde, VESDE):
        cfg.sigma_max = sde.sigma_max

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    model = ScoreModel(sde, network).to(device)
    if is_patch and cfg.patch_size % model.min_size_multiple():
        raise ScoreReconError(f"--patch-size {cfg.patch_size} must be a multiple of {model.min_size_multiple()} "
                              f"for a {len(model.network['channels'])}-level network")
    if not is_patch and cfg.image_size % model.min_size_multiple():
        raise ScoreReconError(f"--size {cfg.image_size} must be a multiple of {model.min_size_multiple()} for a "
                              f"{len(model.network['channels'])}-level network")
    if init is not None:
        try:
            model.load_state_dict(transplant_state(init.model.state_dict(), model.state_dict()))
        except RuntimeError as exc:
            raise ScoreReconError(f"--init-from {cfg.init_from} has another network shape than this run "
                                  f"({str(exc).splitlines()[0][:120]}); use the same --channels/--res-blocks") from None
    ema = EMA(model, cfg.ema)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                 fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
    start, elapsed = 0, 0.0
    warnings = list(dataset.warnings)

    if saved_cfg is not None:
        state_path = out / TRAINING_STATE_FILE
        state = _load_training_state(state_path)
        try:
            model.load_state_dict(state["model"])
            ema.model.load_state_dict(state["ema"])
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

    train_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed))
    shard = perm[rank::world] if len(dataset) >= world else perm
    slices = dataset.slices  # CPU, float32/float16
    if device.type == "cuda" and slices.numel() * slices.element_size() < 2 * 1024**3:
        slices = slices.to(device)

    base_config = {
        "data": dict(dataset.describe(), description=cfg.description),
        "training": {k: v for k, v in asdict(cfg).items() if k != "show_progress"},
    }
    norm = _normalization(modality, dataset.hu_window)
    prior_section = ({"kind": "patch", "patch_size": int(cfg.patch_size), "scale_range": list(cfg.scale_range),
                      "default_size": 128,
                      "source_pixel_mm": _source_pixel_mm(dataset)} if is_patch else {"kind": "whole"})
    log_path = out / LOSS_LOG
    val = _validation_set(cfg, dataset, modality, device) if cfg.val_data and is_main else None
    if val is not None:
        base_config["data"]["validation"] = val["describe"]
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        _prepare_log(log_path, start)
        if val is not None:
            _prepare_log(out / VAL_LOG, start, header=("step", "val_loss"))

    losses: list[float] = []
    bar = None
    if is_main and cfg.show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start

    def _seconds() -> float:
        return elapsed + time.perf_counter() - t0

    def _checkpoint(step_now: int) -> None:
        rng = _gather_rng(gen, world, device)
        if is_main:
            recent = losses[-100:]
            final = float(np.mean(recent)) if recent else (saved_cfg or {}).get("final_loss")
            config = make_config(ema.model, cfg.image_size, modality, norm, steps=step_now,
                                 final_loss=final if final is not None else float("nan"), prior=prior_section,
                                 **base_config)
            if saved_cfg is not None and saved_cfg.get("recommended"):
                config["recommended"] = saved_cfg["recommended"]
            if val is not None:
                config["val_loss"] = _validation_loss(ema.model, sde, val)
                with open(out / VAL_LOG, "a", newline="") as fh:
                    csv.writer(fh).writerow([step_now, f"{config['val_loss']:.6f}"])
            state = {
                "step": torch.tensor(step_now, dtype=torch.int64),
                "seconds": torch.tensor(_seconds(), dtype=torch.float64),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema": {k: v.detach().cpu() for k, v in ema.model.state_dict().items()},
                "optimizer": _cpu_state(optimizer.state_dict()),
                "rng": rng,
                "world_size": torch.tensor(world, dtype=torch.int64),
            }
            save_checkpoint(out, ema.model, config, training_state=state)
        if world > 1:
            dist.barrier()

    pending: list[torch.Tensor] = []

    def _flush(step_now: int, lr: float) -> None:
        """Move the pending per-step losses to the host (averaged over ranks), log them, check them."""
        if not pending:
            return
        values = torch.stack(pending).float()
        pending.clear()
        if world > 1:
            dist.all_reduce(values)
            values = values / world
        vals = values.cpu().tolist()
        bad = [v for v in vals if not math.isfinite(v)]
        if bad:
            raise ScoreReconError(
                f"training loss became {bad[0]} before step {step_now}; lower --lr (now {cfg.lr}) or turn off "
                "--amp; the last good checkpoint is kept"
            )
        losses.extend(vals)
        if is_main:
            _append_log(log_path, step_now, float(np.mean(vals)), lr, _seconds())
            if bar is not None:
                bar.update(len(vals))
                bar.set_postfix(loss=f"{vals[-1]:.4f}", lr=f"{lr:.1e}", refresh=False)
            if progress is not None:
                progress(step_now, cfg.steps, f"loss {vals[-1]:.4f}")

    try:
        while step < cfg.steps:
            if cancel is not None and cancel.is_set():
                _flush(step, _lr_at(cfg, max(step - 1, 0)))
                _checkpoint(step)
                check_cancel(cancel)
            lr = _lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            b = cfg.batch_size
            idx = shard[torch.randint(len(shard), (b,), generator=gen)]
            coords = None
            if is_patch:
                aug = cfg.augment
                x0, coords = sample_patches(slices, b, cfg.patch_size, gen, index=idx,
                                            scale_range=tuple(cfg.scale_range) if aug else (1.0, 1.0),
                                            max_rotate_deg=10.0 if aug else 0.0, flip=aug,
                                            intensity=tuple(cfg.intensity_range) if aug else (1.0, 1.0))
                coords = to_device(coords, device)
            else:
                x0 = slices[to_device(idx, slices.device)].float()
                if cfg.augment:
                    x0 = augment_batch(x0, gen)
            t = to_device(torch.rand(b, generator=gen) * (sde.T - cfg.eps) + cfg.eps, device)
            z = to_device(torch.randn(x0.shape, generator=gen), device)
            x0 = to_device(x0, device)
            loss = dsm_loss(train_model, sde, x0, t, z, amp=cfg.amp, coords=coords)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update(model, step)
            step += 1
            pending.append(loss.detach())
            if step % cfg.log_every == 0 or step == cfg.steps or (
                    cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
                _flush(step, lr)  # one host sync per log interval, not per step
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _checkpoint(step)
            if is_main and cfg.sample_every > 0 and step % cfg.sample_every == 0:
                _sample_grid(ema.model, sde, cfg, device, out / SAMPLES_DIR / f"step_{step:07d}.png")
        _checkpoint(step)
    finally:
        if bar is not None:
            bar.close()
    recent = losses[-100:]
    final = float(np.mean(recent)) if recent else float("nan")
    return TrainResult(steps=step, start_step=start, losses=losses, final_loss=final, seconds=_seconds(),
                       output=out, warnings=warnings, sigma_max=cfg.sigma_max if isinstance(sde, VESDE) else None,
                       model=model, ema_model=ema.model)


def transplant_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` weights shaped for ``target``: a whole-image network's first convolution gets zero
    weights for the patch network's two coordinate channels, so the patch network starts as the
    whole-image denoiser applied to each patch; every other tensor is copied as it is."""
    out = dict(source)
    for k, v in source.items():
        want = target.get(k)
        if want is not None and v.ndim == 4 and want.ndim == 4 and v.shape[1] < want.shape[1] \
                and v.shape[0] == want.shape[0] and v.shape[2:] == want.shape[2:]:
            w = torch.zeros_like(want)
            w[:, : v.shape[1]] = v
            out[k] = w
    return out


def _validation_set(cfg: TrainConfig, train_data: SliceDataset, modality: str, device: torch.device) -> dict:
    """Fixed validation examples from ``cfg.val_data`` (other subjects than the training data):
    ``VAL_COUNT`` patches (patch prior, at the training scale range) or slices, with fixed ``t`` and ``z``."""
    val = SliceDataset(cfg.val_data, cfg.image_size, modality, cfg.hu_window, cfg.axis, cfg.min_foreground,
                       cfg.num_workers)
    train_paths = {Path(s["path"]).resolve() for s in train_data.sources}
    shared = [s["path"] for s in val.sources if Path(s["path"]).resolve() in train_paths]
    if shared:
        raise ScoreReconError(f"--val-data shares {shared[0]} with --data; validation must hold other subjects "
                              "(split by subject, never by slice)")
    g = torch.Generator().manual_seed(cfg.seed + 424242)
    if cfg.prior == "patch":
        x0, coords = sample_patches(val.slices, VAL_COUNT, cfg.patch_size, g, scale_range=tuple(cfg.scale_range),
                                    max_rotate_deg=0.0, flip=False)
    else:
        x0 = val.slices[torch.randint(len(val), (VAL_COUNT,), generator=g)].float()
        coords = None
    n = x0.shape[0]
    t = (torch.arange(n, dtype=torch.float32) + 0.5) / n * (1.0 - cfg.eps) + cfg.eps  # stratified over (eps, 1)
    z = torch.randn(x0.shape, generator=g)
    return {"x0": x0.to(device), "coords": None if coords is None else coords.to(device), "t": t.to(device),
            "z": z.to(device), "describe": {**val.describe(), "count": n}}


@torch.no_grad()
def _validation_loss(model: ScoreModel, sde: SDE, val: dict, chunk: int = 64) -> float:
    """Mean denoising score-matching loss of ``model`` on the fixed validation examples."""
    total, n = 0.0, val["x0"].shape[0]
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        coords = None if val["coords"] is None else val["coords"][sl]
        part = dsm_loss(model, sde, val["x0"][sl], val["t"][sl], val["z"][sl], coords=coords)
        total += float(part) * val["x0"][sl].shape[0]
    return total / n


def _source_pixel_mm(dataset: SliceDataset) -> float | None:
    """Median pixel size (mm) of the stored training slices: the field of view over the stored grid."""
    fov = [s.get("fov_mm") for s in dataset.sources if s.get("fov_mm")]
    return round(float(np.median(fov)) / dataset.size, 4) if fov else None


def _validate(cfg: TrainConfig) -> None:
    lo, hi = (float(v) for v in cfg.scale_range)
    checks = [
        (cfg.prior in ("patch", "whole"), f"--prior {cfg.prior} must be patch or whole"),
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


def _cpu_state(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_state(v) for v in obj]
    return obj


def _load_training_state(path: Path) -> dict:
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


def _prepare_log(path: Path, start: int, header: tuple[str, ...] = ("step", "loss", "lr", "seconds")) -> None:
    """Create a log CSV, or on resume drop rows past ``start`` (written after the last checkpoint)."""
    rows: list[list[str]] = []
    if start > 0 and path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh)][1:]
        rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= start]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        w.writerows(rows)


def _append_log(path: Path, step: int, loss: float, lr: float, seconds: float) -> None:
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow([step, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.2f}"])


def _sample_grid(model: ScoreModel, sde: SDE, cfg: TrainConfig, device: torch.device, path: Path) -> None:
    """A grid of ``cfg.sample_count`` EMA-model samples (fixed seed, own generator) at ``path``."""
    g = torch.Generator().manual_seed(1234)
    n = max(1, cfg.sample_count)
    score_fn = model
    if cfg.prior == "patch":
        gt = torch.Generator(device=device).manual_seed(4321)
        p = int(cfg.patch_size)

        def score_fn(x, t):
            return tiled_score(model, x, t, sde.beta(t), p, random_offset(p, gt, device), gt)
    x = em_sample(score_fn, sde, (n, 1, cfg.image_size, cfg.image_size), steps=max(2, cfg.sample_steps),
                  generator=g, device=device)
    save_image_grid(x, path)


__all__ = ["TrainConfig", "TrainResult", "train", "dsm_loss", "em_sample", "save_image_grid", "estimate_sigma_max",
           "make_sde", "EMA"]
