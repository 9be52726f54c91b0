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


#: display windows (low, high) of CT comparison figures in HU: soft tissue (W 400 / L 40) and bone (W 2000 / L 500)
CT_WINDOWS = {"soft tissue": (-160.0, 240.0), "bone": (-500.0, 1500.0)}


def comparison_panels(case, records, score_rec, norm, modality: str) -> list[tuple]:
    """The panels of a method comparison (the demo's and ``evaluate --output``'s figures), in physical units with
    colour bars: every method's image (FBP / zero-filled, the classical methods and ScoreRecon beside the reference)
    in the soft-tissue and bone windows for CT or the image's range for MRI, then |error| of the best classical
    method and of ScoreRecon and the calibrated posterior std on one common scale; metal outlined in red.
    ``records``: the case's classical records then the score record ``score_rec`` (``EvalRecord`` with the image in
    ``extra["image"]``); ``norm`` the images' normalisation."""
    unit = "HU" if modality == "CT" else "a.u."
    span = float(norm.high - norm.low)
    ref = norm.inverse(case.x[0, 0].numpy())
    images = [("reference", ref)] + [("ScoreRecon" if r is score_rec else r.method.upper(),
                                      norm.inverse(r.extra["image"][0, 0].numpy())) for r in records]
    metal = None if case.score_mask is None else ~case.score_mask[0, 0].numpy().astype(bool)
    keep = np.ones_like(ref, bool) if metal is None else ~metal
    windows = CT_WINDOWS if modality == "CT" else {"": (0.0, float(np.percentile(ref[keep], 99.5)) or 1.0)}
    panels: list[tuple] = []
    for name, (lo, hi) in windows.items():
        for title, arr in images:
            panels.append((f"{title} {name}".strip(), arr, lo, hi, unit, metal))
    best = max(records[:-1], key=lambda r: r.psnr)
    errors = [(f"|err| {best.method.upper()}", np.abs(norm.inverse(best.extra["image"][0, 0].numpy()) - ref) * keep),
              ("|err| ScoreRecon", np.abs(norm.inverse(score_rec.extra["image"][0, 0].numpy()) - ref) * keep)]
    if score_rec.extra.get("std") is not None:
        errors.append(("posterior std (calibrated)", score_rec.extra["std"][0, 0].numpy() * span * keep))
    top = float(max(np.percentile(e[keep], 99) for _, e in errors)) or 1.0  # one scale for errors and std
    panels += [(title, arr, 0.0, top, unit, metal) for title, arr in errors]
    return panels


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
