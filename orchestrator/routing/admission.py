"""Admission: whether a gateway takes a request for a model now, given what each replica holds
and what `llamaherd capacity` measured it can sustain within its SLO.

A pure decision (the clock reading is passed in): when every replica that could serve the
request holds its measured `max_streams` or more, the request is refused at once with an
estimate of when a stream frees (the gateway answers 429 with Retry-After, gRPC
RESOURCE_EXHAUSTED), instead of queueing it and letting latency blow past the SLO. When some
replicas are full and others are not, the full ones are named so the router does not pick
them. A replica never measured has no cap (today's behaviour), so it always admits.

With a cluster power budget (CoordinatorSettings.power_budget_w), `power_admission` refuses
every new request while the cluster draws more than the budget (cluster_draw: the up nodes'
reported power), and admits again only once the draw falls below RESUME_RATIO of it, so a
draw hovering at the budget does not flip admission on every heartbeat. Requests already
relayed are never cut: only new ones are asked. Nodes that report no power are listed as
unmeasured, not counted as drawing 0 (orchestrator.placement.power says why).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.cluster.capacity import CapacityRecord, records_by_key
from orchestrator.cluster.types import Node, NodeId
from orchestrator.routing.heat import MAX_AGE_S, node_watts

if TYPE_CHECKING:
    from orchestrator.routing.candidates import Candidate

# Bounds of the Retry-After estimate: a client told 0 would come straight back, and an
# estimate beyond a minute is more likely a stale measurement than a real wait.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
# Over the power budget: admit again below this share of it (hysteresis), and ask clients to
# come back after POWER_RETRY_AFTER_S, a few heartbeats, by when the streams that were
# running have mostly ended and the draw has been measured again.
RESUME_RATIO = 0.95
POWER_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica that could serve the request: what it holds now, what it was measured to
    sustain (None: never measured) and when the oldest request this gateway relays to it
    started (None: it relays none), on the clock of `admit`'s `now`."""

    node: str
    inflight: int
    capacity: CapacityRecord | None = None
    oldest_started: float | None = None

    @property
    def cap(self) -> int | None:
        """The most streams admitted at once; None: no cap. A node measured at 0 streams
        (not even one met the SLO) still takes one: refusing it all traffic would serve
        no one better."""
        if self.capacity is None:
            return None
        return max(self.capacity.max_streams, 1)

    @property
    def full(self) -> bool:
        cap = self.cap
        return cap is not None and self.inflight >= cap

    def frees_in_s(self, now: float) -> float:
        """About when one of its streams ends: the oldest one's start plus the measured
        time of a request, or, when its start is unknown (other gateways' requests), the
        measured time spread over the streams it holds."""
        assert self.capacity is not None
        e2e = self.capacity.e2e_s
        if self.oldest_started is not None:
            return self.oldest_started + e2e - now
        return e2e / max(self.inflight, 1)


@dataclass(frozen=True)
class Admission:
    """The decision: `admitted`, and the nodes at their measured capacity (`full`), which
    must not be chosen. A refusal carries `retry_after_s` and a `reason` naming the model
    and each replica's capacity."""

    admitted: bool
    full: frozenset[str] = frozenset()
    retry_after_s: int = 0
    reason: str = ""


def admit(model: str, replicas: Sequence[ReplicaLoad], now: float) -> Admission:
    """Admits a request for `model` unless every replica in `replicas` is full. No replicas
    at all admits too: whatever explains that (not loaded, down) is routing's to say."""
    full = [r for r in replicas if r.full]
    names = frozenset(r.node for r in full)
    if not replicas or len(full) < len(replicas):
        return Admission(True, names)
    wait = min(r.frees_in_s(now) for r in full)
    retry = min(max(math.ceil(wait), MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)
    held = ", ".join(_held(r) for r in full)
    reason = f"model {model!r} is at its measured capacity: {held}; retry in about {retry} s"
    return Admission(False, names, retry, reason)


@dataclass(frozen=True)
class MeasuredCaps:
    """The measured caps of one model's replicas in one snapshot, prepared once so that
    admitting a request costs what this gateway's own requests cost, not a pass over the
    fleet: `records` holds the replicas with a measurement that applies (capacity
    .records_by_key), `full_on_report` those whose reported load alone reaches their cap."""

    model: str
    records: Mapping[NodeId, CapacityRecord] = field(default_factory=dict)
    full_on_report: frozenset[NodeId] = frozenset()

    def full(self, inflight: Mapping[tuple[NodeId, str], int]) -> set[NodeId]:
        """The replicas at their cap once this gateway's in-flight counts (fresher than
        the reports, per (node, model)) are counted: a replica's load is the larger of
        the two (routing.candidates.Candidate.load). Whether each can serve the request
        at all is not checked here."""
        full = set(self.full_on_report)
        records = self.records
        for (node, model), count in inflight.items():
            record = records.get(node) if model == self.model else None
            if record is not None and count >= max(record.max_streams, 1):
                full.add(node)
        return full


def measured_caps(
    model: str, replicas: Iterable[Candidate], capacities: Iterable[CapacityRecord]
) -> MeasuredCaps:
    """The MeasuredCaps of `replicas` (one model's replicas in one snapshot, with no local
    in-flight count): a replica with a record is capped at ReplicaLoad.cap."""
    by_key = records_by_key(capacities)
    records: dict[NodeId, CapacityRecord] = {}
    full: list[NodeId] = []
    for replica in replicas:
        record = by_key.get((replica.node_id, model, replica.replica.config.n_ctx))
        if record is None:
            continue
        records[replica.node_id] = record
        if ReplicaLoad(replica.node_id, replica.load, record).full:
            full.append(replica.node_id)
    return MeasuredCaps(model, records, frozenset(full))


def _held(replica: ReplicaLoad) -> str:
    assert replica.capacity is not None
    return (
        f"{replica.node} holds {replica.inflight} of {replica.cap} streams "
        f"(measured at {replica.capacity.slo})"
    )


# ---- the cluster power budget ----------------------------------------------------------------


@dataclass(frozen=True)
class ClusterDraw:
    """What the up nodes draw now: `per_node` for the measured ones; `unmeasured` report
    no power (no figure, or a sample too old), so `watts` is a lower bound when there are
    any."""

    per_node: Mapping[NodeId, float] = field(default_factory=dict)
    unmeasured: tuple[NodeId, ...] = ()

    @property
    def watts(self) -> float:
        """The measured nodes' draw, summed (exactly rounded: the same whatever the order
        of per_node, so a DrawTracker's draw equals cluster_draw's)."""
        return math.fsum(self.per_node.values())

    @property
    def measured(self) -> tuple[NodeId, ...]:
        """The nodes that report their power, sorted."""
        return tuple(sorted(self.per_node))

    def text(self) -> str:
        """ "310 W", with the unmeasured nodes named: "310 W (b, c report no power)"."""
        text = f"{self.watts:.0f} W"
        if self.unmeasured:
            names = ", ".join(self.unmeasured[:3]) + (", ..." if len(self.unmeasured) > 3 else "")
            verb = "reports" if len(self.unmeasured) == 1 else "report"
            text += f" ({len(self.unmeasured)} unmeasured: {names} {verb} no power)"
        return text


def cluster_draw(nodes: Iterable[Node], now: float, max_age_s: float = MAX_AGE_S) -> ClusterDraw:
    """The draw of the up nodes among `nodes` at `now` (the clock of their samples'
    `taken_at`): each node's heat.node_watts, its Jetson board total or its discrete GPUs'
    draw."""
    per_node: dict[NodeId, float] = {}
    unmeasured: list[NodeId] = []
    for node in nodes:
        if not node.up:
            continue
        watts = node_watts(node.telemetry, now, max_age_s)
        if watts is None:
            unmeasured.append(node.node_id)
        else:
            per_node[node.node_id] = watts
    return ClusterDraw(per_node, tuple(sorted(unmeasured)))


# Window edges closer than this to a reading are looked at again at the next one: `fresh`
# compares |now - taken_at| with max_age_s, and the edges taken_at ± max_age_s are rounded.
_EDGE_S = 1e-6


class DrawTracker:
    """cluster_draw kept up to date a change at a time: `changed` costs what the changed
    nodes cost (and the samples that turned stale or fresh meanwhile), not a pass over the
    fleet, and `draw()` equals cluster_draw over the same nodes at the same `now`.

    A node's draw depends on the reading's time only through its sample's freshness, the
    window taken_at ± max_age_s, so the windows' edges wait in a heap and a sample is
    looked at again only once the clock crosses one. Edges of samples since replaced stay
    in the heap until it is rebuilt (when it holds twice as many as there are nodes), so
    it stays within a small multiple of the fleet. `changed` refuses a clock that goes
    back (False): `reset` then."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self._max_age_s = max_age_s
        self._now = -math.inf
        # Up nodes reporting a draw: their sample's time and that draw (fresh or not).
        self._reports: dict[NodeId, tuple[float, float]] = {}
        self._per_node: dict[NodeId, float] = {}  # up nodes with a fresh draw
        self._unmeasured: set[NodeId] = set()  # the other up nodes
        self._sorted: list[NodeId] | None = []  # the same, sorted (None: to sort)
        self._edges: list[tuple[float, NodeId]] = []  # a heap of the windows' edges

    def reset(self, nodes: Iterable[Node], now: float) -> None:
        """Forgets every node, then takes `nodes` (all of them) at `now`."""
        self._reports.clear()
        self._per_node.clear()
        self._unmeasured.clear()
        self._sorted = None  # sorted once, at the end, rather than kept sorted node by node
        self._edges.clear()
        self._now = now
        for node in nodes:
            self._take(node)
        self._sorted = sorted(self._unmeasured)

    def changed(self, nodes: Iterable[Node], removed: Iterable[NodeId], now: float) -> bool:
        """The nodes with ids `removed` left, then `nodes` (new values of nodes, or new
        ones) changed, at `now`; False (and nothing done) when `now` is before the last."""
        if now < self._now:
            return False
        self._now = now
        for node_id in removed:
            self._forget(node_id)
        for node in nodes:
            self._take(node)
        self._cross_edges()
        return True

    def draw(self) -> ClusterDraw:
        assert self._sorted is not None
        return ClusterDraw(dict(self._per_node), tuple(self._sorted))

    def _take(self, node: Node) -> None:
        """`node`'s new value: its report, its edges, and measured or not now."""
        node_id, sample = node.node_id, node.telemetry
        if not node.up:
            self._forget(node_id)
            return
        watts = None if sample is None else node_watts(sample, sample.taken_at, self._max_age_s)
        if sample is None or watts is None:
            self._reports.pop(node_id, None)
            self._place(node_id, None)
            return
        self._reports[node_id] = (sample.taken_at, watts)
        for edge in (sample.taken_at - self._max_age_s, sample.taken_at + self._max_age_s):
            if edge > self._now - _EDGE_S:
                heapq.heappush(self._edges, (edge, node_id))
        fresh = abs(self._now - sample.taken_at) <= self._max_age_s  # heat.fresh
        self._place(node_id, watts if fresh else None)

    def _place(self, node_id: NodeId, watts: float | None) -> None:
        """An up node measured at `watts`, or unmeasured (None)."""
        if watts is not None:
            self._per_node[node_id] = watts
            self._unlist(node_id)
            return
        self._per_node.pop(node_id, None)
        if node_id not in self._unmeasured:
            self._unmeasured.add(node_id)
            if self._sorted is not None:
                bisect.insort(self._sorted, node_id)

    def _forget(self, node_id: NodeId) -> None:
        self._reports.pop(node_id, None)
        self._per_node.pop(node_id, None)
        self._unlist(node_id)

    def _unlist(self, node_id: NodeId) -> None:
        if node_id in self._unmeasured:
            self._unmeasured.remove(node_id)
            if self._sorted is not None:
                del self._sorted[bisect.bisect_left(self._sorted, node_id)]

    def _cross_edges(self) -> None:
        """Looks again at the samples whose window starts or ends by now."""
        looked: set[NodeId] = set()
        near: list[tuple[float, NodeId]] = []  # edges at about now: looked at next time too
        edges, now = self._edges, self._now
        while edges and edges[0][0] <= now + _EDGE_S:
            entry = heapq.heappop(edges)
            looked.add(entry[1])
            if entry[0] > now - _EDGE_S:
                near.append(entry)
        for entry in near:
            heapq.heappush(edges, entry)
        for node_id in looked:
            report = self._reports.get(node_id)
            if report is not None:
                taken_at, watts = report
                fresh = abs(now - taken_at) <= self._max_age_s
                self._place(node_id, watts if fresh else None)
        if len(edges) > 2 * len(self._reports) + 64:  # mostly replaced samples' edges
            m = self._max_age_s
            self._edges = [
                (edge, node_id)
                for node_id, (taken_at, _) in self._reports.items()
                for edge in (taken_at - m, taken_at + m)
                if edge > now - _EDGE_S
            ]
            heapq.heapify(self._edges)


@dataclass(frozen=True)
class PowerAdmission:
    """Whether new requests are admitted under the power budget. `refusing` is the state to
    pass to the next call (the hysteresis); a refusal carries `retry_after_s` and a
    `reason` naming the budget and the draw."""

    admitted: bool = True
    refusing: bool = False
    retry_after_s: int = 0
    reason: str = ""


def power_admission(draw: ClusterDraw, budget_w: float, refusing: bool) -> PowerAdmission:
    """Refuses new requests while `draw` is over `budget_w`; once refusing (`refusing`, the
    last decision's), until it falls below RESUME_RATIO of the budget."""
    resume_w = RESUME_RATIO * budget_w
    over = draw.watts > budget_w or (refusing and draw.watts >= resume_w)
    if not over:
        return PowerAdmission()
    reason = (
        f"the cluster is over its power budget of {budget_w:g} W: it draws {draw.text()}; "
        f"new requests are admitted again below {resume_w:g} W"
    )
    return PowerAdmission(False, True, POWER_RETRY_AFTER_S, reason)
