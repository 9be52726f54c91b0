"""PNG figures with Pillow: labelled image panels side by side (no matplotlib needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from .utils import atomic_path


def _to_uint8(a: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    a = (np.asarray(a, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def panel_figure(panels: Sequence[tuple[str, np.ndarray, float, float]], path: str | Path,
                 scale: int = 2, columns: int | None = None) -> Path:
    """Write labelled grayscale panels ``(title, 2-D array, vmin, vmax)`` in a grid as a PNG."""
    columns = columns or len(panels)
    h, w = panels[0][1].shape
    ph, pw = h * scale, w * scale
    label_h = 16
    rows = (len(panels) + columns - 1) // columns
    canvas = PILImage.new("L", (columns * pw, rows * (ph + label_h)), color=0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (title, arr, vmin, vmax) in enumerate(panels):
        r, c = divmod(i, columns)
        tile = PILImage.fromarray(_to_uint8(arr, vmin, vmax)).resize((pw, ph), PILImage.NEAREST)
        canvas.paste(tile, (c * pw, r * (ph + label_h) + label_h))
        draw.text((c * pw + 3, r * (ph + label_h) + 2), title, fill=255, font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
