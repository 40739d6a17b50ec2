"""Ray, and only here: the control plane's actors and the process that starts and watches them.

- ClusterStateActor hosts the worker registry (heartbeat gRPC endpoint + cluster state).
- PlacementActor runs the placement controller against it.
- GatewayActor runs one gateway (HTTP + gRPC front doors); the supervisor keeps
  `gateways_per_node` of them on every Ray node, so `ray start --address ...` on another
  machine adds gateway capacity there.

Requests never pass through Ray: gateways receive cluster snapshots by long-polling the
state actor and stream tokens straight from the workers' gRPC streams. Every other module
is plain Python and runs (and is tested) without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.cluster.registry import WorkerRegistry
from orchestrator.cluster.types import ClusterSnapshot, PlacementProblem
from orchestrator.config import CoordinatorSettings
from orchestrator.gateway.server import Gateway
from orchestrator.placement.controller import PlacementController
from orchestrator.worker_client import WorkerClients

log = logging.getLogger(__name__)

NAMESPACE = "llamaherd"
STATE_ACTOR = "cluster-state"
LONG_POLL_S = 5.0
START_TIMEOUT_S = 60.0
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


class ClusterStateActor:
    def __init__(self, settings: CoordinatorSettings) -> None:
        _configure_logging(settings.log_level)
        self._settings = settings
        if settings.cluster_token is None:  # with_cluster_token gives the plane its token
            raise ValueError("the coordinator needs a cluster token")
        self._registry = WorkerRegistry(
            settings.heartbeat_interval_s, settings.down_after_s, settings.forget_after_s,
            settings.cluster_token,
        )  # fmt: skip

    async def start(self) -> int:
        return await self._registry.start(self._settings.host, self._settings.registry_port)

    async def snapshot_after(self, version: int, timeout_s: float) -> ClusterSnapshot:
        return await self._registry.snapshot_after(version, timeout_s)

    async def set_problems(self, problems: tuple[PlacementProblem, ...]) -> None:
        self._registry.set_problems(problems)

    async def stop(self) -> None:
        await self._registry.stop()


class PlacementActor:
    def __init__(self, settings: CoordinatorSettings, state: Any) -> None:
        _configure_logging(settings.log_level)

        async def snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
            snapshot: ClusterSnapshot = await state.snapshot_after.remote(version, timeout_s)
            return snapshot

        async def publish(problems: tuple[PlacementProblem, ...]) -> None:
            await state.set_problems.remote(problems)

        self._clients = WorkerClients(token=settings.cluster_token)
        self._controller = PlacementController(
            settings.models, settings.placement_interval_s, snapshots, publish, self._clients.client
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._controller.run(), name="placement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._controller.stop()
        await self._clients.close()


class GatewayActor:
    def __init__(self, settings: CoordinatorSettings, state: Any) -> None:
        _configure_logging(settings.log_level)

        async def snapshots(version: int) -> ClusterSnapshot:
            snapshot: ClusterSnapshot = await state.snapshot_after.remote(version, LONG_POLL_S)
            return snapshot

        self._gateway = Gateway(settings, snapshots)

    async def start(self) -> tuple[int, int]:
        return await self._gateway.start()

    async def stop(self) -> None:
        await self._gateway.stop()


# Actors take no CPU slot: they mostly wait on the network, and a 2-core board must still
# have its cores for llama.cpp. Ray schedules them anyway.
_Remote: Any = ray.remote(num_cpus=0, max_restarts=0)
StateActor = _Remote(ClusterStateActor)
PlacementRemote = _Remote(PlacementActor)
GatewayRemote = _Remote(GatewayActor)


def _ray_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


@dataclass
class Endpoints:
    registry_port: int
    http_port: int
    grpc_port: int
    gateways: int


@dataclass
class _Gateways:
    by_node: dict[str, list[Any]] = field(default_factory=dict)


class ControlPlane:
    """Starts the control plane's actors on a Ray cluster (its own local one by default),
    keeps a gateway on every Ray node, and stops everything on `stop()`."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self._state: Any = None
        self._placement: Any = None
        self._gateways = _Gateways()
        self._ports: tuple[int, int] | None = None
        self.endpoints: Endpoints | None = None

    def start(self) -> Endpoints:
        started = time.monotonic()
        if not ray.is_initialized():
            self._init_ray()
        log.info("Ray ready in %.1f s", time.monotonic() - started)
        settings = self.settings
        self._state = StateActor.options(name=STATE_ACTOR, namespace=NAMESPACE).remote(settings)
        registry_port = ray.get(self._state.start.remote(), timeout=START_TIMEOUT_S)
        self._placement = PlacementRemote.remote(settings, self._state)
        ray.get(self._placement.start.remote(), timeout=START_TIMEOUT_S)
        http_port, grpc_port = self._ensure_gateways()
        self.endpoints = Endpoints(
            registry_port, http_port, grpc_port, sum(map(len, self._gateways.by_node.values()))
        )
        return self.endpoints

    def _init_ray(self) -> None:
        kwargs: dict[str, Any] = {
            "namespace": NAMESPACE,
            "include_dashboard": False,
            "log_to_driver": True,
            "configure_logging": False,
        }
        if self.settings.ray_address:
            ray.init(address=self.settings.ray_address, **kwargs)
        else:
            # Our own single-node Ray on loopback: nothing of it listens beyond this machine.
            ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)

    def _ensure_gateways(self) -> tuple[int, int]:
        """Starts the missing gateways on every alive Ray node; returns the ports in use."""
        for node in _ray_nodes():
            if not node.get("Alive"):
                continue
            node_id = node["NodeID"]
            have = self._gateways.by_node.setdefault(node_id, [])
            while len(have) < self.settings.gateways_per_node:
                actor = GatewayRemote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                ).remote(self.settings, self._state)
                ports = ray.get(actor.start.remote(), timeout=START_TIMEOUT_S)
                have.append(actor)
                self._ports = self._ports or ports
                log.info("gateway started on Ray node %s", node_id[:12])
        if self._ports is None:
            raise RuntimeError("Ray reports no alive node to run a gateway on")
        return self._ports

    def supervise_once(self) -> None:
        """Adds gateways on Ray nodes that joined and drops the ones of nodes that left."""
        alive = {n["NodeID"] for n in _ray_nodes() if n.get("Alive")}
        for node_id in list(self._gateways.by_node):
            if node_id not in alive:
                log.warning("Ray node %s left; its gateways are gone", node_id[:12])
                del self._gateways.by_node[node_id]
        if alive - set(self._gateways.by_node):
            self._ensure_gateways()

    def stop(self) -> None:
        actors = [a for group in self._gateways.by_node.values() for a in group]
        actors += [a for a in (self._placement, self._state) if a is not None]
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=5)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._gateways.by_node.clear()
        if ray.is_initialized():
            ray.shutdown()
