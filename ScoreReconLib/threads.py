"""CPU threads of a command: ``--threads N`` and a default that does not oversubscribe a busy machine.

torch's own default is one intra-op thread per core. On a machine whose cores are already busy that
oversubscribes them: one 128² score slice took 89 s wall with torch's default threads on a loaded 2-core
machine and 21.7 s with one thread (issue 20). :func:`default_threads` therefore takes the cores this
process may use, minus the cores other work keeps busy (:func:`busy_cores`), capped at
:data:`MAX_DEFAULT_THREADS`, and respects ``OMP_NUM_THREADS`` when the user has set it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .errors import ScoreReconError

#: most threads the default picks: small images gain little from more intra-op threads
MAX_DEFAULT_THREADS = 8
#: most threads ``--threads`` accepts
MAX_THREADS = 1024


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a whole number ≥ 1; else the idle usable cores, 1 to
    :data:`MAX_DEFAULT_THREADS` (idle: usable cores minus :func:`busy_cores`)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return min(int(env), MAX_THREADS)
    cores = usable_cores()
    return max(1, min(cores - busy_cores(), cores, MAX_DEFAULT_THREADS))


def busy_cores() -> int:
    """Cores other work keeps busy now: the runnable tasks of ``/proc/loadavg`` other than this one (Linux; the
    median of three looks 10 ms apart), else the rounded 1-minute load average (macOS; 0 where there is none).

    The instantaneous count follows the machine at once, where the 1-minute average still counts a job that
    ended seconds ago (a previous command of the same user, for one)."""
    try:
        counts = []
        for i in range(3):
            if i:
                time.sleep(0.01)
            fields = Path("/proc/loadavg").read_text().split()
            counts.append(int(fields[3].split("/")[0]) - 1)  # "running/total"; minus this process
        return max(0, sorted(counts)[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0, int(round(os.getloadavg()[0])))
    except (AttributeError, OSError):  # no load average (Windows)
        return 0


def threads_arg(text: str) -> int:
    """argparse type of ``--threads``: a whole number from 1 to :data:`MAX_THREADS`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of threads, e.g. 1") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{value} threads is outside 1..{MAX_THREADS}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` to a computing command (applied by :func:`apply_threads` before it runs)."""
    parser.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                        help="CPU threads for torch (default: the idle cores, at most "
                             f"{MAX_DEFAULT_THREADS}, or OMP_NUM_THREADS when set; 1 is fastest on a busy machine)")


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (None → :func:`default_threads`); returns the number set."""
    if threads is None:
        threads = default_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ScoreReconError(f"--threads {threads!r} must be a whole number from 1 to {MAX_THREADS}")
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
