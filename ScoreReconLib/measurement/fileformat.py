"""The measurement file format: one ``.npz`` (``np.savez_compressed``, written atomically, read with
``allow_pickle=False``) holding a JSON ``header`` string plus the arrays ``y``, ``op__<name>`` for each
operator array and optionally ``metal_mask``."""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import ScoreReconError
from ..utils import atomic_path, check_output_path
from .checks import (
    bad_file,
    check_consistency,
    check_version,
    expected_y_shape,
    header_geometry,
    header_normalization,
    number_list,
    typed,
)
from .record import MAX_HEADER_BYTES, Measurement

#: prefix of operator arrays inside the .npz
OP_PREFIX = "op__"


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
        arrays[OP_PREFIX + name] = np.ascontiguousarray(np.asarray(arr))
    if m.metal_mask is not None:
        arrays["metal_mask"] = np.ascontiguousarray(np.asarray(m.metal_mask, dtype=bool))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def check_measurement_output(path: str | Path, flag: str = "--output") -> Path:
    """Refuse, before any work, an output that is not a writable ``.npz`` file path (one line)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ScoreReconError(f"{flag} must be a .npz file, got {path.name}; e.g. {path.stem}.npz")
    if path.is_dir():
        raise ScoreReconError(f"{flag} {path} is a folder; give a .npz file name")
    return check_output_path(path, flag)


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
        raise bad_file(path, "not an .npz (zip) archive")
    try:
        shapes = _peek_arrays(path)
        missing = [k for k in ("header", "y") if k not in shapes]
        if missing:
            raise bad_file(path, f"missing {' and '.join(missing)}")
        for name, (_shape, dtype) in shapes.items():
            if dtype.hasobject:
                raise bad_file(path, f"array {name} holds Python objects")
        h_shape, h_dtype = shapes["header"]
        if h_shape != () or h_dtype.kind != "U" or h_dtype.itemsize > MAX_HEADER_BYTES:
            raise bad_file(path, "its header is not a JSON string")
        with np.load(path, allow_pickle=False) as npz:
            header_text = str(npz["header"][()])
            try:
                header = json.loads(header_text)
            except (json.JSONDecodeError, RecursionError):
                raise bad_file(path, "its header is not valid JSON") from None
            if not isinstance(header, dict):
                raise bad_file(path, "its header is not a JSON object")
            check_version(path, header)
            expected = expected_y_shape(path, header)
            if shapes["y"][0] != expected:
                raise bad_file(path, f"y has shape {shapes['y'][0]} but the header describes {expected}")
            n = expected[-1] if header.get("task") == "mri" else header["operator"]["image_size"]
            for name, (shape, _dtype) in shapes.items():  # operator arrays are at most slices × a full layout
                if name.startswith(OP_PREFIX) or name == "metal_mask":
                    limit = expected[0] * max(int(np.prod(expected[1:])), n * n)
                    if int(np.prod(shape, dtype=np.float64)) > limit:
                        raise bad_file(path, f"array {name} of shape {shape} is larger than the measurement")
            y = npz["y"]
            op_arrays = {k[len(OP_PREFIX):]: npz[k] for k in npz.files if k.startswith(OP_PREFIX)}
            metal_mask = npz["metal_mask"] if "metal_mask" in shapes else None
    except ScoreReconError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise bad_file(path, f"corrupt or not an .npz archive: {msg}") from None
    m = Measurement(
        task=typed(path, header, "task", str),
        y=y,
        operator_spec=typed(path, header, "operator", dict),
        operator_arrays=op_arrays,
        normalization=header_normalization(path, header.get("normalization")),
        geometry=header_geometry(path, header.get("geometry")),
        slice_axis=typed(path, header, "slice_axis", int, 0),
        noise=typed(path, header, "noise", float, 0.0),
        noise_std=number_list(path, header, "noise_std"),
        seed=typed(path, header, "seed", int, 0),
        metal=typed(path, header, "metal", dict, {}),
        metal_mask=metal_mask,
        options=typed(path, header, "options", dict, {}),
        source=typed(path, header, "source", dict, {}),
        format_version=typed(path, header, "format_version", int),
        library_version=str(header.get("library_version", "unknown"))[:64],
    )
    if m.slice_axis != 0:
        raise bad_file(path, f"slice_axis is {m.slice_axis}; this version stores slices along axis 0")
    if not (math.isfinite(m.noise) and m.noise >= 0):
        raise bad_file(path, f"noise {m.noise} must be a finite number >= 0")
    check_consistency(path, m)
    return m
