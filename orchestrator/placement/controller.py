"""The placement controller: keeps the cluster's models matching the catalog.

Each round it takes the newest snapshot, asks workers for the memory estimates the planner
needs (only a worker can read its own GGUF files), computes a plan with the pure planner and
carries it out with LoadModel/UnloadModel calls running in the background. A split (one
model's layers over several nodes) starts an RPC server on each helper, then loads the model
on the head using them. Problems (models that fit nowhere, loads that failed) are published
with the cluster state so that status and the gateways can explain a model that is not
served. Leases no head uses are stopped after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from grpc import aio
from llamaherd.v1 import worker_pb2 as w_pb

from common.memory import MemoryEstimate
from common.net import split_host_port
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.leases import StopLease, lease_id, lease_owner, orphan_leases
from orchestrator.placement.planner import (
    Action,
    Load,
    LoadSplit,
    Unload,
    estimates_needed,
    plan,
)
from orchestrator.placement.split import SplitPart
from orchestrator.worker_channels import WorkerChannels

log = logging.getLogger(__name__)

Snapshots = Callable[[int, float], Awaitable[ClusterSnapshot]]
Publish = Callable[[tuple[PlacementProblem, ...]], Awaitable[None]]
Clock = Callable[[], float]
T = TypeVar("T")

ESTIMATE_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 600.0  # a large GGUF from an SD card on a Nano takes minutes
RPC_SERVER_TIMEOUT_S = 30.0
RETRY_FAILED_AFTER_S = 30.0  # a node whose load failed is not asked again before this
# A split's leases start before its head loads, so a lease no head uses may just be new;
# one that stays unused this long is left over (a head that died or a failed setup).
ORPHAN_GRACE_S = 10.0


def load_request(entry: CatalogEntry) -> w_pb.LoadModelRequest:
    fields = {k: getattr(v, "value", v) for k, v in entry.load_fields().items()}
    return w_pb.LoadModelRequest(spec=w_pb.ModelSpec(**fields))


def split_load_request(split: LoadSplit, endpoints: Sequence[str]) -> w_pb.LoadModelRequest:
    """The head's LoadModel: the entry's spec using the helpers' RPC servers, in layer order."""
    request = load_request(split.entry)
    request.spec.rpc_servers.extend(endpoints)
    request.spec.tensor_split.extend(split.plan.tensor_split)
    request.spec.n_gpu_layers = split.plan.n_gpu_layers
    return request


def estimate_from_proto(reply: w_pb.MemoryEstimate) -> MemoryEstimate:
    return MemoryEstimate(
        weights_bytes=reply.weights_bytes,
        kv_cache_bytes=reply.kv_cache_bytes,
        compute_bytes=reply.compute_bytes,
        n_layers=reply.n_layers,
        layer_weights_bytes=reply.layer_weights_bytes,
        layer_kv_cache_bytes=reply.layer_kv_cache_bytes,
        layer_compute_bytes=reply.layer_compute_bytes,
    )


class _StepFailed(Exception):
    """A worker refused a step of an action; `reason` is recorded against `node_id`."""

    def __init__(self, node_id: NodeId, reason: str) -> None:
        super().__init__(f"{node_id}: {reason}")
        self.node_id = node_id
        self.reason = reason


async def _step(node_id: NodeId, verb: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except aio.AioRpcError as exc:
        reason = f"{verb} failed there: {exc.details() or exc.code().name}"
        raise _StepFailed(node_id, reason) from exc


class PlacementController:
    def __init__(
        self,
        catalog: Sequence[CatalogEntry],
        interval_s: float,
        snapshots: Snapshots,
        publish: Publish,
        channels: WorkerChannels | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._catalog = tuple(catalog)
        self._interval = interval_s
        self._snapshots = snapshots
        self._publish = publish
        self._channels = channels or WorkerChannels()
        self._clock = clock
        self._estimates: dict[tuple[str, NodeId, str], tuple[MemoryEstimate | str, float]] = {}
        self._failed: dict[tuple[str, NodeId], tuple[str, float]] = {}
        self._running: dict[tuple[str, NodeId], asyncio.Task[None]] = {}
        self._splitting: set[str] = set()  # aliases whose split is being set up
        self._orphans_since: dict[tuple[NodeId, str], float] = {}
        self._published: tuple[PlacementProblem, ...] | None = None

    async def run(self) -> None:
        version = -1
        while True:
            started = self._clock()
            try:
                snapshot = await self._snapshots(version, self._interval)
                version = snapshot.version
                await self.reconcile(snapshot)
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry restart, say; the next round starts afresh
                log.exception("placement round failed; retrying")
            # Reports arrive every second per node: reconcile at most once per interval.
            await asyncio.sleep(max(0.0, self._interval - (self._clock() - started)))

    async def stop(self) -> None:
        for task in self._running.values():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._channels.close()

    async def reconcile(self, snapshot: ClusterSnapshot) -> None:
        nodes = snapshot.nodes
        estimates = await self._gather_estimates(snapshot, estimates_needed(self._catalog, nodes))
        result = plan(self._catalog, nodes, estimates)
        for action in (*result.actions, *self._stale_orphans(nodes)):
            self._start(action, snapshot)
        problems = tuple(sorted(result.problems, key=lambda p: p.alias))
        if problems != self._published:
            for problem in problems:
                # INFO: while workers start up, shortfalls come and go; status shows them.
                log.info("model %s: %s", problem.alias, problem.reason)
            await self._publish(problems)
            self._published = problems

    def _stale_orphans(self, nodes: Sequence[Node]) -> list[StopLease]:
        """Leases no head has used for ORPHAN_GRACE_S, by this controller's clock."""
        now = self._clock()
        since: dict[tuple[NodeId, str], float] = {}
        stale = []
        for stop in orphan_leases({entry.alias for entry in self._catalog}, nodes):
            owner = lease_owner(stop.lease_id)
            if owner is not None and owner[0] in self._splitting:
                continue  # its head is about to load; the clock starts once it has
            key = (stop.node_id, stop.lease_id)
            since[key] = self._orphans_since.get(key, now)
            if now - since[key] >= ORPHAN_GRACE_S:
                why = f"no head has used it for {now - since[key]:.0f} s"
                stale.append(dataclasses.replace(stop, why=why))
        self._orphans_since = since  # forgets leases that are gone or used again
        return stale

    # ---- estimates ---------------------------------------------------------------------
    async def _gather_estimates(
        self, snapshot: ClusterSnapshot, needed: list[tuple[CatalogEntry, NodeId]]
    ) -> dict[tuple[str, NodeId], MemoryEstimate | str]:
        now = self._clock()
        found: dict[tuple[str, NodeId], MemoryEstimate | str] = {}
        asks = []
        for entry, node_id in needed:
            node = snapshot.node(node_id)
            if node is None:
                continue
            failed = self._failed.get((entry.alias, node_id))
            if failed is not None and now - failed[1] < RETRY_FAILED_AFTER_S:
                found[(entry.alias, node_id)] = failed[0]
                continue
            cached = self._estimates.get((entry.alias, node_id, node.address))
            if cached is not None and (
                isinstance(cached[0], MemoryEstimate) or now - cached[1] < 30
            ):
                found[(entry.alias, node_id)] = cached[0]
                continue
            asks.append((entry, node_id, node.address))
        results = await asyncio.gather(*(self._estimate(e, a) for e, _, a in asks))
        for (entry, node_id, address), value in zip(asks, results, strict=True):
            self._estimates[(entry.alias, node_id, address)] = (value, now)
            found[(entry.alias, node_id)] = value
        return found

    async def _estimate(self, entry: CatalogEntry, address: str) -> MemoryEstimate | str:
        try:
            reply = await self._channels.stub(address).EstimateModel(
                load_request(entry), timeout=ESTIMATE_TIMEOUT_S
            )
        except aio.AioRpcError as exc:
            return f"cannot estimate: {exc.details() or exc.code().name}"
        return estimate_from_proto(reply)

    # ---- actions -----------------------------------------------------------------------
    def _start(self, action: Action, snapshot: ClusterSnapshot) -> None:
        key = _task_key(action)
        if key in self._running:
            return  # the worker has not reported the result yet
        if isinstance(action, LoadSplit) and action.entry.alias in self._splitting:
            return  # one split of a model at a time: its helpers are not lending yet
        addresses = _addresses(action, snapshot)
        if addresses is None:
            return  # a node in the plan has left since the snapshot
        if isinstance(action, LoadSplit):
            self._splitting.add(action.entry.alias)  # until _load_split ends
            coro = self._load_split(action, addresses)
        elif isinstance(action, StopLease):
            coro = self._stop_lease(action, addresses[action.node_id])
        else:
            coro = self._act(action, addresses[action.node_id])
        task = asyncio.create_task(coro, name=f"placement:{key}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _act(self, action: Load | Unload, address: str) -> None:
        stub = self._channels.stub(address)
        node_id = action.node_id
        try:
            if isinstance(action, Load):
                alias = action.entry.alias
                log.info("loading %s on %s", alias, node_id)
                call = stub.LoadModel(load_request(action.entry), timeout=LOAD_TIMEOUT_S)
                await _step(node_id, "load", call)
                self._failed.pop((alias, node_id), None)
            else:
                alias = action.alias
                log.info("unloading %s from %s (%s)", alias, node_id, action.why)
                request = w_pb.UnloadModelRequest(alias=alias)
                await _step(node_id, "unload", stub.UnloadModel(request, timeout=60))
        except _StepFailed as failed:
            log.warning("%s on %s: %s", alias, node_id, failed.reason)
            self._failed[(alias, node_id)] = (failed.reason, self._clock())

    async def _load_split(self, split: LoadSplit, addresses: Mapping[NodeId, str]) -> None:
        """Lend each helper's device to the head, then load the model on the head.

        A refused step stops the leases started so far and is recorded against the node
        that refused, like a failed load, so the next rounds plan around that node.
        """
        alias, layout = split.entry.alias, split.plan
        lease = lease_id(alias, layout.head)
        head_host = split_host_port(addresses[layout.head])[0]  # the only peer helpers accept
        log.info("splitting %s: %s", alias, layout.explanation)
        asked: list[NodeId] = []
        try:
            endpoints = []
            for part in layout.helpers:
                asked.append(part.node_id)
                endpoints.append(await self._lend(part, lease, head_host, addresses[part.node_id]))
            request = split_load_request(split, endpoints)
            stub = self._channels.stub(addresses[layout.head])
            await _step(layout.head, "split load", stub.LoadModel(request, timeout=LOAD_TIMEOUT_S))
        except _StepFailed as failed:
            log.warning("split of %s failed on %s: %s", alias, failed.node_id, failed.reason)
            self._failed[(alias, failed.node_id)] = (failed.reason, self._clock())
            for node_id in asked:
                stop = StopLease(node_id, lease, "its split failed")
                await self._stop_lease(stop, addresses[node_id])
            return
        finally:
            self._splitting.discard(alias)
        for part in layout.parts:
            self._failed.pop((alias, part.node_id), None)

    async def _lend(self, part: SplitPart, lease: str, head_host: str, address: str) -> str:
        """Start the RPC server of `part`'s node for the head; the endpoint it listens on."""
        request = w_pb.StartRpcServerRequest(
            lease_id=lease, head_host=head_host, reserve_bytes=part.reserve_bytes
        )
        stub = self._channels.stub(address)
        call = stub.StartRpcServer(request, timeout=RPC_SERVER_TIMEOUT_S)
        info = await _step(part.node_id, "lending for a split", call)
        if not info.running:
            error = info.error or "no error reported"
            raise _StepFailed(part.node_id, f"its RPC server exited: {error}")
        return str(info.endpoint)

    async def _stop_lease(self, stop: StopLease, address: str) -> None:
        """Stop a lease; a failure is only logged, since the orphan sweep tries again."""
        log.info("stopping lease %s on %s (%s)", stop.lease_id, stop.node_id, stop.why)
        request = w_pb.StopRpcServerRequest(lease_id=stop.lease_id)
        try:
            await self._channels.stub(address).StopRpcServer(request, timeout=60)
        except aio.AioRpcError as exc:
            log.warning("stopping lease %s on %s failed: %s", stop.lease_id, stop.node_id,
                        exc.details() or exc.code().name)  # fmt: skip


def _task_key(action: Action) -> tuple[str, NodeId]:
    """Actions with the same key wait for each other: one per model (or lease) and node."""
    if isinstance(action, Load | LoadSplit):
        return action.entry.alias, action.node_id
    if isinstance(action, Unload):
        return action.alias, action.node_id
    return action.lease_id, action.node_id  # "@" in a lease id: never an alias


def _addresses(action: Action, snapshot: ClusterSnapshot) -> dict[NodeId, str] | None:
    """The Worker address of every node the action touches, or None if one is gone."""
    node_ids = (
        [p.node_id for p in action.plan.parts]
        if isinstance(action, LoadSplit)
        else [action.node_id]
    )
    addresses = {}
    for node_id in node_ids:
        node = snapshot.node(node_id)
        if node is None:
            return None
        addresses[node_id] = node.address
    return addresses
