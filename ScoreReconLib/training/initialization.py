"""Where a run's network starts: the SDE and network shape (from the checkpoint being resumed, the
``--init-from`` checkpoint, or the config and data), the seeded network, and weights carried over from
``--init-from``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..datasets import SliceDataset
from ..errors import ScoreReconError
from ..networks import Prior, ScoreModel, network_config
from ..patches import estimate_patch_sigma_max
from ..sde import SDE, VESDE, sde_from_dict
from .objective import estimate_sigma_max, make_sde

if TYPE_CHECKING:
    from .config import TrainConfig


def load_init(cfg: TrainConfig, modality: str) -> Prior | None:
    """The ``--init-from`` checkpoint (on the CPU), checked against this run; None without one."""
    if not cfg.init_from:
        return None
    from ..networks import load_checkpoint

    is_patch = cfg.prior == "patch"
    init = load_checkpoint(cfg.init_from, "cpu", trust_unverified=cfg.trust_unverified)
    if init.kind == "patch" and not is_patch:
        raise ScoreReconError(f"--init-from {cfg.init_from} is a patch prior but this run trains a whole-image "
                              "prior; pass --prior patch or start from scratch")
    if not is_patch:
        init.check_compatible(cfg.image_size, modality)
    elif modality != init.modality:
        raise ScoreReconError(f"--init-from {cfg.init_from} is a {init.modality} prior but the data are {modality}")
    return init


def choose_sde_and_network(cfg: TrainConfig, saved_cfg: dict | None, init: Prior | None,
                           dataset: SliceDataset) -> tuple[SDE, dict]:
    """The run's SDE and network config: a resumed checkpoint's; the ``--init-from`` network's noise scale and
    shape (unless ``cfg.sigma_max`` is given); or ``cfg``'s, with a VE ``sigma_max`` measured on the data.
    Records the VE ``sigma_max`` in ``cfg``."""
    is_patch = cfg.prior == "patch"
    coord_channels = 2 if is_patch and cfg.coordinates else 0
    if saved_cfg is not None:
        sde = sde_from_dict(saved_cfg["sde"])
        network = saved_cfg["network"]
    elif init is not None and cfg.sigma_max is None:  # keep the starting network's noise scale and shape
        sde = init.sde
        network = network_config({**init.model.network, "coord_channels": coord_channels})
    else:
        sigma_max = cfg.sigma_max
        if cfg.sde.lower() == "ve" and sigma_max is None:
            sigma_max = (estimate_patch_sigma_max(dataset.slices, cfg.patch_size, seed=cfg.seed) if is_patch
                         else estimate_sigma_max(dataset.slices, seed=cfg.seed))
        sde = make_sde(cfg, sigma_max)
        base = dict(init.model.network) if init is not None else dict(cfg.network)
        network = network_config({**base, "coord_channels": coord_channels})
    if isinstance(sde, VESDE):
        cfg.sigma_max = sde.sigma_max
    return sde, network


def build_model(cfg: TrainConfig, sde: SDE, network: dict, init: Prior | None, device: torch.device) -> ScoreModel:
    """The network on ``device``, its initial weights seeded by ``cfg.seed`` (the same on every rank and run)
    or taken from ``init``; refuses sizes the network cannot halve often enough."""
    is_patch = cfg.prior == "patch"
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    model = ScoreModel(sde, network).to(device)
    if is_patch and cfg.patch_size % model.min_size_multiple():
        raise ScoreReconError(f"--patch-size {cfg.patch_size} must be a multiple of {model.min_size_multiple()} "
                              f"for a {len(model.network['channels'])}-level network")
    if not is_patch and cfg.image_size % model.min_size_multiple():
        raise ScoreReconError(f"--size {cfg.image_size} must be a multiple of {model.min_size_multiple()} for a "
                              f"{len(model.network['channels'])}-level network")
    if init is not None:
        try:
            model.load_state_dict(transplant_state(init.model.state_dict(), model.state_dict()))
        except RuntimeError as exc:
            raise ScoreReconError(f"--init-from {cfg.init_from} has another network shape than this run "
                                  f"({str(exc).splitlines()[0][:120]}); use the same --channels/--res-blocks") from None
    return model


def transplant_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` weights shaped for ``target``: a whole-image network's first convolution gets zero
    weights for the patch network's two coordinate channels, so the patch network starts as the
    whole-image denoiser applied to each patch; a patch network without coordinates (``--no-coordinates``)
    keeps the intensity channel's weights of a network with them; every other tensor is copied as it is."""
    out = dict(source)
    for k, v in source.items():
        want = target.get(k)
        if want is None or v.ndim != 4 or want.ndim != 4 or v.shape[0] != want.shape[0] \
                or v.shape[2:] != want.shape[2:] or v.shape[1] == want.shape[1]:
            continue
        if v.shape[1] < want.shape[1]:
            w = torch.zeros_like(want)
            w[:, : v.shape[1]] = v
            out[k] = w
        else:
            out[k] = v[:, : want.shape[1]].clone()
    return out
