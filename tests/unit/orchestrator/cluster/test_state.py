"""The coordinator's soft state: registration, silence, closed streams, forgetting."""

from __future__ import annotations

import dataclasses

import pytest

from common.hardware import HardwareInfo
from common.status import NodeStatus
from orchestrator.cluster.state import ClusterState, NodeConflict
from orchestrator.cluster.types import Node, NodeId, PlacementProblem


def node(node_id: str = "a", address: str = "10.0.0.1:50051", at: float = 0.0) -> Node:
    return Node(NodeStatus(node_id, address, HardwareInfo("x86-cpu")), last_report=at)


def test_a_report_registers_the_node_and_bumps_the_version() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1)
    snapshot = state.snapshot(now=0.5)
    assert [n.node_id for n in snapshot.nodes] == ["a"] and snapshot.nodes[0].up
    assert snapshot.version == 1 and snapshot.taken_at == 0.5


def test_silence_longer_than_down_after_marks_the_node_down_with_the_reason() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(at=10.0), stream=1)
    assert not state.expire(now=12.9)
    assert state.expire(now=13.5)
    (down,) = state.snapshot(13.5).nodes
    assert not down.up and down.down_reason == "no heartbeat for 3.5 s"
    assert not state.expire(now=14.0), "an already-down node is not reported again"


def test_a_closed_stream_takes_the_node_down_at_once() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=7)
    state.disconnected(NodeId("a"), stream=7, now=0.1, reason="heartbeat stream closed")
    (down,) = state.snapshot(0.1).nodes
    assert not down.up and down.down_reason == "heartbeat stream closed"


def test_the_close_of_an_old_stream_does_not_take_down_its_successor() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1)
    state.report(node(), stream=2)  # the worker restarted and reconnected first
    state.disconnected(NodeId("a"), stream=1, now=0.2, reason="heartbeat stream closed")
    assert state.snapshot(0.2).nodes[0].up


def test_a_second_live_worker_with_the_same_id_elsewhere_is_refused() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(address="10.0.0.1:50051"), stream=1)
    with pytest.raises(NodeConflict, match=r"already registered from 10\.0\.0\.1:50051"):
        state.report(node(address="10.0.0.2:50051"), stream=2)


def test_a_down_node_id_may_be_taken_over_from_another_address() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(address="10.0.0.1:50051"), stream=1)
    state.disconnected(NodeId("a"), stream=1, now=1.0, reason="gone")
    state.report(node(address="10.0.0.2:50051", at=2.0), stream=2)
    (moved,) = state.snapshot(2.0).nodes
    assert moved.up and moved.address == "10.0.0.2:50051"


def test_long_dead_nodes_are_forgotten() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1)
    state.expire(now=5.0)
    assert state.snapshot(30).nodes
    assert state.expire(now=70.0)
    assert state.snapshot(70).nodes == ()


def test_problems_change_the_version_only_when_they_change() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    problems = (PlacementProblem("m", "fits nowhere"),)
    state.set_problems(problems)
    version = state.version
    state.set_problems(problems)
    assert state.version == version
    assert state.snapshot(0).problems == problems


def test_snapshots_are_immutable_values() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1)
    snapshot = state.snapshot(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.nodes[0].up = False  # type: ignore[misc]
