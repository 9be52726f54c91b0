"""Write a benchmark's table into benchmarks/RESULTS.md between its own markers."""

from __future__ import annotations

import fcntl
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_description() -> str:
    """One line naming the machine a benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads){gpu}, Python {platform.python_version()}")


def update_section(name: str, markdown: str, command: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = (f"{begin}\n## {name}\n\nCommand: `{command}`  \nMachine: {machine_description()}  \n"
            f"Date: {stamp}\n\n{markdown.strip()}\n{end}")
    header = "# Benchmark results\n\nEach section is written by the benchmark script it names.\n"
    with open(RESULTS.with_suffix(".lock"), "w") as lock:  # several benchmarks may finish at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace(text_or(header), begin, end, body)


def text_or(header: str) -> str:
    """The current RESULTS.md, or ``header`` for a new file."""
    return RESULTS.read_text() if RESULTS.exists() else header


def _replace(text: str, begin: str, end: str, body: str) -> None:
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + body + post
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)  # a crash mid-write never truncates RESULTS.md
