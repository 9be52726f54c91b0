"""The names the library, the CLI and the Slicer module share: tasks, modalities, methods, samplers, masks.

Pure Python (no torch, no numpy), so the Slicer module imports it in Slicer's own process before any
reconstruction package is installed.
"""

from __future__ import annotations

#: inverse problems (the CLI's ``--task`` values and measurement files' ``task``)
TASKS = ("sparse-ct", "limited-angle-ct", "metal-ct", "mri")
#: the CT tasks (a sinogram measurement)
CT_TASKS = ("sparse-ct", "limited-angle-ct", "metal-ct")
#: image modalities of images, measurements and priors
MODALITIES = ("CT", "MR")
#: MRI sampling-mask kinds (1-D lines: equispaced, random; 2-D points: variable-density, poisson)
MRI_MASKS = ("equispaced", "random", "variable-density", "poisson")
#: image phase of simulated MRI (``simulate --phase``): a smooth phase as a scanner records it, or none
MRI_PHASES = ("smooth", "zero")
#: smallest image side the library accepts (pixels)
MIN_IMAGE_SIZE = 16
#: classical reconstruction methods (``scorerecon reconstruct --method``; ``score`` is the score prior)
CLASSICAL_METHODS = ("fbp", "tv", "zero-filled", "cs", "sense", "rss")
#: conditional samplers of the score method (``--sampler``)
SAMPLER_NAMES = ("proximal", "song2021", "fast")
#: test-time adaptation of the prior (``--adapt``): none, or low-rank adapters fitted to the measurement
ADAPT_MODES = ("none", "lora")
#: arithmetic of the score network (``--precision``): auto (bf16 on a CPU with native bf16, else fp32), fp32, bf16
PRECISIONS = ("auto", "fp32", "bf16")


def classical_methods_for(task: str) -> tuple[str, ...]:
    """Classical methods that fit ``task`` ("mri" → zero-filled, tv, cs, sense, rss; CT tasks → fbp, tv)."""
    return ("zero-filled", "tv", "cs", "sense", "rss") if task == "mri" else ("fbp", "tv")

