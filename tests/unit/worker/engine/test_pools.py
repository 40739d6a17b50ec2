"""Bounded pools: full means refused at once; a caller that goes away frees its place."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.errors import InvalidArgument, ResourceExhausted
from worker.engine.pools import BoundedPool


def test_a_full_pool_refuses_at_once_and_takes_work_again_when_it_drains() -> None:
    async def scenario() -> None:
        pool = BoundedPool("requests", threads=1, max_waiting=1)
        gate = threading.Event()
        running = asyncio.create_task(pool.run(gate.wait))
        waiting = asyncio.create_task(pool.run(lambda: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted, match="requests pool is full"):
            await pool.run(lambda: "third")
        gate.set()
        assert await running is True
        assert await waiting == "second"
        assert pool.pending == 0
        assert await pool.run(lambda: "again") == "again"
        pool.shutdown()

    asyncio.run(scenario())


def test_a_cancelled_caller_that_was_still_waiting_never_runs() -> None:
    async def scenario() -> None:
        pool = BoundedPool("requests", threads=1, max_waiting=4)
        gate = threading.Event()
        ran: list[str] = []
        running = asyncio.create_task(pool.run(gate.wait))
        waiting = asyncio.create_task(pool.run(lambda: ran.append("waiting")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        gate.set()
        await running
        await asyncio.sleep(0.05)
        assert ran == []
        assert pool.pending == 0
        pool.shutdown()

    asyncio.run(scenario())


def test_work_past_its_timeout_is_refused_but_still_counted_until_its_thread_ends() -> None:
    async def scenario() -> None:
        pool = BoundedPool("requests", threads=1, max_waiting=0)
        gate = threading.Event()
        with pytest.raises(InvalidArgument, match=r"preparing it took more than 0.05 s"):
            await pool.run(gate.wait, timeout=0.05, what="preparing it")
        # The thread still runs the abandoned call: the pool's bound holds.
        with pytest.raises(ResourceExhausted):
            await pool.run(lambda: None)
        gate.set()
        for _ in range(100):
            if pool.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert await pool.run(lambda: "free") == "free"
        pool.shutdown()

    asyncio.run(scenario())
