"""Errors raised for bad user input.

Every problem a user can fix (wrong shape, NaN, a missing file, a model for another image size)
raises :class:`ScoreReconError` with a one-line message that names the problem and the fix. The CLI
prints that line and exits with status 2, without a traceback.
"""


class ScoreReconError(ValueError):
    """A problem with the user's input that the user can fix; the message says how."""


class CancelledError(RuntimeError):
    """Raised when a long run (training, sampling, a volume) is stopped by a cancel event."""
