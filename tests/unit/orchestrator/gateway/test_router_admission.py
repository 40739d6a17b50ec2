"""The Router's admission at measured capacity and its pinned requests: the decisions the
gateway takes before a request reaches a worker (no worker is called here)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from common.errors import ErrorKind, Unavailable
from orchestrator.cluster.capacity import CapacityRecord, record_for
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.gateway import router as router_module
from orchestrator.gateway.errors import Overloaded, http_headers, http_status, openai_envelope
from orchestrator.gateway.router import Router
from orchestrator.routing import candidates
from orchestrator.routing.admission import Admission, ReplicaLoad, admit
from orchestrator.routing.candidates import candidates_for
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


# ---- admission's cost on a large fleet, and the same decisions as a pass over every replica --


def _reference(router: Router, request: RouteRequest, exclude: set[NodeId]) -> Admission:
    """Admission as a pass over every replica (what the router did before): the spec."""
    candidates, _ = candidates_for(
        router.snapshot, request.alias, now=router.state_clock(), inflight=router.inflight,
        exclude=exclude, task=request.task,
    )  # fmt: skip
    loads = [
        ReplicaLoad(
            c.node_id,
            c.load,
            record_for(router.snapshot.capacities, c.node_id, "m", c.replica.config.n_ctx),
        )
        for c in candidates
    ]
    return admit(request.alias, loads, 0.0)


def _fleet(size: int, rng: random.Random) -> list[Node]:
    return [
        worker_node(
            f"n{i:05d}",
            f"10.0.{i // 250}.{i % 250}:1",
            load=rng.choice((0, 1, 2, 3)),
            max_queue=rng.choice((1, 2, 64)),
        )
        for i in range(size)
    ]


@pytest.mark.parametrize("seed", range(6))
def test_admission_decides_as_a_pass_over_every_replica(seed: int) -> None:
    rng = random.Random(seed)
    size = (6, 40)[seed % 2]  # a few replicas are often all full; many, seldom
    fleet = _fleet(size, rng)
    router = make_router(*fleet)
    names = [n.node_id for n in fleet]
    records = [measured(n, rng.choice((0, 1, 2, 3, 5))) for n in rng.sample(names, size - 2)]
    records.append(measured(names[0], 1, n_ctx=8192))  # another context: does not apply
    with_capacities(router, *records)
    for _ in range(60):
        router.inflight.clear()
        for node in rng.sample(names, rng.randrange(6)):
            router.inflight[(NodeId(node), "m")] = rng.randrange(1, 6)
        exclude = {NodeId(n) for n in rng.sample(names, rng.randrange(4))}
        if rng.random() < 0.4:  # the fleet's few unmeasured ones failed this request
            measured_nodes = {r.node for r in records}
            exclude |= {NodeId(n) for n in names if n not in measured_nodes}
        expected = _reference(router, ROUTE, exclude)
        if not expected.admitted:
            with pytest.raises(Overloaded) as refused:
                router._admitted(ROUTE, exclude)
            assert str(refused.value) == expected.reason
            assert refused.value.retry_after_s == expected.retry_after_s
            continue
        full = router._admitted(ROUTE, exclude)
        eligible, _ = candidates_for(
            router.snapshot, "m", now=router.state_clock(), inflight=router.inflight,
            exclude=exclude,
        )  # fmt: skip
        # The same full replicas among those that can serve (others in `full` cannot serve
        # this request anyway), so routing chooses among the same ones.
        assert full & {c.node_id for c in eligible} == expected.full
        assert not full & exclude


def test_admission_on_a_large_fleet_looks_at_this_gateways_requests_not_every_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = 10_000
    fleet = [worker_node(f"n{i:05d}", f"10.0.{i // 250}.{i % 250}:1", load=1) for i in range(size)]
    router = make_router(*fleet)
    # Every replica measured at 2 streams; n00000 reports 2 and n00001 holds 2 of this
    # gateway's requests: both full.
    records = [measured(n.node_id, 2) for n in fleet]
    fleet[0] = worker_node("n00000", "10.0.0.0:1", load=2)
    router.update(dataclasses.replace(router.snapshot, version=2, nodes=tuple(fleet),
                                      capacities=tuple(records)))  # fmt: skip
    router.inflight[(NodeId("n00001"), "m")] = 2
    assert router._admitted(ROUTE, set()) == {"n00000", "n00001"}  # prepares the snapshot's caps

    def every_replica(*args: object, **kwargs: object) -> None:
        raise AssertionError("admission passed over every replica")

    monkeypatch.setattr(candidates, "candidates_for", every_replica)
    monkeypatch.setattr(router_module, "candidates_for", every_replica, raising=False)
    monkeypatch.setattr(candidates.CandidatePool, "eligible", every_replica)
    monkeypatch.setattr(router_module, "measured_caps", every_replica)  # prepared once
    assert router._admitted(ROUTE, {NodeId("n00002")}) == {"n00000", "n00001"}
    router.inflight[(NodeId("n00003"), "m")] = 2
    assert router._admitted(ROUTE, set()) == {"n00000", "n00001", "n00003"}
    assert router.choose(ROUTE, set()).node_id not in {"n00000", "n00001", "n00003"}
