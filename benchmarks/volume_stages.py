"""A CT volume end to end, seconds per stage and peak memory: read, simulate (sparse-view, noisy), the volume's
settings (noise estimate and the classical start's automatic weight, once per volume), sampling (the default score
method in batches), write. The command a GPU owner runs for issue 22's volume goal:

    python benchmarks/volume_stages.py --size 512 --slices 16,64 --device cuda

and what this project's CPU measures at a small size (each slice count in a fresh process, so the peaks are
its own):

    python benchmarks/volume_stages.py --size 128 --slices 4,8 --threads 2

The volume is the central ``S`` slices of the InVesalius head (``data/ct/invesalius_cranium.nrrd``, the CT
prior's training patient: a speed benchmark, not a quality one), resampled to ``--size``², 23 views, 1 % noise,
the shipped ``default-ct`` prior with its recommended settings, ``--batch-size`` slices at a time. Writes the
"volume-stages" section of RESULTS.md (rows are added per device and size; rerun replaces the same rows).
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SECTION = "volume-stages"
HEADER = ("| device | size | slices | batch | read s | simulate s | settings s | sampling s | write s | total s | "
          "s / slice | peak RSS GB | peak GPU GB |")


def one_run(args: argparse.Namespace, slices: int) -> dict:
    """The stages for ``slices`` slices, in this process."""
    import numpy as np
    import torch

    from ScoreReconLib.data import Image, read_image, write_image
    from ScoreReconLib.measurement import simulate
    from ScoreReconLib.networks import load_prior
    from ScoreReconLib.reconstruction import fix_volume_settings, reconstruct_volume
    from ScoreReconLib.settings import resolve_settings
    from ScoreReconLib.utils import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {}
    t0 = time.perf_counter()
    img = read_image(Path(args.data) / "ct" / "invesalius_cranium.nrrd")
    lo = max(0, (img.array.shape[0] - slices) // 2)
    sub = Image(np.ascontiguousarray(img.array[lo:lo + slices]), img.spacing, img.origin, img.direction, img.modality)
    times["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m, _, _ = simulate(sub, "sparse-ct", views=23, noise=0.01, seed=0, size=args.size)
    times["simulate"] = time.perf_counter() - t0
    prior = load_prior("default-ct", device=device)
    op = m.operator(device)
    y = m.y_tensor(None, "cpu")
    t0 = time.perf_counter()
    settings, _ = fix_volume_settings(y, op, resolve_settings(None, prior, task="sparse-ct"))
    times["settings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = reconstruct_volume(y, op, prior, batch_size=args.batch_size, settings=settings, seed=0, device=device)
    times["sampling"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        arr = m.normalization.inverse(res.mean.numpy()[:, 0]).astype(np.float32)
        write_image(Image(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), "CT"),
                    Path(tmp) / "recon.nrrd")
    times["write"] = time.perf_counter() - t0
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"device": str(device), "size": args.size, "slices": slices, "batch": args.batch_size, **times,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_gpu_gb": peak_gpu}


def row(r: dict) -> str:
    total = sum(r[k] for k in ("read", "simulate", "settings", "sampling", "write"))
    gpu = "–" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.2f}"
    return (f"| {r['device']} | {r['size']}² | {r['slices']} | {r['batch']} | {r['read']:.1f} | {r['simulate']:.1f} | "
            f"{r['settings']:.1f} | {r['sampling']:.1f} | {r['write']:.1f} | {total:.1f} | "
            f"{total / r['slices']:.1f} | {r['peak_rss_gb']:.2f} | {gpu} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", default="16,64", help="comma list of slice counts, each run in its own process")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one slice count
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one_run(args, args.one)), flush=True)
        return
    rows = []
    for count in (int(c) for c in args.slices.split(",")):
        cmd = [sys.executable, __file__, "--one", str(count), "--size", str(args.size), "--batch-size",
               str(args.batch_size), "--device", args.device, "--data", args.data]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(row(rows[-1]), flush=True)
    import _results

    old = _results.text_or("")
    keep = []
    if f"<!-- BEGIN {SECTION} -->" in old:  # rows of other devices / sizes stay
        body = old.split(f"<!-- BEGIN {SECTION} -->", 1)[1].split(f"<!-- END {SECTION} -->", 1)[0]
        mine = {(r["device"], f"{r['size']}²") for r in rows}
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 13 and cells[0] != "device" and (cells[0], cells[1]) not in mine:
                keep.append(line)
    table = "\n".join([HEADER, "|" + "---|" * 13, *keep, *(row(r) for r in rows)])
    text = (f"{table}\n\nSettings: the σ_y estimate and the automatic TV weight of the classical start, fixed once per "
            "volume; sampling: the default score method (recommended samples) in batches of the given size. Peak RSS "
            "is the process's own maximum resident set (each slice count runs in a fresh process).")
    _results.update_section(SECTION, text, "python benchmarks/volume_stages.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
