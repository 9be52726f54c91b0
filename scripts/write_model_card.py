"""Write MODEL_CARD.md for a checkpoint folder from its config.json, tuned.json and loss_log.csv.

    python scripts/write_model_card.py Resources/models/default-ct --limits "..." --grid samples.png \
        --machine "2-core CPU" --history "..."

Everything in the card is read from the checkpoint's files, except the free-text ``--limits``,
``--machine`` (where it was trained) and ``--history`` (earlier runs it started from).
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


def _train_command(cfg: dict) -> str:
    t = cfg.get("training", {})
    net = cfg["network"]
    parts = ["scorerecon train", f"--prior {t.get('prior', 'whole')}", f"--size {t.get('image_size')}",
             f"--batch-size {t.get('batch_size')}", f"--lr {t.get('lr')}", f"--axis {t.get('axis')}",
             f"--channels {','.join(map(str, net['channels']))}",
             f"--attention-levels {','.join(str(int(a)) for a in net['attention_levels'])}"]
    if t.get("prior") == "patch":
        parts += [f"--patch-size {t.get('patch_size')}",
                  f"--scale-range {' '.join(str(v) for v in t.get('scale_range', []))}"]
    if t.get("init_from"):
        parts.append(f"--init-from {t['init_from']}")
    if t.get("val_data"):
        parts.append(f"--val-data {t['val_data']}")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--limits", default="")
    ap.add_argument("--grid", default=None, help="sample grid PNG inside the folder")
    ap.add_argument("--machine", default="", help="where it was trained, e.g. '2-core CPU, torch 2.13.0+cpu'")
    ap.add_argument("--history", default="", help="free text: what this run started from")
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
    spec = cfg.get("prior") or {"kind": "whole"}
    t = cfg.get("training", {})
    n_params = None
    if (folder / "model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            n_params = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    if spec["kind"] == "patch":
        p = spec["patch_size"]
        what = (f"Patch score prior for ScoreRecon, {cfg['modality']}: scores {p}×{p} "
                "patches with their field-of-view coordinates, so it reconstructs images of any size at their own "
                f"grid (tools without an input grid use {spec.get('default_size', 128)}²).")
        prep = (f"- Slices stored at {cfg['image_size']}² (pad to square keeping the physical aspect, antialiased "
                f"resize; median source pixel {spec.get('source_pixel_mm')} mm); every training patch is cut from "
                f"a canvas of s·{cfg['image_size']} pixels per field of view, log s uniform over "
                f"{spec.get('scale_range')}, zero padding of one patch around the image, ±10° rotation, left–right "
                f"flips, intensity gain {t.get('intensity_range')}.")
    else:
        n = cfg["image_size"]
        what = f"Whole-image score prior for ScoreRecon, {cfg['modality']}, {n}×{n} pixels."
        prep = ("- Pad to square keeping the physical aspect, antialiased resize to the model size; augmentation: "
                "flips, ±10° rotations, 0.9–1.1 zoom, ±5 % shifts.")
    lines = [
        f"# Model card: {folder.name}",
        "",
        what,
        "",
        "## Data",
        f"- {t.get('description') or data.get('description', '')}",
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
        prep,
        "",
        "## Network and SDE",
        f"- MONAI `DiffusionModelUNet`, channels {net['channels']}, attention levels {net['attention_levels']}, "
        f"{net['num_res_blocks']} res block(s) per level, {net.get('coord_channels', 0)} coordinate input channels"
        + (f", {n_params / 1e6:.2f} M parameters" if n_params else "")
        + "; VE inputs scaled by 1/√(σ²+0.25), output divided by σ.",
        f"- SDE: {json.dumps(sde)}.",
        "",
        "## Training",
        f"- `{_train_command(cfg)}`" + (f", on {args.machine}." if args.machine else "."),
    ]
    if args.history:
        lines.append(f"- {args.history}")
    for h in cfg.get("training_history", []):
        lines.append(f"- Earlier run: {h['steps']} steps (seed {h['seed']}"
                     + (f", started from {h['init_from']}" if h.get("init_from") else "")
                     + f"), final loss {h['final_loss']:.4f}.")
    lines.append(f"- This run: {cfg.get('steps')} steps; mean loss of the last 50 logged rows {last:.4f} "
                 "(σ²-weighted denoising score matching).")
    if cfg.get("val_loss") is not None:
        lines.append(f"- Validation loss (other subjects, {json.dumps(data.get('validation', {}).get('sources'))}): "
                     f"{cfg['val_loss']:.4f}.")
    lines += [
        "",
        "## Sampler settings",
        "- Defaults stored with the model: "
        f"{json.dumps({k: v for k, v in cfg['recommended'].items() if k != 'tasks'})}.",
    ]
    for task, per in ((cfg.get("recommended") or {}).get("tasks") or {}).items():
        lines.append(f"- {task}: {json.dumps(per)}")
    for task, per in (tuned.get("tasks") or {}).items():
        for sampler, v in per.items():
            lines.append(f"- Tuned by `scorerecon tune` for {task}, sampler {sampler}: {json.dumps(v)}.")
    if args.grid:
        lines += ["", "## Unconditional samples", f"![samples]({args.grid})",
                  f"`scorerecon sample --model {folder} --n 8 --steps 200 --output {folder / args.grid}`."]
    lines += ["", "## Known limits", args.limits or "-", ""]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


if __name__ == "__main__":
    main()
