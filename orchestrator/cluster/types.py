"""What the control plane knows about the cluster, as plain frozen values.

Built from worker heartbeats (orchestrator.cluster.reports): each node's NodeStatus exactly
as its worker reported it (common.status), plus what only the coordinator knows (up or down,
when it last heard). Read by routing, placement and the status APIs. No protobuf and no Ray
here: these values are what the pure decision functions take, and they pickle cheaply
between Ray actors.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

from common.hardware import HardwareInfo
from common.leases import Lease
from common.status import ModelStatus, NodeStatus
from common.telemetry import NodeSample
from orchestrator.cluster.capacity import CapacityRecord

NodeId = NewType("NodeId", str)


@dataclass(frozen=True)
class Node:
    """A node as the coordinator knows it: the worker's last report (unchanged) and whether
    the node is in routing. Its models are called replicas here, as routing sees them."""

    status: NodeStatus
    up: bool = True
    down_reason: str = ""
    last_report: float = 0.0  # clock time of the last heartbeat

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.status.node_id)

    @property
    def address(self) -> str:
        return self.status.address

    @property
    def hardware(self) -> HardwareInfo:
        return self.status.hardware

    @property
    def replicas(self) -> tuple[ModelStatus, ...]:
        return self.status.models

    @property
    def memory_free(self) -> int:
        return self.status.memory_free

    @property
    def telemetry(self) -> NodeSample | None:
        return self.status.telemetry

    @property
    def rpc_leases(self) -> tuple[Lease, ...]:
        return self.status.leases

    def replica(self, alias: str) -> ModelStatus | None:
        return self.status.model(alias)


@dataclass(frozen=True)
class PlacementProblem:
    alias: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A registration the registry refused: a forged or conflicting worker (no node key,
    a node key that does not match the id's, a certificate naming another node). Never
    the key or the token, only who tried and why. `seq` grows with each refusal (from 1,
    again after a registry restart); `at` is the registry's clock."""

    seq: int
    at: float
    node_id: str  # the id it claimed; "" when refused before it sent a report
    peer: str  # gRPC's peer string, e.g. ipv4:10.0.0.7:53122
    reason: str


@dataclass(frozen=True)
class ClusterSnapshot:
    """The whole cluster at one moment. `version` grows with every change."""

    version: int = 0
    taken_at: float = 0.0
    nodes: tuple[Node, ...] = ()
    problems: tuple[PlacementProblem, ...] = field(default=())
    refusals: tuple[Refusal, ...] = ()  # the latest refused registrations, oldest first
    capacities: tuple[CapacityRecord, ...] = ()  # measured by `llamaherd capacity`

    def node(self, node_id: NodeId) -> Node | None:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        return None

    @property
    def up_nodes(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.up)

    @functools.cached_property
    def holders(self) -> Mapping[str, tuple[Node, ...]]:
        """For each alias, the nodes reporting it in any state (down ones too), by node id.

        Built once per snapshot (a snapshot never changes), so routing reads a model's few
        holders instead of scanning every node for every request: at 10,000 nodes that scan
        cost milliseconds a request (tests/bench/simulate_fleet.py)."""
        index: dict[str, list[Node]] = {}
        for node in sorted(self.nodes, key=lambda n: n.node_id):
            for replica in node.replicas:
                index.setdefault(replica.alias, []).append(node)
        return {alias: tuple(nodes) for alias, nodes in index.items()}

    @functools.cached_property
    def memo(self) -> dict[Hashable, Any]:
        """Values other modules derive from this snapshot, kept as long as it lives.

        A snapshot never changes, so what is derived from it once holds for every request
        routed on it (orchestrator.routing.candidates keeps each model's ready replicas
        here). Keys are namespaced by their owner; no one but the owner reads an entry."""
        return {}

    def __getstate__(self) -> dict[str, Any]:
        # Only the fields travel (to gateways, between actors): what was derived here
        # (holders, memo) is rebuilt on demand on the other side, and would only grow
        # the pickle.
        return {f: v for f, v in self.__dict__.items() if f not in _DERIVED}


_DERIVED = frozenset({"holders", "memo"})
