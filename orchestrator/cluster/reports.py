"""Worker heartbeats (protobuf) into the control plane's domain types, and the cluster view
(orchestrator.cluster.view) to and from the gRPC API's ClusterStatusResponse.

The only module of the cluster package that knows the wire format; the conversions
themselves are common.wire's, shared with the worker that wrote the report.
"""

from __future__ import annotations

import re

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb

from common.model_settings import ALIAS_PATTERN
from common.net import split_host_port
from common.status import NodeStatus
from common.wire.leases import lease_from_proto, lease_to_proto
from common.wire.status import (
    model_status_from_proto,
    model_status_to_proto,
    node_status_from_report,
)
from common.wire.telemetry import (
    hardware_from_proto,
    hardware_to_proto,
    sample_from_proto,
    sample_to_proto,
)
from orchestrator.cluster.types import Node, PlacementProblem
from orchestrator.cluster.view import ClusterView, NodeView


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
    )


def _node_view_to_proto(view: NodeView) -> inf_pb.NodeStatus:
    status = view.status
    return inf_pb.NodeStatus(
        node_id=status.node_id,
        address=status.address,
        up=view.up,
        down_reason=view.down_reason,
        seconds_since_report=view.seconds_since_report,
        hardware=hardware_to_proto(status.hardware),
        models=[model_status_to_proto(m) for m in status.models],
        memory_free_bytes=status.memory_free,
        gateway_inflight=view.gateway_inflight,
        telemetry=sample_to_proto(status.telemetry) if status.telemetry is not None else None,
        rpc_servers=[lease_to_proto(lease) for lease in status.leases],
    )


def _node_view_from_proto(message: inf_pb.NodeStatus) -> NodeView:
    status = NodeStatus(
        node_id=message.node_id,
        address=message.address,
        hardware=hardware_from_proto(message.hardware),
        models=tuple(model_status_from_proto(m) for m in message.models),
        memory_free=message.memory_free_bytes,
        telemetry=sample_from_proto(message.telemetry) if message.HasField("telemetry") else None,
        leases=tuple(lease_from_proto(r) for r in message.rpc_servers),
    )
    return NodeView(
        status=status,
        up=message.up,
        down_reason=message.down_reason,
        seconds_since_report=message.seconds_since_report,
        gateway_inflight=message.gateway_inflight,
    )
