"""The placement planner: what to load and unload so the cluster matches the catalog.

A pure function of the catalog, the nodes as last reported and the memory estimates the
controller gathered from the workers (only a worker can read its own GGUF files). It does
no I/O, so the controller (orchestrator.placement.controller) can run it every round and
tests can run it on hand-built nodes.

Rules, in short:
- Only up nodes count. A node holds a model when its replica is LOADING or READY.
- An entry short of replicas goes to nodes that carry its labels and whose estimate fits
  in their free memory, the node with the most memory left after the load first. Free
  memory is charged for every load planned earlier in the same plan (catalog order).
- An entry with too many READY replicas loses the least loaded ones. Loading replicas
  are never unloaded (workers refuse), and they do not make a READY one surplus: the
  plan waits until they are ready rather than trade a serving replica for a hope.
- Models not in the catalog (loaded by an operator) are never touched.
- When an entry cannot get all its replicas, a PlacementProblem says why, node by node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.cluster.types import Node, NodeId, PlacementProblem, Replica, ReplicaState
from orchestrator.config import CatalogEntry
from worker.memory import format_bytes

# Bytes the entry needs on the node, or the reason the node could not say.
Estimates = Mapping[tuple[str, NodeId], int | str]

HOLDING_STATES = frozenset({ReplicaState.LOADING, ReplicaState.READY})


@dataclass(frozen=True)
class Load:
    """Load `entry` on `node_id`."""

    node_id: NodeId
    entry: CatalogEntry


@dataclass(frozen=True)
class Unload:
    """Unload `alias` from `node_id`."""

    node_id: NodeId
    alias: str


@dataclass(frozen=True)
class Plan:
    loads: tuple[Load, ...] = ()
    unloads: tuple[Unload, ...] = ()
    problems: tuple[PlacementProblem, ...] = ()

    @property
    def actions(self) -> tuple[Load | Unload, ...]:
        """Loads then unloads, in plan order, for a caller that starts them alike."""
        return (*self.loads, *self.unloads)

    @property
    def empty(self) -> bool:
        """Nothing to do and nothing to report."""
        return not (self.loads or self.unloads or self.problems)


def estimates_needed(
    catalog: Sequence[CatalogEntry], nodes: Sequence[Node]
) -> list[tuple[CatalogEntry, NodeId]]:
    """The (entry, node) pairs whose estimates plan() will read: for each entry short of
    replicas, the up nodes that carry its labels and have no replica of it in any state.

    Asking for nothing more keeps a round cheap: estimating reads GGUF metadata on the
    worker, and a healthy cluster needs no estimate at all.
    """
    up = _up_sorted(nodes)
    needed: list[tuple[CatalogEntry, NodeId]] = []
    for entry in catalog:
        if _holder_count(entry.alias, up) >= entry.replicas:
            continue
        needed += [
            (entry, node.node_id)
            for node in up
            if node.replica(entry.alias) is None and not _missing_labels(entry, node)
        ]
    return needed


def plan(catalog: Sequence[CatalogEntry], nodes: Sequence[Node], estimates: Estimates) -> Plan:
    """Loads and unloads that bring the up nodes toward the catalog, and the problems
    that stop it. The same inputs always give the same plan."""
    up = _up_sorted(nodes)
    free = {node.node_id: node.memory_free for node in up}  # charged as loads are planned
    loads: list[Load] = []
    unloads: list[Unload] = []
    problems: list[PlacementProblem] = []
    for entry in catalog:
        holders = _holder_count(entry.alias, up)
        if holders < entry.replicas:
            placed, problem = _place(entry, holders, up, free, estimates)
            loads += placed
            if problem is not None:
                problems.append(problem)
        else:
            unloads += _surplus(entry, up)
    return Plan(tuple(loads), tuple(unloads), tuple(problems))


def _place(
    entry: CatalogEntry,
    holders: int,
    up: Sequence[Node],
    free: dict[NodeId, int],
    estimates: Estimates,
) -> tuple[list[Load], PlacementProblem | None]:
    """Loads for the replicas `entry` lacks, charged to `free`, and the problem if short."""
    fitting: list[tuple[int, NodeId]] = []  # (memory left after the load, node)
    refusals: dict[NodeId, str] = {}
    for node in up:
        need = estimates.get((entry.alias, node.node_id))
        refusal = _refusal(entry, node, need, free[node.node_id])
        if refusal is not None:
            refusals[node.node_id] = refusal
        elif isinstance(need, int):  # always: _refusal refuses anything else
            fitting.append((free[node.node_id] - need, node.node_id))
    # Most memory left first spreads models over the cluster; node id breaks ties.
    fitting.sort(key=lambda left_node: (-left_node[0], left_node[1]))
    chosen = fitting[: entry.replicas - holders]
    for left, node_id in chosen:
        free[node_id] = left
    loads = [Load(node_id, entry) for _, node_id in chosen]
    placed = holders + len(chosen)
    if placed >= entry.replicas:
        return loads, None
    return loads, PlacementProblem(entry.alias, _shortfall(entry, placed, up, refusals))


def _refusal(entry: CatalogEntry, node: Node, need: int | str | None, free: int) -> str | None:
    """Why `entry` cannot be loaded on `node` now, or None when it can."""
    replica = node.replica(entry.alias)
    if replica is not None:
        return _present_reason(replica)
    missing = _missing_labels(entry, node)
    if missing:
        return "lacks labels " + ", ".join(missing)
    if need is None:
        return "no memory estimate yet"
    if isinstance(need, str):
        return need  # the node's own words: "cannot estimate: ..." or "load failed there: ..."
    if need > free:
        return f"needs {format_bytes(need)}, has {format_bytes(free)} free"
    return None


def _present_reason(replica: Replica) -> str:
    """Why a node that already reports the alias takes no new load of it."""
    if replica.state in HOLDING_STATES:
        return "already holds it"
    if replica.state is ReplicaState.FAILED:
        # Loading again where it failed would fail again (a missing file, too little
        # memory) every round; an operator's unload clears the way.
        return "failed there: " + (replica.error or "no error reported")
    return "still unloading it"  # the worker refuses a load until the unload finishes


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


def _surplus(entry: CatalogEntry, up: Sequence[Node]) -> list[Unload]:
    """Unloads for READY replicas beyond `entry.replicas`, least loaded first.

    Only READY replicas beyond the wanted count go: a loading one cannot be unloaded,
    and it must not push out a serving one before it serves itself (it may yet fail).
    Equal loads go in descending node id order, the reverse of placement's tie-break,
    so the nodes placement favours keep their models.
    """
    ready = [(r, n.node_id) for n in up if (r := n.replica(entry.alias)) is not None and r.ready]
    surplus = len(ready) - entry.replicas
    if surplus <= 0:
        return []
    ready.sort(key=lambda rn: rn[1], reverse=True)
    ready.sort(key=lambda rn: rn[0].load)  # stable: keeps descending node ids among equals
    return [Unload(node_id, entry.alias) for _, node_id in ready[:surplus]]


def _up_sorted(nodes: Sequence[Node]) -> list[Node]:
    return sorted((n for n in nodes if n.up), key=lambda n: n.node_id)


def _holder_count(alias: str, up: Sequence[Node]) -> int:
    return sum(1 for n in up if (r := n.replica(alias)) is not None and r.state in HOLDING_STATES)


def _missing_labels(entry: CatalogEntry, node: Node) -> list[str]:
    return sorted(set(entry.labels) - node.hardware.labels)
