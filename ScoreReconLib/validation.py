"""Choosing a setting on validation subjects: the grid value with the best mean score, subjects weighted equally, and
its leave-one-subject-out form, which never sees the subject it will be tested on.

A record is a dict with ``subject``, ``psnr``, ``ssim`` and the value of the setting under comparison (e.g.
``weight``), one per image and value.
"""

from __future__ import annotations

import numpy as np


def mean_scores_by(records: list[dict], key: str) -> dict:
    """``{value of key: (mean PSNR, mean SSIM)}``, with the images of one subject averaged first."""
    by: dict = {}
    for r in records:
        by.setdefault(r[key], {}).setdefault(r["subject"], []).append((r["psnr"], r["ssim"]))
    out = {}
    for k, subj in by.items():
        per = [np.mean(v, axis=0) for v in subj.values()]
        out[k] = tuple(float(v) for v in np.mean(per, axis=0))
    return out


def pick_best(records: list[dict], key: str) -> tuple[object, float] | None:
    """``(value, mean PSNR)`` of the ``key`` value with the best mean PSNR (ties: SSIM); None without records."""
    scores = mean_scores_by(records, key)
    if not scores:
        return None
    best = max(scores, key=lambda k: scores[k])
    return best, scores[best][0]


def leave_one_subject_out(records: list[dict], test_subject: str,
                          key: str = "weight") -> tuple[object, float, list[str]] | None:
    """The ``key`` value best on every subject except ``test_subject``: ``(value, mean validation PSNR, validation
    subjects)``, or None without another subject. The test subject's records are dropped before any comparison."""
    val = [r for r in records if r["subject"] != test_subject]
    best = pick_best(val, key)
    if best is None:
        return None
    return best[0], best[1], sorted({r["subject"] for r in val})
