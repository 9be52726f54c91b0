"""CT operator speed (and data-consistency solver quality), ours vs scikit-image and ASTRA CPU.

Forward projection and adjoint (unfiltered back-projection) of 1 and 8 images at 128² and 256²
with 180 angles over [0, π), median wall time of repeats in one process. Ours is the Joseph
sparse-matrix projector of ``ScoreReconLib.operators.ct``; scikit-image is ``radon`` / ``iradon``
with ``filter_name=None`` (one image at a time); ASTRA is the CPU ``linear`` parallel projector
(FP / BP algorithms created once, run per image) when ``astra`` is importable.

A second table compares the two proximal solvers inside a plug-and-play loop (proximal step then
TV denoising, 40 iterations, 64² Shepp-Logan) — the measurement behind ``default_solver``.

Run: ``python benchmarks/operators.py`` (writes the "operators" section of benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import update_section  # noqa: E402
from ScoreReconLib.operators import ct  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def phantom(n: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def bench_ours(n: int, batch: int, repeats: int) -> tuple[float, float, float]:
    g = ct.ParallelBeamGeometry(n, 180)
    p = ct.JosephProjector(g)
    x = torch.from_numpy(np.stack([phantom(n)] * batch))[:, None]
    s = p.forward(x)
    y = torch.rand_like(s)
    lhs, rhs = float((p.forward(x).double() * y).sum()), float((x.double() * p.adjoint(y)).sum())
    return median_ms(lambda: p.forward(x), repeats), median_ms(lambda: p.adjoint(s), repeats), abs(lhs - rhs) / abs(lhs)


def bench_skimage(n: int, batch: int, repeats: int) -> tuple[float, float]:
    from skimage.transform import iradon, radon

    theta = np.degrees(ct.ParallelBeamGeometry(n, 180).angles)
    imgs = [phantom(n)] * batch
    sinos = [radon(im, theta, circle=False) for im in imgs]
    fwd = median_ms(lambda: [radon(im, theta, circle=False) for im in imgs], repeats)
    adj = median_ms(lambda: [iradon(s, theta, filter_name=None, circle=False, output_size=n) for s in sinos], repeats)
    return fwd, adj


def bench_astra(n: int, batch: int, repeats: int) -> tuple[float, float] | None:
    try:
        import astra
    except ImportError:
        return None
    g = ct.ParallelBeamGeometry(n, 180)
    vol = astra.create_vol_geom(n, n)
    proj = astra.create_proj_geom("parallel", 1.0, g.n_det, g.angles)
    pid = astra.create_projector("linear", proj, vol)
    vid, sid = astra.data2d.create("-vol", vol), astra.data2d.create("-sino", proj)
    algs = []
    for kind in ("FP", "BP"):
        cfg = astra.astra_dict(kind)
        cfg["ProjectorId"], cfg["ProjectionDataId"] = pid, sid
        cfg["VolumeDataId" if kind == "FP" else "ReconstructionDataId"] = vid
        algs.append(astra.algorithm.create(cfg))
    imgs = [phantom(n)] * batch
    sino = np.random.default_rng(0).random((180, g.n_det)).astype(np.float32)

    def forward() -> list:
        out = []
        for im in imgs:
            astra.data2d.store(vid, im)
            astra.algorithm.run(algs[0])
            out.append(astra.data2d.get(sid))
        return out

    def adjoint() -> list:
        out = []
        for _ in imgs:
            astra.data2d.store(sid, sino)
            astra.algorithm.run(algs[1])
            out.append(astra.data2d.get(vid))
        return out

    try:
        return median_ms(forward, repeats), median_ms(adjoint, repeats)
    finally:
        for a in algs:
            astra.algorithm.delete(a)
        astra.data2d.delete([vid, sid])
        astra.projector.delete(pid)


def build_times(n: int) -> tuple[float, float]:
    """Seconds to build (empty cache) and to load (disk cache, empty memo) the 180-angle matrix."""
    g = ct.ParallelBeamGeometry(n, 180)
    old = os.environ.get("SCORERECON_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SCORERECON_CACHE"] = tmp
        try:
            ct.clear_memo()
            t = time.perf_counter()
            ct.joseph_matrices(g)
            build = time.perf_counter() - t
            ct.clear_memo()
            t = time.perf_counter()
            ct.joseph_matrices(g)
            load = time.perf_counter() - t
        finally:
            if old is None:
                os.environ.pop("SCORERECON_CACHE", None)
            else:
                os.environ["SCORERECON_CACHE"] = old
    return build, load


def proximal_table(iterations: int = 40) -> str:
    from skimage.restoration import denoise_tv_chambolle

    n = 64
    ref = torch.from_numpy(phantom(n))[None, None]
    metal = ct.random_metal_mask(n, 3, seed=1, inside=ref[0, 0] > 0.05)
    ops = {"sparse-ct (23 views)": ct.SparseViewCT(n, 23), "limited-angle-ct (90°)": ct.LimitedAngleCT(n, 90.0),
           "metal-ct (3 objects)": ct.MetalTraceCT(n, metal)}
    rows = ["| task | A_dagger PSNR | solver | PnP-TV PSNR | relative data residual | s |", "|---|---|---|---|---|---|"]
    for name, op in ops.items():
        y = op.A(ref)
        keep = ~metal if op.task == "metal-ct" else torch.ones_like(ref, dtype=torch.bool)

        def psnr(x: torch.Tensor, keep: torch.Tensor = keep) -> float:
            return float(10 * torch.log10(1.0 / ((x[keep] - ref[keep]) ** 2).mean()))

        base = psnr(op.A_dagger(y))
        for solver in ("fbp", "cg"):
            x = torch.zeros_like(ref)
            t = time.perf_counter()
            for _ in range(iterations):
                x = op.proximal(x, y, 1.0, solver=solver)
                x = torch.from_numpy(denoise_tv_chambolle(x[0, 0].numpy(), weight=0.03).astype(np.float32))[None, None]
            sec = time.perf_counter() - t
            res = float((op.A(x) - y).norm() / y.norm())
            label = solver if solver == "fbp" else f"cg ({op.default_cg_iterations} it)"
            rows.append(f"| {name} | {base:.2f} | {label} | {psnr(x):.2f} | {res:.4f} | {sec:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats for ours (others: a third, ≥ 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    slow = max(3, args.repeats // 3)
    lines = ["| size | batch | backend | forward ms | adjoint ms | ours faster than astra (fwd / adj) |",
             "|---|---|---|---|---|---|"]
    notes = []
    threads_default = torch.get_num_threads()
    for n in args.sizes:
        build, load = build_times(n)
        notes.append(f"{n}²: build {build:.2f} s (empty cache), load {load:.2f} s (disk cache), memo hit ~0 s")
        for batch in (1, 8):
            astra_t = bench_astra(n, batch, slow)
            first = len(lines)
            for threads in sorted({threads_default, 1}, reverse=True):
                torch.set_num_threads(threads)
                fo, ao, err = bench_ours(n, batch, args.repeats)
                speed = f"{astra_t[0] / fo:.1f}× / {astra_t[1] / ao:.1f}×" if astra_t else "astra not installed"
                lines.append(f"| {n}² | {batch} | ours, {threads} thread(s) (adjoint error {err:.0e}) "
                             f"| {fo:.1f} | {ao:.1f} | {speed} |")
            torch.set_num_threads(threads_default)
            if astra_t:
                lines.append(f"| {n}² | {batch} | astra CPU linear | {astra_t[0]:.1f} | {astra_t[1]:.1f} | |")
            fs, as_ = bench_skimage(n, batch, slow)
            lines.append(f"| {n}² | {batch} | skimage radon / iradon | {fs:.1f} | {as_:.1f} | |")
            print("\n".join(lines[first:]), flush=True)
    table = "\n".join(lines)
    table += ("\n\n180 angles over [0, π), detector bins ⌈√2·N⌉ (odd), median of repeats; skimage and astra "
              "run one image at a time on one thread. The machine is shared: under load from other processes "
              "a 2-thread torch run can be slower than a 1-thread one.\n\nSystem matrix: "
              + "; ".join(notes) + ".")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table += f" Load average (1 min) at the end of the timing runs: {load:.1f} on {os.cpu_count()} cores."
    prox = proximal_table()
    print(table, "\n", prox)
    table += ("\n\nProximal data-consistency solvers (λ = 1) in a plug-and-play loop "
              "(proximal step, then TV denoising weight 0.03; 40 iterations from zero; 64² Shepp-Logan, "
              "metal PSNR outside the metal):\n\n" + prox)
    if not args.no_write:
        update_section("operators", table, "python benchmarks/operators.py")


if __name__ == "__main__":
    main()
