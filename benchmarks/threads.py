"""Wall time of one reconstruct run per --threads setting, on an idle or a loaded machine (issue 20, item 1).

Simulates the shipped CT head sample (sparse-ct, 23 views, 1 % noise), then times
``scorerecon reconstruct --method score`` (the model's recommended settings) in a fresh process for each
thread count — the load-aware default (no --threads), 1, and every power of two up to the usable cores —
``--repeats`` times each, interleaved. The 1-minute load average before each run and the default's choice
are recorded. Run it once on an idle machine and once while other work keeps the cores busy (``--label``);
each run adds its rows to the "threads" section of RESULTS.md.

    python benchmarks/threads.py --label idle
    python benchmarks/threads.py --label "loaded (2 benchmark processes)"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from ScoreReconLib.threads import default_threads, usable_cores  # noqa: E402

SECTION = "threads"


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="what the machine was doing, e.g. idle")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "threads.json"))
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    exe = [sys.executable, "-m", "ScoreReconLib"]
    counts = [None, 1] + [c for c in (2, 4, 8, 16) if c <= usable_cores()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        meas = Path(tmp) / "m.npz"
        subprocess.run(exe + ["simulate", "--task", "sparse-ct", "--views", "23", "--noise", "0.01", "--input",
                              str(ROOT / "Resources" / "samples" / "ct_head_sample.nrrd"), "--output", str(meas)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        times: dict = {c: [] for c in counts}
        loads: dict = {c: [] for c in counts}
        chosen = []
        for _ in range(args.repeats):
            for c in counts:
                loads[c].append(os.getloadavg()[0])
                if c is None:
                    chosen.append(default_threads())
                cmd = exe + ["reconstruct", "--method", "score", "--input", str(meas), "--output",
                             str(Path(tmp) / "r.nrrd"), "--progress-format", "none"]
                times[c].append(timed(cmd + ([] if c is None else ["--threads", str(c)]), env))
        for c in counts:
            rows.append({"label": args.label, "threads": "default" if c is None else c,
                         "chosen": chosen if c is None else None, "seconds": times[c],
                         "load": loads[c], "cores": usable_cores()})
    saved = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else []
    saved = [r for r in saved if r["label"] != args.label] + rows
    Path(args.json).write_text(json.dumps(saved, indent=1))
    lines = ["Wall seconds of `scorerecon reconstruct --method score` on the shipped CT head sample (sparse-ct, "
             "23 views, 1 % noise; the model's recommended settings), a fresh process per run, median of the "
             "repeats. *default*: no `--threads` (the idle cores, at most 8); the count it chose is shown.", "",
             "| machine state | --threads | seconds (median) | runs | load average before | default chose |",
             "|---|---|---|---|---|---|"]
    for r in saved:
        lines.append(f"| {r['label']} ({r['cores']} cores) | {r['threads']} | {statistics.median(r['seconds']):.1f} | "
                     f"{', '.join(f'{s:.1f}' for s in r['seconds'])} | "
                     f"{', '.join(f'{x:.1f}' for x in r['load'])} | "
                     f"{', '.join(map(str, r['chosen'])) if r['chosen'] else '–'} |")
    cmd = "python benchmarks/threads.py " + " ".join(f'"{a}"' if " " in a else a for a in sys.argv[1:])
    _results.update_section(SECTION, "\n".join(lines), cmd)


if __name__ == "__main__":
    main()
