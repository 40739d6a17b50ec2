"""The placement controller: keeps the cluster's models matching the catalog.

Each round it takes the newest snapshot, asks workers for the memory estimates the planner
needs (only a worker can read its own GGUF files), computes a plan with the pure planner and
carries it out with LoadModel/UnloadModel calls running in the background. A split (one
model's layers over several nodes) starts an RPC server on each helper, then loads the model
on the head using them. Problems (models that fit nowhere, loads that failed) are published
with the cluster state so that status and the gateways can explain a model that is not
served. Leases no head uses are stopped after a grace period.

It acts only on a registry that workers have had time to join: after its first snapshot
and after losing the registry (a call that failed, or versions counting from zero again: a
restarted registry starts empty), it watches for `rejoin_grace_s` before loading or
unloading anything. Otherwise a fresh registry, holding only the first worker to re-register,
looks like a cluster short of replicas, and placement loads a surplus replica that it
unloads again a second later.

Store entries (model: NAME) are resolved against the coordinator's store (ModelStore)
every round, so a model added or removed while it runs is seen at the next round and an
unknown name is a problem in status. Nodes that lack the file are sized by the coordinator
from the store's copy (or by a node that holds it), and the LoadModel sent carries where to
fetch it: peers that hold it first, the store last. A download that outlasts
`download_timeout_s` is unloaded and the node is not asked again for a while. While no
node holds a file yet, only `store_fetches_per_file` nodes fetch it from the store at once
(the planner's peer-to-peer rollout); the loads this controller has started count as
fetches before their nodes report them, so a second node is not sent to the store in the
second or so before the first reports DOWNLOADING.

It also keeps the provenance of every replica (planner.Provenance): when it first saw it,
by its own clock, and whether its own load put it there. The planner unloads surplus
replicas by that record, so a node's report alone cannot get another node's replica
unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from common.errors import LlamaherdError
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig, ModelSource
from common.net import split_host_port
from common.status import ModelState
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.eligibility import HOLDING_STATES
from orchestrator.placement.leases import StopLease, lease_id, lease_owner, orphan_leases
from orchestrator.placement.planner import (
    DEFAULT_LINK_BYTES_PER_SECOND,
    Action,
    Downloads,
    Load,
    LoadSplit,
    Provenance,
    Unload,
    estimates_needed,
    plan,
    store_candidates,
)
from orchestrator.placement.power import power_figures
from orchestrator.placement.sources import (
    ModelStore,
    StoreModel,
    estimate_from_file,
    holds_file,
    source_for,
    unknown_model,
)
from orchestrator.placement.split import SplitPart, split_links

log = logging.getLogger(__name__)

Snapshots = Callable[[int, float], Awaitable[ClusterSnapshot]]
Publish = Callable[[tuple[PlacementProblem, ...]], Awaitable[None]]
Clock = Callable[[], float]
T = TypeVar("T")


class WorkerControl(Protocol):
    """What the controller asks of one worker: the placement half of the Worker API
    (orchestrator.worker_client.WorkerClient). Refusals raise common.errors kinds."""

    async def estimate(self, config: ModelConfig, timeout: float | None = None) -> MemoryEstimate:
        """What loading `config` there would need."""

    async def load(self, config: ModelConfig, timeout: float | None = None) -> None:
        """Loads `config` there."""

    async def unload(self, alias: str, timeout: float | None = None) -> None:
        """Unloads `alias` there."""

    async def start_rpc_server(
        self, lease_id: str, head_host: str, reserve_bytes: int, timeout: float | None = None
    ) -> Lease:
        """Lends the node's device to the head at `head_host`."""

    async def stop_rpc_server(self, lease_id: str, timeout: float | None = None) -> None:
        """Stops a lease's RPC server."""


# The client of the worker at an address (WorkerClients.client: one channel per address).
ClientFactory = Callable[[str], WorkerControl]


@dataclass(frozen=True)
class Timings:
    """How long the controller waits for workers, and how long it remembers an outcome."""

    # Reading a GGUF header takes milliseconds; a worker slower than this is stuck or gone,
    # and the whole round waits for its estimates.
    estimate_timeout_s: float = 10.0
    # A large GGUF read from an SD card on a Jetson Nano takes minutes.
    load_timeout_s: float = 600.0
    # Unloading cancels the model's requests and frees its memory: seconds, unless stuck.
    unload_timeout_s: float = 60.0
    # Starting a ggml RPC server is a child process and a port: seconds.
    rpc_server_timeout_s: float = 30.0
    # Stopping one ends that child; the orphan sweep retries a stop that timed out.
    stop_lease_timeout_s: float = 60.0
    # A node whose load (or estimate) failed is not asked again for this long: the reason
    # stays in status, and a file that is missing is not read again every round.
    retry_failed_after_s: float = 30.0
    # A split's leases start before its head loads, so a lease no head uses may just be new;
    # one that stays unused this long is left over (a head that died or a failed setup).
    orphan_grace_s: float = 10.0
    # How long workers have to re-register with a registry the controller has just met
    # (its first snapshot, or a registry that restarted): the runtime passes the settings'
    # down_after_s (or two heartbeats, if longer), the time after which a silent worker
    # counts as gone anyway.
    rejoin_grace_s: float = 3.0
    # A store model's file still downloading after this long is given up on that node
    # (settings.download_timeout_s); a load that fetches first may take this much longer.
    download_timeout_s: float = 3600.0


def rejoined(since: float, now: float, grace_s: float) -> bool:
    """Whether workers have had `grace_s` to register with a registry met at `since`."""
    return now - since >= grace_s


class _StepFailed(Exception):
    """A worker refused a step of an action; `reason` is recorded against `node_id`."""

    def __init__(self, node_id: NodeId, reason: str) -> None:
        super().__init__(f"{node_id}: {reason}")
        self.node_id = node_id
        self.reason = reason


async def _step(node_id: NodeId, verb: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except LlamaherdError as exc:
        raise _StepFailed(node_id, f"{verb} failed there: {exc.message}") from exc


def split_settings(
    split: LoadSplit, endpoints: Sequence[str], source: ModelSource | None = None
) -> ModelConfig:
    """The head's settings: the entry's, using the helpers' RPC servers in layer order
    (a store entry's with where the head fetches its file).

    Not validated here: the head validates every load, and its refusal is recorded like any
    other failed step (model_copy marks the added fields as set, so they are sent)."""
    return split.entry.load_settings(source).model_copy(
        update={
            "rpc_servers": tuple(endpoints),
            "tensor_split": split.plan.tensor_split,
            "n_gpu_layers": split.plan.n_gpu_layers,
        }
    )


class PlacementController:
    """Reconciles the cluster with the catalog, one round per new snapshot (at most one per
    `interval_s`). `clients` gives the client of the worker at an address; the caller owns
    and closes them. `clock` times back-offs, caches and grace periods. `store` resolves
    store entries (none: every store entry is a problem); `link_bytes_per_second` is the
    download rate assumed for a node that has not reported one; `store_fetches_per_file`
    how many nodes may fetch one file from the store at once while no node holds it (0: no
    limit); `power_budget_w` the cluster's power budget (orchestrator.placement.power),
    None for none, judged on the telemetry samples' clock, unix time (`wall_clock`);
    `link_rtt_ms` the round trip each node's link adds, by node id or label, and
    `split_min_tokens_per_second` the estimate a split must reach (split.SplitLinks)."""

    def __init__(
        self,
        catalog: Sequence[CatalogEntry],
        interval_s: float,
        snapshots: Snapshots,
        publish: Publish,
        clients: ClientFactory,
        clock: Clock = time.monotonic,
        timings: Timings = Timings(),
        store: ModelStore | None = None,
        link_bytes_per_second: float = DEFAULT_LINK_BYTES_PER_SECOND,
        store_fetches_per_file: int = 1,
        power_budget_w: float | None = None,
        wall_clock: Clock = time.time,
        link_rtt_ms: Mapping[str, float] | None = None,
        split_min_tokens_per_second: float = 0.0,
    ) -> None:
        self._catalog = tuple(catalog)
        self._interval = interval_s
        self._snapshots = snapshots
        self._publish = publish
        self._clients = clients
        self._clock = clock
        self._timings = timings
        self._estimates: dict[tuple[str, NodeId, str], tuple[MemoryEstimate | str, float]] = {}
        self._failed: dict[tuple[str, NodeId], tuple[str, float]] = {}
        self._running: dict[tuple[str, NodeId], asyncio.Task[None]] = {}
        self._splitting: set[str] = set()  # aliases whose split is being set up
        self._orphans_since: dict[tuple[NodeId, str], float] = {}
        # (alias, node) of every replica held in the last snapshot, as this controller saw it
        self._provenance: dict[tuple[str, NodeId], Provenance] = {}
        self._placed: set[tuple[str, NodeId]] = set()  # loads this controller started
        self._published: tuple[PlacementProblem, ...] | None = None
        # When this controller met the registry it reads (None: not yet, or lost since),
        # and the version of its last snapshot (a restarted registry counts from zero).
        self._registry_since: float | None = None
        self._version = -1
        self._said_waiting = False
        self._store = store
        self._link_rate = link_bytes_per_second
        self._link_rates: dict[NodeId, float] = {}  # last measured download rate per node
        self._downloading_since: dict[tuple[str, NodeId], float] = {}
        self._fetches_per_file = store_fetches_per_file
        # (alias, node) of loads under way that fetch a store file first
        self._fetching: set[tuple[str, NodeId]] = set()
        # Coordinator-side estimates of store models: (alias, sha256) -> estimate or reason
        self._store_estimates: dict[tuple[str, str], MemoryEstimate | str] = {}
        self._downloads = Downloads()  # this round's, for the loads it starts
        self._power_budget_w = power_budget_w
        self._wall_clock = wall_clock
        self._link_rtt_ms = dict(link_rtt_ms or {})
        self._split_floor = split_min_tokens_per_second

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
                self.registry_lost()
            # Reports arrive every second per node: reconcile at most once per interval.
            await asyncio.sleep(max(0.0, self._interval - (self._clock() - started)))

    def registry_lost(self) -> None:
        """The registry did not answer: it may come back empty, so the next snapshot starts
        a new rejoin grace period."""
        self._registry_since = None

    async def stop(self) -> None:
        """Cancels the actions under way."""
        for task in self._running.values():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def settle(self) -> None:
        """Waits until the actions started so far have ended."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def reconcile(self, snapshot: ClusterSnapshot) -> None:
        """One round: estimates, the plan, its actions started in the background, and the
        problems published if they changed."""
        nodes = snapshot.nodes
        self._observe(nodes)
        if not self._workers_rejoined(snapshot):
            return
        downloads = self._downloads = self._resolve(nodes)
        needed = estimates_needed(self._catalog, nodes, downloads)
        estimates = await self._gather_estimates(snapshot, needed)
        estimates.update(await self._size_fetches(nodes, downloads, estimates))
        power = None
        if self._power_budget_w is not None:
            power = power_figures(
                self._power_budget_w, nodes, self._wall_clock(), snapshot.capacities
            )
        links = split_links(nodes, self._link_rtt_ms, self._split_floor)
        result = plan(
            self._catalog, nodes, estimates, self._provenance, downloads, snapshot.capacities,
            links, power,
        )  # fmt: skip
        for action in (*result.actions, *self._stale_orphans(nodes)):
            self._start(action, snapshot)
        problems = tuple(sorted(result.problems, key=lambda p: p.alias))
        if problems != self._published:
            for problem in problems:
                # INFO: while workers start up, shortfalls come and go; status shows them.
                log.info("model %s: %s", problem.alias, problem.reason)
            await self._publish(problems)
            self._published = problems

    def _workers_rejoined(self, snapshot: ClusterSnapshot) -> bool:
        """False during the rejoin grace period of a registry met (or restarted) lately."""
        now = self._clock()
        if self._registry_since is None or snapshot.version < self._version:
            self._registry_since = now
            self._said_waiting = False
        self._version = snapshot.version
        if rejoined(self._registry_since, now, self._timings.rejoin_grace_s):
            return True
        if not self._said_waiting:
            self._said_waiting = True
            log.info(
                "placement waits %.1f s for workers to register before acting (%d up now)",
                self._timings.rejoin_grace_s, len(snapshot.up_nodes),
            )  # fmt: skip
        return False

    def _observe(self, nodes: Sequence[Node]) -> None:
        """Records when each held replica was first seen and whether this controller
        placed it; forgets replicas no longer held (a replica that comes back is new)."""
        now = self._clock()
        held = {
            (replica.alias, node.node_id)
            for node in nodes
            for replica in node.replicas
            if replica.state in HOLDING_STATES
        }
        for key in self._provenance.keys() - held:
            self._placed.discard(key)  # it was seen and is gone: a later one is not ours
        downloading = {}
        for node in nodes:
            for replica in node.replicas:
                if replica.download is not None and replica.download.bytes_per_second > 0:
                    self._link_rates[node.node_id] = replica.download.bytes_per_second
                if replica.state is ModelState.DOWNLOADING:
                    key = (replica.alias, node.node_id)
                    downloading[key] = self._downloading_since.get(key, now)
        self._downloading_since = downloading
        self._provenance = {
            key: Provenance(
                first_seen=seen.first_seen if (seen := self._provenance.get(key)) else now,
                placed=key in self._placed,
            )
            for key in held
        }

    def _stale_orphans(self, nodes: Sequence[Node]) -> list[StopLease]:
        """Leases no head has used for the orphan grace period, by this controller's clock."""
        now = self._clock()
        since: dict[tuple[NodeId, str], float] = {}
        stale = []
        for stop in orphan_leases({entry.alias for entry in self._catalog}, nodes):
            owner = lease_owner(stop.lease_id)
            if owner is not None and owner[0] in self._splitting:
                continue  # its head is about to load; the clock starts once it has
            key = (stop.node_id, stop.lease_id)
            since[key] = self._orphans_since.get(key, now)
            if now - since[key] >= self._timings.orphan_grace_s:
                why = f"no head has used it for {now - since[key]:.0f} s"
                stale.append(dataclasses.replace(stop, why=why))
        self._orphans_since = since  # forgets leases that are gone or used again
        return stale

    # ---- store models ------------------------------------------------------------------
    def _resolve(self, nodes: Sequence[Node]) -> Downloads:
        """This round's store models, measured link rates and overdue downloads."""
        models: dict[str, StoreModel | str] = {}
        for entry in self._catalog:
            if entry.store_name is not None:
                models[entry.alias] = self._lookup(entry.store_name)
        return Downloads(
            models,
            dict(self._link_rates),
            self._link_rate,
            self._overdue(nodes),
            pending=frozenset(self._fetching),
            store_fetches_per_file=self._fetches_per_file,
        )

    def _lookup(self, name: str) -> StoreModel | str:
        if self._store is None:
            return f"model {name} names a store model, but this coordinator has no store"
        try:
            model = self._store.lookup(name)
        except (LlamaherdError, OSError, sqlite3.Error) as exc:  # the store's index, on disk
            return f"cannot read the store's index for {name}: {exc}"
        return model if model is not None else unknown_model(name)

    def _overdue(self, nodes: Sequence[Node]) -> dict[tuple[str, NodeId], str]:
        """Downloads running past the timeout, with the reason; each is also recorded as a
        failure on its node so the next rounds place the model elsewhere."""
        now = self._clock()
        overdue = {}
        for (alias, node_id), since in self._downloading_since.items():
            if now - since < self._timings.download_timeout_s:
                continue
            node = next((n for n in nodes if n.node_id == node_id), None)
            replica = node.replica(alias) if node is not None else None
            progress = replica.download if replica is not None else None
            done = (
                f" ({progress.bytes_done} of {progress.bytes_total} bytes"
                f"{' from ' + progress.source if progress.source else ''})"
                if progress is not None
                else ""
            )
            why = f"download did not finish in {self._timings.download_timeout_s:.0f} s{done}"
            overdue[(alias, node_id)] = why
            self._failed[(alias, node_id)] = (why, now)
        return overdue

    async def _size_fetches(
        self,
        nodes: Sequence[Node],
        downloads: Downloads,
        found: Mapping[tuple[str, NodeId], MemoryEstimate | str],
    ) -> dict[tuple[str, NodeId], MemoryEstimate | str]:
        """Estimates for nodes that lack a store model's file (they cannot read it): the
        coordinator's own, from the store's copy, else the largest a node holding the file
        gave, else why there is none."""
        now = self._clock()
        sized: dict[tuple[str, NodeId], MemoryEstimate | str] = {}
        for entry, model, node_id in store_candidates(self._catalog, nodes, downloads):
            failed = self._failed.get((entry.alias, node_id))
            if failed is not None and now - failed[1] < self._timings.retry_failed_after_s:
                sized[(entry.alias, node_id)] = failed[0]
                continue
            sized[(entry.alias, node_id)] = await self._store_estimate(entry, model, nodes, found)
        return sized

    async def _store_estimate(
        self,
        entry: CatalogEntry,
        model: StoreModel,
        nodes: Sequence[Node],
        found: Mapping[tuple[str, NodeId], MemoryEstimate | str],
    ) -> MemoryEstimate | str:
        key = (entry.alias, model.sha256)
        if key not in self._store_estimates and model.file is not None:
            try:
                # Reads the file's metadata only (milliseconds), off the event loop all the same.
                estimate = await asyncio.to_thread(estimate_from_file, model.file, entry)
                self._store_estimates[key] = estimate
            except (LlamaherdError, OSError) as exc:
                self._store_estimates[key] = f"cannot estimate from the store's copy: {exc}"
        mine = self._store_estimates.get(key)
        if isinstance(mine, MemoryEstimate):
            return mine
        theirs = [
            need
            for node in nodes
            if holds_file(node, model.sha256)
            and isinstance(need := found.get((entry.alias, node.node_id)), MemoryEstimate)
        ]
        if theirs:
            return max(theirs, key=lambda e: e.total_bytes)
        if mine is not None:
            return mine  # why the store's copy could not be read
        return "no memory estimate: the store holds no readable copy and no node holds the file"

    def _source(
        self, entry: CatalogEntry, node_id: NodeId, snapshot: ClusterSnapshot
    ) -> ModelSource | None:
        """Where `node_id` fetches a store entry's file (None for a path entry)."""
        model = self._downloads.model(entry)
        if model is None:
            return None
        node = snapshot.node(node_id)
        if not isinstance(model, StoreModel) or node is None or self._store is None:
            raise _StepFailed(
                node_id, f"no source: {model if isinstance(model, str) else 'node gone'}"
            )
        return source_for(model, node, snapshot.nodes, self._store.base_url)

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
            if failed is not None and now - failed[1] < self._timings.retry_failed_after_s:
                found[(entry.alias, node_id)] = failed[0]
                continue
            cached = self._estimates.get((entry.alias, node_id, node.address))
            if cached is not None and (
                isinstance(cached[0], MemoryEstimate)
                or now - cached[1] < self._timings.retry_failed_after_s
            ):
                found[(entry.alias, node_id)] = cached[0]
                continue
            asks.append((entry, node_id, node.address))
        results = await asyncio.gather(
            *(self._estimate(e, a, self._estimate_source(e, n, snapshot)) for e, n, a in asks)
        )
        for (entry, node_id, address), value in zip(asks, results, strict=True):
            self._estimates[(entry.alias, node_id, address)] = (value, now)
            found[(entry.alias, node_id)] = value
        return found

    def _estimate_source(
        self, entry: CatalogEntry, node_id: NodeId, snapshot: ClusterSnapshot
    ) -> ModelSource | None:
        try:
            return self._source(entry, node_id, snapshot)
        except _StepFailed:
            return None  # resolved this round, so not reached: estimates_needed skips those

    async def _estimate(
        self, entry: CatalogEntry, address: str, source: ModelSource | None = None
    ) -> MemoryEstimate | str:
        try:
            return await self._clients(address).estimate(
                entry.load_settings(source), timeout=self._timings.estimate_timeout_s
            )
        except LlamaherdError as exc:
            return f"cannot estimate: {exc.message}"

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
        try:
            source = (
                self._source(action.entry, action.node_id, snapshot)
                if isinstance(action, Load | LoadSplit)
                else None
            )
        except _StepFailed as failed:  # the store forgot the model since the plan
            log.warning("%s on %s: %s", key[0], failed.node_id, failed.reason)
            return
        if isinstance(action, LoadSplit):
            self._splitting.add(action.entry.alias)  # until _load_split ends
            coro = self._load_split(action, addresses, source)
        elif isinstance(action, StopLease):
            coro = self._stop_lease(action, addresses[action.node_id])
        else:
            coro = self._act(action, addresses[action.node_id], source, snapshot)
            if source is not None and not _holds(snapshot, action.node_id, source.sha256):
                self._fetching.add(key)  # a fetch from now on, though not yet reported
        task = asyncio.create_task(coro, name=f"placement:{key}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._ended(key))

    def _ended(self, key: tuple[str, NodeId]) -> None:
        self._running.pop(key, None)
        self._fetching.discard(key)

    async def _act(
        self,
        action: Load | Unload,
        address: str,
        source: ModelSource | None = None,
        snapshot: ClusterSnapshot | None = None,
    ) -> None:
        worker = self._clients(address)
        node_id = action.node_id
        try:
            if isinstance(action, Load):
                alias = action.entry.alias
                settings = action.entry.load_settings(source)
                timeout = self._timings.load_timeout_s
                if source is not None and not _holds(snapshot, node_id, source.sha256):
                    timeout += self._timings.download_timeout_s  # it fetches the file first
                    log.info("loading %s on %s, fetching %s from %s", alias, node_id,
                             source.name, ", ".join(source.urls))  # fmt: skip
                else:
                    log.info("loading %s on %s", alias, node_id)
                self._placed.add((alias, node_id))  # before the node reports it LOADING
                await _step(node_id, "load", worker.load(settings, timeout))
                self._failed.pop((alias, node_id), None)
            else:
                alias = action.alias
                log.info("unloading %s from %s (%s)", alias, node_id, action.why)
                call = worker.unload(alias, self._timings.unload_timeout_s)
                await _step(node_id, "unload", call)
        except _StepFailed as failed:
            log.warning("%s on %s: %s", alias, node_id, failed.reason)
            self._failed[(alias, node_id)] = (failed.reason, self._clock())
            if isinstance(action, Load):
                self._placed.discard((alias, node_id))

    async def _load_split(
        self,
        split: LoadSplit,
        addresses: Mapping[NodeId, str],
        source: ModelSource | None = None,
    ) -> None:
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
            head = self._clients(addresses[layout.head])
            timeout = self._timings.load_timeout_s
            if source is not None:
                timeout += self._timings.download_timeout_s  # the head may fetch it first
            call = head.load(split_settings(split, endpoints, source), timeout)
            self._placed.add((alias, layout.head))
            await _step(layout.head, "split load", call)
        except _StepFailed as failed:
            self._placed.discard((alias, layout.head))
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
        call = self._clients(address).start_rpc_server(
            lease, head_host, part.reserve_bytes, self._timings.rpc_server_timeout_s
        )
        lent = await _step(part.node_id, "lending for a split", call)
        if not lent.running:
            error = lent.error or "no error reported"
            raise _StepFailed(part.node_id, f"its RPC server exited: {error}")
        return lent.endpoint

    async def _stop_lease(self, stop: StopLease, address: str) -> None:
        """Stop a lease; a failure is only logged, since the orphan sweep tries again."""
        log.info("stopping lease %s on %s (%s)", stop.lease_id, stop.node_id, stop.why)
        worker = self._clients(address)
        try:
            await worker.stop_rpc_server(stop.lease_id, self._timings.stop_lease_timeout_s)
        except LlamaherdError as exc:
            log.warning("stopping lease %s on %s failed: %s", stop.lease_id, stop.node_id,
                        exc.message)  # fmt: skip


def _holds(snapshot: ClusterSnapshot | None, node_id: NodeId, sha256: str) -> bool:
    node = snapshot.node(node_id) if snapshot is not None else None
    return node is not None and holds_file(node, sha256)


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
