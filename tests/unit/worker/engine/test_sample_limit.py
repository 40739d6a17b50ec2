"""A constrained request whose sampler is too slow for one token is ended, not left to stall
every other slot of its model at every step (a 1 MB grammar held other streams for 85 s
between tokens in issue 14). Time is the engine's injected clock, advanced by the sampler."""

from __future__ import annotations

import asyncio

import pytest
from support.fake_backend import FakeBackend, FakeSampler

from common.errors import InvalidArgument
from worker.engine.batching import GenerationJob, ModelEngine
from worker.engine.generation import Finished, GenerationEvent
from worker.engine.streams import EventStream

from .test_batching import eventually

WAIT = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowSampler(FakeSampler):
    """Takes `seconds` of the clock for each draw from its `slow_from`-th on."""

    def __init__(self, backend: FakeBackend, clock: Clock, seconds: float, slow_from: int) -> None:
        super().__init__(backend)
        self._clock, self._seconds, self._slow_from = clock, seconds, slow_from

    def sample(self, index: int) -> int:
        token = super().sample(index)
        if self.drawn >= self._slow_from:
            self._clock.now += self._seconds
        return token


def _run(
    loop: asyncio.AbstractEventLoop,
    engine: ModelEngine,
    sampler: FakeSampler,
    constrained: bool,
) -> list[GenerationEvent]:
    stream: EventStream[GenerationEvent] = EventStream(loop)
    prompt = list(b"Hello")
    engine.submit(GenerationJob("r1", prompt, sampler, (), 6, stream, constrained))

    async def drain() -> list[GenerationEvent]:
        return [event async for event in stream.events()]

    return asyncio.run_coroutine_threadsafe(drain(), loop).result(WAIT)


def test_a_constrained_request_whose_token_takes_too_long_is_ended(loop) -> None:
    clock = Clock()
    backend = FakeBackend()
    engine = ModelEngine("fake", backend, 4, clock=clock, max_sample_s=0.25)
    sampler = SlowSampler(backend, clock, seconds=2.0, slow_from=3)
    try:
        with pytest.raises(InvalidArgument) as caught:
            _run(loop, engine, sampler, constrained=True)
        assert caught.value.message == (
            "request r1: its grammar took 2000 ms to sample one token; the limit is 250 ms "
            "(max_sample_ms)"
        )
        assert sampler.drawn == 3
        # The engine thread releases the sampler just after it ends the client's stream.
        assert eventually(lambda: sampler.closed)
        # The engine serves on: a fast request right after completes.
        events = _run(loop, engine, backend.sampler(), constrained=True)
        assert isinstance(events[-1], Finished)
    finally:
        assert engine.close("test over", WAIT)


def test_an_unconstrained_request_is_not_timed(loop) -> None:
    clock = Clock()
    backend = FakeBackend()
    engine = ModelEngine("fake", backend, 4, clock=clock, max_sample_s=0.25)
    try:
        events = _run(loop, engine, SlowSampler(backend, clock, 2.0, 1), constrained=False)
        assert isinstance(events[-1], Finished)
    finally:
        assert engine.close("test over", WAIT)
