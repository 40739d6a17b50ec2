"""Bounded thread pools, one per kind of blocking work, so one kind cannot starve another.

The worker's event loop must never block: it serves every stream, health and the
heartbeat. Blocking work goes to a pool of its own kind (model files: loads, estimates;
requests: templates, grammars, tokenizing), each with a fixed number of threads and a cap
on what may wait, so a flood of slow loads cannot delay a request's preparation and a
flood of requests is refused at once (RESOURCE_EXHAUSTED) rather than queued without end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

from common.errors import InvalidArgument, ResourceExhausted

T = TypeVar("T")


class BoundedPool:
    """`threads` threads for one kind of work; at most `max_waiting` calls wait for one."""

    def __init__(self, name: str, threads: int, max_waiting: int) -> None:
        self.name = name
        self.threads = threads
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._pending = 0  # submitted and not finished (running or waiting)
        self._lock = threading.Lock()  # _pending drops on the pool's threads

    @property
    def pending(self) -> int:
        """Calls submitted and not yet finished, running or waiting."""
        return self._pending

    async def run(
        self, fn: Callable[[], T], timeout: float | None = None, what: str = "the work"
    ) -> T:
        """Runs `fn` on a thread of this pool and returns its result.

        Refused at once when the pool is full. A caller cancelled before its call started
        takes it out of the queue; one that started runs to its end on its thread (Python
        cannot stop a thread), still counted, so the pool's bound holds. With `timeout`, a
        call still running after that many seconds is refused as InvalidArgument (the
        request asked for too much work) while it finishes in the background."""
        with self._lock:
            if self._pending >= self.threads + self.max_waiting:
                raise ResourceExhausted(
                    f"the worker's {self.name} pool is full ({self.threads} threads busy, "
                    f"{self.max_waiting} calls waiting); retry shortly"
                )
            self._pending += 1
        try:
            work = self._executor.submit(functools.partial(contextvars.copy_context().run, fn))
        except BaseException:
            self._finished(None)
            raise
        # Counted until the thread is done, not until the caller stops waiting.
        work.add_done_callback(self._finished)
        future = asyncio.wrap_future(work)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            future.cancel()  # if it never started, it never will
            raise InvalidArgument(
                f"{what} took more than {timeout:g} s (prepare_timeout_s); it was abandoned"
            ) from None
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _finished(self, _: Future[T] | None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Stops taking work; threads still running finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def default_pool(name: str) -> BoundedPool:
    """A small pool for an object built without the worker's (tests, tools)."""
    return BoundedPool(name, 2, 64)


class WorkerPools:
    """The worker's pools: model files (load, estimate), request preparation, and the
    event loop's default executor for anything else (telemetry start, closing models)."""

    def __init__(self, settings: PoolSettings) -> None:
        self.models = BoundedPool("models", settings.load_threads, 16)
        self.requests = BoundedPool("requests", settings.request_threads, settings.request_queue)
        self.other = ThreadPoolExecutor(4, thread_name_prefix="blocking")

    def shutdown(self) -> None:
        self.models.shutdown()
        self.requests.shutdown()
        self.other.shutdown(wait=False)


class PoolSettings(Protocol):
    """The worker settings the pools are sized from (worker.config.WorkerSettings)."""

    @property
    def load_threads(self) -> int: ...
    @property
    def request_threads(self) -> int: ...
    @property
    def request_queue(self) -> int: ...
