"""What the Router tells its traffic recorder, against real Worker services in this process
(tests/unit/orchestrator/gateway/relay_support.py): one trace per `stream`, `complete` and
`unary` call, every relayed chunk with its node and tokens, and the outcome exactly once,
including a failed routing and a client that went away. Read back through the recorder's
Prometheus families, as /metrics serves them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from prometheus_client.parser import text_string_to_metric_families

from common.errors import ErrorKind, LlamaherdError
from common.hardware import HardwareInfo
from common.model_settings import ModelConfig
from common.status import ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node, PlacementProblem
from orchestrator.dashboard.traffic import Traffic
from orchestrator.gateway.errors import ModelNotServed, Overloaded
from orchestrator.gateway.http_api import build_app
from orchestrator.gateway.metrics import render
from orchestrator.gateway.route_requests import continued
from orchestrator.gateway.router import Progress, Router
from orchestrator.routing.policies import RoundRobin
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerClients, WorkerStream
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import two_workers, worker_node
from tests.unit.worker.api.serving import serving, wait_until

ROUTE = RouteRequest("m")
Labels = tuple[str, ...]


def traced(*nodes: Node, problems: tuple[PlacementProblem, ...] = ()) -> tuple[Router, Traffic]:
    traffic = Traffic(rng=random.Random(0))
    router = Router(RoundRobin(), WorkerClients(), retries=2, traffic=traffic)
    router.update(ClusterSnapshot(version=1, taken_at=0.0, nodes=nodes, problems=problems))
    return router, traffic


def recorded(traffic: Traffic) -> dict[str, dict[Labels, float]]:
    """sample name -> {label values in the family's order (le last): value}."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(render(traffic.families()).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


def requests(traffic: Traffic) -> dict[Labels, float]:
    return recorded(traffic).get("llamaherd_gateway_requests_total", {})


def tokens(traffic: Traffic) -> dict[Labels, float]:
    return recorded(traffic)["llamaherd_gateway_generated_tokens_total"]


def count(traffic: Traffic, histogram: str) -> dict[Labels, float]:
    return recorded(traffic)[f"llamaherd_gateway_{histogram}_count"]


def opener(max_tokens: int, **sampling: float):  # type: ignore[no-untyped-def]
    request = gen_pb.GenerateRequest(
        model="m", prompt="ab", sampling=gen_pb.SamplingParams(max_tokens=max_tokens, **sampling)
    )

    def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
        generate = continued(request, sent.text, sent.tokens)
        assert isinstance(generate, gen_pb.GenerateRequest)
        return worker.generate(generate)

    return open_call


def test_a_stream_is_one_request_with_its_chunks(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router, traffic = traced(worker_node("a", a.address), worker_node("b", b.address))
            n = [len(c.token_ids) async for _, c in router.stream(ROUTE, opener(5))]
            assert sum(n) == 5
            assert requests(traffic) == {("m", "a", "ok"): 1}
            assert tokens(traffic) == {("m", "a"): 5}
            assert count(traffic, "time_to_first_token_seconds") == {("m", "a"): 1}
            itl = count(traffic, "inter_token_latency_seconds")
            assert itl == {("m", "a"): sum(1 for k in n[1:] if k)}
            assert count(traffic, "request_duration_seconds") == {("m", "a"): 1}
            # The HTTP API closes the relay once it has sent the last chunk: still ok.
            relay = router.stream(ROUTE, opener(3))
            async for _, chunk in relay:
                if chunk.finish_reason:
                    break
            await relay.aclose()
            assert requests(traffic) == {("m", "a", "ok"): 1, ("m", "b", "ok"): 1}
            await router.clients.close()

    asyncio.run(scenario())


def test_a_migrated_stream_counts_each_nodes_tokens_and_ends_ok_on_the_last(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router, traffic = traced(worker_node("a", a.address), worker_node("b", b.address))
            text = ""
            async for node, chunk in router.stream(ROUTE, opener(12)):
                text += chunk.text
                if len(text) == 4 and node == "a":
                    await a.server.stop(0)
            assert requests(traffic) == {("m", "b", "ok"): 1}
            assert tokens(traffic) == {("m", "a"): 4, ("m", "b"): 8}
            ttft = count(traffic, "time_to_first_token_seconds")
            assert ttft == {("m", "a"): 1, ("m", "b"): 0}, "one first token per request"
            await router.clients.close()

    asyncio.run(scenario())


def test_a_restarted_generation_is_one_request_ending_on_its_second_node(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router, traffic = traced(worker_node("a", a.address), worker_node("b", b.address))

            async def kill_a_once_it_runs() -> None:
                await wait_until(lambda: a.models.backends["m"].cells[0] != [])
                await asyncio.sleep(0.03)
                await a.server.stop(0)

            killer = asyncio.ensure_future(kill_a_once_it_runs())
            completed = await router.complete(ROUTE, opener(12))
            await killer
            assert completed.node == "b"
            assert requests(traffic) == {("m", "b", "ok"): 1}
            assert tokens(traffic)[("m", "b")] == 12  # and what a made before it died
            assert count(traffic, "request_duration_seconds") == {("m", "a"): 0, ("m", "b"): 1}
            await router.clients.close()

    asyncio.run(scenario())


def test_a_refused_request_is_recorded_with_its_error_kind_and_node(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, _):
            router, traffic = traced(worker_node("a", a.address))
            with pytest.raises(LlamaherdError):
                await router.complete(ROUTE, opener(3, top_p=5))
            assert requests(traffic) == {("m", "a", "invalid_argument"): 1}
            await router.clients.close()

    asyncio.run(scenario())


def test_a_unary_call_is_recorded_without_tokens(tmp_path):
    async def scenario() -> None:
        (tmp_path / "e").mkdir()
        async with serving(tmp_path / "e", {"alias": "e", "embedding": True}) as worker:
            config = ModelConfig(alias="e", path="/models/e.gguf", embedding=True)
            replica = ModelStatus("e", config, ModelState.READY)
            node = Node(NodeStatus("w", worker.address, HardwareInfo("x86-cpu"), (replica,)))
            router, traffic = traced(node)
            embed = gen_pb.EmbedRequest(model="e", inputs=["hi"])
            reply, served = await router.unary(RouteRequest("e", "embed"), lambda w: w.embed(embed))
            assert served == "w" and len(reply.embeddings) == 1
            assert requests(traffic) == {("e", "w", "ok"): 1}
            assert tokens(traffic) == {("e", "w"): 0}
            assert count(traffic, "request_duration_seconds") == {("e", "w"): 1}
            await router.clients.close()

    asyncio.run(scenario())


def test_a_model_nobody_serves_is_recorded_as_unknown_not_by_its_alias():
    router, traffic = traced(worker_node("a", "127.0.0.1:1"))
    garbage = RouteRequest("x" * 200)

    async def scenario() -> None:
        with pytest.raises(ModelNotServed):
            await anext(router.stream(garbage, opener(3)))
        with pytest.raises(ModelNotServed):
            await router.complete(garbage, opener(3))
        with pytest.raises(ModelNotServed):
            await router.unary(RouteRequest("y", "embed"), lambda w: w.embed(None))  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert requests(traffic) == {("unknown", "", "not_found"): 3}


def test_a_catalog_model_without_a_replica_keeps_its_name():
    problem = PlacementProblem("big", "needs 30 GiB, the largest node has 8 GiB")
    router, traffic = traced(worker_node("a", "127.0.0.1:1"), problems=(problem,))
    with pytest.raises(LlamaherdError) as err:
        asyncio.run(router.complete(RouteRequest("big"), opener(3)))
    assert err.value.kind is ErrorKind.UNAVAILABLE
    assert requests(traffic) == {("big", "", "unavailable"): 1}


def test_an_overloaded_cluster_is_recorded_as_resource_exhausted():
    full = worker_node("a", "127.0.0.1:1", load=3, max_queue=2)
    router, traffic = traced(full)

    async def scenario() -> None:
        with pytest.raises(Overloaded):
            await anext(router.stream(ROUTE, opener(3)))

    asyncio.run(scenario())
    assert requests(traffic) == {("m", "", "resource_exhausted"): 1}


def test_a_client_that_goes_away_is_recorded_as_cancelled(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, b):
            router, traffic = traced(worker_node("a", a.address), worker_node("b", b.address))
            # A streaming client closes the relay mid-way (GeneratorExit at its yield).
            relay = router.stream(ROUTE, opener(50))
            await anext(relay)
            await anext(relay)
            await relay.aclose()
            # A buffered client's task is cancelled (CancelledError in the relay).
            task = asyncio.ensure_future(router.complete(ROUTE, opener(50)))
            await wait_until(lambda: b.models.backends["m"].cells[0] != [])
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert requests(traffic) == {("m", "a", "cancelled"): 1, ("m", "b", "cancelled"): 1}
            assert traffic.summary_json()["cancelled"] == 2
            assert traffic.summary_json()["errors"] == {}
            await router.clients.close()

    asyncio.run(scenario())


def test_a_stream_on_a_node_that_leaves_the_view_is_one_request(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            node_a = worker_node("a", a.address)
            router, traffic = traced(node_a, worker_node("b", b.address))
            text = ""
            async for node, chunk in router.stream(ROUTE, opener(12)):
                text += chunk.text
                if len(text) == 3 and node == "a":
                    down = dataclasses.replace(node_a, up=False, down_reason="no heartbeat")
                    router.update(ClusterSnapshot(2, 0.0, (down, worker_node("b", b.address))))
            assert requests(traffic) == {("m", "b", "ok"): 1}
            await router.clients.close()

    asyncio.run(scenario())


# ---- through the HTTP front door ------------------------------------------------------------
def test_an_http_stream_sent_whole_is_ok_and_one_cut_short_is_cancelled(tmp_path):
    """The HTTP API closes the relay after the last chunk (ok), or when its client
    disconnects mid-stream (cancelled)."""

    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, _):
            router, traffic = traced(worker_node("a", a.address))
            app = build_app(router, 0)
            body = {"model": "m", "prompt": "ab", "max_tokens": 5, "stream": True}
            reply = await call(app, "/v1/completions", json.dumps(body).encode())
            assert reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")
            assert requests(traffic) == {("m", "a", "ok"): 1}
            long = json.dumps({**body, "max_tokens": 100}).encode()
            await call(app, "/v1/completions", long, disconnect_after_s=0.3)
            await wait_until(lambda: ("m", "a", "cancelled") in requests(traffic), timeout=2.0)
            assert requests(traffic) == {("m", "a", "ok"): 1, ("m", "a", "cancelled"): 1}
            assert 3 < tokens(traffic)[("m", "a")] < 100
            await router.clients.close()

    asyncio.run(scenario())
