"""How the CLI fails: refusals exit 2, bugs exit 1, each in one line (--debug: the traceback).

The promise of docs/cli.md ("Guarantees"), checked with ``helpers.assert_refused`` wherever a test feeds bad input
(test_data_io, test_measurement, test_option_checks, test_outputs, test_prior_files, test_train_resume): exit 2,
exactly one line on stderr naming the problem, no traceback, nothing at or beside the outputs.
"""

from __future__ import annotations

import pytest
from helpers import assert_refused, run

from ScoreReconLib.cli import is_out_of_memory, main


def test_argparse_errors_are_one_line(tmp_path, capsys):
    rc = main(["reconstruct", "--input", "x.npz", "--output", str(tmp_path / "r.nrrd"), "--method", "bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "invalid choice" in err


def test_out_of_memory_is_one_line(ct_files, tmp_path, capsys, monkeypatch):
    from ScoreReconLib.commands import reconstruct as rec

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 9999999999 bytes.\nError code 12")

    monkeypatch.setattr(rec, "reconstruct_job", oom)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "r.nrrd", "--method", "fbp"], capsys,
                   out, "out of memory")
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_unexpected_error_is_one_line_exit_1_and_debug_shows_traceback(ct_files, tmp_path, capsys, monkeypatch):
    from ScoreReconLib.commands import reconstruct as rec

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(rec, "reconstruct_job", bug)
    argv = ["reconstruct", "--input", ct_files["meas"], "--output", tmp_path / "r.nrrd", "--method", "fbp"]
    rc, lines = run(argv, capsys)
    assert rc == 1 and len(lines) == 1 and "internal error" in lines[0] and "--debug" in lines[0]
    with pytest.raises(ZeroDivisionError):
        main([str(a) for a in argv] + ["--debug"])


def test_a_library_warning_does_not_lengthen_a_refusal(ct_files, tmp_path, capsys, monkeypatch):
    """Issue 24: a numpy / torch warning raised on the way to a refusal must not add lines to it."""
    import warnings as w

    from ScoreReconLib.commands import reconstruct as rec

    real = rec.load_measurement

    def noisy_load(path):
        w.warn_explicit("overflow encountered in cast", RuntimeWarning, "numpy/core/fake.py", 1, module="numpy.core")
        w.warn_explicit("TypedStorage is deprecated", UserWarning, "torch/storage.py", 1, module="torch.storage")
        return real(path)

    monkeypatch.setattr(rec, "load_measurement", noisy_load)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", "--input", ct_files["meas"], "--output", out / "a.nrrd", "--method", "cs",
                    "--progress-format", "none"], capsys, out, "does not fit")
