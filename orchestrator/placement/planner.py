"""The placement planner: what to load and unload so the cluster matches the catalog.

A pure function of the catalog, the nodes as last reported and the memory estimates the
controller gathered from the workers (only a worker can read its own GGUF files). It does
no I/O, so the controller (orchestrator.placement.controller) can run it every round and
tests can run it on hand-built nodes.

Rules, in short:
- Only up nodes count. A node holds a model when its replica is DOWNLOADING, LOADING or
  READY: a download in progress is neither failed nor ready, and no other node is given a
  replica because of it, unless it runs past the download timeout (the controller's clock:
  Downloads.overdue), when it is unloaded there with that reason.
- An entry short of replicas goes to nodes that carry its labels and whose estimate fits
  in their free memory, ranked by the scorers in orchestrator.placement.scorers: a node
  that holds the model's file first, then the one ready soonest (the file's size over the
  node's measured download rate, or the assumed link rate), then the fastest (reference
  decode speed measured by each worker; unmeasured nodes last), then the one with the most
  memory left after the load. Free memory is charged for every load planned earlier in
  the same plan (catalog order), and so is the disk of nodes that fetch a file.
- A store entry (model: NAME) is placed only once its name resolves in the store (else a
  problem says how to add it). Nodes that lack its file are candidates too when their
  model disk has room for it (sources.disk_refusal says otherwise, with the numbers); their
  memory estimate comes from the coordinator (the controller's business, not the plan's).
- A first rollout goes peer to peer: while no up node holds a verified copy of a store
  file, at most `Downloads.store_fetches_per_file` nodes (default 1) fetch it from the
  store at once (a node reporting it DOWNLOADING, a load the controller has started, or one
  planned earlier in the same plan); further replicas of any entry backed by that file
  wait, with "waiting for NODE to finish fetching NAME (peer-to-peer rollout)", until a
  node holds it, and then fetch from that peer (sources.source_for puts peers first). A
  download past its timeout, or one that failed, no longer counts, so the others fall
  back to the store.
- An entry with too many READY replicas loses the ones the coordinator trusts least,
  judged only by what it saw itself (Provenance), never by what a node reports: first
  those it did not load itself, then the ones it saw last, then the least loaded. So a
  node that announces a catalog model READY (an operator's manual load, or a forged
  report) is the one unloaded; it can never make a replica the coordinator placed and
  watched serving surplus. Loading replicas are never unloaded (workers refuse), and they
  do not make a READY one surplus: the plan waits until they are ready rather than trade
  a serving replica for a hope.
- Models not in the catalog (loaded by an operator) are never touched.
- When an entry cannot get all its replicas, a PlacementProblem says why, node by node.
- Under a cluster power budget (orchestrator.placement.power), a node whose new replica
  would take the draw expected after the loads planned so far (catalog order) past the
  budget is refused in those words, like a node without the memory: a node whose replica
  fits is chosen over a faster one whose does not, and a split is charged for every node
  it spans.
- Splits (orchestrator.placement.split): an entry with split_nodes >= 2 is only ever placed
  as one replica spread over that many nodes; one with split_nodes 0 is split when it has
  no holder and no single node took it. A split head counts as a holder like any replica.
  A split whose head reports it FAILED (a helper died) is unloaded and its leases stopped,
  so the next round splits afresh over the nodes left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.collector import collector_paused
from common.memory import MemoryEstimate, format_bytes
from common.status import ModelState, ModelStatus
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import Node, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.eligibility import HOLDING_STATES, node_refusal
from orchestrator.placement.leases import StopLease, leases_of
from orchestrator.placement.power import PowerFigures, PowerLedger
from orchestrator.placement.scorers import Fit, ranked
from orchestrator.placement.sources import (
    StoreModel,
    disk_refusal,
    download_seconds,
    unknown_model,
)
from orchestrator.placement.split import SplitLinks, SplitPlan, plan_split

# What the entry needs on the node, or the reason the node could not say.
Estimates = Mapping[tuple[str, NodeId], MemoryEstimate | str]


@dataclass(frozen=True)
class Provenance:
    """What the coordinator itself saw of one replica (alias on node), by its own clock:
    nothing here comes from a node's report, so no report can change it."""

    first_seen: float  # when the controller first saw the node hold the model
    placed: bool = False  # the controller's own load (or split) put it there


# (alias, node) -> provenance; a replica missing here is one the coordinator knows nothing
# of: trusted least, like one first seen just now.
Provenances = Mapping[tuple[str, NodeId], Provenance]

SURPLUS = "more replicas than the catalog wants"
DEFAULT_LINK_BYTES_PER_SECOND = 12_500_000.0  # 100 Mbit/s, when nothing says otherwise


@dataclass(frozen=True)
class Downloads:
    """What placement knows of store models and of fetching them, as of this round.

    `models`: for each store entry's alias, its store model, or why its name does not
    resolve (an entry missing here has not been resolved: it is not placed). `link_rates`:
    each node's last measured download rate (bytes/s), `assumed_rate` for the others.
    `overdue`: (alias, node) of downloads past the timeout, with the reason. `pending`:
    (alias, node) of store loads the controller has started that fetch the file, which the
    node may not report yet. `store_fetches_per_file`: how many nodes may fetch one file
    from the store at once while no node holds it (0: no limit, every node fetches from
    the store as soon as it is placed).
    """

    models: Mapping[str, StoreModel | str] = field(default_factory=dict)
    link_rates: Mapping[NodeId, float] = field(default_factory=dict)
    assumed_rate: float = DEFAULT_LINK_BYTES_PER_SECOND
    overdue: Mapping[tuple[str, NodeId], str] = field(default_factory=dict)
    pending: frozenset[tuple[str, NodeId]] = frozenset()
    store_fetches_per_file: int = 1

    def model(self, entry: CatalogEntry) -> StoreModel | str | None:
        """The entry's store model, or why there is none; None for an entry with a path."""
        if entry.store_name is None:
            return None
        return self.models.get(entry.alias, unknown_model(entry.store_name))

    def rate(self, node_id: NodeId) -> float:
        return self.link_rates.get(node_id) or self.assumed_rate


@dataclass(frozen=True)
class Load:
    """Load `entry` on `node_id`."""

    node_id: NodeId
    entry: CatalogEntry


@dataclass(frozen=True)
class LoadSplit:
    """Load `entry` as one replica spread over the nodes of `plan`: the helpers lend their
    devices first, then the head loads the model using them."""

    plan: SplitPlan
    entry: CatalogEntry

    @property
    def node_id(self) -> NodeId:
        return self.plan.head


@dataclass(frozen=True)
class Unload:
    """Unload `alias` from `node_id`."""

    node_id: NodeId
    alias: str
    why: str = SURPLUS


Action = Load | LoadSplit | Unload | StopLease


@dataclass(frozen=True)
class Plan:
    loads: tuple[Load, ...] = ()
    unloads: tuple[Unload, ...] = ()
    problems: tuple[PlacementProblem, ...] = ()
    splits: tuple[LoadSplit, ...] = ()
    stops: tuple[StopLease, ...] = ()

    @property
    def actions(self) -> tuple[Action, ...]:
        """Loads, splits, unloads, then lease stops, in plan order, for a caller that
        starts them alike."""
        return (*self.loads, *self.splits, *self.unloads, *self.stops)

    @property
    def empty(self) -> bool:
        """Nothing to do and nothing to report."""
        return not (self.actions or self.problems)


@collector_paused()
def estimates_needed(
    catalog: Sequence[CatalogEntry], nodes: Sequence[Node], downloads: Downloads | None = None
) -> list[tuple[CatalogEntry, NodeId]]:
    """The (entry, node) pairs whose estimates plan() will read: for each entry short of
    replicas, the up nodes that carry its labels and have no replica of it in any state.
    For a store entry, only the nodes that hold its file can estimate it (the worker reads
    the file); the others are sized by the coordinator (store_candidates).

    Asking for nothing more keeps a round cheap: estimating reads GGUF metadata on the
    worker, and a healthy cluster needs no estimate at all.
    """
    up = _Up(nodes)
    downloads = downloads or Downloads()
    needed: list[tuple[CatalogEntry, NodeId]] = []
    for entry in catalog:
        model = downloads.model(entry)
        if isinstance(model, str) or _holder_count(entry, up, downloads) >= entry.replicas:
            continue
        needed += [
            (entry, node_id)
            for node_id in up.candidates(entry)
            if model is None or up.holds_file(node_id, model.sha256)
        ]
    return needed


@collector_paused()
def store_candidates(
    catalog: Sequence[CatalogEntry], nodes: Sequence[Node], downloads: Downloads
) -> list[tuple[CatalogEntry, StoreModel, NodeId]]:
    """The store entries short of replicas and the up nodes lacking their file that could
    take them: the pairs the coordinator sizes itself, since those nodes cannot."""
    up = _Up(nodes)
    pairs: list[tuple[CatalogEntry, StoreModel, NodeId]] = []
    for entry in catalog:
        model = downloads.model(entry)
        if not isinstance(model, StoreModel):
            continue
        if _holder_count(entry, up, downloads) >= entry.replicas:
            continue
        pairs += [
            (entry, model, node_id)
            for node_id in up.candidates(entry)
            if not up.holds_file(node_id, model.sha256)
        ]
    return pairs


@collector_paused()
def plan(
    catalog: Sequence[CatalogEntry],
    nodes: Sequence[Node],
    estimates: Estimates,
    provenance: Provenances | None = None,
    downloads: Downloads | None = None,
    capacities: Sequence[CapacityRecord] = (),
    links: SplitLinks | None = None,
    power: PowerFigures | None = None,
) -> Plan:
    """Loads and unloads that bring the up nodes toward the catalog, and the problems
    that stop it. The same inputs always give the same plan.

    `provenance` orders surplus replicas for unloading (see Provenance); without it, every
    replica is equally unknown and the least loaded go first. `downloads` resolves store
    entries and times their fetches (see Downloads). `capacities` (llamaherd capacity)
    rank the nodes measured with power by streams per watt (scorers.most_streams_per_watt).
    `links`: the link round trips between nodes, for splits (split.SplitLinks). `power`:
    the cluster's power budget and draw (power.power_figures), spent as replicas are
    planned; None: no budget."""
    budget = PowerLedger(power) if power is not None else None
    per_watt = {(r.model, NodeId(r.node)): spw for r in capacities if (spw := r.streams_per_watt)}
    up = _Up(nodes)
    downloads = downloads or Downloads()
    free = {node.node_id: node.memory_free for node in up.nodes}  # charged as loads are planned
    # Charged as fetches are planned; None: the node does not say.
    disk = {node.node_id: node.status.model_disk_free_bytes for node in up.nodes}
    # sha256 -> the nodes fetching that file now, and those this plan sends to fetch it.
    fetching = _fetching(catalog, up, downloads)
    loads: list[Load] = []
    splits: list[LoadSplit] = []
    unloads: list[Unload] = []
    stops: list[StopLease] = []
    problems: list[PlacementProblem] = []
    for entry in catalog:
        failed_unloads, failed_stops = _failed_splits(entry, up)
        unloads += failed_unloads
        stops += failed_stops
        unloads += [
            Unload(node_id, alias, why)
            for (alias, node_id), why in sorted(downloads.overdue.items())
            if alias == entry.alias
        ]
        holders = _holder_count(entry, up, downloads)
        if holders >= entry.replicas:
            unloads += _surplus(entry, up, provenance or {})
            continue
        model = downloads.model(entry)
        if isinstance(model, str):
            problems.append(PlacementProblem(entry.alias, model))
            continue
        fetch = _Fetch(model, disk, downloads, up, fetching) if model is not None else None
        placed, split, problem = _fill(
            entry, holders, up, free, estimates, fetch, per_watt, links, budget
        )
        loads += placed
        splits += split
        if problem is not None:
            problems.append(problem)
    return Plan(tuple(loads), tuple(unloads), tuple(problems), tuple(splits), tuple(stops))


@dataclass(frozen=True)
class _Fetch:
    """A store entry's file, the disk left on each node (charged as fetches are planned)
    and the rates it travels at."""

    model: StoreModel
    disk: dict[NodeId, int | None]
    downloads: Downloads
    up: _Up
    fetching: dict[str, list[NodeId]]

    def overdue(self, alias: str, node: Node) -> str | None:
        """Why the node's download of the file is being given up, None if it is not."""
        return self.downloads.overdue.get((alias, node.node_id))

    def refusal(self, node: Node) -> str | None:
        """Why `node` cannot get the file, None when it holds it or has room for it."""
        if self.up.holds_file(node.node_id, self.model.sha256):
            return None
        return disk_refusal(self.model, self.disk[node.node_id])

    def fit(self, node: Node) -> tuple[bool, float]:
        """Whether the node holds the file, and the seconds it would take to fetch it."""
        if self.up.holds_file(node.node_id, self.model.sha256):
            return True, 0.0
        return False, download_seconds(self.model.size_bytes, self.downloads.rate(node.node_id))

    def waiting(self, node_id: NodeId, has_file: bool | None) -> str | None:
        """Why `node_id`, lacking the file, waits for a peer to fetch it first; None when
        it holds the file, a peer holds it (it fetches from that peer), it is fetching it
        already, or the store may serve one more fetch of it."""
        limit = self.downloads.store_fetches_per_file
        fetchers = self.fetching.get(self.model.sha256, [])
        if has_file or limit <= 0 or node_id in fetchers or len(fetchers) < limit:
            return None
        if self.up.file_holders(self.model.sha256):
            return None
        return (
            f"waiting for {', '.join(fetchers)} to finish fetching {self.model.name} "
            "(peer-to-peer rollout)"
        )

    def charge(self, node_id: NodeId, has_file: bool | None) -> None:
        disk = self.disk[node_id]
        if not has_file and disk is not None:
            self.disk[node_id] = disk - self.model.size_bytes
        fetchers = self.fetching.setdefault(self.model.sha256, [])
        if not has_file and node_id not in fetchers:
            fetchers.append(node_id)


def _fill(
    entry: CatalogEntry,
    holders: int,
    up: _Up,
    free: dict[NodeId, int],
    estimates: Estimates,
    fetch: _Fetch | None = None,
    per_watt: Mapping[tuple[str, NodeId], float] | None = None,
    links: SplitLinks | None = None,
    budget: PowerLedger | None = None,
) -> tuple[list[Load], list[LoadSplit], PlacementProblem | None]:
    """Single-node loads or a split for the replicas `entry` lacks, and the problem if short."""
    if entry.split_nodes >= 2:
        split = _split(entry, up.nodes, free, estimates, links, budget)
        if isinstance(split, LoadSplit):
            return [], [split], None
        return [], [], PlacementProblem(entry.alias, "cannot split: " + split)
    loads, problem, waits = _place(entry, holders, up, free, estimates, fetch, per_watt, budget)
    if (
        problem is None
        or loads
        or holders
        or waits  # its file is on its way to a peer: the replica comes from there, whole
        or entry.split_nodes == 1
        or not _can_split_here(up.nodes)
    ):
        return loads, [], problem
    # No node holds it or can take it alone: spread one replica over several.
    split = _split(entry, up.nodes, free, estimates, links, budget)
    if isinstance(split, LoadSplit):
        return [], [split], None
    return [], [], PlacementProblem(entry.alias, f"{problem.reason}; cannot split: {split}")


def _split(
    entry: CatalogEntry,
    up: Sequence[Node],
    free: dict[NodeId, int],
    estimates: Estimates,
    links: SplitLinks | None = None,
    budget: PowerLedger | None = None,
) -> LoadSplit | str:
    """A split of `entry` charged to `free` (and to the power budget), or why there is
    none."""
    mine = {n.node_id: e for n in up if (e := estimates.get((entry.alias, n.node_id))) is not None}
    result = plan_split(entry, up, mine, free, links)
    if isinstance(result, str):
        return result
    if budget is not None:
        spans = [part.node_id for part in result.parts]
        refusal = budget.refusal(entry.alias, spans)
        if refusal is not None:
            return f"{', '.join(spans)}: {refusal}"
        budget.charge(entry.alias, spans)
    for part in result.parts:
        free[part.node_id] -= part.reserve_bytes
    return LoadSplit(result, entry)


def _can_split_here(up: Sequence[Node]) -> bool:
    """Whether any up node can take part in a split at all. Without one, an entry that
    fits no node is explained by the single-node refusals alone."""
    return any("RPC" in node.hardware.backends for node in up)


def _failed_splits(entry: CatalogEntry, up: _Up) -> tuple[list[Unload], list[StopLease]]:
    """Unloads of split replicas their heads report FAILED, and stops of their leases.

    Unlike a failed single-node load, a failed split is worth trying again: it fails when
    a helper dies, and the next round can split over the nodes that are left.
    """
    unloads: list[Unload] = []
    stops: list[StopLease] = []
    for node, replica in up.replicas(entry.alias):
        if replica.state is not ModelState.FAILED:
            continue
        if not replica.config.rpc_servers:  # a single-node failure: not retried
            continue
        why = "its split failed: " + (replica.error or "no error reported")
        unloads.append(Unload(node.node_id, entry.alias, why))
        stops += [StopLease(helper, lease.lease_id, why)
                  for helper, lease in leases_of(entry.alias, node.node_id, up.nodes)]  # fmt: skip
    return unloads, stops


def _place(
    entry: CatalogEntry,
    holders: int,
    up: _Up,
    free: dict[NodeId, int],
    estimates: Estimates,
    fetch: _Fetch | None = None,
    per_watt: Mapping[tuple[str, NodeId], float] | None = None,
    budget: PowerLedger | None = None,
) -> tuple[list[Load], PlacementProblem | None, bool]:
    """Loads for the replicas `entry` lacks, charged to `free` (and the disk of nodes that
    fetch the file), the problem if short, and whether a replica waits for a peer to fetch
    the file first."""
    chosen: list[Fit] = []
    waiting: dict[NodeId, str] = {}
    fits = _fits(entry, up, free, estimates, fetch, per_watt or {}, budget)
    # The caller places only an entry short of replicas (holders < entry.replicas).
    for fit in ranked(fits, first=entry.replicas - holders):
        wait = fetch.waiting(fit.node_id, fit.has_file) if fetch is not None else None
        if wait is not None:
            waiting[fit.node_id] = wait
            continue
        # It fitted the budget before this entry's earlier replicas were charged.
        if budget is not None and not budget.fits(entry.alias, [fit.node_id]):
            continue
        chosen.append(fit)
        free[fit.node_id] = fit.free_after
        if fetch is not None:
            fetch.charge(fit.node_id, fit.has_file)
        if budget is not None:
            budget.charge(entry.alias, [fit.node_id])
        if holders + len(chosen) >= entry.replicas:
            break  # before asking `ranked` for more than it needs
    loads = [Load(fit.node_id, entry) for fit in chosen]
    placed = holders + len(chosen)
    if placed >= entry.replicas:
        return loads, None, bool(waiting)
    # Short: every node that could take it took it or waits, so each other one was refused
    # (its free memory and disk are as they were when the fits were made).
    taken = {fit.node_id for fit in chosen}
    refusals = {
        node.node_id: refusal
        for node in up.nodes
        if node.node_id not in taken
        and node.node_id not in waiting
        and (refusal := _node_refusal(entry, node, estimates, free, fetch, budget)) is not None
    }
    refusals.update(waiting)
    return (
        loads,
        PlacementProblem(entry.alias, _shortfall(entry, placed, up.nodes, refusals)),
        bool(waiting),
    )


def _fits(
    entry: CatalogEntry,
    up: _Up,
    free: Mapping[NodeId, int],
    estimates: Estimates,
    fetch: _Fetch | None,
    per_watt: Mapping[tuple[str, NodeId], float],
    budget: PowerLedger | None = None,
) -> list[Fit]:
    """The nodes that can take `entry` now, with the figures the scorers read: those
    _node_refusal finds no reason to refuse, found without writing the reasons (they are
    written only for an entry left short)."""
    alias = entry.alias
    spw = {node_id: v for (a, node_id), v in per_watt.items() if a == alias}
    tps = up.reference_tps
    fits: list[Fit] = []
    for node_id in up.candidates(entry):
        need = estimates.get((alias, node_id))
        if not isinstance(need, MemoryEstimate):
            continue
        free_after = free[node_id] - need.total_bytes
        if free_after < 0:
            continue
        # A path entry's file is the operator's business: has_file stays None (neutral).
        has_file: bool | None = None
        download_s = 0.0
        if fetch is not None:
            node = up.by_id[node_id]
            if fetch.overdue(alias, node) is not None or fetch.refusal(node) is not None:
                continue
            has_file, download_s = fetch.fit(node)
        if budget is not None and not budget.fits(alias, [node_id]):
            continue
        spw_here = spw.get(node_id, 0.0) if spw else 0.0
        fits.append(Fit(node_id, tps[node_id], free_after, has_file, download_s, spw_here))
    return fits


def _node_refusal(
    entry: CatalogEntry,
    node: Node,
    estimates: Estimates,
    free: Mapping[NodeId, int],
    fetch: _Fetch | None,
    budget: PowerLedger | None = None,
) -> str | None:
    """Why `entry` cannot be loaded on `node` now, its download and the power budget
    included, or None."""
    refusal = fetch.overdue(entry.alias, node) if fetch is not None else None
    if refusal is None:
        need = estimates.get((entry.alias, node.node_id))
        refusal = _refusal(entry, node, need, free[node.node_id])
    if refusal is None and fetch is not None:
        refusal = fetch.refusal(node)
    if refusal is None and budget is not None:
        refusal = budget.refusal(entry.alias, [node.node_id])
    return refusal


def _refusal(
    entry: CatalogEntry, node: Node, need: MemoryEstimate | str | None, free: int
) -> str | None:
    """Why `entry` cannot be loaded on `node` now, or None when it can."""
    refusal = node_refusal(entry, node)
    if refusal is not None:
        return refusal
    if need is None:
        return "no memory estimate yet"
    if isinstance(need, str):
        return need  # the node's own words: "cannot estimate: ..." or "load failed there: ..."
    if need.total_bytes > free:
        return f"needs {format_bytes(need.total_bytes)}, has {format_bytes(free)} free"
    return None


def _shortfall(
    entry: CatalogEntry, placed: int, up: Sequence[Node], refusals: Mapping[NodeId, str]
) -> str:
    noun = "replica" if entry.replicas == 1 else "replicas"
    if not up:
        return f"placed {placed} of {entry.replicas} {noun}; no worker is up"
    reasons = "; ".join(f"{node_id}: {reason}" for node_id, reason in sorted(refusals.items()))
    if not reasons:  # every up node took a replica: there are just too few of them
        workers = "worker is" if len(up) == 1 else "workers are"
        reasons = f"only {len(up)} {workers} up"
    return f"placed {placed} of {entry.replicas} {noun}; {reasons}"


def _surplus(entry: CatalogEntry, up: _Up, provenance: Provenances) -> list[Unload]:
    """Unloads for READY replicas beyond `entry.replicas`, least trusted first.

    Only READY replicas beyond the wanted count go: a loading one cannot be unloaded,
    and it must not push out a serving one before it serves itself (it may yet fail).
    Trust is the coordinator's own record, never a node's report: replicas it did not
    place go before those it did, then the most recently seen before older ones (a
    newcomer's claim cannot evict what was already serving). Only then does load count
    (least loaded first, so fewer streams are cut), and equal loads go in descending node
    id order, the reverse of placement's tie-break, so the nodes placement favours keep
    their models.
    """
    ready = [(r, n.node_id) for n, r in up.replicas(entry.alias) if r.ready]
    surplus = len(ready) - entry.replicas
    if surplus <= 0:
        return []

    def distrust(item: tuple[ModelStatus, NodeId]) -> tuple[bool, float, int]:
        replica, node_id = item
        seen = provenance.get((entry.alias, node_id))
        if seen is None:
            return (False, -math.inf, replica.engine.load)
        return (seen.placed, -seen.first_seen, replica.engine.load)

    ready.sort(key=lambda rn: rn[1], reverse=True)
    ready.sort(key=distrust)  # stable: keeps descending node ids among equals
    return [Unload(node_id, entry.alias) for _, node_id in ready[:surplus]]


class _Up:
    """The up nodes of one plan, by node id, and what the plan reads of them for every
    catalog entry, looked up once: each alias's replicas, each store file's holders, each
    node's labels and speed. Scanning every node's models for every entry was most of a
    plan's time at 10,000 nodes (tests/bench/simulate_fleet.py)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = sorted((n for n in nodes if n.up), key=lambda n: n.node_id)
        self.by_id = {node.node_id: node for node in self.nodes}
        self.reference_tps = {nid: n.hardware.reference_decode_tps for nid, n in self.by_id.items()}
        self._labels = [(nid, n.hardware.labels) for nid, n in self.by_id.items()]
        # alias -> (node, its replica) in node id order; a node's first report of an alias
        # is its replica, as NodeStatus.model reads it.
        self._replicas: dict[str, list[tuple[Node, ModelStatus]]] = {}
        self._files: dict[str, set[NodeId]] = {}  # sha256 -> nodes with a verified copy
        for node in self.nodes:
            seen: set[str] = set()
            for replica in node.replicas:
                if replica.alias not in seen:
                    seen.add(replica.alias)
                    self._replicas.setdefault(replica.alias, []).append((node, replica))
            for stored in node.status.stored_files:
                self._files.setdefault(stored.sha256, set()).add(node.node_id)

    def replicas(self, alias: str) -> list[tuple[Node, ModelStatus]]:
        """The nodes reporting `alias` in any state, with their replica, by node id."""
        return self._replicas.get(alias, [])

    def candidates(self, entry: CatalogEntry) -> list[NodeId]:
        """The nodes node_refusal lets take part in placing `entry`: no replica of it in
        any state, and every label it asks for. By node id."""
        present = {node.node_id for node, _ in self.replicas(entry.alias)}
        wanted = frozenset(entry.labels)
        if not wanted:  # most entries: no label to check on 10,000 nodes
            return [node_id for node_id in self.by_id if node_id not in present]
        return [
            node_id
            for node_id, labels in self._labels
            if node_id not in present and wanted <= labels
        ]

    def holds_file(self, node_id: NodeId, sha256: str) -> bool:
        """Whether the node reports a verified copy of the file (sources.holds_file)."""
        return node_id in self._files.get(sha256, ())

    def file_holders(self, sha256: str) -> set[NodeId]:
        return self._files.get(sha256, set())


def _fetching(
    catalog: Sequence[CatalogEntry], up: _Up, downloads: Downloads
) -> dict[str, list[NodeId]]:
    """For each store file, the up nodes fetching it now, by node id: replicas reported
    DOWNLOADING (the file named by their source, else by their catalog entry) and loads
    the controller started that fetch it, less downloads past their timeout. A failed
    download is FAILED, not DOWNLOADING, so it does not count either."""
    by_alias = {
        entry.alias: model.sha256
        for entry in catalog
        if isinstance(model := downloads.model(entry), StoreModel)
    }
    fetching: dict[str, set[NodeId]] = {}
    for node in up.nodes:
        for replica in node.replicas:
            key = (replica.alias, node.node_id)
            if replica.state is not ModelState.DOWNLOADING or key in downloads.overdue:
                continue
            source = replica.config.source
            sha256 = source.sha256 if source is not None else by_alias.get(replica.alias)
            if sha256 is not None:
                fetching.setdefault(sha256, set()).add(node.node_id)
    for alias, node_id in downloads.pending:
        sha256 = by_alias.get(alias)
        if sha256 is not None and node_id in up.by_id and (alias, node_id) not in downloads.overdue:
            fetching.setdefault(sha256, set()).add(node_id)
    return {sha256: sorted(nodes) for sha256, nodes in fetching.items()}


def _holder_count(entry: CatalogEntry, up: _Up, downloads: Downloads) -> int:
    """Nodes holding the entry, not counting downloads past their timeout (unloaded now)."""
    return sum(
        1
        for n, r in up.replicas(entry.alias)
        if r.state in HOLDING_STATES and (entry.alias, n.node_id) not in downloads.overdue
    )
