"""Training speed of the score network: steps/s and peak memory at 64² and 128², batch 8.

Two measurements per device and size, both with the default network (channels 32,64,64, one res
block, attention at the lowest level, VE-SDE):

* ``step``: one optimisation step (forward, DSM loss, backward, clip, Adam, EMA) on a fixed batch;
* ``train()``: the whole :func:`ScoreReconLib.training.train` loop on a synthetic folder (sampling
  the batch, augmentation, logging, the final checkpoint), from its own timer.

Usage::

    python benchmarks/training.py                       # this machine (CPU, and CUDA if present)
    python benchmarks/training.py --json rows.json --no-write   # measure only, e.g. on a GPU box
    python benchmarks/training.py --include rows.json   # add rows measured elsewhere to RESULTS.md

Peak memory: CUDA ``max_memory_allocated``; CPU the process's peak resident set (``ru_maxrss``,
which only grows, so the 128² row includes everything before it).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import machine_description, update_section  # noqa: E402
from ScoreReconLib.networks import ScoreModel  # noqa: E402
from ScoreReconLib.sde import VESDE  # noqa: E402
from ScoreReconLib.training import EMA, TrainConfig, dsm_loss, train  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_step(size: int, batch: int, steps: int, device: torch.device, amp: bool) -> dict:
    """Steps/s of forward + backward + Adam + EMA on a fixed batch."""
    torch.manual_seed(0)
    model = ScoreModel(VESDE(sigma_max=0.4 * size)).to(device)
    ema = EMA(model, 0.999)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.rand(batch, 1, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> None:
        t = torch.rand(batch, device=device) * (1 - 1e-5) + 1e-5
        loss = dsm_loss(model, model.sde, x0, t, torch.randn_like(x0), amp=amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, i)

    for i in range(2):  # warm-up (allocator, kernels)
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {"mode": "step" + (" bf16" if amp else ""), "size": size, "batch": batch, "steps_per_s": 1 / dt,
            "ms_per_step": dt * 1000, "peak_mib": _peak_mib(device), "n": steps}


def bench_train_loop(size: int, batch: int, steps: int, device: torch.device) -> dict:
    """Steps/s of the full train() loop on a synthetic 20-slice volume (checkpoint only at the end)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    vol = np.full((20, size, size), -1000.0, np.float32)
    for k in range(20):
        vol[k][(xx / 0.8) ** 2 + (yy / 0.7) ** 2 < 1] = rng.uniform(-100, 100)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "vol.npy", vol)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        res = train(TrainConfig(data=tmp, output=str(Path(tmp) / "ckpt"), image_size=size, steps=steps,
                                batch_size=batch, modality="CT", device=str(device), show_progress=False,
                                checkpoint_every=0, log_every=max(1, steps // 4), warmup=1))
    return {"mode": "train()", "size": size, "batch": batch, "steps_per_s": res.steps / res.seconds,
            "ms_per_step": res.seconds / res.steps * 1000, "peak_mib": _peak_mib(device), "n": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "none"],
                    help="auto (CPU, plus CUDA when present), cpu, cuda, or none (only --include rows)")
    ap.add_argument("--cpu-steps", type=int, default=4, help="timed steps per CPU measurement")
    ap.add_argument("--cuda-steps", type=int, default=100, help="timed steps per CUDA measurement")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--include", nargs="*", default=[], help="JSON row files from other machines to add")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--note", default="", help="a sentence added under the table (e.g. machine load)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    machine = machine_description()
    rows = []
    for dev in devices:
        threads = torch.get_num_threads()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({threads} thread{'s' * (threads > 1)})"
        n = args.cuda_steps if dev.type == "cuda" else args.cpu_steps
        for size in args.sizes:
            results = [bench_step(size, args.batch, n, dev, amp=False)]
            if dev.type == "cuda":
                results.append(bench_step(size, args.batch, n, dev, amp=True))
            results.append(bench_train_loop(size, args.batch, max(n, 4), dev))
            for r in results:
                r.update(device=name, machine=machine)
                rows.append(r)
                print(f"{name:>24} {r['mode']:>9} {size:4d}² B={args.batch}: {r['steps_per_s']:8.2f} steps/s "
                      f"({r['ms_per_step']:8.1f} ms/step), peak {r['peak_mib']:8.0f} MiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    for path in args.include:
        rows += json.loads(Path(path).read_text())
    if args.no_write:
        return 0
    lines = ["| device | measured | size | batch | steps/s | ms/step | steps/h | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['mode']} | {r['size']}² | {r['batch']} | {r['steps_per_s']:.2f} | "
                     f"{r['ms_per_step']:.1f} | {r['steps_per_s'] * 3600:,.0f} | {r['peak_mib']:.0f} |")
    machines = sorted({r["machine"] for r in rows})
    notes = ["", "Default network (channels 32,64,64, 1 res block, attention at the lowest level, VE-SDE), fp32 "
             "unless bf16. `step` = forward + DSM loss + backward + clip + Adam + EMA on a fixed batch; "
             "`train()` = the whole training loop (batch sampling, augmentation, logging, final checkpoint). "
             "CPU peak memory is the process's peak RSS (cumulative); CUDA peak is max_memory_allocated.", "",
             "Machines: " + "; ".join(machines)]
    if args.note:
        notes += ["", args.note]
    cmd = "python benchmarks/training.py" + (" --include " + " ".join(args.include) if args.include else "")
    update_section("training", "\n".join(lines + notes), cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
