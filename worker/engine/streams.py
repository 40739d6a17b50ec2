"""Carries events from an engine thread to the asyncio task that serves the client.

The engine never blocks on a client: events go into an unbounded asyncio queue through
`call_soon_threadsafe`, so a slow reader costs memory (bounded by max_tokens), not time on
the engine thread. The consumer's side cancels through a threading.Event that the engine
checks between tokens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from common.errors import LlamaherdError

T = TypeVar("T")


class _End:
    __slots__ = ()


_END = _End()


class EventStream(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[T | LlamaherdError | _End] = asyncio.Queue()
        self._cancelled = threading.Event()

    # ---- engine thread -------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: T) -> None:
        self._put(event)

    def fail(self, error: LlamaherdError) -> None:
        self._put(error)

    def close(self) -> None:
        self._put(_END)

    def _put(self, item: T | LlamaherdError | _End) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self._cancelled.set()

    # ---- client side ---------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    async def events(self) -> AsyncIterator[T]:
        """Yields events until the engine closes the stream; raises the error it failed with."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, LlamaherdError):
                raise item
            yield item
