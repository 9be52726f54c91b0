"""The figures of RESULTS.md: one comparison figure per task on a held-out test subject (the pydicom head CT; the ITK
T1 head), 128², noisy as in benchmarks/generalization.py (CT 1 %, MRI 0.1 % of max|y|), the same cases (subject,
task, seed) as its tables: FBP / zero-filled, TV / CS at the automatic weight and the default score method with the
shipped priors, shown in the CT soft-tissue and bone windows (MRI: the image's range), then |error| and the
calibrated posterior std on one common scale, colour bars in HU / MR units, metal outlined in red
(``figures.comparison_panels``, the panels of ``scorerecon demo`` and ``evaluate --output``).

Writes ``benchmarks/figures/<task>.png`` and the "figures" section of RESULTS.md, which links them.

    python benchmarks/figures.py --threads 2        # ~3 min on the 2-core CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import CLASSICAL, make_case, run_classical, run_score  # noqa: E402
from ScoreReconLib.figures import comparison_panels, panel_figure  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402

SUBJECTS = {"CT": "heldout/ct/pydicom_head_ct.nrrd", "MR": "heldout/mri/itk_t1_head.nrrd"}
NOISE = {"CT": 0.01, "MR": 0.001}
MODELS = {"CT": "default-ct", "MR": "default-mri"}
OUT = ROOT / "benchmarks" / "figures"


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    OUT.mkdir(exist_ok=True)
    lines = []
    for modality, rel in SUBJECTS.items():
        prior = load_prior(MODELS[modality])
        s = G.load_subject(Path(args.data) / rel, modality, "test", 1, ct_normalization())[0]
        for task in G.TASKS[modality]:
            case = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=NOISE[modality],
                             **task.opts())
            records = [run_classical(case, m) for m in CLASSICAL[task.task]]
            score = run_score(case, prior, seed=0, label="ScoreRecon")
            panels = comparison_panels(case, [*records, score], score, prior.normalization, modality)
            path = panel_figure(panels, OUT / f"{task.key}.png", columns=len(records) + 2)
            scores = ", ".join(f"{r.method.upper() if r is not score else 'ScoreRecon'} {r.psnr:.2f} dB / "
                               f"{r.ssim:.3f}" for r in [*records, score])
            lines.append(f"- **{task.label}**, {s.name}: {scores}\n\n  ![{task.key}](figures/{path.name})")
            print(f"[{time.strftime('%H:%M:%S')}] {task.key}: {scores}", flush=True)
    text = ("Rows: each method in the display windows (CT: soft tissue W 400 / L 40 and bone W 2000 / L 500 HU; "
            "MRI: 0 to the 99.5th percentile of the reference); last row: |error| of the best classical method and "
            "of ScoreRecon and the calibrated posterior std, on one scale. Classical weights are automatic; "
            "ScoreRecon is the shipped prior's default (recommended samples, seed 0).\n\n" + "\n\n".join(lines)
            + f"\n\nWall time: {(time.time() - t0) / 60:.1f} min.")
    _results.update_section("figures", text, "python benchmarks/figures.py --threads " + str(args.threads))


if __name__ == "__main__":
    main()
