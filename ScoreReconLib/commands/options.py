"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import argparse

#: what --device accepts
DEVICE_HELP = "auto (default: cuda if available), cpu, cuda or cuda:N"


def add_device_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``: where the work runs (resolved by :func:`ScoreReconLib.utils.resolve_device`)."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_precision_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--precision``: the score network's arithmetic (:mod:`ScoreReconLib.networks.precision`)."""
    from ..vocabulary import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="score network arithmetic: auto (default: bfloat16 on a CPU with native bf16 instructions, "
                        "about 1.6x faster at the same PSNR; float32 elsewhere), fp32 or bf16")


def add_trust_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "load a checkpoint") -> None:
    """``--trust-unverified``: accept a checkpoint without checksums in its config.json."""
    p.add_argument("--trust-unverified", action="store_true",
                   help=f"{what} that has no checksums (weights_sha256 / config_sha256) in its config.json, e.g. one "
                        "from before checksums covered the config")
