"""The torchrun environment: this process's rank, the world size and the local rank."""

from __future__ import annotations

import os

from .errors import ScoreReconError


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ScoreReconError("WORLD_SIZE/RANK/LOCAL_RANK are not integers; launch with torchrun") from None
    return rank, max(world, 1), local


__all__ = ["dist_env"]
