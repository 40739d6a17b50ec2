"""The Router's relay against real Worker services in this process (the worker's servicer,
registry, engine and models; only llama.cpp is the fake backend): a request a worker fails
is retried, restarted or continued on another replica, and one the view drops moves too.

The fake model writes DEFAULT_REPLY[position % 26] at every position, so a reply that moved
mid-way to another worker, continuing from the prompt plus the text so far, must read
exactly like a reply that never moved."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from support.fake_backend import DEFAULT_REPLY

from common.errors import ErrorKind, FailedPrecondition, LlamaherdError
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.gateway.errors import Overloaded, UpstreamFailed
from orchestrator.gateway.route_requests import continued, resumable
from orchestrator.gateway.router import Progress
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerStream
from tests.unit.orchestrator.gateway.relay_support import (
    busy,
    make_router,
    two_workers,
    worker_node,
)
from tests.unit.worker.api.serving import wait_until

ROUTE = RouteRequest("m")
PROMPT = "ab"  # the fake tokenizes bytes: two tokens, so the reply starts at position 2


def _expected(tokens: int) -> str:
    return "".join(chr(DEFAULT_REPLY[(len(PROMPT) + i) % 26]) for i in range(tokens))


def _request(max_tokens: int, **kwargs: object) -> gen_pb.GenerateRequest:
    sampling = gen_pb.SamplingParams(max_tokens=max_tokens)
    return gen_pb.GenerateRequest(model="m", prompt=PROMPT, sampling=sampling, **kwargs)  # type: ignore[arg-type]


def _opener(request: gen_pb.GenerateRequest, opened: list[gen_pb.GenerateRequest]):  # type: ignore[no-untyped-def]
    def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
        generate = continued(request, sent.text, sent.tokens)
        assert isinstance(generate, gen_pb.GenerateRequest)
        opened.append(generate)
        return worker.generate(generate)

    return open_call


# ---- a stream in flight moves to another replica -------------------------------------------
def test_a_stream_whose_worker_dies_continues_on_another_replica(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            opened: list[gen_pb.GenerateRequest] = []
            nodes, text, last = [], "", gen_pb.GenerationChunk()
            relay = router.stream(ROUTE, _opener(_request(12), opened))
            async for node, chunk in relay:
                nodes.append(node)
                text += chunk.text
                last = chunk
                if len(text) == 4 and node == "a":
                    await a.server.stop(0)  # like kill -9: its connections drop
            assert text == _expected(12), "the moved reply reads like one that never moved"
            assert nodes[0] == "a" and nodes[-1] == "b"
            # The continuation: the prompt extended by what was sent, 4 tokens fewer to go.
            assert opened[1].prompt == PROMPT + _expected(4)
            assert opened[1].sampling.max_tokens == 8
            assert last.finish_reason == gen_pb.FINISH_REASON_LENGTH
            assert last.usage.completion_tokens == 12 and last.usage.prompt_tokens == 2
            assert last.usage.total_tokens == 14
            assert not router.inflight
            await router.clients.close()

    asyncio.run(scenario())


def test_a_stream_on_a_node_that_leaves_the_view_moves_and_the_node_stops_it(tmp_path):
    """A hung worker is found by its heartbeat: the snapshot marks it down."""

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            node_a = worker_node("a", a.address)
            router = make_router(node_a, worker_node("b", b.address))
            text, nodes = "", set()
            async for node, chunk in router.stream(ROUTE, _opener(_request(12), [])):
                text += chunk.text
                nodes.add(node)
                if len(text) == 3 and node == "a":
                    down = dataclasses.replace(node_a, up=False, down_reason="no heartbeat for 2 s")
                    router.update(ClusterSnapshot(2, 0.0, (down, worker_node("b", b.address))))
            assert text == _expected(12) and nodes == {"a", "b"}
            await wait_until(lambda: busy(a) == 0)  # the abandoned call was cancelled there
            await router.clients.close()

    asyncio.run(scenario())


def test_a_stream_that_stalls_is_moved_after_the_stall_timeout(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(
                worker_node("a", a.address), worker_node("b", b.address), stall_timeout_s=0.3
            )
            text, nodes = "", []
            loop = asyncio.get_running_loop()
            stalled_at = 0.0
            async for node, chunk in router.stream(ROUTE, _opener(_request(10), [])):
                text += chunk.text
                nodes.append(node)
                if len(text) == 3 and node == "a":
                    a.models.backends["m"].step_delay = 1.0  # its engine stops making progress
                    stalled_at = loop.time()
                if node == "b" and stalled_at:
                    assert loop.time() - stalled_at < 1.5
                    stalled_at = 0.0
            assert text == _expected(10) and nodes[-1] == "b"
            await router.clients.close()

    asyncio.run(scenario())


def test_a_constrained_stream_is_not_continued_and_ends_incomplete(tmp_path):
    """A grammar's state cannot be rebuilt from the text: such a stream is not moved."""

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            received = 0
            with pytest.raises(UpstreamFailed) as err:
                relay = router.stream(ROUTE, _opener(_request(12), []), resumable=False)
                async for _ in relay:
                    received += 1
                    if received == 2:
                        await a.server.stop(0)
            assert "worker a failed" in err.value.message
            assert "incomplete" in err.value.message
            assert busy(b) == 0
            await router.clients.close()

    asyncio.run(scenario())


def test_a_logprobs_stream_is_retried_before_its_first_chunk_and_never_moved_after(tmp_path):
    """Tokens already scored cannot be re-scored by a continuation: a failure before the
    first chunk is a plain retry, one after it ends the stream incomplete."""

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            request = _request(12, n=1)
            request.sampling.top_logprobs = 2
            assert not resumable(request)
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            received = 0
            with pytest.raises(UpstreamFailed) as err:
                relay = router.stream(ROUTE, _opener(request, []), resumable=resumable(request))
                async for node, _ in relay:
                    received += 1
                    if received == 2:
                        assert node == "a"
                        await a.server.stop(0)  # b could take over, and must not
            assert "incomplete" in err.value.message
            assert busy(b) == 0
            # a is down before anything was sent: a plain retry on b.
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            opened: list[gen_pb.GenerateRequest] = []
            nodes = [n async for n, _ in router.stream(ROUTE, _opener(request, opened),
                                                       resumable=resumable(request))]  # fmt: skip
            assert set(nodes) == {"b"} and opened[-1] == request
            await router.clients.close()

    asyncio.run(scenario())


def test_with_no_replica_left_a_moved_stream_ends_incomplete_naming_why(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, _):
            router = make_router(worker_node("a", a.address))
            received = 0
            with pytest.raises(UpstreamFailed) as err:
                async for _ in router.stream(ROUTE, _opener(_request(12), [])):
                    received += 1
                    if received == 2:
                        await a.server.stop(0)
            assert "no other replica can continue it" in err.value.message
            assert "incomplete" in err.value.message
            await router.clients.close()

    asyncio.run(scenario())


# ---- a buffered generation restarts elsewhere ---------------------------------------------
def test_a_buffered_generation_whose_worker_dies_restarts_on_another_replica(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            opened: list[gen_pb.GenerateRequest] = []

            async def kill_a_once_it_runs() -> None:
                await wait_until(lambda: a.models.backends["m"].cells[0] != [])
                await asyncio.sleep(0.03)
                await a.server.stop(0)

            killer = asyncio.ensure_future(kill_a_once_it_runs())
            completed = await router.complete(ROUTE, _opener(_request(12), opened))
            await killer
            assert completed.node == "b" and completed.retried_from == ["a"]
            assert "".join(c.text for c in completed.chunks) == _expected(12)
            # Restarted from the start: the same request both times.
            assert [r.prompt for r in opened] == [PROMPT, PROMPT]
            assert completed.chunks[-1].usage.completion_tokens == 12
            await router.clients.close()

    asyncio.run(scenario())


# ---- which failures go elsewhere --------------------------------------------------------------
def test_a_node_answering_internal_errors_is_passed_over_and_suspected(tmp_path):
    """A node that fails every request (a broken or forged one) must not blackhole them."""

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            a.models.backends["m"].fail_next_run(RuntimeError("GGML_ASSERT failed"))
            nodes = [node async for node, _ in router.stream(ROUTE, _opener(_request(3), []))]
            assert set(nodes) == {"b"}
            # For a while, later requests avoid the suspect even when it is its turn.
            for _ in range(2):
                nodes = [node async for node, _ in router.stream(ROUTE, _opener(_request(2), []))]
                assert set(nodes) == {"b"}
            await router.clients.close()

    asyncio.run(scenario())


def test_invalid_requests_are_refused_once_and_not_retried(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            opened: list[gen_pb.GenerateRequest] = []
            bad = _request(3)
            bad.sampling.top_p = 5
            with pytest.raises(LlamaherdError) as err:
                await router.complete(ROUTE, _opener(bad, opened))
            assert err.value.kind is ErrorKind.INVALID_ARGUMENT and len(opened) == 1
            await router.clients.close()

    asyncio.run(scenario())


def test_every_queue_full_is_overloaded_not_unavailable():
    router = make_router(
        worker_node("a", "127.0.0.1:1", load=3, max_queue=2), worker_node("b", "127.0.0.1:2")
    )
    down = dataclasses.replace(worker_node("b", "127.0.0.1:2"), up=False, down_reason="gone")
    router.update(
        ClusterSnapshot(2, 0.0, (worker_node("a", "127.0.0.1:1", load=3, max_queue=2), down))
    )
    with pytest.raises(Overloaded) as err:
        router.choose(ROUTE, set())
    assert err.value.kind is ErrorKind.RESOURCE_EXHAUSTED and err.value.retry_after_s >= 1
    assert "2 requests waiting (max_queue 2)" in err.value.message
    # With no replica merely busy, the cluster cannot serve: 503.
    router.update(ClusterSnapshot(3, 0.0, (down,)))
    with pytest.raises(LlamaherdError) as unavailable:
        router.choose(ROUTE, set())
    assert unavailable.value.kind is ErrorKind.UNAVAILABLE


# ---- a request the model cannot serve -------------------------------------------------------
def test_generating_with_an_embedding_model_is_the_clients_mistake_not_a_503():
    status = worker_node("e", "127.0.0.1:1").status
    (replica,) = status.models
    config = replica.config.model_copy(update={"embedding": True})
    models = (dataclasses.replace(replica, config=config),)
    embedder = Node(dataclasses.replace(status, models=models))
    # Nodes without the model do not change that.
    elsewhere = Node(dataclasses.replace(status, node_id="x", models=()))
    router = make_router(embedder, elsewhere)
    with pytest.raises(FailedPrecondition, match=r"serves embeddings only.*/v1/embeddings"):
        router.choose(RouteRequest("m", "generate"), set())
    assert router.choose(RouteRequest("m", "embed"), set()).node_id == "e"
