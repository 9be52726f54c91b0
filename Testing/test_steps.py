"""Several scorerecon commands in one process (ScoreReconLib.steps): step markers, stop at the first failure."""

from __future__ import annotations

import json
import subprocess
import sys

from ScoreReconLib.resources import resource_path
from ScoreReconLib.steps import main, run_steps


def _commands(tmp_path):
    meas, out = tmp_path / "m.npz", tmp_path / "fbp.nrrd"
    simulate = ["simulate", "--task", "sparse-ct", "--views", "8", "--size", "32", "--input",
                str(resource_path("samples", "ct_head_sample.nrrd")), "--output", str(meas)]
    fbp = ["reconstruct", "--input", str(meas), "--method", "fbp", "--output", str(out), "--progress-format", "none"]
    return simulate, fbp, out


def test_steps_run_in_order_and_stop_at_the_first_failure(tmp_path, capsys):
    simulate, fbp, out = _commands(tmp_path)
    assert run_steps([simulate, fbp]) == 0 and out.exists()
    markers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"step"')]
    assert markers == [{"step": 0, "of": 2}, {"step": 1, "of": 2}]
    out.unlink()
    bad = ["reconstruct", "--input", str(tmp_path / "missing.npz"), "--method", "fbp", "--output", str(out)]
    assert run_steps([bad, fbp]) == 2 and not out.exists()  # the second command never ran
    assert '{"step": 1' not in capsys.readouterr().out
    assert run_steps([["reconstruct", "--no-such-option"]]) == 2  # an argparse refusal keeps its status


def test_steps_file_is_checked(tmp_path, capsys):
    path = tmp_path / "steps.json"
    for text in ("not json", "[]", '[["simulate", 3]]', '{"a": 1}'):
        path.write_text(text)
        assert main([str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scorerecon steps: error:")
    assert main([]) == 2


def test_steps_module_runs_as_a_child(tmp_path):
    simulate, fbp, out = _commands(tmp_path)
    path = tmp_path / "steps.json"
    path.write_text(json.dumps([simulate, fbp]))
    done = subprocess.run([sys.executable, "-m", "ScoreReconLib.steps", str(path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert out.exists() and done.stdout.count('"step"') == 2
