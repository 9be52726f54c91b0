"""The InVesalius project reader (``.inv3``: a gzipped tar of ``main.plist`` and a raw voxel matrix)."""

from __future__ import annotations

import io
import plistlib
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from ..data import Image
from ..errors import ScoreReconError


def read_inv3(data: bytes | str | Path) -> Image:
    """Read the CT volume of an InVesalius project (``.inv3``: a gzipped tar).

    ``main.plist`` names the matrix file, its dtype and shape ``(Z, Y, X)``, and the spacing
    ``(x, y, z)`` in mm; ``matrix.dat`` holds the raw little-endian voxels (HU for CT). Returns an
    LPS :class:`Image` ``(Z, Y, X)`` float32: rows flipped so anterior is at the top (InVesalius
    keeps VTK's bottom-up row order), slices inferior → superior as stored.
    """
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    try:
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
    except tarfile.TarError:
        raise ScoreReconError("not an InVesalius project: .inv3 files are (gzipped) tar archives") from None
    with tar:
        members = {PurePosixPath(m.name): m for m in tar.getmembers() if m.isfile()}
        plists = [p for p in members if p.name == "main.plist"]
        if not plists:
            raise ScoreReconError("InVesalius project has no main.plist; the file is not a .inv3 project")
        folder = plists[0].parent
        try:
            meta = plistlib.loads(tar.extractfile(members[plists[0]]).read())
        except Exception as exc:  # plistlib raises several types on bad XML
            raise ScoreReconError(f"cannot parse the project's main.plist ({exc})") from None
        matrix = meta.get("matrix")
        if not isinstance(matrix, dict) or not {"filename", "dtype", "shape"} <= set(matrix):
            raise ScoreReconError("main.plist has no 'matrix' entry with filename, dtype and shape")
        orientation = meta.get("orientation", 1)
        if orientation not in (1, "AXIAL"):
            raise ScoreReconError(
                f"InVesalius project orientation is {orientation!r}; only axial projects (1) are supported"
            )
        shape = tuple(int(s) for s in matrix["shape"])
        spacing = tuple(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0)))
        if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
            raise ScoreReconError(
                f"main.plist gives shape {shape} and spacing {spacing}; expected 3 positive values each"
            )
        dtype = np.dtype(str(matrix["dtype"])).newbyteorder("<")
        mpath = folder / str(matrix["filename"])
        if mpath not in members:
            raise ScoreReconError(f"InVesalius project lacks its matrix file {matrix['filename']}")
        buf = tar.extractfile(members[mpath]).read()
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(buf) != expected:
        raise ScoreReconError(
            f"{matrix['filename']} holds {len(buf)} bytes but shape {shape} of {dtype.name} needs {expected}"
        )
    vol = np.frombuffer(buf, dtype=dtype).reshape(shape)[:, ::-1, :].astype(np.float32)
    modality = str(meta.get("modality", "")).upper()
    return Image(vol, spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), "CT" if modality == "CT" else modality,
                 {"name": str(meta.get("name", "")), "scalar_range": list(meta.get("scalar_range", []))})

