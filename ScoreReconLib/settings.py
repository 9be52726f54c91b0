"""The score method's settings: one frozen :class:`SamplerSettings`, validated in one place, and how it is resolved
from the sampler's :data:`DEFAULTS`, the prior's recommendation (``config.json`` / ``tuned.json``) and the caller's
options (:func:`resolve_settings`).

Every layer — the CLI flags, the Python API, the Slicer module's parameter node — names its options after the
fields in :data:`USER_OPTIONS`; a test checks each against the dataclass and the CLI parser.

>>> s = resolve_settings("proximal", prior, task="sparse-ct", lam=0.9)   # tuned values, then the call's
>>> s.lam, s.steps, s.samples
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ScoreReconError
from .limits import MAX_CG_ITERATIONS, MAX_SAMPLES, MAX_SOLVER_ITERATIONS, check_count
from .vocabulary import ADAPT_MODES, SAMPLER_NAMES  # SAMPLER_NAMES: the samplers :data:`~.sampling.SAMPLERS` holds

DEFAULT_METHOD = "proximal"
#: values of ``SamplerSettings.init``
INITS = ("noise", "classical")
#: most test-time adaptation steps
MAX_ADAPT_STEPS = 10_000
#: most sampler steps a reconstruction accepts (the paper's 1000, with a wide margin)
MAX_SAMPLER_STEPS = 10_000

#: defaults per sampler and modality, used where neither the call nor the prior's config says otherwise.
#: proximal: snr and λ of the official LIDC CT / BraTS MRI configs with 25 steps instead of the official 1000
#: (pass steps=1000 for the paper's setting). Every sampler starts from noise at t = 1 and the proximal step has
#: no TV term; the shipped priors' recommendations override these.
_START = {"init": "noise", "t_start": 1.0}
_PLAIN_MERGE = {"tv_weight": 0.0, "tv_iters": 10}
DEFAULTS: dict[str, dict[str, dict]] = {
    "proximal": {"CT": {"steps": 25, "lam": 0.841, "snr": 0.246, **_PLAIN_MERGE, **_START},
                 "MR": {"steps": 25, "lam": 1.0, "snr": 0.517, **_PLAIN_MERGE, **_START}},
    "song2021": {"CT": {"steps": 1000, "lam": 1.0, "snr": 0.16, **_START},
                 "MR": {"steps": 1000, "lam": 1.0, "snr": 0.16, **_START}},
    "fast": {"CT": {"steps": 50, "lam": 1.0, "snr": 0.0, **_START},
             "MR": {"steps": 50, "lam": 1.0, "snr": 0.0, **_START}},
}

#: keys a prior's ``recommended`` / ``tuned.json`` may set (see :func:`tuned_values`); ``samples`` and the
#: operator-dependent ``std_scale`` are read by :func:`recommended_samples` and
#: :func:`ScoreReconLib.reconstruction.std_scale_for`
TUNABLE = ("steps", "lam", "snr", "cg_iters", "eta", "noise_rate", "tv_weight", "tv_iters", "init", "t_start",
           "init_weight", "final_lam", "noise_std", "noise_scale", "adapt", "adapt_steps")

#: the options a user sets (CLI ``--sampler`` for ``method``, ``--<name>`` for the others; the Slicer module's
#: settings of the same names); the other fields are the samplers' internals
USER_OPTIONS = ("method", "steps", "lam", "snr", "samples", "tv_weight", "init", "t_start", "init_weight",
                "noise_std", "noise_scale", "final_lam", "z_tv", "z_shared_noise", "adapt", "adapt_steps")


@dataclass(frozen=True)
class SamplerSettings:
    """Everything a score reconstruction needs besides the prior, the operator and the seed; frozen and valid once
    built (every field is checked in ``__post_init__``). Build it with :func:`resolve_settings`; derive one with
    :func:`dataclasses.replace` (which checks again)."""

    steps: int
    lam: float
    snr: float = 0.16
    noise_rate: float = 1.0
    cg_iters: int = 5
    eta: float = 0.85
    eps: float = 1e-5
    corrector_steps: int = 1
    #: predictor of the proximal / song2021 samplers ("ancestral", "reverse_diffusion", "euler_maruyama")
    predictor: str = "ancestral"
    #: proximal only: TV weight w of :func:`~ScoreReconLib.sampling.tv_proximal` (``--method tv --weight`` units);
    #: 0 = the paper's step
    tv_weight: float = 0.0
    #: proximal only: PDHG iterations per TV-regularised step
    tv_iters: int = 10
    #: start of the reverse process: "noise" (p_T) or "classical" (a TV / CS image noised to ``t_start``)
    init: str = "noise"
    #: time in (0, 1] the reverse process starts at; < 1 needs ``init="classical"``; ``steps`` are run from it
    t_start: float = 1.0
    #: TV / CS weight of the classical start (None → chosen from the measurement, :mod:`ScoreReconLib.parameter_choice`)
    init_weight: float | None = None
    #: proximal only: λ of the final merge after the Tweedie step (None → 1 for noise-free data, the paper's
    #: hard merge; the noise-aware weight at the last time otherwise, see :mod:`ScoreReconLib.noise`)
    final_lam: float | None = None
    #: noise std of one measured entry (None → estimated from y; 0 → noise-free, the paper's constant λ); the
    #: proximal merge weight falls as λ_t = λ v_t / (v_t + σ_y²) (:func:`~ScoreReconLib.noise.noise_aware_lam`)
    noise_std: float | None = None
    #: proximal only: factor on σ_y in the noise-aware weight (> 1 hands over to the prior earlier)
    noise_scale: float = 1.0
    #: proximal only: weight of the TV term along the batch axis (slices of a volume, in order) applied after
    #: every data-consistency step (:func:`~ScoreReconLib.sampling.z_tv_proximal`); 0 = slices independent
    z_tv: float = 0.0
    #: proximal only: dual iterations of each z-TV step
    z_tv_iters: int = 20
    #: proximal only: the slices of a batch share every noise draw of the sampler (start, predictor,
    #: corrector, ŷ_t), so their independent-sampling flicker is correlated away; the data still differ
    z_shared_noise: bool = False
    #: the conditional sampler (:data:`SAMPLER_NAMES`)
    method: str = DEFAULT_METHOD
    #: posterior samples averaged (each costs a full sampler run; the std needs 2 or more)
    samples: int = 1
    #: test-time adaptation of the prior to the measurement before sampling (:mod:`ScoreReconLib.adaptation`):
    #: "none" or "lora" (low-rank adapters fitted until the denoised image explains the data to their noise)
    adapt: str = "none"
    #: most adapter steps (the discrepancy principle usually stops earlier on noisy data)
    adapt_steps: int = 20

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        _validate(values)
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def record(self) -> dict[str, Any]:
        """The user-facing settings as plain JSON values for ``metrics.json`` (``method`` as ``"sampler"``)."""
        return {("sampler" if k == "method" else k): getattr(self, k) for k in USER_OPTIONS}


def _validate(v: dict[str, Any]) -> None:
    """Check and normalise (in place) every field of a :class:`SamplerSettings`; the one place they are checked."""
    method = v["method"]
    if method not in SAMPLER_NAMES:
        raise ScoreReconError(f"unknown sampler '{method}'; choose one of {', '.join(SAMPLER_NAMES)}")
    steps = _number(v, "steps", "--steps")
    if not steps.is_integer() or not 1 <= steps <= MAX_SAMPLER_STEPS:
        raise ScoreReconError(f"--steps must be a whole number from 1 to {MAX_SAMPLER_STEPS}, got {v['steps']}; "
                              "use at least 10 from noise (the model's default is tuned)")
    if not 0.0 <= _number(v, "lam", "--lam") <= 1.0:
        raise ScoreReconError(f"--lam must lie in [0, 1], got {v['lam']}")
    if _number(v, "snr", "--snr") < 0:
        raise ScoreReconError(f"--snr must be non-negative, got {v['snr']}")
    for key in ("eta", "noise_rate", "eps"):
        v[key] = _number(v, key, key)
    where = "(model config / tuned.json / call)"
    v["cg_iters"] = check_count(v["cg_iters"], "cg_iters", MAX_CG_ITERATIONS, where=where)
    v["tv_iters"] = check_count(v["tv_iters"], "tv_iters", MAX_SOLVER_ITERATIONS, where=where)
    v["steps"], v["lam"], v["snr"] = int(steps), float(v["lam"]), float(v["snr"])
    v["samples"] = check_count(v["samples"], "--samples", MAX_SAMPLES)
    v["corrector_steps"] = check_count(v["corrector_steps"], "corrector_steps", 100)
    v["z_tv_iters"] = check_count(v["z_tv_iters"], "z_tv_iters", MAX_SOLVER_ITERATIONS)
    _proximal_weight(v, "tv_weight", "--tv-weight", "no TV term", "1e-4")
    _proximal_weight(v, "z_tv", "--z-tv", "slices independent", "0.01")
    if not isinstance(v["z_shared_noise"], bool):
        raise ScoreReconError(f"z_shared_noise must be True or False, got {v['z_shared_noise']!r}")
    if v["z_shared_noise"] and method != "proximal":
        raise ScoreReconError(f"--z-shared-noise applies only to the proximal sampler, not '{method}'")
    if v["init"] not in INITS:
        raise ScoreReconError(f"--init must be one of {', '.join(INITS)}, got {v['init']!r}")
    t_start = _number(v, "t_start", "--t-start")
    if not 0.0 < t_start <= 1.0:
        raise ScoreReconError(f"--t-start must lie in (0, 1], got {v['t_start']}")
    if t_start < 1.0 and v["init"] != "classical":
        raise ScoreReconError(f"--t-start {t_start} < 1 needs --init classical (a noise start begins at t = 1)")
    v["t_start"] = t_start
    _optional_number(v, "noise_std", "--noise-std", lambda x: x >= 0, "be >= 0 (0 = noise-free data)")
    v["noise_scale"] = _number(v, "noise_scale", "--noise-scale")
    if not v["noise_scale"] > 0:
        raise ScoreReconError(f"--noise-scale must be > 0, got {v['noise_scale']}")
    if _optional_number(v, "final_lam", "--final-lam", lambda x: 0.0 <= x <= 1.0, "lie in [0, 1]") \
            and method != "proximal":
        raise ScoreReconError(f"--final-lam applies only to the proximal sampler, not '{method}'")
    _optional_number(v, "init_weight", "--init-weight", lambda x: x >= 0, "be >= 0")
    if v["adapt"] not in ADAPT_MODES:
        raise ScoreReconError(f"--adapt must be one of {', '.join(ADAPT_MODES)}, got {v['adapt']!r}")
    v["adapt_steps"] = check_count(v["adapt_steps"], "--adapt-steps", MAX_ADAPT_STEPS, minimum=0)


def _proximal_weight(v: dict, key: str, flag: str, zero: str, example: str) -> None:
    """Check and normalise a proximal-only weight ``v[key]``: a finite number >= 0 (``zero``: what 0 means), and
    0 for any other sampler."""
    weight = _number(v, key, flag)
    if weight < 0:
        raise ScoreReconError(f"{flag} must be >= 0 (0 = {zero}), got {v[key]}; try {example}")
    if weight > 0 and v["method"] != "proximal":
        raise ScoreReconError(f"{flag} applies only to the proximal sampler, not '{v['method']}'; "
                              f"use --sampler proximal or drop {flag}")
    v[key] = weight


def _number(v: dict, key: str, flag: str) -> float:
    try:
        value = float(v[key])
    except (TypeError, ValueError):
        raise ScoreReconError(f"{flag} must be a number, got {v[key]!r}") from None
    if not math.isfinite(value):
        raise ScoreReconError(f"{flag} must be a finite number, got {v[key]}")
    return value


def _optional_number(v: dict, key: str, flag: str, ok, rule: str) -> bool:
    """Check and normalise ``v[key]`` if it is set (not None): a finite number with ``ok(value)``, else
    ``{flag} must {rule}``. Returns whether it was set."""
    if v.get(key) is None:
        return False
    value = _number(v, key, flag)
    if not ok(value):
        raise ScoreReconError(f"{flag} must {rule}, got {v[key]}")
    v[key] = value
    return True


def tuned_values(prior, method: str, task: str | None = None) -> dict:
    """Hyperparameters the prior's config (or its ``tuned.json`` sidecar) recommends for ``method``.

    ``prior.recommended`` may hold flat values for its ``sampler``, per-sampler dicts
    (``{"fast": {...}}``) and per-task dicts (``{"tasks": {"sparse-ct": {"fast": {...}}}}``); the
    most specific wins.
    """
    rec = getattr(prior, "recommended", None) or {}
    out: dict = {}
    if rec.get("sampler") == method:
        out.update({k: v for k, v in rec.items() if not isinstance(v, dict)})
    if isinstance(rec.get(method), dict):
        out.update(rec[method])
    per_task = (rec.get("tasks") or {}).get(task or "", {})
    if isinstance(per_task.get(method), dict):
        out.update(per_task[method])
    return out


def recommended_samples(prior, method: str, task: str | None = None) -> int:
    """Posterior samples averaged by default: the prior's tuned ``samples`` for ``method``/``task``, else 1."""
    value = tuned_values(prior, method, task).get("samples")
    if value is None:
        return 1
    return check_count(value, "the model's recommended samples", MAX_SAMPLES,
                       where="(config.json / tuned.json; fix the file)")


_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplerSettings))


def resolve_settings(method: str | None, prior, steps: int | None = None, lam: float | None = None,
                     snr: float | None = None, task: str | None = None, **options: Any) -> SamplerSettings:
    """The settings of one reconstruction, resolved once: :data:`DEFAULTS` for ``method`` (None → the default
    sampler) and the prior's modality, then the prior's tuned values for ``task`` (:func:`tuned_values`,
    :func:`recommended_samples`), then the call's options (None = not given). ``options`` are other
    :class:`SamplerSettings` fields, e.g. ``samples``, ``tv_weight``, ``init="classical"``, ``t_start``."""
    method = DEFAULT_METHOD if method is None else method
    if method not in SAMPLER_NAMES:
        raise ScoreReconError(f"unknown sampler '{method}'; choose one of {', '.join(SAMPLER_NAMES)}")
    unknown = sorted(k for k in options if k not in _FIELDS or k == "method")
    if unknown:
        raise ScoreReconError(f"unknown sampler setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(_FIELDS - {'method'}))}")
    base: dict[str, Any] = dict(DEFAULTS[method].get(prior.modality, DEFAULTS[method]["CT"]))
    tuned = tuned_values(prior, method, task)
    base.update({k: tuned[k] for k in TUNABLE if tuned.get(k) is not None})
    base.update({k: v for k, v in (("steps", steps), ("lam", lam), ("snr", snr)) if v is not None})
    base.update({k: v for k, v in options.items() if v is not None})
    if "samples" not in base:
        base["samples"] = recommended_samples(prior, method, task)
    return SamplerSettings(method=method, **base)
