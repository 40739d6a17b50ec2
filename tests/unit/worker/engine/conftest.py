"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

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
