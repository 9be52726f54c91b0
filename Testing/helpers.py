"""Shared test helpers: phantoms, tiny priors, measurement-file edits and the CLI's one-line-refusal check.

Tests import these by name (``from helpers import head_hu``): pytest puts ``Testing/`` on ``sys.path``.
Fixtures built from them (tiny checkpoints, small input files) live in ``conftest.py``. Each phantom keeps
the exact numbers of the tests it came from; the parameters carry their differences.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

# ================================================================================= phantoms (numpy, HU)


def head_hu(n: int = 32, tissue: float = 40.0, inserts: tuple = (300.0, -200.0), shift: float = 0.0,
            offsets: tuple | None = None) -> np.ndarray:
    """Head-like phantom in HU: air, a skull ring (1200), soft tissue of ``tissue`` HU and up to two inserts.

    ``inserts`` gives the values of the inserts at (0.4 n, 0.4 n) and (0.6 n, 0.58 n) (fewer values, fewer
    inserts), or ``offsets`` their values relative to ``tissue``; ``shift`` moves the first down and the second
    left by ``shift * n``.
    """
    if offsets is not None:
        inserts = tuple(tissue + o for o in offsets)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    r = np.hypot((yy - n / 2 + 0.5) / (0.42 * n), (xx - n / 2 + 0.5) / (0.36 * n))
    img = np.full((n, n), -1000.0)
    img[r < 1.0] = 1200.0
    img[r < 0.85] = tissue
    if len(inserts) > 0:
        img[np.hypot(yy - n * (0.4 + shift), xx - n * 0.4) < n * 0.08] = inserts[0]
    if len(inserts) > 1:
        img[np.hypot(yy - n * 0.6, xx - n * (0.58 - shift)) < n * 0.1] = inserts[1]
    return img.astype(np.float32)


def disc_hu(n: int = 32, radius: float | None = None, insert: float | None = 900.0) -> np.ndarray:
    """A 40 HU disc of ``radius`` pixels (default 0.4 n) in air, with an ``insert`` HU spot at (0.4 n, 0.45 n)."""
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2) / (0.4 * n if radius is None else radius)
    img = np.where(r < 1, 40.0, -1000.0)
    if insert is not None:
        img[np.hypot(yy - n * 0.4, xx - n * 0.45) < n * 0.1] = insert
    return img.astype(np.float32)


def ellipse_insert(n: int, body: tuple = (0.8, 0.9), insert_at: tuple = (0.0, 0.0), insert_axes: tuple = (0.2, 0.3),
                   values: tuple = (-1000.0, 40.0, 900.0)) -> np.ndarray:
    """An ellipse (semi-axes ``body`` on [-1, 1]²) with an elliptic insert; ``values``: background, body, insert."""
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    img = np.full((n, n), values[0], np.float32)
    img[(xx / body[0]) ** 2 + (yy / body[1]) ** 2 < 1] = values[1]
    cx, cy = insert_at
    img[((xx - cx) / insert_axes[0]) ** 2 + ((yy - cy) / insert_axes[1]) ** 2 < 1] = values[2]
    return img


def random_insert_phantoms(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` MR-like ellipses (80) with a 200 insert at a random place: a small training set."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, n, n), np.float32)
    for k in range(count):
        out[k] = ellipse_insert(n, body=(0.8, 0.7), insert_at=tuple(rng.uniform(-0.3, 0.3, 2)),
                                values=(0.0, 80.0, 200.0))
    return out


def two_slice_blocks_hu(metal: bool = False) -> np.ndarray:
    """(2, 32, 32) HU: a 40 HU block in air with a different bright insert per slice, optionally metal (6000)."""
    a = np.full((2, 32, 32), -1000.0, np.float32)
    a[:, 7:25, 6:27] = 40.0
    a[0, 10:14, 9:13] = 700.0
    a[1, 18:22, 17:22] = 300.0
    if metal:
        a[:, 15:18, 19:22] = 6000.0
    return a


# ================================================================================ phantoms (torch, [0, 1])


def shepp_logan(n: int = 64) -> torch.Tensor:
    """scikit-image's Shepp–Logan phantom resized to n², (1, 1, n, n) float32."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(img)[None, None]


def blurred_ellipses(n: int, ellipses: list[tuple[float, float, float, float, float]]) -> torch.Tensor:
    """Sum of ellipses ``(cx, cy, ax, ay, value)`` on [-1, 1]², 3×3 box-blurred (as real images are), (1, 1, n, n)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    x = None
    for cx, cy, ax, ay, value in ellipses:
        term = ((((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) < 1).float() * value
        x = term if x is None else x + term
    return torch.nn.functional.avg_pool2d(x[None, None], 3, stride=1, padding=1, count_include_pad=False)


#: two overlapping ellipses of 0.4 each (the noise-estimate tests)
TWO_ELLIPSES = [(0.0, 0.0, 0.8, 0.7, 0.4), (0.0, 0.1, 0.3, 0.2, 0.4)]
#: Shepp–Logan-like ellipses on [0, 1] (the automatic-weight tests)
SHEPP_LIKE_ELLIPSES = [(0.0, 0.0, 0.85, 0.75, 0.5), (0.0, 0.0, 0.78, 0.68, -0.2), (0.25, -0.1, 0.15, 0.3, 0.3),
                       (-0.3, 0.2, 0.2, 0.12, 0.4), (0.0, 0.45, 0.05, 0.05, 0.3)]


def random_ellipses(n: int = 32, batch: int = 1, seed: int = 3) -> torch.Tensor:
    """(batch, 1, n, n): per image, four ellipses of random place, size and value (a fixed generator)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    out = []
    for _ in range(batch):
        img = torch.zeros(n, n)
        for _ in range(4):
            c = torch.rand(2, generator=g) - 0.5
            r = 0.15 + 0.3 * torch.rand(2, generator=g)
            img += torch.rand(1, generator=g) * (((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 < 1).float()
        out.append(img)
    return torch.stack(out)[:, None]


def mr_ellipse(n: int = 32) -> torch.Tensor:
    """(1, 1, n, n) float32 ellipse phantom in [0, 1] with two inserts."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    r = np.hypot((yy - n / 2 + 0.5) / (0.4 * n), (xx - n / 2 + 0.5) / (0.33 * n))
    img = np.where(r < 1, 0.6, 0.0)
    img[np.hypot(yy - 0.4 * n, xx - 0.45 * n) < 0.09 * n] = 1.0
    img[np.hypot(yy - 0.62 * n, xx - 0.55 * n) < 0.07 * n] = 0.25
    return torch.from_numpy(img.astype(np.float32))[None, None]


def blocks(n: int = 16) -> torch.Tensor:
    """(1, 1, n, n): two flat rectangles (0.8 and 0.4) on zero, for PDHG / TV checks."""
    x = torch.zeros(1, 1, n, n)
    x[..., 3:9, 2:12] = 0.8
    x[..., 10:14, 6:15] = 0.4
    return x


def smooth_mean(n: int) -> torch.Tensor:
    """(1, 1, n, n): a smooth bump, the mean of the analytic Gaussian prior."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    return (0.5 + 0.3 * torch.exp(-(xx**2 + yy**2) * 3))[None, None].float()


# ================================================================================================ priors


class GaussianPrior:
    """Exact score of N(μ, s₀² I) perturbed by a VE-SDE; same interface as networks.Prior."""

    def __init__(self, mu: torch.Tensor, s0: float, modality: str, N: int = 200):
        from ScoreReconLib.data import Normalization
        from ScoreReconLib.sde import VESDE

        self.mu = mu
        self.s0 = s0
        self.sde = VESDE(sigma_min=0.01, sigma_max=5.0, N=N)
        self.image_size = mu.shape[-1]
        self.modality = modality
        self.normalization = Normalization("scale", 0.0, 1.0)
        self.recommended: dict = {}
        self.device = torch.device("cpu")
        self.config = {"image_size": self.image_size, "modality": modality}

    def score(self, x, t, generator=None):
        var = self.s0**2 + self.sde.sigma(t).reshape(-1, 1, 1, 1) ** 2
        return -(x - self.mu) / var

    def to(self, device):
        return self


def gaussian_problem(task: str):
    """A small sparse-ct (24²) or mri (16²) problem with the Gaussian prior: op, prior, x_true, y, posterior mean."""
    from ScoreReconLib.operators import build_operator
    from ScoreReconLib.sampling import cgls

    if task == "mri":
        n = 16
        op = build_operator("mri", n, acceleration=2, center_fraction=0.25, mask="random", seed=1)
        modality = "MR"
    else:
        n = 24
        op = build_operator("sparse-ct", n, views=8)
        modality = "CT"
    mu = smooth_mean(n)
    prior = GaussianPrior(mu, 0.1, modality)
    g = torch.Generator().manual_seed(3)
    x_true = mu + 0.1 * torch.randn(mu.shape, generator=g)
    y = op.A(x_true)
    post_mean = cgls(op, mu, y, 300)
    return op, prior, x_true, y, post_mean


#: the tiny U-Net of the plumbing tests (fast, untrained)
TINY_NETWORK = {"channels": [8, 8], "attention_levels": [False, False], "num_head_channels": 8}
#: the tiny network of the patch-prior tests
TINY_PATCH_NETWORK = {"channels": [8, 16], "attention_levels": [False, False]}


def save_tiny_checkpoint(folder: Path, size: int = 32, modality: str = "CT", *, seed: int | None = 0,
                         network: dict | None = None, **config) -> Path:
    """An untrained tiny prior saved as a checkpoint folder: it exercises the score path's plumbing, not quality.

    ``seed`` seeds torch before the weights are drawn (None: the caller's random state); ``network`` adds to
    :data:`TINY_NETWORK`; ``config`` goes to ``make_config`` (prior=, recommended=, ...).
    """
    from ScoreReconLib.data import Normalization, ct_normalization
    from ScoreReconLib.networks import build_score_model, make_config, save_checkpoint
    from ScoreReconLib.sde import VESDE

    if seed is not None:
        torch.manual_seed(seed)
    model = build_score_model(VESDE(0.01, 10.0, N=100), {**TINY_NETWORK, **(network or {})})
    norm = ct_normalization() if modality == "CT" else Normalization("scale", 0.0, 1.0)
    save_checkpoint(folder, model, make_config(model, size, modality, norm, **config))
    return folder


# ===================================================================================== measurement files


def rewrite_npz(src: Path, dst: Path, header: dict | None = None, drop: tuple = (), **arrays) -> Path:
    """Copy a measurement file, merging ``header`` into its JSON header and replacing arrays."""
    with np.load(src, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files if k not in drop}
    h = json.loads(str(content["header"][()]))
    for key, value in (header or {}).items():
        if isinstance(value, dict) and isinstance(h.get(key), dict):
            h[key] = {**h[key], **value}
        else:
            h[key] = value
    content["header"] = np.array(json.dumps(h))
    content.update(arrays)
    with open(dst, "wb") as fh:
        np.savez_compressed(fh, **content)
    return dst


# ============================================================================== the CLI and its refusals


def cli(argv: list, capsys) -> tuple[int, str, str]:
    """Run ``scorerecon`` in-process: exit status, stdout, stderr."""
    from ScoreReconLib.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


_BAR = re.compile(r"\d+%\|")  # tqdm progress bars (shown while work runs) are not messages


def run(argv: list, capsys) -> tuple[int, list[str]]:
    """Run ``scorerecon`` in-process: exit status and the message lines on stderr (progress bars left out)."""
    from ScoreReconLib.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not _BAR.search(ln)]
    return rc, lines


def assert_refused(argv: list, capsys, out_dir: Path, pattern: str | None = None) -> str:
    """The promise: exit 2, exactly one line naming the problem, nothing in ``out_dir``."""
    before = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    rc, lines = run(argv, capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("scorerecon") and "Traceback" not in lines[0]
    if pattern is not None:
        assert pattern in lines[0], lines[0]
    after = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert after == before, f"left behind: {set(after) - set(before)}"
    return lines[0]


def assert_no_crash(argv: list, capsys) -> int:
    """Exit 0 or 2 with at most one line: never a traceback or an internal error."""
    rc, lines = run(argv, capsys)
    assert rc in (0, 2), (argv, lines)
    assert len(lines) <= 1 and not any("Traceback" in ln or "internal error" in ln for ln in lines), lines
    return rc


def check_fuzz_case(argv, out, capsys):
    """A fuzzed input: exit 0, or exit 2 with one line (warnings and notes aside) and nothing at ``out``."""
    from ScoreReconLib.cli import main

    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "warning" not in ln and "note:" not in ln]
    assert rc in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if rc == 2:
        assert len(lines) == 1, err
        assert not out.exists()
    return rc


# ================================================================================================ fuzzing


def pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def fuzz_bytes(raw: bytes, rng: np.random.Generator) -> bytes:
    """Flip bytes, truncate, overwrite a run with noise or duplicate a chunk (one at random)."""
    b = bytearray(raw)
    kind = rng.integers(4)
    if kind == 0:  # flip bytes
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 20))):
            b[int(i)] ^= int(rng.integers(1, 256))
    elif kind == 1:  # truncate
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 2:  # overwrite a run with noise
        i = int(rng.integers(0, len(b)))
        b[i:i + 64] = rng.integers(0, 256, size=len(b[i:i + 64])).astype(np.uint8).tobytes()
    else:  # duplicate a chunk
        i = int(rng.integers(0, len(b)))
        b = b[:i] + b[i:i + 200] + b[i:]
    return bytes(b)


_JUNK = [None, True, -1, 0, 1.5, 1e308, float("nan"), "x", "", [], [1, "a"], {}, {"a": None}, 10**12]


def fuzz_json(obj, rng: np.random.Generator, depth: int = 0):
    """``obj`` with one value (maybe nested) dropped or replaced by junk of another type."""
    if isinstance(obj, dict) and obj:
        keys = list(obj)
        key = keys[int(rng.integers(len(keys)))]
        out = dict(obj)
        if rng.random() < 0.15:
            out.pop(key)
        elif isinstance(obj[key], dict | list) and depth < 3 and rng.random() < 0.6:
            out[key] = fuzz_json(obj[key], rng, depth + 1)
        else:
            out[key] = _JUNK[int(rng.integers(len(_JUNK)))]
        return out
    if isinstance(obj, list) and obj:
        out = list(obj)
        out[int(rng.integers(len(out)))] = _JUNK[int(rng.integers(len(_JUNK)))]
        return out
    return _JUNK[int(rng.integers(len(_JUNK)))]
