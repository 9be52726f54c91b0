"""The prepared data's records: ``manifest.json`` (one entry per converted file) and ``LICENSES.md``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ScoreReconError
from ..utils import atomic_path
from ..vocabulary import MODALITIES
from .registry import SOURCES


def write_file(path: Path, data: bytes) -> Path:
    """Write bytes atomically, readable by everyone (data files are not secrets)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    os.chmod(path, 0o644)
    return path


@dataclass
class Prepared:
    """One converted file: where it is and where it came from."""

    key: str
    role: str
    modality: str
    path: str  # relative to the output folder
    shape: list[int]
    spacing: list[float]
    package: str
    member: str
    member_sha256: str
    subject: str
    licence: str
    licence_copy: str
    note: str = ""


def read_manifest(output: str | Path) -> list[dict]:
    """Entries of ``output/manifest.json`` (empty if none)."""
    path = Path(output) / "manifest.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError):
        raise ScoreReconError(f"{path} is corrupt; delete it and run 'scorerecon prepare-data' again") from None


def prepared_files(output: str | Path, role: str, modality: str) -> list[Path]:
    """Paths of prepared files with ``role`` ("train" | "heldout") and ``modality`` ("CT" | "MR").

    Read from ``output/manifest.json``; raises :class:`ScoreReconError` if nothing matching was prepared.
    """
    if role not in ("train", "heldout") or modality not in MODALITIES:
        raise ScoreReconError(f"role '{role}' / modality '{modality}': use role train|heldout and modality CT|MR")
    output = Path(output)
    paths = [output / e["path"] for e in read_manifest(output) if e["role"] == role and e["modality"] == modality]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        group = "heldout" if role == "heldout" else ("ct" if modality == "CT" else "mri")
        raise ScoreReconError(
            f"no prepared {role} {modality} data under {output}; run 'scorerecon prepare-data --output {output} "
            f"--only {group}'"
        )
    return paths


def update_manifest(output: Path, records: list[Prepared]) -> list[dict]:
    """Merge ``records`` into ``output/manifest.json`` (by key) and return all entries."""
    entries = {e["key"]: e for e in read_manifest(output)}
    for r in records:
        entries[r.key] = asdict(r)
    order = [s.key for s in SOURCES]
    files = sorted(entries.values(), key=lambda e: order.index(e["key"]) if e["key"] in order else len(order))
    path = Path(output) / "manifest.json"
    manifest = {"format_version": 1, "orientation": "LPS (Z, Y, X)", "files": files}
    write_file(path, json.dumps(manifest, indent=2).encode())
    return files


def write_licenses(output: Path, entries: list[dict]) -> Path:
    """Write ``output/LICENSES.md``: every prepared file, its source package and the licence it states."""
    lines = [
        "# Licences of the prepared data",
        "",
        "Written by `scorerecon prepare-data`. Each licence is the one the source package states; the",
        "package's own copyright/licence file is copied under `licenses/`. Training files (`ct/`, `mri/`) and",
        "held-out files (`heldout/`) come from different subjects; never train on `heldout/`.",
        "",
        "| file | role | subject | package | licence |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(f"| `{e['path']}` | {e['role']} | {e['subject']} | `{e['package']}` | {e['licence']} |")
    lines += ["", "## Notes", ""]
    for e in entries:
        lines.append(f"- `{e['path']}` (`{e['member']}`, sha256 `{e['member_sha256'][:16]}…`): {e['note']} "
                     f"Licence text: `{e['licence_copy']}`.")
    path = Path(output) / "LICENSES.md"
    write_file(path, ("\n".join(lines) + "\n").encode())
    return path

