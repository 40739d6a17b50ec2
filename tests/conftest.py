from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real embedded model (Gemma 3 270M Q4_K_M), assembled from its PyPI package."""
    from common.model_settings import DEFAULT_MODEL
    from worker.models.builtin import resolve

    return resolve("builtin:" + DEFAULT_MODEL)
