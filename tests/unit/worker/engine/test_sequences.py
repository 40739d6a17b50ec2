"""n sequences from one prompt, and log-probabilities carried with their tokens, in the
batching engine over the fake llama.cpp backend (whose distribution is known exactly: the
favoured token has probability 1/2, see tests/support/fake_backend.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest
from support.fake_backend import Entry, FakeBackend, FakeSampler

from common.errors import Internal, InvalidArgument
from tests.unit.worker.engine.test_batching import (
    Gate,
    collect,
    eventually,
    first_run_of,
)
from worker.engine.batching import GenerationJob
from worker.engine.generation import Finished, FinishReason, GenerationEvent, TextDelta
from worker.engine.streams import EventStream


def job(
    loop: asyncio.AbstractEventLoop,
    backend: FakeBackend,
    prompt: str,
    n: int = 1,
    max_tokens: int = 4,
    stop: tuple[str, ...] = (),
    logprobs: int | None = None,
    samplers: Sequence[FakeSampler] = (),
) -> GenerationJob:
    stream: EventStream[GenerationEvent] = EventStream(loop)
    drawn = list(samplers) or [backend.sampler() for _ in range(n)]
    return GenerationJob(
        prompt, backend.tokenize(prompt), drawn[0], stop, max_tokens, stream,
        logprobs=logprobs, siblings=tuple(drawn[1:]),
    )  # fmt: skip


def by_index(events: list[GenerationEvent]) -> dict[int, list[GenerationEvent]]:
    out: dict[int, list[GenerationEvent]] = {}
    for event in events:
        out.setdefault(event.index, []).append(event)
    return out


def prefills(backend: FakeBackend, prompt: str) -> list[Entry]:
    """Batch entries that fed `prompt` from its start."""
    tokens = tuple(prompt.encode())
    return [e for batch in backend.runs for e in batch if e.start_pos == 0 and e.tokens == tokens]


def test_n_sequences_share_one_prefill_and_each_ends_with_its_own_finished(loop, engines):
    backend = FakeBackend(n_seq=4)
    engine = engines(backend)
    j = job(loop, backend, "hello", n=3, max_tokens=4)
    engine.submit(j)
    sequences = by_index(collect(loop, j.stream))
    assert sorted(sequences) == [0, 1, 2]
    assert len(prefills(backend, "hello")) == 1  # one decode of the prompt, then copies
    (primary,) = {e.seq_id for e in prefills(backend, "hello")}
    assert sorted(src for src, _ in backend.copies) == [primary, primary]
    assert len({dst for _, dst in backend.copies}) == 2
    for events in sequences.values():
        ends = [e for e in events if isinstance(e, Finished)]
        assert len(ends) == 1 and events[-1] is ends[0]  # its own, last of its events
        assert ends[0].finish_reason is FinishReason.LENGTH
        assert ends[0].usage.prompt_tokens == 5 and ends[0].usage.completion_tokens == 4
        assert "".join(e.text for e in events) == "fghi"  # greedy: the same continuation
    assert eventually(lambda: engine.active == 0)


def test_an_exact_repeat_with_n_draws_every_sequence_from_the_saved_logits(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    first = job(loop, backend, "again", max_tokens=3)
    engine.submit(first)
    alone = "".join(e.text for e in collect(loop, first.stream))
    backend.runs.clear()
    repeat = job(loop, backend, "again", n=2, max_tokens=3)
    engine.submit(repeat)
    sequences = by_index(collect(loop, repeat.stream))
    assert prefills(backend, "again") == []  # nothing recomputed
    for events in sequences.values():
        assert "".join(e.text for e in events) == alone
        assert events[-1].usage.cached_prompt_tokens == len("again")  # type: ignore[union-attr]


def test_logprobs_stay_aligned_with_their_tokens_across_held_back_text(loop, engines):
    backend = FakeBackend(n_seq=1)
    backend.script("say", " héllo wörld")  # é and ö are two bytes: two tokens, one character
    engine = engines(backend)
    j = job(loop, backend, "say", max_tokens=50, stop=("wör",), logprobs=2)
    engine.submit(j)
    events = collect(loop, j.stream)
    final = events[-1]
    assert isinstance(final, Finished) and final.stop_sequence == "wör"
    assert any(isinstance(e, TextDelta) and len(e.token_ids) > 1 for e in events)  # held back
    tokens = [t for e in events for t in e.token_ids]
    assert tokens == list(" héllo wör".encode())
    for event in events:
        assert [lp.chosen.token_id for lp in event.logprobs] == list(event.token_ids)
        for lp in event.logprobs:
            assert lp.chosen.logprob == pytest.approx(math.log(0.5))
            assert [t.token_id for t in lp.top] == [lp.chosen.token_id, lp.chosen.token_id + 1]
            assert lp.top[1].logprob == pytest.approx(math.log(0.25))
            assert lp.chosen.piece == bytes((lp.chosen.token_id,))


def test_no_logprobs_unless_asked(loop, engines):
    backend = FakeBackend(n_seq=1)
    engine = engines(backend)
    j = job(loop, backend, "quiet", max_tokens=3)
    engine.submit(j)
    assert all(e.logprobs == () for e in collect(loop, j.stream))


def test_more_sequences_than_slots_are_refused_naming_n_and_the_limit(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    j = job(loop, backend, "too many", n=3)
    with pytest.raises(InvalidArgument, match=r"n = 3 .* has 2 \(n_parallel\)"):
        engine.submit(j)
    j.release()


def test_a_job_of_n_sequences_waits_for_its_slots_and_is_not_overtaken(loop, engines):
    backend = FakeBackend(n_seq=2)
    gate = Gate(backend)
    engine = engines(backend)
    running = job(loop, backend, "running", max_tokens=3)
    engine.submit(running)
    gate.wait()
    pair = job(loop, backend, "pair", n=2, max_tokens=2)
    single = job(loop, backend, "single", max_tokens=2)
    engine.submit(pair)
    engine.submit(single)  # a slot is free, but the pair came first and needs two
    gate.release()
    for j in (running, pair, single):
        collect(loop, j.stream)
    assert first_run_of(backend, "running") < first_run_of(backend, "pair")
    assert first_run_of(backend, "pair") < first_run_of(backend, "single")


def test_cancelling_ends_every_sequence(loop, engines):
    backend = FakeBackend(n_seq=3)
    engine = engines(backend)
    j = job(loop, backend, "cancel me", n=3, max_tokens=100)

    def cancel_during_fifth_run(batch: Sequence[Entry]) -> None:
        if len(backend.runs) == 5:
            j.stream.cancel()

    backend.on_run = cancel_during_fifth_run
    engine.submit(j)
    events = collect(loop, j.stream)
    assert not any(isinstance(e, Finished) for e in events)
    assert len(backend.runs) == 5
    samplers = [j.sampler, *j.siblings]
    assert eventually(lambda: all(isinstance(s, FakeSampler) and s.closed for s in samplers))
    assert eventually(lambda: engine.active == 0)


def test_one_sequence_failing_fails_the_request_and_frees_every_slot(loop, engines):
    backend = FakeBackend(n_seq=2)
    engine = engines(backend)
    samplers = [backend.sampler(), backend.sampler(fail_on_draw=3)]
    j = job(loop, backend, "fragile", n=2, max_tokens=10, samplers=samplers)
    engine.submit(j)
    with pytest.raises(Internal, match="sampler failed on draw 3"):
        collect(loop, j.stream)
    assert eventually(lambda: engine.active == 0 and all(s.closed for s in samplers))
    after = job(loop, backend, "after", n=2, max_tokens=2)  # both slots usable again
    engine.submit(after)
    assert sorted(by_index(collect(loop, after.stream))) == [0, 1]
