"""``scorerecon tune``: pick λ (and snr for the proximal sampler) on validation images by a small grid
search and store them in a ``tuned.json`` sidecar beside the model's ``config.json``.

``load_prior`` merges the sidecar into ``prior.recommended`` (per task and sampler), so later
``reconstruct`` calls use the tuned values unless ``--lam``/``--snr`` are given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from ..threads import add_threads_option
from .evaluate import add_task_options, task_options
from .options import add_device_option, add_precision_option, add_trust_option


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose λ (and snr) on validation images; write a tuned.json sidecar",
                       description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint folder (or default-ct / default-mri)")
    add_trust_option(p)
    add_precision_option(p)
    p.add_argument("--data", required=True, help="validation images (not the test images)")
    add_task_options(p)
    p.add_argument("--sampler", choices=("proximal", "fast"), default="proximal",
                   help="sampler to tune (song2021 has no λ)")
    p.add_argument("--lams", type=_floats, default=None, help="λ grid (default 0.25,0.5,0.75,0.9,1.0)")
    p.add_argument("--snrs", type=_floats, default=None, help="snr grid for proximal (default 0.08,0.16,0.3)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="image grid N x N (default: the model's working size; a patch prior takes any N, a whole-image "
                        "prior only its training size)")
    add_device_option(p)
    p.add_argument("--output", default=None, help="sidecar path (default: <model folder>/tuned.json)")
    p.add_argument("--dry-run", action="store_true", help="print the choice without writing the sidecar")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import save_json
    from ..errors import ScoreReconError
    from ..evaluation import load_slices, make_case, run_score, task_modality
    from ..networks import load_prior
    from ..utils import resolve_device

    device = resolve_device(args.device)
    prior = load_prior(args.model, device=device, trust_unverified=args.trust_unverified, precision=args.precision)
    model_dir = Path(prior.config.get("path", args.model))
    if not args.dry_run:
        from ..utils import check_output_path

        check_output_path(Path(args.output) if args.output else model_dir / "tuned.json", "--output")
    lams = args.lams or [0.25, 0.5, 0.75, 0.9, 1.0]
    snrs = (args.snrs or [0.08, 0.16, 0.3]) if args.sampler != "fast" else [0.0]
    if any(not 0 <= v <= 1 for v in lams):
        raise ScoreReconError("--lams values must lie in [0, 1]")
    slices = load_slices(args.data, task_modality(args.task), prior.size_for(args.size), args.n_images, args.per_volume,
                         normalization=prior.normalization if task_modality(args.task) == "CT" else None)
    cases = [make_case(n, x, args.task, seed=args.seed + i, noise=args.noise, **task_options(args))
             for i, (n, x) in enumerate(slices)]
    results = []
    for lam, snr in itertools.product(lams, snrs):
        recs = [run_score(c, prior, sampler=args.sampler, seed=args.seed, steps=args.steps, lam=lam,
                          snr=snr if args.sampler != "fast" else None, device=device) for c in cases]
        psnr = float(np.mean([r.psnr for r in recs]))
        ssim = float(np.mean([r.ssim for r in recs]))
        results.append({"lam": lam, "snr": snr, "psnr": psnr, "ssim": ssim})
        print(f"lam={lam:.3f} snr={snr:.3f}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}", file=sys.stderr)
    best = max(results, key=lambda r: (r["psnr"], r["ssim"]))
    choice = {"lam": best["lam"]}
    if args.sampler != "fast":
        choice["snr"] = best["snr"]
    if args.steps is not None:
        choice["steps"] = args.steps
    print(json.dumps({"task": args.task, "sampler": args.sampler, "choice": choice, "psnr": best["psnr"]}))
    if args.dry_run:
        return 0
    sidecar = Path(args.output) if args.output else model_dir / "tuned.json"
    if not args.output and not model_dir.is_dir():
        raise ScoreReconError(f"cannot find the model folder of {args.model}; pass --output FILE for the sidecar")
    try:
        existing = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
    except ValueError as exc:
        raise ScoreReconError(f"existing sidecar {sidecar} is not valid JSON ({exc}); delete it and re-run") from None
    existing.setdefault("tasks", {}).setdefault(args.task, {})[args.sampler] = {
        **choice, "validated_on": str(args.data), "n_images": len(cases), "psnr": best["psnr"],
        "ssim": best["ssim"], "grid": results, "task_options": task_options(args)}
    save_json(existing, sidecar)
    print(f"wrote {sidecar}", file=sys.stderr)
    return 0
