"""Measured multi-coil k-space from fastMRI-format HDF5 files → :class:`~ScoreReconLib.measurement.Measurement`.

fastMRI layout (also what ISMRMRD-derived exports commonly use): a dataset ``kspace`` of shape
``(slices, coils, H, W)`` complex (``(slices, H, W)`` for single-coil files), ``H`` the readout
(frequency-encoding, fully sampled, often 2× oversampled) and ``W`` the phase-encoding axis; an
optional ``mask`` ``(W,)`` of the acquired phase-encoding columns; an optional ``ismrmrd_header``
(XML) with the encoded field of view and matrix; optional coil maps ``sens_maps`` / ``maps`` of
``(slices, coils, H or W, W)``; file attributes such as ``acquisition``.

Import (:func:`import_kspace`):

1. Readout oversampling is removed the fastMRI way: inverse FFT along the readout, centre crop to
   ``W`` rows (zero-padding when ``H < W``), FFT back, so slices are square ``W × W``. This is exact
   on the fully sampled readout axis and leaves the sampled columns as they were.
2. The sampling mask is the stored ``mask``, else the columns holding non-zero data. A fully sampled
   file is undersampled retrospectively with a mask of :func:`~ScoreReconLib.operators.mri.make_mask`.
3. Coil maps: read from the file when present, else estimated from the fully sampled centre
   (:func:`~ScoreReconLib.coils.estimate_maps`); the image phase is folded into them
   (:func:`~ScoreReconLib.coils.absorb_phase`) so the reconstructions work on the magnitude.
4. The k-space is scaled so the 99.5th percentile of the coil-combined image is 1 (the
   normalisation is stored, so outputs come back in the file's intensity units).
5. Geometry: pixel spacing ``encoded FOV / encoded matrix`` per axis and the slice thickness from the
   ISMRMRD header; without a header 1 mm in-plane and 1 mm between slices (stated in ``source``).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .coils import absorb_phase, estimate_maps
from .data import Normalization
from .errors import ScoreReconError
from .measurement import MAX_COILS, MIN_IMAGE_SIZE, MRI_MASKS, Measurement
from .operators.mri import make_mask
from .operators.multicoil import MultiCoilMRI

#: largest k-space (complex64 bytes, from the declared shape) one import expands into memory
MAX_KSPACE_BYTES = 4 << 30
#: datasets that may hold coil maps
MAPS_DATASETS = ("sens_maps", "maps")
#: in-plane spacing and slice distance (mm) used when the file has no ISMRMRD header
DEFAULT_SPACING_MM = 1.0
#: fully sampled files are undersampled by this much unless --acceleration says otherwise
DEFAULT_ACCELERATION = 8.0
INSTALL_H5PY = ("install it with 'pip install h5py' (from a checkout, 'pip install -e \".[mri]\"' installs it with "
                "the library)")


@dataclass
class RawKspace:
    """What was read from the file: k-space (S, C, H, W) complex64 and the optional extras."""

    kspace: np.ndarray
    mask: np.ndarray | None
    maps: np.ndarray | None
    header: str | None
    attrs: dict
    first_slice: int
    total_slices: int


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ScoreReconError(f"reading HDF5 k-space needs h5py; {INSTALL_H5PY}") from None
    return h5py


def parse_slices(text: str | None, total: int) -> slice:
    """``"A:B"`` (Python-style, either end may be omitted, negatives count from the end) → a slice of ``total``."""
    if text is None:
        return slice(0, total)
    parts = str(text).split(":")
    try:
        if len(parts) == 1:
            a = int(parts[0])
            a = a + total if a < 0 else a
            bounds = (a, a + 1)
        elif len(parts) == 2:
            a = int(parts[0]) if parts[0].strip() else 0
            b = int(parts[1]) if parts[1].strip() else total
            bounds = slice(a, b).indices(total)[:2]
        else:
            raise ValueError
    except ValueError:
        raise ScoreReconError(f"--slices {text!r} is not of the form A:B (e.g. 10:20, or 5 for one slice)") from None
    a, b = bounds
    if not 0 <= a < b <= total:
        raise ScoreReconError(f"--slices {text} selects no slice of the file's {total}; use A:B with 0 <= A < B <= "
                              f"{total}")
    return slice(a, b)


def _check_own_data(h5py, f, name: str, path: Path) -> None:
    """Refuse ``name`` when its data live outside the file: an external link (to another file, or ``../``), raw
    storage in external files, or a virtual dataset that maps other files. A file is read only from itself."""
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ScoreReconError(f"'{name}' in {path} is a link to another file ({link.filename}); ScoreRecon reads a "
                              "k-space file only from itself: copy the data into the file")
    obj = f[name]
    if isinstance(obj, h5py.Dataset):
        if obj.external:
            raise ScoreReconError(f"'{name}' in {path} stores its data in external files; ScoreRecon reads a k-space "
                                  "file only from itself: copy the data into the file")
        if obj.is_virtual:
            raise ScoreReconError(f"'{name}' in {path} is a virtual dataset mapping other data; ScoreRecon reads a "
                                  "k-space file only from itself: copy the data into the file")


def read_fastmri(path: str | Path, slices: str | None = None) -> RawKspace:
    """Read (and validate) the ``slices`` of a fastMRI-format HDF5 file; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise ScoreReconError(f"k-space file {path} does not exist; check the path")
    if path.is_dir():
        raise ScoreReconError(f"{path} is a folder; pass one fastMRI-format .h5 file")
    h5py = _h5py()
    if not h5py.is_hdf5(str(path)):
        raise ScoreReconError(f"{path} is not an HDF5 file; pass a fastMRI-format .h5 file")
    try:
        with h5py.File(path, "r") as f:
            for name in ("kspace", "mask", "ismrmrd_header", *MAPS_DATASETS):
                if name in f or isinstance(f.get(name, getlink=True), h5py.ExternalLink):
                    _check_own_data(h5py, f, name, path)
            if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
                found = ", ".join(sorted(f.keys())) or "none"
                raise ScoreReconError(f"{path} has no 'kspace' dataset (found: {found}); "
                                      "pass a fastMRI-format file with kspace of shape (slices, coils, H, W)")
            ds = f["kspace"]
            if ds.ndim not in (3, 4):
                raise ScoreReconError(f"'kspace' in {path} has shape {ds.shape}; expected (slices, coils, H, W) "
                                      "(or (slices, H, W) for single-coil)")
            if not np.issubdtype(ds.dtype, np.complexfloating):
                raise ScoreReconError(f"'kspace' in {path} is {ds.dtype}, not complex; expected complex64 k-space "
                                      "(real/imaginary stored as complex)")
            total = int(ds.shape[0])
            if total < 1:
                raise ScoreReconError(f"'kspace' in {path} holds no slice")
            sl = parse_slices(slices, total)
            if ds.ndim == 4 and ds.shape[1] < 1:
                raise ScoreReconError(f"'kspace' in {path} has shape {ds.shape}: zero coils")
            if ds.ndim == 4 and ds.shape[1] > MAX_COILS:
                raise ScoreReconError(f"'kspace' in {path} has {ds.shape[1]} coils; at most {MAX_COILS} are read")
            expanded = (sl.stop - sl.start) * int(np.prod(ds.shape[1:], dtype=np.float64)) * 8
            if expanded > MAX_KSPACE_BYTES:  # checked on the declared shape, before anything is decompressed
                raise ScoreReconError(f"'kspace' slices {sl.start}:{sl.stop} of {path} expand to "
                                      f"{expanded / 2**30:.1f} GiB, more than the {MAX_KSPACE_BYTES / 2**30:.0f} GiB "
                                      "read at once; import fewer slices with --slices A:B")
            k = np.asarray(ds[sl], dtype=np.complex64)
            if k.ndim == 3:
                k = k[:, None]
            mask = np.asarray(f["mask"][()]) if "mask" in f else None
            maps = None
            for name in MAPS_DATASETS:
                if name in f:
                    maps = np.asarray(f[name][sl], dtype=np.complex64)
                    break
            header = None
            if "ismrmrd_header" in f:
                raw = f["ismrmrd_header"][()]
                header = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            attrs = {}
            for key, value in f.attrs.items():
                v = value.item() if hasattr(value, "item") and np.ndim(value) == 0 else value
                if isinstance(v, bytes):
                    v = v.decode("utf-8", "replace")
                if isinstance(v, (str, int, float, bool)):
                    attrs[str(key)] = v
    except ScoreReconError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ScoreReconError(f"{path} could not be read as HDF5 k-space ({msg}); check the file") from None
    if not np.isfinite(k.view(np.float32)).all():
        raise ScoreReconError(f"'kspace' in {path} holds NaN or inf in slices {sl.start}:{sl.stop}; repair or "
                              "exclude those slices with --slices")
    h, w = k.shape[-2:]
    if min(h, w) < MIN_IMAGE_SIZE:
        raise ScoreReconError(f"k-space slices are {h}x{w}, smaller than {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    return RawKspace(k, mask, maps, header, attrs, sl.start, total)


# ------------------------------------------------------------------------------------ geometry
def _centre_crop_or_pad(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    if n == size:
        return a
    if n > size:
        start = n // 2 - size // 2  # keeps the centre index n//2 at size//2 (the FFT convention here)
        return np.take(a, np.arange(start, start + size), axis=axis)
    pad = [(0, 0)] * a.ndim
    before = size // 2 - n // 2
    pad[axis] = (before, size - n - before)
    return np.pad(a, pad)


def remove_readout_oversampling(kspace: np.ndarray, size: int) -> np.ndarray:
    """Inverse FFT along the readout (axis −2), centre crop (or pad) to ``size`` rows, FFT back (centred, ortho)."""
    img = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace, axes=-2), axis=-2, norm="ortho"), axes=-2)
    img = _centre_crop_or_pad(img, size, axis=-2)
    out = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(img, axes=-2), axis=-2, norm="ortho"), axes=-2)
    return out.astype(np.complex64)


def geometry_from_header(header: str | None, n_slices: int) -> tuple[dict, str]:
    """Image geometry (Image.geometry() layout) and a note of where the spacing came from."""
    spacing = None
    if header:
        try:
            root = ET.fromstring(header)
            enc = next((e for e in root.iter() if e.tag.split("}")[-1] == "encodedSpace"), None)
            if enc is not None:
                def val(parent: str, axis: str) -> float:
                    node = next(e for e in enc.iter() if e.tag.split("}")[-1] == parent)
                    return float(next(e for e in node if e.tag.split("}")[-1] == axis).text)

                fov = [val("fieldOfView_mm", a) for a in "xyz"]
                mat = [val("matrixSize", a) for a in "xyz"]
                # x = readout (array rows after import), y = phase encoding (columns), z = slice thickness
                spacing = (fov[1] / mat[1], fov[0] / mat[0], fov[2] / max(mat[2], 1.0))
        except (ET.ParseError, StopIteration, TypeError, ValueError, ZeroDivisionError):
            spacing = None
    if spacing is None or not all(math.isfinite(s) and s > 0 for s in spacing):
        spacing = (DEFAULT_SPACING_MM,) * 3
        note = f"default {DEFAULT_SPACING_MM} mm spacing (no usable ismrmrd_header)"
    else:
        note = "ismrmrd_header encodedSpace (FOV / matrix; slice thickness as slice distance)"
    if n_slices == 1:
        geo = {"spacing": [spacing[0], spacing[1]], "origin": [0.0, 0.0], "direction": [1.0, 0.0, 0.0, 1.0], "ndim": 2}
    else:
        geo = {"spacing": list(spacing), "origin": [0.0, 0.0, 0.0],
               "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "ndim": 3}
    return geo, note


# -------------------------------------------------------------------------------------- import
def _column_mask(raw: RawKspace, n: int) -> tuple[np.ndarray, str]:
    """(N, N) 0/1 mask of the acquired columns and where it came from ("file" or "data")."""
    if raw.mask is not None:
        m = np.asarray(raw.mask)
        if m.dtype.kind not in "biuf":
            raise ScoreReconError(f"'mask' is a {m.dtype} array; expected 0/1 (or true/false) numbers per column")
        values = np.unique(m.astype(np.float64))
        if not np.isin(values, (0.0, 1.0)).all():
            bad = ", ".join(f"{v:g}" for v in values[~np.isin(values, (0.0, 1.0))][:3])
            raise ScoreReconError(f"'mask' holds {bad}; a sampling mask holds only 0 and 1 (true/false)")
        if m.ndim == 1 and m.shape[0] == n:
            cols = m.astype(bool)
        elif m.ndim == 2 and m.shape[-1] == n:
            cols = m.astype(bool).any(axis=0)
        else:
            raise ScoreReconError(f"'mask' has shape {m.shape} but k-space has {n} phase-encoding columns; expected "
                                  f"a ({n},) mask of acquired columns")
        if not cols.any():
            raise ScoreReconError("'mask' marks no acquired column; the file's mask is empty")
        source = "file"
    else:
        cols = np.abs(raw.kspace).reshape(-1, n).max(axis=0) > 0
        if not cols.any():
            raise ScoreReconError("'kspace' is all zeros; nothing was acquired")
        source = "data"
    return np.broadcast_to(cols[None, :], (n, n)).astype(np.float32), source


def _normalise_maps(maps: np.ndarray) -> np.ndarray:
    rss = np.sqrt((np.abs(maps) ** 2).sum(axis=1, keepdims=True))
    return np.where(rss > 0, maps / np.maximum(rss, 1e-30), 0).astype(np.complex64)


def import_kspace(path: str | Path, slices: str | None = None, acceleration: float | None = None,
                  center_fraction: float = 0.08, mask: str = "equispaced", seed: int = 0,
                  maps: str = "auto", cg_iterations: int = 5) -> Measurement:
    """Read a fastMRI-format HDF5 file into a multi-coil :class:`Measurement` (see the module docstring).

    ``acceleration``/``center_fraction``/``mask``/``seed``: retrospective undersampling of a fully
    sampled file (``acceleration`` default 8; 1 keeps every column); an undersampled file keeps its own
    mask and refuses ``acceleration``. ``maps``: "auto", "espirit" or "lowres" when the file has none.
    """
    raw = read_fastmri(path, slices)
    k = raw.kspace
    s_count, coils, h, n = k.shape
    k = remove_readout_oversampling(k, n)
    col_mask, mask_source = _column_mask(raw, n)
    fully = bool(col_mask.all())
    if mask not in MRI_MASKS:
        raise ScoreReconError(f"unknown MRI mask '{mask}'; choose one of {', '.join(MRI_MASKS)}")
    if fully:
        acc = DEFAULT_ACCELERATION if acceleration is None else float(acceleration)
        if not (math.isfinite(acc) and acc >= 1):
            raise ScoreReconError(f"--acceleration must be >= 1 (1 = keep every column), got {acceleration}")
        lam = np.ones((n, n), np.float32) if acc == 1 else make_mask(mask, n, acc, center_fraction, seed).numpy()
        kind = "full" if acc == 1 else mask
        how = {"retrospective": acc != 1, "acceleration": acc, "center_fraction": float(center_fraction),
               "mask": kind, "seed": int(seed)}
    else:
        if acceleration is not None:
            raise ScoreReconError(f"{Path(path).name} is already undersampled (acceleration "
                                  f"{col_mask.size / col_mask.sum():.2f}, mask from the {mask_source}); drop "
                                  "--acceleration, or pass a fully sampled file")
        lam, kind = col_mask, "custom"
        acc = None
        how = {"retrospective": False, "mask_source": mask_source}
    kt = torch.from_numpy(k)
    full_k = kt
    kt = kt * torch.from_numpy(lam)
    mask_t = torch.from_numpy(lam)
    if raw.maps is not None:
        mp = raw.maps
        if mp.ndim != 4 or mp.shape[:2] != (s_count, coils) or mp.shape[-1] != n:
            raise ScoreReconError(f"coil maps in the file have shape {mp.shape}; expected ({s_count}, {coils}, H, {n})")
        if not np.isfinite(mp.view(np.float32)).all():
            raise ScoreReconError("the file's coil maps hold NaN or inf; repair them, or remove them so that maps "
                                  "are estimated from the data (--maps)")
        empty = [i for i in range(mp.shape[0]) if not np.abs(mp[i]).any()]
        if empty:
            raise ScoreReconError(f"the file's coil maps are all zero for slice(s) {empty[:5]}; a SENSE "
                                  "reconstruction would be all zero: remove the maps so they are estimated (--maps)")
        maps_t = torch.from_numpy(_normalise_maps(_centre_crop_or_pad(mp, n, axis=-2)))
        maps_source = "file"
    else:
        maps_t, maps_source = estimate_maps(kt, mask_t, maps)
    phase = absorb_phase(maps_t, kt, mask_t)
    op = MultiCoilMRI(maps_t, mask_t, phase, cg_iterations=cg_iterations, kind=kind, acceleration=acc,
                      center_fraction=float(center_fraction) if fully else None, seed=int(seed) if fully else None,
                      maps_source=maps_source)
    # intensity scale: 99.5th percentile of the coil-combined image (fully sampled data when there are any)
    with torch.no_grad():
        combined = op.with_domain("complex").T_inv(full_k if fully else kt).abs()
    vals = combined[combined > 0]
    high = float(torch.quantile(vals[:: max(1, vals.numel() // 1_000_000)], 0.995)) if vals.numel() else 1.0
    if not (math.isfinite(high) and high > 0):
        raise ScoreReconError(f"the coil-combined image of {Path(path).name} is empty; check the k-space")
    y = (kt / high).numpy().astype(np.complex64)
    geometry, spacing_note = geometry_from_header(raw.header, s_count)
    return Measurement(
        task="mri", y=y, operator_spec=op.spec(), operator_arrays={k_: np.asarray(v) for k_, v in op.arrays().items()},
        normalization=Normalization("scale", 0.0, high), geometry=geometry, slice_axis=0, noise=0.0, noise_std=[],
        seed=int(seed), options={"imported": True, **how, "maps": maps_source},
        source={"file": Path(path).name, "format": "fastmri-hdf5", "kspace_shape": [int(v) for v in raw.kspace.shape],
                "slices": [raw.first_slice, raw.first_slice + s_count], "total_slices": raw.total_slices,
                "readout": f"{h} -> {n} rows (centre crop after inverse FFT along the readout)",
                "spacing": spacing_note, "attrs": raw.attrs, "modality": "MR", "scorerecon": __version__},
    )


__all__ = ["DEFAULT_ACCELERATION", "DEFAULT_SPACING_MM", "MAPS_DATASETS", "RawKspace", "geometry_from_header",
           "import_kspace", "parse_slices", "read_fastmri", "remove_readout_oversampling"]
