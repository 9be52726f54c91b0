"""What the Slicer module saves by running an Apply's commands in one child (``python -m ScoreReconLib.steps``)
instead of one child per command: the wall seconds of the same three commands (simulate the shipped CT sample at
23 views, then two FBP reconstructions, as an Apply with a baseline does) run both ways, alternately, ``--repeats``
times. FBP keeps the reconstruction itself short, so the difference is the start-up (Python, torch, MONAI, the
library) of the two extra children. Writes the "one-child-apply" section of RESULTS.md.

    python benchmarks/one_child.py --repeats 3
"""

from __future__ import annotations

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import _setup  # first: the repository importable

ROOT = _setup.ROOT


def commands(folder: Path) -> list[list[str]]:
    sample = str(ROOT / "Resources" / "samples" / "ct_head_sample.nrrd")
    meas = str(folder / "m.npz")
    recon = ["reconstruct", "--input", meas, "--method", "fbp", "--progress-format", "none", "--output"]
    return [["simulate", "--task", "sparse-ct", "--views", "23", "--input", sample, "--output", meas],
            recon + [str(folder / "a.nrrd")], recon + [str(folder / "b.nrrd")]]


def timed(argvs: list[list[str]]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    for argv in argvs:
        subprocess.run([sys.executable, *argv], check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cmds = commands(folder)
        steps = folder / "steps.json"
        steps.write_text(json.dumps(cmds))
        separate, chained = [], []
        for _ in range(args.repeats):
            separate.append(timed([["-m", "ScoreReconLib", *c] for c in cmds]))
            chained.append(timed([["-m", "ScoreReconLib.steps", str(steps)]]))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = ("| commands | one child per command | one child for all | saved |\n|---|---|---|---|\n"
            f"| simulate + 2 × FBP (the shipped CT sample, 23 views) | {statistics.median(separate):.1f} s | "
            f"{statistics.median(chained):.1f} s | {statistics.median(separate) - statistics.median(chained):.1f} s |"
            f"\n\nMedians of {args.repeats} alternating runs; 1-minute load average {load:.1f} at the end (other "
            "jobs ran beside it, which lengthens every start-up).")
    print(text)
    _results.update_section("one-child-apply", text, "python benchmarks/one_child.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
