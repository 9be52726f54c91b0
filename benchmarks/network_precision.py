"""Does the score network lose anything in bfloat16 on a CPU (``reconstruct --precision``, issue 22)?

For every validation and test image (128², the subjects of benchmarks/auto_weight.py and benchmarks/adaptation.py)
and task (CT: 23 and 8 views, 90° arc, metal; MRI: 4× and 8× 1-D, 8× Poisson disc), noisy (CT 1 %, MRI 0.1 % of
max|y|): the default score reconstruction (``reconstruct_volume`` with the shipped prior's recommended settings)
with the network in float32 and in bfloat16 autocast, same seed; PSNR / SSIM and seconds of both. Then one
512² slice (the central InVesalius slice, 23 views, 1 % noise, as benchmarks/volume_stages.py) in both
precisions. The default of ``--precision auto`` on a CPU with native bf16 is decided on the validation rows
only (bf16 when its mean PSNR change is within ±0.05 dB and no validation row loses more than 0.1 dB); test rows
only measure. Writes the "network-precision" section of RESULTS.md. Run on a CPU with AVX512-BF16 or AMX
(``ScoreReconLib.networks.precision.cpu_has_native_bf16``); elsewhere bf16 is emulated and slower.

    python benchmarks/network_precision.py --threads 1          # ~25 min on this project's 2-core CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
from adaptation import MODELS, NOISE, role_subjects, role_summaries  # noqa: E402

from ScoreReconLib.data import Image, read_image  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.measurement import simulate  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.networks.precision import cpu_has_native_bf16  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct_volume  # noqa: E402

PRECISIONS = ("fp32", "bf16")
#: the validation rule for ``auto`` → bf16: mean PSNR change within this (dB), no row below -LARGEST_LOSS
MEAN_TOLERANCE = 0.05
LARGEST_LOSS = 0.1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(y, op, prior, precision: str, x=None, mask=None) -> dict:
    prior.precision = precision
    t0 = time.perf_counter()
    res = reconstruct_volume(y, op, prior, seed=0)
    out = {"seconds": time.perf_counter() - t0}
    if x is not None:
        sc = score_slices(res.mean, x, mask)
        out.update(psnr=sc.psnr, ssim=sc.ssim)
    return out


def records(modality: str, data: Path, args) -> list[dict]:
    prior = load_prior(MODELS[modality])
    out = []
    for role, s in role_subjects(modality, data):
        for task in G.TASKS[modality]:
            c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=NOISE[modality],
                          **task.opts())
            rec = {"role": role, "image": s.name, "task": task.key}
            for p in PRECISIONS:
                rec[p] = run(c.y, c.op, prior, p, c.x, c.score_mask)
            out.append(rec)
            log(f"{role} {s.name} {task.key}: " + ", ".join(
                f"{p} {rec[p]['psnr']:.3f} dB {rec[p]['seconds']:.1f} s" for p in PRECISIONS))
    return out


def large_slice(data: Path, size: int = 512) -> dict:
    img = read_image(data / "ct" / "invesalius_cranium.nrrd")
    z = img.array.shape[0] // 2
    sub = Image(np.ascontiguousarray(img.array[z:z + 1]), img.spacing, img.origin, img.direction, img.modality)
    m, _, _ = simulate(sub, "sparse-ct", views=23, noise=0.01, seed=0, size=size)
    prior = load_prior("default-ct")
    op, y = m.operator("cpu"), m.y_tensor(None, "cpu")
    out = {"size": size}
    for p in PRECISIONS:
        out[p] = run(y, op, prior, p)
        log(f"{size}² slice {p}: {out[p]['seconds']:.1f} s")
    return out


def decision(recs: list[dict]) -> tuple[bool, str]:
    d = np.array([r["bf16"]["psnr"] - r["fp32"]["psnr"] for r in recs if r["role"] == "validation"])
    ok = abs(float(d.mean())) <= MEAN_TOLERANCE and float(d.min()) >= -LARGEST_LOSS
    return ok, (f"Decision (validation rows only): {'bf16' if ok else 'fp32'} for `--precision auto` on a CPU with "
                f"native bf16 (rule: |mean Δ| ≤ {MEAN_TOLERANCE} dB and no case below −{LARGEST_LOSS} dB; measured "
                f"mean {d.mean():+.3f} dB, min {d.min():+.3f} dB)")


def markdown(modality: str, recs: list[dict]) -> str:
    lines = [f"**{modality}** (128², default score, float32 vs bfloat16 network; Δ = bf16 − fp32)", "",
             "| role | image | task | fp32 PSNR / SSIM | bf16 PSNR / SSIM | Δ dB | s fp32 / bf16 |",
             "|---|---|---|---|---|---|---|"]
    for r in recs:
        a, b = r["fp32"], r["bf16"]
        lines.append(f"| {r['role']} | {r['image']} | {r['task']} | {a['psnr']:.2f} / {a['ssim']:.3f} | "
                     f"{b['psnr']:.2f} / {b['ssim']:.3f} | {b['psnr'] - a['psnr']:+.3f} | "
                     f"{a['seconds']:.1f} / {b['seconds']:.1f} |")
    lines += role_summaries(recs, "fp32", "bf16", digits=3, ratio_digits=2)
    lines.append("\n" + decision(recs)[1] + ".")
    return "\n".join(lines)


def main() -> None:
    import argparse
    import json
    import sys

    import _results
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "network_precision.json"))
    ap.add_argument("--from-json", action="store_true", help="re-write the tables from the saved records")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = Path(args.json)
    saved = json.loads(path.read_text()) if args.from_json else {}
    if not args.from_json:
        saved["native_bf16"] = cpu_has_native_bf16()
        saved["command"] = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
        for modality in ("CT", "MR"):
            saved[modality] = records(modality, Path(args.data), args)
            path.write_text(json.dumps(saved))
        saved["large"] = large_slice(Path(args.data))
        saved["wall_min"] = (time.time() - t0) / 60
        path.write_text(json.dumps(saved))
    big = saved["large"]
    body = [f"CPU with native bf16: {'yes' if saved['native_bf16'] else 'no (bf16 emulated)'}. Seconds are wall time "
            "on this shared 2-core machine with another job on the other core: compare the ratios.", "",
            markdown("CT", saved["CT"]), "", markdown("MR", saved["MR"]), "",
            f"One {big['size']}² slice (central InVesalius slice, 23 views, 1 % noise, default score, 4 samples × "
            f"5 steps; settings and sampling): fp32 {big['fp32']['seconds']:.1f} s, bf16 {big['bf16']['seconds']:.1f}"
            f" s ({big['bf16']['seconds'] / big['fp32']['seconds']:.2f}×)."]
    cmd = saved.get("command", "python benchmarks/network_precision.py --threads 1")  # the run that measured
    wall = saved.get("wall_min", (time.time() - t0) / 60)
    _results.update_section("network-precision", "\n".join(body) + f"\n\nWall time: {wall:.1f} min.", cmd)


if __name__ == "__main__":
    main()
