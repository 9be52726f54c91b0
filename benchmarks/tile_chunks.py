"""How many patch tiles one network call should score on a CPU (issue 22: tiles batched to the cache).

One evaluation of the shipped patch priors' score (``Prior.score`` → ``patches.tiled_score``) on a random image at
128² (batch 1 and 4), 256² and 512², the tiles scored in chunks of 16, 32, 64 and 256 per network call; best of
repeats, and the largest difference to the 16-tile result relative to its maximum. The library's CPU default
(``patches.CPU_TILE_CHUNK_PIXELS``: 32 tiles of 32²) comes from this table; a GPU keeps 256.

    python benchmarks/tile_chunks.py --threads 1      # ~3 min on this 2-core CPU
"""

from __future__ import annotations

import _setup  # first: --threads before torch loads, the repository importable

ROOT = _setup.ROOT
import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import _results  # noqa: E402
import torch  # noqa: E402

from ScoreReconLib import patches  # noqa: E402
from ScoreReconLib.networks import load_prior  # noqa: E402

CHUNKS = (16, 32, 64, 256)
CASES = ((128, 1), (128, 4), (256, 1), (512, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    lines = ["Seconds per score evaluation (best of 3, 2 at 512²) by tiles per network call; *diff*: largest "
             "difference to the 16-tile result, relative to its maximum.", "",
             "| prior | patch | image | batch | tiles | " + " | ".join(f"{c} tiles/call" for c in CHUNKS)
             + " | diff |", "|---" * (5 + len(CHUNKS) + 1) + "|"]
    for name in ("default-ct", "default-mri"):
        prior = load_prior(name)
        p = int(prior.patch_size)
        for n, b in CASES:
            x = torch.rand(b, 1, n, n, generator=torch.Generator().manual_seed(0))
            t = torch.full((b,), 0.1)

            def run(chunk: int, x=x, t=t, prior=prior, p=p) -> torch.Tensor:
                g = torch.Generator().manual_seed(0)
                with torch.no_grad():
                    return patches.tiled_score(prior.model, x, t, prior.sde.beta(t), p,
                                               patches.random_offset(p, g, x.device), g, max_batch=chunk)

            times, ref, diff = [], None, 0.0
            for chunk in CHUNKS:
                out = run(chunk)
                ref = out if ref is None else ref
                diff = max(diff, float((out - ref).abs().max() / ref.abs().max()))
                best = []
                for _ in range(3 if n < 512 else 2):
                    s = time.perf_counter()
                    run(chunk)
                    best.append(time.perf_counter() - s)
                times.append(min(best))
            nh, nw = patches.TileGrid(n, n, p, patches.random_offset(p, torch.Generator().manual_seed(0))).shape
            tiles = b * nh * nw
            fastest = min(times)
            cells = [f"**{v:.3f}**" if v == fastest else f"{v:.3f}" for v in times]
            lines.append(f"| {name} | {p} | {n}² | {b} | {tiles} | " + " | ".join(cells) + f" | {diff:.0e} |")
            print(lines[-1], flush=True)
    cmd = "python benchmarks/tile_chunks.py " + " ".join(sys.argv[1:])
    _results.update_section("tile-chunks", "\n".join(lines) + f"\n\nWall time {(time.time() - t0) / 60:.1f} min "
                            f"({args.threads} thread(s)).", cmd)


if __name__ == "__main__":
    main()
