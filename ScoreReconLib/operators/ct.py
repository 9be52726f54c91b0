"""CT measurement operators ``A = P(Λ) T``: sparse-view, limited-angle and metal-trace CT, built by task name.

The pieces they are made of live in their own modules: :mod:`.geometry` (parallel and fan beam),
:mod:`.system_matrix` (the stored Joseph matrix and its cache), :mod:`.projectors` (stored and
matrix-free Joseph projectors, backend choice), :mod:`.fbp` (filtered back-projection, fan
rebinning) and :mod:`.metal` (metal masks and trace inpainting). Their public names are re-exported
here, so ``from ScoreReconLib.operators.ct import X`` works for all of them. Module-level settings
and state (``MATRIX_FREE_CHUNK_ELEMENTS``, ``REBIN_MODE``, ``STATS``, the memo) belong to the module
that defines them: change them there, not on this module.

Sinograms are ``(B, 1, n_angles, n_det)`` float32; images ``(B, 1, N, N)`` float32.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScoreReconError
from ..limits import MAX_CG_ITERATIONS, check_count
from ..utils import check_finite
from .base import MeasurementOperator
from .fbp import FILTERS, REBIN_MODE, fan_fbp, fbp, fbp_filter, filter_sinogram, rebin_to_parallel, rebinned_geometry
from .geometry import (
    DETECTORS,
    GEOMETRIES,
    MAX_DET_PER_PIXEL,
    MIN_IMAGE_SIZE,
    FanBeamGeometry,
    Geometry,
    ParallelBeamGeometry,
    ViewSubsetGeometry,
    as_int,
    check_sinogram,
    make_geometry,
)
from .metal import TRACE_THRESHOLD, as_bool_mask, interpolate_trace, metal_mask_from_image, random_metal_mask
from .projectors import (
    BACKENDS,
    MATRIX_FREE_CHUNK_ELEMENTS,
    STORED_MATRIX_MAX_BYTES,
    SYMMETRIC_MATRIX_MAX_BYTES,
    JosephProjector,
    MatrixFreeJosephProjector,
    Projector,
    auto_backend,
    check_backend,
    make_projector,
)
from .system_matrix import (
    PROJECTOR_FORMAT_VERSION,
    STATS,
    build_joseph_matrix,
    cache_dir,
    cache_path,
    clear_memo,
    joseph_matrices,
    stored_matrix_bytes,
)

#: data-consistency solvers accepted by :meth:`CTOperator.proximal`
SOLVERS = ("cg", "fbp")


class CTOperator(MeasurementOperator):
    """CT operator ``A = P(Λ) T`` with ``T`` the full-angle projection (parallel or fan beam).

    Measurements are full-layout sinograms (B, 1, n_angles, n_det) with zeros where Λ = 0.
    ``T_inv`` is full-angle FBP; :meth:`proximal` offers the paper's FBP form and a CGLS
    least-squares solve (``default_solver``). ``geometry="fan"`` needs ``source_distance`` and
    ``detector_distance`` in pixels (:class:`FanBeamGeometry`; its full set spans 360°).
    """

    #: data-consistency solver used when :meth:`proximal` is called without ``solver``
    default_solver: str = "cg"
    #: CGLS iterations per proximal step when none are given
    default_cg_iterations: int = 20

    def __init__(self, image_size: int, n_angles: int | None = None, backend: str = "auto",
                 device: torch.device | str = "cpu", filter: str = "ram-lak", geometry: str = "parallel",
                 source_distance: float | None = None, detector_distance: float | None = None,
                 detector: str = "curved") -> None:
        if filter not in FILTERS:
            raise ScoreReconError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}")
        self.geometry: Geometry = make_geometry(image_size, geometry, n_angles, source_distance,
                                                detector_distance, detector)
        self.image_size = self.geometry.image_size
        self.backend = backend
        self.filter = filter
        self.device = torch.device(device)
        check_backend(backend)
        self._projector: Projector | None = None
        if backend == "torch-radon":  # asked for by name: say now if it cannot serve
            self._projector = make_projector(self.geometry, backend, self.device)

    @property
    def projector(self) -> Projector:
        """The full-set projector (:func:`make_projector` with this operator's backend), made on first use: a
        sparse-view or limited-angle scan projects its measured views with :attr:`measured_projector` and may
        never need it (at 512² the full set's stored matrix would take 0.9 GB)."""
        if self._projector is None:
            self._projector = make_projector(self.geometry, self.backend, self.device)
        return self._projector

    @projector.setter
    def projector(self, value: Projector) -> None:
        self._projector = value

    # -------------------------------------------------------------------------------- transform
    def T(self, x: torch.Tensor) -> torch.Tensor:
        """Full-angle projection (B, 1, N, N) → (B, 1, n_angles, n_det), pixel-unit line integrals."""
        return self.projector.forward(x)

    def T_adjoint(self, m: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`T` (unfiltered back-projection)."""
        return self.projector.adjoint(m)

    def T_inv(self, m: torch.Tensor) -> torch.Tensor:
        """Full-angle FBP with this operator's filter."""
        return fbp(m, self.geometry, self.filter, projector=self.projector)

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        return (batch, 1, self.geometry.n_angles, self.geometry.n_det)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward model ``Λ ⊙ T x`` (full layout); rejects NaN/inf input."""
        self.check_image(x)
        check_finite(x, "the CT image")
        return self._forward_measured(x)

    def check_measurement(self, y: torch.Tensor, what: str | None = None) -> None:
        """Raise :class:`ScoreReconError` unless ``y`` is a finite full-layout sinogram batch."""
        check_sinogram(y, self.geometry, "CT measurement" if what is None else what)
        check_finite(y, "the CT measurement")

    # ------------------------------------------------------------------------ data consistency
    def proximal(self, x: torch.Tensor, y_hat: torch.Tensor, lam: float, solver: str | None = None,
                 iterations: int | None = None) -> torch.Tensor:
        """Data-consistency step ``x + λ·d`` toward the measured rows of ``y_hat``.

        ``solver="fbp"``: ``d = FBP_full(Λ(ŷ − T x))`` (the paper's PyTorch-port form).
        ``solver="cg"``: ``d`` = min-norm least-squares solution of ``Λ T d = Λ(ŷ − T x)`` by
        ``iterations`` CGLS steps from 0 (default :attr:`default_cg_iterations`); with λ = 1 and
        enough iterations ``Λ T x'`` reproduces ``Λ ŷ``.
        """
        solver = self.default_solver if solver is None else solver
        if solver not in SOLVERS:
            raise ScoreReconError(f"unknown CT proximal solver '{solver}'; choose one of {', '.join(SOLVERS)}")
        if lam == 0:
            return x
        residual = self.mask_apply(y_hat) - self.A(x)
        if solver == "fbp":
            step = self.T_inv(residual)
        else:
            step = self.least_squares(residual, self.default_cg_iterations if iterations is None else iterations)
        return x + lam * step.to(x.dtype)

    # ------------------------------------------------------------------------------ bookkeeping
    def to(self, device: torch.device | str) -> CTOperator:
        """Move the projector and masks to ``device`` (returns self)."""
        self.device = torch.device(device)
        if self._projector is not None:
            self._projector = self._projector.to(self.device)
        self._move_masks(self.device)
        return self

    def _move_masks(self, device: torch.device) -> None:
        """Subclasses move their mask tensors."""

    def _base_spec(self) -> dict:
        spec = {"task": self.task, "image_size": self.image_size, "n_angles": self.geometry.n_angles,
                "n_det": self.geometry.n_det, "backend": self.backend, "filter": self.filter,
                "solver": self.default_solver, "cg_iterations": self.default_cg_iterations,
                "geometry": self.geometry.kind}
        if self.geometry.kind == "fan":
            spec.update(source_distance=self.geometry.source_distance,
                        detector_distance=self.geometry.detector_distance, detector=self.geometry.detector)
        return spec

    def _geometry_options(self) -> dict:
        """The constructor options that rebuild this operator's geometry."""
        g = self.geometry
        if g.kind == "fan":
            return {"geometry": "fan", "source_distance": g.source_distance,
                    "detector_distance": g.detector_distance, "detector": g.detector}
        return {"geometry": "parallel"}


def _views_from_count(n_angles: int, views: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n_angles - 1, views)).astype(np.int64))


class _ViewSubsetCT(CTOperator):
    """Shared code of operators whose Λ selects whole views: mask (1, 1, n_angles, 1)."""

    #: multiply measured views by n_angles / n_measured in A_dagger (sparse) or not (limited)
    _reweight: bool = False

    def _set_views(self, views: np.ndarray) -> None:
        raw = np.asarray(views).reshape(-1)
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not (np.isfinite(raw).all()
                                                                        and (raw == np.round(raw)).all())):
            raise ScoreReconError(f"view indices must be whole numbers, got {raw[:5].tolist()} ({raw.dtype}); "
                                  "check the views array")
        views = raw.astype(np.int64)
        n = self.geometry.n_angles
        if views.size < 1:
            raise ScoreReconError("no measured views; measure at least one angle")
        if views.min() < 0 or views.max() >= n or np.unique(views).size != views.size:
            raise ScoreReconError(f"view indices must be distinct integers in [0, {n - 1}]; check the views array")
        self.views = np.sort(views)
        m = torch.zeros(1, 1, n, 1, dtype=torch.float32)
        m[0, 0, torch.from_numpy(self.views), 0] = 1.0
        self._mask = m.to(self.device)
        self._view_index = torch.from_numpy(self.views).to(self.device)
        self._measured_projector: Projector | None = None

    @property
    def all_views(self) -> bool:
        """Every view of the full set is measured (the measured-view projector is the full-set one)."""
        return len(self.views) == self.geometry.n_angles

    @property
    def measured_projector(self) -> Projector:
        """A projector of the measured views only (:class:`ViewSubsetGeometry`, same backend rule; built on first
        use): what :meth:`A` (through ``_forward_measured``) and :meth:`A_adjoint` compute, instead of every view of
        the full set."""
        if self.all_views:
            return self.projector
        if self._measured_projector is None or self._measured_projector.device != self.device:
            self._measured_projector = make_projector(ViewSubsetGeometry(self.geometry, self.views), self.backend,
                                                      self.device)
        return self._measured_projector

    def _forward_measured(self, x: torch.Tensor) -> torch.Tensor:
        """``Λ ⊙ T x`` in full layout, projecting the measured views only (zeros elsewhere)."""
        if self.all_views:
            return self.mask_apply(self.T(x))
        sub = self.measured_projector
        out = x.new_zeros((x.shape[0], 1, self.geometry.n_angles, self.geometry.n_det), dtype=torch.float32)
        out[:, :, self._view_index.to(x.device)] = sub.forward(x)
        return out

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Tᴴ (Λ ⊙ y)``, back-projecting the measured views only."""
        if self.all_views:
            return self.T_adjoint(self.mask_apply(y))
        return self.measured_projector.adjoint(y[:, :, self._view_index.to(y.device)].to(torch.float32))

    @property
    def mask(self) -> torch.Tensor:
        """Λ (1, 1, n_angles, 1): 1 on measured views."""
        return self._mask

    def _move_masks(self, device: torch.device) -> None:
        self._mask = self._mask.to(device)
        self._view_index = self._view_index.to(device)
        if self._measured_projector is not None:
            self._measured_projector = self._measured_projector.to(device)

    @property
    def view_weights(self) -> torch.Tensor:
        """Per-angle FBP weights (n_angles,) used by :meth:`A_dagger`."""
        w = self._mask.reshape(-1)
        return w * (self.geometry.n_angles / len(self.views)) if self._reweight else w

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """FBP from the measured views only."""
        self.check_measurement(y)
        weights = self.view_weights.to(y.device)
        if self.geometry.kind == "parallel" and not self.all_views:
            sub = self.measured_projector
            # parallel beam filters each view on its own, so the unmeasured (zero-weighted) views add nothing:
            # filter and back-project the measured views only (the same image as fbp over the full set)
            index = self._view_index.to(y.device)
            filtered = filter_sinogram(y[:, :, index].to(torch.float32), self.filter)
            filtered = filtered * weights[index].view(1, 1, -1, 1)
            return sub.adjoint(filtered) * (self.geometry.arc / self.geometry.n_angles)
        coverage = None if self._reweight else self._mask.reshape(-1).to(y.device)
        return fbp(self.mask_apply(y), self.geometry, self.filter, weights, projector=self.projector,
                   coverage=coverage)

    def arrays(self) -> dict:
        return {"views": self.views.copy()}


class SparseViewCT(_ViewSubsetCT):
    """Sparse-view CT: ``views`` of the ``n_angles`` equally spaced angles of the full set (parallel:
    default N over [0, π); fan: default 2N source angles over [0, 2π)). ``geometry`` options as
    :class:`CTOperator`.

    ``views``: a count (indices ``round(linspace(0, n_angles − 1, views))``) or explicit indices.
    """

    task = "sparse-ct"
    _reweight = True

    def __init__(self, image_size: int, views: int | np.ndarray = 23, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak",
                 **geometry: Any) -> None:
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        n = self.geometry.n_angles
        if np.ndim(views) == 0:
            count = as_int(views, "views")
            if count < 1:
                raise ScoreReconError(f"views must be at least 1, got {count}; measure at least one angle")
            if count > n:
                raise ScoreReconError(f"views ({count}) exceeds the {n} angles of the full set; "
                                      f"use at most {n} views or raise n_angles")
            views = _views_from_count(n, count)
        self._set_views(np.asarray(views))

    def spec(self) -> dict:
        return dict(self._base_spec(), views=int(len(self.views)))


class LimitedAngleCT(_ViewSubsetCT):
    """Limited-angle CT: the full set (parallel: 180°; fan: 360° of source angles) with only the angles
    below ``arc_degrees`` measured."""

    task = "limited-angle-ct"
    _reweight = False

    def __init__(self, image_size: int, arc_degrees: float = 90.0, n_angles: int | None = None,
                 backend: str = "auto", device: torch.device | str = "cpu", filter: str = "ram-lak",
                 **geometry: Any) -> None:
        try:
            arc = float(arc_degrees)
        except (TypeError, ValueError):
            raise ScoreReconError(f"arc must be a number of degrees, got {arc_degrees!r}") from None
        top = 360.0 if geometry.get("geometry", "parallel") == "fan" else 180.0
        if not (math.isfinite(arc) and 0.0 < arc <= top):
            raise ScoreReconError(f"limited-angle arc {arc:g}° is outside (0, {top:g}]; give the scanned arc "
                                  "in degrees")
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        self.arc_degrees = arc
        angles = self.geometry.angles
        views = np.nonzero(angles < math.radians(arc) - 1e-9)[0]
        if views.size == 0:
            raise ScoreReconError(f"a {arc:g}° arc holds none of the {self.geometry.n_angles} angles; "
                                  "widen the arc or raise n_angles")
        self._set_views(views)

    def spec(self) -> dict:
        return dict(self._base_spec(), arc=self.arc_degrees)


class MetalTraceCT(CTOperator):
    """Metal-artifact CT: Λ drops the sinogram bins whose rays cross the (dilated) metal.

    ``metal_mask``: (B, 1, N, N) or (N, N) bool; the mask Λ is (B, 1, n_angles, n_det), one per
    batch item (a single mask is broadcast over any batch). ``dilation`` grows the metal by that
    many pixels before its trace is taken. Alternatively pass ``measured_bins`` (Λ itself).
    """

    task = "metal-ct"

    def __init__(self, image_size: int, metal_mask: torch.Tensor | np.ndarray | None = None,
                 n_angles: int | None = None, dilation: int = 1, backend: str = "auto",
                 device: torch.device | str = "cpu", filter: str = "ram-lak",
                 measured_bins: torch.Tensor | np.ndarray | None = None, **geometry: Any) -> None:
        super().__init__(image_size, n_angles, backend, device, filter, **geometry)
        dilation = as_int(dilation, "dilation")
        if dilation < 0:
            raise ScoreReconError(f"dilation must be 0 or more pixels, got {dilation}")
        self.dilation = dilation
        if (metal_mask is None) == (measured_bins is None):
            raise ScoreReconError("metal-ct needs a metal mask (B,1,H,W); pass metal_mask= "
                                  "(e.g. from metal_mask_from_image or random_metal_mask)")
        if metal_mask is not None:
            mm = as_bool_mask(metal_mask, self.image_size, "metal_mask").to(self.device)
            self.metal_mask = mm
            grown = F.max_pool2d(mm.float(), 2 * dilation + 1, stride=1, padding=dilation) if dilation else mm.float()
            trace = self.T(grown)
            self._mask = (trace <= TRACE_THRESHOLD).to(torch.float32)
        else:
            mb = torch.as_tensor(np.asarray(measured_bins) if not isinstance(measured_bins, torch.Tensor)
                                 else measured_bins)
            if mb.ndim == 2:
                mb = mb[None, None]
            if mb.ndim != 4 or mb.shape[1] != 1 or tuple(mb.shape[-2:]) != self.geometry.sinogram_shape:
                raise ScoreReconError(f"measured_bins has shape {tuple(mb.shape)}, expected (B, 1, "
                                      f"{self.geometry.n_angles}, {self.geometry.n_det}); rebuild the metal mask")
            self._mask = (mb > 0).to(torch.float32).to(self.device)
            self.metal_mask = None

    @property
    def mask(self) -> torch.Tensor:
        """Λ (B, 1, n_angles, n_det): 1 on bins outside the metal trace."""
        return self._mask

    def batch_subset(self, index: slice) -> MetalTraceCT:
        """The operator for items ``index`` of the batch: their own metal traces (one shared trace is kept)."""
        if self._mask.shape[0] == 1:
            return self
        sub = copy.copy(self)  # shares the projector; the masks are its own
        sub._mask = self._mask[index]
        if self.metal_mask is not None and self.metal_mask.ndim == 4 and self.metal_mask.shape[0] > 1:
            sub.metal_mask = self.metal_mask[index]
        return sub

    def _move_masks(self, device: torch.device) -> None:
        self._mask = self._mask.to(device)
        if self.metal_mask is not None:
            self.metal_mask = self.metal_mask.to(device)

    def check_image(self, x: torch.Tensor) -> None:
        super().check_image(x)
        nb = self._mask.shape[0]
        if nb != 1 and x.shape[0] != nb:
            raise ScoreReconError(f"this metal-ct operator holds {nb} metal masks but got {x.shape[0]} images; "
                                  "pass one metal mask per image")

    def compact(self, y: torch.Tensor) -> torch.Tensor:
        counts = torch.broadcast_to(self._mask.to(y.device) > 0, y.shape).reshape(y.shape[0], -1).sum(1)
        if y.shape[0] > 1 and bool((counts != counts[0]).any()):
            raise ScoreReconError("metal traces differ between batch items, so their measured bins "
                                  "cannot be stacked; compact one image at a time")
        return super().compact(y)

    def inpaint(self, y: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of ``y`` across the metal trace along the detector (LI-MAR)."""
        mask = torch.broadcast_to(self._mask.to(y.device) > 0, y.shape)
        return interpolate_trace(y, mask)

    def A_dagger(self, y: torch.Tensor) -> torch.Tensor:
        """LI-MAR: inpaint the trace by linear interpolation along the detector, then full FBP."""
        self.check_measurement(y)
        return fbp(self.inpaint(y), self.geometry, self.filter, projector=self.projector)

    def spec(self) -> dict:
        return dict(self._base_spec(), dilation=self.dilation)

    def arrays(self) -> dict:
        out = {"measured_bins": (self._mask > 0).to(torch.uint8).cpu().numpy()}
        if self.metal_mask is not None:
            out["metal_mask"] = self.metal_mask.to(torch.uint8).cpu().numpy()
        return out


def build_ct_operator(task: str, image_size: int, **options: Any) -> CTOperator:
    """Make a CT operator: task "sparse-ct" (``views``=23), "limited-angle-ct" (``arc`` degrees = 90)
    or "metal-ct" (``metal_mask``, ``dilation``=1); common ``n_angles``, ``backend``, ``device``,
    ``filter``, ``solver``, ``cg_iterations`` and the geometry: ``geometry`` ("parallel" or "fan"),
    for fan ``source_distance``, ``detector_distance`` (pixels) and ``detector`` ("curved", "flat").
    Options set to None take their defaults.
    """
    opts = {k: v for k, v in options.items() if v is not None}
    solver = opts.pop("solver", None)
    cg_iterations = opts.pop("cg_iterations", None)
    if "arc_degrees" in opts and "arc" not in opts:
        opts["arc"] = opts.pop("arc_degrees")
    allowed = {"sparse-ct": {"views"}, "limited-angle-ct": {"arc"}, "metal-ct": {"metal_mask", "dilation",
                                                                                 "measured_bins"}}
    if task not in allowed:
        raise ScoreReconError(f"unknown CT task '{task}'; choose sparse-ct, limited-angle-ct or metal-ct")
    common = {"n_angles", "backend", "device", "filter", "geometry", "source_distance", "detector_distance",
              "detector"}
    unknown = set(opts) - allowed[task] - common
    if unknown:
        raise ScoreReconError(f"unknown option(s) {', '.join(sorted(unknown))} for {task}; allowed: "
                              f"{', '.join(sorted(allowed[task] | common | {'solver', 'cg_iterations'}))}")
    if task == "sparse-ct":
        op: CTOperator = SparseViewCT(image_size, **opts)
    elif task == "limited-angle-ct":
        if "arc" in opts:
            opts["arc_degrees"] = opts.pop("arc")
        op = LimitedAngleCT(image_size, **opts)
    else:
        op = MetalTraceCT(image_size, **opts)
    if solver is not None:
        if solver not in SOLVERS:
            raise ScoreReconError(f"unknown CT proximal solver '{solver}'; choose one of {', '.join(SOLVERS)}")
        op.default_solver = solver
    if cg_iterations is not None:
        op.default_cg_iterations = check_count(cg_iterations, "cg_iterations", MAX_CG_ITERATIONS)
    return op


def _geometry_from_spec(spec: dict) -> dict:
    """The geometry options of an operator spec (older specs without ``geometry`` are parallel beam)."""
    kind = spec.get("geometry", "parallel")
    if kind not in GEOMETRIES:
        raise ScoreReconError(f"the operator description names CT geometry {kind!r}; this version knows "
                              f"{', '.join(GEOMETRIES)}")
    if kind == "parallel":
        return {"geometry": "parallel"}
    return {"geometry": "fan", "source_distance": spec["source_distance"],
            "detector_distance": spec["detector_distance"], "detector": spec.get("detector", "curved")}


def ct_operator_from_spec(spec: dict, arrays: dict[str, np.ndarray], device: Any = "cpu") -> CTOperator:
    """Rebuild a CT operator from ``op.spec()`` and ``op.arrays()``."""
    task = spec.get("task")
    arc = spec.get("arc")
    if arc is not None and (isinstance(arc, bool) or not isinstance(arc, int | float) or not math.isfinite(arc)
                            or not 0 < arc <= 360):
        raise ScoreReconError(f"the CT operator's arc {str(arc)[:40]!r} must be a number of degrees in (0, 360]; the "
                              "measurement file is corrupt, simulate it again")
    try:
        size = int(spec["image_size"])
        common = {"n_angles": spec.get("n_angles"), "backend": spec.get("backend", "auto"),
                  "device": device, "filter": spec.get("filter", "ram-lak"), **_geometry_from_spec(spec)}
        if task == "sparse-ct":
            op: CTOperator = SparseViewCT(size, views=np.asarray(arrays["views"]), **common)
        elif task == "limited-angle-ct":
            op = LimitedAngleCT(size, arc_degrees=float(spec["arc"]), **common)
            if not np.array_equal(op.views, np.asarray(arrays.get("views", op.views))):
                op._set_views(np.asarray(arrays["views"]))
        elif task == "metal-ct":
            op = MetalTraceCT(size, measured_bins=arrays["measured_bins"], dilation=int(spec.get("dilation", 1)),
                              **common)
            if "metal_mask" in arrays:
                op.metal_mask = as_bool_mask(arrays["metal_mask"], size, "metal_mask").to(op.device)
        else:
            raise ScoreReconError(f"spec describes unknown CT task '{task}'; expected sparse-ct, "
                                  "limited-angle-ct or metal-ct")
    except KeyError as exc:
        raise ScoreReconError(f"the {task} operator description lacks '{exc.args[0]}'; the measurement "
                              "file is incomplete, simulate it again") from None
    if "n_det" in spec and int(spec["n_det"]) != op.geometry.n_det:
        raise ScoreReconError(f"stored n_det {spec['n_det']} differs from this version's {op.geometry.n_det}; "
                              "simulate the measurement again")
    if spec.get("solver") in SOLVERS:
        op.default_solver = spec["solver"]
    if spec.get("cg_iterations") is not None:
        op.default_cg_iterations = check_count(spec["cg_iterations"], "cg_iterations", MAX_CG_ITERATIONS,
                                               where="of the CT operator")
    return op


__all__ = [
    "BACKENDS", "DETECTORS", "FILTERS", "GEOMETRIES", "MATRIX_FREE_CHUNK_ELEMENTS", "MAX_DET_PER_PIXEL",
    "MIN_IMAGE_SIZE", "PROJECTOR_FORMAT_VERSION", "REBIN_MODE", "SOLVERS", "STATS", "STORED_MATRIX_MAX_BYTES",
    "SYMMETRIC_MATRIX_MAX_BYTES", "TRACE_THRESHOLD", "CTOperator", "FanBeamGeometry", "Geometry", "JosephProjector",
    "LimitedAngleCT",
    "MatrixFreeJosephProjector", "MetalTraceCT", "ParallelBeamGeometry", "Projector", "SparseViewCT",
    "ViewSubsetGeometry", "auto_backend",
    "build_ct_operator", "build_joseph_matrix", "cache_dir", "cache_path", "clear_memo", "ct_operator_from_spec",
    "fan_fbp", "fbp", "fbp_filter", "filter_sinogram", "interpolate_trace", "joseph_matrices", "make_geometry",
    "make_projector", "metal_mask_from_image", "random_metal_mask", "rebin_to_parallel", "rebinned_geometry",
    "stored_matrix_bytes",
]
