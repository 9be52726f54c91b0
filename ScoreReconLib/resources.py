"""Locate files shipped with ScoreRecon (default models, sample data).

Search order: ``$SCORERECON_RESOURCES``, then ``Resources/`` beside the package (source checkout,
editable install, the Slicer extension layout).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ScoreReconError

_PACKAGE_DIR = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """Return the folder holding ScoreRecon's shipped resources."""
    candidates = []
    env = os.environ.get("SCORERECON_RESOURCES")
    if env:
        candidates.append(Path(env))
    candidates += [_PACKAGE_DIR.parent / "Resources", _PACKAGE_DIR / "resources"]
    for c in candidates:
        if c.is_dir():
            return c
    raise ScoreReconError(
        "cannot find ScoreRecon's Resources folder; set SCORERECON_RESOURCES to the repository's Resources/"
    )


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource, e.g. ``resource_path("models", "default-ct")``; error if missing."""
    p = resources_dir().joinpath(*parts)
    if not p.exists():
        raise ScoreReconError(f"shipped resource {'/'.join(parts)} is missing under {resources_dir()}")
    return p
