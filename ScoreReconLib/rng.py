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
          dtype: torch.dtype = torch.float32, shared: bool = False) -> torch.Tensor:
    """Standard normal ``shape`` noise; with :class:`SliceGenerators` item ``b`` comes from its own stream.

    ``shared``: one draw for the whole batch (from the batch-wide stream), expanded over ``shape[0]``.
    A draw of one item from :class:`SliceGenerators` of several is also batch-wide.
    """
    shape = tuple(int(s) for s in shape)
    if shared and shape[0] > 1:
        one = randn((1, *shape[1:]), generator, device, dtype, shared=True)
        return one.expand(shape)
    if isinstance(generator, SliceGenerators):
        if shape[0] == len(generator):
            return torch.stack([torch.randn(shape[1:], generator=g, device=generator.device, dtype=dtype)
                                for g in generator.items]).to(device or generator.device)
        if shape[0] == 1 or shared:
            return torch.randn(shape, generator=generator.shared, device=generator.device,
                               dtype=dtype).to(device or generator.device)
        raise ValueError(f"noise for {shape[0]} items from {len(generator)} slice streams")
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def shared(generator: Generator) -> torch.Generator | None:
    """The generator for batch-wide draws: ``generator.shared`` or ``generator`` itself."""
    return generator.shared if isinstance(generator, SliceGenerators) else generator
