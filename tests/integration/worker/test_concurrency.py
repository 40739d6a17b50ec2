"""Concurrent clients on one model are all served; a full queue is refused at once.
(Batching and cross-talk: test_batching.py.)"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from support.models import GEMMA
from support.rpc import TIMEOUT, chat, generate, rpc_error


def test_mixed_concurrent_calls(stub):
    barrier = threading.Barrier(3)

    def gen() -> str:
        barrier.wait()
        return generate(stub, GEMMA, "Hello there", temperature=0, max_tokens=8).text

    def talk() -> str:
        barrier.wait()
        return chat(stub, GEMMA, [("user", "Hi!")], temperature=0, max_tokens=8).text

    def tok() -> int:
        barrier.wait()
        return len(stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text="Hi!" * 100)).tokens)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(f) for f in (gen, talk, tok)]
        outcomes = [f.result(timeout=TIMEOUT) for f in futures]
    assert outcomes[0] and outcomes[1]
    assert outcomes[2] > 100


def test_full_queue_is_refused_at_once(stub):
    stub.LoadModel(
        pb.LoadModelRequest(
            spec=pb.ModelSpec(
                alias="gemma-q1",
                path="builtin:gemma-3-270m",
                n_ctx=512,
                max_queue=1,
                n_parallel=1,
            )
        ),
        timeout=TIMEOUT,
    )
    long = gen_pb.GenerateRequest(
        model="gemma-q1",
        prompt="Once",
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=400),
    )
    try:
        running = stub.Generate(long, timeout=TIMEOUT)
        next(running)
        queued = stub.Generate(long, timeout=TIMEOUT)
        assert _wait_queued(stub, "gemma-q1", 1)
        err = rpc_error(lambda: stub.Generate(long, timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue=1" in err.details()
        running.cancel()
        queued.cancel()
    finally:
        stub.UnloadModel(pb.UnloadModelRequest(alias="gemma-q1"), timeout=TIMEOUT)


def _wait_queued(stub, alias: str, n: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = {
            m.alias: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
        }
        if models[alias].queued_requests == n:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("n", [8])
def test_many_streams_all_complete(stub, n):
    with ThreadPoolExecutor(n) as pool:
        finals = list(
            pool.map(
                lambda i: (
                    generate(
                        stub, GEMMA, f"Count to {i}:", temperature=0.7, seed=i, max_tokens=6
                    ).final
                ),
                range(n),
            )
        )
    assert all(f.usage.completion_tokens >= 1 for f in finals)
    assert max(f.timings.queue_ms for f in finals) > 0
