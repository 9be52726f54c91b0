"""Does the automatic TV weight, chosen on 128² slices, hold at 512² (issue 22's PSNR goal at native size)?

For the CT validation subjects that have 512² content (the spine CT, native 512²; the InVesalius slice, 256²
resampled to 512²) and at 128², sparse-view CT with 23 views, 1 % noise (as benchmarks/generalization.py): the
weight ``parameter_choice.choose_weight`` picks (the discrepancy principle with the validated factor) and its TV
PSNR, and the weight cross-validation over held-out views picks (``choose_weight(rule="cross-validation")``),
against a grid of weights. Validation subjects only; nothing is tuned here. Writes the
"auto-weight-native" section of RESULTS.md.

    python benchmarks/auto_weight_native.py --threads 1      # ~15 min on this project's CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402

from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.parameter_choice import choose_weight  # noqa: E402

SUBJECTS = ("heldout/ct/pydicom_data_spine_ct.nrrd", "ct/invesalius_cranium.nrrd")
SIZES = (512, 256, 128)
GRID = (1e-4, 2e-4, 3.2e-4, 5e-4, 7e-4, 1e-3, 1.4e-3, 2e-3, 3e-3)


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    task = next(t for t in G.TASKS["CT"] if t.key == "sparse23")
    lines = ["TV PSNR (dB) on a weight grid and at the automatic weight, sparse-view CT 23 views, 1 % noise, same "
             "operator, validation subjects (bold: the row's best).", "",
             "| image | size | auto weight | auto PSNR | loss dB | cross-validation weight | PSNR | loss dB | "
             + " | ".join(f"{w:g}" for w in GRID) + " |", "|---" * (8 + len(GRID)) + "|"]
    for rel in SUBJECTS:
        s = G.load_subject(Path(args.data) / rel, "CT", "validation", 1, ct_normalization())[0]
        for size in SIZES:
            c = make_case(s.name, s.at(size), task.task, seed=G.case_seed(s, task), noise=0.01, **task.opts())
            choice = choose_weight(c.y, c.op, "tv")
            auto = score_slices(classical_reconstruct("tv", c.y, c.op, weight=choice.weight), c.x, c.score_mask).psnr
            cv = choose_weight(c.y, c.op, "tv", rule="cross-validation")
            cv_psnr = score_slices(cv.image if cv.image is not None else classical_reconstruct(
                "tv", c.y, c.op, weight=cv.weight), c.x, c.score_mask).psnr
            grid = {w: score_slices(classical_reconstruct("tv", c.y, c.op, weight=w), c.x, c.score_mask).psnr
                    for w in GRID}
            best = max(grid.values())
            cells = [f"**{p:.2f}**" if p == best else f"{p:.2f}" for p in grid.values()]
            lines.append(f"| {s.name} | {size}² | {choice.weight:.3g} | {auto:.2f} | {best - auto:.2f} | "
                         f"{cv.weight:.3g} | {cv_psnr:.2f} | {best - cv_psnr:.2f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    _results.update_section("auto-weight-native", "\n".join(lines)
                            + f"\n\nWall time: {(time.time() - t0) / 60:.1f} min.", cmd)


if __name__ == "__main__":
    main()
