"""Do the patch prior's coordinate channels help or hurt on anatomy it never saw? (issue 25, item 2)

A patch network sees each pixel's field-of-view coordinates ``(u, v)`` as two extra input channels, which can
encode where a head's structures lie. Two training runs start from the same shipped prior and differ only in
those channels: ``--init-from <prior>`` continued as it is (*coordinates*) and ``--init-from <prior>
--no-coordinates`` (*no coordinates*: the intensity channel's weights kept, the coordinate weights dropped), with
the same data, seed, batches, learning rate and number of steps. For the shipped prior (step 0) and each run's
final checkpoint this measures:

- the validation loss of the runs' fixed patches of other subjects (``val_log.csv``);
- the default score reconstruction (the shipped prior's recommended settings for every row) on the validation
  subjects of benchmarks/auto_weight.py, every task of benchmarks/generalization.py, 128², noisy (CT 1 %, MRI
  0.1 % of max|y|): the choice is made on these rows only;
- the same on the held-out test subjects (benchmarks/std_calibration.TEST), which only measure.

Rule, fixed before the runs: ship a prior without coordinates only if its mean validation PSNR is above the
*coordinates* run's by more than 0.02 dB (a tie keeps the shipped design, which every table so far measured);
otherwise the coordinates stay. Writes the "coordinate-ablation-<ct|mri>" section of RESULTS.md and its JSON.

    scorerecon train --data data/ct --val-data build/val_ct --output build/abl_coords --init-from \\
        Resources/models/default-ct --size 256 --steps 2000 --batch-size 16 --lr 1e-4 --warmup 100 \\
        --checkpoint-every 250 --scale-range 0.4 2.2 --axis all --seed 1      # and the same with
        --output build/abl_plain --no-coordinates
    python benchmarks/coordinate_ablation.py --modality CT --runs build/abl_coords build/abl_plain
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
import torch  # noqa: E402
from adaptation import MODELS  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402
from prior_training import cases, evaluate, log, val_log  # noqa: E402
from std_calibration import TEST  # noqa: E402

from ScoreReconLib.networks import load_prior  # noqa: E402

#: a run without coordinates must beat the run with them by more than this (mean validation PSNR, dB)
MARGIN_DB = 0.02


def first_layer_norms(prior) -> list[float]:
    """Frobenius norms of the first convolution's weights per input channel: intensity, then u, v if present."""
    w = prior.model.unet.conv_in.conv.weight.detach()
    return [float(w[:, i].norm()) for i in range(w.shape[1])]


def arm_label(prior) -> str:
    return "coordinates" if int(prior.model.network["coord_channels"]) else "no coordinates"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("CT", "MR"), required=True)
    ap.add_argument("--runs", nargs="+", required=True, help="the training runs' folders (final checkpoints)")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tag = "ct" if args.modality == "CT" else "mri"
    data = Path(args.data)
    shipped = load_prior(MODELS[args.modality])
    val_cases, tests = cases(args.modality, data), cases(args.modality, data, TEST[args.modality])
    rows = [{"label": f"shipped {MODELS[args.modality]} (step 0)", "arm": arm_label(shipped), "steps": 0,
             "val_loss": None, "curve": {}, "validation": evaluate(shipped, shipped, args.modality, val_cases),
             "test": evaluate(shipped, shipped, args.modality, tests)}]
    log(f"shipped: validation {rows[0]['validation']['mean']:.3f}, test {rows[0]['test']['mean']:.3f}")
    for run in map(Path, args.runs):
        prior = load_prior(run)
        curve = val_log(run)
        step = int(json.loads((run / "config.json").read_text())["steps"])
        rows.append({"label": str(run), "arm": arm_label(prior), "steps": step, "val_loss": curve.get(step),
                     "curve": curve, "validation": evaluate(prior, shipped, args.modality, val_cases),
                     "test": evaluate(prior, shipped, args.modality, tests)})
        log(f"{run} ({rows[-1]['arm']}): validation {rows[-1]['validation']['mean']:.3f}, "
            f"test {rows[-1]['test']['mean']:.3f}")
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    (ROOT / "benchmarks" / f"coordinate-ablation-{tag}.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=1))
    tasks = [k for k in rows[0]["validation"] if k != "mean"]
    lines = [f"Both runs start from the shipped `{MODELS[args.modality]}` and differ only in the coordinate channels "
             "(same data, seed, batches, learning rate, steps). *val loss*: the runs' fixed validation patches of "
             "other subjects at the last step; PSNR: the default score reconstruction with the shipped prior's "
             f"recommended settings, 128², noisy (CT 1 %, MRI 0.1 %), validation subjects "
             f"({', '.join(Path(p).name for p in VALIDATION[args.modality])}) and, measuring only, test subjects "
             f"({', '.join(Path(p).name for p in TEST[args.modality])}); mean over subjects per task.", "",
             "| run | channels | steps | val loss | validation mean | " + " | ".join(f"val {k}" for k in tasks)
             + " | test mean | " + " | ".join(f"test {k}" for k in tasks) + " |",
             "|---" * (6 + 2 * len(tasks)) + "|"]
    for r in rows:
        loss = "–" if r["val_loss"] is None else f"{r['val_loss']:.5f}"
        lines.append(f"| {r['label']} | {r['arm']} | {r['steps']} | {loss} | {r['validation']['mean']:.3f} | "
                     + " | ".join(f"{r['validation'][k]:.2f}" for k in tasks)
                     + f" | {r['test']['mean']:.3f} | " + " | ".join(f"{r['test'][k]:.2f}" for k in tasks) + " |")
    for r in rows[1:]:
        lines += ["", f"Validation loss of `{r['label']}` ({r['arm']}) at every checkpoint: "
                  + ", ".join(f"{s}: {v:.5f}" for s, v in sorted(r["curve"].items())) + "."]
    norms = first_layer_norms(shipped)
    if len(norms) == 3:
        lines += ["", f"How much the shipped prior uses the coordinates: norms of its first convolution's weights per "
                      f"input channel: intensity {norms[0]:.3f}, u {norms[1]:.3f}, v {norms[2]:.3f} "
                      f"({100 * max(norms[1:]) / norms[0]:.1f} % of the intensity channel's; the coordinate weights "
                      "started at zero when the patch prior was made from a whole-image one)."]
    with_c = [r for r in rows[1:] if r["arm"] == "coordinates"]
    without = [r for r in rows[1:] if r["arm"] == "no coordinates"]
    if with_c and without:
        d_val = without[0]["validation"]["mean"] - with_c[0]["validation"]["mean"]
        d_test = without[0]["test"]["mean"] - with_c[0]["test"]["mean"]
        verdict = ("without coordinates wins on validation: ship it" if d_val > MARGIN_DB else
                   "the coordinates stay (no-coordinates run not ahead by more than "
                   f"{MARGIN_DB} dB on validation)")
        lines += ["", f"No coordinates − coordinates, mean PSNR: validation {d_val:+.3f} dB, test {d_test:+.3f} dB; "
                      f"rule: {verdict}."]
    lines.append(f"\nWall time: {(time.time() - t0) / 60:.1f} min.")
    _results.update_section(f"coordinate-ablation-{tag}", "\n".join(lines), command)


if __name__ == "__main__":
    main()
