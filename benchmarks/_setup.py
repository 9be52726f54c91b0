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


def data_threads_args(description: str, extra=None):
    """Parse the common ``--data`` (the prepared data root) and ``--threads`` (torch's CPU threads, applied here)
    of a benchmark script, and what ``extra(parser)`` adds; returns the arguments."""
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def modality_benchmark(description: str, section: str, default_json: str, records, markdown,
                       extra_args=None) -> None:
    """The ``main()`` of a per-modality validation benchmark: ``--only CT|MR``, ``--data``, ``--threads``, ``--json``
    and ``--from-json``; ``records(modality, data, args)`` computes a modality's records (saved to the JSON after
    each modality, so a stopped run keeps what it finished); ``markdown(modality, records)`` renders them into
    ``section`` of RESULTS.md. ``extra_args(parser)`` adds the benchmark's own options."""
    import argparse
    import json
    import time

    import _results
    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--only", choices=("CT", "MR"), default=None)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / default_json))
    ap.add_argument("--from-json", action="store_true", help="re-write the tables from the saved records")
    if extra_args is not None:
        extra_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = Path(args.json)
    saved = json.loads(path.read_text()) if path.exists() else {}
    for modality in (["CT", "MR"] if args.only is None else [args.only]):
        if not args.from_json:
            saved[modality] = records(modality, Path(args.data), args)
            path.write_text(json.dumps(saved))
    body = "\n\n".join(markdown(m, saved[m]) for m in ("CT", "MR") if m in saved)
    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    _results.update_section(section, f"{body}\n\nWall time: {(time.time() - t0) / 60:.1f} min.", cmd)
