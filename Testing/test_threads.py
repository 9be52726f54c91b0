"""``--threads`` on every computing command, and a default that does not oversubscribe a busy machine."""

from __future__ import annotations

import os

import pytest
import torch

from ScoreReconLib import cli, threads
from ScoreReconLib.commands import simulate

COMPUTING = ("simulate", "import-kspace", "import-sinogram", "reconstruct", "train", "sample", "evaluate", "tune",
             "demo")


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_takes_threads(command):
    sub = _subparsers()[command]
    option = next((a for a in sub._actions if "--threads" in a.option_strings), None)
    assert option is not None, f"{command} has no --threads"
    assert option.default is None  # None: the load-aware default
    assert "idle cores" in option.help


def test_threads_option_refuses_bad_counts(capsys):
    assert cli.main(["simulate", "--threads", "0", "--task", "mri", "--input", "x", "--output", "y"]) == 2
    assert "--threads: 0 threads is outside 1..1024" in capsys.readouterr().err
    assert cli.main(["reconstruct", "--threads", "two", "x"]) == 2
    assert "not a whole number of threads" in capsys.readouterr().err


def test_default_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


def test_default_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    busy = {"n": 0}
    monkeypatch.setattr(threads, "busy_cores", lambda: busy["n"])
    assert threads.default_threads() == threads.MAX_DEFAULT_THREADS  # idle: capped
    busy["n"] = 13
    assert threads.default_threads() == 3  # 13 of 16 cores busy
    busy["n"] = 40
    assert threads.default_threads() == 1  # oversubscribed already: never 0
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    busy["n"] = 0
    assert threads.default_threads() == 2


def test_busy_cores_counts_the_runnable_tasks_now(monkeypatch, tmp_path):
    """Linux: the runnable tasks of /proc/loadavg minus this process, not the lagging 1-minute average."""
    real_read = os.getloadavg
    seen = iter(["9.0 9.0 9.0 3/400 1\n", "9.0 9.0 9.0 2/400 1\n", "9.0 9.0 9.0 3/400 1\n"])
    monkeypatch.setattr(threads.Path, "read_text", lambda self: next(seen))
    assert threads.busy_cores() == 2  # median of 2, 1, 2 other runnable tasks
    monkeypatch.setattr(threads.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError("no /proc")))
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert threads.busy_cores() == 3  # elsewhere: the 1-minute load average
    assert real_read is not None


def test_cli_runs_the_command_with_the_threads_asked_and_restores_them(monkeypatch):
    seen = {}

    def fake_run(args):
        seen["threads"] = torch.get_num_threads()
        return 0

    monkeypatch.setattr(simulate, "run", fake_run)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    assert cli.main(["simulate", "--task", "mri", "--input", "x", "--output", "y", "--threads", str(wanted)]) == 0
    assert seen["threads"] == wanted
    assert torch.get_num_threads() == before


def test_cli_default_threads_follow_the_load(monkeypatch):
    seen = {}
    monkeypatch.setattr(simulate, "run", lambda args: seen.setdefault("threads", torch.get_num_threads()) and 0)
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert cli.main(["simulate", "--task", "mri", "--input", "x", "--output", "y"]) == 0
    assert seen["threads"] == 1
