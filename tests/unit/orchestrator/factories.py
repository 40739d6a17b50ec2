"""Small builders of cluster values for the pure routing and placement tests.

Defaults describe a healthy node holding nothing; tests spell out only what they test.
"""

from __future__ import annotations

from typing import Any

from orchestrator.cluster.types import (
    ClusterSnapshot,
    Hardware,
    Node,
    NodeId,
    Replica,
    ReplicaState,
)
from orchestrator.config import CatalogEntry
from orchestrator.routing.candidates import Candidate

GiB = 1024**3
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
) -> Node:
    return Node(
        node_id=NodeId(node_id),
        address=f"{node_id}:50051",
        hardware=Hardware(kind="x86-cpu", labels=frozenset(labels)),
        replicas=replicas,
        memory_free=memory_free,
        up=up,
        down_reason=down_reason,
        last_report=last_report,
    )


def snapshot(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(version=1, taken_at=NOW, nodes=nodes)


def candidate(
    node_id: str,
    *,
    load: int = 0,
    slots: int = 1,
    decode_tps: float = 0.0,
    inflight: int = 0,
    alias: str = "m",
) -> Candidate:
    """A candidate whose reported load is `load` requests (one running, the rest queued)."""
    active = min(load, slots)
    rep = replica(
        alias, queued=load - active, active=active, slots_total=slots, decode_tps=decode_tps
    )
    n = node(node_id, rep)
    return Candidate(n.node_id, n.address, n.hardware, rep, inflight=inflight)


def entry(alias: str = "m", replicas: int = 1, labels: tuple[str, ...] = ()) -> CatalogEntry:
    return CatalogEntry(alias=alias, path=f"/models/{alias}.gguf", replicas=replicas, labels=labels)
