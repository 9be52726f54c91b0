"""The ``scorerecon`` command line.

Each subcommand lives in :mod:`ScoreReconLib.commands` as a module exposing
``register(subparsers)`` (adds its parser and sets ``func``) so commands stay independent.
A :class:`~ScoreReconLib.errors.ScoreReconError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import CancelledError, ScoreReconError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS = ["simulate", "import_kspace", "reconstruct", "train", "sample", "evaluate", "tune", "demo", "prepare_data"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorerecon",
        description="CT and MRI reconstruction with score-based generative priors.",
    )
    parser.add_argument("--version", action="version", version=f"scorerecon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except ScoreReconError as exc:
        print(f"scorerecon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CancelledError as exc:
        print(f"scorerecon {args.command}: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"scorerecon {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
