"""What the engine's slots report of the prefixes their caches hold (common.prefix chains):
set when a request starts, replaced by its reply's chain, forgotten with the cache, and
bounded in the figures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from support.fake_backend import Entry, FakeBackend

from common.errors import Internal
from common.status import MAX_PREFIX_HASHES
from tests.unit.worker.engine.test_batching import Gate, collect, eventually
from worker.engine.batching import GenerationJob
from worker.engine.generation import GenerationEvent
from worker.engine.streams import EventStream


def job(
    loop: asyncio.AbstractEventLoop, backend: FakeBackend, prompt: str, prefix: tuple[int, ...]
) -> GenerationJob:
    stream: EventStream[GenerationEvent] = EventStream(loop)
    return GenerationJob(
        prompt, backend.tokenize(prompt), backend.sampler(), (), 4, stream, prefix=prefix
    )


def test_a_slot_reports_its_prompts_chain_from_the_start_and_after_the_end(loop, engines):
    backend = FakeBackend(n_seq=2)
    gate = Gate(backend)
    engine = engines(backend)
    first = job(loop, backend, "hello there", (11, 12))
    engine.submit(first)
    gate.wait()
    assert engine.figures().prefix_hashes == (11, 12)  # prefilling: already held
    gate.release()
    collect(loop, first.stream)
    assert engine.figures().prefix_hashes == (11, 12)


def test_the_reply_chain_replaces_the_prompts_and_the_latest_slot_comes_first(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    first = job(loop, backend, "first prompt", (1, 2))
    engine.submit(first)
    collect(loop, first.stream)
    engine.remember_reply(first, 0, (1, 2, 3))
    second = job(loop, backend, "another one", (4,))
    engine.submit(second)
    collect(loop, second.stream)
    assert eventually(lambda: engine.figures().prefix_hashes == (4, 1, 2, 3))


def test_a_reply_arriving_after_its_slot_was_taken_is_ignored(loop, engines):
    backend = FakeBackend(n_seq=1)
    engine = engines(backend)
    first = job(loop, backend, "first prompt", (1,))
    engine.submit(first)
    collect(loop, first.stream)
    second = job(loop, backend, "second prompt", (2,))
    engine.submit(second)
    collect(loop, second.stream)
    engine.remember_reply(first, 0, (1, 9))  # the model was slow to say: the slot moved on
    engine.remember_reply(second, 1, (2, 9))  # no such sequence of that job
    assert engine.prefix_hashes() == (2,)


def test_a_failed_request_leaves_nothing_reported(loop, engines):
    backend = FakeBackend(n_seq=1)

    def fail(batch: Sequence[Entry]) -> None:
        raise RuntimeError("GPU fell off the bus")

    engine = engines(backend)
    backend.on_run = fail
    doomed = job(loop, backend, "doomed prompt", (5, 6))
    engine.submit(doomed)
    with pytest.raises(Internal):
        collect(loop, doomed.stream)
    assert engine.prefix_hashes() == ()
    engine.remember_reply(doomed, 0, (5, 6, 7))
    assert engine.prefix_hashes() == ()


def test_the_report_is_deduplicated_and_bounded(loop, engines):
    backend = FakeBackend(n_seq=8)
    engine = engines(backend)
    for i in range(8):
        # every chain opens with the same system prompt's hash, then 13 of its own
        chain = (1000, *range(100 * i, 100 * i + 13))
        request = job(loop, backend, chr(ord("a") + i) * 8, chain)  # no shared prefix
        engine.submit(request)
        collect(loop, request.stream)
    hashes = engine.prefix_hashes()
    assert len(hashes) == MAX_PREFIX_HASHES
    assert len(set(hashes)) == len(hashes)
    # The most recently used slot's chain first, whole.
    assert hashes[:14] == (1000, *range(700, 713))
