"""The score method's noise-dependent settings read against the discrepancy principle, on validation subjects only.

The automatic TV / CS weight (ScoreReconLib.parameter_choice) leaves a measured-row residual ‖Λ(A x − y)‖² / m
of about τ σ_y². The same principle checks the score method's final image: below about half the noise it has
copied the noise into the image, far above it the prior has overridden measured signal. For every validation
image and task, noisy (CT 1 %, MRI 0.1 % of max|y|, as benchmarks/generalization.py) and noise-free, 128², same
operator, this measures PSNR / SSIM and that residual (in units of σ_y², the library's estimate) for:

- the classical start alone (auto TV / CS), and the score default (the model's recommended settings);
- noisy data: the final merge set to λ = 1 (the paper's hard merge) instead of the noise-aware default, the
  sampler's start time ``t_start`` halved and doubled, and λ = 1 throughout (0.5 where the model's λ is 1);
- noise-free data: no final merge (λ_final = 0), which shows the residual the prior alone leaves.

The residual band of ``check_discrepancy`` (``DISCREPANCY_BAND``) is read off these records. Validation subjects
as benchmarks/auto_weight.py; the held-out test subjects are never read. Writes the "score-discrepancy-validation"
section of RESULTS.md and the records to benchmarks/score-discrepancy.json.

    python benchmarks/score_discrepancy.py --threads 1            # CT ~35 min, MRI ~8 min on 2 cores
    python benchmarks/score_discrepancy.py --threads 1 --only MR
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import generalization as G  # noqa: E402
import torch  # noqa: E402
from auto_weight import NOISE, VALIDATION  # noqa: E402

from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.noise import estimate_noise_std  # noqa: E402
from ScoreReconLib.parameter_choice import DISCREPANCY_BAND, mean_residual, measured_count  # noqa: E402
from ScoreReconLib.reconstruction import recommended_samples, reconstruct, resolve_settings  # noqa: E402

MODELS = {"CT": "default-ct", "MR": "default-mri"}


def variants(settings, noisy: bool) -> list[tuple[str, dict]]:
    """(label, reconstruct() keyword arguments) of the settings compared; the default first."""
    if not noisy:
        return [("score default", {}), ("λ_final = 0", {"final_lam": 0.0})]
    t = float(settings.t_start)
    alt = 1.0 if float(settings.lam) < 1.0 else 0.5  # the other end of the data-consistency weight
    return [("score default", {}), ("λ_final = 1", {"final_lam": 1.0}),
            (f"t_start {t / 2:g}", {"t_start": t / 2}), (f"t_start {min(2 * t, 1.0):g}", {"t_start": min(2 * t, 1.0)}),
            (f"λ = {alt:g}", {"lam": alt})]


def case_records(modality: str, data: Path, seed: int) -> list[dict]:
    prior = load_prior(MODELS[modality])
    out = []
    for rel in VALIDATION[modality]:
        s = G.load_subject(data / rel, modality, "validation", 1, ct_normalization())[0]
        for task in G.TASKS[modality]:
            for noise in (NOISE[modality], 0.0):
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise, **task.opts())
                sigma = float(estimate_noise_std(c.op, c.y))
                m = measured_count(c.op, c.y)

                def rec(label: str, x: torch.Tensor, seconds: float, _c=c, _s=s, _task=task, _noise=noise,
                        _sigma=sigma, _m=m) -> dict:
                    _sc = score_slices(x, _c.x, _c.score_mask)
                    p, q = _sc.psnr, _sc.ssim
                    r = {"image": _s.name, "task": _task.key, "noise": _noise, "variant": label, "psnr": p, "ssim": q,
                         "residual": mean_residual(_c.op, x, _c.y, _m) / _sigma**2, "sigma_est": _sigma,
                         "sigma_true": _noise * float(_c.y.abs().max()), "seconds": seconds}
                    print(f"[{time.strftime('%H:%M:%S')}] {_s.name} {_task.key} noise {_noise:g} {label}: "
                          f"{p:.2f} dB, residual {r['residual']:.3g} σ̂²", file=sys.stderr, flush=True)
                    return r

                t0 = time.perf_counter()
                method, kw = ("tv", {}) if modality == "CT" else ("cs", {"regularizer": "tv"})
                x0 = classical_reconstruct(method, c.y, c.op, **kw)  # weight="auto"
                out.append(rec("classical start (auto)", x0, time.perf_counter() - t0))
                settings = resolve_settings("proximal", prior, task=task.task)
                samples = recommended_samples(prior, "proximal", task.task)
                for label, extra in variants(settings, noise > 0):
                    t0 = time.perf_counter()
                    res = reconstruct(c.y, c.op, prior, samples=samples, seed=seed + G.case_seed(s, task), **extra)
                    out.append(rec(label, res.mean, time.perf_counter() - t0))
    return out


def markdown(modality: str, records: list[dict]) -> str:
    name = "CT (TV start)" if modality == "CT" else "MRI (CS-TV start)"
    lines = [f"### {name}", "",
             "Mean over the validation images of each task; residual = ‖Λ(A x − y)‖² / m in units of σ̂² (the library's "
             "noise estimate; on noise-free data σ̂ is the estimate's floor, so residuals there are only relative).",
             "", "| task | noise | variant | PSNR | SSIM | residual (σ̂²), min–max |", "|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["task"], r["noise"], r["variant"]) for r in records)
    for task, noise, variant in keys:
        rs = [r for r in records if (r["task"], r["noise"], r["variant"]) == (task, noise, variant)]
        res = [r["residual"] for r in rs]
        lines.append(f"| {task} | {'noisy' if noise else 'noise-free'} | {variant} | "
                     f"{statistics.mean(r['psnr'] for r in rs):.2f} | {statistics.mean(r['ssim'] for r in rs):.3f} | "
                     f"{statistics.mean(res):.3g} ({min(res):.3g}–{max(res):.3g}) |")
    noisy_default = [r["residual"] for r in records if r["noise"] and r["variant"] == "score default"]
    hard = [r["residual"] for r in records if r["noise"] and r["variant"] == "λ_final = 1"]
    if noisy_default and hard:
        lines += ["", f"Noisy data: the score default leaves {min(noisy_default):.2f}–{max(noisy_default):.2f} σ̂² "
                      f"(band of `check_discrepancy`: {DISCREPANCY_BAND[0]:g}–{DISCREPANCY_BAND[1]:g}); the hard final "
                      f"merge {min(hard):.2f}–{max(hard):.2f} σ̂²."]
    return "\n".join(lines)


def main() -> None:
    _setup.modality_benchmark(
        __doc__.splitlines()[0], "score-discrepancy-validation", "score-discrepancy.json",
        lambda modality, data, args: case_records(modality, data, args.seed), markdown,
        lambda ap: ap.add_argument("--seed", type=int, default=0))

if __name__ == "__main__":
    main()
