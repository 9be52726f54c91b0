"""Checksums that tie a checkpoint's weights and config together: signing, and verifying on load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ScoreReconError
from .files import CONFIG_FILE, WEIGHTS_FILE

#: config keys that decide how the weights are used; ``config_sha256`` covers them and the weights' checksum
SIGNED_KEYS = ("format_version", "image_size", "modality", "normalization", "network", "sde", "prior",
               "weights_sha256")
#: environment variable that, set to 1, lets models without checksums load (as ``--trust-unverified``)
TRUST_ENV = "SCORERECON_TRUST_UNVERIFIED"


def config_digest(config: dict) -> str:
    """SHA-256 of the :data:`SIGNED_KEYS` of ``config`` (canonical JSON), for ``config_sha256``."""
    payload = {k: config.get(k) for k in SIGNED_KEYS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sign_config(config: dict) -> dict:
    """``config`` with ``config_sha256`` set (it must already hold ``weights_sha256``)."""
    return dict(config, config_sha256=config_digest(config))


def sign_checkpoint(folder: str | Path) -> Path:
    """Add ``weights_sha256`` and ``config_sha256`` to an existing checkpoint you trust (e.g. one written
    before checksums covered the config); rewrites ``config.json`` atomically. Returns the folder."""
    from ..utils import atomic_path

    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoreReconError(f"cannot read {path} ({exc}); point to a checkpoint folder") from None
    if not isinstance(cfg, dict):
        raise ScoreReconError(f"{path} must hold a JSON object")
    cfg = sign_config(dict(cfg, weights_sha256=file_sha256(folder / WEIGHTS_FILE)))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return folder


def trust_unverified_from_env() -> bool:
    return str(os.environ.get(TRUST_ENV, "")).strip().lower() in ("1", "true", "yes")


def verify_checkpoint(folder: Path, raw: dict, trust_unverified: bool = False) -> None:
    """Refuse a checkpoint whose weights or config do not match their checksums, or that has none
    (unless ``trust_unverified`` or ``SCORERECON_TRUST_UNVERIFIED=1``)."""
    weights = folder / WEIGHTS_FILE
    have_w, have_c = isinstance(raw.get("weights_sha256"), str), isinstance(raw.get("config_sha256"), str)
    if not (have_w and have_c):
        if trust_unverified or trust_unverified_from_env():
            return
        missing = " and ".join(k for k, ok in (("weights_sha256", have_w), ("config_sha256", have_c)) if not ok)
        raise ScoreReconError(
            f"model {folder} has no {missing} in {CONFIG_FILE}, so its integrity cannot be checked; if you trust it, "
            f"pass --trust-unverified (or set {TRUST_ENV}=1, or sign it once with "
            "ScoreReconLib.networks.sign_checkpoint)"
        )
    if weights.is_file() and file_sha256(weights) != raw["weights_sha256"]:
        raise ScoreReconError(
            f"{weights} does not match the checksum in {CONFIG_FILE} (interrupted write or edited file); "
            "restore the checkpoint folder or retrain"
        )
    if config_digest(raw) != raw["config_sha256"]:
        raise ScoreReconError(
            f"{folder / CONFIG_FILE} was edited after it was written (its network, SDE, size, modality or "
            "normalisation no longer match config_sha256); restore the checkpoint folder or retrain"
        )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
