"""Which nodes may serve a request for a model now, and why each other node may not.

A pure filter over a ClusterSnapshot: the gateway passes the snapshot, the clock reading,
its own in-flight counts and the nodes that already failed this request; it gets back the
eligible candidates and a Rejection for every other node. route() then hands the request
and the candidates to the routing policy. The rejections are what a client
reads when nothing can serve it, so each one names its cause precisely.

route() does not filter every node per request: what the snapshot alone decides (the node
is up and holds the model READY for the task) is prepared once per snapshot and model (a
ReplicaTable, kept in the snapshot's memo), and a CandidatePool applies only what is this
request's own (the nodes that failed it, this gateway's in-flight counts) to the replicas a
policy looks at: all of them (CandidatePool.eligible, what candidates_for gives), or a random
sample of them (CandidatePool.sample) for a policy that scores a sample of a large fleet.
Every node's reason is worked out only when nothing can serve.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from common.hardware import HardwareInfo
from common.memory import format_bytes
from common.status import DownloadProgress, ModelState, ModelStatus
from common.telemetry import NodeSample
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.routing.request import RouteRequest, Task

if TYPE_CHECKING:  # policies import Candidate from here: avoid the import cycle at run time
    from orchestrator.routing.policies import RoutingPolicy

ALREADY_FAILED = "already failed this request"
NOT_LOADED = "model not loaded"
EMBEDDINGS_ONLY = "serves embeddings only"
OVERLOADED = "overloaded: "


@dataclass(frozen=True)
class Candidate:
    """A node that holds the model READY and can take one more request for it.

    Frozen, so its derived figures (load, load_per_slot) are worked out once: a snapshot's
    candidates are reused for every request routed on it (ReplicaTable)."""

    node_id: NodeId
    address: str
    hardware: HardwareInfo
    replica: ModelStatus
    inflight: int = 0  # requests this gateway is relaying to that node for that model now
    telemetry: NodeSample | None = None  # the node's latest sample (heat, power); None: none

    @functools.cached_property
    def load(self) -> int:
        """Requests the node holds for the model, the best we know.

        The reported load is up to a heartbeat stale but covers every gateway; the local
        count is fresh but covers this gateway only. Either is a lower bound, so take the
        larger.
        """
        return max(self.replica.engine.load, self.inflight)

    @functools.cached_property
    def load_per_slot(self) -> float:
        """Load spread over the replica's decoding slots."""
        return self.load / max(self.replica.engine.slots_total, 1)


@dataclass(frozen=True)
class Rejection:
    """A node that cannot take the request, and why. `overloaded`: only because its queue
    for the model is full, so the same request may succeed there moments later."""

    node_id: NodeId
    reason: str
    overloaded: bool = False


class UnknownModel(Exception):
    """No node reports the model in any state: the client named a model nobody serves."""

    def __init__(self, alias: str, available: list[str]) -> None:
        self.alias = alias
        self.available = available  # sorted aliases some node reports, in any state
        listed = ", ".join(available) if available else "none"
        super().__init__(f"model {alias!r} is not served; models: {listed}")


class NoCandidate(Exception):
    """Some node knows the model, but none can take this request now."""

    def __init__(self, alias: str, rejections: tuple[Rejection, ...]) -> None:
        self.alias = alias
        self.rejections = rejections
        reasons = "; ".join(f"{r.node_id}: {r.reason}" for r in rejections) or "no workers"
        super().__init__(f"no worker can serve model {alias!r} now: {reasons}")

    @property
    def overloaded(self) -> bool:
        """Whether some replica would take the request once its queue drains: the client
        should come back later (429), rather than the cluster being unable to serve (503)."""
        return any(r.overloaded for r in self.rejections)


def candidates_for(
    snapshot: ClusterSnapshot,
    alias: str,
    *,
    now: float,
    inflight: Mapping[tuple[NodeId, str], int] | None = None,
    exclude: Collection[NodeId] = (),
    task: Task | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Splits the snapshot's nodes into candidates for `alias` and rejections.

    `now` is on the clock of the snapshot's report times. `inflight` holds this gateway's
    running requests per (node, alias); `exclude` the nodes that already failed this
    request; `task` the kind of replica wanted (None: either). Both lists follow node id
    order, so the same inputs always give the same outputs.
    """
    counts = inflight or {}
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    for node in sorted(snapshot.nodes, key=lambda n: n.node_id):
        local = counts.get((node.node_id, alias), 0)
        reason = _rejection_reason(node, alias, now=now, inflight=local, exclude=exclude, task=task)
        if reason is not None:
            overloaded = reason.startswith(OVERLOADED)
            rejections.append(Rejection(node.node_id, reason, overloaded))
            continue
        replica = node.replica(alias)
        assert replica is not None  # _rejection_reason refuses nodes without it
        candidates.append(
            Candidate(
                node_id=node.node_id,
                address=node.address,
                hardware=node.hardware,
                replica=replica,
                inflight=local,
                telemetry=node.telemetry,
            )
        )
    return candidates, rejections


def route(
    snapshot: ClusterSnapshot,
    request: RouteRequest,
    *,
    now: float,
    policy: RoutingPolicy,
    inflight: Mapping[tuple[NodeId, str], int] | None = None,
    exclude: Collection[NodeId] = (),
) -> Candidate:
    """The candidate `policy` picks for `request` among the replicas of its alias that
    serve its task.

    A policy with a `choose_among(request, pool)` method gets the CandidatePool (and may
    score a sample of a large one); any other gets every candidate, in node id order.
    Raises UnknownModel when no node reports the alias at all (a wrong name, most likely)
    and NoCandidate, with every node's reason, when nodes know it but none can serve now.
    """
    alias = request.alias
    if alias not in snapshot.holders:
        raise UnknownModel(alias, known_aliases(snapshot))
    pool = CandidatePool(snapshot, alias, request.task, now=now, inflight=inflight, exclude=exclude)
    choose_among: Callable[[RouteRequest, CandidatePool], Candidate] | None = getattr(
        policy, "choose_among", None
    )
    if choose_among is not None:
        return choose_among(request, pool)
    return policy.choose(request, pool.eligible())


@dataclass(frozen=True, eq=False)
class ReplicaTable:
    """The replicas of one model that one snapshot alone lets serve a kind of request: on
    up nodes, READY, of the right kind (not embeddings-only for `generate`), in node id
    order, each as a Candidate with no local in-flight count. What is left to check per
    request (CandidatePool) is the nodes that failed it and this gateway's in-flight
    counts. Built once per snapshot, alias and task by replica_table()."""

    alias: str
    candidates: tuple[Candidate, ...]
    # Whether each replica's queue has room on its reported figures (no local count).
    room: tuple[bool, ...]
    positions: Mapping[NodeId, int]  # node id -> index in `candidates`
    keys: tuple[tuple[NodeId, str], ...]  # (node id, alias): the in-flight counts' keys
    # Figures policies derive from the whole table, once (CandidatePool.table_rates).
    derived: dict[object, list[float]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.candidates)


def replica_table(snapshot: ClusterSnapshot, alias: str, task: Task | None) -> ReplicaTable:
    """The ReplicaTable of `alias` for `task` in `snapshot`, built on first use and kept in
    the snapshot's memo (a snapshot never changes)."""
    key = (_TABLE_KEY, alias, task)
    table = snapshot.memo.get(key)
    if table is None:
        table = _build_table(snapshot.holders.get(alias, ()), alias, task)
        snapshot.memo[key] = table
    return cast(ReplicaTable, table)


_TABLE_KEY = "routing.candidates.ReplicaTable"


def _node_of(key: tuple[NodeId, str]) -> str:
    return key[0]


def _build_table(holders: Iterable[Node], alias: str, task: Task | None) -> ReplicaTable:
    candidates: list[Candidate] = []
    room: list[bool] = []
    for node in holders:
        replica = next((r for r in node.replicas if r.alias == alias), None)
        # The checks of _rejection_reason that depend on the snapshot alone.
        if not node.up or replica is None or not replica.ready:
            continue
        if task == "generate" and replica.config.embedding:
            continue
        candidates.append(
            Candidate(node.node_id, node.address, node.hardware, replica, 0, node.telemetry)
        )
        room.append(_overload_reason(replica, 0) is None)
    positions = {c.node_id: i for i, c in enumerate(candidates)}
    keys = tuple((c.node_id, alias) for c in candidates)
    return ReplicaTable(alias, tuple(candidates), tuple(room), positions, keys)


class CandidatePool:
    """The candidates for one request: the snapshot's ReplicaTable for its model and task,
    less this request's own refusals (nodes in `exclude`, replicas whose queue this
    gateway's in-flight counts fill), applied only to the replicas a policy looks at.

    len() is the table's size, an upper bound on the candidates (exact when nothing is
    excluded or full). eligible() and sample() never return an empty list: when nothing
    can serve they raise NoCandidate with every node's reason (candidates_for).
    """

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        alias: str,
        task: Task | None,
        *,
        now: float,
        inflight: Mapping[tuple[NodeId, str], int] | None = None,
        exclude: Collection[NodeId] = (),
    ) -> None:
        self._snapshot = snapshot
        self._alias = alias
        self._task = task
        self._now = now
        self._inflight = inflight or {}
        self._exclude = exclude
        self.table = replica_table(snapshot, alias, task)
        self._eligible: list[Candidate] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def eligible(self) -> list[Candidate]:
        """Every candidate, in node id order: what candidates_for returns as candidates."""
        if self._eligible is None:
            found = [self._at(i) for i in range(len(self.table))]
            self._eligible = [c for c in found if c is not None]
        if not self._eligible:
            raise self.refusal()
        return self._eligible

    def sample(
        self, rng: random.Random, size: int, include: Iterable[NodeId] = ()
    ) -> list[Candidate]:
        """Up to `size` distinct candidates drawn at random (rng) from the table, plus those
        of the nodes in `include` that are candidates (a session's node, say), in that
        order: the nodes in `include` first, then the draw.

        Drawn replicas that cannot serve this request are dropped, not replaced, so a
        sample may hold fewer than `size`; when the draw holds none, `size` are drawn
        from every candidate instead (eligible()). Never a node that cannot serve.
        """
        indexes, changed = self.draw(rng, size, include)
        candidates = self.table.candidates
        return [changed.get(i, candidates[i]) for i in indexes]

    def draw(
        self, rng: random.Random, size: int, include: Iterable[NodeId] = ()
    ) -> tuple[list[int], dict[int, Candidate]]:
        """sample() as the candidates' indexes in the table (to read figures kept by index,
        such as table_figures'), in the same order, and the candidates among them that
        differ from the table's own (a local in-flight count), by index: the sample is
        [changed.get(i, table.candidates[i]) for i in indexes]. The cheap form, for a
        policy that scores the sample from figures prepared per table."""
        table = self.table
        picked: list[int] = []
        seen: set[int] = set()
        changed: dict[int, Candidate] = {}
        for node_id in include:
            index = table.positions.get(node_id)
            if index is not None and index not in seen and self._admit(index, changed):
                picked.append(index)
                seen.add(index)
        wanted = len(picked)
        n = len(table)
        # Drawn with replacement (random.sample costs twice as much): a repeat is dropped
        # like a replica that cannot serve.
        drawn = rng.choices(range(n), k=size) if size < n else range(n)
        # The common case inline (a call per replica costs as much as the rest): not
        # excluded, no local count, room on the report; anything else takes _admit().
        room, keys, inflight, exclude = table.room, table.keys, self._inflight, self._exclude
        for index in drawn:
            if index in seen:
                continue
            seen.add(index)
            if not exclude and not inflight.get(keys[index]):
                if room[index]:
                    picked.append(index)
            elif self._admit(index, changed):
                picked.append(index)
        if len(picked) == wanted:  # the draw found none: draw among those that can serve
            positions = table.positions
            every = self.eligible()
            for found in rng.sample(every, min(size, len(every))):
                index = positions[found.node_id]
                if index not in seen:
                    seen.add(index)
                    picked.append(index)
                    if found is not table.candidates[index]:
                        changed[index] = found
        return picked, changed

    def following(self, node_id: str | None) -> Candidate:
        """The first candidate in node id order whose id comes after `node_id`, else the
        first of all (None: the first of all): a rotation's next turn, found by bisection
        instead of a scan of every candidate."""
        table = self.table
        start = 0 if node_id is None else bisect.bisect_right(table.keys, node_id, key=_node_of)
        n = len(table)
        for step in range(n):
            found = self._at((start + step) % n)
            if found is not None:
                return found
        raise self.refusal()

    def _admit(self, index: int, changed: dict[int, Candidate]) -> bool:
        """Whether the table's replica at `index` can serve this request; its candidate
        goes into `changed` when it is not the table's own."""
        found = self._at(index)
        if found is None:
            return False
        if found is not self.table.candidates[index]:
            changed[index] = found
        return True

    def table_rates(
        self,
        candidates: Sequence[Candidate],
        estimate: Callable[[Sequence[Candidate]], list[float]],
    ) -> list[float]:
        """The figures `estimate` gives `candidates` when it sees the whole table, not
        only them (an estimate that compares replicas, such as a decode rate scaled from
        the measured ones): worked out once per table and `estimate`."""
        figures = self.table_figures(estimate)
        positions = self.table.positions
        return [figures[positions[c.node_id]] for c in candidates]

    def table_figures(self, estimate: Callable[[Sequence[Candidate]], list[float]]) -> list[float]:
        """`estimate` of the whole table, in table order: worked out once per table."""
        figures = self.table.derived.get(estimate)
        if figures is None:
            figures = estimate(self.table.candidates)
            self.table.derived[estimate] = figures
        return figures

    def refusal(self) -> NoCandidate:
        """Why no node can serve this request: every node's reason (candidates_for)."""
        _, rejections = candidates_for(
            self._snapshot, self._alias, now=self._now, inflight=self._inflight,
            exclude=self._exclude, task=self._task,
        )  # fmt: skip
        return NoCandidate(self._alias, tuple(rejections))

    def _at(self, index: int) -> Candidate | None:
        """The table's candidate at `index` as this request sees it, or None when it
        cannot serve this request (the checks of _rejection_reason left per request)."""
        static = self.table.candidates[index]
        if static.node_id in self._exclude:
            return None
        local = self._inflight.get((static.node_id, self._alias), 0)
        if local == 0:
            return static if self.table.room[index] else None
        replica = static.replica
        if local > replica.engine.load:  # a fresher count than the report: may fill it
            if _overload_reason(replica, local) is not None:
                return None
        elif not self.table.room[index]:
            return None
        return Candidate(static.node_id, static.address, static.hardware, replica, local,
                         static.telemetry)  # fmt: skip


def known_aliases(snapshot: ClusterSnapshot) -> list[str]:
    """Every alias some node reports, in any state, down nodes included, sorted."""
    return sorted({r.alias for node in snapshot.nodes for r in node.replicas})


def _rejection_reason(
    node: Node,
    alias: str,
    *,
    now: float,
    inflight: int,
    exclude: Collection[NodeId],
    task: Task | None,
) -> str | None:
    """Why `node` cannot take a request for `alias`, or None when it can.

    Checks run from the node outward to the replica: a down node's last report says
    nothing reliable about its models, and a node that failed this request is not retried
    whatever it reports.
    """
    if not node.up:
        return "down: " + (node.down_reason or f"last report {now - node.last_report:.1f} s ago")
    if node.node_id in exclude:
        return ALREADY_FAILED
    replica = node.replica(alias)
    if replica is None:
        return NOT_LOADED
    # The kind first: it is permanent, while loading or a full queue will pass.
    if task == "generate" and replica.config.embedding:
        return EMBEDDINGS_ONLY
    if replica.state is ModelState.FAILED:
        return "model failed to load: " + (replica.error or "no error reported")
    if replica.download is not None and replica.state is ModelState.DOWNLOADING:
        return "model downloading: " + _progress(replica.download)
    if not replica.ready:
        return f"model {replica.state.value}"  # loading, downloading, draining, unloading
    return _overload_reason(replica, inflight)


def _progress(download: DownloadProgress) -> str:
    """How far a download is, for a client told to come back later."""
    if download.attempt == 0:
        return f"waiting for a download slot ({format_bytes(download.bytes_total)})"
    done = f"{format_bytes(download.bytes_done)} of {format_bytes(download.bytes_total)}"
    return done + (f", about {download.eta_s:.0f} s left" if download.eta_s > 0 else "")


def _overload_reason(replica: ModelStatus, inflight: int) -> str | None:
    """Why the worker would refuse one more request for this replica, or None.

    The worker refuses a request when the model is busy (every slot running or someone
    already waiting) and `max_queue` requests wait. So max_queue 0 means "no waiting",
    not "no limit": a busy replica is full. This gateway's own in-flight count adds a
    fresher lower bound on the waiting line than the last heartbeat: of `inflight`
    requests at the node, at most `slots_total` run.
    """
    slots = max(replica.engine.slots_total, 1)
    load = max(replica.engine.load, inflight)
    waiting = max(replica.engine.queued, load - slots)
    busy = waiting > 0 or load >= slots
    if not busy or waiting < replica.config.max_queue:
        return None
    if replica.config.max_queue == 0:
        return OVERLOADED + "busy, and max_queue 0 lets no request wait"
    noun = "request" if waiting == 1 else "requests"
    return OVERLOADED + f"{waiting} {noun} waiting (max_queue {replica.config.max_queue})"
