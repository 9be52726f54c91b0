"""The oldest 3D Slicer release ScoreRecon supports, and the check against the running application.

ScoreRecon needs Slicer 5.10: the library requires PyTorch 2.13, whose wheels exist only for
Python >= 3.10, and Slicer 5.10 is the first release with such a Python (3.12; Slicer 5.8 ships 3.9).
"""

from __future__ import annotations

import platform
import sys

#: (major, minor) of the oldest supported Slicer release
MINIMUM_SLICER_VERSION = (5, 10)
#: the Python that release ships (grammar the library may use)
MINIMUM_PYTHON_VERSION = (3, 12)
#: the Python the module-side code must still import on, to show the upgrade message (Slicer 5.8)
OLDEST_PYTHON_TO_WARN_ON = (3, 9)


def runningSlicerVersion() -> tuple[int, int] | None:
    """(major, minor) of the running Slicer application; None outside it (slicer-core, plain Python)."""
    try:
        import slicer

        app = slicer.app
    except (ImportError, AttributeError):
        return None
    try:
        return int(app.majorVersion), int(app.minorVersion)
    except (AttributeError, TypeError, ValueError):
        return None


#: the last PyTorch release with macOS x86_64 (Intel) wheels
LAST_TORCH_FOR_MACOS_X86_64 = "2.2.2"


def platformProblem(system: str | None = None, machine: str | None = None) -> str:
    """A message when PyTorch 2.13 has no wheels for this platform, else "".

    PyTorch stopped publishing macOS x86_64 wheels after 2.2.2. The macOS packages of 3D Slicer 5.10 and 5.12 are
    x86_64 builds (they run on Apple silicon under Rosetta), so their Python is x86_64 too and pip finds no torch.
    """
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    if system == "Darwin" and machine.lower() in ("x86_64", "amd64", "i386"):
        return ("ScoreRecon's reconstruction needs PyTorch 2.13 or later, which has no wheels for macOS on x86_64 "
                f"(Intel) Python: PyTorch stopped at {LAST_TORCH_FOR_MACOS_X86_64} for that platform, and the "
                "macOS packages of 3D Slicer 5.10 and 5.12 are x86_64 builds even on Apple silicon. Run ScoreRecon "
                "in Slicer on Linux or Windows, or use the scorerecon command line from an arm64 Python on a Mac "
                "with Apple silicon (pip install -e . from a checkout).")
    return ""


def versionProblem(version: tuple[int, int] | None = None, python: tuple[int, int] | None = None,
                   system: str | None = None, machine: str | None = None) -> str:
    """A message naming the problem and the fix when this Slicer (or its Python) is too old, or when PyTorch
    has no wheels for this platform (:func:`platformProblem`), else ""."""
    version = runningSlicerVersion() if version is None else version
    python = tuple(sys.version_info[:2]) if python is None else python
    minimum = ".".join(str(v) for v in MINIMUM_SLICER_VERSION)
    if version is not None and tuple(version) < MINIMUM_SLICER_VERSION:
        running = ".".join(str(v) for v in version)
        return (f"ScoreRecon needs 3D Slicer {minimum} or later; this is Slicer {running}. "
                f"Install the current Slicer release from https://download.slicer.org and ScoreRecon from its "
                f"Extensions Manager. (ScoreRecon runs on PyTorch 2.13, which needs Python 3.10 or later; "
                f"Slicer {minimum} ships Python 3.12.)")
    if tuple(python) < (3, 10):
        return (f"ScoreRecon needs Python 3.10 or later (3D Slicer {minimum} or later); this is Python "
                f"{python[0]}.{python[1]}. Install the current Slicer release from https://download.slicer.org.")
    return platformProblem(system, machine)
