"""Which rule chooses the TV / CS weight (ScoreReconLib.parameter_choice.WEIGHT_RULES), on validation subjects only.

Two rules are compared on every validation case, against the best weight of a half-decade grid (10^-6.5 … 10^-1,
PSNR against the truth, which no rule sees):

- *discrepancy*: the task's noise-free weight where the data look noise-free, else the discrepancy principle
  (the weight whose measured-row residual is τ σ̂², σ̂ the library's noise estimate);
- *cross-validation*: part of the measured views (CT) or outer k-space lines / points (MRI) held out in turn
  (``parameter_choice.cross_validated_weight``): the weight whose reconstructions from the rest best predict them.
  It needs no noise level. Metal CT has no units to hold out and is not part of the comparison.

Cases: CT — sparse view (23, 8 views) and 90° limited angle, 128², same operator, noisy (1 % of max|y|) and
noise-free; MRI — 4× and 8× 1-D, 8× Poisson, 128², both the plain simulation of the other tables (one coil, real
image, same operator) and the realistic one of ``benchmarks/mri_realism.py`` (smooth phase, 1 and 8 receive
coils, fine grid: no inverse crime), noisy (0.1 %) and noise-free. Each case is classed as the library classes it
(``parameter_choice.noise_class``: "noisy" or "noise-free" from the data alone), and the rule with the smaller mean
loss per modality and class is the one shipped in ``WEIGHT_RULES``. Validation subjects as
benchmarks/auto_weight.py; the held-out test subjects are never read. Writes the "weight-rule-validation" section
of RESULTS.md and the records to benchmarks/weight-rules.json.

    python benchmarks/weight_rules.py --threads 1 --only CT    # ~4 min on this 2-core CPU
    python benchmarks/weight_rules.py --threads 1 --only MR    # ~7 min
    python benchmarks/weight_rules.py --threads 1 --only MR --cv-min-held 8 --json /tmp/min-held.json  # a variant
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import generalization as G  # noqa: E402
import mri_realism as R  # noqa: E402
import torch  # noqa: E402
from auto_weight import GRID, NOISE, VALIDATION  # noqa: E402

from ScoreReconLib import parameter_choice as PC  # noqa: E402
from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.evaluation import make_case  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402

RULES = ("discrepancy", "cross-validation")


def _score(img: torch.Tensor, x: torch.Tensor, score_mask) -> float:
    return score_slices(img.abs().float() if img.is_complex() else img.float(), x, score_mask).psnr


def _with_rule(rule: str, y: torch.Tensor, op, method: str):
    """(choice, image, seconds) of ``choose_weight`` by ``rule`` whatever the data's noise class."""
    t0 = time.perf_counter()
    choice = PC.choose_weight(y, op, method, rule=rule)
    img = choice.image if choice.image is not None else classical_reconstruct(method, y, op, weight=choice.weight)
    return choice, img, time.perf_counter() - t0


def case_record(modality: str, name: str, task: str, setting: str, noise: float, op, y, x, score_mask) -> dict:
    method = "tv" if modality == "CT" else "cs"
    grid = {}
    for w in GRID:
        grid[str(w)] = _score(classical_reconstruct(method, y, op, weight=w), x, score_mask)
    rec = {"image": name, "task": task, "setting": setting, "noise": noise, "class": PC.noise_class(y, op),
           "grid": grid}
    for rule in RULES:
        choice, img, sec = _with_rule(rule, y, op, method)
        rec[rule] = {"weight": choice.weight, "rule": choice.rule, "psnr": _score(img, x, score_mask), "seconds": sec,
                     "curve": choice.curve}
    best = max(grid, key=grid.get)
    print(f"[{time.strftime('%H:%M:%S')}] {name} {task} {setting} noise {noise:g} ({rec['class']}): best {best} "
          f"{grid[best]:.2f} dB; " + "; ".join(f"{r} {rec[r]['weight']:.3g} {rec[r]['psnr']:.2f} dB" for r in RULES),
          flush=True)
    return rec


def records(modality: str, data: Path, args) -> list[dict]:
    out = []
    for rel in VALIDATION[modality]:
        s = G.load_subject(data / rel, modality, "validation", 1, ct_normalization())[0]
        for task in G.TASKS[modality]:
            if task.task == "metal-ct":
                continue
            for noise in (NOISE[modality], 0.0):
                c = make_case(s.name, s.at(128), task.task, seed=G.case_seed(s, task), noise=noise, **task.opts())
                out.append(case_record(modality, s.name, task.key, "same operator, 1 coil, real image", noise, c.op,
                                       c.y, c.x, c.score_mask))
    if modality == "MR":
        for s, x, task, coils, noise, acq in R.cases(data, VALIDATION["MR"], "validation"):
            out.append(case_record(modality, s.name, task.key, f"fine grid, {coils} coil(s), smooth phase", noise,
                                   acq.operator, acq.y, x, None))
    return out


def losses(rs: list[dict], rule: str) -> list[float]:
    return [max(r["grid"].values()) - r[rule]["psnr"] for r in rs]


def chosen_rules(records: list[dict]) -> dict[str, str]:
    """{noise class: the rule with the smaller mean loss} over ``records``."""
    out = {}
    for cls in dict.fromkeys(r["class"] for r in records):
        rs = [r for r in records if r["class"] == cls]
        out[cls] = min(RULES, key=lambda rule: statistics.mean(losses(rs, rule)))
    return out


def markdown(modality: str, records: list[dict]) -> str:
    lines = [f"**{modality}** (validation: {', '.join(Path(p).name for p in VALIDATION[modality])})", "",
             "PSNR loss (dB) against each case's best grid weight, by the class the library gives the data:", "",
             "| class | setting | cases | discrepancy: mean / max loss | cross-validation: mean / max loss | "
             "seconds (discrepancy / cross-validation) |", "|---|---|---|---|---|---|"]
    for cls in dict.fromkeys(r["class"] for r in records):
        for setting in [*dict.fromkeys(r["setting"] for r in records), "all"]:
            rs = [r for r in records if r["class"] == cls and setting in ("all", r["setting"])]
            if not rs:
                continue
            cells = [f"{statistics.mean(losses(rs, rule)):.2f} / {max(losses(rs, rule)):.2f}" for rule in RULES]
            sec = " / ".join(f"{statistics.mean(r[rule]['seconds'] for r in rs):.1f}" for rule in RULES)
            label = "**all**" if setting == "all" else setting
            lines.append(f"| {cls} | {label} | {len(rs)} | {cells[0]} | {cells[1]} | {sec} |")
    chosen = chosen_rules(records)
    lines += ["", "Chosen (smaller mean loss): " + ", ".join(f"{cls} → **{rule}**" for cls, rule in chosen.items())
              + f"; shipped `WEIGHT_RULES[\"{modality}\"]` = `{PC.WEIGHT_RULES[modality]}`.", "",
              "<details><summary>Every case</summary>", "",
              "| image | task | setting | noise | class | best grid weight (dB) | discrepancy rule: weight (dB) | "
              "cross-validation: weight (dB) |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        best = max(r["grid"], key=r["grid"].get)
        cells = [f"{r[rule]['weight']:.3g} ({r[rule]['psnr']:.2f}; {r[rule]['rule']})" for rule in RULES]
        lines.append(f"| {r['image']} | {r['task']} | {r['setting']} | {r['noise']:g} | {r['class']} | "
                     f"{float(best):.3g} ({r['grid'][best]:.2f}) | {cells[0]} | {cells[1]} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def _records(modality: str, data: Path, args) -> list[dict]:
    PC.CV_MIN_HELD = args.cv_min_held
    PC.CV_PROBE_ITERS = args.cv_probe_iters
    PC.CV_BOTTOM = args.cv_bottom
    return records(modality, data, args)


def _options(ap) -> None:
    ap.add_argument("--cv-min-held", type=int, default=PC.CV_MIN_HELD,
                    help="score more folds until this many units are held out in all (a variant; pass --json "
                         "elsewhere so that the shipped records stay)")
    ap.add_argument("--cv-probe-iters", type=int, default=PC.CV_PROBE_ITERS,
                    help="PDHG iterations per cross-validation probe (a variant, as --cv-min-held)")
    ap.add_argument("--cv-bottom", type=float, default=PC.CV_BOTTOM,
                    help="smallest weight cross-validation probes (a variant, as --cv-min-held)")


def main() -> None:
    _setup.modality_benchmark(__doc__.splitlines()[0], "weight-rule-validation", "weight-rules.json", _records,
                              markdown, _options)


if __name__ == "__main__":
    main()
