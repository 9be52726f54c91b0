"""Measurement files: simulate measurements from an image and store them self-describingly.

A :class:`Measurement` holds everything a reconstruction needs besides the prior: the task, the
measurements ``y`` in the operators' *full layout* (``(S, 1, n_angles, n_det)`` float32 sinograms
for CT, ``(S, 1, N, N)`` complex64 k-space for MRI, zeros where nothing was measured; ``S`` slices
taken along axis 0 of a volume), the operator (``spec()`` + ``arrays()``), the intensity
normalisation, the source geometry (to write results back in physical units and space), the noise
level and seed, and for metal-artefact CT the metal mask (pixels excluded from metrics).

On disk it is one ``.npz`` (``np.savez_compressed``, written atomically, read with
``allow_pickle=False``): a JSON ``header`` string plus the arrays ``y``, ``op__<name>`` for each
operator array and optionally ``metal_mask``.

Noise model (:func:`simulate`): per slice ``s``, ``σ_s = noise × max |y_s|`` over the measured
entries; CT adds real Gaussian noise ``σ_s · N(0, 1)``, MRI complex Gaussian noise
``σ_s · (N(0, 1) + i N(0, 1)) / √2`` (so ``E|ε|² = σ_s²``), on measured entries only.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from . import __version__
from .data import (
    DEFAULT_CT_WINDOW,
    Image,
    Normalization,
    ct_normalization,
    guess_modality,
    image_slices,
    mr_normalization,
    resample_image,
)
from .errors import ScoreReconError
from .operators import TASKS, build_operator, operator_from_spec
from .operators.base import MeasurementOperator
from .utils import atomic_path, check_finite

#: version of the measurement file format (checkpoints keep ``ScoreReconLib.FORMAT_VERSION``). 2: the CT
#: operator records its source geometry ("parallel" or "fan" with source / detector distances in pixels).
MEASUREMENT_FORMAT_VERSION = 2
#: tasks whose operator is a CT projection
CT_TASKS = ("sparse-ct", "limited-angle-ct", "metal-ct")
#: CT source geometries :func:`simulate` accepts
CT_GEOMETRIES = ("parallel", "fan")
#: fan-beam defaults (mm), a typical clinical scanner: source to rotation centre, centre to detector
DEFAULT_SOURCE_DISTANCE_MM = 595.0
DEFAULT_DETECTOR_DISTANCE_MM = 490.0
#: MRI sampling mask kinds (see :func:`ScoreReconLib.operators.mri.make_mask`)
MRI_MASKS = ("equispaced", "random", "variable-density", "poisson")
#: smallest image side the library accepts (pixels)
MIN_IMAGE_SIZE = 16
#: prefix of operator arrays inside the .npz
_OP_PREFIX = "op__"
#: slices projected per operator call while simulating (bounds memory on large volumes)
_CHUNK = 16


def task_modality(task: str) -> str:
    """"CT" for the CT tasks, "MR" for mri."""
    if task in CT_TASKS:
        return "CT"
    if task == "mri":
        return "MR"
    raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


@dataclass
class Measurement:
    """Simulated (or acquired) measurements of ``S`` slices plus what is needed to reconstruct them.

    ``y``: full-layout measurements ``(S, 1, ...)`` (float32 CT sinograms in pixel-unit line
    integrals of the normalised image, complex64 MRI k-space). ``operator_spec`` / ``operator_arrays``
    rebuild the operator (:meth:`operator`). ``normalization`` maps physical intensities (HU for CT)
    to the normalised images ``y`` was made from. ``geometry`` is the reconstructed image's
    :meth:`Image.geometry` (``ndim`` 2 for one slice, 3 for a volume). ``metal_mask``: ``(S, 1, N, N)``
    bool, pixels to exclude from metrics (metal-ct only). ``noise`` is the relative noise level,
    ``noise_std`` the absolute per-slice standard deviations that were applied.
    """

    task: str
    y: np.ndarray
    operator_spec: dict
    operator_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    normalization: Normalization = field(default_factory=ct_normalization)
    geometry: dict = field(default_factory=dict)
    slice_axis: int = 0
    noise: float = 0.0
    noise_std: list[float] = field(default_factory=list)
    seed: int = 0
    metal: dict = field(default_factory=dict)
    metal_mask: np.ndarray | None = None
    options: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    format_version: int = MEASUREMENT_FORMAT_VERSION
    library_version: str = __version__

    # ------------------------------------------------------------------------------ properties
    @property
    def n_slices(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.operator_spec["image_size"])

    @property
    def coils(self) -> int:
        """Receive coils of MRI k-space (1 for single-coil MRI and for CT)."""
        return int(self.operator_spec.get("coils") or 1)

    @property
    def modality(self) -> str:
        """"CT" or "MR" (from the task)."""
        return task_modality(self.task)

    def header(self) -> dict:
        """The JSON header stored in the file."""
        return {
            "format_version": int(self.format_version),
            "library_version": str(self.library_version),
            "task": self.task,
            "operator": self.operator_spec,
            "normalization": self.normalization.to_dict(),
            "geometry": self.geometry,
            "slice_axis": int(self.slice_axis),
            "n_slices": self.n_slices,
            "image_size": self.image_size,
            "y_shape": [int(s) for s in self.y.shape],
            "noise": float(self.noise),
            "noise_std": [float(s) for s in self.noise_std],
            "seed": int(self.seed),
            "metal": self.metal,
            "options": self.options,
            "source": self.source,
        }

    # ------------------------------------------------------------------------------- operators
    def operator(self, device: torch.device | str = "cpu", slices: slice | None = None) -> MeasurementOperator:
        """Rebuild the operator, for all slices or for ``slices`` (metal-ct masks differ per slice)."""
        arrays = dict(self.operator_arrays)
        n = self.n_slices
        if slices is not None and (self.task == "metal-ct" or self.coils > 1):
            arrays = {k: (v[slices] if v.ndim == 4 and v.shape[0] == n else v) for k, v in arrays.items()}
        try:
            op = operator_from_spec(self.operator_spec, arrays, device=device)
        except ScoreReconError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
            raise ScoreReconError(
                f"the stored {self.task} operator cannot be rebuilt ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:100]}); the measurement file is corrupt: re-simulate it"
            ) from None
        count = len(range(n)[slices]) if slices is not None else n
        expected = tuple(op.measurement_shape(count))
        got = tuple(self.y[slices].shape) if slices is not None else tuple(self.y.shape)
        if expected != got:
            raise ScoreReconError(
                f"measurements have shape {got} but the stored {self.task} operator expects {expected}; "
                "the file is inconsistent: re-simulate it"
            )
        return op

    def y_tensor(self, slices: slice | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Measurements of ``slices`` (all by default) as a tensor on ``device``."""
        y = self.y if slices is None else self.y[slices]
        return torch.from_numpy(np.ascontiguousarray(y)).to(device)


# ------------------------------------------------------------------------------------ file I/O
def save_measurement(path: str | Path, m: Measurement) -> Path:
    """Write ``m`` to ``path`` (.npz, compressed, atomic); return the path."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ScoreReconError(f"measurement files are .npz; name the output {path.with_suffix('.npz').name}")
    arrays: dict[str, np.ndarray] = {
        "header": np.array(json.dumps(m.header(), sort_keys=True)),
        "y": np.ascontiguousarray(m.y),
    }
    for name, arr in m.operator_arrays.items():
        arrays[_OP_PREFIX + name] = np.ascontiguousarray(np.asarray(arr))
    if m.metal_mask is not None:
        arrays["metal_mask"] = np.ascontiguousarray(np.asarray(m.metal_mask, dtype=bool))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def check_measurement_output(path: str | Path, flag: str = "--output") -> Path:
    """Refuse, before any work, an output that is not a writable ``.npz`` file path (one line)."""
    from .utils import check_output_path

    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ScoreReconError(f"{flag} must be a .npz file, got {path.name}; e.g. {path.stem}.npz")
    if path.is_dir():
        raise ScoreReconError(f"{flag} {path} is a folder; give a .npz file name")
    return check_output_path(path, flag)


def _bad_file(path: Path, why: str) -> ScoreReconError:
    return ScoreReconError(
        f"{path} is not a usable ScoreRecon measurement file ({why}); make one with 'scorerecon simulate'"
    )


#: limits on what a measurement file may declare (checked before any array is decompressed)
MAX_IMAGE_SIZE = 8192
MAX_HEADER_BYTES = 16 << 20
MAX_COILS = 256


def _peek_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member of the archive, read from the member headers only."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            out[info.filename[:-4]] = (tuple(int(d) for d in shape), np.dtype(dtype))
    return out


def _expected_y_shape(path: Path, header: dict) -> tuple[int, ...]:
    """The ``y`` shape the header's operator implies, after checking the sizes it declares."""
    spec = header.get("operator")
    if not isinstance(spec, dict):
        raise _bad_file(path, "its header has no operator object")
    n = spec.get("image_size")
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_IMAGE_SIZE <= n <= MAX_IMAGE_SIZE:
        raise _bad_file(path, f"operator image_size {str(n)[:40]} is not a whole number from {MIN_IMAGE_SIZE} to "
                              f"{MAX_IMAGE_SIZE}")
    s = header.get("n_slices")
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise _bad_file(path, f"n_slices {str(s)[:40]} is not a positive whole number")
    if header.get("task") == "mri":
        coils = spec.get("coils") or 1
        if isinstance(coils, bool) or not isinstance(coils, int) or not 1 <= coils <= MAX_COILS:
            raise _bad_file(path, f"operator coils {str(coils)[:40]} is not a whole number from 1 to {MAX_COILS}")
        return (s, coils, n, n)
    shape = []
    for key in ("n_angles", "n_det"):
        v = spec.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4 * MAX_IMAGE_SIZE:
            raise _bad_file(path, f"operator {key} {str(v)[:40]} is not a whole number from 1 to {4 * MAX_IMAGE_SIZE}")
        shape.append(v)
    return (s, 1, *shape)


def load_measurement(path: str | Path) -> Measurement:
    """Read and validate a measurement file written by :func:`save_measurement`.

    Raises :class:`ScoreReconError` for a missing or corrupt file, missing entries, another format
    version, header fields of the wrong type, or shapes that do not fit together. The header and
    the arrays' shapes are checked before any array is decompressed, so a small file cannot make
    the reader allocate gigabytes.
    """
    path = Path(path)
    if not path.exists():
        raise ScoreReconError(f"measurement file {path} does not exist; check the path")
    if path.is_dir():
        raise ScoreReconError(f"{path} is a folder; expected a measurement .npz file")
    if not zipfile.is_zipfile(path):
        raise _bad_file(path, "not an .npz (zip) archive")
    try:
        shapes = _peek_arrays(path)
        missing = [k for k in ("header", "y") if k not in shapes]
        if missing:
            raise _bad_file(path, f"missing {' and '.join(missing)}")
        for name, (_shape, dtype) in shapes.items():
            if dtype.hasobject:
                raise _bad_file(path, f"array {name} holds Python objects")
        h_shape, h_dtype = shapes["header"]
        if h_shape != () or h_dtype.kind != "U" or h_dtype.itemsize > MAX_HEADER_BYTES:
            raise _bad_file(path, "its header is not a JSON string")
        with np.load(path, allow_pickle=False) as npz:
            header_text = str(npz["header"][()])
            try:
                header = json.loads(header_text)
            except (json.JSONDecodeError, RecursionError):
                raise _bad_file(path, "its header is not valid JSON") from None
            if not isinstance(header, dict):
                raise _bad_file(path, "its header is not a JSON object")
            _check_version(path, header)
            expected = _expected_y_shape(path, header)
            if shapes["y"][0] != expected:
                raise _bad_file(path, f"y has shape {shapes['y'][0]} but the header describes {expected}")
            n = expected[-1] if header.get("task") == "mri" else header["operator"]["image_size"]
            for name, (shape, _dtype) in shapes.items():  # operator arrays are at most slices × a full layout
                if name.startswith(_OP_PREFIX) or name == "metal_mask":
                    limit = expected[0] * max(int(np.prod(expected[1:])), n * n)
                    if int(np.prod(shape, dtype=np.float64)) > limit:
                        raise _bad_file(path, f"array {name} of shape {shape} is larger than the measurement")
            y = npz["y"]
            op_arrays = {k[len(_OP_PREFIX):]: npz[k] for k in npz.files if k.startswith(_OP_PREFIX)}
            metal_mask = npz["metal_mask"] if "metal_mask" in shapes else None
    except ScoreReconError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise _bad_file(path, f"corrupt or not an .npz archive: {msg}") from None
    m = Measurement(
        task=_typed(path, header, "task", str),
        y=y,
        operator_spec=_typed(path, header, "operator", dict),
        operator_arrays=op_arrays,
        normalization=_normalization(path, header.get("normalization")),
        geometry=_geometry(path, header.get("geometry")),
        slice_axis=_typed(path, header, "slice_axis", int, 0),
        noise=_typed(path, header, "noise", float, 0.0),
        noise_std=_number_list(path, header, "noise_std"),
        seed=_typed(path, header, "seed", int, 0),
        metal=_typed(path, header, "metal", dict, {}),
        metal_mask=metal_mask,
        options=_typed(path, header, "options", dict, {}),
        source=_typed(path, header, "source", dict, {}),
        format_version=_typed(path, header, "format_version", int),
        library_version=str(header.get("library_version", "unknown"))[:64],
    )
    if m.slice_axis != 0:
        raise _bad_file(path, f"slice_axis is {m.slice_axis}; this version stores slices along axis 0")
    if not (math.isfinite(m.noise) and m.noise >= 0):
        raise _bad_file(path, f"noise {m.noise} must be a finite number >= 0")
    _check_consistency(path, m)
    return m


_MISSING = object()


def _typed(path: Path, header: dict, key: str, kind: type, default: Any = _MISSING) -> Any:
    """``header[key]`` checked to be of ``kind`` (int: whole numbers; float: finite-or-not numbers)."""
    if key not in header:
        if default is _MISSING:
            raise _bad_file(path, f"its header lacks '{key}'")
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
        raise _bad_file(path, f"header field '{key}' must be {name}, got {str(v)[:40]!r}")
    return float(v) if kind is float else (dict(v) if kind is dict else v)


def _number_list(path: Path, header: dict, key: str) -> list[float]:
    v = header.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, int | float) and not isinstance(x, bool)
                                          and math.isfinite(x) and x >= 0 for x in v):
        raise _bad_file(path, f"header field '{key}' must be a list of finite numbers >= 0")
    return [float(x) for x in v]


def _normalization(path: Path, d: Any) -> Normalization:
    if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or d["kind"] not in ("hu", "scale"):
        raise _bad_file(path, "its header's normalization must be an object with kind 'hu' or 'scale'")
    lo, hi = d.get("low"), d.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)) \
            or not hi > lo:
        raise _bad_file(path, f"its header's normalization needs finite numbers low < high, got low={lo!r}, "
                              f"high={hi!r}")
    return Normalization(d["kind"], float(lo), float(hi))


def _geometry(path: Path, g: Any) -> dict:
    if not isinstance(g, dict):
        raise _bad_file(path, "its header's geometry must be an object")
    ndim = g.get("ndim")
    if ndim not in (2, 3) or isinstance(ndim, bool):
        raise _bad_file(path, f"header geometry ndim {str(ndim)[:20]} must be 2 or 3")
    for key, length, positive in (("spacing", ndim, True), ("origin", ndim, False), ("direction", ndim * ndim, False)):
        v = g.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != length or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
                for x in v):
            rule = "positive " if positive else ""
            raise _bad_file(path, f"header geometry {key} must be a list of {length} finite {rule}numbers")
    d = g.get("direction")
    if d is not None and abs(float(np.linalg.det(np.asarray(d, dtype=np.float64).reshape(ndim, ndim)))) < 1e-6:
        raise _bad_file(path, "header geometry direction is singular (its axes are not independent); it must be "
                              "the image's orientation matrix, e.g. the identity")
    return dict(g)


def _check_version(path: Path, header: dict) -> None:
    version = header.get("format_version")
    if version is None:
        raise _bad_file(path, "its header has no format_version")
    if version != MEASUREMENT_FORMAT_VERSION:
        written_by = header.get("library_version", "unknown")
        raise ScoreReconError(
            f"{path} uses measurement format version {version} (written by scorerecon {written_by}) but this "
            f"scorerecon {__version__} reads version {MEASUREMENT_FORMAT_VERSION}; re-simulate it with this "
            "version ('scorerecon simulate')"
        )


def _check_consistency(path: Path, m: Measurement) -> None:
    if m.task not in TASKS:
        raise _bad_file(path, f"unknown task '{m.task}'")
    if m.operator_spec.get("task") != m.task:
        raise _bad_file(path, f"operator task '{m.operator_spec.get('task')}' differs from task '{m.task}'")
    if "image_size" not in m.operator_spec:
        raise _bad_file(path, "the operator spec has no image_size")
    n = m.image_size
    y = m.y
    channels = m.coils if m.task == "mri" else 1
    if y.ndim != 4 or y.shape[0] < 1 or y.shape[1] != channels:
        raise _bad_file(path, f"y has shape {tuple(y.shape)}, expected (slices, {channels}, ...)")
    if m.task == "mri":
        if not np.iscomplexobj(y) or tuple(y.shape[-2:]) != (n, n):
            raise _bad_file(path, f"MRI k-space must be complex (S, {channels}, {n}, {n}), got {y.dtype} "
                                  f"{tuple(y.shape)}")
        maps = m.operator_arrays.get("maps")
        if channels > 1 and (maps is None or maps.ndim != 4 or maps.shape[0] not in (1, y.shape[0])
                             or tuple(maps.shape[1:]) != (channels, n, n)):
            raise _bad_file(path, f"coil maps {None if maps is None else tuple(maps.shape)} do not fit k-space "
                                  f"{tuple(y.shape)}")
    else:
        if np.iscomplexobj(y) or not np.issubdtype(y.dtype, np.floating):
            raise _bad_file(path, f"CT sinograms must be real floats, got {y.dtype}")
        spec = m.operator_spec
        _check_ct_geometry(path, spec)
        for axis, key in ((-2, "n_angles"), (-1, "n_det")):
            if key in spec and spec[key] is not None and int(spec[key]) != y.shape[axis]:
                raise _bad_file(path, f"y has {y.shape[axis]} {key} but the operator has {spec[key]}")
    check_finite(y, f"measurements in {path}")
    if m.metal_mask is not None and tuple(m.metal_mask.shape) != (y.shape[0], 1, n, n):
        raise _bad_file(path, f"metal_mask has shape {tuple(m.metal_mask.shape)}, expected ({y.shape[0]}, 1, {n}, {n})")
    ndim = int(m.geometry.get("ndim", 0))
    if ndim not in (2, 3) or (ndim == 2 and y.shape[0] != 1):
        raise _bad_file(path, f"geometry of a {ndim}-D image does not fit {y.shape[0]} slices")
    if m.noise_std and len(m.noise_std) != y.shape[0]:
        raise _bad_file(path, f"{len(m.noise_std)} noise levels for {y.shape[0]} slices")


def _check_ct_geometry(path: Path, spec: dict) -> None:
    """The CT operator's geometry fields: a known kind; for fan beam finite positive distances in pixels
    with the source outside the image and a known detector shape."""
    kind = spec.get("geometry")
    if kind not in CT_GEOMETRIES:
        raise _bad_file(path, f"the CT operator's geometry is {kind!r}, expected one of {', '.join(CT_GEOMETRIES)}")
    if kind != "fan":
        return
    for key in ("source_distance", "detector_distance"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _bad_file(path, f"the fan-beam {key} is {value!r}, expected a positive number of pixels")
    radius = math.sqrt(2.0) * int(spec["image_size"]) / 2.0 + 1.0
    if spec["source_distance"] <= radius:
        raise _bad_file(path, f"the fan-beam source distance {spec['source_distance']:g} px lies inside the "
                              f"image (radius {radius:.1f} px)")
    if spec.get("detector", "curved") not in ("curved", "flat"):
        raise _bad_file(path, f"the fan-beam detector is {spec.get('detector')!r}, expected curved or flat")


def pixel_size_mm(image: Image) -> float:
    """In-plane pixel size of ``image``'s slices (mm): the mean of its two in-plane spacings."""
    spacing = [float(v) for v in image.spacing][:2]
    size = sum(spacing) / len(spacing) if spacing else 1.0
    if not (math.isfinite(size) and size > 0):
        raise ScoreReconError(f"the image's pixel spacing {image.spacing} is not a positive size; fix its header")
    return size


def ct_geometry_options(image: Image, geometry: str, source_distance: float | None,
                        detector_distance: float | None, detector: str) -> tuple[dict, dict]:
    """``(operator options in pixels, record in mm)`` of a CT source geometry for ``image``'s slices.

    Fan beam: ``source_distance`` (source to rotation centre) and ``detector_distance`` (centre to
    detector) in mm, default :data:`DEFAULT_SOURCE_DISTANCE_MM` / :data:`DEFAULT_DETECTOR_DISTANCE_MM`,
    converted to pixels with :func:`pixel_size_mm`.
    """
    if geometry not in CT_GEOMETRIES:
        raise ScoreReconError(f"unknown CT geometry '{geometry}'; choose one of {', '.join(CT_GEOMETRIES)}")
    if geometry == "parallel":
        if source_distance is not None or detector_distance is not None:
            raise ScoreReconError("--source-distance / --detector-distance apply to --geometry fan only; "
                                  "add --geometry fan or drop them")
        return {"geometry": "parallel"}, {"geometry": "parallel"}
    src = DEFAULT_SOURCE_DISTANCE_MM if source_distance is None else float(source_distance)
    det = DEFAULT_DETECTOR_DISTANCE_MM if detector_distance is None else float(detector_distance)
    for flag, value in (("--source-distance", src), ("--detector-distance", det)):
        if not (math.isfinite(value) and value > 0):
            raise ScoreReconError(f"{flag} must be a positive distance in mm, got {value:g}")
    if detector not in ("curved", "flat"):
        raise ScoreReconError(f"unknown fan-beam detector '{detector}'; choose curved or flat")
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


# ---------------------------------------------------------------------------------- simulation
def normalization_for(image: Image, task: str) -> Normalization:
    """Intensity normalisation of ``image`` for ``task``.

    CT tasks on an image in HU (DICOM modality CT, or values below −200) use the HU window
    [-1000, 2000] → [0, 1]; otherwise (MRI, or CT tasks on a PNG/phantom) the 99.5th percentile of
    the positive intensities maps to 1.
    """
    if task_modality(task) == "CT" and guess_modality(image) == "CT":
        return ct_normalization()
    return mr_normalization(image.array)


def normalize_slices(stack: np.ndarray, norm: Normalization) -> np.ndarray:
    """Physical slices → normalised float32, clipped below at 0 (nothing is darker than air / zero
    signal: CT padding of −2000/−3024 HU becomes −1000 HU) and unclipped above (metal stays visible)."""
    return np.maximum(np.asarray(norm.forward(np.asarray(stack, dtype=np.float32)), dtype=np.float32), 0.0)


def _hu_equivalent() -> Normalization:
    """Map normalised values to 'HU' with the default window (thresholds and metal values)."""
    return ct_normalization(*DEFAULT_CT_WINDOW)


def prepare_slices(image: Image, size: int | None = None) -> tuple[Image, np.ndarray]:
    """Validate ``image``, resample to ``size``² if asked, return ``(image, slices (S, N, N))``."""
    check_finite(image.array, "the input image")
    if image.array.ndim not in (2, 3):
        raise ScoreReconError(f"expected a 2-D image or 3-D volume, got shape {image.array.shape}")
    h, w = image.array.shape[-2:]
    if size is not None:
        if size < MIN_IMAGE_SIZE:
            raise ScoreReconError(f"--size {size} is too small; use at least {MIN_IMAGE_SIZE} pixels")
        if (h, w) != (size, size):
            image = resample_image(image, size)
    else:
        if h != w:
            raise ScoreReconError(
                f"image slices are {h}x{w} (rows x columns) but ScoreRecon needs square slices; "
                "pass --size N to resample them to N x N"
            )
        if h < MIN_IMAGE_SIZE:
            raise ScoreReconError(
                f"image is {h}x{w}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}; pass --size N (N >= "
                f"{MIN_IMAGE_SIZE}) to resample it"
            )
    return image, image_slices(image.array).astype(np.float32)


def _validate_options(task: str, size: int, views: int, arc: float, n_angles: int | None, acceleration: float,
                      center_fraction: float, mask: str, noise: float, n_metal: int, fan: bool = False) -> None:
    if task not in TASKS:
        raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ScoreReconError(f"--noise must be a finite number >= 0 (relative to max |y|), got {noise}")
    if task in CT_TASKS:
        angles = (2 * size if fan else size) if n_angles is None else n_angles
        if not 2 <= angles <= 4 * MAX_IMAGE_SIZE:  # what the measurement reader accepts
            raise ScoreReconError(f"--n-angles must be from 2 to {4 * MAX_IMAGE_SIZE}, got {angles}")
        if task == "sparse-ct" and not 1 <= views <= angles:
            raise ScoreReconError(
                f"--views {views} does not fit the {angles} angles of the full set; choose 1..{angles} "
                "or raise --n-angles"
            )
        top = 360 if fan else 180
        if task == "limited-angle-ct" and not (0 < arc <= top):
            raise ScoreReconError(f"--arc must be in (0, {top}] degrees{' for fan beam' if fan else ''}, got {arc}")
        if task == "metal-ct" and n_metal < 1:
            raise ScoreReconError(f"the number of inserted metal objects must be >= 1, got {n_metal}")
    else:
        if not (math.isfinite(acceleration) and acceleration >= 1):
            raise ScoreReconError(f"--acceleration must be >= 1 (1 = fully sampled), got {acceleration}")
        if not (math.isfinite(center_fraction) and 0 <= center_fraction < 1):
            raise ScoreReconError(f"--center-fraction must be in [0, 1), got {center_fraction}")
        if mask not in MRI_MASKS:
            raise ScoreReconError(f"unknown MRI mask '{mask}'; choose one of {', '.join(MRI_MASKS)}")


def _metal_masks(x_norm: torch.Tensor, threshold: float, n_metal: int, metal_hu: float,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Metal of each slice: found above ``threshold`` HU, else inserted; return (x_with_metal, mask, info).

    Inserted objects lie inside the body: pixels above −500 HU with holes filled.
    """
    from .operators.ct import metal_mask_from_image, random_metal_mask

    hu = _hu_equivalent()
    found = metal_mask_from_image(hu.inverse(x_norm), threshold=threshold).to(torch.bool)
    if found.any():
        info = {"source": "image", "threshold_hu": float(threshold), "pixels": int(found.sum())}
        return x_norm, found, info
    n = x_norm.shape[-1]
    body_level = float(hu.forward(-500.0))
    masks = []
    for s in range(x_norm.shape[0]):
        inside = ndimage.binary_fill_holes((x_norm[s, 0] > body_level).cpu().numpy())
        if inside.sum() < 4:  # an (almost) empty slice: place metal anywhere
            inside = None
        m = random_metal_mask(n, n_metal, seed + s, inside=inside)
        masks.append(torch.as_tensor(np.asarray(m)).reshape(n, n).to(torch.bool))
    mask = torch.stack(masks)[:, None].to(x_norm.device)
    value = float(hu.forward(metal_hu))
    x_metal = torch.where(mask, torch.full_like(x_norm, value), x_norm)
    info = {"source": "inserted", "threshold_hu": float(threshold), "n_objects": int(n_metal),
            "metal_hu": float(metal_hu), "pixels": int(mask.sum())}
    return x_metal, mask, info


def _add_noise(y: torch.Tensor, op_mask: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, list[float]]:
    """Add Gaussian noise ``noise × max|y_s|`` per slice on measured entries (see module docstring)."""
    s = y.shape[0]
    measured = torch.broadcast_to(op_mask.to(y.device) > 0, y.shape)
    peak = (y.abs() * measured).reshape(s, -1).amax(dim=1)
    std = noise * peak
    if noise == 0:
        return y, [0.0] * s
    g = torch.Generator().manual_seed(int(seed) + 1_000_003)
    shape = (s, *y.shape[1:])
    scale = std.reshape(s, *([1] * (y.ndim - 1)))
    if y.is_complex():
        real = torch.randn(shape, generator=g)
        imag = torch.randn(shape, generator=g)
        eps = torch.complex(real, imag).to(y.dtype) / math.sqrt(2.0)
    else:
        eps = torch.randn(shape, generator=g).to(y.dtype)
    y = y + eps.to(y.device) * scale.to(torch.float32) * measured
    return y, [float(v) for v in std]


def simulate(
    image: Image,
    task: str,
    *,
    views: int = 23,
    arc: float = 90.0,
    n_angles: int | None = None,
    metal_threshold: float = 3000.0,
    n_metal: int = 2,
    metal_hu: float = 4000.0,
    acceleration: float = 8.0,
    center_fraction: float = 0.08,
    mask: str = "equispaced",
    noise: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str = "cpu",
    geometry: str = "parallel",
    source_distance: float | None = None,
    detector_distance: float | None = None,
    detector: str = "curved",
    coils: int = 1,
) -> tuple[Measurement, torch.Tensor, dict[str, Any]]:
    """Simulate ``task`` measurements of ``image`` (a slice or a volume, sliced along axis 0).

    Returns ``(measurement, reference, extra)``: ``reference`` is the clean normalised target
    ``(S, 1, N, N)`` float32 (for metal-ct with inserted metal, the image *without* the metal);
    ``extra`` holds ``"image_measured"`` (the normalised image that was projected, with metal),
    ``"metal_mask"`` ((S,1,N,N) bool or None) and ``"noise_std"`` (per slice).

    Options: sparse-ct ``views`` of ``n_angles`` (default N) over 180°; limited-angle-ct ``arc``
    degrees; metal-ct uses metal above ``metal_threshold`` HU if the image has any, else inserts
    ``n_metal`` random dense objects of ``metal_hu`` HU inside the body (seeded by ``seed``);
    mri ``acceleration``, ``center_fraction`` and ``mask`` kind, and ``coils`` > 1 for multi-coil k-space
    with :func:`~ScoreReconLib.coils.synthetic_maps` (seeded by ``seed``). CT ``geometry`` "parallel" (full
    set over 180°) or "fan" (full set over 360°, default 2N source angles; ``source_distance`` and
    ``detector_distance`` in mm, see :func:`ct_geometry_options`; ``detector`` "curved" or "flat");
    for fan beam ``arc`` may reach 360. ``noise`` is relative (module docstring). ``size`` resamples
    slices to ``size``²; without it slices must be square and ≥ 16 pixels.
    """
    if task not in TASKS:
        raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    original_shape = [int(s) for s in image.array.shape]
    image, stack = prepare_slices(image, size)
    n = stack.shape[-1]
    geo_opts: dict[str, Any] = {}
    geo_record: dict[str, Any] = {}
    if task in CT_TASKS:
        geo_opts, geo_record = ct_geometry_options(image, geometry, source_distance, detector_distance, detector)
    elif geometry != "parallel" or source_distance is not None or detector_distance is not None:
        raise ScoreReconError("--geometry / --source-distance / --detector-distance apply to CT tasks only")
    _validate_options(task, n, views, arc, n_angles, acceleration, center_fraction, mask, noise, n_metal,
                      fan=geo_opts.get("geometry") == "fan")
    if isinstance(coils, bool) or int(coils) != coils or not 1 <= coils <= MAX_COILS:
        raise ScoreReconError(f"--coils must be a whole number from 1 (single-coil) to {MAX_COILS}, got {coils}")
    if coils > 1 and task != "mri":
        raise ScoreReconError(f"--coils applies to --task mri only, not {task}; drop --coils")
    norm = normalization_for(image, task)
    x = torch.from_numpy(normalize_slices(stack, norm))[:, None].to(device)

    options: dict[str, Any] = {}
    metal_info: dict = {}
    metal_mask: torch.Tensor | None = None
    x_measured = x
    if task == "sparse-ct":
        options = {"views": int(views), "n_angles": n_angles, **geo_record}
        op = build_operator(task, n, views=int(views), n_angles=n_angles, device=device, **geo_opts)
    elif task == "limited-angle-ct":
        options = {"arc": float(arc), "n_angles": n_angles, **geo_record}
        op = build_operator(task, n, arc=float(arc), n_angles=n_angles, device=device, **geo_opts)
    elif task == "metal-ct":
        options = {"metal_threshold": float(metal_threshold), "n_metal": int(n_metal), "metal_hu": float(metal_hu),
                   "n_angles": n_angles, **geo_record}
        x_measured, metal_mask, metal_info = _metal_masks(x, float(metal_threshold), int(n_metal),
                                                          float(metal_hu), int(seed))
        op = build_operator(task, n, metal_mask=metal_mask, n_angles=n_angles, device=device, **geo_opts)
    elif coils > 1:
        from .coils import synthetic_maps
        from .operators.multicoil import build_multicoil_operator

        options = {"acceleration": float(acceleration), "center_fraction": float(center_fraction), "mask": mask,
                   "coils": int(coils)}
        op = build_multicoil_operator(synthetic_maps(n, int(coils), int(seed)), acceleration=float(acceleration),
                                      center_fraction=float(center_fraction), mask=mask, seed=int(seed),
                                      device=device, maps_source="synthetic")
    else:
        options = {"acceleration": float(acceleration), "center_fraction": float(center_fraction), "mask": mask}
        op = build_operator(task, n, acceleration=float(acceleration), center_fraction=float(center_fraction),
                            mask=mask, seed=int(seed), device=device)

    with torch.no_grad():
        full = torch.cat([op.T(x_measured[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])
        y = op.mask_apply(full)
        y, noise_std = _add_noise(y, op.mask, float(noise), int(seed))
    y_np = y.cpu().numpy()
    y_np = y_np.astype(np.complex64) if task == "mri" else y_np.astype(np.float32)

    m = Measurement(
        task=task,
        y=y_np,
        operator_spec=op.spec(),
        operator_arrays={k: np.asarray(v) for k, v in op.arrays().items()},
        normalization=norm,
        geometry=image.geometry(),
        slice_axis=0,
        noise=float(noise),
        noise_std=noise_std,
        seed=int(seed),
        metal=metal_info,
        metal_mask=None if metal_mask is None else metal_mask.cpu().numpy().astype(bool),
        options=options,
        source={"shape": original_shape, "resampled": original_shape[-2:] != [n, n], "modality": image.modality},
    )
    extra = {
        "image_measured": x_measured.cpu(),
        "metal_mask": None if metal_mask is None else metal_mask.cpu(),
        "noise_std": noise_std,
    }
    return m, x.cpu(), extra


#: relative difference of in-plane pixel sizes above which a reference counts as on another grid
REFERENCE_GRID_TOLERANCE = 0.01


def reference_slices(reference: Image, m: Measurement, warnings: list[str] | None = None) -> torch.Tensor:
    """Normalise a clean reference image like ``m`` was simulated: ``(S, 1, N, N)`` float32.

    The reference must have the measurement's slice count and either its size or the original
    (pre-resampling) size recorded in the file. When its in-plane pixels (after that resampling) differ from the
    measurement's grid by more than :data:`REFERENCE_GRID_TOLERANCE`, a sentence naming both grids is appended to
    ``warnings``: the scores then compare images of different fields of view.
    """
    check_finite(reference.array, "the reference image")
    stack = image_slices(reference.array)
    n = m.image_size
    if stack.shape[0] != m.n_slices:
        raise ScoreReconError(
            f"the reference has {stack.shape[0]} slice(s) but the measurement has {m.n_slices}; "
            "pass the image that was simulated"
        )
    if tuple(stack.shape[-2:]) != (n, n):
        src = m.source.get("shape")
        if src is not None and list(stack.shape[-2:]) == list(src[-2:]):
            reference = resample_image(reference, n)
            stack = image_slices(reference.array)
        else:
            raise ScoreReconError(
                f"the reference is {stack.shape[-2]}x{stack.shape[-1]} but the measurement is {n}x{n}; "
                "pass the image that was simulated"
            )
    want = [float(v) for v in (m.geometry.get("spacing") or [])[:2]]
    got = [float(v) for v in reference.spacing[:2]]
    if warnings is not None and len(want) == 2 and len(got) == 2 and any(
            abs(g - w) > REFERENCE_GRID_TOLERANCE * max(abs(w), 1e-12) for g, w in zip(got, want, strict=True)):
        warnings.append(f"the reference's pixels are {got[0]:.4g} x {got[1]:.4g} mm on the measurement's {n}x{n} "
                        f"grid but the measurement's are {want[0]:.4g} x {want[1]:.4g} mm: PSNR / SSIM compare "
                        "different fields of view; pass the image that was simulated")
    return torch.from_numpy(normalize_slices(stack, m.normalization))[:, None]


__all__ = [
    "CT_GEOMETRIES",
    "CT_TASKS",
    "MEASUREMENT_FORMAT_VERSION",
    "MRI_MASKS",
    "MIN_IMAGE_SIZE",
    "Measurement",
    "check_measurement_output",
    "load_measurement",
    "ct_geometry_options",
    "normalization_for",
    "normalize_slices",
    "pixel_size_mm",
    "prepare_slices",
    "reference_slices",
    "save_measurement",
    "simulate",
    "task_modality",
]
