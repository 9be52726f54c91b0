"""Image I/O with geometry, HU windowing and intensity normalisation.

Reads a 2-D image or 3-D volume from a DICOM file or series folder, NIfTI, NRRD, PNG or ``.npy``
with SimpleITK, keeping spacing (mm), origin (mm) and direction. Arrays are numpy in SimpleITK's
index order: ``(H, W)`` for 2-D, ``(Z, H, W)`` for 3-D (slices along the first axis).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScoreReconError
from .utils import atomic_path
from .vocabulary import MODALITIES


class _LazySimpleITK:
    """Import SimpleITK on first use, so numpy-only paths (.npy volumes) work without it."""

    def __getattr__(self, name):
        import SimpleITK

        return getattr(SimpleITK, name)


sitk = _LazySimpleITK()

#: file suffixes :func:`read_image` accepts (a folder is read as a DICOM series)
IMAGE_SUFFIXES = (".dcm", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".npy", ".ima")
#: file suffixes :func:`write_image` writes (single-file formats only, so writes stay atomic)
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".npy")


@dataclass
class Image:
    """A 2-D or 3-D image with its physical geometry.

    ``array``: float32, ``(H, W)`` or ``(Z, H, W)``. ``spacing``/``origin``/``direction`` follow
    SimpleITK (x, y[, z]) order, in mm; ``direction`` is row-major, length 4 or 9.
    """

    array: np.ndarray
    spacing: tuple[float, ...] = (1.0, 1.0)
    origin: tuple[float, ...] = (0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0)
    modality: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 3

    def geometry(self) -> dict:
        """JSON-serialisable geometry (spacing, origin, direction, ndim)."""
        return {
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in self.direction],
            "ndim": int(self.array.ndim),
        }

    def with_array(self, array: np.ndarray) -> Image:
        """Same geometry, another array of the same spatial shape."""
        return Image(np.asarray(array, dtype=np.float32), self.spacing, self.origin, self.direction,
                     self.modality, dict(self.metadata))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz",):
        if name.endswith(s):
            return s
    return path.suffix.lower()


#: NIfTI datatype codes → numpy dtypes (nifti1.h)
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8", 1792: "c16", 2304: "u1"}
#: bytes per voxel of the multi-byte-per-voxel NIfTI codes not in the itemsize of their dtype (RGB, RGBA)
_NIFTI_VOXEL_BYTES = {128: 3, 2304: 4}


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI-1/2 file (``.nii`` / ``.nii.gz``) whose voxel data are cut short, or that stores
    NaN / inf (SimpleITK would hand back zeros for both). Reads the header and streams the data once."""
    import gzip
    import struct
    import zlib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            if len(head) < 348:
                raise ScoreReconError(f"{path} is too short for a NIfTI header ({len(head)} bytes); the file is "
                                      "truncated or not NIfTI")
            for endian in ("<", ">"):
                size = struct.unpack(endian + "i", head[:4])[0]
                if size in (348, 540):
                    break
            else:
                return  # not a NIfTI-1/2 header: let the reader decide
            if size == 348:
                dims = struct.unpack(endian + "8h", head[40:56])
                code, bitpix = struct.unpack(endian + "2h", head[70:74])
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
                magic = head[344:348]
            else:
                if len(head) < 540:
                    raise ScoreReconError(f"{path} is too short for a NIfTI-2 header; the file is truncated")
                code, bitpix = struct.unpack(endian + "2h", head[12:16])
                dims = struct.unpack(endian + "8q", head[16:80])
                offset = int(struct.unpack(endian + "q", head[168:176])[0])
                magic = head[4:8]
            if magic[:3] not in (b"n+1", b"n+2"):  # a .hdr/.img pair: the reader checks the .img itself
                return
            ndim = dims[0]
            if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
                raise ScoreReconError(f"{path} has invalid NIfTI dimensions {dims[:ndim + 1]}; the file is corrupt")
            voxels = int(np.prod([int(d) for d in dims[1:ndim + 1]], dtype=np.float64))
            if code not in _NIFTI_DTYPES:
                return
            dtype = np.dtype(endian + _NIFTI_DTYPES[code]) if _NIFTI_DTYPES[code] != "u1" else np.dtype("u1")
            per_voxel = _NIFTI_VOXEL_BYTES.get(code, dtype.itemsize)
            expected = voxels * per_voxel
            if voxels > (1 << 34):
                raise ScoreReconError(f"{path} declares {voxels} voxels; that is not an image this tool can hold")
            fh.seek(max(offset, size + 4))  # gzip files seek by decompressing (backwards: from the start)
            got, finite = 0, True
            chunk = (1 << 24) // per_voxel * per_voxel
            tail = b""
            while got < expected:
                block = fh.read(min(chunk, expected - got))
                if not block:
                    break
                got += len(block)
                if dtype.kind in "fc":
                    data = tail + block
                    usable = len(data) // dtype.itemsize * dtype.itemsize
                    tail = data[usable:]
                    if finite and not np.isfinite(np.frombuffer(data[:usable], dtype=dtype)).all():
                        finite = False
    except ScoreReconError:
        raise
    except (OSError, EOFError, zlib.error, struct.error, ValueError) as exc:
        msg = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ScoreReconError(f"cannot read {path}: the file is truncated or corrupt ({msg})") from None
    if got < expected:
        raise ScoreReconError(f"{path} is truncated: its header declares {expected} bytes of voxel data but only "
                              f"{got} are there; restore or re-export the file")
    if not finite:
        raise ScoreReconError(f"the input image {path} contains NaN or infinite values; clean or mask them first")


def _dicom_series_error(path: Path, reader, series: list[str]) -> ScoreReconError:
    counts = [f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(path), uid))} files)" for uid in series[:4]]
    more = f" and {len(series) - 4} more" if len(series) > 4 else ""
    return ScoreReconError(
        f"folder {path} holds {len(series)} DICOM series ({', '.join(counts)}{more}); ScoreRecon reads one series "
        "per folder: move each series into its own folder"
    )


def read_image(path: str | Path) -> Image:
    """Read an image or volume, keeping geometry; raise :class:`ScoreReconError` on any problem.

    A folder must hold exactly one DICOM series; NIfTI files are checked for truncation and NaN.
    """
    path = Path(path)
    if not path.exists():
        raise ScoreReconError(f"input {path} does not exist; check the path")
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK/GDCM warning blocks would bury the one-line error
    try:
        with keep_locale():
            return _read_image(path)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)


@contextlib.contextmanager
def keep_locale():
    """Restore the process's C locale after a block: GDCM (DICOM reading) switches it to "C", which would
    turn Python's default text encoding into ASCII for the rest of the process."""
    import locale

    try:
        saved = locale.setlocale(locale.LC_ALL)
    except locale.Error:
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            try:
                if locale.setlocale(locale.LC_ALL) != saved:
                    locale.setlocale(locale.LC_ALL, saved)
            except locale.Error:
                pass


def _read_image(path: Path) -> Image:
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = list(reader.GetGDCMSeriesIDs(str(path)))
            if not series:
                raise ScoreReconError(f"folder {path} holds no DICOM series; point to a DICOM folder or an image file")
            if len(series) > 1:
                raise _dicom_series_error(path, reader, series)
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            img = reader.Execute()
            modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else ""
            return _from_sitk(img, modality, path)
        suffix = _suffix(path)
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                raise ScoreReconError(f"{path} is not a plain numeric .npy array ({msg})") from None
            if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise ScoreReconError(
                    f"{path} holds a {arr.dtype} array of shape {arr.shape}; expected a real 2-D (H, W) "
                    "or 3-D (Z, H, W) image"
                )
            n = arr.ndim
            return Image(_as_float32(arr, path), (1.0,) * n, (0.0,) * n, tuple(np.eye(n).ravel()))
        if suffix not in IMAGE_SUFFIXES and suffix != "":
            raise ScoreReconError(
                f"unsupported file type '{suffix}' for {path}; use DICOM, NIfTI, NRRD, MHA, PNG or .npy"
            )
        if suffix in (".nii", ".nii.gz"):
            check_nifti(path)
        img = sitk.ReadImage(str(path))
        modality = img.GetMetaData("0008|0060").strip() if img.HasMetaDataKey("0008|0060") else ""
        return _from_sitk(img, modality, path)
    except ScoreReconError:
        raise
    except RuntimeError as exc:  # SimpleITK reports unreadable files as RuntimeError
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise ScoreReconError(f"cannot read {path}: corrupt or unsupported file ({first[:160]})") from None


def _as_float32(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """``arr`` as float32; refuse values beyond float32's range (they would become inf)."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        with np.errstate(all="ignore"):
            finite = np.isfinite(arr)
            big = float(np.abs(np.where(finite, arr, 0)).max())
        if big > float(np.finfo(np.float32).max):
            raise ScoreReconError(f"{path} holds values up to {big:.3g}, beyond float32's range; rescale the image")
    with np.errstate(all="ignore"):
        return arr.astype(np.float32)


def _from_sitk(img, modality: str = "", path: Path | str = "the image") -> Image:
    if img.GetNumberOfComponentsPerPixel() > 1:  # RGB(A) PNG → luminance
        arr = _as_float32(sitk.GetArrayFromImage(img), path)
        arr = arr[..., :3].mean(axis=-1)
    else:
        arr = _as_float32(sitk.GetArrayFromImage(img), path)
    spacing, origin, direction = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
    # a single slice stored as 3-D (a DICOM file, a one-slice NRRD) stays a (1, H, W) volume, so its z position
    # and orientation reach every output written with its geometry
    if arr.ndim not in (2, 3):
        raise ScoreReconError(f"expected a 2-D image or 3-D volume, got an array of shape {arr.shape}")
    return Image(arr, tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                 tuple(float(v) for v in direction), modality)


def to_sitk(image: Image):
    """Convert an :class:`Image` to a SimpleITK image with its geometry."""
    img = sitk.GetImageFromArray(np.asarray(image.array, dtype=np.float32))
    n = image.array.ndim
    spacing = tuple(image.spacing)[:n] if len(image.spacing) >= n else tuple(image.spacing) + (1.0,)
    origin = tuple(image.origin)[:n] if len(image.origin) >= n else tuple(image.origin) + (0.0,)
    direction = tuple(image.direction)
    if len(direction) != n * n:
        direction = tuple(np.eye(n).ravel())
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    return img


def write_image(image: Image, path: str | Path) -> Path:
    """Write NRRD / NIfTI / MHA (or .npy) atomically with the image's geometry; return the path."""
    path = Path(path)
    check_writable_suffix(path)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(image.array, dtype=np.float32))
        else:
            with keep_locale():
                sitk.WriteImage(to_sitk(image), str(tmp), useCompression=True)
        verify_written(tmp, path, tuple(image.array.shape))
    return path


def verify_written(tmp: Path, final: Path, shape: tuple[int, ...]) -> None:
    """Check a just-written image file before it is moved into place: flushed to disk (``fsync`` reports a full
    disk that the writer's buffered writes hid), not empty, and read back whole with ``shape``. SimpleITK's
    writers can leave an empty or cut-short file without an error when the disk is full."""
    try:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        size = os.path.getsize(tmp)
    except OSError as exc:
        exc.filename = exc.filename or str(final)
        raise
    problem = None
    if size == 0:
        problem = "the file came out empty"
    else:
        try:
            if _suffix(final) == ".npy":
                got = tuple(np.load(tmp, mmap_mode="r", allow_pickle=False).shape)
            else:
                with keep_locale():
                    got = tuple(sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp))).shape)
            if got != tuple(shape):
                problem = f"it reads back as {got}, not {tuple(shape)}"
        except (RuntimeError, ValueError, OSError, EOFError) as exc:
            problem = f"it does not read back ({' '.join(str(exc).split())[:100] or type(exc).__name__})"
    if problem:
        raise ScoreReconError(f"writing {final} failed: {problem}; the disk may be full: free space or choose "
                              "another path (nothing was written there)")


def check_writable_suffix(path: str | Path) -> None:
    """Raise :class:`ScoreReconError` unless :func:`write_image` can write ``path``'s format."""
    suffix = _suffix(Path(path))
    if suffix not in WRITE_SUFFIXES:
        raise ScoreReconError(
            f"cannot write '{suffix or Path(path).name}' files; name the output .nrrd, .nii.gz, .nii, .mha or .npy"
        )


def image_from_geometry(array: np.ndarray, geometry: dict) -> Image:
    """Build an :class:`Image` from an array and a dict made by :meth:`Image.geometry`."""
    return Image(np.asarray(array, dtype=np.float32), tuple(geometry.get("spacing", (1.0,) * array.ndim)),
                 tuple(geometry.get("origin", (0.0,) * array.ndim)),
                 tuple(geometry.get("direction", np.eye(array.ndim).ravel())))


def image_slices(array: np.ndarray) -> np.ndarray:
    """View a (H, W) image or (Z, H, W) volume as a stack of 2-D slices (S, H, W) along axis 0."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    raise ScoreReconError(f"expected a 2-D image or 3-D volume, got an array of shape {a.shape}")


def resample_image(image: Image, size: int) -> Image:
    """Resample every slice in-plane to ``size`` × ``size`` pixels, keeping the physical extent.

    Bilinear with antialiasing when shrinking. Spacing grows/shrinks per axis so the field of view
    (mm) is unchanged (a non-square image becomes anisotropic); the origin (centre of the first
    pixel) moves by half the change of pixel size along the image axes; the slice axis is kept.
    """
    import torch
    import torch.nn.functional as F

    if size < 1:
        raise ScoreReconError(f"resampling size must be a positive number of pixels, got {size}")
    stack = image_slices(image.array).astype(np.float32)
    h, w = stack.shape[-2:]
    if (h, w) == (size, size):
        return image.with_array(image.array)
    t = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < max(h, w))[:, 0].numpy()
    arr = out if image.array.ndim == 3 else out[0]
    n = image.array.ndim
    spacing = [float(v) for v in image.spacing[:n]]
    old = np.asarray(spacing, dtype=np.float64)
    spacing[0] = old[0] * w / size  # x ↔ columns (W)
    spacing[1] = old[1] * h / size  # y ↔ rows (H)
    shift = np.zeros(n)
    shift[0] = (spacing[0] - old[0]) / 2
    shift[1] = (spacing[1] - old[1]) / 2
    direction = np.asarray(image.direction, dtype=np.float64)
    direction = direction.reshape(n, n) if direction.size == n * n else np.eye(n)
    origin = np.asarray(image.origin[:n], dtype=np.float64) + direction @ shift
    return Image(arr.astype(np.float32), tuple(spacing), tuple(float(o) for o in origin),
                 tuple(float(d) for d in direction.ravel()), image.modality, dict(image.metadata))


# ------------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalization:
    """Linear map between physical intensities and the model's [0, 1] range.

    CT: ``kind="hu"``, ``low``/``high`` the HU window mapped to 0 and 1.
    MRI: ``kind="scale"``, ``low = 0``, ``high`` the intensity mapped to 1 (a high percentile).
    """

    kind: str
    low: float
    high: float

    def forward(self, a):
        """physical → normalised (no clipping; the operators are linear)."""
        return (a - self.low) / (self.high - self.low)

    def inverse(self, a):
        """normalised → physical."""
        return a * (self.high - self.low) + self.low

    def to_dict(self) -> dict:
        return {"kind": self.kind, "low": float(self.low), "high": float(self.high)}

    @staticmethod
    def from_dict(d: dict) -> Normalization:
        return Normalization(str(d["kind"]), float(d["low"]), float(d["high"]))


def normalization_mismatch(measurement: Normalization, model: Normalization) -> str | None:
    """Why a measurement normalised as ``measurement`` does not fit a prior trained with ``model``, or None.

    MRI (``kind="scale"``) is scaled per image (a high percentile → 1), so the measurement's own ``high`` is
    expected to differ from the model's 1.0 and is no mismatch. CT (``kind="hu"``) must use the model's HU window.
    """
    if measurement.kind != model.kind:
        return (f"the measurement is normalised as {measurement.kind!r} but the model expects {model.kind!r} "
                f"({'CT HU window' if model.kind == 'hu' else 'MRI per-image scale'}); use a model of the "
                "measurement's modality")
    if model.kind == "hu" and (abs(measurement.low - model.low) > 1e-6 or abs(measurement.high - model.high) > 1e-6):
        return (f"the measurement maps HU [{measurement.low:g}, {measurement.high:g}] to [0, 1] but the model was "
                f"trained on [{model.low:g}, {model.high:g}]; re-simulate or re-import the data with the model's "
                "window, or use a model trained with this one")
    return None


#: default CT window in HU mapped to [0, 1] (air … dense bone)
DEFAULT_CT_WINDOW = (-1000.0, 2000.0)


def ct_normalization(low: float = DEFAULT_CT_WINDOW[0], high: float = DEFAULT_CT_WINDOW[1]) -> Normalization:
    return Normalization("hu", low, high)


def mr_normalization(array: np.ndarray, percentile: float = 99.5) -> Normalization:
    """Scale so that the ``percentile`` of non-zero intensities maps to 1."""
    a = np.asarray(array, dtype=np.float32)
    nz = a[a > 0]
    hi = float(np.percentile(nz, percentile)) if nz.size else float(a.max() or 1.0)
    return Normalization("scale", 0.0, hi if hi > 0 else 1.0)


def window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip HU to ``[low, high]`` and map to [0, 1]."""
    return np.clip((np.asarray(array, np.float32) - low) / (high - low), 0.0, 1.0)


def guess_modality(image: Image) -> str:
    """"CT" or "MR" from DICOM metadata, else from intensities (negative values ≈ HU)."""
    m = image.modality.upper()
    if m in MODALITIES:
        return m
    return "CT" if float(np.min(image.array)) < -200 else "MR"


#: how to make the data folders the README's commands use (a fresh clone has none)
PREPARE_DATA_HINT = ("scorerecon prepare-data --output data makes the project's data folders (data/ct, data/mri, "
                     "data/heldout/ct, data/heldout/mri) from Debian and PyPI packages")


def modality_mismatch(image: Image, want: str, name: str | Path = "the image") -> tuple[str, bool] | None:
    """(message, certain) when ``image`` does not look like modality ``want`` ("CT" / "MR"), else None.

    ``certain``: the image's own metadata (DICOM 0008|0060, kept in NRRD / MHA) names another modality;
    otherwise only its intensities suggest it (values below −200 look like CT HU; none look like MR).
    """
    found = guess_modality(image)
    if found == want:
        return None
    tagged = image.modality.upper() in MODALITIES
    how = f"its metadata say {found}" if tagged else f"its intensities look like {found}"
    return (f"{name} does not look like {want}: {how}", tagged)


def save_json(obj: dict, path: str | Path) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    return path
