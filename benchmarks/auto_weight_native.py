"""Which rule chooses the TV weight of noisy CT at 256² and 512² (issue 22's PSNR goal at native size)?

For the CT validation subjects that have 512² content (the spine CT, native 512²; the InVesalius slice, 256²
resampled to 512²) at 512², 256² and 128², sparse-view CT with 23 and 8 views and limited-angle CT (90°), 1 % noise
(as benchmarks/generalization.py): the weights the discrepancy principle (with the factor validated at 128²) and
cross-validation over held-out views pick (``choose_weight(rule=...)``) and their TV PSNR, against a grid of
weights. ``parameter_choice.WEIGHT_RULES["CT-large"]`` and ``LARGE_IMAGE`` follow from this table. Validation
subjects only; nothing is tuned here. Writes the "auto-weight-native" section of RESULTS.md.

    python benchmarks/auto_weight_native.py --threads 1      # ~30 min on this project's CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402

from ScoreReconLib import parameter_choice as PC  # noqa: E402
from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.parameter_choice import choose_weight  # noqa: E402

SUBJECTS = ("heldout/ct/pydicom_data_spine_ct.nrrd", "ct/invesalius_cranium.nrrd")
SIZES = (512, 256, 128)
GRID = (1e-4, 2e-4, 3.2e-4, 5e-4, 7e-4, 1e-3, 1.4e-3, 2e-3, 3e-3, 5e-3, 1e-2)
TASKS = ("sparse23", "sparse8", "limited90")


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    tasks = [t for t in G.TASKS["CT"] if t.key in TASKS]
    lines = ["TV PSNR (dB) on a weight grid and at the weight of each rule, 1 % noise, same operator, validation "
             "subjects (bold: the row's best).", "",
             "| task | image | size | discrepancy weight | PSNR | loss dB | cross-validation weight | PSNR | loss dB | "
             + " | ".join(f"{w:g}" for w in GRID) + " |", "|---" * (9 + len(GRID)) + "|"]
    losses: dict[tuple[str, int], dict[str, list[float]]] = {
        (t.key, size): {"discrepancy": [], "cross-validation": []} for t in tasks for size in SIZES}
    shipped: dict[tuple[str, int], str] = {}
    for task, rel in ((t, r) for t in tasks for r in SUBJECTS):
        s = G.load_subject(Path(args.data) / rel, "CT", "validation", 1, ct_normalization())[0]
        for size in SIZES:
            c = make_case(s.name, s.at(size), task.task, seed=G.case_seed(s, task), noise=0.01, **task.opts())
            choice = choose_weight(c.y, c.op, "tv", rule="discrepancy")
            auto = score_slices(classical_reconstruct("tv", c.y, c.op, weight=choice.weight), c.x, c.score_mask).psnr
            cv = choose_weight(c.y, c.op, "tv", rule="cross-validation")
            cv_psnr = score_slices(cv.image if cv.image is not None else classical_reconstruct(
                "tv", c.y, c.op, weight=cv.weight), c.x, c.score_mask).psnr
            grid = {w: score_slices(classical_reconstruct("tv", c.y, c.op, weight=w), c.x, c.score_mask).psnr
                    for w in GRID}
            best = max(grid.values())
            cells = [f"**{p:.2f}**" if p == best else f"{p:.2f}" for p in grid.values()]
            losses[task.key, size]["discrepancy"].append(best - auto)
            losses[task.key, size]["cross-validation"].append(best - cv_psnr)
            shipped[task.key, size] = PC.weight_rule(c.op, "noisy")
            lines.append(f"| {task.key} | {s.name} | {size}² | {choice.weight:.3g} | {auto:.2f} | {best - auto:.2f} | "
                         f"{cv.weight:.3g} | {cv_psnr:.2f} | {best - cv_psnr:.2f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += ["", "Mean loss against each row's best grid weight (dB) of each rule and of the rule shipped for noisy "
              f"CT (`weight_rule`: `WEIGHT_RULES`, `LARGE_IMAGE` = {PC.LARGE_IMAGE}, `LARGE_IMAGE_MIN_VIEWS` = "
              f"{PC.LARGE_IMAGE_MIN_VIEWS}):", "",
              "| task | size | discrepancy | cross-validation | shipped rule | shipped rule's loss |",
              "|---|---|---|---|---|---|"]
    for size in SIZES:
        for key in [*(t.key for t in tasks), "all"]:
            keys = [k for k in losses if k[1] == size and key in (k[0], "all")]
            mean = {rule: statistics.mean(x for k in keys for x in losses[k][rule])
                    for rule in ("discrepancy", "cross-validation")}
            own = statistics.mean(x for k in keys for x in losses[k][shipped[k]])
            rules = sorted({shipped[k] for k in keys})
            label = "**all**" if key == "all" else key
            lines.append(f"| {label} | {size}² | {mean['discrepancy']:.2f} | {mean['cross-validation']:.2f} | "
                         f"{' / '.join(rules)} | {own:.2f} |")
    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    _results.update_section("auto-weight-native", "\n".join(lines)
                            + f"\n\nWall time: {(time.time() - t0) / 60:.1f} min.", cmd)


if __name__ == "__main__":
    main()
