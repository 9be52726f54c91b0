"""Train a score prior by denoising score matching, with EMA, exact resume and torchrun DDP.

Loss (Song et al. 2021, weighting ``lambda(t) = beta(t)^2``): for ``x_0`` a training slice,
``t ~ U(eps, 1)``, ``z ~ N(0, I)`` and ``x_t = alpha(t) x_0 + beta(t) z``,

    L = mean over batch and pixels of || beta(t) s_theta(x_t, t) + z ||^2

(1 for a network that outputs zero, 0 for the exact score). Adam with linear warm-up, gradient
clipping and an exponential moving average (EMA) of the weights; the EMA weights are what a
checkpoint's ``model.safetensors`` holds.

Every random draw of a step (batch indices, augmentation, ``t``, ``z``) comes from one CPU
``torch.Generator`` per rank whose state is saved in ``training_state.pt``, so ``resume=True``
continues exactly where the checkpoint left off, on any device. Under ``torchrun`` (env ``RANK``/
``WORLD_SIZE``) the model is wrapped in ``DistributedDataParallel`` (nccl on CUDA, gloo on CPU),
each rank draws from its own shard of the slices, and only rank 0 writes files.

Modules: :mod:`.config` (settings and result), :mod:`.objective` (SDE and loss), :mod:`.batches` (data),
:mod:`.initialization` (starting network), :mod:`.optimization` (Adam schedule and EMA), :mod:`.checkpoint`
(training state), :mod:`.validation`, :mod:`.logs`, :mod:`.samples` (sampler and sample grids), :mod:`.ddp`
and :mod:`.loop` (:func:`train`).
"""

from __future__ import annotations

from ..figures import save_image_grid
from .config import RESUME_OVERRIDES as RESUME_OVERRIDES
from .config import TrainConfig, TrainResult
from .initialization import transplant_state as transplant_state
from .logs import LOSS_LOG as LOSS_LOG
from .logs import VAL_LOG as VAL_LOG
from .loop import train
from .objective import dsm_loss, estimate_sigma_max, make_sde
from .optimization import EMA
from .samples import SAMPLES_DIR as SAMPLES_DIR
from .samples import em_sample
from .validation import VAL_COUNT as VAL_COUNT

__all__ = ["TrainConfig", "TrainResult", "train", "dsm_loss", "em_sample", "save_image_grid", "estimate_sigma_max",
           "make_sde", "EMA"]
