"""The training loop: :func:`train` sets a run up (data, network, EMA and optimiser, resume, DDP), then
repeats one step (batch, loss, update), logging the loss and writing checkpoints and sample grids."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Normalization
from ..datasets import SliceDataset
from ..distributed import dist_env
from ..errors import ScoreReconError
from ..networks import CONFIG_FILE, WEIGHTS_FILE, ScoreModel, make_config, save_checkpoint
from ..sde import SDE, VESDE
from ..utils import ProgressFn, check_cancel
from .batches import device_slices, draw_batch, load_dataset, rank_shard
from .checkpoint import resume_state, run_sections, training_state
from .config import TrainConfig, TrainResult, resume_config, validate_config
from .ddp import average_over_ranks, barrier, close_distributed, gather_rng, init_distributed, wrap_model
from .initialization import build_model, choose_sde_and_network, load_init
from .logs import LOSS_LOG, VAL_LOG, append_log, append_val_log, prepare_log
from .objective import dsm_loss
from .optimization import EMA, lr_at, make_optimizer, set_lr
from .samples import SAMPLES_DIR, sample_grid
from .validation import validation_loss, validation_set


@dataclass
class _Run:
    """Everything one run of :func:`train` works with, on one rank."""

    cfg: TrainConfig
    saved_cfg: dict | None
    out: Path
    device: torch.device
    rank: int
    world: int
    modality: str
    sde: SDE
    model: ScoreModel
    train_model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    slices: torch.Tensor
    shard: torch.Tensor
    sections: tuple[dict, Normalization | dict, dict]
    val: dict | None
    start: int
    elapsed: float
    warnings: list[str]
    progress: ProgressFn | None
    losses: list[float] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)
    bar: Any = None
    t0: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seconds(self) -> float:
        """Training time so far, over all runs of this checkpoint."""
        return self.elapsed + time.perf_counter() - self.t0


def train(cfg: TrainConfig, progress: ProgressFn | None = None,
          cancel: threading.Event | None = None) -> TrainResult:
    """Train (or resume) a score prior as ``cfg`` says; writes a checkpoint folder at ``cfg.output``."""
    rank, world, local = dist_env()
    out = Path(cfg.output)
    saved_cfg: dict | None = None
    if cfg.resume:
        cfg, saved_cfg = resume_config(cfg, out)
    elif (out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists():
        raise ScoreReconError(
            f"{out} already holds a checkpoint; pass --resume to continue it or choose another --output"
        )
    validate_config(cfg)
    if cfg.warmup is None:  # fixed at the first run so a resumed run keeps the same schedule
        cfg.warmup = min(1000, cfg.steps // 10)
    device, created_group = init_distributed(world, rank, local, cfg.device)
    try:
        return _run_steps(_prepare(cfg, saved_cfg, out, device, rank, world, progress), cancel)
    finally:
        close_distributed(created_group)


# ----------------------------------------------------------------------------------------- set-up
def _prepare(cfg: TrainConfig, saved_cfg: dict | None, out: Path, device: torch.device, rank: int, world: int,
             progress: ProgressFn | None) -> _Run:
    """Data, network, EMA and optimiser (restored on resume), DDP wrapping, validation set and log files."""
    is_main = rank == 0
    dataset = load_dataset(cfg, saved_cfg, is_main)
    sde, model, ema, optimizer = _setup_network(cfg, saved_cfg, dataset, device)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
    start, elapsed = 0, 0.0
    warnings = list(dataset.warnings)
    if saved_cfg is not None:
        start, elapsed = resume_state(out, cfg, model, ema.model, optimizer, gen, rank, world, device, warnings)
    train_model = wrap_model(model, world, device)
    shard = rank_shard(len(dataset), cfg.seed, rank, world)
    slices = device_slices(dataset, device)
    sections = run_sections(cfg, dataset)
    val = validation_set(cfg, dataset, dataset.modality, device) if cfg.val_data and is_main else None
    if val is not None:
        sections[0]["data"]["validation"] = val["describe"]
    if is_main:
        _prepare_logs(out, start, val is not None)
    return _Run(cfg=cfg, saved_cfg=saved_cfg, out=out, device=device, rank=rank, world=world,
                modality=dataset.modality, sde=sde, model=model, train_model=train_model, ema=ema,
                optimizer=optimizer, gen=gen, slices=slices, shard=shard, sections=sections, val=val, start=start,
                elapsed=elapsed, warnings=warnings, progress=progress)


def _setup_network(cfg: TrainConfig, saved_cfg: dict | None, dataset: SliceDataset,
                   device: torch.device) -> tuple[SDE, ScoreModel, EMA, torch.optim.Optimizer]:
    """The SDE, the seeded (or ``--init-from``) network, its EMA and the optimiser."""
    init = load_init(cfg, dataset.modality) if saved_cfg is None else None
    sde, network = choose_sde_and_network(cfg, saved_cfg, init, dataset)
    model = build_model(cfg, sde, network, init, device)
    ema = EMA(model, cfg.ema)
    return sde, model, ema, make_optimizer(model, cfg, device)


def _prepare_logs(out: Path, start: int, validation: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prepare_log(out / LOSS_LOG, start)
    if validation:
        prepare_log(out / VAL_LOG, start, header=("step", "val_loss"))


# ------------------------------------------------------------------------------------------- loop
def _run_steps(run: _Run, cancel: threading.Event | None) -> TrainResult:
    """Train from ``run.start`` to ``cfg.steps`` (checkpointing and stopping early on ``cancel``)."""
    cfg = run.cfg
    if run.is_main and cfg.show_progress:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=cfg.steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True)
    run.t0 = time.perf_counter()
    step = run.start
    try:
        while step < cfg.steps:
            if cancel is not None and cancel.is_set():
                _flush(run, step, lr_at(cfg, max(step - 1, 0)))
                _checkpoint(run, step)
                check_cancel(cancel)
            lr = _train_step(run, step)
            step += 1
            _after_step(run, step, lr)
        _checkpoint(run, step)
    finally:
        if run.bar is not None:
            run.bar.close()
    recent = run.losses[-100:]
    final = float(np.mean(recent)) if recent else float("nan")
    return TrainResult(steps=step, start_step=run.start, losses=run.losses, final_loss=final, seconds=run.seconds(),
                       output=run.out, warnings=run.warnings,
                       sigma_max=cfg.sigma_max if isinstance(run.sde, VESDE) else None, model=run.model,
                       ema_model=run.ema.model)


def _train_step(run: _Run, step: int) -> float:
    """One optimiser step on a fresh batch, then the EMA update; returns the step's learning rate. The loss
    stays on the device in ``run.pending`` until :func:`_flush`."""
    cfg = run.cfg
    lr = lr_at(cfg, step)
    set_lr(run.optimizer, lr)
    x0, coords, t, z = draw_batch(cfg, run.slices, run.shard, run.gen, run.sde.T, run.device)
    loss = dsm_loss(run.train_model, run.sde, x0, t, z, amp=cfg.amp, coords=coords)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.ema.update(run.model, step)
    run.pending.append(loss.detach())
    return lr


def _after_step(run: _Run, step: int, lr: float) -> None:
    """Log (one host sync per log interval, not per step), checkpoint and sample as ``step`` (done) asks."""
    cfg = run.cfg
    at_checkpoint = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
    if step % cfg.log_every == 0 or step == cfg.steps or at_checkpoint:
        _flush(run, step, lr)
    if at_checkpoint and step < cfg.steps:
        _checkpoint(run, step)
    if run.is_main and cfg.sample_every > 0 and step % cfg.sample_every == 0:
        sample_grid(run.ema.model, run.sde, cfg, run.device, run.out / SAMPLES_DIR / f"step_{step:07d}.png")


def _flush(run: _Run, step: int, lr: float) -> None:
    """Move the pending per-step losses to the host (averaged over ranks), log them, check them."""
    if not run.pending:
        return
    values = torch.stack(run.pending).float()
    run.pending.clear()
    values = average_over_ranks(values, run.world)
    vals = values.cpu().tolist()
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ScoreReconError(
            f"training loss became {bad[0]} before step {step}; lower --lr (now {run.cfg.lr}) or turn off "
            "--amp; the last good checkpoint is kept"
        )
    run.losses.extend(vals)
    if run.is_main:
        append_log(run.out / LOSS_LOG, step, float(np.mean(vals)), lr, run.seconds())
        if run.bar is not None:
            run.bar.update(len(vals))
            run.bar.set_postfix(loss=f"{vals[-1]:.4f}", lr=f"{lr:.1e}", refresh=False)
        if run.progress is not None:
            run.progress(step, run.cfg.steps, f"loss {vals[-1]:.4f}")


def _checkpoint(run: _Run, step: int) -> None:
    """Write the checkpoint of ``step`` (rank 0; every rank's RNG state gathered into it) and log the
    validation loss."""
    rng = gather_rng(run.gen, run.world, run.device)
    if run.is_main:
        cfg, saved_cfg = run.cfg, run.saved_cfg
        recent = run.losses[-100:]
        final = float(np.mean(recent)) if recent else (saved_cfg or {}).get("final_loss")
        base_config, norm, prior_section = run.sections
        config = make_config(run.ema.model, cfg.image_size, run.modality, norm, steps=step,
                             final_loss=final if final is not None else float("nan"), prior=prior_section,
                             **base_config)
        if saved_cfg is not None and saved_cfg.get("recommended"):
            config["recommended"] = saved_cfg["recommended"]
        if run.val is not None:
            config["val_loss"] = validation_loss(run.ema.model, run.sde, run.val)
            append_val_log(run.out / VAL_LOG, step, config["val_loss"])
        state = training_state(step, run.seconds(), run.model, run.ema.model, run.optimizer, rng, run.world)
        save_checkpoint(run.out, run.ema.model, config, training_state=state)
    barrier(run.world)
