"""The samples shipped in ``Resources/samples`` as a "ScoreRecon" category of the Sample Data module."""

from __future__ import annotations

import hashlib
import pathlib
import urllib.parse
import urllib.request

_MODULE_DIR = pathlib.Path(__file__).resolve().parent.parent
#: (name shown in Sample Data, file in Resources/samples, node name)
SAMPLES = (
    ("ScoreRecon head CT slice", "ct_head_sample.nrrd", "ScoreReconHeadCT"),
    ("ScoreRecon neck CT slice", "ct_neck_sample.nrrd", "ScoreReconNeckCT"),
    ("ScoreRecon T1 MRI slice", "mri_sample.nrrd", "ScoreReconT1MRI"),
)
CATEGORY = "ScoreRecon"


def samplesDir() -> pathlib.Path | None:
    """The installed module's ``Resources/samples`` or, in a source checkout, the repository's."""
    for candidate in (_MODULE_DIR / "Resources" / "samples", _MODULE_DIR.parent / "Resources" / "samples"):
        if candidate.is_dir():
            return candidate
    return None


def fileURI(path: pathlib.Path) -> str:
    """A ``file:`` URI for a local file (what Sample Data downloads from with urllib)."""
    return urllib.parse.urljoin("file:", urllib.request.pathname2url(str(path.resolve())))


def sha256(path: pathlib.Path) -> str:
    return "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def registerSampleData(sampleDataModule=None) -> list[str]:
    """Register every shipped sample that exists with Sample Data; return the names registered.

    ``sampleDataModule``: the ``SampleData`` module (imported when None). Called once the
    application has started (``startupCompleted``), as Slicer's module template does.
    """
    if sampleDataModule is None:
        import SampleData as sampleDataModule
    folder = samplesDir()
    if folder is None:
        return []
    icon = _MODULE_DIR / "Resources" / "Icons" / "ScoreRecon.png"
    registered = []
    for name, fileName, nodeName in SAMPLES:
        path = folder / fileName
        if not path.is_file():
            continue
        sampleDataModule.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=name, thumbnailFileName=str(icon) if icon.is_file() else None,
            uris=fileURI(path), fileNames=fileName, nodeNames=nodeName, checksums=sha256(path))
        registered.append(name)
    return registered
