"""The cluster as clients see it: one documented JSON document, and the text of
`llamaherd status`, both made from the same values.

`/v1/cluster`, `llamaherd status --json` and the dashboard all read `ClusterView` serialised
as it is (pydantic serialises the frozen dataclasses, and writes its JSON Schema:
`llamaherd status --json-schema`, checked in as cluster.schema.json beside this module).
Field names are the status model's (common.status), so a field added there appears here
with no further change.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from common.status import NodeStatus
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, NodeId, PlacementProblem

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class NodeView:
    """One node: its worker's last report, unchanged, and what the gateway knows of it."""

    status: NodeStatus
    up: bool
    down_reason: str = ""  # why the node left routing
    seconds_since_report: float = 0.0
    gateway_inflight: int = 0  # requests the answering gateway relays to the node now


@dataclass(frozen=True)
class PowerView:
    """The cluster's power budget, where one is set: what the up nodes that report power
    draw now against it, those that report none (not in `draw_w`), and whether the gateway
    admits new requests (once refusing, again only below `resume_below_w`)."""

    budget_w: float
    draw_w: float
    measured_nodes: tuple[str, ...] = ()
    unmeasured_nodes: tuple[str, ...] = ()
    admitting: bool = True
    resume_below_w: float = 0.0


@dataclass(frozen=True)
class ClusterView:
    """Every node, the models the catalog could not place and why, the routing policy and
    the measured capacities."""

    nodes: tuple[NodeView, ...] = ()
    placement_problems: tuple[PlacementProblem, ...] = ()
    routing_policy: str = ""
    state_version: int = 0  # grows with every change the coordinator sees
    schema_version: int = SCHEMA_VERSION
    # What `llamaherd capacity` measured per node, model and context (admission caps each
    # replica at its max_streams; nodes never measured have no cap).
    capacities: tuple[CapacityRecord, ...] = ()
    power: PowerView | None = None  # the power budget; None: none set


def cluster_view(
    snapshot: ClusterSnapshot,
    now: float,
    inflight: Callable[[NodeId], int],
    policy: str,
    power: PowerView | None = None,
) -> ClusterView:
    """The view of `snapshot` at `now` (the registry's clock)."""
    return ClusterView(
        nodes=tuple(
            NodeView(
                status=node.status,
                up=node.up,
                down_reason=node.down_reason,
                seconds_since_report=max(0.0, now - node.last_report),
                gateway_inflight=inflight(node.node_id),
            )
            for node in snapshot.nodes
        ),
        placement_problems=snapshot.problems,
        routing_policy=policy,
        state_version=snapshot.version,
        capacities=snapshot.capacities,
        power=power,
    )


@functools.cache
def _adapter() -> TypeAdapter[ClusterView]:
    return TypeAdapter(ClusterView)


def view_to_json(view: ClusterView) -> dict[str, Any]:
    """The JSON document of `view`; a reading a worker sent as NaN or infinity is null
    (unknown), so one odd sensor cannot make the document invalid JSON."""
    document: dict[str, Any] = json_safe(_adapter().dump_python(view, mode="json"))
    return document


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def view_from_json(document: Any) -> ClusterView:
    """Raises pydantic.ValidationError when `document` is not a cluster view."""
    return _adapter().validate_python(document)


def json_schema() -> dict[str, Any]:
    return _adapter().json_schema(mode="serialization")
