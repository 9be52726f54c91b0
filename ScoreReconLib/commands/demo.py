"""``scorerecon demo``: reconstruct a shipped held-out sample with the classical methods and the
default prior, print a PSNR/SSIM/seconds table, write NRRD volumes and one PNG figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..operators import TASKS  # every task the CLI simulates has a demo
from ..threads import add_threads_option
from ..vocabulary import MRI_PHASES, SAMPLER_NAMES
from .options import add_device_option, add_precision_option, add_trust_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run ScoreRecon on a shipped sample and compare with classical methods",
                       description=__doc__)
    p.add_argument("--task", choices=TASKS, default="sparse-ct")
    p.add_argument("--output", default="scorerecon-demo", help="output folder (default: ./scorerecon-demo)")
    p.add_argument("--model", default=None, help="default-ct / default-mri (by task) or a checkpoint folder")
    add_trust_option(p)
    add_precision_option(p)
    p.add_argument("--input", default=None, help="use this image instead of the shipped sample")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="proximal",
                   help="proximal (default; the model's recommended settings, see reconstruct --help), "
                        "fast (DDS-style) or song2021")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--samples", type=int, default=None,
                   help="posterior samples (mean and std map; default: the model's recommendation)")
    p.add_argument("--views", type=int, default=23, help="sparse-ct: projection views (default 23)")
    p.add_argument("--arc", type=float, default=90.0, help="limited-angle-ct: arc in degrees (default 90)")
    p.add_argument("--acceleration", type=float, default=8.0, help="mri: undersampling factor (default 8)")
    p.add_argument("--phase", choices=MRI_PHASES, default=MRI_PHASES[0],
                   help="mri: image phase, smooth (as a scanner records it, default) or zero (a real image)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="measurement noise std as a fraction of the largest |measurement| (e.g. 0.01 = 1 %%; "
                        "default 0, noise-free)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="image grid N x N (default: the model's working size; a patch prior takes any N, a whole-image "
                        "prior only its training size)")
    add_device_option(p)
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import Image, read_image, write_image
    from ..utils import check_output_folder

    check_output_folder(args.output, "--output")
    from ..datasources import sample_path
    from ..evaluation import CLASSICAL, image_case_from_array, make_case, run_classical, run_score, task_modality
    from ..figures import comparison_panels, panel_figure
    from ..networks import load_prior
    from ..utils import resolve_device, seed_everything

    seed_everything(args.seed)
    device = resolve_device(args.device)
    modality = task_modality(args.task)
    if args.model is not None and not str(args.model).strip():
        from ..errors import ScoreReconError

        raise ScoreReconError("--model is empty; give default-ct, default-mri or a checkpoint folder, or leave it out")
    model = args.model or ("default-mri" if modality == "MR" else "default-ct")
    prior = load_prior(model, device=device, trust_unverified=args.trust_unverified, precision=args.precision)
    src = Path(args.input) if args.input else sample_path(args.task)
    image = read_image(src)
    if image.array.ndim == 3:  # a volume (or a (1, H, W) stack): its middle slice, 2-D geometry
        image = Image(image.array[image.array.shape[0] // 2], tuple(image.spacing[:2]), tuple(image.origin[:2]),
                      (1.0, 0.0, 0.0, 1.0), image.modality)
    size = prior.size_for(args.size)
    x, norm, pixel_mm = image_case_from_array(image, size, modality)
    opts = {"sparse-ct": {"views": args.views}, "limited-angle-ct": {"arc": args.arc}, "metal-ct": {},
            "mri": {"acceleration": args.acceleration, "center_fraction": 0.08, "mask": "equispaced",
                    "phase": args.phase}}[args.task]
    if not (args.noise >= 0 and np.isfinite(args.noise)):
        from ..errors import ScoreReconError

        raise ScoreReconError(f"--noise must be a finite fraction >= 0, e.g. 0.01, got {args.noise}")
    case = make_case(src.name, x, args.task, seed=args.seed, noise=args.noise, **opts)

    print(f"ScoreRecon demo: {args.task} on {src.name} ({size}x{size}), "
          f"model {model}, device {device}", file=sys.stderr)
    records = [run_classical(case, m) for m in CLASSICAL[args.task]]
    score_rec = run_score(case, prior, sampler=args.sampler, samples=args.samples, seed=args.seed,
                          steps=args.steps, device=device, label="ScoreRecon")
    records.append(score_rec)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    geom = Image(np.zeros((1, 1), np.float32), (pixel_mm, pixel_mm), tuple(image.origin[:2]),
                 tuple(image.direction[:4]) if len(image.direction) == 4 else (1.0, 0.0, 0.0, 1.0))

    def save(name: str, t: torch.Tensor, physical: bool = True) -> str:
        arr = t.detach().cpu().numpy()[0, 0].astype(np.float32)
        arr = norm.inverse(arr) if physical else arr * (norm.high - norm.low)
        write_image(geom.with_array(arr), out / f"{name}.nrrd")
        return f"{name}.nrrd"

    files = [save("reference", case.x)]
    for r in records:
        files.append(save(r.method.lower().replace(" ", "-"), r.extra["image"]))
    if score_rec.extra.get("std") is not None:
        files.append(save("scorerecon-std", score_rec.extra["std"], physical=False))

    fig_panels = comparison_panels(case, records, score_rec, norm, modality)
    fig = panel_figure(fig_panels, out / "demo.png", columns=4)
    files.append(fig.name)

    print(f"\n{'method':<14}{'PSNR (dB)':>10}{'SSIM':>8}{'seconds':>10}")
    for r in records:
        print(f"{r.method:<14}{r.psnr:>10.2f}{r.ssim:>8.3f}{r.seconds:>10.2f}")
    summary = {"task": args.task, "sample": src.name, "model": model, "sampler": args.sampler,
               "samples": score_rec.extra.get("samples"), "noise": args.noise, "seed": args.seed,
               "nfe_per_sample": score_rec.extra.get("nfe"), "nfe_per_slice": score_rec.extra.get("nfe_per_slice"),
               "results": [{"method": r.method, "psnr": r.psnr, "ssim": r.ssim, "seconds": r.seconds}
                           for r in records]}
    from ..data import save_json

    save_json(summary, out / "metrics.json")
    files.append("metrics.json")
    print(f"\nwrote {', '.join(files)} to {out}/")
    return 0
