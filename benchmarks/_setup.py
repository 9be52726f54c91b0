"""Shared start of the benchmarks run as scripts: ``--threads N`` reaches OpenMP / MKL before torch loads, and
the repository and this folder are importable. Import it first: ``from _setup import ROOT``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def early_setup(argv: list[str] | None = None) -> None:
    """Apply ``--threads N`` of ``argv`` (default ``sys.argv``) to the thread environment, put the repository and
    ``benchmarks/`` on ``sys.path``."""
    argv = sys.argv if argv is None else argv
    if "--threads" in argv and argv.index("--threads") + 1 < len(argv):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, argv[argv.index("--threads") + 1])
    for folder in (ROOT / "benchmarks", ROOT):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


early_setup()
