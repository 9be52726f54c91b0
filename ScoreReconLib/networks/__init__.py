"""Score network, the :class:`Prior` and its checkpoint format.

A checkpoint is a folder with ``model.safetensors`` (EMA weights, no pickle) and ``config.json``
(see :data:`CONFIG_KEYS`); ``training_state.pt`` (optimizer, raw weights, RNG) sits beside them
while training and is only read by :mod:`ScoreReconLib.training`.

Modules: :mod:`.model` (:class:`ScoreModel` and its shape config), :mod:`.prior` (:class:`Prior`),
:mod:`.files` (file names), :mod:`.config` (``config.json``), :mod:`.integrity` (checksums) and
:mod:`.checkpoint` (saving and loading).
"""

from __future__ import annotations

from .checkpoint import DEFAULT_PRIORS, load_checkpoint, load_prior, load_weights, save_checkpoint, write_weights
from .config import CONFIG_KEYS, MAX_CONFIG_BYTES, MAX_IMAGE_SIZE, make_config, read_config
from .files import CONFIG_FILE, TRAINING_STATE_FILE, TUNED_FILE, WEIGHTS_FILE
from .integrity import (
    SIGNED_KEYS,
    TRUST_ENV,
    config_digest,
    file_sha256,
    sign_checkpoint,
    sign_config,
    trust_unverified_from_env,
    verify_checkpoint,
)
from .model import (
    DEFAULT_NETWORK,
    MAX_CHANNELS,
    MAX_LEVELS,
    MAX_RES_BLOCKS,
    SIGMA_DATA,
    ScoreModel,
    build_score_model,
    network_config,
)
from .prior import DEFAULT_RECOMMENDED, MAX_PATCH_SIZE, PRIOR_KINDS, Prior, prior_spec

__all__ = [
    "CONFIG_FILE", "CONFIG_KEYS", "DEFAULT_NETWORK", "DEFAULT_PRIORS", "DEFAULT_RECOMMENDED", "MAX_CHANNELS",
    "MAX_CONFIG_BYTES", "MAX_IMAGE_SIZE", "MAX_LEVELS", "MAX_PATCH_SIZE", "MAX_RES_BLOCKS", "PRIOR_KINDS",
    "SIGMA_DATA", "SIGNED_KEYS", "TRAINING_STATE_FILE", "TRUST_ENV", "TUNED_FILE", "WEIGHTS_FILE", "Prior",
    "ScoreModel", "build_score_model", "config_digest", "file_sha256", "load_checkpoint", "load_prior",
    "load_weights", "make_config", "network_config", "prior_spec", "read_config", "save_checkpoint",
    "sign_checkpoint", "sign_config", "trust_unverified_from_env", "verify_checkpoint", "write_weights",
]
