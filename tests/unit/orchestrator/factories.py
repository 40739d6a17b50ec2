"""Small builders of cluster values for the pure routing and placement tests.

Defaults describe a healthy node holding nothing; tests spell out only what they test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.hardware import HardwareInfo
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.config import CatalogEntry
from orchestrator.routing.candidates import Candidate

GiB = 1024**3
MiB = 1024**2
NOW = 1000.0


_ENGINE = {f.name for f in dataclasses.fields(EngineFigures)}


def replica(alias: str = "m", state: ModelState = ModelState.READY, **fields: Any) -> ModelStatus:
    """A model on a node, as its worker reports it. Keyword arguments name a field of the
    status (error, estimate), of its engine figures (queued, active, slots_total,
    decode_tps) or of its load settings (embedding, max_queue, rpc_servers, ...); the
    engine has one slot unless told otherwise."""
    engine = {k: fields.pop(k) for k in list(fields) if k in _ENGINE}
    settings = {k: fields.pop(k) for k in list(fields) if k in ModelConfig.model_fields}
    config = ModelConfig(alias=alias, path=f"/models/{alias}.gguf", **settings)
    figures = EngineFigures(**{"slots_total": 1, **engine})
    return ModelStatus(alias=alias, config=config, state=state, engine=figures, **fields)


def node(
    node_id: str,
    *replicas: ModelStatus,
    labels: tuple[str, ...] = (),
    memory_free: int = 8 * GiB,
    up: bool = True,
    down_reason: str = "",
    last_report: float = NOW,
    backends: tuple[str, ...] = ("CPU",),
    reference_tps: float = 0.0,
    leases: tuple[Lease, ...] = (),
) -> Node:
    """A node; `reference_tps` is its measured reference speed (0 = not measured)."""
    status = NodeStatus(
        node_id=node_id,
        address=f"{node_id}:50051",
        hardware=HardwareInfo(
            kind="x86-cpu",
            labels=frozenset(labels),
            backends=backends,
            reference_decode_tps=reference_tps,
        ),
        models=replicas,
        memory_free=memory_free,
        leases=leases,
    )
    return Node(status, up=up, down_reason=down_reason, last_report=last_report)


def rpc_node(node_id: str, *replicas: ModelStatus, **fields: Any) -> Node:
    """A node whose llama.cpp can lend and use devices over RPC (layer splits)."""
    return node(node_id, *replicas, backends=("CPU", "RPC"), **fields)


def lease(alias: str, head: str, endpoint: str, **fields: Any) -> Lease:
    """A lease named as the controller names them: alias@head."""
    return Lease(lease_id=f"{alias}@{head}", endpoint=endpoint, head_host=head, **fields)


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
