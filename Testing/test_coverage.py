"""How well the posterior std covers the true error: metrics.band_coverage and reconstruct's coverage90."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ScoreReconLib.cli import main
from ScoreReconLib.data import read_image
from ScoreReconLib.metrics import BODY_LEVEL, Z90, band_coverage
from ScoreReconLib.resources import resource_path


def test_band_coverage_counts_body_pixels_inside_the_band():
    ref = torch.zeros(1, 1, 4, 4)
    ref[..., :2, :] = 0.5  # 8 body pixels; the other 8 are background and never count
    std = torch.full_like(ref, 0.1)
    x = ref.clone()
    x[..., 0, :] += 0.1 * Z90 * 0.99  # inside the band
    x[..., 1, :2] += 0.1 * Z90 * 1.5  # outside
    x[..., 3, :] += 5.0  # background errors are ignored
    assert band_coverage(x, ref, std) == pytest.approx(6 / 8)
    keep = torch.ones_like(ref, dtype=torch.bool)
    keep[..., 1, :2] = False  # e.g. metal: left out
    assert band_coverage(x, ref, std, keep) == pytest.approx(1.0)
    assert band_coverage(x, ref, std * 2) == pytest.approx(1.0)  # a wider band covers more
    assert np.isnan(band_coverage(x, torch.full_like(ref, BODY_LEVEL / 2), std))  # no body: undefined


def test_reconstruct_records_coverage_with_a_reference_and_samples(tmp_path):
    meas, out, met, std = (tmp_path / n for n in ("m.npz", "s.nrrd", "m.json", "sd.nrrd"))
    sample = resource_path("samples", "ct_head_sample.nrrd")
    assert main(["simulate", "--task", "sparse-ct", "--views", "16", "--noise", "0.01", "--size", "32",
                 "--input", str(sample), "--output", str(meas)]) == 0
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--samples", "2", "--steps", "2",
                 "--output", str(out), "--std-output", str(std), "--reference", str(sample),
                 "--metrics-json", str(met), "--progress-format", "none"]) == 0
    record = json.loads(met.read_text())
    assert 0.0 <= record["coverage90"] <= 1.0
    # the same number from the written files: |error| <= 1.645 std over body pixels, in physical units
    from ScoreReconLib.measurement import load_measurement, reference_slices

    m = load_measurement(meas)
    ref = reference_slices(read_image(sample), m, [])
    x = torch.from_numpy(m.normalization.forward(read_image(out).array).astype(np.float32))
    sd = torch.from_numpy(read_image(std).array / (m.normalization.high - m.normalization.low)).float()
    again = band_coverage(x.reshape(ref.shape), ref, sd.reshape(ref.shape))
    assert again == pytest.approx(record["coverage90"], abs=0.02)
    assert main(["reconstruct", "--input", str(meas), "--method", "score", "--samples", "1", "--steps", "2",
                 "--output", str(out), "--reference", str(sample), "--metrics-json", str(met),
                 "--progress-format", "none"]) == 0
    assert "coverage90" not in json.loads(met.read_text())  # one sample: no std, no coverage
