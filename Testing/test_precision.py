"""The score network's precision (``--precision``, ScoreReconLib.networks.precision): float32 or bf16 autocast."""

from __future__ import annotations

import json

import pytest
import torch

from ScoreReconLib.errors import ScoreReconError
from ScoreReconLib.networks import load_prior
from ScoreReconLib.networks.precision import cpu_has_native_bf16, network_autocast, resolve_precision


def test_resolve_precision_rules():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "fp32"  # this small network gains nothing from bf16 on a GPU
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ScoreReconError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with network_autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with network_autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")


def test_prior_precision_changes_the_network_arithmetic_only(tiny_ct):
    prior = load_prior(tiny_ct)
    assert prior.precision == "auto"
    with pytest.raises(ScoreReconError, match="--precision"):
        prior.precision = "half"
    g = torch.Generator().manual_seed(0)
    for param in prior.model.parameters():  # an untrained network's output layer is zero: give it weights
        param.data.normal_(0.0, 0.2, generator=g)
    x = torch.rand(2, 1, 32, 32, generator=g)
    out = {}
    for p in ("fp32", "bf16"):
        prior.precision = p
        assert prior.effective_precision == p
        with torch.no_grad():
            out[p] = prior.score(x, 0.3, generator=torch.Generator().manual_seed(1))
    assert out["fp32"].dtype == out["bf16"].dtype == torch.float32
    rel = float((out["bf16"] - out["fp32"]).abs().max() / out["fp32"].abs().max())
    assert 0.0 < rel < 0.05  # bf16 rounds (8-bit mantissa) but stays close


def test_adaptation_fits_in_fp32_and_keeps_the_prior_precision(tiny_ct):
    from ScoreReconLib.adaptation import adapt_prior
    from ScoreReconLib.operators import build_operator

    prior = load_prior(tiny_ct)
    prior.precision = "bf16"
    op = build_operator("sparse-ct", 32, views=8)
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    adapted, record = adapt_prior(prior, op, op.A(x), x, noise_std=0.0, t_start=0.1, steps=1, seed=0)
    assert record.steps == 1 and adapted.precision == "bf16" and prior.precision == "bf16"


def test_reconstruct_cli_records_the_precision(tiny_ct, ct_files, tmp_path):
    from ScoreReconLib.cli import main

    for p in ("fp32", "bf16"):
        out, met = tmp_path / f"r-{p}.nrrd", tmp_path / f"m-{p}.json"
        assert main(["reconstruct", "--input", str(ct_files["meas"]), "--method", "score", "--model", str(tiny_ct),
                     "--steps", "2", "--samples", "1", "--precision", p, "--output", str(out),
                     "--metrics-json", str(met), "--progress-format", "none"]) == 0
        record = json.loads(met.read_text())
        record = record[0] if isinstance(record, list) else record
        assert record["precision"] == p
