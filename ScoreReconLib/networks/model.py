"""The score network on MONAI's ``DiffusionModelUNet`` (:class:`ScoreModel`) and its validated shape config.

:class:`ScoreModel` turns the UNet into a noise-conditional score ``s(x, t) ~ grad_x log p_t(x)``:

* the UNet's sinusoidal timestep embedding receives ``c_noise = 999 t``. For the VE-SDE ``t`` is an
  affine function of ``log sigma(t)`` (``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``), so
  this is the NCSN++ ``log sigma`` conditioning rescaled to the DDPM label range; for the VP-SDE it
  is the usual DDPM step index.
* VE: the input is scaled by ``c_in = 1 / sqrt(sigma^2 + 0.25)`` (unit-variance input for ``[0, 1]``
  data, as in EDM preconditioning; ``network["input_scaling"]``) and the output is divided by
  ``sigma`` (NCSN++ output scaling), so the UNet predicts ``-z`` of ``x_t = x_0 + sigma z``.
* VP: the output is ``-net / std``, so the UNet predicts the noise ``z`` (DDPM epsilon).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ScoreReconError
from ..sde import SDE, VESDE, VPSDE
from .precision import network_autocast

#: default network shape (MONAI DiffusionModelUNet arguments plus ``input_scaling``)
DEFAULT_NETWORK: dict = {
    "channels": [32, 64, 64],
    "attention_levels": [False, False, True],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "norm_num_groups": None,  # None → the largest of 32, 16, 8, 4, 2, 1 dividing every channel count
    "use_flash_attention": True,
    "input_scaling": True,
    "coord_channels": 0,  # 2 for a patch prior: the pixels' (u, v) field-of-view coordinates
}


#: sigma_data of [0, 1] images used by the VE input scaling
SIGMA_DATA = 0.5


def network_config(overrides: dict | None = None) -> dict:
    """Complete network config: :data:`DEFAULT_NETWORK` updated with ``overrides``, validated."""
    cfg = dict(DEFAULT_NETWORK)
    unknown = set(overrides or {}) - set(cfg)
    if unknown:
        raise ScoreReconError(f"unknown network option(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides or {})
    try:
        return _checked_network(cfg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScoreReconError(f"network options hold a value of the wrong type ({' '.join(str(exc).split())[:120]}); "
                              "channels and attention_levels are lists, the rest numbers or booleans") from None


#: sane bounds of a network config (a config outside them is refused before anything is allocated)
MAX_LEVELS = 8
MAX_CHANNELS = 4096
MAX_RES_BLOCKS = 16


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ScoreReconError(f"network option {what} must be an integer, got {value!r}")
    return int(value)


def _checked_network(cfg: dict) -> dict:
    if not isinstance(cfg["channels"], list | tuple) or not isinstance(cfg["attention_levels"], list | tuple):
        raise ScoreReconError("network channels and attention_levels must be lists, e.g. [32, 64, 64] and "
                              "[false, false, true]")
    channels = [_int(c, "channels") for c in cfg["channels"]]
    attention = [bool(a) for a in cfg["attention_levels"]]
    if not channels or any(c <= 0 for c in channels):
        raise ScoreReconError(f"network channels {channels} must be positive integers, e.g. 32,64,64")
    if len(channels) > MAX_LEVELS or max(channels) > MAX_CHANNELS:
        raise ScoreReconError(f"network channels {channels[:10]} exceed the limits ({MAX_LEVELS} levels, "
                              f"{MAX_CHANNELS} channels per level); the config is corrupt")
    if len(attention) != len(channels):
        raise ScoreReconError(
            f"attention levels {attention} must have one entry per channel level ({len(channels)}), "
            f"e.g. {','.join(['0'] * (len(channels) - 1) + ['1'])}"
        )
    groups = cfg["norm_num_groups"]
    if groups is None:
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))
    groups = _int(groups, "norm_num_groups")
    if groups < 1:
        raise ScoreReconError(f"norm_num_groups must be at least 1, got {groups}")
    if any(c % groups for c in channels):
        raise ScoreReconError(f"every channel count in {channels} must be a multiple of norm_num_groups={groups}")
    heads = _int(cfg["num_head_channels"], "num_head_channels")
    if heads < 1:
        raise ScoreReconError(f"num_head_channels must be at least 1, got {heads}")
    for c, a in zip(channels, attention, strict=True):
        if a and c % min(heads, c):
            raise ScoreReconError(f"attention level with {c} channels is not a multiple of num_head_channels={heads}")
    cfg.update(channels=channels, attention_levels=attention, norm_num_groups=groups,
               num_res_blocks=_int(cfg["num_res_blocks"], "num_res_blocks"), num_head_channels=heads,
               use_flash_attention=bool(cfg["use_flash_attention"]), input_scaling=bool(cfg["input_scaling"]),
               coord_channels=_int(cfg["coord_channels"], "coord_channels"))
    if not 1 <= cfg["num_res_blocks"] <= MAX_RES_BLOCKS:
        raise ScoreReconError(f"num_res_blocks must be between 1 and {MAX_RES_BLOCKS}, got {cfg['num_res_blocks']}")
    if cfg["coord_channels"] not in (0, 2):
        raise ScoreReconError(f"coord_channels must be 0 (whole-image prior) or 2 (patch prior), got "
                              f"{cfg['coord_channels']}")
    return cfg


class ScoreModel(nn.Module):
    """Noise-conditional score network ``s_theta(x, t)`` for ``x`` (B,1,H,W) and ``t`` (B,) in (0, 1].

    With ``network["coord_channels"] = 2`` (a patch network) ``forward`` also takes ``coords``
    ``(B, 2, H, W)``, the pixels' field-of-view coordinates (see :mod:`ScoreReconLib.patches`).
    """

    def __init__(self, sde: SDE, network: dict | None = None) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.sde = sde
        self.network = network_config(network)
        #: arithmetic of the UNet's layers (:mod:`~ScoreReconLib.networks.precision`): fp32 for training; a
        #: :class:`~ScoreReconLib.networks.prior.Prior` sets its own (default "auto")
        self.precision = "fp32"
        cfg = self.network
        heads = [min(cfg["num_head_channels"], c) for c in cfg["channels"]]
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=1 + cfg["coord_channels"], out_channels=1, channels=cfg["channels"],
            attention_levels=cfg["attention_levels"], num_res_blocks=cfg["num_res_blocks"],
            num_head_channels=heads, norm_num_groups=cfg["norm_num_groups"], with_conditioning=False,
            use_flash_attention=cfg["use_flash_attention"],
        )

    def min_size_multiple(self) -> int:
        """Image sizes must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.network["channels"]) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Score ``grad_x log p_t(x)``, same shape as ``x`` (``coords`` required for a patch network)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        std = self.sde.beta(t).reshape(-1, 1, 1, 1).to(x.dtype)
        x_in = x
        if isinstance(self.sde, VESDE) and self.network["input_scaling"]:
            x_in = x * torch.rsqrt(std**2 + SIGMA_DATA**2)
        if self.network["coord_channels"]:
            want = (x.shape[0], 2, *x.shape[2:])
            if coords is None or tuple(coords.shape) != want:
                got = None if coords is None else tuple(coords.shape)
                raise ScoreReconError(f"a patch score network needs coordinate channels (B, 2, H, W) matching x "
                                      f"{tuple(x.shape)}; got {got}")
            x_in = torch.cat([x_in, coords.to(x_in)], 1)
        with network_autocast(self.precision, x.device):
            out = self.unet(x_in, 999.0 * t)
        out = out.to(x.dtype)
        if isinstance(self.sde, VPSDE):
            return -out / std
        return out / std


def build_score_model(sde: SDE, network: dict | None = None) -> ScoreModel:
    """A fresh (untrained) :class:`ScoreModel`."""
    return ScoreModel(sde, network)
