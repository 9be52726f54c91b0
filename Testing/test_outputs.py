"""Output files: checked before work, written whole or not at all, never two outputs on one path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import assert_refused, rewrite_npz, run

from ScoreReconLib.utils import atomic_path, make_temp_beside, sweep_stale_temps, temp_name_prefix

REPO = Path(__file__).resolve().parents[1]


def test_unwritable_outputs_are_refused_before_work(ct_files, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    from ScoreReconLib.commands import reconstruct as rec

    def no_work(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(rec, "reconstruct_job", no_work)
    for argv in (["reconstruct", "--input", ct_files["meas"], "--output", blocker / "r.nrrd", "--method", "tv"],
                 ["reconstruct", "--input", ct_files["meas"], "--output", tmp_path / "r.nrrd", "--method", "tv",
                  "--metrics-json", blocker / "deep" / "m.json"],
                 ["simulate", "--input", ct_files["ct"], "--task", "sparse-ct", "--output", blocker / "m.npz"],
                 ["sample", "--model", "default-ct", "--output", blocker / "s.png", "--size", "16", "--n", "1"],
                 ["train", "--data", ct_files["ct"], "--output", blocker / "ckpt", "--size", "16", "--steps", "1"]):
        assert_refused(argv, capsys, tmp_path, "a_file")


def test_outputs_may_not_share_a_path(ct_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "score",
                    "--samples", "2", "--std-output", out / "r.nrrd"], capsys, out, "same path")
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "fbp",
                    "--metrics-json", out / "r.nrrd"], capsys, out, "same path")


def test_batch_with_a_bad_second_file_writes_nothing(ct_files, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(ct_files["meas"], folder / "a.npz")
    rewrite_npz(ct_files["meas"], folder / "b.npz", header={"operator": {"filter": 7}})
    out = tmp_path / "out"
    assert_refused(["reconstruct", "--input", folder, "--output", out, "--method", "fbp"], capsys, tmp_path)
    assert not out.exists() or list(out.iterdir()) == []


def test_batch_failing_while_writing_leaves_no_output(ct_files, tmp_path, capsys, monkeypatch):
    from ScoreReconLib.commands import reconstruct as rec

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(ct_files["meas"], folder / f"{name}.npz")
    real, calls = rec.write_volume, []

    def failing_write(m, x, path, is_std=False):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(m, x, path, is_std)

    monkeypatch.setattr(rec, "write_volume", failing_write)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["reconstruct", "--input", folder, "--output", out, "--method", "fbp",
                           "--progress-format", "none"], capsys, out)
    assert "disk is full" in line and len(calls) == 3


def test_atomic_write_removes_its_temporary_on_interrupt(tmp_path):
    target = tmp_path / "x.nrrd"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        prefix_dead = temp_name_prefix("r.nrrd").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
        prefix_alive = temp_name_prefix("r.nrrd").replace(f"-{os.getpid()}-", f"-{alive.pid}-")
        stale = tmp_path / f"{prefix_dead}abc123.tmp.nrrd"
        live = tmp_path / f"{prefix_alive}def456.tmp.nrrd"
        other_host = tmp_path / f".r.nrrd.otherhost-{dead.pid}-abc.tmp.nrrd"
        foreign = tmp_path / ".r.nrrd.notours.tmp"
        for p in (stale, live, other_host, foreign):
            p.write_text("x")
        removed = sweep_stale_temps(tmp_path, "r.nrrd")
        assert removed == [stale]
        assert live.exists() and other_host.exists() and foreign.exists()
        mine = make_temp_beside(tmp_path / "r.nrrd", ".nrrd")
        assert sweep_stale_temps(tmp_path) == [] and mine.exists()  # this process is alive
    finally:
        alive.kill()
        alive.wait()


def test_sigterm_stops_cleanly_with_143(ct_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "ScoreReconLib", "reconstruct", "--input", str(ct_files["meas2"]),
                             "--output", str(out / "r.nrrd"), "--method", "tv", "--iters", "100000",
                             "--progress-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    try:
        line = proc.stdout.readline()  # the first progress line: the work has started
        assert "progress" in line, line + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["scorerecon reconstruct: terminated"], err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_a_writer_that_leaves_an_empty_file_is_an_error_not_exit_0(ct_files, tmp_path, capsys, monkeypatch, suffix):
    """SimpleITK's writers can end 'successfully' with an empty file on a full disk: the read-back catches it,
    exit 2, one line, nothing at the output path (issue 24)."""
    real = sitk.WriteImage

    def full_disk(image, path, *args, **kwargs):
        Path(path).write_bytes(b"")  # what a full disk left

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / f"a{suffix}", "--method",
                           "fbp", "--progress-format", "none"], capsys, out)
    assert "the file came out empty" in line and "disk may be full" in line
    monkeypatch.setattr(sitk, "WriteImage", real)


def test_a_cut_short_file_is_caught_by_the_read_back(ct_files, tmp_path, capsys, monkeypatch):
    real = sitk.WriteImage

    def cut_short(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", cut_short)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "fbp",
                           "--progress-format", "none"], capsys, out)
    assert "does not read back" in line or "reads back as" in line


def test_a_full_disk_on_fsync_is_named(ct_files, tmp_path, capsys, monkeypatch):
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "fbp",
                           "--progress-format", "none"], capsys, out)
    assert "the disk is full" in line and "a.nrrd" in line


def test_metrics_that_cannot_be_written_keep_the_image_out_of_place_too(ct_files, tmp_path, capsys, monkeypatch):
    """Image and metrics move together: a failing --metrics-json leaves neither (issue 24)."""
    import errno

    from ScoreReconLib.commands import reconstruct as rec

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rec, "save_json", full)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "fbp",
                    "--metrics-json", out / "m.json", "--progress-format", "none"], capsys, out, "disk is full")
    monkeypatch.undo()
    rc, _ = run(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "fbp",
                 "--metrics-json", out / "m.json", "--progress-format", "none"], capsys)
    assert rc == 0 and (out / "a.nrrd").is_file() and json.loads((out / "m.json").read_text())["method"] == "fbp"
