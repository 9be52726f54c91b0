"""The oldest 3D Slicer release ScoreRecon supports, and the check against the running application.

ScoreRecon needs Slicer 5.10: the library requires PyTorch 2.13, whose wheels exist only for
Python >= 3.10, and Slicer 5.10 is the first release with such a Python (3.12; Slicer 5.8 ships 3.9).
"""

from __future__ import annotations

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


def versionProblem(version: tuple[int, int] | None = None, python: tuple[int, int] | None = None) -> str:
    """A message naming the problem and the fix when this Slicer (or its Python) is too old, else ""."""
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
    return ""
