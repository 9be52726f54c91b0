"""The learning curve of a prior trained further (issue 25): validation loss and validation PSNR against steps.

A resumable run of ``scorerecon train --val-data`` logs the denoising loss of fixed patches of other subjects at
every checkpoint (``val_log.csv``). This script adds, for the shipped prior (step 0 of the run: the run started
``--init-from`` it) and for weight snapshots of the run (folders holding a copy of the run's ``model.safetensors``
and ``config.json`` taken at a checkpoint), the reconstruction the user gets: the default score method (the
*shipped* prior's recommended settings, applied to every snapshot alike) on the validation subjects of
benchmarks/auto_weight.py, 128², noisy (CT 1 %, MRI 0.1 % of max|y|), every task of benchmarks/generalization.py.
Test subjects are not used. Writes the "prior-training-ct" / "prior-training-mri" section of RESULTS.md.

    python benchmarks/prior_training.py --modality CT --run build/ct_long --snapshots build/ct_long_snap/step_*
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from adaptation import MODELS, NOISE  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.datasets import SliceDataset  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct_volume  # noqa: E402
from ScoreReconLib.settings import resolve_settings  # noqa: E402
from ScoreReconLib.training.config import TrainConfig  # noqa: E402
from ScoreReconLib.training.validation import validation_loss, validation_set  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_config(run: Path) -> TrainConfig:
    """The run's training settings (from its config.json), which fix its validation patches."""
    tc = json.loads((run / "config.json").read_text())["training"]
    known = {k: v for k, v in tc.items() if k in TrainConfig.__dataclass_fields__}
    for key in ("hu_window", "scale_range", "intensity_range"):
        if known.get(key) is not None:
            known[key] = tuple(known[key])
    return TrainConfig(**known)


def val_log(run: Path) -> dict[int, float]:
    with open(run / "val_log.csv") as fh:
        return {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(fh)}


def cases(modality: str, data: Path, subjects: list[str] | None = None) -> list:
    """(task key, case) of every task for ``subjects`` (paths under ``data``; default the validation subjects),
    128², noisy, one slice each."""
    out = []
    for rel in VALIDATION[modality] if subjects is None else subjects:
        s = G.load_subject(data / rel, modality, "validation", 1, ct_normalization())[0]
        for task in G.TASKS[modality]:
            out.append((task.key, make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task),
                                            noise=NOISE[modality], **task.opts())))
    return out


def evaluate(prior, shipped, modality: str, cs: list) -> dict[str, float]:
    """Mean validation PSNR per task (and "mean" over every case) of ``prior`` with ``shipped``'s settings."""
    by_task: dict[str, list[float]] = {}
    for key, c in cs:
        settings = resolve_settings(None, shipped, task=c.op.task)
        res = reconstruct_volume(c.y, c.op, prior, seed=0, settings=settings)
        by_task.setdefault(key, []).append(score_slices(res.mean, c.x, c.score_mask).psnr)
    out = {k: float(np.mean(v)) for k, v in by_task.items()}
    out["mean"] = float(np.mean([p for v in by_task.values() for p in v]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=("CT", "MR"), required=True)
    ap.add_argument("--run", required=True, help="the training run's folder (config.json, val_log.csv)")
    ap.add_argument("--snapshots", nargs="*", default=[], help="snapshot folders of the run (model + config)")
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="default: benchmarks/prior-training-<modality>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    run = Path(args.run)
    tag = "ct" if args.modality == "CT" else "mri"
    shipped = load_prior(MODELS[args.modality])
    cfg = run_config(run)
    train = SliceDataset(cfg.data, cfg.image_size, args.modality, cfg.hu_window, cfg.axis, cfg.min_foreground,
                         cfg.num_workers)
    val = validation_set(cfg, train, args.modality, torch.device("cpu"))
    logged = val_log(run)
    cs = cases(args.modality, Path(args.data))
    rows = [{"step": 0, "label": f"shipped {MODELS[args.modality]}", "val_loss": validation_loss(
        shipped.model, shipped.sde, val), "psnr": evaluate(shipped, shipped, args.modality, cs)}]
    log(f"step 0: val loss {rows[0]['val_loss']:.5f}, PSNR {rows[0]['psnr']['mean']:.3f}")
    for snap in sorted(args.snapshots, key=lambda p: json.loads((Path(p) / "config.json").read_text())["steps"]):
        prior = load_prior(snap)
        step = int(prior.config["steps"])
        loss = logged.get(step)
        if loss is None:
            loss = validation_loss(prior.model, prior.sde, val)
        rows.append({"step": step, "label": str(snap), "val_loss": loss,
                     "psnr": evaluate(prior, shipped, args.modality, cs)})
        log(f"step {step}: val loss {loss:.5f}, PSNR {rows[-1]['psnr']['mean']:.3f}")
    record = {"run": str(run), "log": logged, "rows": rows,
              "command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
              "training": json.loads((run / "config.json").read_text())["training"]}
    Path(args.json or ROOT / "benchmarks" / f"prior-training-{tag}.json").write_text(json.dumps(record, indent=1))
    tasks = [k for k in rows[0]["psnr"] if k != "mean"]
    subjects = ", ".join(Path(p).name for p in VALIDATION[args.modality])
    lines = [f"Run `{run}` (`scorerecon train --init-from {MODELS[args.modality]} --val-data` other subjects "
             f"than the training data, resumed with `--resume`); step 0 is the shipped prior it started from. "
             f"*val loss*: σ²-weighted denoising loss of {int(val['x0'].shape[0])} fixed patches of "
             f"{', '.join(val['describe'].get('sources', [])) or 'the --val-data'}; "
             f"*PSNR*: the default score reconstruction (the shipped prior's recommended settings for every row) on "
             f"the validation subjects {subjects}, 128², noisy, mean over subjects per task. Step 0 is the prior "
             f"shipped before the run (kept in git history); intermediate rows were measured on weight snapshots the "
             f"repository does not keep (8.7 MB each); the last row is the checkpoint shipped from the run when "
             f"its mean validation PSNR is the best.", "",
             "| step | val loss | mean PSNR | " + " | ".join(tasks) + " |", "|---" * (3 + len(tasks)) + "|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['val_loss']:.5f} | {r['psnr']['mean']:.3f} | "
                     + " | ".join(f"{r['psnr'][k]:.2f}" for k in tasks) + " |")
    best = max(rows, key=lambda r: r["psnr"]["mean"])
    lines += ["", "Validation loss at every checkpoint of the run: "
              + ", ".join(f"{s}: {v:.5f}" for s, v in sorted(logged.items())) + ".", "",
              f"Best mean validation PSNR: step {best['step']} ({best['psnr']['mean']:.3f} dB, "
              f"{best['psnr']['mean'] - rows[0]['psnr']['mean']:+.3f} dB over the shipped prior).",
              f"\nWall time: {(time.time() - t0) / 60:.1f} min."]
    _results.update_section(f"prior-training-{tag}", "\n".join(lines), record["command"])


if __name__ == "__main__":
    main()
