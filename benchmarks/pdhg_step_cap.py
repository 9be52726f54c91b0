"""PDHG's primal step cap (``baselines.RHO_CAP``) at small weights, on the validation subjects' noise-free cases.

``_pdhg`` enlarges the primal step by ρ = 1/√w up to ``RHO_CAP``. With the earlier cap of 100 the step stopped
growing below w = 1e-4 and a cold 300-iteration solve was far from converged there. This measures TV (CT: sparse
view 23 and 8, 90° arc, metal) and CS-TV (MRI: 4×, 8× 1-D, 8× Poisson), 128², noise-free, same operator, at
weights 1e-4 … 1e-6 with the cap at 100 and at the shipped value. Validation subjects only
(benchmarks/auto_weight.VALIDATION). Writes the "pdhg-step-cap" section of RESULTS.md.

    python benchmarks/pdhg_step_cap.py --threads 2      # ~2 min on this project's CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402

from ScoreReconLib import baselines  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402

WEIGHTS = (1e-4, 3.16e-5, 1e-5, 3.16e-6, 1e-6)
OLD_CAP = 100.0


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    shipped = baselines.RHO_CAP
    head = " | ".join(f"{w:g}" for w in WEIGHTS)
    lines = [f"PSNR dB of a cold default-iteration solve, noise-free, 128², cap {OLD_CAP:g} → shipped cap "
             f"{shipped:g} (`baselines.RHO_CAP`), at each weight; Δ = shipped − old.", "",
             f"| image | task | cap | {head} |", "|---" * (3 + len(WEIGHTS)) + "|"]
    for modality in ("CT", "MR"):
        method = "tv" if modality == "CT" else "cs"
        for rel in VALIDATION[modality]:
            s = G.load_subject(Path(args.data) / rel, modality, "validation", 1, ct_normalization())[0]
            for task in G.TASKS[modality]:
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=0.0, **task.opts())
                row = {}
                for cap in (OLD_CAP, shipped):
                    baselines.RHO_CAP = cap
                    row[cap] = [score_slices(baselines.classical_reconstruct(method, c.y, c.op, weight=w), c.x,
                                             c.score_mask).psnr for w in WEIGHTS]
                baselines.RHO_CAP = shipped
                for cap in (OLD_CAP, shipped):
                    lines.append(f"| {s.name} | {task.key} | {cap:g} | " + " | ".join(f"{p:.2f}" for p in row[cap])
                                 + " |")
                lines.append(f"| {s.name} | {task.key} | Δ | " + " | ".join(
                    f"{b - a:+.2f}" for a, b in zip(row[OLD_CAP], row[shipped], strict=True)) + " |")
                print(lines[-1], flush=True)
    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    _results.update_section("pdhg-step-cap", "\n".join(lines) + f"\n\nWall time: {(time.time() - t0) / 60:.1f} min.",
                            cmd)


if __name__ == "__main__":
    main()
