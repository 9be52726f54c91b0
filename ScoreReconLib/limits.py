"""Upper bounds on every count that comes from a file, a model config or an option (issue 24).

A number in a measurement header, a ``config.json`` / ``tuned.json`` or on the command line must not be able to
hang the command or exhaust the machine: each count is checked against its bound here, with a one-line refusal
that names the bound, before any work starts.
"""

from __future__ import annotations

from typing import Any

from .errors import ScoreReconError

#: conjugate-gradient iterations of a data-consistency solve (CT proximal step, multi-coil SENSE / proximal)
MAX_CG_ITERATIONS = 1000
#: posterior samples averaged per slice (each costs a full sampler run)
MAX_SAMPLES = 1024
#: PDHG iterations of a TV / CS solve
MAX_SOLVER_ITERATIONS = 100_000


def check_count(value: Any, name: str, maximum: int, minimum: int = 1, where: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``; else :class:`ScoreReconError` naming ``name``, the bound and
    ``where`` it came from (e.g. "in the measurement header")."""
    at = f" {where}" if where else ""
    if isinstance(value, bool):
        raise ScoreReconError(f"{name}{at} must be a whole number from {minimum} to {maximum}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ScoreReconError(f"{name}{at} must be a whole number from {minimum} to {maximum}, got {value!r}") \
            from None
    if not (number == number and number.is_integer() and minimum <= number <= maximum):
        raise ScoreReconError(f"{name}{at} must be a whole number from {minimum} to {maximum}, got {value!r}")
    return int(number)
