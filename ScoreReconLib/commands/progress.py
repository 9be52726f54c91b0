"""Progress of ``scorerecon reconstruct``: a tqdm bar on a terminal, plain lines in a log, or JSON lines."""

from __future__ import annotations

import json
import sys
import time


class Progress:
    """Overall progress in work units (slices, or slices × sampler steps): a tqdm bar on a terminal, plain lines
    at intervals when stderr is a log or a pipe, or JSON lines (``--progress-format json``).

    Positions are whole slices and, within a slice, whole sampler steps ("slice 2/5, step 8/24"), never fractions.
    """

    #: seconds between two plain lines (stderr not a terminal)
    plain_interval = 10.0

    def __init__(self, total_units: int, units_per_slice: int, fmt: str, enabled: bool = True,
                 stream=None, steps: bool = True) -> None:
        #: units are sampler steps (shown as "step j/K"); else fractions of a slice's work (shown in %)
        self.steps = steps
        self.total = max(int(total_units), 1)
        self.per_slice = max(int(units_per_slice), 1)
        self.stream = sys.stderr if stream is None else stream
        self.fmt = fmt if enabled else "none"
        if self.fmt == "tqdm" and not _is_terminal(self.stream):
            self.fmt = "plain"
        self.done = 0
        self.last = 0.0
        self.start = time.monotonic()
        #: seconds between two reports (the bar and JSON lines are throttled)
        self.interval = 0.2
        self.bar = None
        if self.fmt == "tqdm":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(self.position(), refresh=False)

    @property
    def slices(self) -> int:
        return max(1, self.total // self.per_slice)

    def position(self) -> str:
        """Where the run is: "3/10 slices", or "slice 2/5, step 8/24" within a slice of several steps."""
        if self.per_slice == 1 or self.done >= self.total:
            return f"{min(self.done // self.per_slice, self.slices)}/{self.slices} slices"
        index, step = divmod(self.done, self.per_slice)
        within = f"step {step}/{self.per_slice}" if self.steps else f"{100 * step // self.per_slice} %"
        return f"slice {index + 1}/{self.slices}, {within}"

    def update(self, done_units: int, message: str = "", force: bool = False) -> None:
        """Report ``done_units``; throttled to :attr:`interval` s (plain lines: :attr:`plain_interval` s) unless
        finished (JSON and the bar also when ``force``)."""
        done = min(int(done_units), self.total)
        now = time.monotonic()
        if done == self.done and (not force or self.fmt == "plain") and self.last:
            return
        self.done = done
        finished = done == self.total
        if self.fmt == "plain":
            if not (finished or now - self.last >= self.plain_interval):
                return
        elif not (force or finished or now - self.last >= self.interval):
            return
        self.last = now
        if self.fmt == "json":
            line = {"progress": self.done, "total": self.total}
            if message:
                line["message"] = message
            print(json.dumps(line), flush=True)
        elif self.fmt == "plain":
            elapsed = now - self.start
            frac = self.done / self.total
            left = f", ~{elapsed * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 else ""
            print(f"progress: {100 * frac:3.0f} % {self.position()} ({elapsed:.0f} s{left})"
                  + (f" {message}" if message else ""), file=self.stream, flush=True)
        elif self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(self.position() + (f" {message}" if message else ""), refresh=False)
            self.bar.refresh()

    def write(self, text: str, record: dict | None = None) -> None:
        if self.fmt == "json":
            print(json.dumps({"result": record or {"message": text}}), flush=True)
        elif self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
