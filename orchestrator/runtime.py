"""Ray, and only here: the control plane's actors and the process that starts and watches them.

- ClusterStateActor hosts the worker registry (heartbeat gRPC endpoint + cluster state).
- StoreActor serves the model store's files to workers (orchestrator.store.server), on the
  coordinator's machine (where the store directory and `llamaherd models` are).
- PlacementActor runs the placement controller against the registry, resolving store
  models in the same store directory and telling workers the store's URL.
- GatewayActor runs one gateway (HTTP + gRPC front doors); the supervisor keeps
  `gateways_per_node` of them on every Ray node, so `ray start --address ...` on another
  machine adds gateway capacity there.

Requests never pass through Ray: gateways receive cluster snapshots by long-polling the
state actor and stream tokens straight from the workers' gRPC streams. Every other module
is plain Python and runs (and is tested) without Ray.

Two lifetimes (ControlPlane's `persistent`):

- `llamaherd up` (a dev cluster): a local Ray of the driver's own (`ray.init`), whose actors
  die with the driver; orchestrator.reaper ends the agents that would otherwise linger.
- `llamaherd coordinator` (the production control plane): the actors are detached, named
  in the `llamaherd` namespace and restarted by Ray when they crash, so a killed coordinator
  leaves the gateways, the registry and placement serving. Without `ray_address` it starts a
  Ray head as processes of their own (their own session, not its children) and records it
  in `state_dir`/ray.json (0600). A coordinator that starts finds that head and its actors,
  checks that they answer, and adopts them (replacing those whose settings changed) instead
  of starting new ones. A clean stop (SIGTERM, Ctrl-C) ends the actors and the head.

Our own local Ray (no `ray_address`) is a one-machine cluster either way: every process of
it listens on 127.0.0.1 only and its token file is private (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import ray
import ray._private.ray_constants as ray_constants
from ray._private.authentication.authentication_token_setup import enable_token_auth_by_default
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.collector import frozen_heap
from orchestrator.cluster.capacity import CAPACITY_FILE
from orchestrator.cluster.feed import SnapshotFollower
from orchestrator.cluster.registry import WorkerRegistry
from orchestrator.cluster.types import ClusterSnapshot, PlacementProblem
from orchestrator.config import CoordinatorSettings
from orchestrator.gateway.server import Gateway
from orchestrator.placement.controller import PlacementController, Timings
from orchestrator.placement.sources import IndexedStore, StoreModel
from orchestrator.reaper import reap
from orchestrator.store.server import StoreServer, store_base_url
from orchestrator.worker_client import WorkerClients

log = logging.getLogger(__name__)

NAMESPACE = "llamaherd"
STATE_ACTOR = "cluster-state"
STORE_ACTOR = "model-store"
PLACEMENT_ACTOR = "placement"
GATEWAY_PREFIX = "gateway-"
HEAD_RECORD = "ray.json"
LONG_POLL_S = 5.0
START_TIMEOUT_S = 60.0
# An adopted actor answers in milliseconds; one that does not within this is replaced.
ADOPT_TIMEOUT_S = 3.0
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# gateway_host's value for "each gateway on its own Ray node's address": on a cluster of
# several coordinator hosts, one gateway per host on the address Ray knows the host by.
RAY_NODE_HOST = "ray-node"


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


@dataclass(frozen=True)
class Described:
    """What an actor says about itself: the key of the settings it runs with (so that a
    coordinator adopting it can tell whether they changed) and the ports it listens on."""

    key: str
    ports: tuple[int, ...]


def _start_soon(coro: Any) -> asyncio.Task[Any]:
    """Runs `coro` on the actor's event loop from its constructor: an actor restarted by Ray
    gets only its constructor called again, so it must start serving by itself."""
    return asyncio.get_event_loop().create_task(coro)


class ClusterStateActor:
    def __init__(self, settings: CoordinatorSettings, key: str = "") -> None:
        _configure_logging(settings.log_level)
        self._settings = settings
        self._key = key
        if settings.cluster_token is None:  # with_cluster_token gives the plane its token
            raise ValueError("the coordinator needs a cluster token")
        self._registry = WorkerRegistry(
            settings.heartbeat_interval_s, settings.down_after_s, settings.forget_after_s,
            settings.cluster_token, tls=settings.tls(),
            capacity_file=settings.state_dir / CAPACITY_FILE,
        )  # fmt: skip
        self._started = _start_soon(self._registry.start(settings.host, settings.registry_port))

    async def start(self) -> int:
        port: int = await self._started
        return port

    async def describe(self) -> Described:
        return Described(self._key, (await self.start(),))

    async def update_after(self, epoch: str, version: int, timeout_s: float) -> bytes:
        """What gateways and placement follow: encoded deltas, published at most once per
        interval (orchestrator.cluster.feed); bytes, so Ray only copies them."""
        return await self._registry.update_after(epoch, version, timeout_s)

    async def set_problems(self, problems: tuple[PlacementProblem, ...]) -> None:
        self._registry.set_problems(problems)

    async def stop(self) -> None:
        await self._registry.stop()


class StoreActor:
    """The store's file service, once per cluster. An actor of its own, so that a new API
    key (which the store admits) or store setting restarts it alone, not the registry."""

    def __init__(self, settings: CoordinatorSettings, key: str = "") -> None:
        _configure_logging(settings.log_level)
        self._settings = settings
        self._key = key
        if settings.cluster_token is None:  # with_cluster_token gives the plane its token
            raise ValueError("the coordinator needs a cluster token")
        # Workers fetch with the join token; people (curl, scripts) may use the API key.
        tokens = [settings.cluster_token.get_secret_value()]
        if settings.api_key is not None:
            tokens.append(settings.api_key.get_secret_value())
        self._server = StoreServer(settings.store_dir, tokens)
        self._started = _start_soon(self._server.start(settings.host, settings.store_port))

    async def start(self) -> int:
        port: int = await self._started
        return port

    async def describe(self) -> Described:
        return Described(self._key, (await self.start(),))

    async def url(self) -> str:
        """The store's base URL as workers reach it (placement puts it in their sources)."""
        return store_base_url(self._settings.host, await self.start())

    async def stop(self) -> None:
        await self._server.stop()


class _FollowedStore:
    """Placement's view of the store: the index in the store directory (on this machine),
    and the URL the store actor serves at, refreshed every round (a replaced store actor
    may listen on another port when store_port is 0)."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self._indexed = IndexedStore(settings.store_dir, "")
        # Until the store actor answers (it starts after placement): where it will listen,
        # unless its port is chosen at start (0), which only the actor can tell.
        port = settings.store_port
        self.base_url = store_base_url(settings.host, port) if port else ""
        self._actor: Any = None
        self._answered = False

    def lookup(self, name: str) -> StoreModel | None:
        return self._indexed.lookup(name)

    async def refresh_url(self) -> None:
        """Asks the store actor (found by name) for its URL; keeps the last one if it does
        not answer (it is being restarted, say)."""
        try:
            if self._actor is None:
                self._actor = ray.get_actor(STORE_ACTOR, namespace=NAMESPACE)
            self.base_url = await self._actor.url.remote()
            self._answered = True
        except (ValueError, ray.exceptions.RayError) as exc:
            self._actor = None
            if not self._answered:  # still starting: the first rounds come before it
                log.debug("the model store is not serving yet: %s", exc)
                return
            log.warning("the model store did not answer (%s); its URL stays %s",
                        str(exc).splitlines()[0], self.base_url)  # fmt: skip

    def close(self) -> None:
        self._indexed.close()


class PlacementActor:
    def __init__(self, settings: CoordinatorSettings, state: Any, key: str = "") -> None:
        _configure_logging(settings.log_level)
        self._key = key
        self._store = _FollowedStore(settings)

        follow = _following(state)

        async def snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
            # The follower's version is the one placement last took (`version`).
            snapshot = await follow(timeout_s)
            # Out of the collector's reach, as the gateway does after each update: a full
            # collection walking a 10,000-node snapshot took 0.4-0.5 s (common.collector).
            frozen_heap().settle()
            await self._store.refresh_url()
            return snapshot

        async def publish(problems: tuple[PlacementProblem, ...]) -> None:
            await state.set_problems.remote(problems)

        self._clients = WorkerClients(token=settings.cluster_token, tls=settings.tls())
        # Workers that were registered re-register within a heartbeat or two of a registry
        # (re)start; one silent longer than down_after_s counts as gone anyway.
        grace = max(settings.down_after_s, 2 * settings.heartbeat_interval_s)
        timings = Timings(rejoin_grace_s=grace, download_timeout_s=settings.download_timeout_s)
        self._controller = PlacementController(
            settings.models, settings.placement_interval_s, snapshots, publish,
            self._clients.client, timings=timings, store=self._store,
            link_bytes_per_second=settings.assumed_link_bytes_per_second,
            store_fetches_per_file=settings.store_fetches_per_file,
            power_budget_w=settings.power_budget_w,
            link_rtt_ms=settings.link_rtt_ms(),
            split_min_tokens_per_second=settings.split_min_tokens_per_second,
        )  # fmt: skip
        self._task: asyncio.Task[None] = _start_soon(self._controller.run())

    async def start(self) -> None:
        return None  # running since the constructor

    async def describe(self) -> Described:
        return Described(self._key, ())

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._controller.stop()
        await self._clients.close()
        self._store.close()


class GatewayActor:
    def __init__(self, settings: CoordinatorSettings, state: Any, key: str = "") -> None:
        _configure_logging(settings.log_level)
        self._key = key

        follow = _following(state)

        async def snapshots(version: int) -> ClusterSnapshot:
            # The follower's version is the one the gateway last took (`version`).
            return await follow(LONG_POLL_S)

        if settings.gateway_host == RAY_NODE_HOST:  # each coordinator host's own address
            settings = settings.model_copy(update={"gateway_host": _node_address()})
        self._gateway = Gateway(settings, snapshots)
        self._started = _start_soon(self._gateway.start())

    async def start(self) -> tuple[int, int]:
        ports: tuple[int, int] = await self._started
        return ports

    async def describe(self) -> Described:
        return Described(self._key, await self.start())

    async def stop(self) -> None:
        await self._gateway.stop()


# Actors take no CPU slot: they mostly wait on the network, and a 2-core board must still
# have its cores for llama.cpp. Ray schedules them anyway. max_restarts applies to the
# actors of `up` (they die with their driver); the coordinator's are detached and restarted
# (_PERSISTENT).
_Remote: Any = ray.remote(num_cpus=0, max_restarts=0)
StateActor = _Remote(ClusterStateActor)
PlacementRemote = _Remote(PlacementActor)
StoreRemote = _Remote(StoreActor)
GatewayRemote = _Remote(GatewayActor)
_PERSISTENT: dict[str, Any] = {"lifetime": "detached", "max_restarts": -1}


def _following(state: Any) -> Callable[[float], Awaitable[ClusterSnapshot]]:
    """A reader of the state actor's snapshot feed (orchestrator.cluster.feed): each call
    long-polls for up to the given seconds and gives the snapshot after the update, decoded
    a piece at a time so that the reader's event loop (a gateway's requests) keeps running."""
    follower = SnapshotFollower()

    async def follow(timeout_s: float) -> ClusterSnapshot:
        blob: bytes = await state.update_after.remote(*follower.since(), timeout_s)
        return await follower.follow(blob)

    return follow


def _node_address() -> str:
    """The address this process's Ray node joined the cluster with."""
    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address


def _ray_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


# ---- which settings each actor depends on ------------------------------------------------

# The registry's own settings; the other actors hold a handle to it, so they follow it.
_STATE_FIELDS = frozenset({
    "host", "registry_port", "heartbeat_interval_s", "down_after_s", "forget_after_s",
    "cluster_token", "cluster_token_file", "tls_ca", "tls_cert", "tls_key", "log_level",
})  # fmt: skip
# The store's file service: its directory and port, and the secrets it admits.
_STORE_FIELDS = frozenset({
    "host", "store_dir", "store_port", "cluster_token", "cluster_token_file", "api_key",
    "log_level",
})  # fmt: skip
_PLACEMENT_ONLY = frozenset(
    {
        "models", "placement_interval_s", "assumed_link_bytes_per_second",
        "download_timeout_s", "store_fetches_per_file", "link_rtts",
        "split_min_tokens_per_second",
    }
)  # fmt: skip
# The power budget is both placement's and the gateways' (admission).
_PLACEMENT_FIELDS = _STATE_FIELDS | _PLACEMENT_ONLY | {"store_dir", "power_budget_w"}
# Where the coordinator runs and keeps its records, and what only the CLI reads: no
# actor's concern.
_COORDINATOR_FIELDS = frozenset(
    {"ray_address", "state_dir", "gateways_per_node", "store_import_hosts"}
)
_GATEWAY_FIELDS = (
    frozenset(CoordinatorSettings.model_fields)
    - _COORDINATOR_FIELDS
    - _PLACEMENT_ONLY
    - {"store_dir", "store_port"}
) | _STATE_FIELDS


def _code_version() -> str:
    try:
        return importlib.metadata.version("llamaherd")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def settings_key(settings: CoordinatorSettings, fields: frozenset[str]) -> str:
    """A digest of `fields` of the settings (secrets included, so a new token or API key
    counts as a change; the digest reveals neither) and of llamaherd's version (an upgraded
    coordinator replaces the actors running the old code)."""
    data = settings.model_dump(mode="json", include=set(fields))
    data["llamaherd version"] = _code_version()
    for name in ("cluster_token", "api_key"):
        secret = getattr(settings, name)
        if name in data and secret is not None:
            data[name] = secret.get_secret_value()
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class Endpoints:
    registry_port: int
    http_port: int
    grpc_port: int
    gateways: int
    adopted: tuple[str, ...] = ()  # the actors found serving and kept (coordinator only)
    store_port: int = 0  # the model store's file service
    gateway_host: str = ""  # where this machine's gateways listen ("" for 0.0.0.0 and ::)


@dataclass
class _Gateways:
    by_node: dict[str, list[Any]] = field(default_factory=dict)


class ControlPlane:
    """Starts the control plane's actors on a Ray cluster (its own local one by default),
    keeps a gateway on every Ray node, and stops everything on `stop()`.

    `persistent` (llamaherd coordinator): the actors are detached and named, the local Ray
    head is a process tree of its own, and `start` adopts what an earlier coordinator left
    serving; see the module's docstring."""

    def __init__(self, settings: CoordinatorSettings, persistent: bool = False) -> None:
        self.settings = settings
        self.persistent = persistent
        self._state: Any = None
        self._store: Any = None
        self._placement: Any = None
        self._gateways = _Gateways()
        self._ports: tuple[int, int] | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._head: HeadRecord | None = None  # the Ray head this plane started or adopted
        self._adopted: list[str] = []
        self._replace_all = False  # a new state actor: the others hold the old one's handle
        self.endpoints: Endpoints | None = None

    def start(self) -> Endpoints:
        started = time.monotonic()
        if not ray.is_initialized():
            self._init_ray()
        if self.persistent:
            _show_every_job_s_logs()
        log.info("Ray ready in %.1f s", time.monotonic() - started)
        settings = self.settings
        # Placement and the store read the store directory: on this machine, as the CLI.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # The registry too: it listens on `host`, an address of this machine, and must not
        # die with another coordinator host (Ray may place a 0-CPU actor on any node).
        self._state = self._actor(
            STATE_ACTOR, StateActor, _STATE_FIELDS, settings, scheduling_strategy=here
        )
        (registry_port,) = self._describe(self._state).ports
        self._placement = self._actor(
            PLACEMENT_ACTOR, PlacementRemote, _PLACEMENT_FIELDS, settings, self._state,
            scheduling_strategy=here,
        )  # fmt: skip
        self._describe(self._placement)
        http_port, grpc_port = self._ensure_gateways()
        # The store holds no handle to the registry: a new registry does not replace it.
        self._store = self._actor(
            STORE_ACTOR, StoreRemote, _STORE_FIELDS, settings, scheduling_strategy=here,
            follows_registry=False,
        )  # fmt: skip
        (store_port,) = self._describe(self._store).ports
        log.info(
            "model store %s at %s", settings.store_dir, store_base_url(settings.host, store_port)
        )
        self.endpoints = Endpoints(
            registry_port, http_port, grpc_port, sum(map(len, self._gateways.by_node.values())),
            tuple(self._adopted), store_port, self._gateway_host(),
        )  # fmt: skip
        if self._adopted:
            log.info(
                "adopted the running control plane in %.1f s: %s",
                time.monotonic() - started, ", ".join(self._adopted),
            )  # fmt: skip
        return self.endpoints

    def _gateway_host(self) -> str:
        """Where this machine's gateway listens, as a client here can reach it."""
        host = self.settings.gateway_host
        if host == RAY_NODE_HOST:
            return _node_address()
        return "" if host in ("0.0.0.0", "", "::") else host

    # ---- actors --------------------------------------------------------------------------
    def _actor(
        self,
        name: str,
        remote: Any,
        fields: frozenset[str],
        *args: Any,
        follows_registry: bool = True,
        **options: Any,
    ) -> Any:
        """The actor `name`: for a persistent plane, the one already serving if it answers
        and runs with the same settings, else a new one (detached, restarted by Ray). An
        actor that `follows_registry` (holds its handle) is replaced with a new registry."""
        key = settings_key(self.settings, fields)
        if not self.persistent:
            # The gateways' status names the state actor; placement finds the store by name.
            if name in (STATE_ACTOR, STORE_ACTOR):
                options.update(name=name, namespace=NAMESPACE)
            return remote.options(**options).remote(*args, key)
        existing = _named_actor(name)
        if existing is not None:
            replace_all = self._replace_all and follows_registry
            described = None if replace_all else _try_describe(existing)
            if described is not None and described.key == key:
                self._adopted.append(name)
                return existing
            why = (
                "the control plane's registry is new" if replace_all
                else "it does not answer" if described is None
                else "its settings changed"
            )  # fmt: skip
            log.info("replacing the actor %s: %s", name, why)
            _end(existing)
            _wait_name_free(name)  # its name, and its ports, are the new one's
        if name == STATE_ACTOR:
            self._replace_all = True
        options.update(name=name, namespace=NAMESPACE, **_PERSISTENT)
        return remote.options(**options).remote(*args, key)

    def _describe(self, actor: Any) -> Described:
        """Waits for an actor to serve; raises what its start raised (OSError for a port
        in use: Ray's error is an instance of its cause)."""
        described: Described = ray.get(actor.describe.remote(), timeout=START_TIMEOUT_S)
        return described

    def _ensure_gateways(self) -> tuple[int, int]:
        """Starts (or adopts) the missing gateways on every alive Ray node; returns the
        ports in use."""
        wanted = set()
        for node in _ray_nodes():
            if not node.get("Alive"):
                continue
            node_id = node["NodeID"]
            have = self._gateways.by_node.setdefault(node_id, [])
            while len(have) < self.settings.gateways_per_node:
                name = f"{GATEWAY_PREFIX}{node_id[:16]}-{len(have)}"
                wanted.add(name)
                actor = self._actor(
                    name, GatewayRemote, _GATEWAY_FIELDS, self.settings, self._state,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )  # fmt: skip
                ports = self._describe(actor).ports
                have.append(actor)
                self._ports = self._ports or (ports[0], ports[1])
                if name not in self._adopted:
                    log.info("gateway started on Ray node %s", node_id[:12])
            wanted.update(f"{GATEWAY_PREFIX}{node_id[:16]}-{i}" for i in range(len(have)))
        if self.persistent:
            self._end_unwanted_gateways(wanted)
        if self._ports is None:
            raise RuntimeError("Ray reports no alive node to run a gateway on")
        return self._ports

    def _end_unwanted_gateways(self, wanted: set[str]) -> None:
        """Ends detached gateways left by an earlier coordinator that no node needs now (a
        node that left, fewer gateways per node): their names would otherwise stay taken."""
        for name in ray.util.list_named_actors():
            if name.startswith(GATEWAY_PREFIX) and name not in wanted:
                actor = _named_actor(name)
                if actor is not None:
                    log.info("ending the gateway %s: no longer wanted", name)
                    _end(actor)

    def supervise_once(self) -> None:
        """Adds gateways on Ray nodes that joined and drops the ones of nodes that left."""
        alive = {n["NodeID"] for n in _ray_nodes() if n.get("Alive")}
        for node_id in list(self._gateways.by_node):
            if node_id not in alive:
                log.warning("Ray node %s left; its gateways are gone", node_id[:12])
                for actor in self._gateways.by_node.pop(node_id):
                    if self.persistent:  # detached: it would wait for that node forever
                        _end(actor)
        wanted = self.settings.gateways_per_node
        if any(len(self._gateways.by_node.get(n, ())) < wanted for n in alive):
            try:
                self._ensure_gateways()
            except ray.exceptions.RayError as exc:
                # A node that joined but cannot run a gateway (its Python lacks a package,
                # it left meanwhile) must not take the control plane down: the next
                # round tries again.
                log.warning("a gateway did not start on a joined Ray node: %s",
                            str(exc).splitlines()[0])  # fmt: skip

    def stop(self) -> None:
        """Stops every actor this plane holds, then Ray: the head too, if this plane
        started (or adopted) one; its record goes with it."""
        actors = [a for group in self._gateways.by_node.values() for a in group]
        actors += [a for a in (self._placement, self._state, self._store) if a is not None]
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=5)
        for actor in actors:
            _end(actor)
        self._gateways.by_node.clear()
        if ray.is_initialized():
            ray.shutdown()
        if self._head is not None:
            _stop_head(self._head, self.settings.state_dir)
            self._head = None
        if self._reaper is not None:
            _stop_reaper(self._reaper)
            self._reaper = None

    # ---- Ray ---------------------------------------------------------------------------
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
        if self.persistent:
            enable_token_auth_by_default()  # a driver joining a head must ask for it
            self._head = _adopt_or_start_head(self.settings.state_dir, kwargs)
        else:
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


def _show_every_job_s_logs() -> None:
    """Detached actors adopted from an earlier coordinator belong to its Ray job, whose logs
    Ray does not forward to a new driver: without this, the registry's and placement's logs
    would vanish from the coordinator's output after a restart (Ray Serve does the same for
    its detached controller)."""
    ray._private.worker.global_worker._filter_logs_by_job = False


def _named_actor(name: str) -> Any:
    """The live actor `name` of our namespace, or None."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # none by that name (or it is dead for good)
        return None


def _try_describe(actor: Any) -> Described | None:
    """What a found actor says about itself, or None if it does not answer in time."""
    try:
        described: Described = ray.get(actor.describe.remote(), timeout=ADOPT_TIMEOUT_S)
    except (ray.exceptions.RayError, OSError) as exc:
        log.warning("a running actor did not answer: %s", str(exc).splitlines()[0])
        return None
    return described


def _wait_name_free(name: str, timeout: float = 10.0) -> None:
    """Waits until a killed actor is dead: Ray frees its name (and the kernel its ports)
    once its process has exited."""
    deadline = time.monotonic() + timeout
    while _named_actor(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def _end(actor: Any) -> None:
    """Kills an actor for good (no restart by Ray)."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


# ---- the coordinator's Ray head: its own process tree, recorded to be adopted -----------


@dataclass(frozen=True)
class HeadRecord:
    """A Ray head a coordinator started: its GCS address and session directory (the
    session's processes are found by it, as orchestrator.reaper does)."""

    address: str
    session_dir: str
    ray_version: str
    started_at: float  # wall clock, for people reading the file


def _record_path(state_dir: Path) -> Path:
    return state_dir / HEAD_RECORD


def read_head_record(state_dir: Path) -> HeadRecord | None:
    """The recorded head, or None (no record, or one this version cannot read)."""
    return _read_record(_record_path(state_dir))


def _read_record(path: Path) -> HeadRecord | None:
    try:
        return HeadRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable head record %s: %s", path, exc)
        return None


def _write_head_record(path: Path, record: HeadRecord) -> None:
    """Writes the record 0600 in a 0700 directory, atomically (a reader sees the old
    record or the new one, never half of one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # an older partial file may have had another mode
        json.dump(asdict(record), file)
    partial.replace(path)


def _gcs_accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _adopt_or_start_head(state_dir: Path, init_kwargs: dict[str, Any]) -> HeadRecord:
    """Connects this process to the recorded head if it still serves, else starts a new
    one (ending what is left of the recorded one) and records it."""
    record = read_head_record(state_dir)
    if record is not None:
        same_ray = record.ray_version == ray.__version__  # another Ray's GCS refuses us
        if same_ray and _gcs_accepts(record.address) and Path(record.session_dir).is_dir():
            try:
                ray.init(address=record.address, **init_kwargs)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                log.warning("the recorded Ray head at %s refused us: %s", record.address, exc)
            else:
                if _session_dir() == record.session_dir:
                    log.info("adopted the Ray head at %s", record.address)
                    return record
                ray.shutdown()  # another Ray took that port since: not ours to adopt
        log.warning("the Ray head recorded in %s is gone; starting a new one", state_dir)
        _reap_session(record)
    record = _start_head(state_dir)
    _write_head_record(_record_path(state_dir), record)
    ray.init(address=record.address, **init_kwargs)
    return record


def _session_dir() -> str:
    node: Any = ray._private.worker._global_node  # the only place naming Ray's session
    if node is None:
        raise RuntimeError("Ray is not initialized: no session")
    session_dir: str = node.get_session_dir_path()
    return session_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_head(state_dir: Path) -> HeadRecord:
    """Starts a Ray head on 127.0.0.1 as a process tree of its own: `python -m
    orchestrator.runtime head` in a new session starts Ray's daemons and exits, so they
    are nobody's children and outlive this process (`ray start --head` does the same, but
    also starts a Ray Client server on a fixed port, which we do not need).

    Its GCS is up before the rest, and outlives its starter too: so the head gets a Ray
    temp dir of its own, and a start that fails or times out ends what it had started by
    that directory. A reaper watches the start from outside (orchestrator.reaper, with the
    helper's pid): if this process dies mid-start, it ends the helper and what it started;
    a head started whole releases it, and lives on to be adopted."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = state_dir / (HEAD_RECORD + ".new")
    out.unlink(missing_ok=True)
    # Short, under the system's temp dir: Ray's socket paths inside it must stay under 108
    # bytes, which a state dir (a test's tmp_path, a deep home) need not.
    temp_dir = tempfile.mkdtemp(prefix="llamaherd-ray-")
    ray_dir = Path(ray.__file__).parent
    guard = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.reaper", temp_dir, str(ray_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    helper: subprocess.Popen[bytes] | None = None
    try:
        command = [
            sys.executable, "-m", "orchestrator.runtime", "head", str(_free_port()), str(out),
            temp_dir,
        ]  # fmt: skip
        log_fd = os.open(state_dir / "head.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as head_log:
            helper = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=head_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _tell(guard, f"pid {helper.pid}")
        try:
            returncode: int | str = helper.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = f"timed out after {START_TIMEOUT_S:.0f} s"
        record = _read_record(out)
        if returncode != 0 or record is None:
            raise RuntimeError(
                f"starting the Ray head failed ({returncode}); see {state_dir}/head.log"
            )
    except BaseException:
        if helper is not None:
            helper.kill()
            helper.wait()
        left = reap(Path(temp_dir), ray_dir, why="the Ray head's start failed")
        if left:
            log.warning("Ray processes still running after SIGKILL: %s", [p.pid for p in left])
        shutil.rmtree(temp_dir, ignore_errors=True)
        _release(guard)
        raise
    _release(guard)
    out.unlink(missing_ok=True)
    log.info("started a Ray head at %s (session %s)", record.address, record.session_dir)
    return record


def _tell(guard: subprocess.Popen[bytes], line: str) -> None:
    stdin: IO[bytes] | None = guard.stdin
    assert stdin is not None
    stdin.write(line.encode() + b"\n")
    stdin.flush()


def _release(guard: subprocess.Popen[bytes]) -> None:
    """Ends a start's reaper without a sweep."""
    with contextlib.suppress(OSError):
        _tell(guard, "release")
    with contextlib.suppress(OSError):
        if guard.stdin is not None:
            guard.stdin.close()
    try:
        guard.wait(timeout=15)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def _reap_session(record: HeadRecord | None, why: str | None = None) -> None:
    """Ends every process of a recorded head's session (those of a head whose GCS died
    leave agents behind); `why` names a deliberate stop."""
    if record is None:
        return
    left = reap(Path(record.session_dir), Path(ray.__file__).parent, why=why)
    if left:
        log.warning("Ray processes still running after SIGKILL: %s", [p.pid for p in left])


def _stop_head(record: HeadRecord, state_dir: Path) -> None:
    """A clean stop: the actors are already stopped, so the session's processes only have
    to go. The record goes first, so that a crash from here on starts afresh."""
    with contextlib.suppress(FileNotFoundError):
        if read_head_record(state_dir) == record:
            _record_path(state_dir).unlink()
    _reap_session(record, why="the coordinator stops its Ray head")
    log.info("stopped the Ray head at %s", record.address)


def _head_main(argv: list[str]) -> int:
    """`python -m orchestrator.runtime head PORT OUT [TEMP_DIR]`: starts a Ray head on
    127.0.0.1:PORT whose processes outlive this one, its session under TEMP_DIR (else Ray's
    default), writes its HeadRecord to OUT (0600) and exits."""
    port, out = int(argv[0]), Path(argv[1])
    temp_dir = argv[2] if len(argv) > 2 else None
    _loopback_only()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    _private_ray_token()
    enable_token_auth_by_default()
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    params = RayParams(
        node_ip_address="127.0.0.1", include_dashboard=False, dashboard_host="127.0.0.1",
        temp_dir=temp_dir,
    )  # fmt: skip
    params.gcs_server_port = port
    # shutdown_at_exit and spawn_reaper off: the daemons must not die with this process.
    node: Any = Node(params, head=True, shutdown_at_exit=False, spawn_reaper=False)
    record = HeadRecord(node.address, node.get_session_dir_path(), ray.__version__, time.time())
    _write_head_record(out, record)
    return 0


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


if __name__ == "__main__":
    if sys.argv[1:2] != ["head"] or len(sys.argv) not in (4, 5):
        print("usage: python -m orchestrator.runtime head PORT OUT [TEMP_DIR]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_head_main(sys.argv[2:]))
