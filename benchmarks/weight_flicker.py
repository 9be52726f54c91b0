"""Per-volume against per-slice automatic weights: does choosing once per volume cost quality, and would a
per-slice choice flicker along z more than the noise does? (issue 17, item 3; validation volumes only.)

For a run of consecutive central slices of a validation volume (CT: the InVesalius training head; MRI: Colin27),
128², noisy (CT 1 %, MRI 0.1 % of max|y|, each slice its own noise) and noise-free, same operator:

- **per volume**: the CLI's rule, one weight chosen from the 3 central slices (``reconstruction.central_block``);
- **per slice**: ``choose_weight`` on each slice alone.

Reported: the spread of the per-slice weights (min–max, and the std of log10 w), mean PSNR of both, and the z
flicker — the RMS over pixels of (x[s+1] − x[s]) − (t[s+1] − t[s]), the slice-to-slice change that the truth t
does not have, averaged over adjacent pairs — for both choices and for the measurement noise alone (the
per-volume reconstruction of the same slices with another noise draw: the RMS change of a slice's image that the
noise alone causes), so "more flicker than the noise" has a yardstick. Writes the "weight-flicker" section of
RESULTS.md and benchmarks/weight-flicker.json.

    python benchmarks/weight_flicker.py --threads 1          # ~6 min on 2 cores
    python benchmarks/weight_flicker.py --threads 1 --only MR   # MRI only (~1 min), CT rows kept
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization, mr_normalization, read_image  # noqa: E402
from ScoreReconLib.evaluation import resize_square  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.operators import build_operator  # noqa: E402
from ScoreReconLib.parameter_choice import choose_weight  # noqa: E402
from ScoreReconLib.reconstruction import WEIGHT_CHOICE_SLICES, central_block  # noqa: E402

VOLUMES = {"CT": ("ct/invesalius_cranium.nrrd", "sparse-ct", {"views": 23}, 0.01, "tv", {}),
           "MR": ("mri/colin27_t1.nrrd", "mri", {"acceleration": 4, "center_fraction": 0.08, "mask": "equispaced"},
                  0.001, "cs", {"regularizer": "tv"})}


def slices(modality: str, data: Path, count: int) -> torch.Tensor:
    """``count`` consecutive central slices (S, 1, 128, 128), normalised as the benchmarks do."""
    rel = VOLUMES[modality][0]
    img = read_image(data / rel)
    norm = ct_normalization() if modality == "CT" else mr_normalization(img.array)
    arr = norm.forward(img.array).astype(np.float32)
    if modality == "CT":
        arr = np.clip(arr, 0.0, None)
    mid = arr.shape[0] // 2
    picks = range(mid - count // 2, mid - count // 2 + count)
    spacing = (float(img.spacing[0]), float(img.spacing[1]))
    return torch.cat([resize_square(arr[z], 128, spacing) for z in picks])


def flicker(x: torch.Tensor, t: torch.Tensor) -> float:
    d = (x[1:] - x[:-1]) - (t[1:] - t[:-1])
    return float(d.pow(2).flatten(1).mean(1).sqrt().mean())


def run(modality: str, data: Path, count: int, seed: int) -> list[dict]:
    _, task, opts, rel_noise, method, kw = VOLUMES[modality]
    t = slices(modality, data, count)
    op = build_operator(task, 128, **opts)
    clean = op.A(t)
    out = []
    for noise in (rel_noise, 0.0):
        g = torch.Generator().manual_seed(seed)
        scale = noise * float(clean.abs().max())
        n = torch.randn(clean.shape, generator=g) if not clean.is_complex() else torch.complex(
            torch.randn(clean.shape, generator=g), torch.randn(clean.shape, generator=g)) / math.sqrt(2)
        n = scale * n.to(clean.dtype) * op.mask
        y = clean + n
        t0 = time.perf_counter()
        block, sub = central_block(y, op, WEIGHT_CHOICE_SLICES)
        w_vol = choose_weight(block, sub, method, **kw).weight
        x_vol = classical_reconstruct(method, y, op, weight=w_vol, **kw)
        sec_vol = time.perf_counter() - t0
        t0 = time.perf_counter()
        per = [choose_weight(y[i:i + 1], op, method, **kw).weight for i in range(count)]
        x_sl = torch.cat([classical_reconstruct(method, y[i:i + 1], op, weight=per[i], **kw) for i in range(count)])
        sec_sl = time.perf_counter() - t0
        if noise > 0:  # the same slices, another noise draw, the same weight: what the noise alone changes
            g2 = torch.Generator().manual_seed(seed + 1)
            n2 = torch.randn(clean.shape, generator=g2) if not clean.is_complex() else torch.complex(
                torch.randn(clean.shape, generator=g2), torch.randn(clean.shape, generator=g2)) / math.sqrt(2)
            x_other = classical_reconstruct(method, clean + scale * n2.to(clean.dtype) * op.mask, op, weight=w_vol,
                                            **kw)
            noise_change = float((x_other - x_vol).float().flatten(1).pow(2).mean(1).sqrt().mean())
        else:
            noise_change = 0.0
        rec = {"modality": modality, "task": task, "noise": noise, "slices": count, "volume_weight": w_vol,
               "slice_weights": per,
               "psnr_volume": score_slices(x_vol[:count], t[:count], None).psnr,
               "psnr_slice": score_slices(x_sl[:count], t[:count], None).psnr,
               "flicker_volume": flicker(x_vol, t), "flicker_slice": flicker(x_sl, t),
               "flicker_noise": noise_change,
               "seconds_volume": sec_vol, "seconds_slice": sec_sl}
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()
                          if k != "slice_weights"}), file=sys.stderr, flush=True)
        out.append(rec)
    return out


def markdown(records: list[dict]) -> str:
    lines = ["Consecutive central slices of a validation volume, 128², same operator; TV (CT, 23 views) / CS-TV (MRI, "
             "4× equispaced). z flicker: RMS of (x[s+1] − x[s]) − (t[s+1] − t[s]), mean over adjacent pairs, [0, 1] "
             "units; *noise alone*: the RMS change of a slice's per-volume image under another noise draw (same "
             "weight), the variation the noise itself causes.", "",
             "| volume | noise | slices | per-volume weight | per-slice weights (min–max; sd of log10) | PSNR per "
             "volume | PSNR per slice | z flicker per volume | per slice | noise alone | seconds per volume / "
             "per slice |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ws = r["slice_weights"]
        sd = statistics.pstdev([math.log10(w) for w in ws])
        lines.append(f"| {VOLUMES[r['modality']][0]} ({r['task']}) | {'noisy' if r['noise'] else 'noise-free'} | "
                     f"{r['slices']} | {r['volume_weight']:.3g} | {min(ws):.3g}–{max(ws):.3g}; {sd:.2f} | "
                     f"{r['psnr_volume']:.2f} | {r['psnr_slice']:.2f} | {r['flicker_volume']:.4f} | "
                     f"{r['flicker_slice']:.4f} | {r['flicker_noise']:.4f} | {r['seconds_volume']:.0f} / "
                     f"{r['seconds_slice']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "weight-flicker.json"))
    ap.add_argument("--only", choices=("CT", "MR"), default=None,
                    help="rerun one modality; the other's records are kept from --json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    modalities = ("CT", "MR") if args.only is None else (args.only,)
    path = Path(args.json)
    kept = [r for r in json.loads(path.read_text()) if r["modality"] not in modalities] if path.exists() else []
    fresh = [r for m in modalities for r in run(m, Path(args.data), args.slices, args.seed)]
    records = sorted(kept + fresh, key=lambda r: r["modality"] != "CT")  # CT rows first, as before
    Path(args.json).write_text(json.dumps(records, indent=1))
    cmd = "python benchmarks/weight_flicker.py " + " ".join(sys.argv[1:])
    _results.update_section("weight-flicker", markdown(records) + f"\n\nWall time: {(time.time() - t0) / 60:.1f} min.",
                            cmd)


if __name__ == "__main__":
    main()
