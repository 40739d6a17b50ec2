"""Log-probabilities and n sequences from the real llama.cpp backend and the real Gemma:
the batching engine over worker.llamacpp.backend, in this process (no worker, no gRPC)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest

from worker.engine.batching import GenerationJob, ModelEngine
from worker.engine.generation import Finished, GenerationEvent
from worker.engine.sampling import SamplingParams
from worker.engine.streams import EventStream
from worker.llamacpp.backend import LlamaBackend
from worker.llamacpp.context import ContextParams
from worker.llamacpp.model import LlamaModel

PROMPT = "Once upon a time"
SLOTS = 4


class Recording(LlamaBackend):
    """The real backend, noting every batch entry (sequence, first position, tokens)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.added: list[tuple[int, int, int]] = []

    def add(self, tokens: Sequence[int], start_pos: int, seq_id: int, logits: bool) -> int:
        self.added.append((seq_id, start_pos, len(tokens)))
        return super().add(tokens, start_pos, seq_id, logits)


@pytest.fixture(scope="module")
def engine(gemma_path) -> Iterator[tuple[ModelEngine, Recording]]:
    model = LlamaModel(gemma_path)
    params = ContextParams(
        n_ctx=256 * SLOTS, n_batch=128, n_threads=1, n_threads_batch=1, n_seq_max=SLOTS
    )
    backend = Recording(model, params)
    engine = ModelEngine("gemma", backend, max_queue=4)
    yield engine, backend
    assert engine.close("test over", 10)
    backend.close()


def run(
    engine: ModelEngine,
    backend: LlamaBackend,
    sampling: SamplingParams,
    n: int = 1,
    prompt: str = PROMPT,
) -> list[GenerationEvent]:
    async def go() -> list[GenerationEvent]:
        stream: EventStream[GenerationEvent] = EventStream(asyncio.get_running_loop())
        seeds = [None if sampling.seed is None else sampling.seed + i for i in range(n)]
        # As LocalModel builds them: seed + i when seeded.
        samplers = [backend.sampler(replace(sampling, seed=seed), None) for seed in seeds]
        job = GenerationJob(
            "t", backend.tokenize(prompt), samplers[0], (), sampling.max_tokens or 8, stream,
            logprobs=sampling.top_logprobs, siblings=tuple(samplers[1:]),
        )  # fmt: skip
        engine.submit(job)
        return [e async for e in stream.events()]

    return asyncio.run(go())


def texts(events: list[GenerationEvent]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        out[e.index] = out.get(e.index, "") + e.text
    return out


def test_greedy_logprobs_rank_the_chosen_token_first(engine):
    engine, backend = engine
    events = run(
        engine, backend, SamplingParams.create(temperature=0.0, max_tokens=8, top_logprobs=5)
    )
    logprobs = [lp for e in events for lp in e.logprobs]
    assert len(logprobs) == sum(len(e.token_ids) for e in events) == 8
    for lp, token in zip(logprobs, [t for e in events for t in e.token_ids], strict=True):
        assert lp.chosen.token_id == token == lp.top[0].token_id
        assert lp.chosen.logprob == pytest.approx(lp.top[0].logprob)
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True) and len(values) == 5
        assert lp.chosen.logprob <= 0 and sum(math.exp(v) for v in values) <= 1 + 1e-5
        assert lp.chosen.piece == backend.piece(token)
    assert "".join(e.text for e in events).startswith(", there was")


def test_n_sequences_prefill_the_prompt_once_and_match_a_single_run(engine):
    engine, backend = engine
    greedy = SamplingParams.create(temperature=0.0, max_tokens=6)
    fresh = "The capital of France is"  # not in any slot yet: prefilled, then copied
    backend.added.clear()
    events = run(engine, backend, greedy, n=3, prompt=fresh)
    prompt = len(backend.tokenize(fresh))
    assert sum(n for _, start, n in backend.added if start < prompt) == prompt  # once
    sequences = texts(events)
    assert sequences[0] == sequences[1] == sequences[2]  # the copies hold the same cache
    assert texts(run(engine, backend, greedy, prompt=fresh))[0] == sequences[0]
    finals = [e for e in events if isinstance(e, Finished)]
    assert sorted(f.index for f in finals) == [0, 1, 2]
    assert all(f.usage.prompt_tokens == prompt and f.usage.completion_tokens == 6 for f in finals)


def test_seeded_sequences_differ_from_each_other_and_repeat_exactly(engine):
    engine, backend = engine
    sampling = SamplingParams.create(temperature=1.0, seed=7, max_tokens=6)
    first = texts(run(engine, backend, sampling, n=3))
    assert len(set(first.values())) == 3
    backend.added.clear()
    assert texts(run(engine, backend, sampling, n=3)) == first
    prompt = len(backend.tokenize(PROMPT))
    assert all(start >= prompt for _, start, _ in backend.added)  # the repeat: none recomputed
