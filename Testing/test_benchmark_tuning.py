"""The benchmark's classical-weight tuner chooses by leave-one-subject-out and never sees the test subject."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "generalization.py"
    spec = importlib.util.spec_from_file_location("generalization_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    yield mod
    sys.modules.pop(spec.name, None)


def _rec(subject, weight, psnr):
    return {"subject": subject, "weight": weight, "psnr": psnr, "ssim": psnr / 100}


def test_loso_ignores_the_test_subject(bench):
    # the test subject "A" would pick 1e-2 (its own best by far); the others prefer 1e-3
    recs = [_rec("A", 1e-3, 20.0), _rec("A", 1e-2, 40.0),
            _rec("B", 1e-3, 30.0), _rec("B", 1e-2, 29.0),
            _rec("C", 1e-3, 31.0), _rec("C", 1e-2, 30.5)]
    weight, psnr, subjects = bench.loso_choice(recs, "A")
    assert weight == 1e-3 and subjects == ["B", "C"] and psnr == pytest.approx(30.5)
    # changing the test subject's own numbers never changes its choice
    recs2 = [r if r["subject"] != "A" else {**r, "psnr": 100 - r["psnr"]} for r in recs]
    assert bench.loso_choice(recs2, "A")[0] == weight
    assert bench.loso_choice([_rec("A", 1e-3, 20.0)], "A") is None  # nobody else to validate on


def test_subjects_are_weighted_equally(bench):
    # subject B has three slices preferring 1e-2; C one slice preferring 1e-3 by more: equal weighting picks 1e-3
    recs = [_rec("B", 1e-2, 30.1), _rec("B", 1e-3, 30.0)] * 3 + [_rec("C", 1e-3, 31.0), _rec("C", 1e-2, 30.0)]
    assert bench.loso_choice(recs, "A")[0] == 1e-3
