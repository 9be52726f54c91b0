"""``scorerecon evaluate``: PSNR/SSIM of classical methods and the score prior on held-out images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..threads import add_threads_option
from ..vocabulary import MRI_MASKS, MRI_PHASES, SAMPLER_NAMES, TASKS
from .options import add_device_option, add_precision_option, add_trust_option


def add_task_options(p: argparse.ArgumentParser) -> None:
    """Measurement-setup options shared by evaluate, tune and the benchmark."""
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--views", type=int, default=23, help="sparse-ct: measured views (default 23)")
    p.add_argument("--arc", type=float, default=90.0, help="limited-angle-ct: arc in degrees (default 90)")
    p.add_argument("--acceleration", type=float, default=8.0, help="mri: acceleration (default 8)")
    p.add_argument("--center-fraction", type=float, default=0.08, help="mri: fully sampled centre (default 0.08)")
    p.add_argument("--mask", default="equispaced", choices=MRI_MASKS)
    p.add_argument("--phase", default=MRI_PHASES[0], choices=MRI_PHASES,
                   help="mri: image phase of the simulated k-space, smooth (as a scanner records it, the default; "
                        "the reconstructions use the phase estimated from the k-space centre) or zero (a real image)")
    p.add_argument("--noise", type=float, default=0.0, help="relative measurement noise (default 0)")
    p.add_argument("--n-images", type=int, default=8, help="number of test slices (default 8)")
    p.add_argument("--per-volume", type=int, default=3, help="slices taken from each volume (default 3)")


def task_options(args: argparse.Namespace) -> dict:
    if args.task == "sparse-ct":
        return {"views": args.views}
    if args.task == "limited-angle-ct":
        return {"arc": args.arc}
    if args.task == "mri":
        return {"acceleration": args.acceleration, "center_fraction": args.center_fraction, "mask": args.mask,
                "phase": args.phase}
    return {}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare FBP/TV/zero-filled/CS/score on held-out images",
                       description=__doc__)
    p.add_argument("--model", required=True, help="default-ct, default-mri or a checkpoint folder")
    add_trust_option(p)
    add_precision_option(p)
    p.add_argument("--data", required=True, help="folder of held-out images or volumes (or one file)")
    add_task_options(p)
    p.add_argument("--methods", default=None,
                   help="comma list from fbp,tv,zero-filled,cs,score (default: the task's classical methods + score)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="proximal",
                   help="proximal (default; the model's recommended settings, see reconstruct --help), "
                        "fast (DDS-style) or song2021")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--snr", type=float, default=None)
    p.add_argument("--samples", type=int, default=None,
                   help="posterior samples averaged (default: the model's recommendation, else 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="image grid N x N (default: the model's working size; a patch prior takes any N, a whole-image "
                        "prior only its training size)")
    add_device_option(p)
    p.add_argument("--output", default=None,
                   help="write the table (Markdown), a JSON of all records and, with the score method, one figure "
                        "per slice (figures/NAME.png: every method in the soft-tissue and bone windows for CT, "
                        "|error| and posterior std on one scale, colour bars in HU / MR units) here")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import save_json
    from ..errors import ScoreReconError
    from ..evaluation import (
        CLASSICAL,
        load_slices,
        make_case,
        markdown_table,
        run_classical,
        run_score,
        summarize,
        task_modality,
    )
    from ..figures import comparison_panels, panel_figure
    from ..networks import load_prior
    from ..utils import atomic_path, check_output_folder, resolve_device

    if args.output:
        check_output_folder(args.output, "--output")
    device = resolve_device(args.device)
    prior = load_prior(args.model, device=device, trust_unverified=args.trust_unverified, precision=args.precision)
    modality = task_modality(args.task)
    methods = args.methods.split(",") if args.methods else [*CLASSICAL[args.task], "score"]
    for m in methods:
        if m != "score" and m not in CLASSICAL[args.task]:
            raise ScoreReconError(f"method '{m}' does not fit {args.task}; choose from "
                                  f"{', '.join([*CLASSICAL[args.task], 'score'])}")
    slices = load_slices(args.data, modality, prior.size_for(args.size), args.n_images, args.per_volume,
                         normalization=prior.normalization if modality == "CT" else None)
    records = []
    figures = []
    for i, (name, x) in enumerate(slices):
        case = make_case(name, x, args.task, seed=args.seed + i, noise=args.noise, **task_options(args))
        case_records = []
        for m in methods:
            if m == "score":
                rec = run_score(case, prior, sampler=args.sampler, samples=args.samples, seed=args.seed + i,
                                steps=args.steps, lam=args.lam, snr=args.snr, device=device,
                                label=f"score-{args.sampler}")
            else:
                rec = run_classical(case, m)
            records.append(rec)
            case_records.append(rec)
            print(f"[{i + 1}/{len(slices)}] {name} {rec.method}: {rec.psnr:.2f} dB, SSIM {rec.ssim:.3f}, "
                  f"{rec.seconds:.1f} s", file=sys.stderr)
        if args.output and "score" in methods and len(methods) > 1:  # the score record last, as the panels expect
            order = [r for r in case_records if not r.method.startswith("score")] + \
                [r for r in case_records if r.method.startswith("score")]
            figures.append((f"{i:02d}_{_safe(name)}", comparison_panels(case, order, order[-1], prior.normalization,
                                                                          modality), len(methods) + 1))
            for r in case_records:
                r.extra.pop("image", None)  # the figure has what it needs; free the images
    summary = summarize(records)
    table = markdown_table(summary, f"{args.task} {task_options(args)} on {len(slices)} slices of {args.data}")
    print(table)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "table.md") as tmp:
            tmp.write_text(table + "\n", encoding="utf-8")
        for stem, panels, columns in figures:
            (out / "figures").mkdir(exist_ok=True)
            panel_figure(panels, out / "figures" / f"{stem}.png", columns=columns)
        save_json({"task": args.task, "options": task_options(args), "model": args.model, "summary": summary,
                   "records": [{"case": r.case, "method": r.method, "psnr": r.psnr, "ssim": r.ssim,
                                "seconds": r.seconds} for r in records]}, out / "results.json")
    return 0


def _safe(name: str) -> str:
    """A file-name stem for a slice name such as ``colin27_t1.nrrd[33]``."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:80]
