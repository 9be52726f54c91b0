"""Per-task summary of generalization*.json records: mean PSNR / SSIM per method (subjects weighted equally).

    python benchmarks/summarize_generalization.py benchmarks/generalization-ct.json [--methods "TV tuned (LOSO)" ...]
        [--subjects pydicom_head_ct.nrrd pydicom_data_abdomen_ct.nrrd]   # only these subjects (e.g. the test ones)

Prints a Markdown table (one row per task and setting) with the seconds per slice of each method.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

DEFAULT_METHODS = ("TV auto", "CS auto", "TV tuned (LOSO)", "CS tuned (LOSO)", "TV oracle (optimistic)",
                   "CS oracle (optimistic)", "ScoreRecon default", "ScoreRecon paper-sampler")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--subjects", nargs="*", default=None, help="only these subjects (file names)")
    args = ap.parse_args()
    records = []
    for path in args.json:
        records += json.load(open(path))["records"]
    methods = [m for m in (args.methods or DEFAULT_METHODS) if any(r["method"] == m for r in records)]
    cell: dict = defaultdict(lambda: defaultdict(list))
    secs: dict = defaultdict(list)
    for r in records:
        if args.subjects is not None and r["subject"] not in args.subjects:
            continue
        if r["method"] in methods and r.get("role", "test") != "validation":
            cell[(r["task_label"], r["setting"], r["size"])][(r["method"], r["subject"])].append((r["psnr"], r["ssim"]))
            secs[r["method"]].append(r.get("seconds") or 0.0)
    print("| task | setting | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for (task, setting, size), per in cell.items():
        row = []
        for m in methods:
            subj = [np.mean(v, axis=0) for (mm, _), v in per.items() if mm == m]
            row.append(f"{np.mean([s[0] for s in subj]):.2f} / {np.mean([s[1] for s in subj]):.3f}" if subj else "–")
        print(f"| {task} | {setting} {size}² | " + " | ".join(row) + " |")
    print()
    print("seconds per slice: " + ", ".join(f"{m} {np.mean(secs[m]):.1f}" for m in methods if secs[m]))


if __name__ == "__main__":
    main()
