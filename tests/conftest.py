from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.leftovers import MARK_ENV, Watcher, new_mark

_watcher: Watcher | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Marks every process this run starts, before anything starts one, and starts the
    watcher that ends them once the run is over, however it ends (support.leftovers): a
    fixture that died mid-start or a killed pytest leaves no Ray GCS, raylet or worker."""
    global _watcher
    if MARK_ENV in os.environ:  # a run inside a run (pytester): the outer watcher covers it
        return
    mark = new_mark("pytest")
    os.environ[MARK_ENV] = mark
    _watcher = Watcher(mark)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _watcher
    if _watcher is not None:
        code = _watcher.close()
        _watcher = None
        if code != 0:
            print(f"\nprocesses started by the tests survived SIGKILL (see above; {code})")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real embedded model (Gemma 3 270M Q4_K_M), assembled from its PyPI package."""
    from common.model_settings import DEFAULT_MODEL
    from worker.models.builtin import resolve

    return resolve("builtin:" + DEFAULT_MODEL)
