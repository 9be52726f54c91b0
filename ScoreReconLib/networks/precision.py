"""The arithmetic a score network runs in at reconstruction time: float32, or bfloat16 autocast.

bfloat16 halves the work of the network's convolutions on a CPU with native bf16 instructions (AVX512-BF16 or
AMX): on this project's CPU a 128² score slice takes 0.6× the seconds, with PSNR within 0.01 dB of float32 on the
validation subjects (``benchmarks/RESULTS.md``, *network-precision*). Without those instructions bf16 is emulated
and slower, and on CUDA this small network gains nothing, so ``"auto"`` means bf16 only on a CPU that has them.
The network's input scaling and output division by σ stay in float32 and its output is float32.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ..errors import ScoreReconError
from ..vocabulary import PRECISIONS

__all__ = ["PRECISIONS", "cpu_has_native_bf16", "network_autocast", "resolve_precision"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as torch reports it."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except (RuntimeError, AttributeError):  # a torch build without the query: assume not
        return False


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an error that lists them."""
    if precision not in PRECISIONS:
        raise ScoreReconError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``: "auto" is bf16 on a CPU with native bf16, else fp32."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"


def network_autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context the network's layers run in: bf16 autocast on ``device`` for a resolved "bf16", else nothing."""
    dev = torch.device(device)
    if resolve_precision(precision, dev) == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
