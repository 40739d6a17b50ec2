"""Equal hardware descriptions and model configs of different reports share one object,
and the nodes stay equal to what was reported."""

from __future__ import annotations

from common.hardware import HardwareInfo
from common.status import NodeStatus
from common.wire.status import node_status_to_report
from orchestrator.cluster.interning import Interner
from orchestrator.cluster.reports import node_from_report
from orchestrator.cluster.types import Node
from tests.unit.orchestrator.factories import replica


def reported(node_id: str, *aliases: str, cores: int = 8) -> Node:
    """The node as the registry decodes it from its worker's report: new objects each time."""
    status = NodeStatus(
        node_id, f"{node_id}:50051", HardwareInfo("x86-cpu", cpu_cores=cores),
        models=tuple(replica(alias) for alias in aliases),
    )  # fmt: skip
    return node_from_report(node_status_to_report(status, 1), now=5.0)


def test_equal_parts_of_different_reports_are_one_object() -> None:
    interner = Interner()
    a, b = reported("a", "m", "n"), reported("b", "m")
    assert a.hardware is not b.hardware and a.replicas[0].config is not b.replicas[0].config
    shared_a, shared_b = interner.node(a), interner.node(b)
    assert (shared_a, shared_b) == (a, b)
    assert shared_a.hardware is shared_b.hardware
    assert shared_a.replicas[0].config is shared_b.replicas[0].config
    again = reported("a", "m", "n")
    assert interner.node(again).replicas[1].config is shared_a.replicas[1].config


def test_unequal_parts_stay_apart_and_a_node_with_nothing_new_is_returned_as_is() -> None:
    interner = Interner()
    first = interner.node(reported("a", "m"))
    other = interner.node(reported("b", "m", cores=4))
    assert other.hardware is not first.hardware and other.hardware.cpu_cores == 4
    assert interner.node(first) is first  # already made of shared parts


def test_the_table_starts_afresh_at_its_limit() -> None:
    interner = Interner(limit=2)
    first = interner.node(reported("a", "m"))  # two values: the hardware and m's config
    interner.node(reported("b", "n", cores=2))  # full: cleared, then these two
    assert interner.node(reported("c", "m")).hardware is not first.hardware
