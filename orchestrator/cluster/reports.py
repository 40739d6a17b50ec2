"""Worker heartbeats (protobuf) into the control plane's domain types, and back for status.

The only module of the cluster package that knows the wire format.
"""

from __future__ import annotations

import re

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import worker_pb2 as w_pb

from common.model_settings import ALIAS_PATTERN
from common.net import split_host_port
from common.wire.leases import lease_from_proto, lease_to_proto
from common.wire.telemetry import (
    hardware_fields,
    hardware_to_proto,
    sample_from_proto,
    sample_to_proto,
)
from orchestrator.cluster.types import Hardware, Node, NodeId, Replica, ReplicaState

STATES = {
    w_pb.MODEL_STATE_LOADING: ReplicaState.LOADING,
    w_pb.MODEL_STATE_READY: ReplicaState.READY,
    w_pb.MODEL_STATE_UNLOADING: ReplicaState.UNLOADING,
    w_pb.MODEL_STATE_FAILED: ReplicaState.FAILED,
}
STATES_BACK = {v: k for k, v in STATES.items()}


class BadReport(ValueError):
    """A heartbeat the coordinator cannot use; the message goes back to the worker."""


def node_from_report(report: cl_pb.NodeReport, now: float) -> Node:
    if not re.fullmatch(ALIAS_PATTERN, report.node_id):
        raise BadReport(f"node_id {report.node_id!r} must match {ALIAS_PATTERN}")
    try:
        split_host_port(report.address)
    except ValueError as exc:
        raise BadReport(f"address of node {report.node_id}: {exc}") from None
    hw = report.hardware
    return Node(
        node_id=NodeId(report.node_id),
        address=report.address,
        hardware=Hardware(**hardware_fields(hw), labels=frozenset(hw.labels)),
        replicas=tuple(replica_from_proto(m) for m in report.models),
        memory_free=report.memory_free_bytes,
        last_report=now,
        version=report.version,
        telemetry=sample_from_proto(report.telemetry) if report.HasField("telemetry") else None,
        rpc_leases=tuple(lease_from_proto(r) for r in report.rpc_servers),
    )


def replica_from_proto(load: cl_pb.ModelLoad) -> Replica:
    info = load.info
    return Replica(
        alias=info.alias,
        state=STATES.get(info.state, ReplicaState.FAILED),
        path=info.spec.path,
        embedding=info.spec.embedding,
        n_ctx=info.spec.n_ctx,
        architecture=info.architecture,
        memory_bytes=info.memory.total_bytes,
        queued=info.queued_requests,
        active=info.active_requests,
        max_queue=info.spec.max_queue,
        slots_total=max(1, load.slots_total),
        slots_busy=load.slots_busy,
        decode_tps=load.decode_tokens_per_second,
        prompt_tps=load.prompt_tokens_per_second,
        completed=load.completed_requests,
        error=info.error,
        rpc_servers=tuple(info.spec.rpc_servers),
        tensor_split=tuple(info.spec.tensor_split),
        n_gpu_layers=info.spec.n_gpu_layers,
        n_layers=info.memory.n_layers,
    )


def replica_to_proto(replica: Replica) -> cl_pb.ModelLoad:
    return cl_pb.ModelLoad(
        info=w_pb.ModelInfo(
            alias=replica.alias,
            spec=w_pb.ModelSpec(
                alias=replica.alias,
                path=replica.path,
                n_ctx=replica.n_ctx,
                embedding=replica.embedding,
                max_queue=replica.max_queue,
                n_gpu_layers=replica.n_gpu_layers,
                rpc_servers=replica.rpc_servers,
                tensor_split=replica.tensor_split,
            ),
            state=STATES_BACK[replica.state],
            error=replica.error,
            architecture=replica.architecture,
            memory=w_pb.MemoryEstimate(total_bytes=replica.memory_bytes, n_layers=replica.n_layers),
            queued_requests=replica.queued,
            active_requests=replica.active,
        ),
        slots_total=replica.slots_total,
        slots_busy=replica.slots_busy,
        decode_tokens_per_second=replica.decode_tps,
        prompt_tokens_per_second=replica.prompt_tps,
        completed_requests=replica.completed,
    )


def node_to_proto(node: Node, now: float, inflight: int) -> inf_pb.NodeStatus:
    return inf_pb.NodeStatus(
        node_id=node.node_id,
        address=node.address,
        up=node.up,
        down_reason=node.down_reason,
        seconds_since_report=max(0.0, now - node.last_report),
        hardware=hardware_to_proto(node.hardware, node.hardware.labels),
        models=[replica_to_proto(r) for r in node.replicas],
        memory_free_bytes=node.memory_free,
        gateway_inflight=inflight,
        telemetry=sample_to_proto(node.telemetry) if node.telemetry is not None else None,
        rpc_servers=[lease_to_proto(lease) for lease in node.rpc_leases],
    )
