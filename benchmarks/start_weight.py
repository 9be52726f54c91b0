"""The weight of the score method's classical start on metal CT (``parameter_choice.START_RULES``).

The metal-CT TV solves converge since PDHG steps in the ramp metric (*tv-preconditioning*), and the sampler then
started from the TV-optimal image did worse than before (where the unconverged TV had been a rougher start). This
measures the default score reconstruction (the CT prior's recommended settings, seed 0), 128², metal CT with 1 %
noise and noise-free, started from TV at:

- noisy: the automatic TV weight (the discrepancy principle) times 0.25, 0.35, 0.5, 0.7 and 1;
- noise-free: the weights 3.16e-6 (TV's own noise-free weight since the PDHG step cap was raised), 1e-5 (the
  earlier one), 2e-5, 4e-5 and 1e-4.

The rule is chosen on the **validation** subjects (benchmarks/auto_weight.VALIDATION): the factor and the
noise-free weight with the best mean score PSNR. The **test** subjects (benchmarks/std_calibration.TEST) only
measure. Writes the "start-weight-metal" section of RESULTS.md.

    python benchmarks/start_weight.py --threads 1      # ~15 min on this project's CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
from adaptation import MODELS  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402
from std_calibration import TEST  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.parameter_choice import START_RULES, choose_weight  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct  # noqa: E402

FACTORS = (0.25, 0.35, 0.5, 0.7, 1.0)
NOISE_FREE = (3.16e-6, 1e-5, 2e-5, 4e-5, 1e-4)


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    prior = load_prior(MODELS["CT"])
    task = next(t for t in G.TASKS["CT"] if t.key == "metal")
    rows = {"noisy": [], "noise-free": []}
    for role, subjects in (("validation", VALIDATION["CT"]), ("test", TEST["CT"])):
        for rel in subjects:
            s = G.load_subject(Path(args.data) / rel, "CT", role, 1, ct_normalization())[0]
            for noise, key, values in ((0.01, "noisy", FACTORS), (0.0, "noise-free", NOISE_FREE)):
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise, **task.opts())
                auto = choose_weight(c.y, c.op, "tv").weight
                weights = [auto * f for f in values] if key == "noisy" else list(values)
                psnrs = [score_slices(reconstruct(c.y, c.op, prior, seed=0, init_weight=float(f"{w:.3g}")).mean,
                                      c.x, c.score_mask).psnr for w in weights]
                rows[key].append((role, s.name, auto, psnrs))
                print(f"[{time.strftime('%H:%M:%S')}] {role} {s.name} {key}: auto {auto:.3g}; "
                      + ", ".join(f"{v:g}: {p:.2f}" for v, p in zip(values, psnrs, strict=True)), flush=True)
    lines = ["Default score reconstruction (the CT prior's recommended settings, seed 0), metal CT, 128², PSNR dB "
             "outside the metal, by the weight of the TV start; bold: each row's best. The rule (the column with "
             "the best validation mean) is chosen on the validation rows only."]
    for key, values, label in (("noisy", FACTORS, "× auto weight"), ("noise-free", NOISE_FREE, "weight")):
        head = " | ".join(f"{label} {v:g}" for v in values)
        lines += ["", f"**{key}** (1 % noise)" if key == "noisy" else "**noise-free**", "",
                  f"| role | image | auto TV weight | {head} |", "|---" * (3 + len(values)) + "|"]
        for role, name, auto, psnrs in rows[key]:
            best = max(psnrs)
            cells = [f"**{p:.2f}**" if p == best else f"{p:.2f}" for p in psnrs]
            lines.append(f"| {role} | {name} | {auto:.3g} | " + " | ".join(cells) + " |")
        for role in ("validation", "test"):
            means = np.mean([r[3] for r in rows[key] if r[0] == role], axis=0)
            lines.append(f"| {role} mean | | | " + " | ".join(f"{m:.2f}" for m in means) + " |")
        val = np.mean([r[3] for r in rows[key] if r[0] == "validation"], axis=0)
        chosen = values[int(np.argmax(val))]
        shipped = START_RULES["metal-ct"]["factor" if key == "noisy" else "noise_free"]
        lines.append("")
        lines.append(f"Chosen on validation: {label} {chosen:g}; shipped (`START_RULES`): {shipped:g}.")
    lines.append(f"\nWall time: {(time.time() - t0) / 60:.1f} min.")
    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    _results.update_section("start-weight-metal", "\n".join(lines), cmd)


if __name__ == "__main__":
    main()
