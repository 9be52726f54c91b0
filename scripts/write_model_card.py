"""Write MODEL_CARD.md for a checkpoint folder from its config.json, tuned.json and loss_log.csv.

    python scripts/write_model_card.py Resources/models/default-ct --limits "..." --grid samples.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

LICENCES = {
    "CT": "InVesalius example head CT (Debian `invesalius-examples`, labelled GPL-2 by its Debian copyright file).",
    "MR": "Colin27 T1 (Debian `mricron-data`, BSD-3-clause per its package) and the MNI ICBM152 2009a T1 "
          "template (the `nilearn` wheel, BSD-3-Clause; nilearn notes the template's own licence as unknown).",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--limits", default="")
    ap.add_argument("--grid", default=None, help="sample grid PNG inside the folder")
    args = ap.parse_args()
    folder = Path(args.folder)
    cfg = json.loads((folder / "config.json").read_text())
    tuned = json.loads((folder / "tuned.json").read_text()) if (folder / "tuned.json").exists() else {}
    losses = []
    if (folder / "loss_log.csv").exists():
        with open(folder / "loss_log.csv") as fh:
            losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    last = sum(losses[-50:]) / max(1, len(losses[-50:])) if losses else cfg.get("final_loss")
    net, sde, data = cfg["network"], cfg["sde"], cfg.get("data", {})
    hist = cfg.get("training_history", [])
    lines = [
        f"# Model card: {folder.name}",
        "",
        f"Score prior for ScoreRecon, {cfg['modality']}, {cfg['image_size']}×{cfg['image_size']} pixels.",
        "",
        "## Data",
        f"- {cfg.get('training', {}).get('description') or data.get('description', '')}",
        f"- Sources: {', '.join(data.get('sources', []))} ({data.get('n_slices', '?')} 2-D slices along "
        f"axis {data.get('axis', '?')}, slices under {data.get('min_foreground', 0.05):.0%} foreground skipped).",
        f"- Licences: {LICENCES.get(cfg['modality'], 'see docs/data.md')}",
        "- Prepared offline by `scorerecon prepare-data --output data` (docs/data.md); evaluation uses "
        "other patients/subjects (`data/heldout/`).",
        "",
        "## Preprocessing",
        f"- Normalisation: {json.dumps(cfg['normalization'])} "
        + ("(HU window mapped to [0, 1])." if cfg["modality"] == "CT"
           else "(each volume scaled so its 99.5th percentile of non-zero voxels is 1)."),
        "- Pad to square keeping the physical aspect, antialiased resize to the model size; augmentation: flips, "
        "±10° rotations, 0.9–1.1 zoom, ±5 % shifts.",
        "",
        "## Network and SDE",
        f"- MONAI `DiffusionModelUNet`, channels {net['channels']}, attention levels {net['attention_levels']}, "
        f"{net['num_res_blocks']} res block(s) per level; VE inputs scaled by 1/√(σ²+0.25), output divided by σ.",
        f"- SDE: {json.dumps(sde)}.",
        "",
        "## Training",
        f"- `scorerecon train --size {cfg['image_size']} --batch-size 32 --lr 2e-4 --channels "
        f"{','.join(map(str, net['channels']))} --attention-levels 0,0,0,1 --axis all`, EMA 0.999, on one NVIDIA H100.",
    ]
    for h in hist:
        lines.append(f"- {h['steps']} steps (seed {h['seed']}"
                     + (f", started from {h['init_from']}" if h.get("init_from") else "")
                     + f"), final loss {h['final_loss']:.4f}.")
    lines += [
        f"- Total {cfg.get('total_steps', cfg.get('steps'))} steps; mean loss of the last 50 logged steps "
        f"{last:.4f} (σ²-weighted denoising score matching).",
        "",
        "## Sampler settings",
        f"- Defaults stored with the model: {json.dumps({k: v for k, v in cfg['recommended'].items() if k != 'tasks'})}"
        " (the official λ and snr of the proximal sampler, with 25 steps instead of 1000).",
    ]
    for task, per in (tuned.get("tasks") or {}).items():
        for sampler, v in per.items():
            lines.append(f"- Tuned by `scorerecon tune` for {task} ({json.dumps(v.get('task_options', {}))}), "
                         f"sampler {sampler}: λ = {v['lam']} (PSNR {v['psnr']:.2f} dB on {v['n_images']} "
                         f"validation slices of {v['validated_on']}; these come from the training volumes, "
                         "because the only other images available offline are the held-out test set).")
    if args.grid:
        lines += ["", "## Unconditional samples", f"![samples]({args.grid})",
                  f"`scorerecon sample --model {folder} --n 8 --steps 200 --output {folder / args.grid}` "
                  "(this grid was "
                  "drawn with the reverse-diffusion predictor, before `sample` switched to the ancestral one)."]
    lines += ["", "## Known limits", args.limits or "-", ""]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
