"""CT source geometry options: parallel or fan beam, the fan-beam distances checked and converted from mm
to pixels. Shared by :func:`simulate` and the sinogram import (:mod:`ScoreReconLib.sinogram_input`)."""

from __future__ import annotations

import math

from ..data import Image
from ..errors import ScoreReconError
from ..operators.ct import DETECTORS

#: CT source geometries :func:`simulate` accepts
CT_GEOMETRIES = ("parallel", "fan")
#: fan-beam defaults (mm), a typical clinical scanner: source to rotation centre, centre to detector
DEFAULT_SOURCE_DISTANCE_MM = 595.0
DEFAULT_DETECTOR_DISTANCE_MM = 490.0


def pixel_size_mm(image: Image) -> float:
    """In-plane pixel size of ``image``'s slices (mm): the mean of its two in-plane spacings."""
    spacing = [float(v) for v in image.spacing][:2]
    size = sum(spacing) / len(spacing) if spacing else 1.0
    if not (math.isfinite(size) and size > 0):
        raise ScoreReconError(f"the image's pixel spacing {image.spacing} is not a positive size; fix its header")
    return size


def fan_distances_mm(geometry: str, source_distance: float | None, detector_distance: float | None,
                     detector: str) -> tuple[float, float] | None:
    """``(source, detector distance in mm)`` for fan beam, None for parallel beam; checked.

    ``source_distance`` (source to rotation centre) and ``detector_distance`` (centre to detector)
    default to :data:`DEFAULT_SOURCE_DISTANCE_MM` / :data:`DEFAULT_DETECTOR_DISTANCE_MM`; parallel beam
    takes neither. ``detector`` is one of :data:`~ScoreReconLib.operators.ct.DETECTORS`.
    """
    if geometry not in CT_GEOMETRIES:
        raise ScoreReconError(f"unknown CT geometry '{geometry}'; choose one of {', '.join(CT_GEOMETRIES)}")
    if geometry == "parallel":
        if source_distance is not None or detector_distance is not None:
            raise ScoreReconError("--source-distance / --detector-distance apply to --geometry fan only; "
                                  "add --geometry fan or drop them")
        return None
    src = DEFAULT_SOURCE_DISTANCE_MM if source_distance is None else float(source_distance)
    det = DEFAULT_DETECTOR_DISTANCE_MM if detector_distance is None else float(detector_distance)
    for flag, value in (("--source-distance", src), ("--detector-distance", det)):
        if not (math.isfinite(value) and value > 0):
            raise ScoreReconError(f"{flag} must be a positive distance in mm, got {value:g}")
    if detector not in DETECTORS:
        raise ScoreReconError(f"unknown fan-beam detector '{detector}'; choose one of {', '.join(DETECTORS)}")
    return src, det


def ct_geometry_options(image: Image, geometry: str, source_distance: float | None,
                        detector_distance: float | None, detector: str) -> tuple[dict, dict]:
    """``(operator options in pixels, record in mm)`` of a CT source geometry for ``image``'s slices.

    Fan beam: ``source_distance`` (source to rotation centre) and ``detector_distance`` (centre to
    detector) in mm, default :data:`DEFAULT_SOURCE_DISTANCE_MM` / :data:`DEFAULT_DETECTOR_DISTANCE_MM`,
    checked by :func:`fan_distances_mm` and converted to pixels with :func:`pixel_size_mm`.
    """
    fan = fan_distances_mm(geometry, source_distance, detector_distance, detector)
    if fan is None:
        return {"geometry": "parallel"}, {"geometry": "parallel"}
    src, det = fan
    px = pixel_size_mm(image)
    n = int(image.array.shape[-1])
    radius_mm = (math.sqrt(2.0) * n / 2.0 + 1.0) * px
    if src <= radius_mm:
        raise ScoreReconError(f"--source-distance {src:g} mm puts the source inside the {n}x{n} image of "
                              f"{px:.3g} mm pixels (its corners reach {radius_mm:.0f} mm from the centre); "
                              "give a larger source distance")
    opts = {"geometry": "fan", "source_distance": src / px, "detector_distance": det / px, "detector": detector}
    record = {"geometry": "fan", "source_distance_mm": src, "detector_distance_mm": det, "detector": detector,
              "pixel_size_mm": px}
    return opts, record
