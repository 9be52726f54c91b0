"""``scorerecon simulate``: make a measurement file (.npz) from an image or volume.

Example::

    scorerecon simulate --task sparse-ct --views 23 --input head.nrrd --output head_sparse.npz
    scorerecon simulate --task mri --acceleration 8 --mask equispaced --input brain.nii.gz --output k.npz
    scorerecon simulate --task sparse-ct --geometry fan --source-distance 595 --detector-distance 490 \
        --input head.nrrd --output head_fan.npz
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from ..data import modality_mismatch, read_image
from ..errors import ScoreReconError
from ..measurement import (
    CT_GEOMETRIES,
    DEFAULT_DETECTOR_DISTANCE_MM,
    DEFAULT_PHASE,
    DEFAULT_SOURCE_DISTANCE_MM,
    MRI_MASKS,
    PHASE_KINDS,
    SIMULATED_MAPS,
    check_measurement_output,
    save_measurement,
    simulate,
    task_modality,
)
from ..operators import TASKS
from ..threads import add_threads_option

#: RMS phase error (radians) of the estimated image phase above which simulate warns (on the validation slices
#: a 6-line centre gave up to 0.49 rad, a 10-line one 0.05–0.16; ``benchmarks/RESULTS.md``, *mri-realism-phase*)
PHASE_ERROR_WARNING = 0.2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate CT/MRI measurements of an image into a .npz measurement file",
        description="Simulate measurements y = A x (+ noise) of an image or volume (slices along the first "
                    "array axis) and write a self-describing .npz measurement file for 'scorerecon reconstruct'.",
    )
    p.add_argument("--task", required=True, choices=TASKS, help="inverse problem to simulate")
    p.add_argument("--input", required=True, metavar="IMAGE",
                   help="DICOM file or series folder, NIfTI, NRRD, MHA, PNG or .npy (CT in HU)")
    p.add_argument("--output", required=True, metavar="MEAS.npz", help="measurement file to write")
    ct = p.add_argument_group("CT options")
    ct.add_argument("--views", type=int, default=23, help="sparse-ct: measured views, equally spaced (default 23)")
    ct.add_argument("--arc", type=float, default=90.0,
                    help="limited-angle-ct: measured arc in degrees out of 180 (fan beam: out of 360; default 90)")
    ct.add_argument("--n-angles", type=int, default=None, metavar="N",
                    help="CT: angles of the full set, over 180 degrees for parallel beam (default: the image "
                         "size), over 360 for fan beam (default: twice the image size)")
    ct.add_argument("--geometry", choices=CT_GEOMETRIES, default="parallel",
                    help="CT: source geometry, parallel beam or fan beam (default parallel)")
    ct.add_argument("--source-distance", type=float, default=None, metavar="MM",
                    help=f"fan beam: source to rotation centre in mm (default {DEFAULT_SOURCE_DISTANCE_MM:g})")
    ct.add_argument("--detector-distance", type=float, default=None, metavar="MM",
                    help=f"fan beam: rotation centre to detector in mm (default {DEFAULT_DETECTOR_DISTANCE_MM:g})")
    ct.add_argument("--detector", choices=("curved", "flat"), default="curved",
                    help="fan beam: equiangular curved detector (default, the clinical form) or flat")
    ct.add_argument("--metal-threshold", type=float, default=3000.0, metavar="HU",
                    help="metal-ct: HU above which the image counts as metal (default 3000); if none is found, "
                         "random metal objects are inserted")
    ct.add_argument("--n-metal", type=int, default=2, metavar="K",
                    help="metal-ct: number of metal objects to insert when the image has none (default 2)")
    mr = p.add_argument_group("MRI options")
    mr.add_argument("--acceleration", type=float, default=8.0, help="mri: undersampling factor (default 8)")
    mr.add_argument("--center-fraction", type=float, default=0.08,
                    help="mri: fully sampled fraction of central k-space lines (default 0.08)")
    mr.add_argument("--mask", choices=MRI_MASKS, default="equispaced", help="mri: sampling pattern")
    mr.add_argument("--coils", type=int, default=1, metavar="K",
                    help="mri: receive coils; K > 1 simulates multi-coil k-space with smooth synthetic coil maps "
                         "(seeded by --seed; default 1 = single-coil)")
    mr.add_argument("--phase", choices=PHASE_KINDS, default=DEFAULT_PHASE,
                    help="mri: image phase, 'smooth' (a seeded smooth phase as a scanner records, the default; "
                         "the file carries the phase estimated from the k-space centre) or 'zero' (a real image)")
    mr.add_argument("--maps", choices=SIMULATED_MAPS, default="true",
                    help="mri, --coils 2 or more: coil maps the file carries, 'true' (those that made the data, "
                         "default) or estimated from the simulated data as an import would ('auto', 'espirit' "
                         "(needs sigpy), 'lowres')")
    p.add_argument("--noise", type=float, default=0.0,
                   help="Gaussian noise std relative to the largest measured |y| of each slice (CT) or to the "
                        "k-space peak of the image, one std for all coils (MRI) (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, random masks and metal (default 0)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="resample slices to N x N (needed for non-square images)")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = check_measurement_output(args.output)
    for flag in ("arc", "metal_threshold", "acceleration", "center_fraction", "noise", "source_distance",
                 "detector_distance"):
        value = getattr(args, flag, None)
        if value is not None and not math.isfinite(float(value)):
            raise ScoreReconError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    image = read_image(args.input)
    m, _, _ = simulate(
        image, args.task, views=args.views, arc=args.arc, n_angles=args.n_angles,
        metal_threshold=args.metal_threshold, n_metal=args.n_metal, acceleration=args.acceleration,
        center_fraction=args.center_fraction, mask=args.mask, noise=args.noise, seed=args.seed, size=args.size,
        geometry=args.geometry, source_distance=args.source_distance, detector_distance=args.detector_distance,
        detector=args.detector, coils=args.coils, phase=args.phase, maps=args.maps,
    )
    mismatch = modality_mismatch(image, task_modality(args.task), args.input)  # after the input's own checks
    if mismatch:
        print(f"scorerecon simulate: warning: {mismatch[0]}, but --task {args.task} simulates "
              f"{task_modality(args.task)} measurements", file=sys.stderr, flush=True)
    save_measurement(output, m)
    n = m.image_size
    what = {
        "sparse-ct": f"{args.views} views",
        "limited-angle-ct": f"{args.arc:g} degree arc",
        "metal-ct": f"metal {m.metal.get('source', '?')} ({m.metal.get('pixels', 0)} px)",
        "mri": f"{args.acceleration:g}x {args.mask}" + (f", {m.coils} coils" if m.coils > 1 else "")
        + (f", {args.phase} phase" if args.task == "mri" else ""),
    }[m.task]
    errors = m.options.get("phase_error_rad")
    if errors:
        what += f" (phase estimate off by {max(errors):.3f} rad RMS at most)"
        if max(errors) > PHASE_ERROR_WARNING:
            worst = int(np.argmax(errors))
            print(f"scorerecon simulate: warning: the image phase estimated from the fully sampled k-space centre "
                  f"is off by {errors[worst]:.2f} rad RMS on slice {worst}; real-valued reconstructions of this file "
                  "will be smoothed to hide it. A wider centre (raise --center-fraction) estimates it better; "
                  "--phase zero simulates a real image", file=sys.stderr, flush=True)
    if m.options.get("geometry") == "fan":
        what += (f", fan beam ({m.options['detector']} detector, source {m.options['source_distance_mm']:g} mm, "
                 f"detector {m.options['detector_distance_mm']:g} mm)")
    print(f"wrote {output}: {m.task}, {m.n_slices} slice(s) of {n}x{n}, {what}, noise {m.noise:g}")
    return 0
