"""Python packages the reconstruction process needs: one requirements list, installed-version checks, installation.

The list is ``Resources/requirements.txt`` (repository root; the extension installs it into the
module's ``Resources/``); ``pyproject.toml`` reads the same file, so the library and the Slicer
module ask for the same versions. Versions are compared here without ``packaging`` (which not every
Slicer bundles): release numbers, pre-releases below their release, local suffixes (``+cu126``) ignored.

Installation asks the user once (one dialog listing every missing or outdated package), then
installs PyTorch through the PyTorch extension's ``PyTorchUtils`` (the wheel that fits the GPU) and the
rest with ``slicer.packaging.pip_ensure`` where this Slicer has it (5.12 and later) or
``slicer.util.pip_install`` (every release).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from .settings import ScoreReconModuleError, ScoreReconProcessError

_MODULE_DIR = pathlib.Path(__file__).resolve().parent.parent
#: where requirements.txt is looked for: the installed module's Resources/, then the repository's
REQUIREMENTS_CANDIDATES = (
    _MODULE_DIR / "Resources" / "requirements.txt",
    _MODULE_DIR.parent / "Resources" / "requirements.txt",
)
#: requirements of single input modes, checked (and installed after asking) only when that mode runs; the
#: versions are those of pyproject.toml's ``mri`` extra (``Testing/test_slicer_jobs.py`` checks it)
OPTIONAL_REQUIREMENTS = {"kspace": ("h5py>=3.8",)}
#: distributions whose import name differs from the distribution name
IMPORT_NAMES = {"pillow": "PIL", "simpleitk": "SimpleITK"}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")
_CLAUSE = re.compile(r"^\s*(===|==|!=|~=|>=|<=|>|<)\s*([0-9A-Za-z.*+!_-]+)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One requirement line: distribution ``name``, ``extras`` and version ``clauses`` [(operator, version)]."""

    text: str
    name: str
    extras: tuple[str, ...] = ()
    clauses: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Normalised distribution name (PEP 503)."""
        return re.sub(r"[-_.]+", "-", self.name).lower()

    @property
    def specifier(self) -> str:
        """The version part, e.g. ``==2.13.0`` (empty if any version will do)."""
        return ",".join(op + v for op, v in self.clauses)


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met: ``installed`` is the version found (None if missing)."""

    requirement: Requirement
    installed: str | None

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement.text} (not installed)"
        return f"{self.requirement.text} (installed: {self.installed})"


def parseRequirement(line: str) -> Requirement:
    """A requirement from one line such as ``monai[einops]==1.6.1`` or ``numpy>=1.24,<3``."""
    text = line.split("#", 1)[0].strip()
    if ";" in text:
        raise ValueError(f"environment markers are not supported here: {line!r}")
    match = _REQUIREMENT.match(text)
    if not match or not text:
        raise ValueError(f"not a requirement: {line!r}")
    name, extras, rest = match.groups()
    clauses = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        clause = _CLAUSE.match(part)
        if clause is None:
            raise ValueError(f"cannot read the version clause {part!r} of {line!r}")
        clauses.append((clause.group(1), clause.group(2)))
    extraNames = tuple(e.strip() for e in extras[1:-1].split(",") if e.strip()) if extras else ()
    return Requirement(text=text, name=name, extras=extraNames, clauses=tuple(clauses))


def requirementsFor(inputMode: str | None = None) -> list[Requirement]:
    """``requirements.txt`` plus what ``inputMode`` needs on top (:data:`OPTIONAL_REQUIREMENTS`, e.g. h5py
    to read k-space files)."""
    return loadRequirements() + [parseRequirement(line) for line in OPTIONAL_REQUIREMENTS.get(inputMode or "", ())]


def requirementsPath() -> pathlib.Path:
    for candidate in REQUIREMENTS_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise ScoreReconProcessError(
        "ScoreRecon's requirements.txt is missing (looked in "
        + ", ".join(str(c) for c in REQUIREMENTS_CANDIDATES) + "); reinstall the ScoreRecon extension")


#: distributions whose exact pin in requirements.txt (the reproducible ``pip install -e .``) is a *minimum* inside
#: Slicer: Slicer's Python is shared with other extensions (TotalSegmentator, MONAIAuto3DSeg), so a newer torch
#: they installed is kept, never replaced by the older tested release
MINIMUM_IN_SLICER = ("torch",)


def loadRequirements(path: str | pathlib.Path | None = None) -> list[Requirement]:
    """The requirements of ``path`` (default: :func:`requirementsPath`), comments and blank lines skipped; an
    exact pin of a :data:`MINIMUM_IN_SLICER` distribution becomes ``>=`` that version."""
    path = pathlib.Path(path) if path is not None else requirementsPath()
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        if not line.split("#", 1)[0].strip():
            continue
        req = parseRequirement(line)
        if req.key in MINIMUM_IN_SLICER and any(op in ("==", "===") for op, _ in req.clauses):
            clauses = tuple((">=" if op in ("==", "===") else op, v) for op, v in req.clauses)
            extras = f"[{','.join(req.extras)}]" if req.extras else ""
            text = req.name + extras + ",".join(op + v for op, v in clauses)
            req = Requirement(text=text, name=req.name, extras=req.extras, clauses=clauses)
        out.append(req)
    return out


# ------------------------------------------------------------------------------------------- versions
def _versionKey(version: str) -> tuple[tuple[int, ...], int, int]:
    """Sort key: (release numbers, 1 for a final release / 0 for a pre- or dev release, pre number)."""
    text = version.strip().lower().split("+", 1)[0]
    if text.startswith("v"):
        text = text[1:]
    if "!" in text:
        text = text.split("!", 1)[1]
    match = re.match(r"^(\d+(?:\.\d+)*)(.*)$", text)
    if not match:
        raise ValueError(f"cannot read version {version!r}")
    release = tuple(int(p) for p in match.group(1).split("."))
    rest = match.group(2).lstrip(".-_")
    if not rest or rest.startswith("post"):
        return release, 1, 0
    number = re.search(r"(\d+)", rest)
    return release, 0, int(number.group(1)) if number else 0


def _pad(a: tuple[int, ...], n: int) -> tuple[int, ...]:
    return a + (0,) * (n - len(a))


def compareVersions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b`` (1.10 > 1.9, 2.0 == 2)."""
    (ra, fa, pa), (rb, fb, pb) = _versionKey(a), _versionKey(b)
    n = max(len(ra), len(rb))
    ka, kb = (_pad(ra, n), fa, pa), (_pad(rb, n), fb, pb)
    return (ka > kb) - (ka < kb)


def versionSatisfies(version: str, clauses: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bool:
    """Whether ``version`` meets every (operator, version) clause (==, !=, >=, <=, >, <, ~=, ===, ==X.*)."""
    for op, wanted in clauses:
        if op in ("==", "!=") and wanted.endswith(".*"):
            prefix = _versionKey(wanted[:-2])[0]
            same = _versionKey(version)[0][: len(prefix)] == prefix
            ok = same if op == "==" else not same
        elif op == "===":
            ok = version.strip() == wanted
        elif op == "~=":
            release = _versionKey(wanted)[0]
            upper = ".".join(str(v) for v in (*release[:-2], release[-2] + 1)) if len(release) >= 2 else None
            ok = compareVersions(version, wanted) >= 0 and (upper is None or compareVersions(version, upper) < 0)
        else:
            c = compareVersions(version, wanted)
            ok = {"==": c == 0, "!=": c != 0, ">=": c >= 0, "<=": c <= 0, ">": c > 0, "<": c < 0}[op]
        if not ok:
            return False
    return True


def installedVersion(name: str) -> str | None:
    """Installed version of a distribution; "" if importable without metadata (bundled); None if missing."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    importName = IMPORT_NAMES.get(name.lower(), name)
    try:
        found = importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        found = False
    return "" if found else None


def _extraRequirements(name: str, extra: str) -> list[str]:
    """Distribution names an installed distribution's ``extra`` asks for (from its metadata)."""
    try:
        requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for line in requires:
        if ";" not in line:
            continue
        spec, marker = line.split(";", 1)
        if re.search(r"extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]", marker):
            match = _REQUIREMENT.match(spec.strip())
            if match:
                names.append(match.group(1))
    return names


def checkRequirements(requirements: list[Requirement] | None = None,
                      versionOf: Callable[[str], str | None] | None = None) -> list[Problem]:
    """Requirements that are missing or whose installed version does not satisfy them.

    ``versionOf(name)`` gives the installed version ("" = present, version unknown: accepted; None =
    missing). Extras (``monai[einops]``) also need the packages the extra names to be present.
    """
    requirements = loadRequirements() if requirements is None else requirements
    fromMetadata = versionOf is None
    versionOf = installedVersion if versionOf is None else versionOf
    problems = []
    for req in requirements:
        version = versionOf(req.name)
        if version is None:
            problems.append(Problem(req, None))
            continue
        if version and req.clauses:
            try:
                ok = versionSatisfies(version, req.clauses)
            except ValueError:
                ok = True  # an unreadable version string: let the import decide
            if not ok:
                problems.append(Problem(req, version))
                continue
        for extra in req.extras:
            for dependency in (_extraRequirements(req.name, extra) if fromMetadata else []):
                if versionOf(dependency) is None:
                    problems.append(Problem(req, version or "present"))
                    break
    return problems


def describeProblems(problems: list[Problem]) -> str:
    return "\n".join("  " + p.describe() for p in problems)


# ---------------------------------------------------------------------------------------- installing
def _pipEnsureAvailable():
    """``slicer.packaging`` if this Slicer has ``pip_ensure`` (5.12 and later), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None


def installTorch(requirement: Requirement) -> None:
    """Install PyTorch with the PyTorch extension's PyTorchUtils (it picks the wheel for this GPU)."""
    try:
        import PyTorchUtils
    except ImportError:
        raise ScoreReconModuleError(
            "PyTorch is needed and the PyTorch extension is not installed; install 'PyTorch' from the Extensions "
            "Manager, restart Slicer and try again") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    # read the version from the package metadata: importing torch here (torchInstalled() does) would load its
    # libraries into Slicer's process and, on Windows, lock the files the installer has to replace
    installed = installedVersion("torch")
    if installed is not None:
        logging.info("ScoreRecon: replacing the installed PyTorch %s to meet %s", installed or "(unknown version)",
                     requirement.text)
    torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement.specifier or None)
    if torch is None:
        raise ScoreReconModuleError(f"PyTorch ({requirement.text}) was not installed; install it with the PyTorch "
                                    "Utils module and try again")


def installRequirements(problems: list[Problem]) -> None:
    """Install what ``problems`` lists (no questions asked: ask before calling this)."""
    import slicer

    torch = [p.requirement for p in problems if p.requirement.key == "torch"]
    others = [p.requirement.text for p in problems if p.requirement.key != "torch"]
    if torch:
        installTorch(torch[0])
    if not others:
        return
    packaging = _pipEnsureAvailable()
    if packaging is not None:
        packaging.pip_ensure(others, skip_packages=["torch"], prompt_install=False, requester="ScoreRecon")
    else:
        slicer.util.pip_install(others)


def ensureDependencies(ask: bool = True, requirements: list[Requirement] | None = None,
                       versionOf: Callable[[str], str | None] | None = None) -> bool:
    """Make sure the reconstruction process can run; True when it can, False if the user declined.

    Inside Slicer the user is asked once (``ask``) and then everything is installed; outside it a
    :class:`ScoreReconProcessError` names what to install.
    """
    problems = checkRequirements(requirements, versionOf)
    if not problems:
        return True
    import slicer

    listing = describeProblems(problems)
    if not hasattr(slicer, "app"):
        raise ScoreReconProcessError(
            "the reconstruction needs these Python packages:\n" + listing
            + "\ninstall them (pip install -r Resources/requirements.txt) and try again")
    if ask:
        text = ("ScoreRecon needs these Python packages, which are missing or too old:\n\n" + listing
                + "\n\nDownload and install them now? This can take several minutes (PyTorch is large); "
                "Slicer may need a restart afterwards.")
        if not slicer.util.confirmOkCancelDisplay(text, "ScoreRecon: install dependencies"):
            return False
    with slicer.util.WaitCursor():
        installRequirements(problems)
    left = checkRequirements(requirements, versionOf)
    if left:
        raise ScoreReconProcessError("these packages are still missing or too old after installing:\n"
                                     + describeProblems(left) + "\nrestart Slicer and try again")
    return True
