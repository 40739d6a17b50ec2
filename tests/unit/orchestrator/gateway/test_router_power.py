"""The Router under a cluster power budget: the recorded Jetson boards, read through the real
Jetson source, report the draw with each snapshot; new requests are refused with a 429 naming
the budget while the draw is over it and admitted again below 95% of it, and requests
already relayed are never cut (they finish, and even move to another replica), against
real Worker services in this process (only llama.cpp is the fake backend)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from support.recorded_telemetry import RecordedJetson

from common.errors import ErrorKind
from orchestrator.cluster.reports import view_from_proto, view_to_proto
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.cluster.view import PowerView, view_from_json, view_to_json
from orchestrator.gateway.errors import Overloaded, http_headers, http_status, openai_envelope
from orchestrator.gateway.router import Progress, Router
from orchestrator.gateway.views import cluster_status
from orchestrator.routing.admission import POWER_RETRY_AFTER_S
from orchestrator.routing.policies import RoundRobin
from orchestrator.routing.request import RouteRequest
from orchestrator.status_table import render_status
from orchestrator.worker_client import WorkerClient, WorkerClients, WorkerStream
from tests.unit.orchestrator.gateway.relay_support import two_workers, worker_node

NOW = 1_764_000_000.0  # unix time, the samples' clock (the Router's wall_clock)
REGISTRY_NOW = 5_000.0
ROUTE = RouteRequest("m")
BUDGET_W = 30.0


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[tuple[RecordedJetson, RecordedJetson]]:
    agx = RecordedJetson("agx-orin-64gb", tmp_path / "agx_release")
    nano = RecordedJetson("orin-nano-8gb", tmp_path / "nano_release")
    yield agx, nano
    agx.close()
    nano.close()


class Cluster:
    """Snapshots of two workers whose telemetry comes from the recorded boards."""

    def __init__(self, boards: tuple[RecordedJetson, RecordedJetson], addresses: list[str]):
        self.boards = boards
        self.addresses = addresses
        self.version = 0

    def snapshot(self, agx_watts: float) -> ClusterSnapshot:
        agx, nano = self.boards
        agx.draw(agx_watts)
        self.version += 1
        nodes = tuple(
            _reporting(worker_node(name, address), board.sample(NOW))
            for name, address, board in zip("ab", self.addresses, (agx, nano), strict=True)
        )
        # The registry's clock is monotonic, not the samples' unix time.
        return ClusterSnapshot(version=self.version, taken_at=REGISTRY_NOW, nodes=nodes)


def budgeted_router() -> Router:
    return Router(RoundRobin(), WorkerClients(), 2, power_budget_w=BUDGET_W, wall_clock=lambda: NOW)


def _reporting(node: Node, sample: object) -> Node:
    return dataclasses.replace(node, status=dataclasses.replace(node.status, telemetry=sample))


def _request(max_tokens: int) -> gen_pb.GenerateRequest:
    sampling = gen_pb.SamplingParams(max_tokens=max_tokens)
    return gen_pb.GenerateRequest(model="m", prompt="ab", sampling=sampling)


def _open(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
    request = _request(12)
    if sent.started:  # a continuation: the prompt extended by what was sent
        request = gen_pb.GenerateRequest(
            model="m", prompt="ab" + sent.text,
            sampling=gen_pb.SamplingParams(max_tokens=12 - sent.tokens),
        )  # fmt: skip
    return worker.generate(request)


def _refused(router: Router) -> Overloaded:
    async def attempt() -> None:
        async for _ in router.stream(ROUTE, _open):
            raise AssertionError("refused requests reach no worker")

    with pytest.raises(Overloaded) as err:
        asyncio.run(attempt())
    return err.value


def test_over_the_budget_new_requests_get_a_429_naming_it_until_the_draw_falls_below_95(
    boards: tuple[RecordedJetson, RecordedJetson],
) -> None:
    cluster = Cluster(boards, ["127.0.0.1:1", "127.0.0.1:2"])  # never called: all refused
    router = budgeted_router()
    router.update(cluster.snapshot(20.0))  # 20 + 8.5 W: within 30 W
    assert router.power.admitted
    assert router.choose(ROUTE, set()).node_id == "a"
    router.update(cluster.snapshot(26.824))  # the AGX as recorded, loaded: 35.3 W
    error = _refused(router)
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED and http_status(error) == 429
    assert http_headers(error) == {"Retry-After": str(POWER_RETRY_AFTER_S)}
    message = openai_envelope(error)["error"]["message"]
    assert message == (
        "the cluster is over its power budget of 30 W: it draws 35 W; new requests are "
        "admitted again below 28.5 W"
    )
    router.update(cluster.snapshot(20.5))  # 29 W: under the budget, not under 95% of it
    _refused(router)
    router.update(cluster.snapshot(19.5))  # 28 W: admitted again
    assert router.power.admitted and router.power_draw.watts == pytest.approx(28.0, abs=0.01)
    # A pinned request (llamaherd capacity measuring one node) is never refused for power.
    router.update(cluster.snapshot(40.0))
    assert not router.power.admitted
    assert router.choose(RouteRequest("m", node="b"), set()).node_id == "b"


def test_without_a_budget_the_draw_is_not_even_computed(
    boards: tuple[RecordedJetson, RecordedJetson],
) -> None:
    router = Router(RoundRobin(), WorkerClients(), 2)
    router.update(Cluster(boards, ["127.0.0.1:1", "127.0.0.1:2"]).snapshot(500.0))
    assert router.power.admitted and router.power_draw.watts == 0.0


def test_a_stream_in_flight_is_never_cut_even_when_it_moves_over_the_budget(
    tmp_path: Path, boards: tuple[RecordedJetson, RecordedJetson]
) -> None:
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            cluster = Cluster(boards, [a.address, b.address])
            router = budgeted_router()
            router.update(cluster.snapshot(10.0))
            nodes, text = [], ""
            async for node, chunk in router.stream(ROUTE, _open):
                nodes.append(node)
                text += chunk.text
                if len(text) == 3:
                    router.update(cluster.snapshot(60.0))  # the draw passes the budget
                    assert not router.power.admitted
                if len(text) == 6 and node == "a":
                    await a.server.stop(0)  # its worker dies: the stream moves on
            assert len(text) == 12, "the admitted stream ran to its end"
            assert nodes[0] == "a" and nodes[-1] == "b"
            with pytest.raises(Overloaded, match="power budget of 30 W"):
                async for _ in router.stream(ROUTE, _open):
                    pass
            await router.clients.close()

    asyncio.run(scenario())


# ---- what status and /v1/cluster show ------------------------------------------------------


def test_status_and_the_cluster_document_show_the_draw_against_the_budget(
    boards: tuple[RecordedJetson, RecordedJetson],
) -> None:
    cluster = Cluster(boards, ["127.0.0.1:1", "127.0.0.1:2"])
    router = budgeted_router()
    snapshot = cluster.snapshot(26.824)
    cpu = dataclasses.replace(worker_node("c", "127.0.0.1:3"), last_report=NOW)  # no power
    router.update(dataclasses.replace(snapshot, nodes=(*snapshot.nodes, cpu)))
    view = cluster_status(router)
    assert view.power == PowerView(
        budget_w=30.0, draw_w=pytest.approx(35.324), measured_nodes=("a", "b"),
        unmeasured_nodes=("c",), admitting=False, resume_below_w=28.5,
    )  # fmt: skip
    document = view_to_json(view)
    assert document["power"]["unmeasured_nodes"] == ["c"]
    assert view_from_json(document) == view
    assert view_from_proto(view_to_proto(view)) == view  # what llamaherd status receives
    assert render_status(view).splitlines()[1] == (
        "power: 35 W of a 30 W budget, over: new requests refused until below 28.5 W; "
        "1 unmeasured (c reports no power)"
    )
    # Without a budget there is no power block at all.
    plain = Router(RoundRobin(), WorkerClients(), 2)
    plain.update(snapshot)
    view = cluster_status(plain)
    assert view.power is None and view_to_json(view)["power"] is None
    assert view_from_proto(view_to_proto(view)).power is None
    assert not any(line.startswith("power:") for line in render_status(view).splitlines())
