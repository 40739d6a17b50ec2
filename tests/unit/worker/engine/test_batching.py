"""The batching engine's own logic, over the fake llama.cpp backend (no model, no subprocess).

The engine runs on its own thread as in the worker; tests hold it inside a step with a gate
where the order of events matters, and read back what it did from the batches the backend
ran (`FakeBackend.runs`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
from support.fake_backend import EOS, Entry, FakeBackend, FakeSampler

from common.errors import Internal, ResourceExhausted, Unavailable
from worker.engine.batching import EmbeddingJob, GenerationJob
from worker.engine.generation import (
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
)
from worker.engine.streams import EventStream

T = TypeVar("T")
WAIT = 5.0  # seconds; generous, the engine answers in milliseconds


class Gate:
    """Holds the engine inside its `at`-th run until released."""

    def __init__(self, backend: FakeBackend, at: int = 1) -> None:
        self._at = at
        self._runs = 0
        self.entered = threading.Event()
        self._released = threading.Event()
        backend.on_run = self

    def __call__(self, batch: Sequence[Entry]) -> None:
        self._runs += 1
        if self._runs == self._at:
            self.entered.set()
            assert self._released.wait(WAIT), "gate never released"

    def wait(self) -> None:
        assert self.entered.wait(WAIT), "the engine never reached the gate"

    def release(self) -> None:
        self._released.set()


def job(
    loop: asyncio.AbstractEventLoop,
    backend: FakeBackend,
    prompt: str,
    max_tokens: int = 4,
    stop: tuple[str, ...] = (),
    sampler: FakeSampler | None = None,
) -> GenerationJob:
    stream: EventStream[GenerationEvent] = EventStream(loop)
    return GenerationJob(
        prompt, backend.tokenize(prompt), sampler or backend.sampler(), stop, max_tokens, stream
    )


def collect(loop: asyncio.AbstractEventLoop, stream: EventStream[T]) -> list[T]:
    """Every event of a stream until the engine closes it; raises what it failed with."""

    async def drain() -> list[T]:
        return [event async for event in stream.events()]

    return asyncio.run_coroutine_threadsafe(drain(), loop).result(WAIT)


def eventually(condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds within WAIT: the engine releases a request just after
    closing its stream, so a client can see the end a moment before the release."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def finished(events: list[GenerationEvent]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished), events
    return last


def text(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events)


def entries_of(backend: FakeBackend, prompt: str) -> list[tuple[int, Entry]]:
    """(run number, entry) of every batch entry that fed part of `prompt`'s tokens, or a
    token generated after it, to the sequence that held it."""
    tokens = tuple(prompt.encode())
    out = []
    for number, batch in enumerate(backend.runs):
        for entry in batch:
            at = entry.start_pos
            if at < len(tokens) and tokens[at : at + len(entry.tokens)] == entry.tokens:
                out.append((number, entry))
    return out


def seq_holding(backend: FakeBackend, start: bytes) -> int:
    """The sequence whose cache starts with `start`."""
    return next(i for i, cells in enumerate(backend.cells) if bytes(cells[: len(start)]) == start)


def first_run_of(backend: FakeBackend, prompt: str) -> int:
    return next(n for n, e in entries_of(backend, prompt) if e.start_pos == 0)


# ---- admission -------------------------------------------------------------------------
def test_waiting_requests_take_a_free_slot_first_come_first_served(loop, engines):
    backend = FakeBackend(n_seq=1)
    gate = Gate(backend)
    engine = engines(backend)
    first = job(loop, backend, "alpha")
    engine.submit(first)
    gate.wait()
    # No two share a first letter, so each prompt is computed from position 0.
    waiting = [job(loop, backend, p) for p in ("bravo", "charlie", "delta", "echo")]
    for j in waiting:
        engine.submit(j)
    assert engine.queued == 4
    gate.release()
    for j in [first, *waiting]:
        assert finished(collect(loop, j.stream)).finish_reason is FinishReason.LENGTH
    starts = [first_run_of(backend, p) for p in ("alpha", "bravo", "charlie", "delta", "echo")]
    assert starts == sorted(starts)


def test_a_full_queue_refuses_at_once_naming_max_queue(loop, engines):
    backend = FakeBackend(n_seq=1)
    gate = Gate(backend)
    engine = engines(backend, max_queue=1)
    running, waiting = job(loop, backend, "running"), job(loop, backend, "waiting")
    engine.submit(running)
    gate.wait()
    engine.submit(waiting)
    with pytest.raises(ResourceExhausted, match=r"max_queue=1") as refused:
        engine.submit(job(loop, backend, "one too many"))
    assert "1 slots busy" in refused.value.message
    gate.release()
    assert finished(collect(loop, waiting.stream)).finish_reason is FinishReason.LENGTH


def test_a_request_withdrawn_before_it_starts_never_runs(loop, engines):
    backend = FakeBackend(n_seq=1)
    gate = Gate(backend)
    engine = engines(backend)
    running, withdrawn = job(loop, backend, "running"), job(loop, backend, "withdrawn")
    engine.submit(running)
    gate.wait()
    engine.submit(withdrawn)
    engine.withdraw(withdrawn)
    assert engine.queued == 0
    assert isinstance(withdrawn.sampler, FakeSampler)
    assert eventually(lambda: withdrawn.sampler.closed)
    gate.release()
    collect(loop, running.stream)
    assert entries_of(backend, "withdrawn") == []


def test_a_request_cancelled_during_a_step_ends_at_the_next_step(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    cancelled = job(loop, backend, "cancelled", max_tokens=50)
    other = job(loop, backend, "other", max_tokens=20)

    def cancel_during_fifth_run(batch: Sequence[Entry]) -> None:
        if len(backend.runs) == 5:
            cancelled.stream.cancel()

    backend.on_run = cancel_during_fifth_run
    engine.submit(cancelled)
    engine.submit(other)
    events = collect(loop, cancelled.stream)
    assert events and not any(isinstance(e, Finished) for e in events)  # closed, not finished
    assert len(events) < 50
    assert finished(collect(loop, other.stream)).usage.completion_tokens == 20
    assert isinstance(cancelled.sampler, FakeSampler)
    assert eventually(lambda: cancelled.sampler.closed)
    seq = seq_holding(backend, b"cancelled")
    last_run = max(n for n, batch in enumerate(backend.runs) for e in batch if e.seq_id == seq)
    assert last_run == 4  # the run it was cancelled in (0-based), then no more
    assert eventually(lambda: engine.active == 0)


# ---- the batch -------------------------------------------------------------------------
def test_a_long_prompt_is_prefilled_in_chunks_while_another_sequence_keeps_decoding(loop, engines):
    backend = FakeBackend(n_seq=2, n_batch=8)
    gate = Gate(backend, at=2)  # the decoding request's first decode step
    engine = engines(backend)
    decoding = job(loop, backend, "hi", max_tokens=30)
    engine.submit(decoding)
    gate.wait()
    long_prompt = "x" * 30
    prefilling = job(loop, backend, long_prompt, max_tokens=2)
    engine.submit(prefilling)
    gate.release()
    collect(loop, prefilling.stream)
    collect(loop, decoding.stream)

    seq = seq_holding(backend, long_prompt.encode())
    chunks = [(n, e) for n, e in entries_of(backend, long_prompt) if e.seq_id == seq]
    assert [len(e.tokens) for _, e in chunks] == [7, 7, 7, 7, 2]  # n_batch less one decode
    assert [e.start_pos for _, e in chunks] == [0, 7, 14, 21, 28]
    assert [e.logits for _, e in chunks] == [False, False, False, False, True]
    for number, _ in chunks:  # the other sequence decoded in every one of these batches
        others = [e for e in backend.runs[number] if e.seq_id != seq]
        assert len(others) == 1 and len(others[0].tokens) == 1 and others[0].logits


def test_the_next_turn_of_a_conversation_reuses_its_cached_prefix(loop, engines):
    backend = FakeBackend(n_seq=2)
    backend.script("User: hello\nBot:", " hi there")
    engine = engines(backend)
    turn1 = job(loop, backend, "User: hello\nBot:", max_tokens=50)
    engine.submit(turn1)
    events = collect(loop, turn1.stream)
    assert text(events) == " hi there" and finished(events).finish_reason is FinishReason.STOP
    # Another conversation meanwhile takes the other, never used slot.
    stranger = job(loop, backend, "Something else entirely")
    engine.submit(stranger)
    collect(loop, stranger.stream)
    history = "User: hello\nBot: hi there"
    turn2 = job(loop, backend, history + "\nUser: and?\nBot:")
    backend.runs.clear()
    engine.submit(turn2)
    usage = finished(collect(loop, turn2.stream)).usage
    assert usage.cached_prompt_tokens == len(history)
    first = backend.runs[0][0]
    assert first.start_pos == len(history)  # only the new part of the prompt was computed
    assert first.seq_id == seq_holding(backend, b"User: hello")


def test_an_exact_repeat_samples_its_first_token_from_the_saved_logits(loop, engines):
    backend = FakeBackend(n_seq=1)
    backend.script("2 + 2 =", " 4")
    engine = engines(backend)
    first = job(loop, backend, "2 + 2 =", max_tokens=8)
    engine.submit(first)
    assert text(collect(loop, first.stream)) == " 4"
    backend.runs.clear()
    repeat = job(loop, backend, "2 + 2 =", max_tokens=8)
    engine.submit(repeat)
    events = collect(loop, repeat.stream)
    assert text(events) == " 4"
    assert finished(events).usage.cached_prompt_tokens == len("2 + 2 =")
    # No prompt token ran again: the first run decodes the first generated token.
    assert [e.start_pos for batch in backend.runs for e in batch] == [7, 8]


def test_a_prompt_the_cache_cannot_trim_is_computed_from_the_start(loop, engines):
    backend = FakeBackend(n_seq=1)
    engine = engines(backend)
    first = job(loop, backend, "shared start, then one way")
    engine.submit(first)
    collect(loop, first.stream)
    backend.can_remove = False
    backend.runs.clear()
    second = job(loop, backend, "shared start, then another")
    engine.submit(second)
    assert finished(collect(loop, second.stream)).usage.cached_prompt_tokens == 0
    assert backend.runs[0][0].start_pos == 0


# ---- text and finishing ----------------------------------------------------------------
def test_a_stop_string_ends_generation_without_sending_it(loop, engines):
    backend = FakeBackend()
    backend.script("Q:", " yes. Q: no")
    engine = engines(backend)
    j = job(loop, backend, "Q:", max_tokens=50, stop=("Q:",))
    engine.submit(j)
    events = collect(loop, j.stream)
    assert text(events) == " yes. "
    assert finished(events).finish_reason is FinishReason.STOP
    assert finished(events).stop_sequence == "Q:"


def test_tokens_reach_the_client_with_the_text_they_make(loop, engines):
    backend = FakeBackend()
    backend.script("say", " héllo")  # é is two bytes, so two tokens make one character
    engine = engines(backend)
    j = job(loop, backend, "say", max_tokens=50)
    engine.submit(j)
    events = collect(loop, j.stream)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) + finished(events).text == " héllo"
    assert [t for e in events for t in e.token_ids] == list(" héllo".encode())
    assert all(d.text for d in deltas)  # half a character is held back, not sent as "�"
    assert EOS not in [t for e in events for t in e.token_ids]


def test_timings_come_from_the_engines_clock(loop, engines):
    backend = FakeBackend()
    now = [100.0]
    backend.on_run = lambda batch: now.__setitem__(0, now[0] + 1.0)  # each step: 1 s
    engine = engines(backend, clock=lambda: now[0])
    j = job(loop, backend, "tick", max_tokens=3)
    engine.submit(j)
    timings = finished(collect(loop, j.stream)).timings
    assert timings.queue_ms == 0.0
    assert timings.prompt_ms == timings.time_to_first_token_ms == 1000.0
    assert timings.decode_ms == 2000.0 and timings.total_ms == 3000.0
    assert timings.decode_tokens_per_second == 1.0


# ---- failures --------------------------------------------------------------------------
def test_a_failed_step_fails_only_its_requests_and_the_engine_keeps_serving(loop, engines):
    # Three slots but room for two tokens a step: one decode and one prompt token run,
    # the third request waits in its slot for room, outside the failing batch.
    backend = FakeBackend(n_seq=3, n_batch=2)
    gate = Gate(backend, at=2)
    failed_batch: list[Sequence[Entry]] = []

    def gate_then_fail(batch: Sequence[Entry]) -> None:
        gate(batch)
        if len(backend.runs) == 3:
            failed_batch.append(batch)
            raise RuntimeError("GPU fell off the bus")

    backend.on_run = gate_then_fail
    engine = engines(backend)
    decoding = job(loop, backend, "f", 10)  # one prompt token: decoding from run 2
    engine.submit(decoding)
    gate.wait()
    prefilling, outside = job(loop, backend, "prompting", 10), job(loop, backend, "carried on", 10)
    engine.submit(prefilling)
    engine.submit(outside)
    gate.release()
    for failed in (decoding, prefilling):
        with pytest.raises(Internal, match=f"request {failed.request_id} failed: GPU fell off"):
            collect(loop, failed.stream)
    assert sorted(len(e.tokens) for e in failed_batch[0]) == [1, 1]  # not the third one's
    assert finished(collect(loop, outside.stream)).usage.completion_tokens == 10
    # The failed sequences' caches are in an unknown state: nothing of them is reused.
    later = job(loop, backend, "fb, what the failed one held")
    engine.submit(later)
    assert finished(collect(loop, later.stream)).usage.cached_prompt_tokens == 0


def test_a_failing_sampler_fails_its_request_and_not_its_batch_neighbours(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    broken = job(loop, backend, "broken", 10, sampler=backend.sampler(fail_on_draw=3))
    healthy = job(loop, backend, "healthy", 10)
    engine.submit(broken)
    engine.submit(healthy)
    with pytest.raises(Internal, match="sampler failed on draw 3"):
        collect(loop, broken.stream)
    assert finished(collect(loop, healthy.stream)).usage.completion_tokens == 10
    assert isinstance(broken.sampler, FakeSampler)
    assert eventually(lambda: broken.sampler.closed)


def test_a_client_that_never_reads_does_not_hold_up_the_others(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    unread = job(loop, backend, "nobody reads this", max_tokens=500)
    read = job(loop, backend, "somebody reads this", max_tokens=100)
    engine.submit(unread)
    engine.submit(read)
    assert finished(collect(loop, read.stream)).usage.completion_tokens == 100
    # The unread stream was served all along too: its events are waiting in its queue.
    assert finished(collect(loop, unread.stream)).usage.completion_tokens == 500


def test_close_fails_waiting_requests_and_stops_running_ones_with_unavailable(loop, engines):
    backend = FakeBackend(n_seq=1)
    gate = Gate(backend)
    engine = engines(backend)
    running, waiting = job(loop, backend, "running", 50), job(loop, backend, "waiting")
    engine.submit(running)
    gate.wait()
    engine.submit(waiting)
    closer = threading.Thread(target=engine.close, args=("model unloaded", WAIT))
    closer.start()
    with pytest.raises(Unavailable, match="model unloaded"):
        collect(loop, waiting.stream)
    gate.release()
    with pytest.raises(Unavailable, match="model unloaded"):
        collect(loop, running.stream)
    closer.join(WAIT)
    assert not closer.is_alive()
    with pytest.raises(Unavailable, match="model unloaded"):
        engine.submit(job(loop, backend, "too late"))
    assert isinstance(waiting.sampler, FakeSampler)
    assert eventually(lambda: waiting.sampler.closed)
    assert isinstance(running.sampler, FakeSampler)
    assert eventually(lambda: running.sampler.closed)


# ---- embeddings ------------------------------------------------------------------------
def test_embeddings_wait_for_the_context_to_drain_and_keep_their_place(loop, engines):
    backend = FakeBackend(n_seq=2)
    gate = Gate(backend)
    engine = engines(backend)
    backend.script("generating", " and then some")
    generating = job(loop, backend, "generating", max_tokens=6)
    engine.submit(generating)
    gate.wait()
    stream: EventStream[EmbeddingResult] = EventStream(loop)
    embedding = EmbeddingJob("embed", [backend.tokenize("embed me")], True, stream)
    engine.submit(embedding)
    after = job(loop, backend, "after")  # a slot is free, but it queues behind the embedding
    engine.submit(after)
    gate.release()
    [result] = collect(loop, stream)
    collect(loop, after.stream)
    assert text(collect(loop, generating.stream)) == " and t"  # its cache was left alone
    assert result.prompt_tokens == 8
    raw = [8.0, float(sum(b"embed me")), 1.0, 0.0]  # the fake's pooled vector of 8 tokens
    norm = sum(v * v for v in raw) ** 0.5
    assert result.vectors == (tuple(v / norm for v in raw),)
    embedded = first_run_of(backend, "embed me")
    assert max(n for n, _ in entries_of(backend, "generating and t")) < embedded
    assert embedded < first_run_of(backend, "after")
    assert embedded not in [n for n, _ in entries_of(backend, "after")]


def test_a_generation_models_embedding_takes_a_free_slot_between_steps(loop, engines):
    """chunk > 0: no waiting for the context to drain; the input goes into the idle slot
    in causal pieces whose pooled means are weighted by their lengths, and the generating
    slot's cache and reply are untouched."""
    backend = FakeBackend(n_seq=2)
    gate = Gate(backend)
    engine = engines(backend)
    backend.script("generating", " and then some")
    generating = job(loop, backend, "generating", max_tokens=6)
    engine.submit(generating)
    gate.wait()
    stream: EventStream[EmbeddingResult] = EventStream(loop)
    tokens = backend.tokenize("embed me")
    engine.submit(EmbeddingJob("embed", [tokens], False, stream, chunk=5))
    gate.release()
    [result] = collect(loop, stream)
    assert text(collect(loop, generating.stream)) == " and t"
    # The fake pools a sequence's whole cache: [n, sum, 1, 0] after 5, then after 8 tokens.
    first, second = sum(tokens[:5]), sum(tokens)
    expected = ((5 * 5 + 8 * 3) / 8, (first * 5 + second * 3) / 8, 1.0, 0.0)
    assert result.vectors == (expected,)
    embedding_runs = [
        (n, e) for n, batch in enumerate(backend.runs) for e in batch if e.seq_id == 1
    ]
    assert [(e.start_pos, len(e.tokens)) for _, e in embedding_runs] == [(0, 5), (5, 3)]
    generation_runs = [n for n, _ in entries_of(backend, "generating and t")]
    assert min(generation_runs) < embedding_runs[0][0] < max(generation_runs)
    assert backend.cells[1] == []  # the slot it borrowed holds nothing afterwards
