"""Small builders of cluster values for the pure routing and placement tests.

Defaults describe a healthy node holding nothing; tests spell out only what they test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.memory import MemoryEstimate
from orchestrator.cluster.types import (
    ClusterSnapshot,
    Hardware,
    Node,
    NodeId,
    Replica,
    ReplicaState,
    RpcLease,
)
from orchestrator.config import CatalogEntry
from orchestrator.routing.candidates import Candidate

GiB = 1024**3
MiB = 1024**2
NOW = 1000.0


def replica(
    alias: str = "m",
    state: ReplicaState = ReplicaState.READY,
    *,
    max_queue: int = 64,
    **fields: Any,
) -> Replica:
    """A replica; max_queue defaults to the worker's default (64), not the type's 0."""
    return Replica(alias=alias, state=state, max_queue=max_queue, **fields)


def node(
    node_id: str,
    *replicas: Replica,
    labels: tuple[str, ...] = (),
    memory_free: int = 8 * GiB,
    up: bool = True,
    down_reason: str = "",
    last_report: float = NOW,
    backends: tuple[str, ...] = ("CPU",),
    reference_tps: float = 0.0,
    leases: tuple[RpcLease, ...] = (),
) -> Node:
    """A node; `reference_tps` is its measured reference speed (0 = not measured)."""
    return Node(
        node_id=NodeId(node_id),
        address=f"{node_id}:50051",
        hardware=Hardware(
            kind="x86-cpu",
            labels=frozenset(labels),
            backends=backends,
            reference_decode_tps=reference_tps,
        ),
        replicas=replicas,
        memory_free=memory_free,
        up=up,
        down_reason=down_reason,
        last_report=last_report,
        rpc_leases=leases,
    )


def rpc_node(node_id: str, *replicas: Replica, **fields: Any) -> Node:
    """A node whose llama.cpp can lend and use devices over RPC (layer splits)."""
    return node(node_id, *replicas, backends=("CPU", "RPC"), **fields)


def lease(alias: str, head: str, endpoint: str, **fields: Any) -> RpcLease:
    """A lease named as the controller names them: alias@head."""
    return RpcLease(lease_id=f"{alias}@{head}", endpoint=endpoint, head_host=head, **fields)


def estimate(total: int) -> MemoryEstimate:
    """An estimate of `total` bytes, all weights, without per-layer figures."""
    return MemoryEstimate(weights_bytes=total, kv_cache_bytes=0, compute_bytes=0)


def layered_estimate(
    n_layers: int,
    layer_bytes: int,
    *,
    rest_bytes: int = 0,
    compute_bytes: int = 0,
    layer_compute_bytes: int = 0,
) -> MemoryEstimate:
    """A model of `n_layers` layers of `layer_bytes` each (all weights, no KV cache), plus
    `rest_bytes` of other weights (embeddings, output) and the compute buffers."""
    return MemoryEstimate(
        weights_bytes=n_layers * layer_bytes + rest_bytes,
        kv_cache_bytes=0,
        compute_bytes=compute_bytes,
        n_layers=n_layers,
        layer_weights_bytes=layer_bytes,
        layer_kv_cache_bytes=0,
        layer_compute_bytes=layer_compute_bytes,
    )


def snapshot(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(version=1, taken_at=NOW, nodes=nodes)


def candidate(
    node_id: str,
    *,
    load: int = 0,
    slots: int = 1,
    decode_tps: float = 0.0,
    reference_tps: float = 0.0,
    inflight: int = 0,
    alias: str = "m",
) -> Candidate:
    """A candidate whose reported load is `load` requests (one running, the rest queued);
    `reference_tps` is its node's measured reference speed (0 = not measured)."""
    active = min(load, slots)
    rep = replica(
        alias, queued=load - active, active=active, slots_total=slots, decode_tps=decode_tps
    )
    n = node(node_id, rep)
    hardware = dataclasses.replace(n.hardware, reference_decode_tps=reference_tps)
    return Candidate(n.node_id, n.address, hardware, rep, inflight=inflight)


def entry(
    alias: str = "m", replicas: int = 1, labels: tuple[str, ...] = (), split_nodes: int = 0
) -> CatalogEntry:
    return CatalogEntry(
        alias=alias,
        path=f"/models/{alias}.gguf",
        replicas=replicas,
        labels=labels,
        split_nodes=split_nodes,
    )
