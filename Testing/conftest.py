"""Shared pytest setup: few threads, a private projector cache, fixed seeds."""

from __future__ import annotations

import os

import pytest
import torch


def _threads() -> int:
    """At most 2 threads, fewer if ``OMP_NUM_THREADS`` says so (oversubscribed CPUs run far slower)."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS") or 2)
    except ValueError:
        wanted = 2
    return max(1, min(2, os.cpu_count() or 1, wanted))


torch.set_num_threads(_threads())
# the CLI's load-aware default (ScoreReconLib.threads) honours OMP_NUM_THREADS: commands run in-process by the
# tests keep this count whatever the machine's load, so results compared across runs use the same threads
os.environ["OMP_NUM_THREADS"] = str(_threads())


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the CT system-matrix cache of the test run out of the user's cache."""
    cache = tmp_path_factory.mktemp("scorerecon-cache")
    old = os.environ.get("SCORERECON_CACHE")
    os.environ["SCORERECON_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SCORERECON_CACHE", None)
    else:
        os.environ["SCORERECON_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny networks run fastest (and steadiest on a shared CPU) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ----------------------------------------------------------------------------- Slicer module tests
def _standin():
    """Testing/slicer_stub/standin.py, loaded by path (it is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "slicer_stub" / "standin.py"
    spec = importlib.util.spec_from_file_location("scorerecon_slicer_standin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sr():
    """The ScoreRecon module imported on slicer-core with the stand-ins in place (per test module)."""
    standin = _standin()
    if standin.slicer_core() is None:
        pytest.skip("slicer-core is not installed (pip install slicer-core==5.13.31053.0)")
    with standin.stand_ins() as module:
        yield module


@pytest.fixture
def slicer(sr):
    """The ``slicer`` package with a fresh, empty scene for each test."""
    import slicer as slicer_module

    slicer_module.mrmlScene = slicer_module.vtkMRMLScene()
    return slicer_module
