"""A trained score prior (:class:`Prior`): the EMA network with its SDE, size, modality and normalisation,
and the validated ``prior`` section (whole-image or patch) of its config."""

from __future__ import annotations

import torch

from ..data import Normalization
from ..errors import ScoreReconError
from ..patches import random_offset, tiled_score
from ..sde import SDE
from .model import ScoreModel
from .precision import check_precision, resolve_precision

#: prior kinds: a whole-image network, or a position-aware patch network (:mod:`ScoreReconLib.patches`)
PRIOR_KINDS = ("patch", "whole")


#: sampler settings stored with a new checkpoint until tuned (official LIDC / BraTS λ and snr, 25 steps)
DEFAULT_RECOMMENDED = {
    "CT": {"sampler": "proximal", "steps": 25, "lam": 0.841, "snr": 0.246},
    "MR": {"sampler": "proximal", "steps": 25, "lam": 1.0, "snr": 0.517},
}


class Prior:
    """A trained score prior: EMA network (eval mode), its SDE, image size, modality and normalisation."""

    def __init__(self, model: ScoreModel, config: dict, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.config = config
        self.sde: SDE = model.sde
        self.image_size = int(config["image_size"])
        self.modality = str(config["modality"])
        self.normalization = Normalization.from_dict(config["normalization"])
        self.recommended = dict(config.get("recommended") or DEFAULT_RECOMMENDED.get(self.modality, {}))
        spec = prior_spec(config)
        self.kind: str = spec["kind"]
        self.patch_size: int | None = spec.get("patch_size")
        self.device = torch.device("cpu")
        self.model.eval().requires_grad_(False)
        self.precision = "auto"
        self.to(device)

    @property
    def precision(self) -> str:
        """The network's arithmetic: "auto" (default: bf16 autocast on a CPU with native bf16, else fp32),
        "fp32" or "bf16" (:mod:`~ScoreReconLib.networks.precision`)."""
        return self.model.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.model.precision = check_precision(value)

    @property
    def effective_precision(self) -> str:
        """"fp32" or "bf16": what :attr:`precision` means on this prior's device."""
        return resolve_precision(self.precision, self.device)

    def to(self, device: torch.device | str) -> Prior:
        """Move the network to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def working_size(self) -> int:
        """Grid on which tools without an input grid of their own (demo, evaluate, tune, sample) work:
        the training size of a whole-image prior; ``prior.default_size`` (128) for a patch prior."""
        if self.kind == "patch":
            return int(prior_spec(self.config).get("default_size", 128))
        return self.image_size

    def size_for(self, requested: int | None) -> int:
        """``requested`` if this prior can work on that grid (else a clear error), or :attr:`working_size`."""
        if requested is None:
            return self.working_size
        self.check_compatible(int(requested))
        return int(requested)

    @property
    def any_size(self) -> bool:
        """True for a patch prior: it scores images of any size at their own grid."""
        return self.kind == "patch"

    def score(self, x: torch.Tensor, t: torch.Tensor | float,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``grad_x log p_t(x)`` for ``x`` (B,1,H,W) normalised images and ``t`` (B,) or a scalar.

        A patch prior tiles ``x`` at a random grid offset drawn from ``generator`` (and fills the
        padding with noise from it); a whole-image prior ignores ``generator``.
        """
        if not isinstance(t, torch.Tensor):
            t = torch.full((x.shape[0],), float(t), device=x.device)
        elif t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.to(x.device, torch.float32)
        if self.kind != "patch":
            return self.model(x, t)
        p = int(self.patch_size)
        offset = random_offset(p, generator, x.device)
        return tiled_score(self.model, x, t, self.sde.beta(t), p, offset, generator)

    def check_compatible(self, image_size: int, modality: str | None = None) -> None:
        """Raise :class:`ScoreReconError` if images of ``image_size``/``modality`` do not fit this prior.

        A patch prior accepts any size of at least 8 pixels; a whole-image prior only its own."""
        name = self.config.get("name", "this prior")
        if self.any_size:
            if int(image_size) < 8:
                raise ScoreReconError(f"{name}: images must be at least 8x8 pixels, got {image_size}x{image_size}")
        elif int(image_size) != self.image_size:
            raise ScoreReconError(
                f"{name} was trained on {self.image_size}x{self.image_size} images but got "
                f"{image_size}x{image_size}; resample the input to {self.image_size} (e.g. --size "
                f"{self.image_size}) or train a prior for size {image_size}"
            )
        if modality is not None and str(modality).upper() != self.modality:
            raise ScoreReconError(
                f"{name} is a {self.modality} prior but the input is {str(modality).upper()}; "
                f"use a {str(modality).upper()} prior (e.g. default-{'ct' if str(modality).upper() == 'CT' else 'mri'})"
            )

    def __repr__(self) -> str:
        size = f"{self.patch_size}px patches" if self.any_size else f"{self.image_size}px"
        return (f"Prior({self.config.get('name', '?')}, {self.kind}, {self.modality}, {size}, {self.sde!r}, "
                f"device={self.device})")


#: largest patch a patch prior's config may declare (a larger one is a corrupt or hostile config)
MAX_PATCH_SIZE = 1024


def prior_spec(config: dict) -> dict:
    """The ``prior`` section of a checkpoint config, validated: ``{"kind": "whole"}`` or
    ``{"kind": "patch", "patch_size": P, ...}``. Configs without the section are whole-image priors."""
    spec = config.get("prior") or {"kind": "whole"}
    if not isinstance(spec, dict) or spec.get("kind") not in PRIOR_KINDS:
        raise ScoreReconError(f"config 'prior' must be an object with kind one of {PRIOR_KINDS}, got {spec!r}; "
                              "re-save the checkpoint")
    spec = dict(spec)
    net = config.get("network") or {}
    if spec["kind"] == "patch":
        try:
            spec["patch_size"] = int(spec["patch_size"])
        except (KeyError, TypeError, ValueError):
            raise ScoreReconError(f"a patch prior's config needs an integer prior.patch_size, got {spec!r}") from None
        if not 4 <= spec["patch_size"] <= MAX_PATCH_SIZE:
            raise ScoreReconError(f"prior.patch_size {spec['patch_size']} must be from 4 to {MAX_PATCH_SIZE}; the "
                                  "config is corrupt")
        levels = len(net.get("channels") or []) if isinstance(net, dict) else 0
        factor = 2 ** max(levels - 1, 0)
        if spec["patch_size"] % factor:
            near = factor * max(1, spec["patch_size"] // factor)
            raise ScoreReconError(f"prior.patch_size {spec['patch_size']} must be a multiple of {factor} (the "
                                  f"network halves it {levels - 1} times), e.g. {near}")
        if "default_size" in spec:
            try:
                spec["default_size"] = int(spec["default_size"])
            except (TypeError, ValueError):
                raise ScoreReconError(f"prior.default_size {spec['default_size']!r} must be a whole number of pixels "
                                      "such as 128; fix the config") from None
            if not 16 <= spec["default_size"] <= 4096:
                raise ScoreReconError(f"prior.default_size {spec['default_size']} must be from 16 to 4096 pixels")
        if isinstance(net, dict) and int(net.get("coord_channels", 0)) not in (0, 2):
            raise ScoreReconError("a patch prior's network must have coord_channels 2 (field-of-view coordinates) "
                                  "or 0 (trained with --no-coordinates); the config is inconsistent")
    elif isinstance(net, dict) and int(net.get("coord_channels", 0)) != 0:
        raise ScoreReconError("a whole-image prior's network must have coord_channels = 0; the config is inconsistent")
    return spec
