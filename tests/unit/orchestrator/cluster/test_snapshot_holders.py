"""ClusterSnapshot.holders, the per-snapshot index route() reads instead of every node."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from common.status import ModelState
from orchestrator.routing.candidates import Candidate, NoCandidate, route
from orchestrator.routing.policies import RoundRobin
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.factories import NOW, node, replica, snapshot


def ids(nodes: Sequence[object]) -> list[str]:
    return [n.node_id for n in nodes]  # type: ignore[attr-defined]


def test_holders_lists_each_aliases_nodes_by_node_id_in_any_state() -> None:
    snap = snapshot(
        node("c", replica("m"), replica("e")),
        node("a", replica("m", state=ModelState.FAILED, error="no file")),
        node("d"),
        node("b", replica("m"), up=False, down_reason="gone"),
    )
    assert {alias: ids(nodes) for alias, nodes in snap.holders.items()} == {
        "m": ["a", "b", "c"],
        "e": ["c"],
    }
    assert snap.holders is snap.holders  # built once


class Recording(RoundRobin):
    """Round-robin (a real policy) that also keeps what it was offered."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: list[Candidate] = []

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        self.offered = list(candidates)
        return super().choose(request, candidates)


def test_route_offers_the_holders_in_node_id_order_whatever_the_snapshots_order() -> None:
    policy = Recording()
    snap = snapshot(
        *(node(f"n{i}") for i in range(5)),
        node("z", replica()),
        node("b", replica()),
        node("k", replica(state=ModelState.LOADING)),
    )
    assert route(snap, RouteRequest("m"), now=NOW, policy=policy).node_id == "b"
    assert ids(policy.offered) == ["b", "z"]


def test_no_candidate_still_names_every_node_not_only_the_holders() -> None:
    snap = snapshot(node("a"), node("b", replica(state=ModelState.LOADING)))
    with pytest.raises(NoCandidate) as raised:
        route(snap, RouteRequest("m"), now=NOW, policy=Recording())
    assert ids(raised.value.rejections) == ["a", "b"]
