"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from support.fake_backend import FakeBackend

from worker.engine.batching import ModelEngine

WAIT = 5.0  # seconds; generous, the engine answers in milliseconds


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The clients' event loop, on a thread of its own as the servicer's loop is."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()


@pytest.fixture
def engines() -> Iterator[Callable[..., ModelEngine]]:
    """Makes engines over fake backends; closes them at the end of the test."""
    started: list[ModelEngine] = []

    def make(backend: FakeBackend, max_queue: int = 8, **kwargs: object) -> ModelEngine:
        engine = ModelEngine("fake", backend, max_queue, **kwargs)  # type: ignore[arg-type]
        started.append(engine)
        return engine

    yield make
    for engine in started:
        assert engine.close("test over", WAIT)
