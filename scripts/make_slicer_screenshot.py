"""Render the extension's screenshot: docs/screenshots/ScoreRecon-1.png (for the ExtensionsIndex entry).

It is drawn, not grabbed from a running Slicer (the application cannot run here): a panel in the
layout of the module's Apply area beside three slice views, the images being a real run of the
commands the module runs, on the shipped held-out head CT sample (sparse-ct, 23 views):
simulate → FBP and the score prior with the default CT model (its recommended settings, seed 0).
The status line shows the PSNR/SSIM the commands reported. Run from the repository root:

    python scripts/make_slicer_screenshot.py            # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots" / "ScoreRecon-1.png"
SAMPLE = REPO / "Resources" / "samples" / "ct_head_sample.nrrd"
VIEWS = 23
WINDOW = (-160.0, 240.0)  # HU shown (brain window, level 40 / width 400)


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ScoreReconLib", *args], check=True, cwd=REPO)


def _image(path: Path) -> np.ndarray:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    return a[0] if a.ndim == 3 else a


def _gray(a: np.ndarray, size: int) -> Image.Image:
    lo, hi = WINDOW
    u8 = (np.clip((a - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(u8).resize((size, size), Image.BILINEAR).convert("RGB")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _run("simulate", "--task", "sparse-ct", "--input", str(SAMPLE), "--output", str(t / "m.npz"),
             "--views", str(VIEWS), "--seed", "0")
        metrics = {}
        for method in ("fbp", "score"):
            extra = ["--model", "default-ct"] if method == "score" else []
            _run("reconstruct", "--input", str(t / "m.npz"), "--method", method, "--output", str(t / f"{method}.nrrd"),
                 "--reference", str(SAMPLE), "--metrics-json", str(t / f"{method}.json"), "--seed", "0",
                 "--progress-format", "json", *extra)
            metrics[method] = json.loads((t / f"{method}.json").read_text())
        truth, fbp, score = _image(SAMPLE), _image(t / "fbp.nrrd"), _image(t / "score.nrrd")

    width, height, panel, bar = 1000, 420, 300, 26
    canvas = Image.new("RGB", (width, height), (40, 40, 44))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.rectangle([0, 0, width, bar], fill=(60, 60, 66))
    draw.text((8, 7), "3D Slicer  -  Modules: Tomographic Reconstruction > ScoreRecon   (rendered by "
              "scripts/make_slicer_screenshot.py)", fill=(230, 230, 230), font=font)
    draw.rectangle([0, bar, panel, height], fill=(242, 242, 242))
    rows = [("Input", "image"), ("Image volume", SAMPLE.stem), ("Task", "sparse-ct"), ("Views", str(VIEWS)),
            ("Method", "score"), ("Model", "default (default-ct)"), ("Sampler", "proximal, recommended settings"),
            ("Baseline", "FBP"), ("Keep temporary files", "off"), ("Side-by-side layout", "off")]
    y = bar + 12
    draw.text((10, y), "ScoreRecon", fill=(20, 20, 20), font=font)
    y += 22
    for label, value in rows:
        draw.text((14, y), label + ":", fill=(60, 60, 60), font=font)
        draw.rectangle([130, y - 3, panel - 12, y + 13], fill=(255, 255, 255), outline=(180, 180, 180))
        draw.text((135, y), value, fill=(10, 10, 10), font=font)
        y += 22
    y += 6
    for x0, x1, text, fill in ((14, 150, "Apply", (225, 232, 245)), (158, panel - 12, "Cancel", (235, 235, 235))):
        draw.rectangle([x0, y, x1, y + 22], fill=fill, outline=(150, 150, 150))
        draw.text((x0 + 8, y + 6), text, fill=(20, 20, 20), font=font)
    y += 34
    seconds = metrics["fbp"].get("seconds", 0.0) + metrics["score"].get("seconds", 0.0)
    status = [f"Done in {seconds:.1f} s.",
              f"ScoreRecon: PSNR {metrics['score']['psnr']:.2f} dB, SSIM {metrics['score']['ssim']:.3f}.",
              f"FBP: PSNR {metrics['fbp']['psnr']:.2f} dB, SSIM {metrics['fbp']['ssim']:.3f}."]
    for line in status:
        draw.text((14, y), line, fill=(20, 20, 20), font=font)
        y += 16

    side = (width - panel - 4 * 8) // 3
    for i, (title, image, color) in enumerate((("Reference (held-out head CT)", truth, (200, 60, 60)),
                                               (f"FBP, {VIEWS} views", fbp, (220, 200, 60)),
                                               ("ScoreRecon (score prior)", score, (80, 170, 80)))):
        x = panel + 8 + i * (side + 8)
        draw.rectangle([x, bar + 8, x + side, bar + 24], fill=color)
        draw.text((x + 4, bar + 11), title, fill=(0, 0, 0), font=font)
        canvas.paste(_gray(image, side), (x, bar + 26))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=128).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB); metrics: "
          + json.dumps({m: {k: metrics[m][k] for k in ("psnr", "ssim")} for m in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
