"""Ray, and only here: the control plane's actors and the process that starts and watches them.

- ClusterStateActor hosts the worker registry (heartbeat gRPC endpoint + cluster state).
- PlacementActor runs the placement controller against it.
- GatewayActor runs one gateway (HTTP + gRPC front doors); the supervisor keeps
  `gateways_per_node` of them on every Ray node, so `ray start --address ...` on another
  machine adds gateway capacity there.

Requests never pass through Ray: gateways receive cluster snapshots by long-polling the
state actor and stream tokens straight from the workers' gRPC streams. Every other module
is plain Python and runs (and is tested) without Ray.

Our own local Ray (no `ray_address`) is a one-machine cluster: every process of it listens
on 127.0.0.1 only, its token file is private (0600), and it dies with the process that
started it: Ray ties its daemons to the driver, and orchestrator.reaper ends the agents
that would otherwise linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ray
import ray._private.ray_constants as ray_constants
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
            settings.cluster_token, tls=settings.tls(),
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

        self._clients = WorkerClients(token=settings.cluster_token, tls=settings.tls())
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
        self._reaper: subprocess.Popen[bytes] | None = None
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
            return
        _loopback_only()
        _private_ray_token()
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
        self._reaper = _start_reaper()
        node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        if node_ip != "127.0.0.1":  # a Ray that ignores _loopback_only: refuse, do not expose
            raise OSError(
                errno.EADDRNOTAVAIL,
                f"the local Ray took node address {node_ip}, not 127.0.0.1, so its processes "
                f"would listen beyond this machine: Ray {ray.__version__} ignores "
                f"{_SINGLE_MACHINE_ENV}=0; use a Ray that honours it (2.60 does)",
            )

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
        if self._reaper is not None:
            _stop_reaper(self._reaper)
            self._reaper = None


# ---- our own local Ray: loopback only, a private token, nothing left behind -------------

# Ray reads this once per process, at import: False makes it a one-machine cluster whose
# node address may be 127.0.0.1. Otherwise ray.init turns 127.0.0.1 into the machine's
# outward address (services.resolve_ip_for_localhost), and every Ray process (GCS, raylet,
# workers, agents, metrics) listens there or on all interfaces.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """Makes the local Ray's node address 127.0.0.1, so that every listener of every Ray
    process binds there: this process reads the constant, its children the environment."""
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _private_ray_token() -> None:
    """Gives a new local Ray a token file only its user can read.

    Ray turns token authentication on for a new local cluster and writes a missing
    ~/.ray/auth_token with the umask's mode (0644 usually): readable by every user of the
    machine. Writing it first, 0600, keeps it private; an existing one is made 0600 too.
    A token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or auth turned off, is left alone.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"  # Ray's default (authentication_token_setup)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("Ray's token file %s was mode %o; made it 0600", path, mode)
            path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))  # what Ray itself generates: 256 random bits


def _start_reaper() -> subprocess.Popen[bytes]:
    """Starts orchestrator.reaper for this Ray session: it ends Ray's leftovers once this
    process is gone, even after a SIGKILL. Its stdin is a pipe only this process holds
    (not inherited by any other child: Python's descriptors are close-on-exec)."""
    node: Any = ray._private.worker._global_node  # the only place naming Ray's session
    if node is None:
        raise RuntimeError("Ray is not initialized: no session to watch")
    session_dir: str = node.get_session_dir_path()
    ray_dir = Path(ray.__file__).parent
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.reaper", session_dir, str(ray_dir)],
        stdin=subprocess.PIPE,
        # Its own session: a Ctrl-C or a group kill meant for us must not end it first.
        start_new_session=True,
    )


def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
    """After a clean Ray shutdown: closing the pipe lets the reaper sweep what shutdown
    missed (agents still exiting) and go."""
    stdin: IO[bytes] | None = reaper.stdin
    if stdin is not None:
        stdin.close()
    try:
        reaper.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log.warning("Ray's reaper (pid %d) is still sweeping; leaving it to finish", reaper.pid)
