"""Run several ``scorerecon`` commands one after another in one process (torch and the library load once):
``python -m ScoreReconLib.steps STEPS.json``, the file holding a JSON list of argument lists, e.g.
``[["simulate", "--input", "a.nrrd", ...], ["reconstruct", ...]]``.

Before each command a line ``{"step": i, "of": n}`` goes to stdout; each command's own output follows as usual.
The run stops at the first command that fails and exits with its status (0 when all succeed; 2 for a bad file).
The Slicer module runs an Apply's steps (simulate or import, reconstruct, baseline) this way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: most commands one file may list
MAX_STEPS = 64


def read_steps(path: str | Path) -> list[list[str]]:
    """The argument lists in ``path``; ``ValueError`` naming the problem when it is not a list of string lists."""
    try:
        steps = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the steps file {path}: {exc}") from None
    if not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS or not all(
            isinstance(s, list) and s and all(isinstance(a, str) for a in s) for s in steps):
        raise ValueError(f"{path} must hold a JSON list of 1 to {MAX_STEPS} non-empty lists of strings (the "
                         "arguments of each scorerecon command)")
    return steps


def run_steps(steps: list[list[str]]) -> int:
    """Run ``scorerecon`` with each argument list in turn; the first non-zero exit status, else 0."""
    from .cli import main

    for index, argv in enumerate(steps):
        print(json.dumps({"step": index, "of": len(steps)}), flush=True)
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse refusals exit; keep their status
            code = exc.code if isinstance(exc.code, int) else 2
        if code:
            return int(code)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ScoreReconLib.steps STEPS.json", file=sys.stderr)
        return 2
    try:
        steps = read_steps(argv[0])
    except ValueError as exc:
        print(f"scorerecon steps: error: {exc}", file=sys.stderr)
        return 2
    return run_steps(steps)


if __name__ == "__main__":
    sys.exit(main())
