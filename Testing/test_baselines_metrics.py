"""Metrics (PSNR/SSIM) and classical baselines (FBP, zero-filled, TV/CS by PDHG)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from helpers import blocks, shepp_logan

from ScoreReconLib.baselines import (
    DEFAULTS,
    METHODS,
    classical_reconstruct,
    cs_reconstruct,
    gradient,
    gradient_adjoint,
    haar_frame,
    haar_frame_adjoint,
    methods_for,
    operator_norm,
    tv_reconstruct,
    zero_filled,
)
from ScoreReconLib.errors import CancelledError, ScoreReconError
from ScoreReconLib.metrics import psnr, ssim
from ScoreReconLib.operators.base import MeasurementOperator
from ScoreReconLib.operators.mri import build_mri_operator


class DenseOperator(MeasurementOperator):
    """A = random Gaussian matrix on small images; measurements (B, 1, M, 1)."""

    task = ""

    def __init__(self, n: int, m: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.image_size = n
        self.matrix = torch.randn(m, n * n, generator=g) / math.sqrt(m)
        self.pinv = torch.linalg.pinv(self.matrix)
        self.m = m

    def T(self, x):
        return (x.reshape(x.shape[0], -1) @ self.matrix.T).reshape(x.shape[0], 1, self.m, 1)

    def T_adjoint(self, y):
        return (y.reshape(y.shape[0], -1) @ self.matrix).reshape(y.shape[0], 1, self.image_size, self.image_size)

    def T_inv(self, y):
        return (y.reshape(y.shape[0], -1) @ self.pinv.T).reshape(y.shape[0], 1, self.image_size, self.image_size)

    @property
    def mask(self):
        return torch.ones(1, 1, self.m, 1)

    def measurement_shape(self, batch=1):
        return (batch, 1, self.m, 1)

    def spec(self):
        return {"task": self.task, "image_size": self.image_size}


# ---------------------------------------------------------------------------------------- metrics
def test_psnr_known_values():
    ref = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    same = psnr(ref, ref)
    assert same.shape == (3,)
    assert torch.isinf(same).all() or (same > 100).all()
    assert torch.allclose(psnr(ref + 0.1, ref), torch.full((3,), 20.0), atol=1e-3)  # MSE 0.01
    assert torch.allclose(psnr(ref + 0.1, ref, data_range=2.0), torch.full((3,), 20 + 20 * math.log10(2)), atol=1e-3)
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    expected = 10 * torch.log10(1 / (noisy - ref).pow(2).mean(dim=(1, 2, 3)))
    assert torch.allclose(psnr(noisy, ref), expected, atol=1e-3)


def test_ssim_identical_and_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 1, 40, 40, generator=g)
    assert torch.allclose(ssim(ref, ref), torch.ones(2), atol=1e-6)
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=g)
    ours = ssim(noisy, ref)
    assert ours.shape == (2,)
    for b in range(2):
        sk = structural_similarity(noisy[b, 0].numpy(), ref[b, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                   sigma=1.5, use_sample_covariance=False)
        assert abs(float(ours[b]) - sk) < 2e-3
    assert float(ssim(noisy, ref).mean()) < 0.99


def test_masked_metrics_ignore_masked_pixels():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 1, 32, 32, generator=g)
    x = ref + 0.05 * torch.randn(ref.shape, generator=g)
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[10:20, 10:20] = False
    wild = x.clone()
    wild[..., 10:20, 10:20] = 50.0
    assert torch.allclose(psnr(wild, ref, mask=keep), psnr(x, ref, mask=keep))
    assert torch.allclose(ssim(wild, ref, mask=keep), ssim(x, ref, mask=keep))
    assert (psnr(wild, ref) < psnr(x, ref, mask=keep) - 10).all()
    expected = 10 * torch.log10(1 / (x - ref)[..., keep].pow(2).mean(dim=(1, 2)))
    assert torch.allclose(psnr(x, ref, mask=keep), expected, atol=1e-3)
    per_image = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    per_image[1, :, :16] = False
    out = psnr(x, ref, mask=per_image)
    assert torch.allclose(out[1], psnr(x[1:, :, 16:], ref[1:, :, 16:])[0], atol=1e-3)


@pytest.mark.parametrize("call", [
    lambda a: psnr(a, a[..., :-1]),
    lambda a: ssim(a, a[:1]),
    lambda a: psnr(a[0], a[0]),
    lambda a: psnr(a, a, data_range=0),
    lambda a: ssim(a[..., :8, :8], a[..., :8, :8]),
    lambda a: psnr(a, a, mask=torch.zeros(16, 16, dtype=torch.bool)),
    lambda a: ssim(a, a, mask=torch.ones(8, 8, dtype=torch.bool)),
])
def test_metrics_bad_input(call):
    with pytest.raises(ScoreReconError):
        call(torch.rand(2, 1, 16, 16))


# ------------------------------------------------------------------------------------ linear parts
def test_gradient_and_haar_adjoints():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 13, 13, generator=g, dtype=torch.float64)
    q = torch.randn(2, 2, 13, 13, generator=g, dtype=torch.float64)
    assert abs(float((gradient(x) * q).sum() - (x * gradient_adjoint(q)).sum())) < 1e-10
    w = haar_frame(x, 2)
    assert w.shape == (2, 7, 13, 13)
    assert torch.allclose(haar_frame_adjoint(w, 2), x)  # Parseval frame: WᵀW = I
    assert abs(float(w.norm() - x.norm())) < 1e-10


def test_operator_norm_by_power_iteration():
    op = DenseOperator(8, 40)
    exact = float(torch.linalg.matrix_norm(op.matrix, ord=2))
    est = operator_norm(op)
    assert exact <= est <= 1.03 * exact
    mri = build_mri_operator(32, acceleration=4)
    assert 0.99 <= operator_norm(mri) <= 1.03


# --------------------------------------------------------------------------------------- baselines
def test_tv_beats_zero_filled_on_undersampled_mri():
    x = shepp_logan(64)
    op = build_mri_operator(64, acceleration=4, center_fraction=0.08)
    y = op.A(x)
    zf = classical_reconstruct("zero-filled", y, op)
    tv = classical_reconstruct("tv", y, op)
    cs = cs_reconstruct(y, op, regularizer="wavelet")
    p_zf, p_tv, p_cs = (float(psnr(r.clamp(0, 1), x)) for r in (zf, tv, cs))
    assert p_tv > p_zf + 3
    assert p_cs > p_zf + 3
    assert float(ssim(tv.clamp(0, 1), x)) > float(ssim(zf.clamp(0, 1), x)) + 0.05
    assert (tv >= 0).all() and tv.dtype == torch.float32


def test_tv_on_sparse_view_ct_beats_fbp():
    ct = pytest.importorskip("ScoreReconLib.operators.ct")
    del ct
    from ScoreReconLib.operators import build_operator

    x = shepp_logan(64)
    op = build_operator("sparse-ct", 64, views=23)
    y = op.A(x)
    f = classical_reconstruct("fbp", y, op)
    tv = classical_reconstruct("tv", y, op, iters=200)
    assert float(psnr(tv.clamp(0, 1), x)) > float(psnr(f.clamp(0, 1), x)) + 3


def test_pdhg_on_dense_operator():
    op = DenseOperator(16, 120)  # 256 unknowns, 120 measurements
    x = blocks()
    y = op.A(x)
    ls = op.A_dagger(y)
    tv = tv_reconstruct(y, op, weight=1e-4, iters=1000)
    assert float((tv - x).norm()) < 0.25 * float((ls - x).norm())
    # no regularisation, overdetermined: PDHG converges to the exact solution
    op_full = DenseOperator(8, 100, seed=1)
    x_small = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    exact = tv_reconstruct(op_full.A(x_small), op_full, weight=0.0, iters=1000, nonneg=False,
                           x0=torch.zeros_like(x_small))
    assert float((exact - x_small).abs().max()) < 1e-3


def test_batched_equals_single():
    op = build_mri_operator(32, acceleration=4, mask="random", seed=1)
    x = torch.cat([shepp_logan(32), torch.flip(shepp_logan(32), dims=(-1,))])
    y = op.A(x)
    # a fixed weight: weight="auto" chooses one weight per batch (a volume's slices share it), so it differs here
    both = tv_reconstruct(y, op, weight=1e-3, iters=60)
    one = tv_reconstruct(y[1:], op, weight=1e-3, iters=60)
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_progress_and_cancel():
    op = build_mri_operator(32, acceleration=4)
    y = op.A(shepp_logan(32))
    calls = []
    classical_reconstruct("tv", y, op, iters=20, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[-1][:2] == (20, 20) and all(c[1] == 20 for c in calls)
    calls.clear()
    classical_reconstruct("zero-filled", y, op, progress=lambda d, t, m: calls.append((d, t)))
    assert calls == [(1, 1)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        classical_reconstruct("cs", y, op, cancel=stop)


def test_methods_and_defaults():
    assert set(METHODS) == {"fbp", "tv", "zero-filled", "cs", "sense", "rss"}
    assert methods_for("mri") == ("zero-filled", "tv", "cs", "sense", "rss")
    assert methods_for("sparse-ct") == ("fbp", "tv")
    assert DEFAULTS["tv"]["MR"]["weight"] > 0 and DEFAULTS["tv"]["CT"]["iters"] >= 100
    op = build_mri_operator(32, acceleration=4)
    y = op.A(shepp_logan(32))
    assert torch.equal(classical_reconstruct("zf", y, op), zero_filled(y, op))


def test_baseline_bad_input():
    op = build_mri_operator(32, acceleration=4)
    y = op.A(shepp_logan(32))
    dense = DenseOperator(8, 30)
    with pytest.raises(ScoreReconError, match="does not fit"):
        classical_reconstruct("fbp", y, op)
    with pytest.raises(ScoreReconError, match="unknown method"):
        classical_reconstruct("magic", y, op)
    with pytest.raises(ScoreReconError, match="do not apply"):
        classical_reconstruct("tv", y, op, lam=0.5)
    with pytest.raises(ScoreReconError, match="MRI method"):
        cs_reconstruct(dense.A(torch.rand(1, 1, 8, 8)), dense)
    with pytest.raises(ScoreReconError, match="MRI method"):
        zero_filled(dense.A(torch.rand(1, 1, 8, 8)), dense)
    with pytest.raises(ScoreReconError, match="shape"):
        tv_reconstruct(y[..., :16], op)
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ScoreReconError, match="NaN"):
        tv_reconstruct(bad, op)
    with pytest.raises(ScoreReconError, match="weight"):
        tv_reconstruct(y, op, weight=-1.0)
    with pytest.raises(ScoreReconError, match="regularizer"):
        cs_reconstruct(y, op, regularizer="curvelet")
    with pytest.raises(ScoreReconError, match="complex"):
        tv_reconstruct(dense.A(torch.rand(1, 1, 8, 8)).to(torch.complex64), dense)
    assert np.isfinite(tv_reconstruct(y, op, iters=5).numpy()).all()
