"""Small shared helpers: atomic file writes, seeding, devices, progress/cancel plumbing."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import CancelledError, ScoreReconError

#: progress callback: ``progress(done, total, message)``
ProgressFn = Callable[[int, int, str], None]


#: temporary files written beside a target are named ``.NAME.<host>-<pid>-<random>.tmp<suffix>``
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]{1,32})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(\..*)?$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its files
    return True


def temp_name_prefix(name: str) -> str:
    """Prefix of this process's temporary files for a target called ``name`` (see :func:`sweep_stale_temps`)."""
    return f".{name}.{_host_tag()}-{os.getpid()}-"


def sweep_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temporary files of ScoreRecon's own naming in ``folder`` left by dead processes of this host.

    A write killed by SIGKILL (or a power cut) cannot clean up after itself; the next write of the
    same target (``name``; every target when None) removes what it left. Files of live processes,
    of other hosts and of any other naming are never touched. Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = _host_tag()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or (name is not None and m.group("name") != name) or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed


def make_temp_beside(path: str | os.PathLike, suffix: str = "") -> Path:
    """Create an empty temporary file beside ``path`` (mode 0644) named for :func:`sweep_stale_temps`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs should be readable like any written file
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on error (or Ctrl-C / SIGTERM, which the CLI
    turns into ``KeyboardInterrupt``) the temporary file is removed, and temporaries of ``path``
    left by killed processes are swept first. ``suffix`` defaults to the target's own suffixes
    (writers such as SimpleITK pick the format from the extension).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    sweep_stale_temps(path.parent, path.name)
    tmp_path = make_temp_beside(path, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_folder(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written (a probe file is created
    in the nearest existing folder and deleted; nothing else is created)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ScoreReconError(f"{flag} {path} is a file, but a folder is needed here; choose another path")
    _probe_write(_nearest_folder(path, flag), path, flag)
    sweep_stale_temps(path)  # what a killed earlier run left in the folder
    return path


def _nearest_folder(start: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``start`` (itself included); refused if it is a file."""
    probe = start
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ScoreReconError(f"{flag} {start}: {probe} is a file, not a folder; choose another path")
    return probe


def _probe_write(folder: Path, path: Path, flag: str) -> None:
    """Create and delete a temporary file in ``folder`` (``os.access`` is no proof: root, read-only mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_name_prefix("write-probe"), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ScoreReconError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc}); "
                              "choose another path") from None


def check_output_path(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Refuse, before any work, an output path that cannot be written (one-line :class:`ScoreReconError`).

    Checks that the nearest existing ancestor is a writable folder (the missing folders between it
    and the file would be created), that no file is in the way of a folder, and that ``path`` is
    not a folder. Leaves nothing behind (a probe file is created and deleted).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ScoreReconError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    _probe_write(_nearest_folder(parent, flag), path, flag)
    sweep_stale_temps(parent, path.name)  # what a killed earlier write of this file left behind
    if path.exists() and not os.access(path, os.W_OK) and not os.access(parent, os.W_OK):
        raise ScoreReconError(f"{flag} {path} exists and cannot be replaced; choose another path")
    return path


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
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ScoreReconError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ScoreReconError(f"--device {device} is not supported (ScoreRecon runs on cpu and cuda); use auto, "
                              "cpu, cuda or cuda:N")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ScoreReconError(f"--device {device}: the CPU has no numbered devices; use --device cpu")
    if dev.type == "cuda" and torch.cuda.is_available() and dev.index is not None \
            and dev.index >= torch.cuda.device_count():
        raise ScoreReconError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
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
