"""The ``scorerecon`` command line.

Each subcommand lives in :mod:`ScoreReconLib.commands` as a module exposing
``register(subparsers)`` (adds its parser and sets ``func``) so commands stay independent.

Exit statuses and what reaches stderr (the guarantees of ``docs/cli.md``):

- 0: success.
- 2: bad input or a failure the user can fix — a :class:`~ScoreReconLib.errors.ScoreReconError`,
  an unusable path (``OSError``: missing folder, no permission, disk full), a malformed option
  (argparse) or an allocation that does not fit in memory. Exactly one line
  ``scorerecon COMMAND: error: ...``; nothing is left at or beside the output paths.
- 1: an unexpected internal error (a bug): one line naming it; ``--debug`` shows the traceback.
- 130 / 143: interrupted by Ctrl-C (SIGINT) / terminated (SIGTERM); temporary files are removed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from . import __version__
from .errors import CancelledError, ScoreReconError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS = ["simulate", "import_kspace", "import_sinogram", "reconstruct", "train", "sample", "evaluate", "tune",
            "demo", "prepare_data"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so clean-up (``finally``) runs as for Ctrl-C."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``PROG: error: ...``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        first = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="scorerecon",
        description="CT and MRI reconstruction with score-based generative priors.",
    )
    parser.add_argument("--version", action="version", version=f"scorerecon {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an unexpected error (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue
            raise
        module.register(sub)
    return parser


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for allocation failures: ``MemoryError``, torch's OOM and CPU-allocator errors."""
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(__import__("torch"), "OutOfMemoryError", None) if "torch" in sys.modules else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower() or "not enough memory" in text.lower()
    )


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and what to do."""
    path = exc.filename or ""
    reason = exc.strerror or _first_line(exc)
    hint = {
        "ENOENT": "check that the folder exists",
        "EACCES": "choose a path you may write to",
        "EPERM": "choose a path you may write to",
        "EROFS": "the file system is read-only; choose another path",
        "ENOSPC": "the disk is full; free space or choose another path",
        "EISDIR": "a folder is in the way; give a file name",
        "ENOTDIR": "a file is in the way of a folder in the path",
    }.get(__import__("errno").errorcode.get(exc.errno or -1, ""), "check the path")
    where = f" {path}" if path else ""
    return f"cannot use{where}: {reason}; {hint}"


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("SCORERECON_DEBUG"))
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed as one line)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"scorerecon {args.command}"
    old_term = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a worker thread): keep the default
        old_term = None
    threads_before = None
    try:
        if hasattr(args, "threads"):  # a computing command: --threads N, else a default that fits the idle cores
            import torch

            from .threads import apply_threads

            threads_before = torch.get_num_threads()
            apply_threads(args.threads)
        with warnings.catch_warnings():
            if not debug:  # library warnings that matter are printed by the commands themselves, as one line
                for module in ("numpy", "torch", "scipy", "SimpleITK", "monai", "h5py"):  # and their submodules
                    warnings.filterwarnings("ignore", module=module)
            rc = args.func(args)
    except ScoreReconError as exc:
        print(f"{prog}: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except CancelledError as exc:
        print(f"{prog}: cancelled: {_first_line(exc)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        if is_out_of_memory(exc):
            print(f"{prog}: error: out of memory ({_first_line(exc)[:160]}); use a smaller --batch-size, image "
                  "size or model", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(exc).__name__}: {_first_line(exc)[:200]} (a bug: please report it "
              "with the output of the same command run with --debug)", file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if threads_before is not None:  # main() called in-process (tests, notebooks): leave torch as it was
            sys.modules["torch"].set_num_threads(threads_before)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
