"""How the automatic weight's constants were chosen (ScoreReconLib.parameter_choice), on validation subjects only.

For every validation image and task, noisy (CT 1 %, MRI 0.1 % of max|y|, as benchmarks/generalization.py) and
noise-free, 128², same operator: the TV (CT) / CS-TV (MRI) reconstruction on a half-decade weight grid
(10^-6.5 … 10^-1), its PSNR against the truth and its mean measured-row residual. Then, from these records only:

- the noise-free weight of each task (``NOISE_FREE_WEIGHT``; sparse-view CT per number of views,
  ``NOISE_FREE_WEIGHT_BY_VIEWS``): the grid weight with the best mean loss against each image's best weight, over
  the noise-free cases of the task's operator kind (and view count);
- the discrepancy factor τ of each modality (``DISCREPANCY_FACTOR``): the candidate whose rule — the noise-free
  weight, raised until residual = τ σ̂² with σ̂ the library's noise estimate, read off the grid by log-linear
  interpolation — loses least PSNR against the best grid weight, mean over the noisy cases. The rule keeps the
  noise-free weight where the data look noise-free (CT: σ̂ at most ``NOISE_FREE_LEVEL`` of the peak; MRI: the
  outer k-space rings fall with the radius, ``noise.kspace_looks_noise_free``); the per-case table says which.

Validation subjects: CT — pydicom's CT_small (neck), the pydicom-data spine CT and a slice of the InVesalius
training head; MRI — pydicom's MR_small, the pydicom-data shoulder MR and a slice of Colin27. The held-out test
subjects of benchmarks/generalization.py (the pydicom head CT, the Pancreas-CT abdomen, the ITK T1 head, the
abdomen MR) are never read. Writes the "auto-weight-validation" section of RESULTS.md.

    python benchmarks/auto_weight.py --threads 1             # CT ~20 min, MRI ~2 min on 2 cores
    python benchmarks/auto_weight.py --threads 1 --only MR
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ScoreReconLib import parameter_choice as PC  # noqa: E402
from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.noise import estimate_noise_std, looks_noise_free  # noqa: E402
from ScoreReconLib.operators import build_operator  # noqa: E402
from ScoreReconLib.parameter_choice import DISCREPANCY_FACTOR, NOISE_FREE_LEVEL  # noqa: E402

VALIDATION = {
    "CT": ["heldout/ct/pydicom_ct_small.nrrd", "heldout/ct/pydicom_data_spine_ct.nrrd", "ct/invesalius_cranium.nrrd"],
    "MR": ["heldout/mri/pydicom_mr_small.nrrd", "heldout/mri/pydicom_data_shoulder_mr.nrrd", "mri/colin27_t1.nrrd"],
}
NOISE = {"CT": 0.01, "MR": 0.001}
GRID = [float(f"{10 ** e:.3g}") for e in np.arange(-6.5, -0.9, 0.5)]
TAUS = {"CT": (0.7, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2), "MR": (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)}
OP_TASK = {"sparse23": "sparse-ct", "sparse8": "sparse-ct", "limited90": "limited-angle-ct", "metal": "metal-ct",
           "mri4x": "mri-1d", "mri8x": "mri-1d", "mri8x-poisson": "mri-2d"}


def grid_records(modality: str, data: Path) -> list[dict]:
    method, kw = ("tv", {}) if modality == "CT" else ("cs", {"regularizer": "tv"})
    out = []
    for rel in VALIDATION[modality]:
        s = G.load_subject(data / rel, modality, "validation", 1, ct_normalization())[0]
        for task in G.TASKS[modality]:
            for noise in (NOISE[modality], 0.0):
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise, **task.opts())
                sigma_est = float(estimate_noise_std(c.op, c.y))
                signal_floor = bool(looks_noise_free(c.op, c.y))
                m = int(torch.broadcast_to(c.op.mask > 0, c.y.shape).sum())
                for w in GRID:
                    x = classical_reconstruct(method, c.y, c.op, weight=w, **kw)
                    r = c.op.mask_apply(c.op.A(x) - c.y)
                    p, q = score_slices(x, c.x, c.score_mask).means
                    out.append({"image": s.name, "task": task.key, "noise": noise, "weight": w, "psnr": p, "ssim": q,
                                "residual": float((r.abs() ** 2).sum()) / m, "sigma_est": sigma_est,
                                "sigma_true": noise * float(c.y.abs().max()), "peak": float(c.y.abs().max()),
                                "signal_floor": signal_floor})
                best = max((r for r in out if r["image"] == s.name and r["task"] == task.key
                            and r["noise"] == noise), key=lambda r: r["psnr"])
                print(f"[{time.strftime('%H:%M:%S')}] {s.name} {task.key} noise {noise}: best w {best['weight']:.3g} "
                      f"{best['psnr']:.2f} dB, σ̂ {sigma_est:.4g} (true {best['sigma_true']:.4g})", flush=True)
    return out


def cases(records: list[dict], noisy: bool) -> dict:
    out: dict = {}
    for r in records:
        if (r["noise"] > 0) == noisy:
            out.setdefault((r["image"], r["task"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["weight"]) for k, v in out.items()}


#: views of the sparse-view tasks, whose noise-free weight goes by the number of views
#: (``parameter_choice.NOISE_FREE_WEIGHT_BY_VIEWS``)
VIEWS = {"sparse23": 23, "sparse8": 8}
#: the key of each task's noise-free weight: the operator kind, and for sparse-view CT its number of views
FLOOR_KEY = {t: f"{kind}, {VIEWS[t]} views" if t in VIEWS else kind for t, kind in OP_TASK.items()}


def shipped_floor(task: str) -> float:
    """The noise-free weight the library ships for ``task``."""
    if task in VIEWS:
        return PC.noise_free_weight(build_operator(OP_TASK[task], 128, views=VIEWS[task]), "tv")
    return PC.NOISE_FREE_WEIGHT.get(OP_TASK[task], float("nan"))


def noise_free_weights(records: list[dict]) -> dict[str, tuple[float, float, float]]:
    """{FLOOR_KEY: (weight, mean loss, max loss)} over the noise-free cases."""
    out = {}
    cs = cases(records, noisy=False)
    for op_task in dict.fromkeys(FLOOR_KEY[k[1]] for k in cs):
        mine = [v for k, v in cs.items() if FLOOR_KEY[k[1]] == op_task]
        loss = {w: [max(r["psnr"] for r in v) - next(r["psnr"] for r in v if r["weight"] == w) for v in mine]
                for w in GRID}
        w = min(loss, key=lambda w: np.mean(loss[w]))
        out[op_task] = (w, float(np.mean(loss[w])), float(np.max(loss[w])))
    return out


def rule_weight(rs: list[dict], floor: float, tau: float, level: float) -> float:
    """log10 of the weight the rule picks, read off the grid records ``rs`` of one case."""
    lw = np.log10([r["weight"] for r in rs])
    sigma = rs[0]["sigma_est"]
    lf = math.log10(floor)
    if sigma <= level * rs[0]["peak"] or sigma <= 0 or rs[0].get("signal_floor"):
        return lf
    lr = np.log10(np.maximum([r["residual"] / sigma**2 for r in rs], 1e-30))
    t = math.log10(tau)
    r_floor = float(np.interp(lf, lw, lr))
    if r_floor >= t:
        return lf
    above = [i for i in range(len(lw)) if lw[i] > lf and lr[i] >= t]
    if not above:
        return float(lw[-1])
    i = above[0]
    w0, r0 = (lf, r_floor) if lw[i - 1] < lf else (lw[i - 1], lr[i - 1])
    return float(w0 + (t - r0) / (lr[i] - r0) * (lw[i] - w0))


def rule_losses(records: list[dict], floors: dict, tau: float, level: float, noisy: bool) -> list[tuple]:
    out = []
    for (image, task), rs in cases(records, noisy).items():
        floor = floors[FLOOR_KEY[task]]
        if noisy and OP_TASK[task] in PC.NOISE_FREE_WEIGHT_BY_VIEWS:  # as choose_weight: the kind's one weight
            floor = PC.NOISE_FREE_WEIGHT[OP_TASK[task]]
        lw = rule_weight(rs, floor, tau, level)
        p = float(np.interp(lw, np.log10([r["weight"] for r in rs]), [r["psnr"] for r in rs]))
        best = max(rs, key=lambda r: r["psnr"])
        out.append((image, task, best["weight"], best["psnr"], 10**lw, p, best["psnr"] - p))
    return out


def markdown(modality: str, records: list[dict]) -> str:
    nf = noise_free_weights(records)
    floors = {k: v[0] for k, v in nf.items()}
    level = NOISE_FREE_LEVEL[modality]
    lines = [f"**{modality}** (validation: {', '.join(Path(p).name for p in VALIDATION[modality])}; noise "
             f"{NOISE[modality]:g} × max|y|)", "",
             "Noise-free weight per operator (grid weight with the least mean loss on the noise-free cases):", "",
             "| task | chosen weight | mean loss dB | max loss dB | shipped (NOISE_FREE_WEIGHT, _BY_VIEWS) |",
             "|---|---|---|---|---|"]
    task_of = {key: task for task, key in FLOOR_KEY.items()}
    for k, (w, mean, mx) in nf.items():
        lines.append(f"| {k} | {w:.3g} | {mean:.2f} | {mx:.2f} | {shipped_floor(task_of[k]):.3g} |")
    lines += ["", "Discrepancy factor τ (rule: the noise-free weight, raised until residual = τ σ̂²; PSNR loss against "
              "the best grid weight):", "", "| τ | noisy mean loss dB | noisy max | noise-free mean | noise-free max |",
              "|---|---|---|---|---|"]
    for tau in TAUS[modality]:
        a = [x[-1] for x in rule_losses(records, floors, tau, level, True)]
        b = [x[-1] for x in rule_losses(records, floors, tau, level, False)]
        mark = " (shipped)" if abs(tau - DISCREPANCY_FACTOR[modality]) < 1e-9 else ""
        lines.append(f"| {tau:g}{mark} | {np.mean(a):.2f} | {np.max(a):.2f} | {np.mean(b):.2f} | {np.max(b):.2f} |")
    lines += ["", f"Per case at the shipped τ = {DISCREPANCY_FACTOR[modality]:g} (σ̂ / true σ shown for noisy cases):",
              "", "| image | task | noise | best weight | best PSNR | rule weight | rule PSNR | loss dB | σ̂ / σ | "
                  "looks noise-free |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for noisy in (True, False):
        rows = rule_losses(records, floors, DISCREPANCY_FACTOR[modality], level, noisy)
        for image, task, wb, pb, wr, pr, loss in rows:
            r0 = next(r for r in records if r["image"] == image and r["task"] == task and (r["noise"] > 0) == noisy)
            ratio = f"{r0['sigma_est'] / r0['sigma_true']:.2f}" if noisy else "–"
            floor = "–" if "signal_floor" not in r0 else ("yes" if r0["signal_floor"] else "no")
            lines.append(f"| {image} | {task} | {'noisy' if noisy else 'noise-free'} | {wb:.3g} | {pb:.2f} | "
                         f"{wr:.3g} | {pr:.2f} | {loss:.2f} | {ratio} | {floor} |")
    return "\n".join(lines)


def main() -> None:
    _setup.modality_benchmark(__doc__.splitlines()[0], "auto-weight-validation", "auto-weight-validation.json",
                              lambda modality, data, args: grid_records(modality, data), markdown)

if __name__ == "__main__":
    main()
