"""The score method's start time ``t_start`` against the quality of its classical start (issue 17, item 2).

The default sampler starts at ``t_start = 0.1`` from the automatic TV / CS image: it adds noise of std σ(t_start)
to it and denoises in 5 steps. A start that is already better than the prior's denoising at that noise level can
only lose. For every task (128², noisy and noise-free, as benchmarks/generalization.py) and subject this measures
the PSNR of the classical start and of the default score reconstruction at ``t_start`` 0.02, 0.05, 0.1 and 0.2,
with σ(t_start) of the prior's SDE beside it. Validation subjects first (benchmarks/auto_weight.py), then the test
subjects (benchmarks/std_calibration.TEST), which only measure. Writes the "start-time-<ct|mri>" section of
RESULTS.md.

    python benchmarks/start_time.py --modality MR --threads 1     # ~15 min on one core
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from adaptation import MODELS  # noqa: E402
from auto_weight import NOISE, VALIDATION  # noqa: E402
from std_calibration import TEST  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct  # noqa: E402
from ScoreReconLib.sampling.consistency import classical_init  # noqa: E402

T_STARTS = (0.02, 0.05, 0.1, 0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("CT", "MR"), required=True)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    prior = load_prior(MODELS[args.modality])
    data = Path(args.data)
    sigmas = {t: float(prior.sde.marginal_prob(torch.zeros(1), torch.tensor([t]))[1]) for t in T_STARTS}
    rows = []
    for role, subjects in (("validation", VALIDATION[args.modality]), ("test", TEST[args.modality])):
        for rel in subjects:
            s = G.load_subject(data / rel, args.modality, role, 1, ct_normalization())[0]
            for task in G.TASKS[args.modality]:
                for noise in (NOISE[args.modality], 0.0):
                    c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise,
                                  **task.opts())

                    def psnr(x, _c=c) -> float:
                        return score_slices(x, _c.x, _c.score_mask).psnr

                    row = {"role": role, "image": s.name, "task": task.key, "noise": noise,
                           "start": psnr(classical_init(c.op, c.y)),  # the start reconstruct() makes
                           "score": {t: psnr(reconstruct(c.y, c.op, prior, seed=0, t_start=t).mean) for t in T_STARTS}}
                    rows.append(row)
                    print(f"[{time.strftime('%H:%M:%S')}] {role} {s.name} {task.key} noise {noise:g}: start "
                          f"{row['start']:.2f}, " + ", ".join(f"{t:g}: {v:.2f}" for t, v in row["score"].items()),
                          flush=True)
    tag = "ct" if args.modality == "CT" else "mri"
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    (ROOT / "benchmarks" / f"start-time-{tag}.json").write_text(json.dumps({"command": command, "rows": rows},
                                                                          indent=1))
    head = " | ".join(f"t_start {t:g} (σ {sigmas[t]:.3f})" for t in T_STARTS)
    lines = [f"`{MODELS[args.modality]}`, the default settings but `t_start`, 128², noisy (CT 1 %, MRI 0.1 % of "
             "max|y|) and noise-free, same operator. *start*: the classical start alone (automatic weight); σ: the "
             "noise std the sampler adds at that start time (images on [0, 1]); the best start time of each row in "
             "bold; *start RMSE*: 10^(−PSNR/20), the start's error on the same scale.", "",
             f"| role | image | task | noise | start PSNR | start RMSE | {head} | best − start |",
             "|---" * (7 + len(T_STARTS)) + "|"]
    for r in rows:
        best = max(r["score"], key=r["score"].get)
        cells = " | ".join((f"**{v:.2f}**" if t == best else f"{v:.2f}") for t, v in r["score"].items())
        lines.append(f"| {r['role']} | {r['image']} | {r['task']} | {r['noise']:g} | {r['start']:.2f} | "
                     f"{10 ** (-r['start'] / 20):.4f} | {cells} | {r['score'][best] - r['start']:+.2f} |")
    for role in ("validation", "test"):
        rr = [r for r in rows if r["role"] == role]
        means = {t: float(np.mean([r["score"][t] for r in rr])) for t in T_STARTS}
        wins = {t: sum(max(r["score"], key=r["score"].get) == t for r in rr) for t in T_STARTS}
        below = sum(r["score"][0.1] < r["start"] for r in rr)
        lines += ["", f"{role}: mean PSNR by start time " + ", ".join(f"{t:g}: {v:.3f}" for t, v in means.items())
                  + "; best in " + ", ".join(f"{wins[t]} ({t:g})" for t in T_STARTS) + f" of {len(rr)} rows; the "
                  f"default (0.1) below its own start in {below} row(s)."]
    lines.append(f"\nWall time {(time.time() - t0) / 60:.1f} min.")
    _results.update_section(f"start-time-{tag}", "\n".join(lines), command)


if __name__ == "__main__":
    main()
