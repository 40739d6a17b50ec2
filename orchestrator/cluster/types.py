"""What the control plane knows about the cluster, as plain frozen values.

Built from worker heartbeats (orchestrator.cluster.reports) and read by routing, placement
and the status APIs. No protobuf and no Ray here: these values are what the pure decision
functions take, and they pickle cheaply between Ray actors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

from common.hardware import HardwareInfo
from common.leases import Lease
from common.telemetry import NodeSample

NodeId = NewType("NodeId", str)
RpcLease = Lease  # a device a node lends to a split model's head, as the node reported it


class ReplicaState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True)
class Hardware(HardwareInfo):
    """A node's capability profile as its worker reported it, with its operator labels."""

    labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Replica:
    """One model on one node, as that node last reported it."""

    alias: str
    state: ReplicaState
    path: str = ""
    embedding: bool = False
    n_ctx: int = 0
    architecture: str = ""
    memory_bytes: int = 0  # the worker's estimate for it (weights + KV cache + compute)
    queued: int = 0
    active: int = 0
    max_queue: int = 64  # the worker's default; reports always carry the real value
    slots_total: int = 1
    slots_busy: int = 0
    decode_tps: float = 0.0  # recent per-sequence decode rate; 0 = not measured yet
    prompt_tps: float = 0.0
    completed: int = 0
    error: str = ""
    # A split model: the helpers' ggml RPC endpoints it uses, and its layer split.
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    n_gpu_layers: int = 0
    n_layers: int = 0  # the model's repeating layers, from its GGUF metadata

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def load(self) -> int:
        """Requests the node holds for this model: waiting plus running."""
        return self.queued + self.active


@dataclass(frozen=True)
class Node:
    node_id: NodeId
    address: str  # host:port of the node's Worker service
    hardware: Hardware
    replicas: tuple[Replica, ...] = ()
    memory_free: int = 0
    up: bool = True
    down_reason: str = ""
    last_report: float = 0.0  # clock time of the last heartbeat
    version: str = ""
    telemetry: NodeSample | None = None  # the latest sample the node sent
    rpc_leases: tuple[RpcLease, ...] = ()

    def replica(self, alias: str) -> Replica | None:
        for replica in self.replicas:
            if replica.alias == alias:
                return replica
        return None


@dataclass(frozen=True)
class PlacementProblem:
    alias: str
    reason: str


@dataclass(frozen=True)
class ClusterSnapshot:
    """The whole cluster at one moment. `version` grows with every change."""

    version: int = 0
    taken_at: float = 0.0
    nodes: tuple[Node, ...] = ()
    problems: tuple[PlacementProblem, ...] = field(default=())

    def node(self, node_id: NodeId) -> Node | None:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        return None

    @property
    def up_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.up)
