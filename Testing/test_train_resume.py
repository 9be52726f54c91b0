"""Resuming training: corrupt or hostile training states refused, stale temporaries swept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import assert_refused

from ScoreReconLib.cli import main
from ScoreReconLib.utils import temp_name_prefix

STATE_CASES = ["pickled", "not-a-dict", "step-float", "step-negative", "seconds-nan", "rng-shape", "model-shapes",
               "garbage-bytes"]


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("case", STATE_CASES)
def test_corrupt_resume_state(trained_whole_prior, tmp_path, capsys, case):
    data, ckpt = trained_whole_prior
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    path = folder / "training_state.pt"
    state = torch.load(path, weights_only=True)
    if case == "pickled":
        torch.save({"evil": _Evil(), **state}, path)
    elif case == "not-a-dict":
        torch.save([1, 2], path)
    elif case == "step-float":
        torch.save({**state, "step": torch.tensor(1.5)}, path)
    elif case == "step-negative":
        torch.save({**state, "step": torch.tensor(-3)}, path)
    elif case == "seconds-nan":
        torch.save({**state, "seconds": torch.tensor(float("nan"))}, path)
    elif case == "rng-shape":
        torch.save({**state, "rng": torch.zeros(3, dtype=torch.uint8)}, path)
    elif case == "model-shapes":
        torch.save({**state, "model": {k: torch.zeros(2) for k in state["model"]}}, path)
    else:
        path.write_bytes(b"\x00garbage" * 10)
    argv = ["train", "--data", data, "--output", folder, "--size", "16", "--steps", "4", "--batch-size", "2",
            "--channels", "8,8", "--attention-levels", "0,0", "--quiet", "--prior", "whole", "--resume"]
    line = assert_refused(argv, capsys, folder)
    assert "resume" in line or "training_state" in line, line


def test_resume_sweeps_what_a_killed_checkpoint_write_left(trained_whole_prior, tmp_path, capsys):
    data, ckpt = trained_whole_prior
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    prefix = temp_name_prefix("training_state.pt").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    stale = folder / f"{prefix}zzz.tmp"
    stale.write_bytes(b"partial")
    rc = main(["train", "--data", str(data), "--output", str(folder), "--size", "16", "--steps", "3",
               "--batch-size", "2", "--channels", "8,8", "--attention-levels", "0,0", "--quiet", "--prior", "whole",
               "--resume"])
    capsys.readouterr()
    assert rc == 0 and not stale.exists()
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]
