"""Continuous batching: concurrent requests decode in shared batches, each with its own
sampler and stream, and a request's cached prefix is reused without changing its text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from support.rpc import TIMEOUT, generate

BATCHED = "gemma-batched"
SLOTS = 8
# Prompts with one obvious, distinct next word: a request that received another's tokens,
# or corrupted ones, does not start with its own.
ANSWERS = {
    "1, 2, 3, 4, 5,": "6",
    "Monday, Tuesday, Wednesday,": "Thursday",
    "January, February, March,": "April",
    "a, b, c, d, e,": "f",
    "10, 20, 30, 40,": "50",
    "one, two, three, four,": "five",
    "red, orange, yellow, green,": "blue",
    "The capital of Japan is": "Tokyo",
}


def _load(stub, alias: str, **spec) -> None:
    stub.LoadModel(
        pb.LoadModelRequest(spec=pb.ModelSpec(alias=alias, path="builtin:gemma-3-270m", **spec)),
        timeout=TIMEOUT,
    )


def _unload(stub, alias: str) -> None:
    stub.UnloadModel(pb.UnloadModelRequest(alias=alias), timeout=TIMEOUT)


@pytest.fixture(scope="module")
def batched(stub) -> Iterator[str]:
    _load(stub, BATCHED, n_ctx=512, n_parallel=SLOTS)
    yield BATCHED
    _unload(stub, BATCHED)


def _info(stub, alias: str) -> pb.ModelInfo:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    return next(m for m in models if m.alias == alias)


class _ActivityProbe:
    """Samples the model's active request count while a block runs."""

    def __init__(self, stub, alias: str) -> None:
        self._stub, self._alias = stub, alias
        self._done = threading.Event()
        self.most_active = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.is_set():
            self.most_active = max(self.most_active, _info(self._stub, self._alias).active_requests)
            time.sleep(0.01)

    def __enter__(self) -> _ActivityProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def test_engine_reports_its_slots(stub, batched):
    info = _info(stub, batched)
    assert info.slots_total == SLOTS and info.spec.n_parallel == SLOTS
    assert info.active_requests == 0 and info.queued_requests == 0


def test_concurrent_requests_share_batches_without_cross_talk(stub, batched):
    prompts = list(ANSWERS) * 2  # twice the slots: half of them wait for a free slot
    with _ActivityProbe(stub, batched) as probe, ThreadPoolExecutor(len(prompts)) as pool:
        results = list(
            pool.map(lambda p: generate(stub, batched, p, temperature=0, max_tokens=24), prompts)
        )
    for prompt, result in zip(prompts, results, strict=True):
        first = result.text.split()[0].strip(",.") if result.text.split() else ""
        assert first == ANSWERS[prompt], f"{prompt!r} got {result.text!r}"
        assert result.final.usage.completion_tokens == 24
    assert probe.most_active > 2, "the requests never ran together"
    assert max(r.final.timings.queue_ms for r in results) > 0
    info = _info(stub, batched)
    assert info.active_requests == 0 and info.cached_tokens > 0


def test_a_request_run_alone_twice_gives_identical_text(stub, batched):
    prompt = "Write a short story about a lighthouse keeper."
    first = generate(stub, batched, prompt, temperature=0, max_tokens=64)
    second = generate(stub, batched, prompt, temperature=0, max_tokens=64)
    assert first.text == second.text and first.token_ids == second.token_ids
    assert second.final.usage.cached_prompt_tokens == second.final.usage.prompt_tokens


def test_cancelling_one_stream_leaves_the_others_intact(stub, batched):
    prompts = list(ANSWERS)[:4]
    request = lambda p: gen_pb.GenerateRequest(  # noqa: E731
        model=batched, prompt=p, sampling=gen_pb.SamplingParams(temperature=0, max_tokens=48)
    )
    victim = stub.Generate(request("Once upon a time"), timeout=TIMEOUT)
    next(victim)
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(lambda p=p: list(stub.Generate(request(p), timeout=TIMEOUT)))
                   for p in prompts]  # fmt: skip
        time.sleep(0.3)
        victim.cancel()
        outcomes = [f.result(timeout=TIMEOUT) for f in futures]
    for prompt, chunks in zip(prompts, outcomes, strict=True):
        text = "".join(c.text for c in chunks)
        assert text.split()[0].strip(",.") == ANSWERS[prompt]
        assert chunks[-1].usage.completion_tokens == 48
        assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH
    deadline = time.monotonic() + 5
    while _info(stub, batched).active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _info(stub, batched).active_requests == 0, "the cancelled slot was not freed"


def test_a_slow_reader_does_not_stall_the_others(stub, batched):
    slow = stub.Generate(
        gen_pb.GenerateRequest(model=batched, prompt="Once upon a time",
                               sampling=gen_pb.SamplingParams(temperature=0, max_tokens=300)),
        timeout=TIMEOUT,
    )  # fmt: skip
    next(slow)  # then never read again while the others run
    try:
        started = time.monotonic()
        fast = generate(stub, batched, "1, 2, 3, 4, 5,", temperature=0, max_tokens=32)
        assert fast.final.usage.completion_tokens == 32
        assert time.monotonic() - started < 30
    finally:
        slow.cancel()


def test_prefix_reuse_gives_the_text_of_a_cold_run_with_the_same_batches(stub):
    head = "You are a helpful assistant. Answer briefly and politely.\n"
    tail = "Question: what is the capital of Italy?\nAnswer:"
    head_tokens = list(stub.Tokenize(gen_pb.TokenizeRequest(model="gemma", text=head)).tokens)
    whole = list(stub.Tokenize(gen_pb.TokenizeRequest(model="gemma", text=head + tail)).tokens)
    assert whole[: len(head_tokens)] == head_tokens and len(whole) - len(head_tokens) <= len(
        head_tokens
    )
    # n_batch = the head's length: a cold run prefills [head][tail], as a warm one does.
    alias = "gemma-prefix"
    spec = {"n_ctx": 512, "n_parallel": 1, "n_batch": len(head_tokens)}
    _load(stub, alias, **spec)
    try:
        generate(stub, alias, head, temperature=0, max_tokens=1)
        warm = generate(stub, alias, head + tail, temperature=0, max_tokens=32)
    finally:
        _unload(stub, alias)
    _load(stub, alias, **spec)
    try:
        cold = generate(stub, alias, head + tail, temperature=0, max_tokens=32)
    finally:
        _unload(stub, alias)
    assert warm.final.usage.cached_prompt_tokens == len(head_tokens)
    assert cold.final.usage.cached_prompt_tokens == 0
    assert warm.text == cold.text


def test_the_next_chat_turn_reuses_its_conversation(stub, batched):
    turn = "Tell me about the moon."
    first = generate(stub, batched, turn, temperature=0, max_tokens=16)
    follow = turn + first.text + " And the sun?"
    second = generate(stub, batched, follow, temperature=0, max_tokens=8)
    assert second.final.usage.cached_prompt_tokens >= first.final.usage.prompt_tokens


def test_a_prompt_longer_than_the_batch_is_prefilled_in_chunks_while_others_stream(stub):
    alias = "gemma-chunked"
    _load(stub, alias, n_ctx=1024, n_parallel=2, n_batch=16)
    try:
        streaming = stub.Generate(
            gen_pb.GenerateRequest(model=alias, prompt="Count: 1, 2, 3,",
                                   sampling=gen_pb.SamplingParams(temperature=0, max_tokens=200)),
            timeout=TIMEOUT,
        )  # fmt: skip
        next(streaming)
        arrivals: list[float] = []
        reader = threading.Thread(
            target=lambda: arrivals.extend(time.monotonic() for c in streaming if c.token_ids)
        )
        reader.start()
        long_prompt = " ".join(f"item {i}," for i in range(150)) + " and the last item is"
        asked = time.monotonic()
        long = generate(stub, alias, long_prompt, temperature=0, max_tokens=4)
        first_token_at = asked + long.final.timings.time_to_first_token_ms / 1e3
        reader.join(TIMEOUT)
        prompt_tokens = long.final.usage.prompt_tokens
        assert prompt_tokens > 16 * 20  # needed many prefill steps
        during = [t for t in arrivals if asked < t < first_token_at]
        # One token per step for the streaming request: it kept flowing during the prefill.
        assert len(during) >= 10, f"only {len(during)} tokens streamed during a long prefill"
    finally:
        _unload(stub, alias)
