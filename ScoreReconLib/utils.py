"""Small shared helpers: atomic file writes, seeding, devices, progress/cancel plumbing."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import CancelledError, ScoreReconError

#: progress callback: ``progress(done, total, message)``
ProgressFn = Callable[[int, int, str], None]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on error the temporary file is removed.
    ``suffix`` defaults to the target's own suffixes (writers such as SimpleITK pick the format
    from the extension).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs should be readable like any written file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def seed_everything(seed: int | None) -> torch.Generator | None:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    if seed is None:
        return None
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None → cuda if available else cpu; validate an explicit choice."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScoreReconError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`CancelledError` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError("stopped by request")


def check_finite(array: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise :class:`ScoreReconError` if ``array`` holds NaN or inf."""
    ok = torch.isfinite(array).all().item() if isinstance(array, torch.Tensor) else np.isfinite(array).all()
    if not ok:
        raise ScoreReconError(f"{what} contains NaN or infinite values; clean or mask them before reconstructing")
