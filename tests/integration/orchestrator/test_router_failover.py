"""The gateway's Router against a real worker and a dead one: requests that no worker has
started are retried on another replica; refusals of the request itself are not."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as w_pb
from llamaherd.v1 import worker_pb2_grpc
from support.auth import cluster_token, worker_channel
from support.cluster import wait_for
from support.models import GEMMA
from support.worker_process import free_port

from common.errors import ErrorKind, LlamaherdError
from common.hardware import HardwareInfo
from common.model_settings import BUILTIN_PREFIX, ModelConfig
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.gateway.router import Router
from orchestrator.routing.policies import RoundRobin
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClients

ROUTE = RouteRequest(GEMMA)


def _node(node_id: str, address: str) -> Node:
    config = ModelConfig(alias=GEMMA, path=BUILTIN_PREFIX + GEMMA, max_queue=64)
    replica = ModelStatus(GEMMA, config, ModelState.READY, engine=EngineFigures(slots_total=1))
    status = NodeStatus(node_id, address, HardwareInfo("x86-cpu"), (replica,))
    return Node(status, last_report=0.0)


def _snapshot(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(version=1, taken_at=0.0, nodes=nodes)


async def _relay(router: Router, request: gen_pb.GenerateRequest) -> tuple[set[str], str]:
    nodes, text = set(), []
    async for node, chunk in router.stream(ROUTE, lambda worker, _sent: worker.generate(request)):
        nodes.add(node)
        text.append(chunk.text)
    return nodes, "".join(text)


def _router(*nodes: Node, retries: int = 2) -> Router:
    router = Router(RoundRobin(), WorkerClients(token=cluster_token()), retries)
    router.update(_snapshot(*nodes))
    return router


REQUEST = gen_pb.GenerateRequest(
    model=GEMMA, prompt="Hello", sampling=gen_pb.SamplingParams(temperature=0, max_tokens=8)
)


def test_request_on_a_dead_worker_is_retried_on_another_replica(worker):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: like a worker just killed

    async def scenario() -> None:
        # Round robin over sorted ids tries "a-dead" first for the first request.
        router = _router(_node("a-dead", dead), _node("b-live", worker.address))
        for _ in range(3):
            nodes, text = await _relay(router, REQUEST)
            assert nodes == {"b-live"} and text
        assert not router.inflight, "in-flight counts must return to zero"
        await router.clients.close()

    asyncio.run(scenario())


def test_with_every_replica_dead_the_error_names_the_failure(worker):
    async def scenario() -> None:
        router = _router(_node("a", f"127.0.0.1:{free_port()}"), retries=1)
        with pytest.raises(LlamaherdError) as err:
            await _relay(router, REQUEST)
        assert err.value.kind is ErrorKind.UNAVAILABLE
        assert "worker a failed" in err.value.message
        await router.clients.close()

    asyncio.run(scenario())


def test_invalid_requests_are_not_retried(worker):
    bad = gen_pb.GenerateRequest(model=GEMMA, prompt="x", sampling=gen_pb.SamplingParams(top_p=5))

    async def scenario() -> None:
        router = _router(_node("a", worker.address), _node("b", worker.address))
        calls = []
        original = router.clients.client

        def counting(address: str):
            calls.append(address)
            return original(address)

        router.clients.client = counting  # type: ignore[method-assign]
        with pytest.raises(LlamaherdError) as err:
            await _relay(router, bad)
        assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "top_p" in err.value.message
        assert len(calls) == 1
        await router.clients.close()

    asyncio.run(scenario())


def test_a_node_leaving_the_view_fails_its_running_streams_at_once(worker):
    long_request = gen_pb.GenerateRequest(
        model=GEMMA, prompt="Count:", sampling=gen_pb.SamplingParams(max_tokens=400)
    )

    async def scenario() -> None:
        node = _node("a", worker.address)
        router = _router(node)
        received = 0
        with pytest.raises(LlamaherdError) as err:
            async for _ in router.stream(
                ROUTE, lambda worker, _sent: worker.generate(long_request)
            ):
                received += 1
                if received == 3:
                    down = dataclasses.replace(node, up=False, down_reason="no heartbeat for 2.1 s")
                    router.update(ClusterSnapshot(2, 0.0, (down,)))
        assert "no heartbeat for 2.1 s" in err.value.message
        assert "incomplete" in err.value.message
        assert received == 3
        await router.clients.close()

    asyncio.run(scenario())
    # The worker saw the cancellation and is free again.
    with worker_channel(worker.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        wait_for(lambda: _active(stub) == 0, 5, "the worker to stop the cancelled generation")


def _active(stub: worker_pb2_grpc.WorkerStub) -> int:
    models = {m.alias: m for m in stub.ListModels(w_pb.ListModelsRequest()).models}
    return int(models[GEMMA].active_requests) + int(models[GEMMA].queued_requests)
