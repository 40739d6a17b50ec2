"""Router.update on a snapshot made from a delta (it reads only the delta's changes) leaves
the same state as on the same snapshot taken whole (a pass over every node): the up nodes
and the calls failed, the workers' addresses, and under a power budget the draw and the
admission, over many updates of a fleet that reports, joins, goes down, is forgotten and
reports power samples that age, some from a clock ahead or behind."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest
from support.samples_factory import jetson_sample, node_sample

from common.hardware import HardwareInfo
from common.status import NodeStatus
from orchestrator.cluster.feed import CHANGES, SnapshotFeed, SnapshotFollower
from orchestrator.cluster.state import ClusterState
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.gateway import router as router_module
from orchestrator.gateway.router import Router
from orchestrator.routing.admission import DrawTracker, cluster_draw
from orchestrator.routing.heat import MAX_AGE_S
from orchestrator.routing.policies import RoundRobin
from orchestrator.worker_client import WorkerClients

KEY = b"digest-of-a-node-key"
T0 = 1_764_000_000.0  # unix time: the samples' and the router's wall clock


class Failed(Router):
    """A Router that notes which nodes' calls it failed."""

    def __init__(self, budget: float | None, clock: list[float]) -> None:
        super().__init__(
            RoundRobin(), WorkerClients(), 1, power_budget_w=budget, wall_clock=lambda: clock[0]
        )
        self.failed: list[NodeId] = []

    def _fail_calls(self, node_id: NodeId, reason: str) -> None:
        self.failed.append(node_id)


def _node(node_id: str, rng: random.Random, wall: float, at: float) -> Node:
    kind = rng.random()
    if kind < 0.2:
        sample = None
    elif kind < 0.3:  # a CPU-only node: no power figure
        sample = node_sample(taken_at=wall, gpus=(), sources=("host",))
    else:  # a board, its clock up to a minute off the gateway's either way
        skew = rng.choice((0.0, 0.0, rng.uniform(-60, 60), MAX_AGE_S, -MAX_AGE_S))
        jetson = dataclasses.replace(jetson_sample(), power_total_watts=rng.uniform(5, 60))
        sample = node_sample(taken_at=wall + skew, gpus=(), jetson=jetson)
    address = f"10.0.0.{rng.randrange(40)}:50051"  # some nodes share an address
    status = NodeStatus(node_id, address, HardwareInfo("jetson"), telemetry=sample)
    return Node(status, last_report=at)


def _state(router: Router) -> tuple[object, ...]:
    return (
        router._up, router._address, +router.addresses, router.power_draw, router.power,
        sorted(router.failed) if isinstance(router, Failed) else None,
    )  # fmt: skip


@pytest.mark.parametrize("budget", [None, 400.0, 3000.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_update_from_a_delta_equals_a_pass_over_every_node(
    budget: float | None, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "UPDATE_CHUNK", 16)  # several pieces per update
    rng = random.Random(seed)
    state = ClusterState(down_after_s=3, forget_after_s=20)
    feed = SnapshotFeed(history=4)
    follower = SnapshotFollower()
    clock = [T0]
    incremental, whole = Failed(budget, clock), Failed(budget, clock)
    fleet = [f"n{i:03d}" for i in range(300)]
    now = 0.0
    deltas = 0
    for step in range(120):
        now += rng.choice((0.5, 0.5, 1.0, 4.0))
        clock[0] += rng.choice((0.5, 1.0, 0.0, 7.0, -0.25 if step % 17 == 0 else 0.5))
        for node_id in rng.sample(fleet, rng.randrange(0, 120)):
            state.report(_node(node_id, rng, clock[0], now), stream=1, credential=KEY)
        for node_id in rng.sample(fleet, rng.randrange(0, 5)):
            state.disconnected(NodeId(node_id), stream=1, now=now, reason="stream closed")
        state.expire(now)
        feed.publish(state.snapshot(now))
        if rng.random() < 0.1:
            continue  # the gateway misses a publication: the next delta starts further back
        snapshot = follower.take(feed.encoded(*follower.since()))
        if snapshot is incremental.snapshot:
            continue
        deltas += CHANGES in snapshot.memo
        if step % 2:
            incremental.update(snapshot)
        else:  # a piece at a time, as a gateway does
            asyncio.run(incremental.follow(snapshot))
        whole.update(dataclasses.replace(snapshot))  # a new snapshot: no memo, no changes
        assert _state(incremental) == _state(whole), f"step {step}"
        if budget is not None:
            assert whole.power_draw == cluster_draw(snapshot.nodes, clock[0])
    assert deltas > 50
    assert incremental.failed  # nodes went down while up
    if budget is not None:
        assert incremental.power_draw.per_node and incremental.power_draw.unmeasured


def test_a_tracker_sees_samples_age_and_come_of_age_between_changes() -> None:
    """Nothing changes, the clock moves: a sample goes stale, and one from a clock ahead
    turns fresh, as cluster_draw says at each reading."""
    jetson = dataclasses.replace(jetson_sample(), power_total_watts=10.0)
    nodes = [
        Node(NodeStatus(n, "a:1", HardwareInfo("jetson"), telemetry=node_sample(
            taken_at=T0 + skew, gpus=(), jetson=jetson)))
        for n, skew in (("now", 0.0), ("ahead", 40.0), ("edge", MAX_AGE_S))
    ]  # fmt: skip
    tracker = DrawTracker()
    tracker.reset(nodes, T0)
    for now in (T0, T0 + 5, T0 + 10, T0 + 10 + 1e-7, T0 + 29, T0 + 30, T0 + 31, T0 + 71):
        assert tracker.changed((), (), now)
        assert tracker.draw() == cluster_draw(nodes, now), now
    assert not tracker.changed((), (), T0)  # the clock went back: reset instead
    assert ClusterSnapshot().nodes == ()
