"""ScoreReconLib: CT and MRI reconstruction with score-based generative priors.

Implements Song, Shen, Xing & Ermon, "Solving Inverse Problems in Medical Imaging with
Score-Based Generative Models" (ICLR 2022) on PyTorch and MONAI. This package never imports
``slicer`` or Qt; the 3D Slicer module in ``ScoreRecon/`` builds on it.
"""

__version__ = "0.1.0"

#: Version of the on-disk measurement (.npz) and checkpoint (config.json) formats.
FORMAT_VERSION = 1

from .errors import ScoreReconError  # noqa: E402

__all__ = ["ScoreReconError", "__version__", "FORMAT_VERSION"]
