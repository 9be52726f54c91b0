"""reconstruct's progress: whole slices and sampler steps, plain lines (no carriage returns) in logs and pipes."""

from __future__ import annotations

import io

from ScoreReconLib.commands.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(progress: Progress, per_slice: int, slices: int) -> None:
    for s in range(slices):
        for step in range(1, per_slice + 1):
            progress.update(s * per_slice + step, "proximal sampler")
    progress.close()


def test_a_log_gets_plain_lines_at_intervals_without_carriage_returns(monkeypatch):
    log = io.StringIO()
    p = Progress(2 * 6, 6, "tqdm", stream=log)
    assert p.fmt == "plain"
    p.plain_interval = 0.0  # every update prints (the default is 10 s)
    _run(p, 6, 2)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("progress:   8 % slice 1/2, step 1/6")
    assert "slice 2/2, step 3/6" in text
    assert lines[-1].startswith("progress: 100 % 2/2 slices")
    assert all("." not in line.split("%")[1].split("(")[0] for line in lines)  # no fractional slices


def test_plain_lines_are_throttled():
    log = io.StringIO()
    p = Progress(100, 10, "tqdm", stream=log)
    _run(p, 10, 10)  # fast: the first line (the run has started) and the finished one
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert "slice 1/10, step 1/10" in lines[0] and "100 % 10/10 slices" in lines[1]


def test_a_terminal_gets_a_bar_counting_steps_within_a_slice():
    term = _Terminal()
    p = Progress(3 * 4, 4, "tqdm", stream=term)
    assert p.fmt == "tqdm" and p.bar is not None
    p.update(6, "proximal sampler", force=True)
    assert p.position() == "slice 2/3, step 2/4"
    assert "slice 2/3, step 2/4" in term.getvalue()
    assert "/1 slices" not in term.getvalue() and "0.5/" not in term.getvalue()
    p.close()


def test_classical_methods_count_percent_of_a_slice():
    p = Progress(2 * 1000, 1000, "none", steps=False)
    p.update(1500)
    assert p.position() == "slice 2/2, 50 %"
    p.update(2000)
    assert p.position() == "2/2 slices"
