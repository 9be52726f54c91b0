"""Choosing on validation subjects (ScoreReconLib.validation): leave-one-subject-out never sees the test subject,
and subjects count equally however many slices they have. The benchmarks choose their classical weights with it."""

from __future__ import annotations

import pytest

from ScoreReconLib.validation import leave_one_subject_out, pick_best


def _rec(subject, weight, psnr):
    return {"subject": subject, "weight": weight, "psnr": psnr, "ssim": psnr / 100}


def test_loso_ignores_the_test_subject():
    # the test subject "A" would pick 1e-2 (its own best by far); the others prefer 1e-3
    recs = [_rec("A", 1e-3, 20.0), _rec("A", 1e-2, 40.0),
            _rec("B", 1e-3, 30.0), _rec("B", 1e-2, 29.0),
            _rec("C", 1e-3, 31.0), _rec("C", 1e-2, 30.5)]
    weight, psnr, subjects = leave_one_subject_out(recs, "A")
    assert weight == 1e-3 and subjects == ["B", "C"] and psnr == pytest.approx(30.5)
    # changing the test subject's own numbers never changes its choice
    recs2 = [r if r["subject"] != "A" else {**r, "psnr": 100 - r["psnr"]} for r in recs]
    assert leave_one_subject_out(recs2, "A")[0] == weight
    assert leave_one_subject_out([_rec("A", 1e-3, 20.0)], "A") is None  # nobody else to validate on
    assert pick_best(recs, "weight")[0] == 1e-2  # with the test subject in, it would have chosen its own best


def test_subjects_are_weighted_equally():
    # subject B has three slices preferring 1e-2; C one slice preferring 1e-3 by more: equal weighting picks 1e-3
    recs = [_rec("B", 1e-2, 30.1), _rec("B", 1e-3, 30.0)] * 3 + [_rec("C", 1e-3, 31.0), _rec("C", 1e-2, 30.0)]
    assert leave_one_subject_out(recs, "A")[0] == 1e-3


def test_benchmarks_choose_with_the_library():
    """No benchmark keeps its own copy of the choice."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    for name in ("generalization.py", "multicoil_mri.py"):
        text = (bench / name).read_text()
        assert "leave_one_subject_out" in text and "def loso" not in text and "def pick_best" not in text, name
