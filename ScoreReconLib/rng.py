"""Random streams per slice, so a slice's reconstruction does not depend on the batch it is in.

:class:`SliceGenerators` holds one ``torch.Generator`` per batch item (seeded from the seed and the
item's slice index in the volume) and one shared generator for draws that apply to the whole batch
(the patch prior's tile offset, seeded from the seed alone). :func:`randn` draws ``(B, ...)`` noise
item by item from it, or from a plain ``torch.Generator`` as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SliceGenerators:
    """One generator per batch item (``len`` = batch size) plus ``shared`` for batch-wide draws."""

    def __init__(self, seeds: Sequence[int], shared_seed: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.items = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        self.shared = torch.Generator(device=self.device).manual_seed(int(shared_seed))

    def __len__(self) -> int:
        return len(self.items)


Generator = torch.Generator | SliceGenerators | None


def randn(shape: Sequence[int], generator: Generator, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal ``shape`` noise; with :class:`SliceGenerators` item ``b`` comes from its own stream."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, SliceGenerators):
        if shape[0] != len(generator):
            raise ValueError(f"noise for {shape[0]} items from {len(generator)} slice streams")
        return torch.stack([torch.randn(shape[1:], generator=g, device=generator.device, dtype=dtype)
                            for g in generator.items]).to(device or generator.device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def shared(generator: Generator) -> torch.Generator | None:
    """The generator for batch-wide draws: ``generator.shared`` or ``generator`` itself."""
    return generator.shared if isinstance(generator, SliceGenerators) else generator
