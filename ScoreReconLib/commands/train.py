"""``scorerecon train``: train a score prior on a folder of CT or MR images.

Single process: ``scorerecon train --data DIR --output CKPT --size 128 --steps 20000``.
Several GPUs or CPU processes: ``torchrun --nproc_per_node=K -m ScoreReconLib train ...`` (the
processes are detected from torchrun's ``RANK``/``WORLD_SIZE``; only rank 0 writes).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ScoreReconError
from ..threads import add_threads_option
from .options import add_device_option, add_trust_option


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 32,64,64") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 32,64,64")
    return values


def _bool_list(text: str) -> list[bool]:
    table = {"1": True, "true": True, "yes": True, "t": True, "0": False, "false": False, "no": False, "f": False}
    try:
        return [table[v.lower()] for v in text.replace(" ", "").split(",") if v]
    except KeyError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of 0/1, e.g. 0,0,1") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a score prior on your images",
        description="Train an unconditional score prior (denoising score matching) on 2-D slices of a folder of "
                    "DICOM series, NIfTI, NRRD, MHA, PNG or .npy images. Writes a checkpoint folder "
                    "(model.safetensors + config.json + training_state.pt), loss_log.csv and sample grids. "
                    "Run under torchrun for several processes/GPUs.",
    )
    p.add_argument("--data", required=True, help="folder (searched recursively) or one image file")
    p.add_argument("--val-data", default=None, metavar="DIR",
                   help="images of OTHER subjects (never slices of the training volumes): their denoising loss is "
                        "logged to val_log.csv and config.json at every checkpoint")
    p.add_argument("--output", required=True, help="checkpoint folder to write (must be new unless --resume)")
    p.add_argument("--prior", choices=["patch", "whole"], default="patch",
                   help="patch (default): a position-aware patch network that reconstructs any image size; whole: "
                        "a whole-image network for --size images only")
    p.add_argument("--patch-size", type=int, default=32, help="patch side in pixels for --prior patch (default 32)")
    p.add_argument("--no-coordinates", dest="coordinates", action="store_false",
                   help="--prior patch: leave out the two field-of-view coordinate channels (a translation-invariant "
                        "patch network; by default the network sees where in the field of view each patch lies)")
    p.add_argument("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(0.5, 2.0),
                   help="patch priors: canvas sizes from LOW*size to HIGH*size pixels per field of view are "
                        "drawn in training (pixel-size augmentation; default 0.5 2.0)")
    p.add_argument("--size", type=int, default=128,
                   help="image side in pixels (default 128); for a patch prior the grid the training slices are "
                        "stored at (256 or more keeps fine detail for large inputs)")
    p.add_argument("--steps", type=int, default=10000, help="total optimisation steps (default 10000)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step and process (default 8)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default min(1000, steps/10))")
    p.add_argument("--modality", choices=["CT", "MR", "ct", "mr"], default=None,
                   help="CT or MR (default: guessed from the first image)")
    p.add_argument("--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="CT window in HU mapped to [0, 1] (default -1000 2000)")
    p.add_argument("--axis", default="0", choices=["0", "1", "2", "all"],
                   help="volume axis to slice along (0 = first array axis, axial for most scans) or all")
    p.add_argument("--channels", type=_int_list, default=None, help="UNet channels per level (default 32,64,64)")
    p.add_argument("--attention-levels", type=_bool_list, default=None,
                   help="self-attention per level as 0/1 (default 0,0,1)")
    p.add_argument("--res-blocks", type=int, default=None, help="residual blocks per level (default 1)")
    p.add_argument("--sde", choices=["ve", "vp"], default="ve", help="forward SDE (default ve, as the paper)")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="VE sigma_max (default: largest pairwise distance between training slices)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (default 0.999)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="save every K steps (0: only at the end)")
    p.add_argument("--sample-every", type=int, default=0, help="write a sample grid every M steps (0: never)")
    p.add_argument("--no-augment", action="store_true", help="turn off flips/rotations/zoom")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (faster on recent GPUs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --output (its settings are kept; --steps is the new total)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_device_option(p)
    p.add_argument("--num-workers", type=int, default=0, help="threads reading the image files")
    p.add_argument("--description", default="", help="free text about the training data for the model card")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (fine-tune, or continue with a fresh optimizer)")
    add_trust_option(p, "--init-from a checkpoint")
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train
    from ..utils import check_output_folder

    check_output_folder(args.output, "--output")
    network = {}
    if args.channels is not None:
        network["channels"] = args.channels
        if args.attention_levels is None:
            network["attention_levels"] = [False] * (len(args.channels) - 1) + [True]
    if args.attention_levels is not None:
        network["attention_levels"] = args.attention_levels
    if args.res_blocks is not None:
        network["num_res_blocks"] = args.res_blocks
    if args.sigma_max is not None and args.sde != "ve":
        raise ScoreReconError("--sigma-max applies to --sde ve only; drop it for vp")
    cfg = TrainConfig(
        data=args.data, output=args.output, image_size=args.size, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup=args.warmup, ema=args.ema, modality=args.modality.upper() if args.modality else None,
        hu_window=tuple(args.hu_window) if args.hu_window else None, axis=args.axis, augment=not args.no_augment,
        network=network, sde=args.sde, sigma_max=args.sigma_max, checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every, resume=args.resume, seed=args.seed, device=args.device, amp=args.amp,
        num_workers=args.num_workers, description=args.description, show_progress=not args.quiet,
        init_from=args.init_from, trust_unverified=args.trust_unverified, prior=args.prior, patch_size=args.patch_size,
        coordinates=args.coordinates,
        scale_range=tuple(args.scale_range), val_data=args.val_data,
    )
    result = train(cfg)
    from ..distributed import dist_env

    if dist_env()[0] == 0:  # only rank 0 reports
        sigma = f", sigma_max {result.sigma_max}" if result.sigma_max is not None else ""
        print(f"trained steps {result.start_step}..{result.steps}, final loss {result.final_loss:.4f}{sigma}, "
              f"{result.seconds:.0f} s; checkpoint in {result.output}", file=sys.stderr)
    return 0
