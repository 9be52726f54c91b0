"""``scorerecon import-kspace``: a fastMRI-format HDF5 k-space file → a measurement file (.npz).

Example::

    scorerecon import-kspace --input file_brain_AXT2_200_2000019.h5 --output brain.npz --slices 5:8
    scorerecon reconstruct --input brain.npz --output brain.nrrd --method score

See :mod:`ScoreReconLib.kspace_io` for what the import does (readout oversampling, masks, coil maps,
intensity scale, geometry).
"""

from __future__ import annotations

import argparse
import math

from ..coils import MAP_METHODS
from ..errors import ScoreReconError
from ..measurement import MRI_MASKS, check_measurement_output, save_measurement
from ..threads import add_threads_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-kspace",
        help="turn a fastMRI-format HDF5 k-space file into a measurement file",
        description="Read multi-coil k-space (dataset 'kspace', (slices, coils, H, W) complex) from a fastMRI-format "
                    "HDF5 file, remove readout oversampling, estimate coil maps from the fully sampled centre (or "
                    "read them from the file) and write a measurement .npz for 'scorerecon reconstruct'. Fully "
                    "sampled files are undersampled retrospectively. Needs h5py (pip install h5py).",
    )
    p.add_argument("--input", required=True, metavar="FILE.h5", help="fastMRI-format HDF5 file")
    p.add_argument("--output", required=True, metavar="MEAS.npz", help="measurement file to write")
    p.add_argument("--slices", default=None, metavar="A:B", help="slices A..B-1 of the file (default: all)")
    p.add_argument("--acceleration", type=float, default=None,
                   help="fully sampled files: retrospective undersampling factor (default 8; 1 keeps every column); "
                        "refused for files that are already undersampled")
    p.add_argument("--center-fraction", type=float, default=0.08,
                   help="retrospective undersampling: fully sampled fraction of central columns (default 0.08)")
    p.add_argument("--mask", choices=MRI_MASKS, default="equispaced", help="retrospective sampling pattern")
    p.add_argument("--seed", type=int, default=0, help="seed of random masks (default 0)")
    p.add_argument("--maps", choices=MAP_METHODS, default="auto",
                   help="coil maps when the file has none: espirit (sigpy), lowres (own estimate) or auto "
                        "(espirit if sigpy is installed; default)")
    p.add_argument("--cg-iterations", type=int, default=5,
                   help="CG iterations of the score sampler's data-consistency step (default 5)")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = check_measurement_output(args.output)
    for flag in ("acceleration", "center_fraction"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(float(value)):
            raise ScoreReconError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if not 0 <= args.center_fraction < 1:
        raise ScoreReconError(f"--center-fraction must be in [0, 1), got {args.center_fraction}")
    from ..limits import MAX_CG_ITERATIONS, check_count

    check_count(args.cg_iterations, "--cg-iterations", MAX_CG_ITERATIONS)
    from ..kspace_io import import_kspace

    m = import_kspace(args.input, slices=args.slices, acceleration=args.acceleration,
                      center_fraction=args.center_fraction, mask=args.mask, seed=args.seed, maps=args.maps,
                      cg_iterations=args.cg_iterations)
    save_measurement(output, m)
    n = m.image_size
    acc = m.operator_spec.get("realised_acceleration", 1.0)
    print(f"wrote {output}: mri, {m.n_slices} slice(s) of {n}x{n}, {m.coils} coil(s), acceleration {acc:.2f} "
          f"({'retrospective ' + str(m.options.get('mask')) if m.options.get('retrospective') else 'as acquired'}), "
          f"maps {m.options.get('maps')}")
    return 0
