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
