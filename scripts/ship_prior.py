"""Copy a trained checkpoint into Resources/models/NAME as a shipped prior (float16 EMA weights).

    python scripts/ship_prior.py runs/patch-ct Resources/models/default-ct --recommended recommended-ct.json

Writes ``model.safetensors`` (the EMA weights cast to float16: half the size, cast back to float32
on load), ``config.json`` (the checkpoint's, with the new checksum, ``weights_dtype`` and the
``recommended`` sampler settings from the JSON file, if given) and ``loss_log.csv`` / ``val_log.csv``.
The training state is not copied. Existing files of the target folder are replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ScoreReconLib.networks import (  # noqa: E402
    CONFIG_FILE,
    WEIGHTS_FILE,
    file_sha256,
    load_checkpoint,
    sign_config,
    write_weights,
)
from ScoreReconLib.utils import atomic_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("target")
    ap.add_argument("--recommended", default=None, help="JSON file with the sampler settings to recommend")
    args = ap.parse_args()
    src, dst = Path(args.checkpoint), Path(args.target)
    prior = load_checkpoint(src)  # validates config and checksum
    cfg = json.loads((src / CONFIG_FILE).read_text())
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in prior.model.state_dict().items()}
    with atomic_path(dst / WEIGHTS_FILE) as tmp:
        write_weights(state, Path(tmp))
    (dst / WEIGHTS_FILE).chmod(0o644)
    cfg["weights_sha256"] = file_sha256(dst / WEIGHTS_FILE)
    cfg["weights_dtype"] = "float16 (EMA weights, cast to float32 on load)"
    if args.recommended:
        cfg["recommended"] = json.loads(Path(args.recommended).read_text())
    cfg = sign_config(cfg)
    with atomic_path(dst / CONFIG_FILE) as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name in ("loss_log.csv", "val_log.csv"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    load_checkpoint(dst)  # the shipped folder loads
    print(f"shipped {src} -> {dst} ({(dst / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
