"""Preparing data: fetch, convert and write each source of the chosen groups, then update manifest and licences."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import ScoreReconError
from .convert import convert_source, write_nrrd
from .fetch import LogFn, default_cache
from .manifest import Prepared, update_manifest, write_file, write_licenses
from .registry import GROUPS, Source, source
from .unpack import source_bytes


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def prepare_source(src: Source, output: Path, cache: Path, log: LogFn = print) -> Prepared:
    """Fetch, convert and write one source under ``output``; copy its licence file to ``output/licenses``."""
    output = Path(output)
    data, licence_text, package = source_bytes(src, cache, log)
    digest = sha256_bytes(data)
    if src.sha256 and digest != src.sha256:
        log(f"  note: {src.member} differs from the version these notes describe (sha256 {digest[:12]}…)")
    image = convert_source(src, data)
    target = output / src.output
    write_nrrd(image, target, f"{src.key}: {package} {src.member}; licence {src.licence}")
    lic = output / "licenses" / f"{src.package.split(':', 1)[1].split('==')[0]}.copyright.txt"
    write_file(lic, licence_text)
    rec = Prepared(src.key, src.role, src.modality, src.output, list(image.array.shape),
                   [round(float(s), 6) for s in image.spacing], package, src.member, digest, src.subject,
                   src.licence, str(lic.relative_to(output)), src.note)
    log(f"  wrote {src.output}: {src.role} {src.modality} {tuple(rec.shape)} spacing {tuple(rec.spacing)} mm")
    return rec


def prepare(output: str | Path, groups: Iterable[str] = ("ct", "mri", "heldout"), cache: str | Path | None = None,
            log: LogFn = print) -> list[Prepared]:
    """Prepare the chosen groups ("ct", "mri", "heldout") under ``output``; update manifest and licences.

    Writes ``output/ct/*.nrrd`` (CT training), ``output/mri/*.nrrd`` (MRI training),
    ``output/heldout/{ct,mri}/*.nrrd`` (evaluation only), ``output/licenses/*.copyright.txt``,
    ``output/manifest.json`` and ``output/LICENSES.md``. Returns the records written now.
    """
    output = Path(output)
    cache = Path(cache) if cache is not None else default_cache()
    records = []
    for group in groups:
        if group not in GROUPS:
            raise ScoreReconError(f"unknown data group '{group}'; choose from {', '.join(GROUPS)}")
        log(f"{group}:")
        for key in GROUPS[group]:
            records.append(prepare_source(source(key), output, cache, log))
    manifest = update_manifest(output, records)
    write_licenses(output, manifest)
    log(f"wrote {output / 'manifest.json'} and {output / 'LICENSES.md'}")
    return records
