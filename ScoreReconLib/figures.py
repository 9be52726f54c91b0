"""PNG figures with Pillow (no matplotlib needed): labelled image panels side by side, and plain image grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from .utils import atomic_path

if TYPE_CHECKING:
    import torch


def _to_uint8(a: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    a = (np.asarray(a, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


#: width of a panel's colour bar in output pixels
BAR_WIDTH = 8


def _label(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def panel_figure(panels: Sequence[tuple], path: str | Path, scale: int = 2, columns: int | None = None) -> Path:
    """Write labelled grayscale panels in a grid as a PNG.

    A panel is ``(title, 2-D array, vmin, vmax)``, optionally followed by ``unit`` (str: a grey-scale colour bar
    with the window's ends in that unit is drawn at the panel's right edge) and ``outline`` (a boolean 2-D mask,
    e.g. metal, whose border is drawn in red)."""
    columns = columns or len(panels)
    h, w = panels[0][1].shape
    ph, pw = h * scale, w * scale
    label_h = 16
    rows = (len(panels) + columns - 1) // columns
    canvas = PILImage.new("RGB", (columns * pw, rows * (ph + label_h)), color=(0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, panel in enumerate(panels):
        title, arr, vmin, vmax = panel[:4]
        unit = panel[4] if len(panel) > 4 else None
        outline = panel[5] if len(panel) > 5 else None
        r, c = divmod(i, columns)
        x0, y0 = c * pw, r * (ph + label_h) + label_h
        tile = PILImage.fromarray(_to_uint8(arr, vmin, vmax)).resize((pw, ph), PILImage.NEAREST).convert("RGB")
        canvas.paste(tile, (x0, y0))
        if outline is not None and np.asarray(outline).any():
            m = np.asarray(outline, dtype=bool)
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            for yy, xx in zip(*np.nonzero(edge), strict=True):
                draw.rectangle([x0 + xx * scale, y0 + yy * scale, x0 + xx * scale + scale - 1,
                                y0 + yy * scale + scale - 1], fill=(255, 40, 40))
        if unit is not None:  # grey-scale bar, top = vmax, bottom = vmin, with the ends labelled
            grad = np.linspace(255, 0, ph).astype(np.uint8)[:, None].repeat(BAR_WIDTH, 1)
            canvas.paste(PILImage.fromarray(grad).convert("RGB"), (x0 + pw - BAR_WIDTH, y0))
            draw.text((x0 + pw - BAR_WIDTH - 2, y0 + 1), _label(vmax), fill=(255, 220, 0), font=font, anchor="ra")
            draw.text((x0 + pw - BAR_WIDTH - 2, y0 + ph - 2), f"{_label(vmin)} {unit}", fill=(255, 220, 0),
                      font=font, anchor="rd")
        draw.text((x0 + 3, r * (ph + label_h) + 2), title, fill=(255, 255, 255), font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Write images ``(B, 1, H, W)`` in ``[0, 1]`` (clipped) as one 8-bit grayscale PNG grid, atomically."""
    imgs = images.detach().float().cpu().clamp(0, 1)
    b, _, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding), np.uint8)
    for k in range(b):
        r, c = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = np.round(imgs[k, 0].numpy() * 255).astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        PILImage.fromarray(grid, mode="L").save(tmp, format="PNG")
    return path
