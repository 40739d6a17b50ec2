"""Unit tests of the control plane never start Ray: its logic must run without it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    ray = sys.modules.get("ray")
    if ray is not None:

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("unit tests must not start Ray; use tests/integration")

        monkeypatch.setattr(ray, "init", refuse)
    yield
