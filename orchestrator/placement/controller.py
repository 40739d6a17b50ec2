"""The placement controller: keeps the cluster's models matching the catalog.

Each round it takes the newest snapshot, asks workers for the memory estimates the planner
needs (only a worker can read its own GGUF files), computes a plan with the pure planner and
carries it out with LoadModel/UnloadModel calls running in the background. Problems (models
that fit nowhere, loads that failed) are published with the cluster state so that status
and the gateways can explain a model that is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from grpc import aio
from llamaherd.v1 import worker_pb2 as w_pb

from orchestrator.cluster.types import ClusterSnapshot, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.planner import Load, Unload, estimates_needed, plan
from orchestrator.worker_channels import WorkerChannels

log = logging.getLogger(__name__)

Snapshots = Callable[[int, float], Awaitable[ClusterSnapshot]]
Publish = Callable[[tuple[PlacementProblem, ...]], Awaitable[None]]
Clock = Callable[[], float]

ESTIMATE_TIMEOUT_S = 10.0
LOAD_TIMEOUT_S = 600.0  # a large GGUF from an SD card on a Nano takes minutes
RETRY_FAILED_AFTER_S = 30.0  # a node whose load failed is not asked again before this


def load_request(entry: CatalogEntry) -> w_pb.LoadModelRequest:
    fields = {k: getattr(v, "value", v) for k, v in entry.load_fields().items()}
    return w_pb.LoadModelRequest(spec=w_pb.ModelSpec(**fields))


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
        self._estimates: dict[tuple[str, NodeId, str], tuple[int | str, float]] = {}
        self._failed: dict[tuple[str, NodeId], tuple[str, float]] = {}
        self._running: dict[tuple[str, NodeId], asyncio.Task[None]] = {}
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
        for action in result.actions:
            self._start(action, snapshot)
        problems = tuple(sorted(result.problems, key=lambda p: p.alias))
        if problems != self._published:
            for problem in problems:
                # INFO: while workers start up, shortfalls come and go; status shows them.
                log.info("model %s: %s", problem.alias, problem.reason)
            await self._publish(problems)
            self._published = problems

    # ---- estimates ---------------------------------------------------------------------
    async def _gather_estimates(
        self, snapshot: ClusterSnapshot, needed: list[tuple[CatalogEntry, NodeId]]
    ) -> dict[tuple[str, NodeId], int | str]:
        now = self._clock()
        found: dict[tuple[str, NodeId], int | str] = {}
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
            if cached is not None and (isinstance(cached[0], int) or now - cached[1] < 30):
                found[(entry.alias, node_id)] = cached[0]
                continue
            asks.append((entry, node_id, node.address))
        results = await asyncio.gather(*(self._estimate(e, a) for e, _, a in asks))
        for (entry, node_id, address), value in zip(asks, results, strict=True):
            self._estimates[(entry.alias, node_id, address)] = (value, now)
            found[(entry.alias, node_id)] = value
        return found

    async def _estimate(self, entry: CatalogEntry, address: str) -> int | str:
        try:
            estimate = await self._channels.stub(address).EstimateModel(
                load_request(entry), timeout=ESTIMATE_TIMEOUT_S
            )
        except aio.AioRpcError as exc:
            return f"cannot estimate: {exc.details() or exc.code().name}"
        return int(estimate.total_bytes)

    # ---- actions -----------------------------------------------------------------------
    def _start(self, action: Load | Unload, snapshot: ClusterSnapshot) -> None:
        alias = action.entry.alias if isinstance(action, Load) else action.alias
        key = (alias, action.node_id)
        if key in self._running:
            return  # the worker has not reported the result yet
        node = snapshot.node(action.node_id)
        if node is None:
            return
        task = asyncio.create_task(self._act(action, node.address), name=f"placement:{key}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _act(self, action: Load | Unload, address: str) -> None:
        stub = self._channels.stub(address)
        try:
            if isinstance(action, Load):
                log.info("loading %s on %s", action.entry.alias, action.node_id)
                await stub.LoadModel(load_request(action.entry), timeout=LOAD_TIMEOUT_S)
                self._failed.pop((action.entry.alias, action.node_id), None)
            else:
                log.info("unloading %s from %s (more replicas than the catalog wants)",
                         action.alias, action.node_id)  # fmt: skip
                await stub.UnloadModel(w_pb.UnloadModelRequest(alias=action.alias), timeout=60)
        except aio.AioRpcError as exc:
            alias = action.entry.alias if isinstance(action, Load) else action.alias
            verb = "load" if isinstance(action, Load) else "unload"
            reason = f"{verb} failed there: {exc.details() or exc.code().name}"
            log.warning("%s of %s on %s failed: %s", verb, alias, action.node_id, exc.details())
            self._failed[(alias, action.node_id)] = (reason, self._clock())
