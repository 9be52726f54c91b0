"""Runs the reconstruction's commands in a child process without blocking Slicer (progress, cancel, log)."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: child output (stdout lines that are not progress records, and stderr) goes to Slicer's log through this logger
logger = logging.getLogger("ScoreRecon")

@dataclass
class ScoreReconStep:
    """One command of a run: ``args`` is the full argv; ``weight`` its share of the progress bar."""

    label: str
    args: list[str]
    weight: float = 1.0


class ScoreReconProcess:
    """Runs commands one after another in a child process, without blocking the caller.

    ``start()`` launches the first; ``poll()`` (call it from a timer) reads progress lines, starts
    the next command when one ends and returns the state: "pending", "running", "succeeded",
    "failed" or "cancelled". ``wait()`` polls until done (synchronous use). ``cancel()`` kills the
    process and its children (its own process group / session). A reconstruct command's
    ``{"progress": done, "total": n}`` JSON lines move :attr:`progress` (0…1 over all steps);
    other output is kept in :attr:`log`. After a failure :attr:`errorMessage` holds the command's
    error line and :attr:`returncode` its exit status (2: bad input).

    When every step is a ``python -m ScoreReconLib`` command of the same interpreter, all of them run in one
    child (``python -m ScoreReconLib.steps``), which loads torch and the library once; its ``{"step": i}`` lines
    move :attr:`stepIndex`, and progress, cancel and errors behave as with one child per step.
    """

    POLL_INTERVAL_S = 0.1
    TERMINATE_GRACE_S = 3.0

    def __init__(self, steps: list[ScoreReconStep], env: dict | None = None, cwd: str | None = None) -> None:
        if not steps:
            raise ValueError("a process needs at least one step")
        self.steps = list(steps)
        self.env = env
        self.cwd = cwd
        self.state = "pending"
        self.stepIndex = -1
        self.stepFraction = 0.0
        self.message = ""
        self.log: list[str] = []
        self.errorMessage = ""
        self.returncode: int | None = None
        self.startTime: float | None = None
        self.endTime: float | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._readers: list[threading.Thread] = []
        #: all steps run in one child (``ScoreReconLib.steps``)
        self.chained = self._chainable(self.steps)

    # ------------------------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")

    @property
    def pid(self) -> int | None:
        """Process id of the current command (also its process group on POSIX)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def progress(self) -> float:
        """Overall progress in [0, 1], weighting each step by its ``weight``."""
        if self.state == "succeeded":
            return 1.0
        total = sum(s.weight for s in self.steps)
        before = sum(s.weight for s in self.steps[:max(self.stepIndex, 0)])
        current = self.steps[self.stepIndex].weight * self.stepFraction if self.stepIndex >= 0 else 0.0
        return min(max((before + current) / total, 0.0), 1.0)

    @property
    def elapsed(self) -> float:
        if self.startTime is None:
            return 0.0
        return (self.endTime or time.monotonic()) - self.startTime

    # ---------------------------------------------------------------------------------- control
    def start(self) -> None:
        if self.state != "pending":
            raise RuntimeError(f"process already {self.state}")
        self.state = "running"
        self.startTime = time.monotonic()
        self._startStep(0)

    #: the start of an argv that runs the library's CLI
    LIBRARY_MODULE = ("-m", "ScoreReconLib")

    @classmethod
    def _chainable(cls, steps: list[ScoreReconStep]) -> bool:
        """Whether every step is ``PYTHON -m ScoreReconLib ...`` with the same ``PYTHON`` (and there are several)."""
        return len(steps) > 1 and all(len(s.args) > 3 and tuple(s.args[1:3]) == cls.LIBRARY_MODULE
                                      and s.args[0] == steps[0].args[0] for s in steps)

    def _chainedArgs(self) -> list[str]:
        """The one child's argv: ``PYTHON -m ScoreReconLib.steps FILE`` with the steps' arguments in FILE."""
        import tempfile

        folder = self.cwd or tempfile.mkdtemp(prefix="scorerecon-steps-")
        path = os.path.join(folder, "steps.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump([s.args[3:] for s in self.steps], fh)
        return [self.steps[0].args[0], "-m", "ScoreReconLib.steps", path]

    def _startStep(self, index: int) -> None:
        step = self.steps[index]
        self.stepIndex = index
        self.stepFraction = 0.0
        self.message = step.label
        self._stderr = []
        self._lines = queue.Queue()
        kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1,
                                      env=self.env, cwd=self.cwd)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        args = step.args
        if self.chained:
            args = self._chainedArgs()
            for s in self.steps:
                logger.info("ScoreRecon: step %s", " ".join(s.args))
        logger.info("ScoreRecon: running %s", " ".join(args))
        try:
            self._proc = subprocess.Popen(args, **kwargs)
        except OSError as exc:
            self._finish("failed", f"cannot start {step.args[0]}: {exc}")
            return
        self._readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, "out", self._lines), daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stderr, "err", self._lines), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, kind: str, lines: queue.Queue) -> None:
        try:
            for line in stream:
                lines.put((kind, line.rstrip("\r\n")))
        except (OSError, ValueError):  # stream closed by cancel()
            pass

    def poll(self) -> str:
        """Process new output, advance to the next step when one ends; return the state."""
        if self.state != "running":
            return self.state
        self._drain()
        proc = self._proc
        if proc is None or proc.poll() is None:
            return self.state
        for t in self._readers:
            t.join(timeout=5.0)
        self._drain()
        self.returncode = proc.returncode
        if proc.returncode == 0:
            self.stepFraction = 1.0
            if self.stepIndex + 1 < len(self.steps) and not self.chained:
                self._startStep(self.stepIndex + 1)
            else:
                self._finish("succeeded", "Done")
        elif proc.returncode == 130:
            self._finish("cancelled", "Cancelled")
        else:
            self._finish("failed", self._errorFromStderr())
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if kind == "err":
                self._stderr.append(line)
                if line.strip():
                    self.log.append(line)
                    logger.info("ScoreRecon: %s", line.strip())
            else:
                self._handleOutput(line)

    def _handleOutput(self, line: str) -> None:
        text = line.strip()
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if self.chained and isinstance(record, dict) and set(record) == {"step", "of"}:
                index = record["step"]
                if isinstance(index, int) and 0 <= index < len(self.steps):  # the chained child began a step
                    self.stepIndex, self.stepFraction = index, 0.0
                    self.message = self.steps[index].label
                return
            if isinstance(record, dict) and "progress" in record and "total" in record:
                try:
                    done, total = float(record["progress"]), float(record["total"])
                except (TypeError, ValueError):
                    done, total = 0.0, 1.0
                self.stepFraction = min(max(done / max(total, 1.0), 0.0), 1.0)
                label = self.steps[self.stepIndex].label
                self.message = f"{label}: {record.get('message') or f'{int(done)}/{int(total)}'}"
                return
            if isinstance(record, dict) and isinstance(record.get("result"), dict):
                self.log.append(json.dumps(record["result"]))
                logger.info("ScoreRecon: result %s", self.log[-1])
                return
        if text:
            self.log.append(text)
            logger.info("ScoreRecon: %s", text)

    def _errorFromStderr(self) -> str:
        lines = [ln.strip() for ln in self._stderr if ln.strip()]
        for ln in reversed(lines):
            if ": error: " in ln:
                return ln
        tail = " | ".join(lines[-5:]) if lines else "no error output"
        label = self.steps[self.stepIndex].label
        return f"{label} failed with exit status {self.returncode}: {tail}"

    def _finish(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        if state != "succeeded":
            self.errorMessage = message if state == "failed" else ""
        self.endTime = time.monotonic()

    def cancel(self) -> None:
        """Kill the running command and its children; the state becomes "cancelled"."""
        if self.done:
            return
        self._killTree()
        self._finish("cancelled", "Cancelled")

    def _killTree(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
            else:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=self.TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                if os.name != "nt":
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                proc.kill()
                proc.wait()
        elif os.name != "nt":  # the command ended; stop anything it left in its group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for t in self._readers:  # the pipes reach end-of-file once every writer is gone
            t.join(timeout=2.0)
        if not any(t.is_alive() for t in self._readers):
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def wait(self, timeout: float | None = None,
             callback: Callable[[ScoreReconProcess], None] | None = None) -> str:
        """Poll until done; ``callback(self)`` after each poll. On timeout cancel and raise TimeoutError."""
        if self.state == "pending":
            self.start()
        wait_until_done(self, timeout, callback, self.POLL_INTERVAL_S)
        return self.state


def wait_until_done(task, timeout: float | None, callback: Callable | None, interval: float,
                    idle: Callable[[], None] | None = None) -> None:
    """Poll ``task`` (anything with ``poll()`` and ``cancel()``) until it is no longer running.

    ``callback(task)`` after each poll and once at the end, ``idle()`` between polls (e.g. processing GUI
    events), then a sleep of ``interval`` s. After ``timeout`` seconds the task is cancelled and
    TimeoutError raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while task.poll() == "running":
        if callback is not None:
            callback(task)
        if deadline is not None and time.monotonic() > deadline:
            task.cancel()
            raise TimeoutError(f"the reconstruction did not finish within {timeout} s and was cancelled")
        if idle is not None:
            idle()
        time.sleep(interval)
    if callback is not None:
        callback(task)
