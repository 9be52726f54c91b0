"""MRI as scanners produce it (issue 23): the noise estimate, the phase estimate, the weight floor of real-valued
reconstructions with an estimated phase, and the project's methods side by side with BART on the same files.

Data: every MRI subject's slice that ``benchmarks/generalization.py`` uses, 128², simulated as
``ScoreReconLib.measurement.simulate_kspace`` does by default (a smooth image phase, receive-coil maps with compact
support for 8 coils, one noise σ per acquisition relative to the image's k-space peak) on the **fine grid** (the
signal received on a 256² or native grid and its k-space cropped to 128²: not the operator that reconstructs it).
Tasks: 4× 1-D equispaced (8 % centre), 8× 1-D (4 % centre), 8× 2-D Poisson disc; single-coil and 8 coils; noise
0.1 % and noise-free. The files carry the true maps and the phase estimated from the k-space centre.

Sections of ``benchmarks/RESULTS.md`` (``--part``):

- ``noise`` → *mri-realism-noise*: the noise estimate against the true σ on every subject (validation and test).
- ``phase`` → *mri-realism-phase*: RMS error (rad) of the estimated phase, square centre vs whole readout.
- ``floor`` → *mri-realism-floor*: validation subjects only: CS-TV on a weight grid with the estimated phase;
  the weight with the best mean PSNR per mask kind is the floor of phase-estimated operators
  (``ScoreReconLib.parameter_choice.NOISE_FREE_WEIGHT``, keys ``mri-1d-phase`` / ``mri-2d-phase``).
- ``peers`` → *mri-realism-peers*: test subjects only: zero-filled, SENSE with the true maps, with ESPIRiT maps
  (sigpy when installed; BART's ``ecalib`` with crop 0 and with its default crop), TV / CS automatic and best
  grid weight, the score default, and BART 0.8 ``pics`` (L1 wavelet, TV, L1 wavelet with ``-c``) at their best
  grid weight; seconds per slice. BART is optional (``--install-bart``; the BART rows are skipped with a line
  when it is missing).

    python benchmarks/mri_realism.py --threads 1 --part noise phase floor      # ~10 min on this 2-core CPU
    python benchmarks/mri_realism.py --threads 1 --part peers --install-bart   # ~30 min
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _results  # noqa: E402
import bart_peer  # noqa: E402
import generalization as G  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from auto_weight import VALIDATION  # noqa: E402

from ScoreReconLib.baselines import classical_reconstruct  # noqa: E402
from ScoreReconLib.coils import (  # noqa: E402
    _calibration_kspace,
    calibration_width,
    espirit_maps,
    phase_inconsistency,
    sigpy_available,
)
from ScoreReconLib.data import ct_normalization  # noqa: E402
from ScoreReconLib.measurement import phase_error, simulate_kspace  # noqa: E402
from ScoreReconLib.metrics import score_slices  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402
from ScoreReconLib.noise import estimate_noise_std, looks_noise_free  # noqa: E402
from ScoreReconLib.operators.mri import ifft2c  # noqa: E402
from ScoreReconLib.operators.multicoil import MultiCoilMRI  # noqa: E402
from ScoreReconLib.parameter_choice import choose_weight, weight_kind  # noqa: E402
from ScoreReconLib.reconstruction import reconstruct  # noqa: E402

TEST = ["heldout/mri/itk_t1_head.nrrd", "heldout/mri/pydicom_data_abdomen_mr.nrrd"]
SIZE = 128
NOISE = 0.001
COILS = (1, 8)
GRID = [float(f"{10 ** e:.3g}") for e in np.arange(-5.0, -0.9, 0.5)]
PARTS = ("noise", "phase", "floor", "peers")


def cases(data: Path, rels: list[str], role: str, noises=(NOISE, 0.0)):
    """(subject slice, task, coils, noise, acquisition) for every combination, simulated on the fine grid."""
    for rel in rels:
        s = G.load_subject(data / rel, "MR", role, 1, ct_normalization())[0]
        x = s.at(SIZE)
        fine = s.at(G.fine_size(s, SIZE))
        for task in G.TASKS["MR"]:
            opts = task.opts()
            for coils in COILS:
                for noise in noises:
                    seed = G.case_seed(s, task)
                    acq = simulate_kspace(x, coils=coils, acceleration=float(opts["acceleration"]),
                                          center_fraction=float(opts.get("center_fraction", 0.08)),
                                          mask=opts.get("mask", "equispaced"), noise=noise, seed=seed,
                                          noise_seed=seed + 1, fine=fine)
                    yield s, x, task, coils, noise, acq


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- parts
def part_noise(data: Path) -> list[dict]:
    out = []
    for role, rels in (("validation", VALIDATION["MR"]), ("test", TEST)):
        for s, _x, task, coils, noise, acq in cases(data, rels, role):
            est = estimate_noise_std(acq.operator, acq.y)
            peak = float(acq.y.abs().max())
            out.append({"role": role, "image": s.name, "task": task.key, "coils": coils, "noise": noise,
                        "sigma": acq.noise_std[0], "estimate": est, "peak": peak,
                        "looks_noise_free": bool(looks_noise_free(acq.operator, acq.y))})
            log(f"noise {s.name} {task.key} {coils}c {noise:g}: σ {acq.noise_std[0]:.4g} estimate {est:.4g}")
    return out


def part_phase(data: Path) -> list[dict]:
    out = []
    for role, rels in (("validation", VALIDATION["MR"]), ("test", TEST)):
        for s, x, task, coils, _noise, acq in cases(data, rels, role, noises=(NOISE,)):
            op = acq.operator
            lam = op.mask[0, 0]
            width = calibration_width(lam)
            low = ifft2c(_calibration_kspace(acq.y, width))
            square = torch.angle((op.coil_maps.conj() * low).sum(dim=1, keepdim=True)).float()
            sq = MultiCoilMRI(op.coil_maps, lam, square)
            out.append({"role": role, "image": s.name, "task": task.key, "coils": coils, "width": width,
                        "readout": acq.phase_error[0],
                        "square": phase_error(sq, acq.true_maps, acq.true_phase, x)[0]})
            log(f"phase {s.name} {task.key} {coils}c: readout {acq.phase_error[0]:.3f} square {out[-1]['square']:.3f}")
    return out


def part_floor(data: Path) -> list[dict]:
    out = []
    for s, x, task, coils, noise, acq in cases(data, VALIDATION["MR"], "validation"):
        row = {"image": s.name, "task": task.key, "coils": coils, "noise": noise, "kind": weight_kind(acq.operator),
               "rho": phase_inconsistency(acq.y, acq.operator.mask, acq.operator.maps), "psnr": {}}
        for w in GRID:
            img = classical_reconstruct("cs", acq.y, acq.operator, weight=w, regularizer="tv")
            row["psnr"][str(w)] = score_slices(img, x).psnr
        out.append(row)
        best = max(row["psnr"], key=row["psnr"].get)
        log(f"floor {s.name} {task.key} {coils}c {noise:g}: best w {best} {row['psnr'][best]:.2f} dB")
    return out


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def score_of(img: torch.Tensor, x: torch.Tensor) -> dict:
    sc = score_slices(img.reshape(1, 1, SIZE, SIZE).float(), x)
    return {"psnr": sc.psnr, "ssim": sc.ssim}


def put(m: dict, name: str, fn, x: torch.Tensor) -> None:
    """Run ``fn`` (→ an image), score its magnitude against ``x`` and time it into ``m[name]``."""
    img, sec = timed(fn)
    m[name] = {**score_of(torch.as_tensor(np.abs(np.asarray(img))).float(), x), "seconds": sec}


def peers_case(x: torch.Tensor, coils: int, acq, prior, bart) -> tuple[dict, dict]:
    """Every method of the *peers* table on one acquisition → ({method: scores}, {"cs": {weight: scores}}: the CS-TV
    grid the leave-one-subject-out weight is read from)."""
    op, y = acq.operator, acq.y
    m: dict = {}
    grids: dict = {}
    put(m, "zero-filled", lambda: classical_reconstruct("zero-filled", y, op), x)
    put(m, "sense (true maps)", lambda: classical_reconstruct("sense", y, op), x)
    lam = op.mask[0, 0]
    width = calibration_width(lam)
    if coils > 1 and sigpy_available() and width >= 8:  # sigpy's ESPIRiT needs a centre of 8 lines
        maps = espirit_maps(y, width)
        put(m, "sense (sigpy ESPIRiT maps)", lambda: classical_reconstruct("sense", y, MultiCoilMRI(maps, lam)), x)
    for method in ("tv", "cs"):
        t0 = time.perf_counter()
        choice = choose_weight(y, op, method)
        img = classical_reconstruct(method, y, op, weight=choice.weight)
        m[f"{method} auto"] = {**score_of(img, x), "seconds": time.perf_counter() - t0, "weight": choice.weight}
        grid = {w: score_of(classical_reconstruct(method, y, op, weight=w), x) for w in GRID}
        wb = max(grid, key=lambda w: grid[w]["psnr"])
        m[f"{method} best"] = {**grid[wb], "weight": wb}
        grids[method] = {str(w): v for w, v in grid.items()}
    res = reconstruct(y, op, prior, seed=0)
    m["score default"] = {**score_of(res.mean, x), "seconds": res.seconds}
    if bart is None:
        return m, grids
    yn = y[0].numpy()
    if coils > 1:
        for label, crop in (("crop 0", 0.0), ("default crop", None)):
            bmaps, _ = bart_peer.ecalib(yn, width, crop, bart=bart, threads=1)
            put(m, f"sense (BART ecalib, {label})", lambda bm=bmaps: bart_peer.sense(yn, bm, bart=bart)[0], x)
    maps_np = op.maps[0].numpy()  # the file's maps with the estimated phase folded in
    for label, reg, real in (("BART pics wavelet", "wavelet", False), ("BART pics TV", "tv", False),
                             ("BART pics wavelet -c", "wavelet", True)):
        best = None
        for w in GRID:
            img, sec = bart_peer.pics(yn, maps_np, reg, w, real=real, bart=bart, threads=1)
            sc = {**score_of(torch.as_tensor(np.abs(img)).float(), x), "seconds": sec, "weight": w}
            if best is None or sc["psnr"] > best["psnr"]:
                best = sc
        m[f"{label} (best weight)"] = best
    return m, grids


def part_peers(data: Path, bart) -> list[dict]:
    prior = load_prior("default-mri")
    out = []
    for s, x, task, coils, noise, acq in cases(data, TEST, "test"):
        m, grids = peers_case(x, coils, acq, prior, bart)
        out.append({"image": s.name, "task": task.key, "coils": coils, "noise": noise, "methods": m, "grids": grids})
        log(f"peers {s.name} {task.key} {coils}c {noise:g}: " + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in m.items()))
    return out


# ------------------------------------------------------------------------------------------ tables
def md_noise(rs: list[dict]) -> str:
    lines = ["Noise estimate (`ScoreReconLib.noise.estimate_noise_std`) against the true σ, 128², fine grid, smooth "
             "phase. Noisy rows: estimate / σ (goal 0.8–1.2); noise-free rows: estimate as % of the peak |y| "
             "(goal < 0.1 %) and whether the data were recognised as noise-free.", "",
             "| role | image | task | coils | estimate / σ at 0.1 % | noise-free: estimate (% of peak) | "
             "recognised noise-free |", "|---|---|---|---|---|---|---|"]
    keyed = {(r["image"], r["task"], r["coils"], r["noise"]): r for r in rs}
    for r in rs:
        if r["noise"] == 0:
            continue
        c = keyed.get((r["image"], r["task"], r["coils"], 0.0))
        free = f"{100 * c['estimate'] / c['peak']:.3f}" if c else "—"
        lines.append(f"| {r['role']} | {r['image']} | {r['task']} | {r['coils']} | {r['estimate'] / r['sigma']:.2f} | "
                     f"{free} | {'yes' if c and c['looks_noise_free'] else 'no'} |")
    noisy = [r["estimate"] / r["sigma"] for r in rs if r["noise"] > 0]
    free = [100 * r["estimate"] / r["peak"] for r in rs if r["noise"] == 0]
    lines += ["", f"Noisy: estimate / σ from {min(noisy):.2f} to {max(noisy):.2f} over {len(noisy)} cases; "
              f"noise-free: {min(free):.3f}–{max(free):.3f} % of the peak."]
    return "\n".join(lines)


def md_phase(rs: list[dict]) -> str:
    lines = ["RMS error (rad) of the phase a file carries, over pixels above 10 % of the maximum "
             "(`measurement.phase_error`: the phase the real-valued reconstructions are left with). *square*: the "
             "Hann-windowed square k-space centre (before); *readout*: with a 1-D mask the centre columns over the "
             "whole readout (`coils.absorb_phase` now).", "",
             "| role | image | task | coils | centre width | square | readout |", "|---|---|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['role']} | {r['image']} | {r['task']} | {r['coils']} | {r['width']} | {r['square']:.3f} | "
                     f"{r['readout']:.3f} |")
    return "\n".join(lines)


def grid_psnr(grid: dict, w: float) -> float:
    """PSNR at weight ``w`` read off a {weight: PSNR} grid, log-linear in the weight, clamped at the ends."""
    ws = np.array([float(k) for k in grid])
    return float(np.interp(np.log10(np.clip(w, ws.min(), ws.max())), np.log10(ws), np.array(list(grid.values()))))


def phase_rule_losses(rs: list[dict]) -> list[str]:
    """Mean / largest loss against each case's best grid weight of the one-coil phase rules, all validation cases."""
    sub = [r for r in rs if r["kind"].endswith("-phase")]
    lines = []
    for label, weight in ([(f"{c:g} · ρ²", lambda r, c=c: c * r["rho"] ** 2) for c in (0.5, 1.0, 2.0)]
                          + [(f"fixed {w:g}", lambda r, w=w: w) for w in (1e-2, 3.16e-2)]):
        loss = [max(r["psnr"].values()) - grid_psnr(r["psnr"], weight(r)) for r in sub]
        lines.append(f"| {label} | {np.mean(loss):.2f} | {np.max(loss):.2f} |")
    return lines


def floor_choice(rs: list[dict]) -> dict[str, float]:
    """Per weight kind, the grid weight with the best mean PSNR over the noise-free validation cases (the floor the
    discrepancy search raises from, as ``benchmarks/auto_weight.py`` chose the zero-phase floors)."""
    out = {}
    for kind in sorted({r["kind"] for r in rs}):
        sub = [r for r in rs if r["kind"] == kind and r["noise"] == 0]
        mean = {w: float(np.mean([r["psnr"][w] for r in sub])) for w in sub[0]["psnr"]}
        out[kind] = float(max(mean, key=mean.get))
    return out


def md_floor(rs: list[dict]) -> str:
    ws = list(rs[0]["psnr"])
    lines = ["CS-TV PSNR (dB) on the weight grid with the estimated phase, validation subjects only, fine-grid "
             "measurement (no inverse crime) (bold: each "
             "row's best). The best mean weight over the noise-free rows of a kind is its floor "
             "(`parameter_choice.NOISE_FREE_WEIGHT`, kind from `weight_kind`: `-phase` one coil with an estimated "
             "phase, `-coils` several coils).", "",
             "| image | task | coils | noise | ρ | " + " | ".join(ws) + " |", "|---" * (5 + len(ws)) + "|"]
    for r in rs:
        best = max(r["psnr"], key=r["psnr"].get)
        cells = [f"**{v:.2f}**" if w == best else f"{v:.2f}" for w, v in r["psnr"].items()]
        lines.append(f"| {r['image']} | {r['task']} | {r['coils']} | {r['noise']:g} | {r['rho']:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "One coil with an estimated phase: the rules for its weight, PSNR loss (dB) against each case's best "
              f"grid weight over the {sum(r['kind'].endswith('-phase') for r in rs)} validation cases, noisy and "
              "noise-free (ρ: `coils.phase_inconsistency`; the library uses `PHASE_WEIGHT_FACTOR` · ρ², at least the "
              "zero-phase floor):", "", "| rule | mean loss | largest loss |", "|---|---|---|"] + phase_rule_losses(rs)
    for kind, w in floor_choice(rs).items():
        if kind.endswith("-phase"):
            continue
        sub = [r for r in rs if r["kind"] == kind and r["noise"] == 0]
        mean = {k: float(np.mean([r["psnr"][k] for r in sub])) for k in ws}
        lines.append(f"\n{kind}: mean noise-free PSNR by weight " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
                     + f" → floor **{w:g}**.")
    return "\n".join(lines)


def add_loso(rs: list[dict], floor: list[dict]) -> None:
    """``cs LOSO`` of every *peers* record: the CS-TV grid weight with the best mean PSNR over the other subjects
    (the validation subjects' *floor* grids and the other test subject's) for the same task, coils and noise."""
    for r in rs:
        if "cs" not in r.get("grids", {}):
            continue
        same = [(q["image"], q["psnr"]) for q in floor
                if (q["task"], q["coils"], q["noise"]) == (r["task"], r["coils"], r["noise"])]
        same += [(q["image"], {w: v["psnr"] for w, v in q["grids"]["cs"].items()}) for q in rs
                 if (q["task"], q["coils"], q["noise"]) == (r["task"], r["coils"], r["noise"])
                 and q["image"] != r["image"] and "cs" in q.get("grids", {})]
        weights = list(r["grids"]["cs"])
        w = max(weights, key=lambda k: float(np.mean([grid[k] for _, grid in same])))
        r["methods"]["cs LOSO"] = {**r["grids"]["cs"][w], "weight": float(w)}


def md_peers(rs: list[dict], bart_line: str, floor: list[dict]) -> str:
    add_loso(rs, floor)
    names = list(dict.fromkeys(k for r in rs for k in r["methods"] if k != "cs LOSO"))
    if any("cs LOSO" in r["methods"] for r in rs):
        names.insert(names.index("cs best") + 1, "cs LOSO")
    lines = [f"Test subjects only, 128², fine-grid measurement (the signal received on a finer grid: no inverse "
             "crime), smooth image phase, PSNR dB / SSIM (seconds per slice; weighted columns: the weight, and for "
             "best weights the seconds of that solve). *auto*: the library's choice from the data; *LOSO*: the grid "
             "weight best on average over the other subjects (the three validation subjects, the other test "
             "subject), same task, coils and noise; *best*: the oracle grid weight for this image (tv and cs are "
             f"both TV here: cs's default regulariser). {bart_line}", ""]
    for coils in COILS:
        sub = [r for r in rs if r["coils"] == coils]
        if not sub:
            continue
        cols = [n for n in names if any(n in r["methods"] for r in sub)]
        lines += [f"**{coils} coil(s)**", "", "| image | task | noise | " + " | ".join(cols) + " |",
                  "|---" * (3 + len(cols)) + "|"]
        for r in sub:
            cells = []
            for n in cols:
                v = r["methods"].get(n)
                if v is None:
                    cells.append("—")
                    continue
                secs = f"{v['seconds']:.1f} s" if "seconds" in v else ""
                weighted = "best" in n or "LOSO" in n
                extra = f" ({v['weight']:g}; {secs})" if weighted and secs else (
                    f" ({v['weight']:g})" if weighted else (f" ({secs})" if secs else ""))
                cells.append(f"{v['psnr']:.2f} / {v['ssim']:.3f}{extra}")
            lines.append(f"| {r['image']} | {r['task']} | {r['noise']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "mri_realism.json"))
    ap.add_argument("--from-json", action="store_true", help="re-write the tables from the saved records")
    bart_peer.add_bart_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.json)
    saved = json.loads(path.read_text()) if path.exists() else {}
    data = Path(args.data)
    cmd = "python benchmarks/mri_realism.py " + " ".join(sys.argv[1:])
    for part in args.part:
        t0 = time.time()
        bart_line = ""
        if not args.from_json:
            if part == "peers":
                bart = bart_peer.bart_from_args(args)
                saved["bart"] = "BART 0.8 rows included." if bart is not None else (
                    "BART is not installed here: its rows are skipped (run with --install-bart).")
                saved[part] = part_peers(data, bart)
            else:
                saved[part] = {"noise": part_noise, "phase": part_phase, "floor": part_floor}[part](data)
            saved.setdefault("commands", {})[part] = cmd.replace("--from-json", "").strip()
            saved.setdefault("minutes", {})[part] = round((time.time() - t0) / 60, 1)
            path.write_text(json.dumps(saved))
        if part == "peers":
            bart_line = saved.get("bart", "")
        body = {"noise": md_noise, "phase": md_phase, "floor": md_floor}[part](saved[part]) if part != "peers" \
            else md_peers(saved[part], bart_line, saved.get("floor", []))
        minutes = saved.get("minutes", {}).get(part, (time.time() - t0) / 60)
        _results.update_section(f"mri-realism-{part}", f"{body}\n\nWall time {minutes:.1f} min.",
                                saved.get("commands", {}).get(part, cmd))


if __name__ == "__main__":
    main()
