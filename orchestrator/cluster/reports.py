"""Worker heartbeats (protobuf) into the control plane's domain types, and the cluster view
(orchestrator.cluster.view) to and from the gRPC API's ClusterStatusResponse.

The only module of the cluster package that knows the wire format; the conversions
themselves are common.wire's, shared with the worker that wrote the report.
"""

from __future__ import annotations

import dataclasses
import re

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb

from common.model_settings import ALIAS_PATTERN
from common.net import split_host_port
from common.wire.status import node_status_from_report, node_status_to_report
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import Node, PlacementProblem
from orchestrator.cluster.view import ClusterView, NodeView, PowerView


class BadReport(ValueError):
    """A heartbeat the coordinator cannot use; the message goes back to the worker."""


def node_from_report(report: cl_pb.NodeReport, now: float) -> Node:
    if not re.fullmatch(ALIAS_PATTERN, report.node_id):
        raise BadReport(f"node_id {report.node_id!r} must match {ALIAS_PATTERN}")
    try:
        split_host_port(report.address)
    except ValueError as exc:
        raise BadReport(f"address of node {report.node_id}: {exc}") from None
    try:
        status = node_status_from_report(report)
    except ValueError as exc:
        raise BadReport(f"node {report.node_id} reports a model it cannot have: {exc}") from None
    return Node(status=status, last_report=now)


def view_to_proto(view: ClusterView) -> inf_pb.ClusterStatusResponse:
    return inf_pb.ClusterStatusResponse(
        nodes=[_node_view_to_proto(n) for n in view.nodes],
        placement_problems=[
            inf_pb.PlacementProblem(alias=p.alias, reason=p.reason) for p in view.placement_problems
        ],
        routing_policy=view.routing_policy,
        state_version=view.state_version,
        capacities=[_capacity_to_proto(r) for r in view.capacities],
        power=_power_to_proto(view.power),
    )


def view_from_proto(message: inf_pb.ClusterStatusResponse) -> ClusterView:
    """Raises ValueError when a node reports a model that is not a valid model config."""
    return ClusterView(
        nodes=tuple(_node_view_from_proto(n) for n in message.nodes),
        placement_problems=tuple(
            PlacementProblem(p.alias, p.reason) for p in message.placement_problems
        ),
        routing_policy=message.routing_policy,
        state_version=message.state_version,
        capacities=tuple(_capacity_from_proto(r) for r in message.capacities),
        power=_power_from_proto(message.power) if message.HasField("power") else None,
    )


def _power_to_proto(power: PowerView | None) -> inf_pb.PowerBudget | None:
    if power is None:
        return None
    return inf_pb.PowerBudget(**dataclasses.asdict(power))


def _power_from_proto(message: inf_pb.PowerBudget) -> PowerView:
    return PowerView(
        budget_w=message.budget_w,
        draw_w=message.draw_w,
        measured_nodes=tuple(message.measured_nodes),
        unmeasured_nodes=tuple(message.unmeasured_nodes),
        admitting=message.admitting,
        resume_below_w=message.resume_below_w,
    )


def _capacity_to_proto(record: CapacityRecord) -> inf_pb.CapacityRecord:
    fields = dataclasses.asdict(record)
    if record.watts is None:
        del fields["watts"]
    return inf_pb.CapacityRecord(**fields)


def _capacity_from_proto(message: inf_pb.CapacityRecord) -> CapacityRecord:
    names = [f.name for f in dataclasses.fields(CapacityRecord) if f.name != "watts"]
    values = {name: getattr(message, name) for name in names}
    watts = message.watts if message.HasField("watts") else None
    return CapacityRecord(**values, watts=watts)


def _node_view_to_proto(view: NodeView) -> inf_pb.NodeStatus:
    return inf_pb.NodeStatus(
        status=node_status_to_report(view.status, sequence=0),
        up=view.up,
        down_reason=view.down_reason,
        seconds_since_report=view.seconds_since_report,
        gateway_inflight=view.gateway_inflight,
    )


def _node_view_from_proto(message: inf_pb.NodeStatus) -> NodeView:
    return NodeView(
        status=node_status_from_report(message.status),
        up=message.up,
        down_reason=message.down_reason,
        seconds_since_report=message.seconds_since_report,
        gateway_inflight=message.gateway_inflight,
    )
