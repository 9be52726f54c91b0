"""Simulation: measurements of an image for a task (operator, optional metal, noise) as a :class:`Measurement`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data import DEFAULT_CT_WINDOW, Image, Normalization, ct_normalization
from ..errors import ScoreReconError
from ..operators import TASKS, build_operator
from .geometry import ct_geometry_options
from .mri_acquisition import DEFAULT_PHASE, KspaceAcquisition, check_acquisition, simulate_kspace
from .noise import add_measurement_noise
from .record import CT_TASKS, MAX_COILS, MAX_IMAGE_SIZE, MRI_MASKS, Measurement
from .slices import normalization_for, normalize_slices, prepare_slices

#: slices projected per operator call while simulating (bounds memory on large volumes)
_CHUNK = 16
#: added to ``seed`` for the noise generator, so the noise stream differs from the masks' and metal's
SIMULATE_NOISE_SEED_OFFSET = 1_000_003


def _hu_equivalent() -> Normalization:
    """Map normalised values to 'HU' with the default window (thresholds and metal values)."""
    return ct_normalization(*DEFAULT_CT_WINDOW)


def _validate_options(task: str, size: int, views: int, arc: float, n_angles: int | None, acceleration: float,
                      center_fraction: float, mask: str, noise: float, n_metal: int, fan: bool = False) -> None:
    if task not in TASKS:
        raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ScoreReconError(f"--noise must be a finite number >= 0 (relative to max |y|), got {noise}")
    if task in CT_TASKS:
        angles = (2 * size if fan else size) if n_angles is None else n_angles
        if not 2 <= angles <= 4 * MAX_IMAGE_SIZE:  # what the measurement reader accepts
            raise ScoreReconError(f"--n-angles must be from 2 to {4 * MAX_IMAGE_SIZE}, got {angles}")
        if task == "sparse-ct" and not 1 <= views <= angles:
            raise ScoreReconError(
                f"--views {views} does not fit the {angles} angles of the full set; choose 1..{angles} "
                "or raise --n-angles"
            )
        top = 360 if fan else 180
        if task == "limited-angle-ct" and not (0 < arc <= top):
            raise ScoreReconError(f"--arc must be in (0, {top}] degrees{' for fan beam' if fan else ''}, got {arc}")
        if task == "metal-ct" and n_metal < 1:
            raise ScoreReconError(f"the number of inserted metal objects must be >= 1, got {n_metal}")
    else:
        if not (math.isfinite(acceleration) and acceleration >= 1):
            raise ScoreReconError(f"--acceleration must be >= 1 (1 = fully sampled), got {acceleration}")
        if not (math.isfinite(center_fraction) and 0 <= center_fraction < 1):
            raise ScoreReconError(f"--center-fraction must be in [0, 1), got {center_fraction}")
        if mask not in MRI_MASKS:
            raise ScoreReconError(f"unknown MRI mask '{mask}'; choose one of {', '.join(MRI_MASKS)}")


def _metal_masks(x_norm: torch.Tensor, threshold: float, n_metal: int, metal_hu: float,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Metal of each slice: found above ``threshold`` HU, else inserted; return (x_with_metal, mask, info).

    Inserted objects lie inside the body: pixels above −500 HU with holes filled.
    """
    from ..operators.ct import metal_mask_from_image, random_metal_mask

    hu = _hu_equivalent()
    found = metal_mask_from_image(hu.inverse(x_norm), threshold=threshold).to(torch.bool)
    if found.any():
        info = {"source": "image", "threshold_hu": float(threshold), "pixels": int(found.sum())}
        return x_norm, found, info
    n = x_norm.shape[-1]
    body_level = float(hu.forward(-500.0))
    masks = []
    for s in range(x_norm.shape[0]):
        inside = ndimage.binary_fill_holes((x_norm[s, 0] > body_level).cpu().numpy())
        if inside.sum() < 4:  # an (almost) empty slice: place metal anywhere
            inside = None
        m = random_metal_mask(n, n_metal, seed + s, inside=inside)
        masks.append(torch.as_tensor(np.asarray(m)).reshape(n, n).to(torch.bool))
    mask = torch.stack(masks)[:, None].to(x_norm.device)
    value = float(hu.forward(metal_hu))
    x_metal = torch.where(mask, torch.full_like(x_norm, value), x_norm)
    info = {"source": "inserted", "threshold_hu": float(threshold), "n_objects": int(n_metal),
            "metal_hu": float(metal_hu), "pixels": int(mask.sum())}
    return x_metal, mask, info


def simulate(
    image: Image,
    task: str,
    *,
    views: int = 23,
    arc: float = 90.0,
    n_angles: int | None = None,
    metal_threshold: float = 3000.0,
    n_metal: int = 2,
    metal_hu: float = 4000.0,
    acceleration: float = 8.0,
    center_fraction: float = 0.08,
    mask: str = "equispaced",
    noise: float = 0.0,
    seed: int = 0,
    size: int | None = None,
    device: torch.device | str = "cpu",
    geometry: str = "parallel",
    source_distance: float | None = None,
    detector_distance: float | None = None,
    detector: str = "curved",
    coils: int = 1,
    phase: str = DEFAULT_PHASE,
    maps: str = "true",
) -> tuple[Measurement, torch.Tensor, dict[str, Any]]:
    """Simulate ``task`` measurements of ``image`` (a slice or a volume, sliced along axis 0).

    Returns ``(measurement, reference, extra)``: ``reference`` is the clean normalised target
    ``(S, 1, N, N)`` float32 (for metal-ct with inserted metal, the image *without* the metal);
    ``extra`` holds ``"image_measured"`` (the normalised image that was projected, with metal),
    ``"metal_mask"`` ((S,1,N,N) bool or None), ``"noise_std"`` (per slice) and ``"mri"`` (MRI: the
    :class:`~.mri_acquisition.KspaceAcquisition` with the true maps and phase; else None).

    Options: sparse-ct ``views`` of ``n_angles`` (default N) over 180°; limited-angle-ct ``arc``
    degrees; metal-ct uses metal above ``metal_threshold`` HU if the image has any, else inserts
    ``n_metal`` random dense objects of ``metal_hu`` HU inside the body (seeded by ``seed``);
    mri ``acceleration``, ``center_fraction`` and ``mask`` kind, ``coils`` > 1 for multi-coil k-space
    with :func:`~ScoreReconLib.coils.receive_coil_maps` (seeded by ``seed``), the image ``phase``
    ("smooth", the default, or "zero") and the ``maps`` the file carries ("true", or estimated from the
    data: "auto", "espirit", "lowres"), as :mod:`.mri_acquisition` describes; MRI ``noise`` is relative to
    the slice's k-space peak, one σ for all its coils. CT ``geometry`` "parallel" (full
    set over 180°) or "fan" (full set over 360°, default 2N source angles; ``source_distance`` and
    ``detector_distance`` in mm, see :func:`ct_geometry_options`; ``detector`` "curved" or "flat");
    for fan beam ``arc`` may reach 360. ``noise`` is relative, per slice (:func:`add_measurement_noise`).
    ``size`` resamples slices to ``size``²; without it slices must be square and ≥ 16 pixels.
    """
    if task not in TASKS:
        raise ScoreReconError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    original_shape = [int(s) for s in image.array.shape]
    image, stack = prepare_slices(image, size)
    n = stack.shape[-1]
    geo_opts: dict[str, Any] = {}
    geo_record: dict[str, Any] = {}
    if task in CT_TASKS:
        geo_opts, geo_record = ct_geometry_options(image, geometry, source_distance, detector_distance, detector)
    elif geometry != "parallel" or source_distance is not None or detector_distance is not None:
        raise ScoreReconError("--geometry / --source-distance / --detector-distance apply to CT tasks only")
    if task == "mri":
        check_acquisition(phase, maps, int(coils) if isinstance(coils, int) else 1)
    elif maps != "true":
        raise ScoreReconError(f"--maps applies to --task mri with --coils 2 or more, not {task}; drop --maps")
    _validate_options(task, n, views, arc, n_angles, acceleration, center_fraction, mask, noise, n_metal,
                      fan=geo_opts.get("geometry") == "fan")
    if isinstance(coils, bool) or int(coils) != coils or not 1 <= coils <= MAX_COILS:
        raise ScoreReconError(f"--coils must be a whole number from 1 (single-coil) to {MAX_COILS}, got {coils}")
    if coils > 1 and task != "mri":
        raise ScoreReconError(f"--coils applies to --task mri only, not {task}; drop --coils")
    norm = normalization_for(image, task)
    x = torch.from_numpy(normalize_slices(stack, norm))[:, None].to(device)

    options: dict[str, Any] = {}
    metal_info: dict = {}
    metal_mask: torch.Tensor | None = None
    acq: KspaceAcquisition | None = None
    x_measured = x
    if task == "sparse-ct":
        options = {"views": int(views), "n_angles": n_angles, **geo_record}
        op = build_operator(task, n, views=int(views), n_angles=n_angles, device=device, **geo_opts)
    elif task == "limited-angle-ct":
        options = {"arc": float(arc), "n_angles": n_angles, **geo_record}
        op = build_operator(task, n, arc=float(arc), n_angles=n_angles, device=device, **geo_opts)
    elif task == "metal-ct":
        options = {"metal_threshold": float(metal_threshold), "n_metal": int(n_metal), "metal_hu": float(metal_hu),
                   "n_angles": n_angles, **geo_record}
        x_measured, metal_mask, metal_info = _metal_masks(x, float(metal_threshold), int(n_metal),
                                                          float(metal_hu), int(seed))
        op = build_operator(task, n, metal_mask=metal_mask, n_angles=n_angles, device=device, **geo_opts)
    else:
        acq = simulate_kspace(x, coils=int(coils), phase=phase, maps=maps, acceleration=float(acceleration),
                              center_fraction=float(center_fraction), mask=mask, noise=float(noise), seed=int(seed),
                              noise_seed=int(seed) + SIMULATE_NOISE_SEED_OFFSET, device=device)
        op, y, noise_std, options = acq.operator, acq.y, acq.noise_std, acq.options
        if phase != "zero":
            options["phase_error_rad"] = [round(v, 4) for v in acq.phase_error]

    if task != "mri":
        with torch.no_grad():  # A: the measured views only for sparse-view and limited-angle CT
            y = torch.cat([op.A(x_measured[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])
            y, noise_std = add_measurement_noise(y, op.mask, float(noise), int(seed) + SIMULATE_NOISE_SEED_OFFSET)
    y_np = y.cpu().numpy()
    y_np = y_np.astype(np.complex64) if task == "mri" else y_np.astype(np.float32)

    m = Measurement(
        task=task,
        y=y_np,
        operator_spec=op.spec(),
        operator_arrays={k: np.asarray(v) for k, v in op.arrays().items()},
        normalization=norm,
        geometry=image.geometry(),
        slice_axis=0,
        noise=float(noise),
        noise_std=noise_std,
        seed=int(seed),
        metal=metal_info,
        metal_mask=None if metal_mask is None else metal_mask.cpu().numpy().astype(bool),
        options=options,
        source={"shape": original_shape, "resampled": original_shape[-2:] != [n, n], "modality": image.modality},
    )
    extra = {
        "image_measured": x_measured.cpu(),
        "metal_mask": None if metal_mask is None else metal_mask.cpu(),
        "noise_std": noise_std,
        "mri": acq,
    }
    return m, x.cpu(), extra
