"""Patch-based, position-aware score priors (Hu, Song, Fessler & Shen, NeurIPS 2024).

A patch prior's network scores a ``P x P`` patch of a noisy image given its noise level and the
position of every pixel: two extra input channels hold each pixel's column and row coordinate
``(u, v)`` in the image's normalised frame (``-1`` and ``+1`` at the image's outer edges, so the
zero padding around an image lies at ``|u| > 1`` or ``|v| > 1``). Coordinates are relative to the
field of view, not to pixels, so one network serves any image size.

Training (:func:`sample_patches`): every patch is cut from a zero-padded training slice at a random
position, scale (pixel size), rotation and flip by one ``grid_sample`` call; a few volumes give
millions of distinct patches.

Sampling (:func:`tiled_score`, with a :class:`TileGrid` splitter / merger): the whole-image score is
assembled from a non-overlapping grid of patches over the image padded with fresh noise, the grid shifted
by a random offset in ``[0, P)`` at every evaluation, all patches scored in one batch; the seams move every
step and average out. Pad pixels carry ``N(0, sigma(t)^2)`` noise, the marginal of the zero background the
network saw in training; their scores are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: default patch side in pixels and the training scale range (canvas side / pixels per field of view)
DEFAULT_PATCH_SIZE = 32


def pixel_coords(n: int, start: int, count: int, device=None) -> torch.Tensor:
    """Normalised centre coordinates of pixels ``start .. start+count-1`` of an ``n``-pixel axis.

    Pixel ``k`` of the image covers ``[k, k+1)``; its centre maps to ``(2k + 1) / n - 1``, so the
    image spans ``[-1, 1]`` and padding lies outside it. ``(count,)`` float32.
    """
    k = torch.arange(start, start + count, device=device, dtype=torch.float32)
    return (2.0 * k + 1.0) / float(n) - 1.0


def coordinate_grid(height: int, width: int, top: int, left: int, rows: int, cols: int,
                    device=None) -> torch.Tensor:
    """Coordinate channels ``(2, rows, cols)`` (u = column, v = row) of a window of an ``height x width`` image.

    ``top``/``left`` may be negative and the window may run past the image (padding)."""
    v = pixel_coords(height, top, rows, device)
    u = pixel_coords(width, left, cols, device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv])


def tile_layout(height: int, width: int, patch: int, offset: tuple[int, int]) -> tuple[int, int, int, int]:
    """Padding ``(top, bottom, left, right)`` that puts a grid of ``patch``-sized tiles over an image.

    The grid starts ``offset = (oy, ox)`` pixels (``0 <= o < patch``) above/left of the image and
    covers it completely; the padded canvas is a multiple of ``patch`` on each side.
    """
    oy, ox = int(offset[0]), int(offset[1])
    if not (0 <= oy < patch and 0 <= ox < patch):
        raise ValueError(f"tile offset {offset} must lie in [0, {patch})")
    bottom = (-(height + oy)) % patch
    right = (-(width + ox)) % patch
    return oy, bottom, ox, right


def to_patches(canvas: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, nH*P, nW*P)`` → ``(B*nH*nW, C, P, P)``, tiles in row-major order per image."""
    b, c, h, w = canvas.shape
    nh, nw = h // patch, w // patch
    t = canvas.reshape(b, c, nh, patch, nw, patch).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b * nh * nw, c, patch, patch)


def from_patches(tiles: torch.Tensor, batch: int, nh: int, nw: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`: ``(B*nH*nW, C, P, P)`` → ``(B, C, nH*P, nW*P)``."""
    _, c, p, _ = tiles.shape
    t = tiles.reshape(batch, nh, nw, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(batch, c, nh * p, nw * p)


def random_offset(patch: int, generator: torch.Generator | None, device=None) -> tuple[int, int]:
    """A tile-grid offset ``(oy, ox)`` uniform in ``[0, patch)^2`` drawn from ``generator``."""
    from .rng import shared

    generator = shared(generator)
    dev = generator.device if generator is not None else (device or "cpu")
    o = torch.randint(0, patch, (2,), generator=generator, device=dev)
    return int(o[0]), int(o[1])


@dataclass(frozen=True)
class TileGrid:
    """A grid of non-overlapping ``patch``-sized tiles over an ``height x width`` image, shifted ``offset = (oy,
    ox)`` pixels up/left (:func:`tile_layout`): :meth:`split` pads and cuts an image batch into tiles with their
    coordinate channels, :meth:`merge` puts scored tiles back and crops the padding (MONAI's splitter / merger
    pair, for one fixed grid)."""

    height: int
    width: int
    patch: int
    offset: tuple[int, int]

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of the padded canvas."""
        return tile_layout(self.height, self.width, self.patch, self.offset)

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles per column and per row ``(nH, nW)``."""
        top, bottom, left, right = self.padding
        return (self.height + top + bottom) // self.patch, (self.width + left + right) // self.patch

    def split(self, x: torch.Tensor, pad_std: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, H, W)`` padded with ``N(0, pad_std²)`` noise (``pad_std`` ``(B,)``, drawn from
        ``generator``) and cut into ``(B*nH*nW, C, P, P)`` tiles, with their ``(B*nH*nW, 2, P, P)`` coordinates."""
        from .rng import randn

        b, c, h, w = x.shape
        top, bottom, left, right = self.padding
        hc, wc = h + top + bottom, w + left + right
        noise = randn((b, c, hc, wc), generator, x.device, x.dtype)
        canvas = noise * pad_std.reshape(-1, 1, 1, 1).to(x)
        canvas[:, :, top:top + h, left:left + w] = x
        coords = to_patches(coordinate_grid(h, w, -top, -left, hc, wc, device=x.device)[None].to(x.dtype),
                            self.patch)
        return to_patches(canvas, self.patch), coords.repeat(b, 1, 1, 1)

    def merge(self, tiles: torch.Tensor, batch: int) -> torch.Tensor:
        """Scored tiles ``(B*nH*nW, C, P, P)`` back into ``(B, C, H, W)`` images (the padding cropped)."""
        top, _, left, _ = self.padding
        full = from_patches(tiles, batch, *self.shape)
        return full[:, :, top:top + self.height, left:left + self.width]


#: CPU: tile pixels scored per network call (32 tiles of 32²). Small chunks keep the activations in the cache: at
#: 512² (289 tiles) one evaluation took 2.57 s in chunks of 32 tiles against 4.03 s in chunks of 256, the same
#: at 128² and 256² (``benchmarks/RESULTS.md``, *tile-chunks*); the scores agree to float rounding
CPU_TILE_CHUNK_PIXELS = 32 * 32 * 32
#: CUDA: tiles per network call (a GPU wants large batches)
CUDA_TILE_CHUNK = 256


def tile_chunk(patch: int, device: torch.device) -> int:
    """Tiles of ``patch``² scored per network call on ``device``: :data:`CPU_TILE_CHUNK_PIXELS` worth on a CPU,
    :data:`CUDA_TILE_CHUNK` on a GPU."""
    if device.type == "cuda":
        return CUDA_TILE_CHUNK
    return max(1, CPU_TILE_CHUNK_PIXELS // (int(patch) ** 2))


def tiled_score(patch_score, x: torch.Tensor, t: torch.Tensor, std: torch.Tensor, patch: int,
                offset: tuple[int, int], generator: torch.Generator | None = None,
                max_batch: int | None = None) -> torch.Tensor:
    """Whole-image score of ``x`` ``(B, 1, H, W)`` from a patch network, one tile grid at ``offset``.

    ``patch_score(tiles, t_tiles, coords)`` scores ``(N, 1, P, P)`` tiles at times ``(N,)`` with
    coordinate channels ``(N, 2, P, P)``; ``std`` ``(B,)`` is the noise std ``sigma(t)`` used to fill
    the padding with fresh noise drawn from ``generator``. Tiles are scored in chunks of ``max_batch``
    (default :func:`tile_chunk` for ``x``'s device).
    """
    if max_batch is None:
        max_batch = tile_chunk(patch, x.device)
    b, _, h, w = x.shape
    grid = TileGrid(h, w, patch, offset)
    tiles, coords = grid.split(x, std, generator)
    nh, nw = grid.shape
    tt = t.reshape(-1).to(x.device).repeat_interleave(nh * nw)
    outs = [patch_score(tiles[i:i + max_batch], tt[i:i + max_batch], coords[i:i + max_batch])
            for i in range(0, tiles.shape[0], max_batch)]
    return grid.merge(torch.cat(outs), b)


def sample_patches(images: torch.Tensor, count: int, patch: int, generator: torch.Generator,
                   scale_range: tuple[float, float] = (0.5, 2.0), max_rotate_deg: float = 10.0,
                   flip: bool = True, intensity: tuple[float, float] = (1.0, 1.0),
                   index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training patches ``(count, 1, P, P)`` and their coordinates ``(count, 2, P, P)``.

    ``images`` ``(N, 1, S, S)`` in ``[0, 1]`` are the training slices at their stored grid. Each
    patch picks a slice (``index`` or uniformly), a canvas side ``n = S * s`` with
    ``log s ~ U(log scale_range)`` (``s > 1``: finer pixels than stored, ``s < 1``: coarser), a
    position uniform over the image zero-padded by ``P`` pixels of that canvas, a rotation in
    ``±max_rotate_deg`` about the image centre, a horizontal flip with probability 1/2 (when
    ``flip``) and an intensity gain in ``intensity``. The coordinates are those of the canvas
    pixels before rotation, so they say where in the field of view the patch lies. Sampling is
    bilinear from a 2x area pyramid level at least as fine as the canvas (no aliasing). All
    parameters come from ``generator`` (deterministic).
    """
    n_img, _, s, _ = images.shape
    dev = images.device
    g = generator
    u = torch.rand(count, 7, generator=g, dtype=torch.float64)
    idx = index if index is not None else torch.randint(n_img, (count,), generator=g)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scale = torch.exp(lo + u[:, 0] * (hi - lo))
    n = torch.clamp(torch.round(s * scale), min=patch // 2)  # canvas side in pixels
    # top-left pixel of the patch in canvas pixels, uniform over [-P, n] (padding by P on each side)
    top = torch.floor(-patch + u[:, 1] * (n + patch + 1))
    left = torch.floor(-patch + u[:, 2] * (n + patch + 1))
    angle = (u[:, 3] * 2 - 1) * math.radians(max_rotate_deg)
    sx = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(count, dtype=torch.float64)
    gain = intensity[0] + u[:, 5] * (intensity[1] - intensity[0])

    k = torch.arange(patch, dtype=torch.float64)
    v = (2 * (top[:, None] + k) + 1) / n[:, None] - 1  # (count, P) rows
    w = (2 * (left[:, None] + k) + 1) / n[:, None] - 1  # (count, P) cols
    vv = v[:, :, None].expand(count, patch, patch)
    uu = w[:, None, :].expand(count, patch, patch)
    coords = torch.stack([uu, vv], 1).float()
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    gx = (cos * uu - sin * vv) * sx[:, None, None]
    gy = sin * uu + cos * vv
    grid = torch.stack([gx, gy], -1).float()

    out = torch.empty((count, 1, patch, patch), device=dev, dtype=torch.float32)
    # pyramid: level L holds the slices area-downsampled by 2^L; use the coarsest with >= canvas pixels
    level = torch.clamp(torch.floor(torch.log2(s / n.clamp(min=1))), min=0).long()
    pyramid = images.float()
    for lev in range(int(level.max()) + 1):
        if lev > 0:
            if pyramid.shape[-1] < 2:
                break
            pyramid = F.avg_pool2d(pyramid, 2)
        sel = (level == lev).nonzero().flatten() if lev < int(level.max()) else (level >= lev).nonzero().flatten()
        if sel.numel() == 0:
            continue
        src = pyramid[idx[sel].to(dev)]
        out[sel.to(dev)] = F.grid_sample(src, grid[sel].to(dev), mode="bilinear", padding_mode="zeros",
                                         align_corners=False)
    out = out * gain.reshape(-1, 1, 1, 1).to(out)
    return out.clamp_(0.0, 1.0), coords.to(dev)


def estimate_patch_sigma_max(images: torch.Tensor, patch: int, count: int = 1000, seed: int = 0) -> float:
    """Largest pairwise L2 distance between ``count`` random training patches (Song & Ermon 2020)."""
    g = torch.Generator().manual_seed(seed)
    x, _ = sample_patches(images, count, patch, g, scale_range=(1.0, 1.0), max_rotate_deg=0.0)
    flat = x.flatten(1).float().cpu()
    return round(max(float(torch.cdist(flat, flat).max()), 1.0), 1)
