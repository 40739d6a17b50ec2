"""The Router's admission at measured capacity and its pinned requests: the decisions the
gateway takes before a request reaches a worker (no worker is called here)."""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import ErrorKind, Unavailable
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.gateway.errors import Overloaded, http_headers, http_status, openai_envelope
from orchestrator.gateway.router import Router
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.gateway.relay_support import make_router, worker_node

ROUTE = RouteRequest("m")


def measured(node: str, max_streams: int, n_ctx: int = 4096) -> CapacityRecord:
    return CapacityRecord(
        node=node, model="m", n_ctx=n_ctx, slo="ttft_p99=2s,itl_p99=150ms",
        max_streams=max_streams, prefill_tps=900.0, decode_tps_stream=30.0,
        decode_tps_total=30.0, e2e_s=2.5, prompt_tokens=128, output_tokens=64, measured_at=0.0,
    )  # fmt: skip


def with_capacities(router: Router, *records: CapacityRecord) -> None:
    snapshot = router.snapshot
    router.update(dataclasses.replace(snapshot, version=snapshot.version + 1, capacities=records))


def nodes(*loads: int) -> list[Node]:
    return [worker_node(n, f"127.0.0.1:{i + 1}", load=load) for i, (n, load) in
            enumerate(zip("ab", loads, strict=False))]  # fmt: skip


def test_every_replica_at_its_measured_streams_is_a_429_with_retry_after():
    router = make_router(*nodes(1, 2))
    with_capacities(router, measured("a", 1), measured("b", 2))
    with pytest.raises(Overloaded) as err:
        router.choose(ROUTE, set())
    error = err.value
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED and http_status(error) == 429
    assert int(http_headers(error)["Retry-After"]) >= 1
    message = openai_envelope(error)["error"]["message"]
    assert "model 'm' is at its measured capacity" in message
    assert "a holds 1 of 1 streams" in message and "b holds 2 of 2 streams" in message


def test_a_full_replica_is_passed_over_while_another_has_room():
    router = make_router(*nodes(1, 1))
    with_capacities(router, measured("a", 1), measured("b", 4))
    assert {router.choose(ROUTE, set()).node_id for _ in range(4)} == {"b"}


def test_this_gateways_own_inflight_counts_toward_the_cap():
    router = make_router(*nodes(0))
    with_capacities(router, measured("a", 2))
    router.inflight[(NodeId("a"), "m")] = 2  # fresher than the node's last report of 0
    with pytest.raises(Overloaded):
        router.choose(ROUTE, set())


def test_without_measurements_or_with_another_context_nothing_changes():
    router = make_router(*nodes(5))  # max_queue 64: routing takes it
    assert router.choose(ROUTE, set()).node_id == "a"
    with_capacities(router, measured("a", 1, n_ctx=8192))  # measured with another n_ctx
    assert router.choose(ROUTE, set()).node_id == "a"
    with_capacities(router, measured("other-node", 1))
    assert router.choose(ROUTE, set()).node_id == "a"


def test_an_unmeasured_replica_beside_full_ones_takes_the_request():
    router = make_router(*nodes(1, 9))
    with_capacities(router, measured("a", 1))
    assert router.choose(ROUTE, set()).node_id == "b"


def test_a_pinned_request_goes_to_its_node_only_and_skips_the_cap():
    router = make_router(*nodes(3, 0))
    with_capacities(router, measured("a", 1))
    pinned = dataclasses.replace(ROUTE, node="a")
    assert {router.choose(pinned, set()).node_id for _ in range(3)} == {"a"}
    with pytest.raises(Unavailable, match=r"node 'c' is not in the cluster \(nodes: a, b\)"):
        router.choose(dataclasses.replace(ROUTE, node="c"), set())


def test_a_pinned_request_whose_node_failed_it_finds_no_other():
    router = make_router(*nodes(0, 0))
    with pytest.raises(Unavailable):
        router.choose(dataclasses.replace(ROUTE, node="a"), {NodeId("a")})


def test_the_snapshot_without_capacities_is_the_default():
    assert ClusterSnapshot().capacities == ()
