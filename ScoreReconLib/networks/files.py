"""Names of the files in a checkpoint folder."""

from __future__ import annotations

#: files of a checkpoint folder
WEIGHTS_FILE = "model.safetensors"
#: optional sidecar written by ``scorerecon tune``: {"tasks": {task: {sampler: {"lam": ..., "snr": ...}}}}
TUNED_FILE = "tuned.json"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
