"""Projecting only the measured views (issue 22): sparse-view CT's A and Aᴴ through ``ViewSubsetGeometry``.

Part 1, operators: forward and adjoint of a 23-view sparse-ct operator at 128², 256² and 512², the full set
projected then masked (the path before) against the measured views only, with the largest difference and the
adjoint identity; and at 512² against astra-toolbox's CPU projectors given the same views (parallel, and fan
beam with a flat detector), when astra is installed. Part 2, reconstructions: the default score method on the
held-out pydicom head CT, 23 views, 1 % noise, at 128² and 256², with the measured-views path and with the
full-set path forced, PSNR and seconds (the same seed: the images differ only by float rounding amplified
through the sampler).

    python benchmarks/view_subset.py --threads 1      # ~4 min on this 2-core CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.operators import build_operator, ct  # noqa: E402
from ScoreReconLib.operators.ct import ViewSubsetGeometry, make_projector  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct  # noqa: E402

SUBJECT = "heldout/ct/pydicom_head_ct.nrrd"


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def operator_rows() -> list[str]:
    rows = []
    for n, backend in ((128, "auto"), (256, "auto"), (512, "matrix-free"), (512, "auto")):
        op = build_operator("sparse-ct", n, views=23, backend=backend)
        x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0))
        y = op.A(x)  # builds (or loads) the measured views' projector
        sub = type(op.measured_projector).__name__
        full_f = best_of(lambda op=op, x=x: op.mask_apply(op.T(x)))
        sub_f = best_of(lambda op=op, x=x: op.A(x))
        full_a = best_of(lambda op=op, y=y: op.T_adjoint(op.mask_apply(y)))
        sub_a = best_of(lambda op=op, y=y: op.A_adjoint(y))
        diff = float((op.mask_apply(op.T(x)) - op.A(x)).abs().max() / y.abs().max())
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) * op.mask
        lhs, rhs = float((op.A(x).double() * r).sum()), float((x.double() * op.A_adjoint(r).double()).sum())
        rows.append(f"| {n}² | {op.projector.name} | {sub} | {full_f:.3f} | {sub_f:.4f} | {full_a:.3f} | {sub_a:.4f} | "
                    f"{full_f / sub_f:.0f}× / {full_a / sub_a:.0f}× | {diff:.1e} | {abs(lhs - rhs) / abs(lhs):.0e} |")
        print(rows[-1], flush=True)
    return rows


def astra_rows() -> list[str]:
    """Ours (measured views only) against astra-toolbox's CPU projectors given the same views, 512², 23 views:
    parallel beam (of 512 angles) and fan beam with a flat detector (of 1024 source angles; astra has no curved
    one), forward + adjoint of one image, median of 3."""
    from clinical_ct import _astra_pair, _geometry

    rows = []
    for kind, angles in (("parallel", 512), ("fan", 1024)):
        g = _geometry(kind, 512, angles)
        views = np.unique(np.round(np.linspace(0, angles - 1, 23)).astype(np.int64))
        sub = ViewSubsetGeometry(g, views)
        a = _astra_pair(sub, 1, 3)
        if a is None:
            rows.append(f"| {kind} | astra not installed (pip install astra-toolbox): no comparison | | | |")
            continue
        for backend in ("auto", "matrix-free"):
            proj = make_projector(sub, backend)
            x = torch.rand(1, 1, 512, 512, generator=torch.Generator().manual_seed(0))
            y = proj.forward(x)
            f = best_of(lambda proj=proj, x=x: proj.forward(x))
            b = best_of(lambda proj=proj, y=y: proj.adjoint(y))
            rows.append(f"| {kind} | ours, {proj.name} | {f:.4f} | {b:.4f} | {f + b:.4f} s: astra's time / ours = "
                        f"{(a[0] + a[1]) / (f + b):.2f} |")
            print(rows[-1], flush=True)
        rows.append(f"| {kind} | astra CPU ({'linear' if kind == 'parallel' else 'line_fanflat'}) | {a[0]:.4f} | "
                    f"{a[1]:.4f} | {a[0] + a[1]:.4f} s |")
    return rows


def reconstruction_rows(data: Path) -> list[str]:
    s = G.load_subject(data / SUBJECT, "CT", "test", 1, ct_normalization())[0]
    task = G.TASKS["CT"][0]
    prior = load_prior("default-ct")
    rows = []
    for n in (128, 256):
        out = {}
        for label in ("measured views", "full set"):
            c = make_case(s.name, s.at(n), task.task, seed=G.case_seed(s, task), noise=0.01, **task.opts())
            original = ct._ViewSubsetCT.all_views
            if label == "full set":  # as before the measured-view projector: every view projected, then masked
                ct._ViewSubsetCT.all_views = property(lambda self: True)
            try:
                t0 = time.perf_counter()
                res = reconstruct(c.y, c.op, prior, seed=0)
                out[label] = (score_slices(res.mean, c.x).psnr, time.perf_counter() - t0, res.mean)
            finally:
                ct._ViewSubsetCT.all_views = original
        (pm, tm, im), (pf, tf, imf) = out["measured views"], out["full set"]
        rows.append(f"| {n}² | {pm:.2f} | {tm:.1f} | {pf:.2f} | {tf:.1f} | {float((im - imf).abs().max()):.1e} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    args = _setup.data_threads_args(__doc__.splitlines()[0])
    t0 = time.time()
    lines = ["Sparse-view CT, 23 of N views (parallel beam), one image, best of 3, seconds. *full set*: every view "
             "projected then masked (before); *measured views*: `ViewSubsetGeometry` (now). The measured views' "
             "projector follows the same backend rule on its smaller geometry, so at 512² it is a stored matrix.", "",
             "| size | full-set projector | measured-views projector | full forward | measured forward | full adjoint "
             "| measured adjoint | speed-up (fwd / adj) | max difference (of max) | adjoint identity |",
             "|---|---|---|---|---|---|---|---|---|---|"] + operator_rows()
    lines += ["", "The measured views against astra-toolbox's CPU projectors given the same 23 views, 512², one image "
              "(seconds; astra's CPU code is single-threaded):", "",
              "| geometry | projector | forward s | adjoint s | forward + adjoint |", "|---|---|---|---|---|"] \
        + astra_rows()
    lines += ["", f"Default score method ({SUBJECT.split('/')[-1]}, 23 views, 1 % noise, seed 0):", "",
              "| size | PSNR, measured views | s | PSNR, full set | s | max image difference |",
              "|---|---|---|---|---|---|"] + reconstruction_rows(Path(args.data))
    cmd = "python benchmarks/view_subset.py " + " ".join(sys.argv[1:])
    _results.update_section("view-subset", "\n".join(lines) + f"\n\nWall time {(time.time() - t0) / 60:.1f} min "
                            f"({args.threads} thread(s)).", cmd)


if __name__ == "__main__":
    main()
