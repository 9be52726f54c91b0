"""Does test-time adaptation (``reconstruct --adapt lora``, ScoreReconLib.adaptation) pay for its cost?

For every validation and test image (128², the subjects of benchmarks/auto_weight.py and benchmarks/
generalization.py) and task (CT: 23 and 8 views; MRI: 4× 1-D and 8× Poisson), noisy (CT 1 %, MRI 0.1 % of
max|y|) and noise-free: the default score reconstruction (``reconstruct_volume`` with the shipped prior's
recommended settings) without and with ``adapt="lora"`` (at most ``--adapt-steps`` adapter steps, stopped by the
discrepancy principle), same seed. Reports PSNR / SSIM of both, the adapter steps run, why they stopped and the
seconds of each. The default of ``--adapt`` is chosen on the validation rows only; test rows only measure.
Writes the "adaptation" section of RESULTS.md.

    python benchmarks/adaptation.py --threads 1             # ~40 min on the shared 2-core CPU
    python benchmarks/adaptation.py --threads 1 --only MR --adapt-steps 20
    python benchmarks/adaptation.py --volume --threads 1   # once per volume vs every slice (section adaptation-volume)
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402

from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct_volume  # noqa: E402

TEST = {"CT": ["heldout/ct/pydicom_head_ct.nrrd", "heldout/ct/pydicom_data_abdomen_ct.nrrd"],
        "MR": ["heldout/mri/itk_t1_head.nrrd", "heldout/mri/pydicom_data_abdomen_mr.nrrd"]}
TASKS = {"CT": ("sparse23", "sparse8"), "MR": ("mri4x", "mri8x-poisson")}
NOISE = {"CT": 0.01, "MR": 0.001}
MODELS = {"CT": "default-ct", "MR": "default-mri"}


def role_subjects(modality: str, data: Path):
    """(role, slice) for the central slice of every validation, then every test subject of ``modality``."""
    for role, rels in (("validation", VALIDATION[modality]), ("test", TEST[modality])):
        for rel in rels:
            yield role, G.load_subject(data / rel, modality, role, 1, ct_normalization())[0]


def records(modality: str, data: Path, args) -> list[dict]:
    prior = load_prior(MODELS[modality])
    out = []
    for role, s in role_subjects(modality, data):
        for key in TASKS[modality]:
            task = next(t for t in G.TASKS[modality] if t.key == key)
            for noise in (NOISE[modality], 0.0):
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise,
                              **task.opts())
                rec = {"role": role, "image": s.name, "task": key, "noise": noise}
                for label, extra in (("default", {}), ("lora", {"adapt": "lora",
                                                                "adapt_steps": args.adapt_steps})):
                    t0 = time.perf_counter()
                    res = reconstruct_volume(c.y, c.op, prior, seed=0, **extra)
                    sc = score_slices(res.mean, c.x, c.score_mask)
                    rec[label] = {"psnr": sc.psnr, "ssim": sc.ssim, "seconds": time.perf_counter() - t0}
                    if res.adaptation is not None:
                        rec[label].update(steps=res.adaptation["steps"], stopped=res.adaptation["stopped"],
                                          chi2_first=res.adaptation["chi2_first"])
                out.append(rec)
                d, a = rec["default"], rec["lora"]
                print(f"[{time.strftime('%H:%M:%S')}] {role} {s.name} {key} noise {noise:g}: default "
                      f"{d['psnr']:.2f} dB {d['seconds']:.0f} s, lora {a['psnr']:.2f} dB {a['seconds']:.0f} s "
                      f"({a.get('steps')} steps, {a.get('stopped')})", flush=True)
    return out


def role_summaries(recs: list[dict], base: str, new: str, digits: int = 2, ratio_digits: int = 1) -> list[str]:
    """One line per role (validation, test) with records: the mean, min and max PSNR change ``new`` − ``base``
    and the mean ratio of their seconds."""
    lines = []
    for role in ("validation", "test"):
        rs = [r for r in recs if r["role"] == role]
        if rs:
            d = [r[new]["psnr"] - r[base]["psnr"] for r in rs]
            cost = np.mean([r[new]["seconds"] / r[base]["seconds"] for r in rs])
            lines.append(f"\n{role}: mean Δ {np.mean(d):+.{digits}f} dB (min {min(d):+.{digits}f}, max "
                         f"{max(d):+.{digits}f}) at {cost:.{ratio_digits}f}× the seconds, {len(rs)} cases.")
    return lines


def markdown(modality: str, recs: list[dict]) -> str:
    lines = [f"**{modality}** (128², default score vs `--adapt lora`, same seed; Δ = lora − default)", "",
             "| role | image | task | noise | default PSNR / SSIM | lora PSNR / SSIM | Δ dB | adapter steps (stop) "
             "| s default / lora |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        d, a = r["default"], r["lora"]
        lines.append(f"| {r['role']} | {r['image']} | {r['task']} | {r['noise']:g} | {d['psnr']:.2f} / "
                     f"{d['ssim']:.3f} | {a['psnr']:.2f} / {a['ssim']:.3f} | {a['psnr'] - d['psnr']:+.2f} | "
                     f"{a.get('steps')} ({a.get('stopped')}) | {d['seconds']:.0f} / {a['seconds']:.0f} |")
    lines += role_summaries(recs, "default", "lora")
    val = [r["lora"]["psnr"] - r["default"]["psnr"] for r in recs if r["role"] == "validation"]
    if val:
        keep = np.mean(val) <= 0.1
        lines.append(f"\nDecision (validation rows only): {'keep' if keep else 'consider'} `--adapt "
                     f"{'none' if keep else 'lora'}` as the default ({np.mean(val):+.2f} dB mean on validation).")
    return "\n".join(lines)


def volume_part(argv: list[str]) -> None:
    """``--volume``: what adapting once per volume (on its central slices, the library's way) costs and loses
    against adapting on every slice: the central ``--slices`` slices of the InVesalius head (the CT prior's
    training patient: the comparison, not the quality, is the point), 128², 8 views, noise-free (where adaptation
    runs its steps), seed 0. Writes the "adaptation-volume" section."""
    import argparse

    import _results
    import torch

    from ScoreReconLib.data import Image, read_image
    from ScoreReconLib.measurement import reference_slices, simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", action="store_true")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--adapt-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "data"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    img = read_image(Path(args.data) / "ct" / "invesalius_cranium.nrrd")
    lo = (img.array.shape[0] - args.slices) // 2
    sub = Image(np.ascontiguousarray(img.array[lo:lo + args.slices]), img.spacing, img.origin, img.direction, "CT")
    m, _, _ = simulate(sub, "sparse-ct", views=8, noise=0.0, seed=0, size=128)
    ref, op, y = reference_slices(sub, m, []), m.operator("cpu"), m.y_tensor(None, "cpu")
    prior = load_prior("default-ct")
    lora = {"adapt": "lora", "adapt_steps": args.adapt_steps}
    rows = []
    for label, run in (("no adaptation", lambda: reconstruct_volume(y, op, prior, seed=0).mean),
                       ("once per volume (central slices)", lambda: reconstruct_volume(y, op, prior, seed=0,
                                                                                      **lora).mean),
                       ("every slice", lambda: torch.cat([reconstruct_volume(y[i:i + 1], op, prior, seed=0, **lora)
                                                          .mean for i in range(args.slices)]))):
        t0 = time.perf_counter()
        x = run()
        sc = score_slices(x, ref)
        rows.append(f"| {label} | {sc.psnr:.2f} / {sc.ssim:.3f} | {time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    text = ("| adaptation | mean PSNR dB / SSIM | seconds |\n|---|---|---|\n" + "\n".join(rows)
            + f"\n\n{args.slices} central slices of the InVesalius head, 128², sparse-view CT 8 views, noise-free, "
            f"`--adapt-steps {args.adapt_steps}`, the default score method, seed 0. Every slice of 'every slice' runs "
            "as its own one-slice volume (its own adapters, its own noise estimate and start weight).")
    _results.update_section("adaptation-volume", text, "python benchmarks/adaptation.py " + " ".join(argv))


if __name__ == "__main__":
    if "--volume" in sys.argv:
        volume_part(sys.argv[1:])
    else:
        _setup.modality_benchmark(__doc__.splitlines()[0], "adaptation", "adaptation.json", records, markdown,
                                  extra_args=lambda ap: ap.add_argument("--adapt-steps", type=int, default=20))
