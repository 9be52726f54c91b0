"""Header and consistency checks of measurement files: every declared size, type and field is checked
before (and after) the arrays are read, each failure one :class:`ScoreReconError` naming the file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data import Normalization
from ..errors import ScoreReconError
from ..operators import TASKS
from ..utils import check_finite
from .geometry import CT_GEOMETRIES
from .record import MAX_COILS, MAX_IMAGE_SIZE, MEASUREMENT_FORMAT_VERSION, MIN_IMAGE_SIZE, Measurement


def bad_file(path: Path, why: str) -> ScoreReconError:
    """The one-line error for an unusable measurement file ``path`` and the reason ``why``."""
    return ScoreReconError(
        f"{path} is not a usable ScoreRecon measurement file ({why}); make one with 'scorerecon simulate'"
    )


def expected_y_shape(path: Path, header: dict) -> tuple[int, ...]:
    """The ``y`` shape the header's operator implies, after checking the sizes it declares."""
    spec = header.get("operator")
    if not isinstance(spec, dict):
        raise bad_file(path, "its header has no operator object")
    n = spec.get("image_size")
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_IMAGE_SIZE <= n <= MAX_IMAGE_SIZE:
        raise bad_file(path, f"operator image_size {str(n)[:40]} is not a whole number from {MIN_IMAGE_SIZE} to "
                              f"{MAX_IMAGE_SIZE}")
    s = header.get("n_slices")
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise bad_file(path, f"n_slices {str(s)[:40]} is not a positive whole number")
    if header.get("task") == "mri":
        coils = spec.get("coils") or 1
        if isinstance(coils, bool) or not isinstance(coils, int) or not 1 <= coils <= MAX_COILS:
            raise bad_file(path, f"operator coils {str(coils)[:40]} is not a whole number from 1 to {MAX_COILS}")
        return (s, coils, n, n)
    shape = []
    for key in ("n_angles", "n_det"):
        v = spec.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4 * MAX_IMAGE_SIZE:
            raise bad_file(path, f"operator {key} {str(v)[:40]} is not a whole number from 1 to {4 * MAX_IMAGE_SIZE}")
        shape.append(v)
    return (s, 1, *shape)


_MISSING = object()


def typed(path: Path, header: dict, key: str, kind: type, default: Any = _MISSING) -> Any:
    """``header[key]`` checked to be of ``kind`` (int: whole numbers; float: finite-or-not numbers)."""
    if key not in header:
        if default is _MISSING:
            raise bad_file(path, f"its header lacks '{key}'")
        return default
    v = header[key]
    ok = {
        str: isinstance(v, str),
        dict: isinstance(v, dict),
        int: isinstance(v, int) and not isinstance(v, bool),
        float: isinstance(v, int | float) and not isinstance(v, bool),
    }[kind]
    if not ok:
        name = {str: "a string", dict: "an object", int: "a whole number", float: "a number"}[kind]
        raise bad_file(path, f"header field '{key}' must be {name}, got {str(v)[:40]!r}")
    return float(v) if kind is float else (dict(v) if kind is dict else v)


def number_list(path: Path, header: dict, key: str) -> list[float]:
    v = header.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool)
                                          and math.isfinite(x) and x >= 0 for x in v):
        raise bad_file(path, f"header field '{key}' must be a list of finite numbers >= 0")
    return [float(x) for x in v]


def header_normalization(path: Path, d: Any) -> Normalization:
    if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or d["kind"] not in ("hu", "scale"):
        raise bad_file(path, "its header's normalization must be an object with kind 'hu' or 'scale'")
    lo, hi = d.get("low"), d.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)) \
            or not hi > lo:
        raise bad_file(path, f"its header's normalization needs finite numbers low < high, got low={lo!r}, "
                              f"high={hi!r}")
    return Normalization(d["kind"], float(lo), float(hi))


def header_geometry(path: Path, g: Any) -> dict:
    if not isinstance(g, dict):
        raise bad_file(path, "its header's geometry must be an object")
    ndim = g.get("ndim")
    if ndim not in (2, 3) or isinstance(ndim, bool):
        raise bad_file(path, f"header geometry ndim {str(ndim)[:20]} must be 2 or 3")
    for key, length, positive in (("spacing", ndim, True), ("origin", ndim, False), ("direction", ndim * ndim, False)):
        v = g.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != length or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
                for x in v):
            rule = "positive " if positive else ""
            raise bad_file(path, f"header geometry {key} must be a list of {length} finite {rule}numbers")
    d = g.get("direction")
    if d is not None and abs(float(np.linalg.det(np.asarray(d, dtype=np.float64).reshape(ndim, ndim)))) < 1e-6:
        raise bad_file(path, "header geometry direction is singular (its axes are not independent); it must be "
                              "the image's orientation matrix, e.g. the identity")
    return dict(g)


def check_version(path: Path, header: dict) -> None:
    version = header.get("format_version")
    if version is None:
        raise bad_file(path, "its header has no format_version")
    if version != MEASUREMENT_FORMAT_VERSION:
        written_by = header.get("library_version", "unknown")
        raise ScoreReconError(
            f"{path} uses measurement format version {version} (written by scorerecon {written_by}) but this "
            f"scorerecon {__version__} reads version {MEASUREMENT_FORMAT_VERSION}; re-simulate it with this "
            "version ('scorerecon simulate')"
        )


def check_consistency(path: Path, m: Measurement) -> None:
    if m.task not in TASKS:
        raise bad_file(path, f"unknown task '{m.task}'")
    if m.operator_spec.get("task") != m.task:
        raise bad_file(path, f"operator task '{m.operator_spec.get('task')}' differs from task '{m.task}'")
    if "image_size" not in m.operator_spec:
        raise bad_file(path, "the operator spec has no image_size")
    n = m.image_size
    y = m.y
    channels = m.coils if m.task == "mri" else 1
    if y.ndim != 4 or y.shape[0] < 1 or y.shape[1] != channels:
        raise bad_file(path, f"y has shape {tuple(y.shape)}, expected (slices, {channels}, ...)")
    if m.task == "mri":
        if not np.iscomplexobj(y) or tuple(y.shape[-2:]) != (n, n):
            raise bad_file(path, f"MRI k-space must be complex (S, {channels}, {n}, {n}), got {y.dtype} "
                                  f"{tuple(y.shape)}")
        maps = m.operator_arrays.get("maps")
        if channels > 1 and (maps is None or maps.ndim != 4 or maps.shape[0] not in (1, y.shape[0])
                             or tuple(maps.shape[1:]) != (channels, n, n)):
            raise bad_file(path, f"coil maps {None if maps is None else tuple(maps.shape)} do not fit k-space "
                                  f"{tuple(y.shape)}")
    else:
        if np.iscomplexobj(y) or not np.issubdtype(y.dtype, np.floating):
            raise bad_file(path, f"CT sinograms must be real floats, got {y.dtype}")
        spec = m.operator_spec
        check_ct_geometry(path, spec)
        for axis, key in ((-2, "n_angles"), (-1, "n_det")):
            if key in spec and spec[key] is not None and int(spec[key]) != y.shape[axis]:
                raise bad_file(path, f"y has {y.shape[axis]} {key} but the operator has {spec[key]}")
    check_finite(y, f"measurements in {path}")
    if m.metal_mask is not None and tuple(m.metal_mask.shape) != (y.shape[0], 1, n, n):
        raise bad_file(path, f"metal_mask has shape {tuple(m.metal_mask.shape)}, expected ({y.shape[0]}, 1, {n}, {n})")
    ndim = int(m.geometry.get("ndim", 0))
    if ndim not in (2, 3) or (ndim == 2 and y.shape[0] != 1):
        raise bad_file(path, f"geometry of a {ndim}-D image does not fit {y.shape[0]} slices")
    if m.noise_std and len(m.noise_std) != y.shape[0]:
        raise bad_file(path, f"{len(m.noise_std)} noise levels for {y.shape[0]} slices")


def check_ct_geometry(path: Path, spec: dict) -> None:
    """The CT operator's geometry fields: a known kind; for fan beam finite positive distances in pixels
    with the source outside the image and a known detector shape."""
    kind = spec.get("geometry")
    if kind not in CT_GEOMETRIES:
        raise bad_file(path, f"the CT operator's geometry is {kind!r}, expected one of {', '.join(CT_GEOMETRIES)}")
    if kind != "fan":
        return
    for key in ("source_distance", "detector_distance"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise bad_file(path, f"the fan-beam {key} is {value!r}, expected a positive number of pixels")
    radius = math.sqrt(2.0) * int(spec["image_size"]) / 2.0 + 1.0
    if spec["source_distance"] <= radius:
        raise bad_file(path, f"the fan-beam source distance {spec['source_distance']:g} px lies inside the "
                              f"image (radius {radius:.1f} px)")
    if spec.get("detector", "curved") not in ("curved", "flat"):
        raise bad_file(path, f"the fan-beam detector is {spec.get('detector')!r}, expected curved or flat")
