"""CT geometry: parallel- and fan-beam ray layouts and the shape checks made against them.

Pixel units throughout: an ``N×N`` image with pixel ``(row r, column c)`` centred at
``x = c − (N−1)/2`` (right) and ``y = (N−1)/2 − r`` (up). Every measured ray is a line
``x cos θ + y sin θ = t``. Parallel beam (:class:`ParallelBeamGeometry`): at angle ``θ`` the detector
bin ``d`` measures ``t = d − (n_det−1)/2``, detector spacing one pixel, so θ = 0 sums the image down
its columns (like ``skimage.transform.radon``). Fan beam (:class:`FanBeamGeometry`): a point source
at distance ``D`` from the rotation centre and source angle ``β``; bin ``d`` sees fan angle ``γ_d``
and measures the line ``θ = β − γ_d``, ``t = D sin γ_d`` (equiangular curved detector, or flat).
Values are line integrals in pixel lengths. Sinograms are ``(B, 1, n_angles, n_det)``; images
``(B, 1, N, N)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from ..errors import ScoreReconError
from ..vocabulary import MIN_IMAGE_SIZE  # noqa: F401  (the smallest image side the CT operators accept)

#: CT source geometries
GEOMETRIES = ("parallel", "fan")
#: fan-beam detector shapes: equiangular arc centred on the source, or flat
DETECTORS = ("curved", "flat")


class _KeyedGeometry:
    """Equality and hashing of a geometry by :meth:`key`, a stable hash of :meth:`_key_fields`."""

    def _key_fields(self) -> dict:
        raise NotImplementedError

    def key(self) -> str:
        """Stable hash of the geometry (16 hex digits), used to name cached system matrices."""
        return hashlib.sha256(json.dumps(self._key_fields(), sort_keys=True).encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())


class ParallelBeamGeometry(_KeyedGeometry):
    """Parallel-beam geometry for ``image_size``² images.

    ``n_angles`` angles ``arc·k/n_angles`` (radians, k = 0…n_angles−1; default ``image_size`` angles
    over ``arc = π``), ``n_det`` detector bins of one pixel (default: the smallest odd number
    ≥ ⌈√2·image_size⌉, so every ray through the image is measured).
    """

    def __init__(self, image_size: int, n_angles: int | None = None, arc: float = math.pi,
                 n_det: int | None = None) -> None:
        image_size = check_image_size(image_size)
        n_angles = image_size if n_angles is None else as_int(n_angles, "n_angles")
        if n_angles < 1:
            raise ScoreReconError(f"n_angles must be at least 1, got {n_angles}; pass a positive angle count")
        arc = float(arc)
        if not (math.isfinite(arc) and 0.0 < arc <= math.pi + 1e-12):
            raise ScoreReconError(
                f"geometry arc {arc:.6g} rad is outside (0, π]; give the scanned arc in radians, at most π")
        min_det = math.ceil(math.sqrt(2.0) * image_size)
        if n_det is None:
            n_det = min_det + (1 - min_det % 2)
        n_det = as_int(n_det, "n_det")
        if n_det < 1:
            raise ScoreReconError(f"n_det must be at least 1, got {n_det}; pass a positive detector count")
        self.image_size = image_size
        self.n_angles = n_angles
        self.arc = min(arc, math.pi)
        self.n_det = n_det

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in radians, shape (n_angles,), float64."""
        return self.arc * np.arange(self.n_angles, dtype=np.float64) / self.n_angles

    kind = "parallel"

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ, t)`` of every bin's line ``x cos θ + y sin θ = t``: two (n_angles, n_det) float64 arrays."""
        theta = np.repeat(self.angles[:, None], self.n_det, axis=1)
        t = np.broadcast_to(np.arange(self.n_det, dtype=np.float64) - (self.n_det - 1) / 2.0, theta.shape)
        return theta, np.ascontiguousarray(t)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "parallel", "image_size": self.image_size, "n_angles": self.n_angles,
                "arc": self.arc, "n_det": self.n_det}

    def _key_fields(self) -> dict:
        return dict(self.to_dict(), arc=f"{self.arc:.12f}")

    def __repr__(self) -> str:
        return (f"ParallelBeamGeometry(image_size={self.image_size}, n_angles={self.n_angles}, "
                f"arc={self.arc:.6g}, n_det={self.n_det})")


#: most detector bins per image pixel a fan-beam geometry may need (a parallel beam needs √2; a flat detector
#: with the source at the image's edge needs without bound)
MAX_DET_PER_PIXEL = 8


class FanBeamGeometry(_KeyedGeometry):
    """Fan-beam geometry for ``image_size``² images (all lengths in pixels).

    A point source at ``source_distance`` from the rotation centre (the image centre) turns through
    ``n_angles`` source angles ``β = arc·k/n_angles`` (default 2·image_size angles over a full turn,
    ``arc = 2π``); the detector lies ``detector_distance`` beyond the centre. ``detector="curved"``:
    equiangular bins on an arc about the source, fan angles ``γ_d = (d − (n_det−1)/2)/source_distance``
    (one pixel of arc at the centre); ``"flat"``: equally spaced bins whose pitch, scaled to the
    centre, is one pixel, ``γ_d = atan((d − (n_det−1)/2)/source_distance)``. Default ``n_det``: the
    smallest odd count whose fan covers the image's circumscribed circle. Bin ``d`` at angle ``β``
    measures the line ``θ = β − γ_d``, ``t = source_distance·sin γ_d``. With ideal line integrals
    ``detector_distance`` only sets the physical detector (``detector_pitch``), not the values.
    """

    kind = "fan"

    def __init__(self, image_size: int, source_distance: float, detector_distance: float,
                 n_angles: int | None = None, arc: float = 2.0 * math.pi, detector: str = "curved",
                 n_det: int | None = None) -> None:
        image_size = check_image_size(image_size)
        if detector not in DETECTORS:
            raise ScoreReconError(f"unknown fan-beam detector '{detector}'; choose one of {', '.join(DETECTORS)}")
        radius = math.sqrt(2.0) * image_size / 2.0 + 1.0
        try:
            src, det = float(source_distance), float(detector_distance)
        except (TypeError, ValueError):
            raise ScoreReconError("fan-beam source and detector distances must be numbers") from None
        if not (math.isfinite(src) and src > radius):
            raise ScoreReconError(
                f"fan-beam source distance {src:.6g} px must exceed the image's circumscribed radius "
                f"{radius:.1f} px (the source would sit inside the image); give a larger --source-distance")
        if not (math.isfinite(det) and det > 0):
            raise ScoreReconError(f"fan-beam detector distance {det:.6g} px must be a positive number; "
                                  "give the rotation centre to detector distance")
        n_angles = 2 * image_size if n_angles is None else as_int(n_angles, "n_angles")
        if n_angles < 1:
            raise ScoreReconError(f"n_angles must be at least 1, got {n_angles}; pass a positive angle count")
        arc = float(arc)
        if not (math.isfinite(arc) and 0.0 < arc <= 2.0 * math.pi + 1e-12):
            raise ScoreReconError(
                f"fan-beam arc {arc:.6g} rad is outside (0, 2π]; give the source's arc in radians, at most 2π")
        gamma_max = math.asin(radius / src)
        half = math.ceil(gamma_max * src if detector == "curved" else math.tan(gamma_max) * src)
        n_det = 2 * half + 1 if n_det is None else as_int(n_det, "n_det")
        if n_det < 1:
            raise ScoreReconError(f"n_det must be at least 1, got {n_det}; pass a positive detector count")
        if n_det > MAX_DET_PER_PIXEL * image_size:  # checked before any projector memory is allocated
            raise ScoreReconError(
                f"a {detector} detector with the source {src:.4g} px from the centre needs {n_det} bins to cover a "
                f"{image_size}-pixel image, more than {MAX_DET_PER_PIXEL} per image pixel: the source sits almost "
                f"at the image's edge ({radius:.1f} px); give a larger --source-distance (e.g. "
                f"{1.5 * radius:.0f} px or more) or a curved detector")
        if n_angles > 4 * 8192:
            raise ScoreReconError(f"n_angles {n_angles} is more than {4 * 8192}; give fewer angles")
        self.image_size = image_size
        self.n_angles = n_angles
        self.arc = min(arc, 2.0 * math.pi)
        self.n_det = n_det
        self.source_distance = src
        self.detector_distance = det
        self.detector = detector

    @property
    def angles(self) -> np.ndarray:
        """Source angles β in radians, shape (n_angles,), float64."""
        return self.arc * np.arange(self.n_angles, dtype=np.float64) / self.n_angles

    @property
    def full_turn(self) -> bool:
        """True when the source angles cover a full turn (the sinogram is periodic in β)."""
        return abs(self.arc - 2.0 * math.pi) < 1e-9

    @property
    def fan_angles(self) -> np.ndarray:
        """Fan angle γ of each bin in radians, shape (n_det,), float64."""
        u = np.arange(self.n_det, dtype=np.float64) - (self.n_det - 1) / 2.0
        return u / self.source_distance if self.detector == "curved" else np.arctan(u / self.source_distance)

    @property
    def detector_pitch(self) -> float:
        """Bin pitch on the physical detector: radians (curved) or pixels at the detector (flat)."""
        if self.detector == "curved":
            return 1.0 / self.source_distance
        return (self.source_distance + self.detector_distance) / self.source_distance

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ, t)`` of every bin's line ``x cos θ + y sin θ = t``: two (n_angles, n_det) float64 arrays."""
        gamma = self.fan_angles[None, :]
        theta = self.angles[:, None] - gamma
        t = np.broadcast_to(self.source_distance * np.sin(gamma), theta.shape)
        return theta, np.ascontiguousarray(t)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "fan", "image_size": self.image_size, "n_angles": self.n_angles, "arc": self.arc,
                "n_det": self.n_det, "source_distance": self.source_distance,
                "detector_distance": self.detector_distance, "detector": self.detector}

    def _key_fields(self) -> dict:
        return dict(self.to_dict(), arc=f"{self.arc:.12f}", source_distance=f"{self.source_distance:.9f}",
                    detector_distance=f"{self.detector_distance:.9f}")

    def __repr__(self) -> str:
        return (f"FanBeamGeometry(image_size={self.image_size}, n_angles={self.n_angles}, arc={self.arc:.6g}, "
                f"n_det={self.n_det}, source_distance={self.source_distance:.6g}, "
                f"detector_distance={self.detector_distance:.6g}, detector={self.detector!r})")


class ViewSubsetGeometry(_KeyedGeometry):
    """The views ``views`` (sorted distinct indices) of a parallel- or fan-beam ``parent``: its sinogram rows
    are the parent's rows ``views``, so a projector built on it computes only the measured views of a
    sparse-view or limited-angle scan (23 of 512 views: 1/22 of the work). Every other attribute is the
    parent's (``kind``, ``n_det``, fan distances)."""

    def __init__(self, parent: ParallelBeamGeometry | FanBeamGeometry, views: np.ndarray) -> None:
        v = np.asarray(views, dtype=np.int64).reshape(-1)
        if v.size < 1 or v.min() < 0 or v.max() >= parent.n_angles or np.unique(v).size != v.size:
            raise ScoreReconError(f"views must be distinct indices in [0, {parent.n_angles - 1}]")
        self.parent = parent
        self.views = np.sort(v)
        self.n_angles = int(self.views.size)

    def __getattr__(self, name: str) -> Any:
        if name == "parent":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.parent, name)

    @property
    def angles(self) -> np.ndarray:
        """The measured views' angles in radians, shape (n_angles,), float64."""
        return self.parent.angles[self.views]

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)`` of the measured views."""
        return self.n_angles, self.parent.n_det

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(θ, t)`` of the measured views' bins: the parent's rows ``views``."""
        theta, t = self.parent.rays()
        return theta[self.views], t[self.views]

    def to_dict(self) -> dict:
        return {**self.parent.to_dict(), "views": self.views.tolist()}

    def _key_fields(self) -> dict:
        return {"parent": self.parent.key(), "views": self.views.tolist()}

    def __repr__(self) -> str:
        return f"ViewSubsetGeometry({self.parent!r}, {self.n_angles} views)"


#: any geometry a projector takes
Geometry = ParallelBeamGeometry | FanBeamGeometry | ViewSubsetGeometry


def make_geometry(image_size: int, kind: str = "parallel", n_angles: int | None = None,
                  source_distance: float | None = None, detector_distance: float | None = None,
                  detector: str = "curved") -> Geometry:
    """The full-angle geometry of ``kind`` ("parallel": π; "fan": 2π, distances in pixels, both required)."""
    if kind == "parallel":
        return ParallelBeamGeometry(image_size, n_angles)
    if kind == "fan":
        if source_distance is None or detector_distance is None:
            raise ScoreReconError("fan-beam geometry needs source_distance and detector_distance (pixels); "
                                  "pass both (CLI: --source-distance MM --detector-distance MM)")
        return FanBeamGeometry(image_size, source_distance, detector_distance, n_angles, detector=detector)
    raise ScoreReconError(f"unknown CT geometry '{kind}'; choose one of {', '.join(GEOMETRIES)}")


def as_int(value: Any, name: str) -> int:
    """``value`` as an int when it is a whole number (int, or integral float), else :class:`ScoreReconError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise ScoreReconError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def check_image_size(image_size: Any) -> int:
    """``image_size`` as an int of at least :data:`MIN_IMAGE_SIZE` pixels (the CT geometries' smallest image)."""
    image_size = as_int(image_size, "image_size")
    if image_size < MIN_IMAGE_SIZE:
        raise ScoreReconError(
            f"CT image size {image_size} is too small; use images of at least "
            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
    return image_size


def check_sinogram(s: torch.Tensor, geometry: Geometry, what: str = "sinogram") -> None:
    """Raise :class:`ScoreReconError` unless ``s`` is a (B, 1, n_angles, n_det) batch of ``geometry``."""
    shape = (geometry.n_angles, geometry.n_det)
    if s.ndim != 4 or s.shape[1] != 1 or tuple(s.shape[-2:]) != shape:
        raise ScoreReconError(
            f"{what} has shape {tuple(s.shape)} but this geometry needs (B, 1, {shape[0]}, {shape[1]}); "
            "build the operator with the sinogram's angle and detector counts")


def check_square_image(x: torch.Tensor, geometry: Geometry) -> None:
    """Raise :class:`ScoreReconError` unless ``x`` is a (B, 1, N, N) image batch of ``geometry``'s size."""
    n = geometry.image_size
    if x.ndim != 4 or x.shape[1] != 1:
        raise ScoreReconError(f"expected an image batch of shape (B, 1, H, W), got {tuple(x.shape)}; "
                              "add batch/channel axes")
    if x.shape[-1] != x.shape[-2]:
        raise ScoreReconError(f"CT images must be square, got {x.shape[-2]}x{x.shape[-1]}; "
                              "pad or crop the image to a square")
    if x.shape[-1] != n:
        raise ScoreReconError(f"image is {x.shape[-2]}x{x.shape[-1]} but the CT geometry is {n}x{n}; "
                              "resample the image or build the operator for its size")


__all__ = [
    "DETECTORS", "GEOMETRIES", "MAX_DET_PER_PIXEL", "MIN_IMAGE_SIZE", "FanBeamGeometry", "Geometry",
    "ParallelBeamGeometry", "ViewSubsetGeometry", "as_int", "check_sinogram", "check_square_image",
    "make_geometry",
]
