"""``scorerecon import-sinogram``: a measured CT sinogram (.npz) → a measurement file (see
:mod:`ScoreReconLib.sinogram_input`)."""

from __future__ import annotations

import argparse

from ..threads import add_threads_option


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..sinogram_input import add_arguments

    p = subparsers.add_parser(
        "import-sinogram", help="convert a measured parallel- or fan-beam CT sinogram to a measurement file",
        description="Convert a measured CT sinogram (.npz holding 'sinogram' (S, A, D) float32 and optionally "
                    "'spacing' (detector, angle, slice mm) and 'z0') to a measurement file for reconstruct: "
                    "sparse-view, limited-angle or metal CT, parallel or fan beam.",
    )
    add_arguments(p)
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sinogram_input import run as convert

    return convert(args)
