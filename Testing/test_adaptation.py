"""Test-time adaptation of the prior (ScoreReconLib.adaptation): adapters that start as the identity, fitted to
the measurement's own loss, stopped by the discrepancy principle, and never changing the loaded prior."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ScoreReconLib.adaptation import LoRAConv2d, adapt_prior, add_lora
from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.networks import load_prior
from ScoreReconLib.operators import build_operator


def _disc(n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    return ((xx**2 + yy**2) < 0.5).float()[None, None] * 0.6 + 0.1


def test_lora_starts_as_the_base_and_trains_only_adapters():
    torch.manual_seed(0)
    base = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    wrapped = LoRAConv2d(base, rank=2)
    assert torch.equal(wrapped(x), base(x))  # up-projection starts at zero
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=2))
    params = add_lora(net, rank=2)
    assert isinstance(net[0], LoRAConv2d) and isinstance(net[2], nn.Conv2d)  # grouped convolutions are kept
    assert {id(p) for p in params} == {id(p) for p in net.parameters() if p.requires_grad}
    with pytest.raises(ScoreReconError, match="no convolutions"):
        add_lora(nn.Sequential(nn.Linear(2, 2)))


def test_adaptation_fits_the_data_and_leaves_the_prior_alone(tiny_ct):
    prior = load_prior(str(tiny_ct))
    before = {k: v.clone() for k, v in prior.model.state_dict().items()}
    op = build_operator("sparse-ct", 32, views=8)
    x = _disc(32)
    y = op.A(x)
    start = torch.full_like(x, 0.3)
    adapted, record = adapt_prior(prior, op, y, start, noise_std=0.0, t_start=0.1, steps=6, seed=1)
    assert record.steps == 6 and record.stopped == "steps" and record.parameters > 0
    assert len(record.chi2) == 6 and all(v == v for v in record.chi2)
    assert adapted is not prior and adapted.model is not prior.model
    assert all(torch.equal(before[k], v) for k, v in prior.model.state_dict().items())  # the prior is unchanged
    again, record2 = adapt_prior(prior, op, y, start, noise_std=0.0, t_start=0.1, steps=6, seed=1)
    assert record2.chi2 == record.chi2  # a seed fixes every draw
    # the discrepancy principle: data already explained to a (large) noise level stop it before any step
    same, stop = adapt_prior(prior, op, y, start, noise_std=1e3, t_start=0.1, steps=6, seed=1)
    assert stop.stopped == "discrepancy" and stop.steps == 0 and len(stop.chi2) == 1
    off, none = adapt_prior(prior, op, y, start, noise_std=0.0, t_start=0.1, steps=6, mode="none")
    assert off is prior and none.stopped == "off"


def test_reconstruct_cli_adapts_once_per_file_and_records_it(tiny_ct, tmp_path):
    from ScoreReconLib.cli import main
    from ScoreReconLib.resources import resource_path

    meas, out, met = tmp_path / "m.npz", tmp_path / "r.nrrd", tmp_path / "m.json"
    assert main(["simulate", "--task", "sparse-ct", "--views", "8", "--noise", "0.01", "--size", "32",
                 "--input", str(resource_path("samples", "ct_head_sample.nrrd")), "--output", str(meas)]) == 0
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--model", str(tiny_ct), "--steps", "2",
                 "--samples", "1", "--adapt", "lora", "--adapt-steps", "2", "--output", str(out),
                 "--metrics-json", str(met), "--progress-format", "none"]) == 0
    record = json.loads(met.read_text())
    assert record["adapt"] == "lora" and record["adaptation"]["mode"] == "lora"
    assert record["adaptation"]["steps"] <= 2 and record["adaptation"]["stopped"] in ("steps", "discrepancy")
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--model", str(tiny_ct), "--steps", "2",
                 "--adapt", "lorax", "--output", str(out)]) == 2
