"""The symmetric stored-matrix projector at 512² against the matrix-free projector and astra's CPU projectors.

Full scans at 512², 512 views (parallel beam over 180°; fan beam over a full turn, flat detector, source 1400 px
and detector 1100 px from the centre, so astra can run the same geometry), a batch of 8 images, one thread:

- ``joseph-symmetric`` (:class:`ScoreReconLib.operators.symmetric.SymmetricJosephProjector`, what
  ``backend="auto"`` picks there now): in a fresh process with an empty matrix cache (*cold*: building the base
  views' matrix included) and again in a fresh process reading it from the disk cache (*warm*); forward and adjoint
  median of 3; the peak resident memory the process added; the adjoint identity; its largest difference from the
  matrix-free projector (same Joseph weights);
- the matrix-free projector (what ``auto`` picked there before), one forward and one adjoint;
- astra-toolbox's CPU projectors (``linear`` / ``line_fanflat``), one image at a time, in the same run.

Then one 512² metal-artifact slice end to end with the default score method (the CLI, ``auto`` backend):
``simulate --task metal-ct`` of the held-out head CT and ``reconstruct --method score``, seconds and PSNR.

Writes the "symmetric-projector" section of RESULTS.md.

    python benchmarks/symmetric_projector.py --threads 1        # ~12 min on 2 cores
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
from clinical_ct import _astra_pair, _geometry  # noqa: E402

_CHILD = """
import json, resource, statistics, sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from clinical_ct import _geometry
from ScoreReconLib.operators import ct
torch.set_num_threads({threads})
g = _geometry({kind!r}, 512, 512)
x = torch.rand(8, 1, 512, 512, generator=torch.Generator().manual_seed(0))
y = torch.rand(8, 1, *g.sinogram_shape, generator=torch.Generator().manual_seed(1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); p = ct.make_projector(g, {backend!r}); build = time.perf_counter() - t
def timed(fn, k):
    out, ts = None, []
    for _ in range(k):
        t = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)
ax, fwd = timed(lambda: p.forward(x), {repeats})
aty, adj = timed(lambda: p.adjoint(y), {repeats})
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
lhs, rhs = float((ax.double() * y).sum()), float((x.double() * aty.double()).sum())
res = {{"build": build, "fwd": fwd, "adj": adj, "err": abs(lhs - rhs) / abs(lhs), "peak": peak, "name": p.name,
        "stored_views": getattr(p, "stored_views", None)}}
if {compare}:
    free = ct.MatrixFreeJosephProjector(g)
    t = time.perf_counter(); fx = free.forward(x); res["free_fwd"] = time.perf_counter() - t
    t = time.perf_counter(); fy = free.adjoint(y); res["free_adj"] = time.perf_counter() - t
    res["diff_fwd"] = float((ax - fx).abs().max() / fx.abs().max())
    res["diff_adj"] = float((aty - fy).abs().max() / fy.abs().max())
print(json.dumps(res))
"""


def child(kind: str, backend: str, threads: int, cache: str, repeats: int, compare: bool) -> dict:
    code = _CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), kind=kind, backend=backend,
                         threads=threads, repeats=repeats, compare=compare)
    env = {**os.environ, "SCORERECON_CACHE": cache, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def metal_slice(threads: int, cache: str) -> dict:
    """simulate + reconstruct one 512² metal slice of the held-out head with the CLI defaults."""
    head = ROOT / "data" / "heldout" / "ct" / "pydicom_head_ct.nrrd"
    env = {**os.environ, "SCORERECON_CACHE": cache, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        meas, out, metrics = Path(tmp) / "m.npz", Path(tmp) / "r.nrrd", Path(tmp) / "m.json"
        t0 = time.perf_counter()
        subprocess.run(["scorerecon", "simulate", "--task", "metal-ct", "--input", str(head), "--output", str(meas),
                        "--noise", "0.01"], check=True, env=env, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(["scorerecon", "reconstruct", "--input", str(meas), "--method", "score", "--output", str(out),
                        "--reference", str(head), "--metrics-json", str(metrics)], check=True, env=env,
                       capture_output=True)
        t2 = time.perf_counter()
        m = json.loads(metrics.read_text())
    return {"simulate": t1 - t0, "reconstruct": t2 - t1, "metrics": m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-metal", action="store_true", help="skip the end-to-end metal slice")
    args = ap.parse_args()
    t0 = time.time()
    rows = ["| geometry | projector | build s | forward s (batch 8) | adjoint s (batch 8) | forward + adjoint s | "
            "astra's time / ours | adjoint error | peak RSS added MB |", "|---|---|---|---|---|---|---|---|---|"]
    checks = []
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("parallel", "fan"):
            a = _astra_pair(_geometry(kind, 512, 512), 8, 1)
            astra_total = None if a is None else a[0] + a[1]
            cold = child(kind, "auto", args.threads, cache, 1, True)
            warm = child(kind, "auto", args.threads, cache, 3, False)
            n_det = _geometry(kind, 512, 512).n_det
            for label, r in ((f"{cold['name']}, cold cache ({cold['stored_views']} of 512 views stored)", cold),
                             (f"{warm['name']}, warm cache", warm)):
                total = r["fwd"] + r["adj"]
                ratio = "–" if astra_total is None else f"{astra_total / total:.1f}"
                rows.append(f"| {kind} 512², 512 views, {n_det} bins | {label} | {r['build']:.1f} | {r['fwd']:.2f} | "
                            f"{r['adj']:.2f} | {total:.2f} | {ratio} | {r['err']:.0e} | {r['peak'] / 2**20:.0f} |")
            free = cold["free_fwd"] + cold["free_adj"]
            rows.append(f"| {kind} | matrix-free (before) | | {cold['free_fwd']:.1f} | {cold['free_adj']:.1f} | "
                        f"{free:.1f} | {'–' if astra_total is None else f'{astra_total / free:.2f}'} | | |")
            if a is None:
                rows.append(f"| {kind} | astra CPU | not installed | | | | | | |")
            else:
                rows.append(f"| {kind} | astra CPU {'linear' if kind == 'parallel' else 'line_fanflat'}, 1 thread | | "
                            f"{a[0]:.1f} | {a[1]:.1f} | {astra_total:.1f} | 1 | | |")
            checks.append(f"{kind}: largest difference from the matrix-free projector {cold['diff_fwd']:.1e} "
                          f"(forward) and {cold['diff_adj']:.1e} (adjoint) of the peak")
            print("\n".join(rows[-4:]), flush=True)
        metal = None if args.no_metal else metal_slice(args.threads, cache)
    load = os.getloadavg()[0]
    text = ("\n".join(rows) + "\n\n" + "; ".join(checks) + ". One thread; the machine is shared (1-minute load "
            f"average at the end {load:.1f} on {os.cpu_count()} cores), ours and astra ran back to back. *build*: "
            "making the projector (the symmetry plan and the base views' matrix: built and written to the disk "
            "cache when cold, read from it when warm). Peak RSS added: growth of the process's maximum resident "
            "set from just before the projector was made, through one forward and one adjoint of the batch.")
    if metal is not None:
        psnr = metal["metrics"]["psnr"]  # the metrics JSON's mean over slices (None without a reference)
        text += ("\n\nOne 512² metal-artifact slice end to end, the CLI defaults (`scorerecon simulate --task metal-ct "
                 "--input data/heldout/ct/pydicom_head_ct.nrrd --output m.npz --noise 0.01`, then `scorerecon "
                 "reconstruct --input m.npz --method score --output r.nrrd --reference "
                 "data/heldout/ct/pydicom_head_ct.nrrd --metrics-json m.json`, warm matrix cache): simulate "
                 f"{metal['simulate']:.0f} s, reconstruct {metal['reconstruct']:.0f} s, PSNR "
                 f"{psnr if psnr is None else f'{psnr:.2f}'} dB.")
    cmd = "python benchmarks/symmetric_projector.py " + " ".join(sys.argv[1:])
    _results.update_section("symmetric-projector", text + f"\n\nWall time {(time.time() - t0) / 60:.1f} min.", cmd)
    print(text)


if __name__ == "__main__":
    main()
