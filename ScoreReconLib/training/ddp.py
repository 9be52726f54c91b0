"""DistributedDataParallel under torchrun: process group and device per rank, model wrapping, and the
few collective operations training needs (loss averaging, RNG-state gathering, barriers)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..utils import resolve_device


def init_distributed(world: int, rank: int, local: int, device_arg: str) -> tuple[torch.device, bool]:
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


def close_distributed(created: bool) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when ``world > 1``, else ``model`` itself."""
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    """``values`` averaged over the ``world`` ranks (unchanged for one process)."""
    if world > 1:
        dist.all_reduce(values)
        values = values / world
    return values


def gather_rng(g: torch.Generator, world: int, device: torch.device) -> torch.Tensor:
    """Every rank's state of ``g``, stacked ``(world, state bytes)``."""
    state = g.get_state()
    if world == 1:
        return state[None].clone()
    comm_dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    local = state.to(comm_dev)
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return torch.stack([o.cpu() for o in out])


def barrier(world: int) -> None:
    """Wait for every rank (no-op for one process)."""
    if world > 1:
        dist.barrier()
