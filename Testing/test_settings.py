"""The score method's settings: one frozen object, validated once, resolved once per run, and the same option
names in the library, the CLI and the metrics record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import GaussianPrior, smooth_mean

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.operators import build_operator
from ScoreReconLib.reconstruction import reconstruct, reconstruct_volume, subset_operator
from ScoreReconLib.settings import (
    DEFAULTS,
    SAMPLER_NAMES,
    USER_OPTIONS,
    SamplerSettings,
    resolve_settings,
)


class _Prior:
    modality = "CT"
    recommended = {"sampler": "proximal", "steps": 7, "samples": 3,
                   "tasks": {"limited-angle-ct": {"proximal": {"lam": 0.5}}}}


def test_settings_are_frozen_and_checked_on_every_construction():
    s = resolve_settings("proximal", _Prior(), task="sparse-ct")
    assert (s.steps, s.samples, s.lam) == (7, 3, DEFAULTS["proximal"]["CT"]["lam"])  # recommendation, then defaults
    assert resolve_settings("proximal", _Prior(), task="limited-angle-ct").lam == 0.5  # the task's value wins
    assert resolve_settings("proximal", _Prior(), task="sparse-ct", samples=1, lam=0.2).lam == 0.2  # the call wins
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lam = 0.3  # type: ignore[misc]
    with pytest.raises(ScoreReconError, match="--lam must lie in"):
        dataclasses.replace(s, lam=2.0)  # a derived copy is checked by the same code
    with pytest.raises(ScoreReconError, match="--samples"):
        SamplerSettings(steps=5, lam=1.0, samples=0)
    with pytest.raises(ScoreReconError, match="unknown sampler setting"):
        resolve_settings("proximal", _Prior(), lamda=0.5)
    with pytest.raises(ScoreReconError, match="unknown sampler 'pc'"):
        resolve_settings("pc", _Prior())
    assert isinstance(SamplerSettings(steps="5", lam="1").steps, int)  # normalised once, at construction


def test_user_options_are_fields_cli_flags_and_record_keys():
    from ScoreReconLib.cli import build_parser
    from ScoreReconLib.sampling import SAMPLERS

    fields = {f.name for f in dataclasses.fields(SamplerSettings)}
    assert set(USER_OPTIONS) <= fields
    assert tuple(SAMPLERS) == SAMPLER_NAMES
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["reconstruct"]
    dests = {a.dest for a in sub._actions}
    for name in USER_OPTIONS:
        assert ("sampler" if name == "method" else name) in dests, name
    record = SamplerSettings(steps=5, lam=1.0).record()
    assert record["sampler"] == "proximal" and "method" not in record
    assert set(record) == {"sampler", *USER_OPTIONS} - {"method"}


def test_settings_or_options_not_both():
    n = 16
    prior = GaussianPrior(smooth_mean(n), 0.1, "MR")
    op = build_operator("mri", n, acceleration=2, center_fraction=0.25, mask="random", seed=1)
    y = op.A(prior.mu)
    s = resolve_settings("fast", prior, task="mri", steps=4)
    a = reconstruct(y, op, prior, settings=s, seed=3)
    b = reconstruct(y, op, prior, method="fast", steps=4, seed=3)
    assert torch.equal(a.mean, b.mean)  # the same settings, given either way
    with pytest.raises(ScoreReconError, match="either settings"):
        reconstruct(y, op, prior, settings=s, steps=5)
    with pytest.raises(ScoreReconError, match="either settings"):
        reconstruct(y, op, prior, settings=s, method="proximal")
    with pytest.raises(ScoreReconError, match="SamplerSettings"):
        reconstruct(y, op, prior, settings={"steps": 4})


def test_volume_step_progress_counts_slice_steps_to_the_end():
    n = 16
    prior = GaussianPrior(smooth_mean(n), 0.1, "MR")
    op = build_operator("mri", n, acceleration=2, center_fraction=0.25, mask="random", seed=1)
    y = op.A(prior.mu).expand(3, -1, -1, -1).contiguous()
    seen = []
    res = reconstruct_volume(y, op, prior, batch_size=2, method="fast", steps=4, samples=2,
                             step_progress=lambda d, t, m: seen.append((d, t)))
    total = 3 * 4 * 2
    assert all(t == total for _, t in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == total
    assert res.settings["samples"] == 2 and res.std is not None and res.std.shape == (3, 1, n, n)


def test_metal_volume_batches_use_their_own_traces():
    """reconstruct_volume slices per-slice metal traces (MetalTraceCT.batch_subset), so a batch of 1 sees its own."""
    from ScoreReconLib.operators.metal import random_metal_mask

    n = 24
    masks = torch.cat([random_metal_mask(n, seed=s) for s in range(3)])
    op = build_operator("metal-ct", n, metal_mask=masks)
    sub = subset_operator(op, slice(1, 2))
    assert sub is not op and torch.equal(sub.mask, op.mask[1:2])
    assert subset_operator(op, slice(0, 3)) is op
    x = torch.rand(3, 1, n, n, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sub.A(x[1:2]), op.A(x)[1:2])
    prior = GaussianPrior(smooth_mean(n), 0.1, "CT")
    y = op.A(prior.mu.expand(3, -1, -1, -1).contiguous())
    one = reconstruct_volume(y, op, prior, batch_size=1, method="fast", steps=3, seed=2, noise_std=0.0)
    assert np.isfinite(one.mean.numpy()).all() and one.mean.shape == (3, 1, n, n)
