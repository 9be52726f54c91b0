"""Patch priors: tiling, coordinates, training patches, train/save/load/resume and any-size reconstruction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_PATCH_NETWORK, random_insert_phantoms

from ScoreReconLib.cli import main as cli_main
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.networks import CONFIG_FILE, load_prior
from ScoreReconLib.operators import build_operator
from ScoreReconLib.patches import (
    coordinate_grid,
    from_patches,
    pixel_coords,
    sample_patches,
    tile_layout,
    tiled_score,
    to_patches,
)
from ScoreReconLib.reconstruction import reconstruct
from ScoreReconLib.training import TrainConfig, train, transplant_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


# ------------------------------------------------------------------------------- tiling
def test_tile_layout_covers_image_for_every_offset():
    for h, w, p in [(37, 50, 8), (64, 64, 16), (5, 9, 4)]:
        for oy in range(p):
            top, bottom, left, right = tile_layout(h, w, p, (oy, (oy * 3) % p))
            assert top == oy and (h + top + bottom) % p == 0 and 0 <= bottom < p
            assert (w + left + right) % p == 0 and 0 <= right < p
    with pytest.raises(ValueError):
        tile_layout(10, 10, 4, (4, 0))


def test_to_from_patches_roundtrip():
    x = torch.randn(3, 2, 24, 40)
    tiles = to_patches(x, 8)
    assert tiles.shape == (3 * 3 * 5, 2, 8, 8)
    torch.testing.assert_close(tiles[6], x[0, :, 8:16, 8:16])  # row 1, column 1 of image 0
    torch.testing.assert_close(from_patches(tiles, 3, 3, 5), x)


def test_coordinates_span_the_image_and_extend_into_padding():
    c = pixel_coords(4, -1, 6)
    torch.testing.assert_close(c, torch.tensor([-1.25, -0.75, -0.25, 0.25, 0.75, 1.25]))
    g = coordinate_grid(10, 20, 0, 0, 10, 20)
    assert g.shape == (2, 10, 20)
    assert torch.allclose(g[0, 3], pixel_coords(20, 0, 20)) and torch.allclose(g[1, :, 5], pixel_coords(10, 0, 10))


def _position_gaussian(mean_fn, s0: float):
    """Score of a pixel-independent Gaussian prior N(mean_fn(u, v), s0^2) at noise std sigma: a patch-local
    prior whose exact score needs the pixels' positions."""

    def exact(x, sigma, h, w):
        g = coordinate_grid(h, w, 0, 0, h, w)
        return -(x - mean_fn(g[0], g[1])) / (s0**2 + sigma.reshape(-1, 1, 1, 1) ** 2)

    def patch_net(tiles, t, coords):
        sigma = t  # the test uses t as sigma directly
        return -(tiles - mean_fn(coords[:, :1], coords[:, 1:])) / (s0**2 + sigma.reshape(-1, 1, 1, 1) ** 2)

    return exact, patch_net


def test_tiled_score_reproduces_exact_score_of_a_patch_local_prior():
    exact, net = _position_gaussian(lambda u, v: 0.5 + 0.3 * u - 0.2 * v**2, s0=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 45, 30, generator=g)
    sigma = torch.tensor([0.3, 2.0])
    want = exact(x, sigma, 45, 30)
    for offset in [(0, 0), (3, 7), (15, 15)]:
        got = tiled_score(net, x, sigma, sigma, 16, offset, generator=g, max_batch=5)
        torch.testing.assert_close(got, want)


def test_tiles_are_scored_in_cache_sized_chunks_on_a_cpu_and_the_chunking_does_not_change_the_score():
    from ScoreReconLib.patches import CPU_TILE_CHUNK_PIXELS, CUDA_TILE_CHUNK, tile_chunk

    assert tile_chunk(32, torch.device("cpu")) == CPU_TILE_CHUNK_PIXELS // 32**2 == 32
    assert tile_chunk(64, torch.device("cpu")) == 8 and tile_chunk(4096, torch.device("cpu")) == 1
    assert tile_chunk(32, torch.device("cuda")) == CUDA_TILE_CHUNK
    calls = []
    exact, net = _position_gaussian(lambda u, v: 0.4 + 0.2 * u * v, s0=0.2)

    def counting(tiles, t, coords):
        calls.append(tiles.shape[0])
        return net(tiles, t, coords)

    x = torch.randn(1, 1, 200, 200, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5])
    default = tiled_score(counting, x, sigma, sigma, 32, (3, 5), generator=torch.Generator().manual_seed(3))
    assert max(calls) == tile_chunk(32, x.device) and len(calls) > 1  # 64 tiles of 32²: two calls
    calls.clear()
    one_call = tiled_score(counting, x, sigma, sigma, 32, (3, 5), generator=torch.Generator().manual_seed(3),
                           max_batch=10_000)
    assert len(calls) == 1
    torch.testing.assert_close(default, one_call)


def test_tiled_score_drops_padding_scores_and_fills_padding_with_noise():
    seen = {}

    def net(tiles, t, coords):
        seen.setdefault("tiles", []).append(tiles.clone())
        seen.setdefault("coords", []).append(coords.clone())
        return torch.zeros_like(tiles)

    x = torch.full((1, 1, 10, 10), 0.5)
    tiled_score(net, x, torch.ones(1), torch.full((1,), 3.0), 8, (5, 2), generator=torch.Generator().manual_seed(1))
    tiles = torch.cat(seen["tiles"])
    coords = torch.cat(seen["coords"])
    inside = (coords.abs() <= 1).all(1, keepdim=True)
    assert torch.all(tiles[inside] == 0.5)
    pad = tiles[~inside]
    assert pad.numel() > 100 and 2.0 < float(pad.std()) < 4.0  # N(0, 3^2) noise in the padding


# -------------------------------------------------------------------- training patches
def test_sample_patches_without_augmentation_crops_the_padded_image():
    img = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    x, c = sample_patches(img, 6, 8, g, scale_range=(1.0, 1.0), max_rotate_deg=0.0, flip=False,
                          index=torch.tensor([0, 1, 0, 1, 0, 1]))
    assert x.shape == (6, 1, 8, 8) and c.shape == (6, 2, 8, 8)
    padded = torch.nn.functional.pad(img, (8, 8, 8, 8))
    for k in range(6):
        # pixel coordinate u = (2 col + 1)/32 - 1  →  col = ((u + 1) * 32 - 1) / 2
        col = int(round(((float(c[k, 0, 0, 0]) + 1) * 32 - 1) / 2))
        row = int(round(((float(c[k, 1, 0, 0]) + 1) * 32 - 1) / 2))
        torch.testing.assert_close(x[k, 0], padded[k % 2, 0, row + 8:row + 16, col + 8:col + 16])


def test_sample_patches_is_deterministic_and_in_range():
    img = torch.rand(3, 1, 64, 64)
    a = sample_patches(img, 10, 16, torch.Generator().manual_seed(2), intensity=(0.9, 1.1))
    b = sample_patches(img, 10, 16, torch.Generator().manual_seed(2), intensity=(0.9, 1.1))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0


def test_transplant_zero_inits_coordinate_channels():
    src = {"conv.weight": torch.ones(4, 1, 3, 3), "b": torch.ones(4)}
    tgt = {"conv.weight": torch.empty(4, 3, 3, 3), "b": torch.empty(4)}
    out = transplant_state(src, tgt)
    assert out["conv.weight"].shape == (4, 3, 3, 3)
    assert torch.all(out["conv.weight"][:, 0] == 1) and torch.all(out["conv.weight"][:, 1:] == 0)


def test_transplant_keeps_the_intensity_channel_for_a_network_without_coordinates():
    src = {"conv.weight": torch.arange(4 * 3 * 9, dtype=torch.float32).reshape(4, 3, 3, 3), "b": torch.ones(4)}
    tgt = {"conv.weight": torch.empty(4, 1, 3, 3), "b": torch.empty(4)}
    out = transplant_state(src, tgt)
    assert out["conv.weight"].shape == (4, 1, 3, 3)
    torch.testing.assert_close(out["conv.weight"], src["conv.weight"][:, :1])


# --------------------------------------------------------------- train / load / reconstruct
def test_patch_prior_trains_saves_and_loads(trained_patch_prior):
    out, res = trained_patch_prior
    assert res.steps == 8 and np.isfinite(res.final_loss)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["prior"]["kind"] == "patch" and cfg["prior"]["patch_size"] == 8
    assert cfg["network"]["coord_channels"] == 2
    prior = load_prior(out)
    assert prior.kind == "patch" and prior.any_size and prior.patch_size == 8
    x = torch.rand(2, 1, 20, 20)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(prior.score(x, 0.5, generator=g1), prior.score(x, 0.5, generator=g2))
    with pytest.raises(ScoreReconError, match="coordinate channels"):
        prior.model(x, torch.full((2,), 0.5))


def test_patch_prior_without_coordinates_fine_tunes_from_one_with_them(trained_patch_prior, tmp_path):
    out, _ = trained_patch_prior
    data = json.loads((out / CONFIG_FILE).read_text())["training"]["data"]
    plain = tmp_path / "plain"
    res = train(TrainConfig(data=data, output=str(plain), image_size=32, steps=4, batch_size=8, modality="MR",
                            device="cpu", show_progress=False, checkpoint_every=0, warmup=1, log_every=2,
                            prior="patch", patch_size=8, init_from=str(out), coordinates=False))
    assert np.isfinite(res.final_loss)
    assert json.loads((plain / CONFIG_FILE).read_text())["network"]["coord_channels"] == 0
    prior = load_prior(plain)
    assert prior.kind == "patch" and prior.model.unet.conv_in.conv.in_channels == 1
    # no position input: a patch scores the same wherever it lies in the field of view
    tile = torch.rand(1, 1, 8, 8)
    t = torch.full((1,), 0.3)
    here, there = torch.zeros(1, 2, 8, 8), torch.full((1, 2, 8, 8), 0.7)
    torch.testing.assert_close(prior.model(tile, t, here), prior.model(tile, t, there))
    op = build_operator("mri", 32, acceleration=4)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 8:24] = 0.5
    rec = reconstruct(op.A(x), op, prior, steps=3, snr=0.0, seed=0)
    assert torch.isfinite(rec.mean).all()


def test_no_coordinates_is_refused_for_a_whole_image_prior(tmp_path):
    with pytest.raises(ScoreReconError, match="--no-coordinates applies to --prior patch"):
        train(TrainConfig(data=str(tmp_path), output=str(tmp_path / "o"), prior="whole", coordinates=False,
                          device="cpu", show_progress=False))


def test_patch_prior_resume_continues_the_same_run(trained_patch_prior, tmp_path):
    out, res = trained_patch_prior
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(out, a)
    shutil.copytree(out, b)
    base = dict(data=json.loads((out / CONFIG_FILE).read_text())["training"]["data"], steps=10,
                device="cpu", show_progress=False, resume=True, checkpoint_every=4, log_every=2)
    ra = train(TrainConfig(output=str(a), **base))
    rb = train(TrainConfig(output=str(b), **base))
    assert ra.start_step == 8 and ra.steps == 10
    assert ra.losses == rb.losses  # the resumed run is deterministic
    assert json.loads((a / CONFIG_FILE).read_text())["prior"]["kind"] == "patch"


def test_one_patch_checkpoint_reconstructs_64_128_and_256(trained_patch_prior):
    out, _ = trained_patch_prior
    prior = load_prior(out)
    for n, task, kw in [(64, "mri", {"acceleration": 4}), (128, "mri", {"acceleration": 4}),
                        (256, "mri", {"acceleration": 4})]:
        op = build_operator(task, n, **kw)
        x = torch.zeros(1, 1, n, n)
        x[..., n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 0.5
        res = reconstruct(op.A(x), op, prior, steps=3, snr=0.0, seed=0)
        assert res.mean.shape == (1, 1, n, n) and torch.isfinite(res.mean).all()
    # a whole-image prior still refuses another size
    from ScoreReconLib.networks import Prior, ScoreModel, make_config
    from ScoreReconLib.sde import VESDE

    model = ScoreModel(VESDE(0.01, 5.0, 10), {"channels": [8, 16], "attention_levels": [False, False]})
    whole = Prior(model, make_config(model, 32, "MR", {"kind": "scale", "low": 0.0, "high": 1.0}))
    assert whole.kind == "whole" and not whole.any_size
    op = build_operator("mri", 64, acceleration=4)
    with pytest.raises(ScoreReconError, match="32x32"):
        reconstruct(op.A(torch.zeros(1, 1, 64, 64)), op, whole, steps=2)


def test_train_cli_defaults_to_patch_and_refuses_bad_patch_size(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    np.save(data / "v.npy", random_insert_phantoms(16, 3, 1))
    rc = cli_main(["train", "--data", str(data), "--output", str(tmp_path / "m"), "--size", "16", "--patch-size",
                   "8", "--steps", "2", "--batch-size", "2", "--channels", "8,16", "--attention-levels", "0,0",
                   "--modality", "MR", "--quiet", "--device", "cpu"])
    assert rc == 0
    assert json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["prior"]["kind"] == "patch"
    rc = cli_main(["train", "--data", str(data), "--output", str(tmp_path / "m2"), "--size", "16", "--patch-size",
                   "32", "--steps", "2", "--modality", "MR", "--quiet", "--device", "cpu"])
    assert rc == 2 and not (tmp_path / "m2" / CONFIG_FILE).exists()


def test_validation_split_by_subject_logs_a_loss_and_refuses_shared_files(tmp_path):
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    np.save(train_dir / "subject1.npy", random_insert_phantoms(16, 4, 2))
    np.save(val_dir / "subject2.npy", random_insert_phantoms(16, 3, 3))
    base = dict(image_size=16, steps=4, batch_size=4, network=TINY_PATCH_NETWORK, modality="MR", device="cpu",
                show_progress=False, checkpoint_every=2, warmup=1, log_every=1, prior="patch", patch_size=8)
    out = tmp_path / "m"
    train(TrainConfig(data=str(train_dir), output=str(out), val_data=str(val_dir), **base))
    rows = (out / "val_log.csv").read_text().splitlines()
    assert rows[0] == "step,val_loss" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert np.isfinite(cfg["val_loss"]) and cfg["data"]["validation"]["n_sources"] == 1
    with pytest.raises(ScoreReconError, match="other subjects"):
        train(TrainConfig(data=str(train_dir), output=str(tmp_path / "m2"), val_data=str(train_dir), **base))


def test_tile_grid_split_then_merge_is_the_identity():
    """TileGrid (the splitter / merger of tiled_score): merging the split tiles gives the image back at any offset,
    and every tile's coordinates are the pixels' normalised positions."""
    from ScoreReconLib.patches import TileGrid, pixel_coords

    x = torch.rand(2, 1, 13, 13, generator=torch.Generator().manual_seed(0))
    for offset in ((0, 0), (3, 7), (7, 1)):
        grid = TileGrid(13, 13, 8, offset)
        tiles, coords = grid.split(x, torch.ones(2), torch.Generator().manual_seed(1))
        nh, nw = grid.shape
        assert tiles.shape == (2 * nh * nw, 1, 8, 8) and coords.shape == (2 * nh * nw, 2, 8, 8)
        assert torch.equal(grid.merge(tiles, 2), x)
        top, _, left, _ = grid.padding
        assert float(coords[0, 0, 0, 0]) == float(pixel_coords(13, -left, 1)[0])  # u of the first canvas pixel
        assert float(coords[0, 1, 0, 0]) == float(pixel_coords(13, -top, 1)[0])
