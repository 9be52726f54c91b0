"""The CSV logs a run writes beside its checkpoint: training loss per log interval, validation loss per checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

from ..utils import atomic_path

#: training loss per log interval: ``step, loss, lr, seconds``
LOSS_LOG = "loss_log.csv"
#: validation loss per checkpoint (``--val-data``): ``step, val_loss``
VAL_LOG = "val_log.csv"


def prepare_log(path: Path, start: int, header: tuple[str, ...] = ("step", "loss", "lr", "seconds")) -> None:
    """Create a log CSV, or on resume drop rows past ``start`` (written after the last checkpoint)."""
    rows: list[list[str]] = []
    if start > 0 and path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh)][1:]
        rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= start]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        w.writerows(rows)


def append_log(path: Path, step: int, loss: float, lr: float, seconds: float) -> None:
    """Add one row to the training-loss log."""
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow([step, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.2f}"])


def append_val_log(path: Path, step: int, val_loss: float) -> None:
    """Add one row to the validation-loss log."""
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow([step, f"{val_loss:.6f}"])
