"""``scorerecon sample``: draw unconditional samples from a prior and save them as a PNG grid."""

from __future__ import annotations

import argparse
import sys
import time

from ..threads import add_threads_option
from .options import add_device_option, add_precision_option, add_trust_option


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw unconditional samples from a prior (PNG grid)",
        description="Draw unconditional samples from a score prior (predictor-corrector sampler) and save them "
                    "as one grayscale PNG grid, to check what a prior has learned.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder, or default-ct / default-mri")
    add_trust_option(p)
    add_precision_option(p)
    p.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the prior's recommended steps, capped at 1000)")
    p.add_argument("--snr", type=float, default=None, help="Langevin corrector signal-to-noise ratio (default 0.16)")
    p.add_argument("--sampler", choices=["pc", "em"], default="pc",
                   help="pc: reverse diffusion + Langevin corrector; em: Euler-Maruyama (half the cost)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="image grid N x N (default: the model's working size; a patch prior takes any N, a whole-image "
                        "prior only its training size)")
    add_device_option(p)
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ScoreReconError
    from ..networks import load_prior
    from ..training import em_sample, save_image_grid
    from ..utils import resolve_device

    if args.n < 1:
        raise ScoreReconError(f"--n {args.n} must be at least 1")
    if not str(args.output).lower().endswith(".png"):
        raise ScoreReconError(f"--output {args.output} must be a .png file")
    from ..utils import check_output_path

    check_output_path(args.output, "--output")
    device = resolve_device(args.device)
    prior = load_prior(args.model, device, trust_unverified=args.trust_unverified, precision=args.precision)
    steps = args.steps if args.steps is not None else min(int(prior.recommended.get("steps", 1000)), 1000)
    if steps < 2:
        raise ScoreReconError(f"--steps {steps} is too few; use at least 10 (the prior's default is tuned)")
    size = prior.size_for(args.size)
    shape = (args.n, 1, size, size)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sample", unit="step")

    def progress(done: int, total: int, message: str) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    t0 = time.perf_counter()
    try:
        if args.sampler == "pc":
            from ..sampling import pc_sample

            gen = torch.Generator(device=device).manual_seed(args.seed)
            snr = args.snr if args.snr is not None else 0.16
            with torch.no_grad():
                x = pc_sample(prior, shape, steps=steps, snr=snr, generator=gen, progress=progress)
        else:
            gen = torch.Generator().manual_seed(args.seed)
            with torch.no_grad():
                tiles = torch.Generator(device=device).manual_seed(args.seed + 1)  # patch priors' grid offsets
                x = em_sample(lambda x, t: prior.score(x, t, generator=tiles), prior.sde, shape, steps=steps,
                              generator=gen, device=device, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    save_image_grid(x, args.output)
    print(f"{args.n} samples of {size}x{size} ({args.sampler}, {steps} steps, "
          f"{time.perf_counter() - t0:.1f} s) written to {args.output}", file=sys.stderr)
    return 0
