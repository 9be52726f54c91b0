"""Measured parallel- or fan-beam CT sinograms → a ScoreRecon measurement file.

A sinogram is ``(S, A, D)`` float32: slices × angle rows × detector bins (or ``(A, D)`` for one
slice). ``D`` fixes the image size N (the library's default detector count for N×N images).

Parallel beam (``geometry="parallel"``): D is the smallest odd count ≥ √2·N (47 for 32², 91 for 64²,
363 for 256²); the full set is F = N views over [0°, 180°). Fan beam (``geometry="fan"``, see
:class:`~ScoreReconLib.operators.ct.FanBeamGeometry`): source and detector distances in mm and a
``curved`` or ``flat`` detector; D is the smallest odd count whose fan covers the image, and the
full set is F = 2N source angles over [0°, 360°). In both, rows are the full set's angles:

- ``sparse-ct``: A = F (the full set; the task's ``views`` are kept) or A measured views at k·F/A of the set;
- ``limited-angle-ct``: A = F, or the first A angles of the set, which must fill the ``arc``;
- ``metal-ct``: the full set (A = F); the metal trace comes from an FBP image above ``metal_threshold`` HU.

The detector spacing (the first ``spacing`` value) is the image's pixel size in mm: for fan beam the
bin pitch scaled to the rotation centre (curved: the arc length at the centre; flat: the pitch
divided by the magnification).

Values are ``"normalized"`` (pixel-length line integrals of the [0, 1]-normalised image, the
library's units) or ``"attenuation"`` (-ln(I/I0), converted with water's attenuation and the
detector spacing in mm).

Run as a command (the 3D Slicer module runs it in the reconstruction's child process)::

    scorerecon import-sinogram --input sinogram.npz --output measurement.npz --task sparse-ct

where ``sinogram.npz`` holds ``sinogram`` (S, A, D) and optionally ``spacing`` (detector, angle,
slice in mm) and ``z0`` (position of the first slice, mm). It has the CLI's guarantees (``docs/cli.md``): bad
input prints one line (``scorerecon import-sinogram: error: ...``) and exits with status 2, nothing is written
then, and a signal removes temporary files. ``python -m ScoreReconLib.sinogram_input`` runs the same command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import OneLineParser
from .data import DEFAULT_CT_WINDOW, ct_normalization
from .errors import ScoreReconError
from .measurement import (
    CT_GEOMETRIES,
    DEFAULT_DETECTOR_DISTANCE_MM,
    DEFAULT_SOURCE_DISTANCE_MM,
    MIN_IMAGE_SIZE,
    Measurement,
    fan_distances_mm,
    save_measurement,
)
from .operators import build_operator
from .operators.ct import DETECTORS, FanBeamGeometry, ParallelBeamGeometry, fbp, metal_mask_from_image
from .vocabulary import CT_TASKS

#: CT tasks a sinogram can feed
SINOGRAM_TASKS = CT_TASKS
#: sinogram value units (see the module docstring)
SINOGRAM_UNITS = ("normalized", "attenuation")
#: linear attenuation of water used to convert attenuation sinograms (1/mm, ~70 keV)
WATER_ATTENUATION_PER_MM = 0.0192


def image_size_for_detectors(n_det: int) -> int | None:
    """Image side N whose default detector count (smallest odd ≥ ceil(√2·N)) is ``n_det``; None if none."""
    for n in range(MIN_IMAGE_SIZE, int(n_det) + 1):
        min_det = math.ceil(math.sqrt(2.0) * n)
        if min_det + (1 - min_det % 2) == n_det:
            return n
    return None


def fan_image_sizes_for_detectors(n_det: int, source_distance: float, detector: str) -> list[int]:
    """Image sides N whose default fan-beam detector count is ``n_det`` (``source_distance`` in pixels),
    ascending (neighbouring sizes can share a count); empty if none."""
    sizes = []
    for n in range(MIN_IMAGE_SIZE, int(n_det) + 1):
        radius = math.sqrt(2.0) * n / 2.0 + 1.0
        if source_distance <= radius:
            break
        gamma = math.asin(radius / source_distance)
        half = gamma * source_distance if detector == "curved" else math.tan(gamma) * source_distance
        count = 2 * math.ceil(half) + 1
        if count > n_det:
            break
        if count == n_det:
            sizes.append(n)
    return sizes


def _as_stack(sinogram: np.ndarray) -> np.ndarray:
    s = np.asarray(sinogram)
    if s.ndim not in (2, 3):
        raise ScoreReconError(f"the sinogram has shape {s.shape}; expected (angles, detector bins) or "
                              "(slices, angles, detector bins)")
    if np.iscomplexobj(s) or not np.issubdtype(s.dtype, np.number):
        raise ScoreReconError(f"the sinogram has dtype {s.dtype}; expected real numbers")
    s = s.astype(np.float32)
    if not np.isfinite(s).all():
        raise ScoreReconError("the sinogram contains NaN or infinite values; clean or mask them first")
    return s[None] if s.ndim == 2 else s


def sinogram_to_measurement(sinogram: np.ndarray, task: str = "sparse-ct", *, views: int = 23, arc: float = 90.0,
                            metal_threshold: float = 3000.0, units: str = "normalized",
                            spacing: tuple[float, ...] = (1.0, 1.0, 1.0), z0: float = 0.0, size: int = 0,
                            seed: int = 0, name: str = "sinogram", geometry: str = "parallel",
                            source_distance: float | None = None, detector_distance: float | None = None,
                            detector: str = "curved") -> Measurement:
    """A :class:`Measurement` of a measured sinogram ``(S, A, D)`` or ``(A, D)`` (see the module docstring).

    ``spacing`` (detector, angle, slice) in mm sets the image's pixel size and slice spacing; ``z0``
    the first slice's position (mm). ``size``: 0, or the image size the caller expects (must match
    the detector count). ``geometry`` "parallel" or "fan" (``source_distance`` / ``detector_distance``
    in mm, default 595 / 490; ``detector`` "curved" or "flat"). Raises :class:`ScoreReconError` for a
    layout that fits no geometry.
    """
    if task not in SINOGRAM_TASKS:
        raise ScoreReconError(f"a sinogram input needs a CT task ({', '.join(SINOGRAM_TASKS)}), not {task}; "
                              "for MRI k-space use a measurement file")
    if units not in SINOGRAM_UNITS:
        raise ScoreReconError(f"sinogram units '{units}' are unknown; choose {' or '.join(SINOGRAM_UNITS)}")
    fan = fan_distances_mm(geometry, source_distance, detector_distance, detector)
    s = _as_stack(sinogram)
    n_slices, n_angles, n_det = s.shape
    spacing = tuple(float(v) for v in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    pixel = spacing[0] if spacing and spacing[0] > 0 else 1.0
    geo_opts: dict = {}
    geo_record: dict = {}
    if fan is None:
        n = image_size_for_detectors(n_det)
        if n is None:
            raise ScoreReconError(
                f"the sinogram has {n_det} detector bins per row, which fits no square image in ScoreRecon's "
                "geometry (the smallest odd count >= sqrt(2)*N: 47 for 32x32, 91 for 64x64, 363 for 256x256); "
                "resample the detector axis")
        if size and size != n:
            raise ScoreReconError(f"the sinogram's {n_det} detector bins give {n}x{n} images but size is {size}; "
                                  "set size to 0")
        candidates = [n]
    else:
        src_px, det_px = fan[0] / pixel, fan[1] / pixel
        sizes = fan_image_sizes_for_detectors(n_det, src_px, detector)
        # of sizes sharing the count: the asked size, else the one whose full set (2N) the rows fill first
        candidates = ([v for v in sizes if v == size] if size else
                      sorted(sizes, key=lambda v: (2 * v != n_angles, v)))
        if not candidates:
            raise ScoreReconError(
                f"the sinogram has {n_det} detector bins per row, which fits no square image of {pixel:g} mm "
                f"pixels in a {detector} fan beam with the source {fan[0]:g} mm from the centre"
                + (f" at size {size}" if size else "")
                + "; check --source-distance, --detector and the detector spacing, or set size to 0")
        geo_opts = {"geometry": "fan", "source_distance": src_px, "detector_distance": det_px, "detector": detector}
        geo_record = {"geometry": "fan", "source_distance_mm": fan[0], "detector_distance_mm": fan[1],
                      "detector": detector, "pixel_size_mm": pixel}
    norm = ct_normalization()
    if units == "attenuation":
        if norm.low != -1000.0:
            raise ScoreReconError("attenuation sinograms need the CT window to start at -1000 HU (air)")
        s = s * np.float32(1000.0 / (WATER_ATTENUATION_PER_MM * (norm.high - norm.low) * pixel))
    turn = 360.0 if fan is not None else 180.0

    def layout(n: int, n_full: int) -> tuple:
        """(operator, full-set sinogram (S, 1, n_full, n_det), metal mask or None) for N = ``n``."""
        full = np.zeros((n_slices, 1, n_full, n_det), dtype=np.float32)
        metal_mask = None
        if task == "sparse-ct":
            if n_angles == n_full:
                op = build_operator(task, n, views=int(views), **geo_opts)
                full[:, 0] = s
            else:
                idx = np.unique(np.round(np.arange(n_angles) * n_full / n_angles).astype(np.int64) % n_full)
                if idx.size != n_angles:
                    raise ScoreReconError(
                        f"the sinogram has {n_angles} views, more than the {n_full} angles of a {n}x{n} image's full "
                        f"set; use at most {n_full} views")
                op = build_operator(task, n, views=idx, **geo_opts)
                full[:, 0, idx] = s
        elif task == "limited-angle-ct":
            if not (math.isfinite(float(arc)) and 0.0 < float(arc) <= turn):
                raise ScoreReconError(f"--arc {arc:g} is outside (0, {turn:g}] degrees for {geometry} beam; "
                                      "give the scanned arc in degrees")
            op = build_operator(task, n, arc=float(arc), **geo_opts)
            measured = np.asarray(op.views)
            if n_angles == n_full:
                full[:, 0] = s
            elif n_angles == measured.size and np.array_equal(measured, np.arange(n_angles)):
                full[:, 0, :n_angles] = s
            else:
                raise ScoreReconError(
                    f"the sinogram has {n_angles} angle rows but a {arc:g} degree arc holds {measured.size} "
                    f"of the {n_full} angles (step {turn:g}/{n_full} degrees); set the arc to "
                    f"{n_angles * turn / n_full:g} degrees or give all {n_full} rows")
        else:
            if n_angles != n_full:
                raise ScoreReconError(
                    f"metal-ct needs the full sinogram: {n_full} angle rows over {turn:g} degrees for {n_det} detector "
                    f"bins, got {n_angles}")
            full_geometry = (ParallelBeamGeometry(n) if fan is None else
                             FanBeamGeometry(n, geo_opts["source_distance"], geo_opts["detector_distance"],
                                             detector=detector))
            with torch.no_grad():
                image = fbp(torch.from_numpy(np.ascontiguousarray(s[:, None])), full_geometry)
            metal_mask = metal_mask_from_image(norm.inverse(image), threshold=float(metal_threshold))
            if not bool(metal_mask.any()):
                raise ScoreReconError(
                    f"no metal above {metal_threshold:g} HU in the FBP image of the sinogram; lower the metal "
                    "threshold or choose sparse-ct / limited-angle-ct")
            op = build_operator(task, n, metal_mask=metal_mask, **geo_opts)
            full[:, 0] = s
        return op, full, metal_mask

    first_error = None
    for n in candidates:
        n_full = n if fan is None else 2 * n
        try:
            op, full, metal_mask = layout(n, n_full)
            break
        except ScoreReconError as exc:  # a neighbouring size sharing the detector count may fit the rows
            first_error = first_error or exc
    else:
        raise first_error
    with torch.no_grad():
        y = op.mask_apply(torch.from_numpy(full)).numpy().astype(np.float32)
    slice_spacing = spacing[2] if len(spacing) > 2 and spacing[2] > 0 else 1.0
    half = (n - 1) / 2.0 * pixel
    if n_slices == 1:
        geometry = {"spacing": [pixel, pixel], "origin": [-half, -half], "direction": [1.0, 0.0, 0.0, 1.0],
                    "ndim": 2}
    else:
        geometry = {"spacing": [pixel, pixel, slice_spacing], "origin": [-half, -half, float(z0)],
                    "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "ndim": 3}
    return Measurement(
        task=task, y=y, operator_spec=op.spec(),
        operator_arrays={k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in op.arrays().items()},
        normalization=ct_normalization(*DEFAULT_CT_WINDOW), geometry=geometry, seed=int(seed),
        metal=({"source": "sinogram", "threshold_hu": float(metal_threshold), "pixels": int(metal_mask.sum())}
               if metal_mask is not None else {}),
        metal_mask=None if metal_mask is None else metal_mask.cpu().numpy().astype(bool),
        options={"views": int(n_angles), "units": units, **geo_record},
        source={"sinogram": name, "shape": [int(v) for v in s.shape], "modality": "CT"},
    )


#: largest sinogram array the converter expands into memory (bytes, as declared in the file's header)
MAX_SINOGRAM_BYTES = 2 << 30


def _declared(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype the ``sinogram`` member of an .npz declares, read from its header without loading it."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        if "sinogram.npy" not in archive.namelist():
            return None
        with archive.open("sinogram.npy") as fh:
            version = np.lib.format.read_magic(fh)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = reader(fh)
    return tuple(int(v) for v in shape), np.dtype(dtype)


def read_sinogram_file(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], float]:
    """``(sinogram, spacing, z0)`` from a ``.npz`` with ``sinogram`` and optional ``spacing`` / ``z0``.

    The declared size is checked before anything is expanded (at most :data:`MAX_SINOGRAM_BYTES`), and spacing
    and z0 must be finite (spacing positive); a truncated, malformed or oversized file is a
    :class:`ScoreReconError` naming the problem."""
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise ScoreReconError(f"sinogram file {path} does not exist; check the path")
    try:
        declared = _declared(path)
        if declared is None:
            raise ScoreReconError(f"{path.name} holds no 'sinogram' array; save it with numpy.savez(sinogram=...)")
        shape, dtype = declared
        if len(shape) not in (2, 3) or dtype.kind not in "fiu":
            raise ScoreReconError(f"{path.name}: 'sinogram' is a {dtype} array of shape {shape}; expected a real "
                                  "(S, angles, detectors) or (angles, detectors) array")
        nbytes = int(np.prod(shape, dtype=np.float64)) * max(dtype.itemsize, 4)
        if nbytes > MAX_SINOGRAM_BYTES:
            raise ScoreReconError(f"{path.name}: 'sinogram' declares {shape} ({nbytes / 2**30:.1f} GiB), more than "
                                  f"the {MAX_SINOGRAM_BYTES / 2**30:.0f} GiB the converter reads; split the volume")
        with np.load(path, allow_pickle=False) as data:
            sinogram = np.array(data["sinogram"], dtype=np.float32)
            spacing = tuple(float(v) for v in np.asarray(data["spacing"]).ravel()) if "spacing" in data \
                else (1.0, 1.0, 1.0)
            z0 = float(np.asarray(data["z0"]).reshape(())) if "z0" in data else 0.0
    except ScoreReconError:
        raise
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        msg = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ScoreReconError(f"{path} is not a readable .npz sinogram file ({msg}); it may be truncated: "
                              "write it again with numpy.savez") from None
    if len(spacing) != 3:
        raise ScoreReconError(f"{path.name}: spacing must hold 3 values (detector, angle, slice), got {len(spacing)}")
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ScoreReconError(f"{path.name}: spacing {spacing} must be 3 finite positive numbers (mm)")
    if not np.isfinite(z0):
        raise ScoreReconError(f"{path.name}: z0 {z0} must be a finite position in mm")
    return sinogram, spacing, z0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``scorerecon import-sinogram``."""
    p.add_argument("--input", required=True, help="sinogram .npz (array 'sinogram' (S, A, D); 'spacing', 'z0')")
    p.add_argument("--output", required=True, help="measurement .npz to write")
    p.add_argument("--task", default="sparse-ct", choices=SINOGRAM_TASKS)
    p.add_argument("--views", type=int, default=23, help="sparse-ct: views kept of a full-set sinogram")
    p.add_argument("--arc", type=float, default=90.0, help="limited-angle-ct: arc in degrees")
    p.add_argument("--metal-threshold", type=float, default=3000.0, help="metal-ct: HU threshold of the metal")
    p.add_argument("--units", default="normalized", choices=SINOGRAM_UNITS)
    p.add_argument("--size", type=int, default=0, help="expected image size (0: from the detector count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="sinogram", help="name recorded as the measurement's source")
    p.add_argument("--geometry", default="parallel", choices=CT_GEOMETRIES,
                   help="source geometry: parallel (N views over 180 degrees) or fan (2N source angles over 360)")
    p.add_argument("--source-distance", type=float, default=None, metavar="MM",
                   help=f"fan beam: source to rotation centre in mm (default {DEFAULT_SOURCE_DISTANCE_MM:g})")
    p.add_argument("--detector-distance", type=float, default=None, metavar="MM",
                   help=f"fan beam: rotation centre to detector in mm (default {DEFAULT_DETECTOR_DISTANCE_MM:g})")
    p.add_argument("--detector", default="curved", choices=DETECTORS, help="fan beam: detector shape")


def build_parser() -> argparse.ArgumentParser:
    """A parser of the command's options alone (the Slicer module's argument lists are checked against it)."""
    p = OneLineParser(prog="scorerecon import-sinogram",
                      description="Convert a measured parallel- or fan-beam sinogram (.npz) to a measurement file.")
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """``scorerecon import-sinogram``: read, convert and write (atomically); errors are raised for the CLI."""
    from .measurement import check_measurement_output

    output = check_measurement_output(args.output)
    sinogram, spacing, z0 = read_sinogram_file(args.input)
    m = sinogram_to_measurement(sinogram, args.task, views=args.views, arc=args.arc,
                                metal_threshold=args.metal_threshold, units=args.units, spacing=spacing,
                                z0=z0, size=args.size, seed=args.seed, name=args.name,
                                geometry=args.geometry, source_distance=args.source_distance,
                                detector_distance=args.detector_distance, detector=args.detector)
    save_measurement(output, m)
    print(f"wrote {args.output}: {m.n_slices} slice(s) of {m.image_size}x{m.image_size}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ScoreReconLib.sinogram_input ...``: the same as ``scorerecon import-sinogram ...``."""
    from .cli import main as cli_main

    return cli_main(["import-sinogram", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
