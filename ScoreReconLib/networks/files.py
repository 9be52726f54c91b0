"""Names of the files in a checkpoint folder (the torch-free ones are declared in :mod:`ScoreReconLib.model_card`)."""

from __future__ import annotations

from ..model_card import CONFIG_FILE, TUNED_FILE, WEIGHTS_FILE  # noqa: F401  (re-exported)

#: the optimiser and RNG state ``scorerecon train --resume`` continues from
TRAINING_STATE_FILE = "training_state.pt"
