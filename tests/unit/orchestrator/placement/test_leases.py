"""Lease names, and which leases no head uses."""

from __future__ import annotations

from common.status import ModelState
from orchestrator.cluster.types import NodeId
from orchestrator.placement.leases import StopLease, lease_id, lease_owner, orphan_leases
from tests.unit.orchestrator.factories import lease, replica, rpc_node


def test_a_lease_id_names_its_model_and_head() -> None:
    assert lease_id("llama-3:70b", NodeId("orin-1")) == "llama-3:70b@orin-1"
    assert lease_owner("llama-3:70b@orin-1") == ("llama-3:70b", "orin-1")


def test_leases_named_otherwise_have_no_owner() -> None:
    assert lease_owner("manual") is None
    assert lease_owner("@head") is None
    assert lease_owner("alias@") is None


def test_a_lease_its_head_uses_is_no_orphan() -> None:
    nodes = [
        rpc_node("a", replica("m", rpc_servers=("b:50100",))),
        rpc_node("b", leases=(lease("m", "a", "b:50100"),)),
    ]
    assert orphan_leases({"m"}, nodes) == []


def test_a_loading_head_uses_its_leases() -> None:
    nodes = [
        rpc_node("a", replica("m", ModelState.LOADING, rpc_servers=("b:50100",))),
        rpc_node("b", leases=(lease("m", "a", "b:50100"),)),
    ]
    assert orphan_leases({"m"}, nodes) == []


def test_orphans() -> None:
    nodes = [
        rpc_node("a", replica("m", rpc_servers=("b:50100",))),
        rpc_node("f", replica("m", ModelState.FAILED, rpc_servers=("b:50102",))),
        rpc_node("d", up=False),
        rpc_node(
            "b",
            leases=(
                lease("m", "a", "b:50100"),  # used
                lease("m", "a", "b:50101"),  # a uses another endpoint of b
                lease("m", "f", "b:50102"),  # its head failed
                lease("m", "gone", "b:50103"),  # no such head
                lease("m", "d", "b:50104"),  # its head is down
                lease("m", "c", "b:50105"),  # c holds no m
            ),
        ),
        rpc_node("c"),
    ]
    assert orphan_leases({"m"}, nodes) == [
        StopLease(NodeId("b"), lease_id, "no head uses it")
        for lease_id in ("m@a", "m@f", "m@gone", "m@d", "m@c")
    ]


def test_leases_of_models_outside_the_catalog_are_left_alone() -> None:
    nodes = [
        rpc_node("b", leases=(lease("operator-model", "a", "b:50100"), lease("x", "", "b:50101")))
    ]
    assert orphan_leases({"m"}, nodes) == []


def test_leases_on_down_nodes_are_not_listed() -> None:
    nodes = [rpc_node("b", up=False, leases=(lease("m", "a", "b:50100"),))]
    assert orphan_leases({"m"}, nodes) == []
