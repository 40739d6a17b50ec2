"""The coordinator's soft state: registration, silence, closed streams, forgetting."""

from __future__ import annotations

import dataclasses

import pytest

from common.hardware import HardwareInfo
from common.status import NodeStatus
from orchestrator.cluster.state import REFUSALS_KEPT, ClusterState, NodeConflict
from orchestrator.cluster.types import Node, NodeId, PlacementProblem

KEY = b"digest-of-node-key-a"
OTHER = b"digest-of-another-key"


def node(node_id: str = "a", address: str = "10.0.0.1:50051", at: float = 0.0) -> Node:
    return Node(NodeStatus(node_id, address, HardwareInfo("x86-cpu")), last_report=at)


def test_a_report_registers_the_node_and_bumps_the_version() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1, credential=KEY)
    snapshot = state.snapshot(now=0.5)
    assert [n.node_id for n in snapshot.nodes] == ["a"] and snapshot.nodes[0].up
    assert snapshot.version == 1 and snapshot.taken_at == 0.5


def test_silence_longer_than_down_after_marks_the_node_down_with_the_reason() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(at=10.0), stream=1, credential=KEY)
    assert not state.expire(now=12.9)
    assert state.expire(now=13.5)
    (down,) = state.snapshot(13.5).nodes
    assert not down.up and down.down_reason == "no heartbeat for 3.5 s"
    assert not state.expire(now=14.0), "an already-down node is not reported again"


def test_a_closed_stream_takes_the_node_down_at_once() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=7, credential=KEY)
    state.disconnected(NodeId("a"), stream=7, now=0.1, reason="heartbeat stream closed")
    (down,) = state.snapshot(0.1).nodes
    assert not down.up and down.down_reason == "heartbeat stream closed"


def test_the_close_of_an_old_stream_does_not_take_down_its_successor() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1, credential=KEY)
    state.report(node(), stream=2, credential=KEY)  # the worker restarted and reconnected first
    state.disconnected(NodeId("a"), stream=1, now=0.2, reason="heartbeat stream closed")
    assert state.snapshot(0.2).nodes[0].up


def test_a_second_worker_with_the_same_id_and_another_key_is_refused_saying_nothing() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(address="10.0.0.1:50051"), stream=1, credential=KEY)
    version = state.version
    with pytest.raises(NodeConflict) as refused:
        state.report(node(address="10.0.0.1:50051"), stream=2, credential=OTHER)
    assert str(refused.value) == "registration refused", "no address, no detail"
    (kept,) = state.snapshot(0).nodes
    assert kept.up and state.version == version and state.owns(NodeId("a"), stream=1)
    state.disconnected(NodeId("a"), stream=2, now=0.1, reason="refused stream closed")
    assert state.snapshot(0.1).nodes[0].up, "the refused stream's end leaves the node alone"


def test_the_same_key_reconnecting_replaces_the_stream_even_from_another_address() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(address="10.0.0.1:50051"), stream=1, credential=KEY)
    state.report(node(address="10.0.0.2:50051", at=1.0), stream=2, credential=KEY)
    assert state.owns(NodeId("a"), stream=2) and not state.owns(NodeId("a"), stream=1)
    (moved,) = state.snapshot(1.0).nodes
    assert moved.up and moved.address == "10.0.0.2:50051"


def test_a_down_node_id_stays_bound_until_it_is_forgotten() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1, credential=KEY)
    state.disconnected(NodeId("a"), stream=1, now=1.0, reason="gone")
    with pytest.raises(NodeConflict):
        state.report(node(at=2.0), stream=2, credential=OTHER)
    assert state.expire(now=62.0), "forgotten forget_after_s after it went down"
    state.report(node(at=62.0), stream=3, credential=OTHER)
    assert state.snapshot(62.0).nodes[0].up


def test_long_dead_nodes_are_forgotten() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    state.report(node(), stream=1, credential=KEY)
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
    state.report(node(), stream=1, credential=KEY)
    snapshot = state.snapshot(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.nodes[0].up = False  # type: ignore[misc]


def test_refusals_are_kept_bounded_numbered_and_bump_the_version() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    for i in range(REFUSALS_KEPT + 3):
        state.refused("a", f"ipv4:10.0.0.9:{i}", "its node id is bound to another node key", 1.0)
    snapshot = state.snapshot(2.0)
    assert snapshot.version == REFUSALS_KEPT + 3
    assert len(snapshot.refusals) == REFUSALS_KEPT
    assert [r.seq for r in snapshot.refusals] == list(range(4, REFUSALS_KEPT + 4))
    assert snapshot.refusals[-1].peer == f"ipv4:10.0.0.9:{REFUSALS_KEPT + 2}"
    assert snapshot.nodes == ()
