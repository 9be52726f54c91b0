"""Reconstruction quality and speed on held-out images: every method, every task setup, plus PSNR vs
NFE for the proximal and fast samplers. Writes the "reconstruction" and "nfe" sections of RESULTS.md.

Run from the repository root after ``scorerecon prepare-data --output data``::

    python benchmarks/reconstruction.py --device auto
    python benchmarks/reconstruction.py --quick        # 2 images, no 2000-NFE runs

Held-out data: ``data/heldout/ct`` (pydicom head CT slice, CT_small neck) and ``data/heldout/mri``
(ITK example T1 head, pydicom MR_small) — patients/subjects not in the training data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import update_section  # noqa: E402

from ScoreReconLib.evaluation import (  # noqa: E402
    CLASSICAL,
    load_slices,
    make_case,
    markdown_table,
    run_classical,
    run_score,
    summarize,
)
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.utils import resolve_device  # noqa: E402

#: (label, task, options) of every setup in the table
SETUPS = [
    ("sparse-view CT, 23 views", "sparse-ct", {"views": 23}),
    ("sparse-view CT, 8 views", "sparse-ct", {"views": 8}),
    ("limited-angle CT, 90° arc", "limited-angle-ct", {"arc": 90.0}),
    ("metal CT (2 inserted objects)", "metal-ct", {}),
    ("MRI 8×, 1-D equispaced", "mri", {"acceleration": 8, "center_fraction": 0.08, "mask": "equispaced"}),
    ("MRI 24×, 1-D equispaced", "mri", {"acceleration": 24, "center_fraction": 0.04, "mask": "equispaced"}),
    ("MRI 8×, 2-D Poisson disc", "mri", {"acceleration": 8, "mask": "poisson"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct-model", default="default-ct")
    ap.add_argument("--mri-model", default="default-mri")
    ap.add_argument("--ct-data", default=str(ROOT / "data/heldout/ct"))
    ap.add_argument("--mri-data", default=str(ROOT / "data/heldout/mri"))
    ap.add_argument("--n-images", type=int, default=6)
    ap.add_argument("--proximal-nfe", type=int, default=2000, help="NFE of the proximal sampler in the main table")
    ap.add_argument("--nfe", default="20,50,100,500,2000", help="NFE values of the sweep")
    ap.add_argument("--sweep-images", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="2 images, proximal at 200 NFE, sweep ≤ 200 NFE")
    ap.add_argument("--only", default=None, help="comma list of tasks to run (sparse-ct, mri, ...)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sweep-only", action="store_true", help="only the PSNR-vs-NFE sweep")
    ap.add_argument("--json", default=None, help="also write all records to this JSON file")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.quick:
        args.n_images, args.proximal_nfe, args.sweep_images = 2, 200, 2
        args.nfe = "20,50,100,200"
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    priors = {"CT": load_prior(args.ct_model, device=device), "MR": load_prior(args.mri_model, device=device)}
    data = {"CT": args.ct_data, "MR": args.mri_data}
    only = set(args.only.split(",")) if args.only else None
    tables: dict[str, list[str]] = {"CT": [], "MR": []}
    all_records = {}
    for label, task, opts in SETUPS:
        if (only and task not in only) or args.sweep_only:
            continue
        modality = "MR" if task == "mri" else "CT"
        prior = priors[modality]
        slices = load_slices(data[modality], modality, prior.image_size, args.n_images, per_volume=3,
                             normalization=prior.normalization if modality == "CT" else None)
        records = []
        for i, (name, x) in enumerate(slices):
            case = make_case(name, x, task, seed=i, **dict(opts))
            for m in CLASSICAL[task]:
                records.append(run_classical(case, m))
            records.append(run_score(case, prior, sampler="fast", seed=i, device=device, label="ScoreRecon fast"))
            records.append(run_score(case, prior, sampler="proximal", seed=i, steps=args.proximal_nfe // 2,
                                     device=device, label=f"ScoreRecon proximal ({args.proximal_nfe} NFE)"))
            print(f"{label} {name}: " + ", ".join(f"{r.method} {r.psnr:.2f}" for r in records[-4:]),
                  file=sys.stderr, flush=True)
        summary = summarize(records)
        tables[modality].append(markdown_table(summary, f"{label} — {len(slices)} held-out slices"))
        all_records[label] = summary
    cmd = "python benchmarks/reconstruction.py " + " ".join(sys.argv[1:])
    for modality, section in (("CT", "reconstruction-ct"), ("MR", "reconstruction-mri")):
        if tables[modality]:
            update_section(section, "\n\n".join(tables[modality]) + _models_note({modality: priors[modality]}), cmd)
    if not args.no_sweep and (not only or "sparse-ct" in only):
        sweep = nfe_sweep(priors["CT"], args.ct_data, [int(v) for v in args.nfe.split(",")], args.sweep_images,
                          device, lambda partial: update_section("nfe", partial + "\n\n(run in progress)", cmd))
        update_section("nfe", sweep, cmd)
        all_records["nfe"] = sweep
    if args.json:
        from ScoreReconLib.data import save_json

        save_json(all_records, args.json)


def _models_note(priors) -> str:
    lines = ["", "Models: " + "; ".join(
        f"{m}: {p.config.get('name', '?')} ({p.image_size}², "
        f"{p.config.get('total_steps', p.config.get('steps', '?'))} training steps)"
        for m, p in priors.items())]
    return "\n".join(lines)


def nfe_sweep(prior, data: str, nfes: list[int], n_images: int, device, on_row=None) -> str:
    """PSNR vs network evaluations for sparse-view CT (23 views), fast then proximal sampler;
    ``on_row(partial_markdown)`` after each row (so a long run leaves its finished rows)."""
    slices = load_slices(data, "CT", prior.image_size, n_images, per_volume=3, normalization=prior.normalization)
    cases = [make_case(n, x, "sparse-ct", seed=i, views=23) for i, (n, x) in enumerate(slices)]
    rows = ["| sampler | NFE | PSNR (dB) | SSIM | seconds / slice |", "|---|---|---|---|---|"]
    head = f"Sparse-view CT, 23 views, {len(cases)} held-out slice(s).\n\n"
    for sampler in ("fast", "proximal"):
        for nfe in nfes:
            if sampler == "fast" and nfe > 200:
                continue
            steps = max(1, nfe // 2) if sampler == "proximal" else nfe
            t0 = time.perf_counter()
            recs = [run_score(c, prior, sampler=sampler, steps=steps, seed=i, device=device)
                    for i, c in enumerate(cases)]
            s = summarize(recs)[f"score-{sampler}"]
            rows.append(f"| {sampler} | {recs[0].extra['nfe']} | {s['psnr']:.2f} ± {s['psnr_sd']:.2f} | "
                        f"{s['ssim']:.3f} | {(time.perf_counter() - t0) / len(cases):.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
            if on_row is not None:
                on_row(head + "\n".join(rows))
    return head + "\n".join(rows)


if __name__ == "__main__":
    main()
