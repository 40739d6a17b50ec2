"""Splitting one model's layers across nodes: which nodes take part, how many layers each.

llama.cpp's ggml RPC backend lets a "head" worker use devices that other nodes lend it
(StartRpcServer). The head keeps the first layers with the embeddings and the output; the
last n_gpu_layers layers go to the lent devices in tensor_split proportions, in the order of
rpc_servers. A plan therefore lists the head first, then the helpers in layer order.

A pure function like the planner: every input is in the signature, it does no I/O, and the
same inputs give the same plan whatever the order of the nodes.

Rules, in short:
- A node takes part only if it is up, carries the entry's labels, has the RPC backend, has
  no replica of the alias in any state, lends nothing to the alias yet, and sent a memory
  estimate with layer figures.
- A head holding h of the n layers needs estimate.without_layers(n - h).total_bytes free;
  a helper holding k layers needs k * layer_bytes + layer_compute_bytes.
- The fewest nodes that hold every layer (exactly split_nodes when that is 2 or more);
  among as many, the fastest set by reference speed (unmeasured nodes last), then the one
  with the most free memory. The head is the member that gives the quickest token (the
  least sum of layers / speed over the members), the fastest on a tie.
- Layers follow speed (an unmeasured node counts as the median of the measured ones), are
  capped by each node's memory, and every member gets at least one.
- With link round trips known (SplitLinks), a token is estimated to cost its compute plus
  k x RTT for each helper, k the head <-> helper round trips per token that
  tests/bench/bench_split_rtt.py measures: among sets of as many nodes, the nearest set may
  replace the fastest when its estimate is better; the head is the member with the best
  estimate (the nearest, among equals); and a split estimated below min_tokens_per_second
  is not made. Without known round trips, or with equal ones, the plan is as above.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.memory import MemoryEstimate, format_bytes
from common.model_settings import RPC_MAX_SERVERS
from orchestrator.cluster.types import Node, NodeId
from orchestrator.config import CatalogEntry
from orchestrator.placement.eligibility import node_refusal
from orchestrator.placement.leases import lease_owner

MAX_NODES = RPC_MAX_SERVERS + 1  # the head and as many helpers as llama.cpp accepts

# A node's estimate for the entry, or the reason it could not give one.
SplitEstimates = Mapping[NodeId, MemoryEstimate | str]

# Synchronous head <-> helper round trips per decoded token: ggml's RPC client sends a
# helper its inputs and the graph without waiting, then waits once for the output
# (GET_TENSOR). tests/bench/bench_split_rtt.py counted 0.98 and fitted 1.0-1.1 (BENCHMARKS.md,
# "Link latency: the k x RTT fit for a two-host split").
ROUND_TRIPS_PER_TOKEN = 1.0


@dataclass(frozen=True)
class SplitLinks:
    """What the planner knows of the links between nodes.

    `rtt_s`: each node's link round trip in seconds, what its own link adds to a round trip
    with any other node (about its ping to a wired host on the same switch: a fraction of a
    millisecond wired, several over Wi-Fi); between two nodes the planner assumes the sum
    of theirs. A node missing here counts as 0. `round_trips_per_token`: k, see
    ROUND_TRIPS_PER_TOKEN. `min_tokens_per_second`: a split whose estimate is lower is not
    made (0: any); only estimates from measured reference speeds are held to it.
    """

    rtt_s: Mapping[NodeId, float] = field(default_factory=dict)
    round_trips_per_token: float = ROUND_TRIPS_PER_TOKEN
    min_tokens_per_second: float = 0.0

    def between(self, a: NodeId, b: NodeId) -> float:
        """The round trip assumed between nodes `a` and `b`, in seconds."""
        return self.rtt_s.get(a, 0.0) + self.rtt_s.get(b, 0.0)

    def known_for(self, node_ids: Sequence[NodeId]) -> bool:
        """Whether any of these nodes has a round trip above zero."""
        return any(self.rtt_s.get(node_id, 0.0) > 0 for node_id in node_ids)


def split_links(
    nodes: Sequence[Node], rtt_ms: Mapping[str, float], min_tokens_per_second: float = 0.0
) -> SplitLinks:
    """The links as configured (the coordinator's link_rtts): each node's round trip is the
    largest of the milliseconds given for its node id or any of its labels, 0 when none."""
    rtt_s = {}
    for node in nodes:
        named = [rtt_ms[key] for key in (node.node_id, *node.hardware.labels) if key in rtt_ms]
        if named:
            rtt_s[node.node_id] = max(named) / 1e3
    return SplitLinks(rtt_s, min_tokens_per_second=min_tokens_per_second)


@dataclass(frozen=True)
class SplitPart:
    """Consecutive layers on one node, and the memory it sets aside for them."""

    node_id: NodeId
    first_layer: int
    n_layers: int
    reserve_bytes: int

    @property
    def span(self) -> str:
        last = self.first_layer + self.n_layers - 1
        return str(last) if last == self.first_layer else f"{self.first_layer}-{last}"


@dataclass(frozen=True)
class SplitPlan:
    """One replica of `alias` spread over nodes: the head's part first, then the helpers'."""

    alias: str
    parts: tuple[SplitPart, ...]
    # Estimated decode tokens/s with the link round trips, when they and every member's
    # reference speed are known; for explanations, not part of the plan's identity.
    tokens_per_second: float | None = field(default=None, compare=False)

    @property
    def head(self) -> NodeId:
        return self.parts[0].node_id

    @property
    def helpers(self) -> tuple[SplitPart, ...]:
        return self.parts[1:]

    @property
    def n_gpu_layers(self) -> int:
        """Layers on the lent devices: llama.cpp offloads the last n_gpu_layers."""
        return sum(part.n_layers for part in self.helpers)

    @property
    def tensor_split(self) -> tuple[float, ...]:
        """Each helper's layer count, in rpc_servers order: llama.cpp's proportions."""
        return tuple(float(part.n_layers) for part in self.helpers)

    @property
    def explanation(self) -> str:
        head, *helpers = self.parts
        spans = [f"layers {head.span} on {head.node_id} (head)"]
        text = ", ".join(spans + [f"{part.span} on {part.node_id}" for part in helpers])
        if self.tokens_per_second is not None:
            text += f" (about {self.tokens_per_second:.1f} tokens/s with its link round trips)"
        return text


@dataclass(frozen=True)
class _Candidate:
    """A node that may take part, with the most layers it can hold in either role."""

    node_id: NodeId
    speed: float
    free: int
    estimate: MemoryEstimate
    head_layers: int  # as the head; 0 = it cannot be the head
    helper_layers: int  # as a helper; 0 = it cannot be a helper


def plan_split(
    entry: CatalogEntry,
    nodes: Sequence[Node],
    estimates: SplitEstimates,
    free: Mapping[NodeId, int] | None = None,
    links: SplitLinks | None = None,
) -> SplitPlan | str:
    """Where `entry`'s layers go across nodes, or why they cannot be split now.

    `free` overrides nodes' reported free memory (the planner charges loads it planned
    before this one); a node missing from it has its reported figure. `links`: the link
    round trips, which make the planner prefer nearer nodes (see SplitLinks).
    """
    if entry.split_nodes == 1:
        return "split_nodes is 1: never split"
    refusals: dict[NodeId, str] = {}
    usable: list[tuple[Node, MemoryEstimate]] = []
    for node in sorted((n for n in nodes if n.up), key=lambda n: n.node_id):
        estimate = estimates.get(node.node_id)
        reason = _exclusion(entry, node, estimate)
        if reason is not None:
            refusals[node.node_id] = reason
        elif isinstance(estimate, MemoryEstimate):  # always: _exclusion refuses the rest
            usable.append((node, estimate))
    if not usable:
        return _refusal("no node can take part", refusals)
    n = _layer_count(usable, refusals)
    candidates = _candidates(usable, n, free or {}, refusals)
    if entry.split_nodes == 0:
        alone = next((c for c in candidates if c.head_layers >= n), None)
        if alone is not None:
            return f"fits on {alone.node_id} alone; no split needed"
    if links is not None and not links.known_for([c.node_id for c in candidates]):
        links = None  # no round trip known: nothing to weigh
    too_slow: str | None = None
    for size in _sizes(entry.split_nodes, len(candidates)):
        members = _fastest_set(candidates, size, n)
        if not members:
            continue
        if links is None:
            return _assign(entry.alias, members, n)
        plan = _nearest(entry.alias, candidates, members, n, links)
        if plan.tokens_per_second is not None and (
            plan.tokens_per_second < links.min_tokens_per_second
        ):
            # More nodes may still do better (faster ones), though each adds round trips.
            too_slow = too_slow or (
                f"the best split ({plan.explanation}) is below the "
                f"{links.min_tokens_per_second:g} tokens/s a split must reach"
            )
            continue
        return plan
    if too_slow is not None:
        return _refusal(too_slow, refusals)
    return _refusal(_shortfall(entry.split_nodes, candidates, n), refusals)


def _exclusion(
    entry: CatalogEntry, node: Node, estimate: MemoryEstimate | str | None
) -> str | None:
    """Why `node` cannot take part in splitting `entry`, or None when it can."""
    refusal = node_refusal(entry, node)
    if refusal is not None:
        return refusal
    if "RPC" not in node.hardware.backends:
        return "lacks the RPC backend"
    if any((owner := lease_owner(lease.lease_id)) and owner[0] == entry.alias
           for lease in node.rpc_leases):  # fmt: skip
        return "already lends to it"
    if estimate is None:
        return "no memory estimate yet"
    if isinstance(estimate, str):
        return estimate
    if estimate.n_layers < 1 or estimate.layer_bytes < 1:
        return "its estimate has no per-layer figures (an older worker?)"
    return None


def _layer_count(usable: list[tuple[Node, MemoryEstimate]], refusals: dict[NodeId, str]) -> int:
    """The model's layer count: what most nodes say. A node that disagrees reads a different
    file under the same path, so it cannot hold layers of this one."""
    counts = Counter(estimate.n_layers for _, estimate in usable)
    n = max(counts, key=lambda layers: (counts[layers], layers))
    for node, estimate in usable:
        if estimate.n_layers != n:
            refusals[node.node_id] = f"its file has {estimate.n_layers} layers, not {n}"
    return n


def _candidates(
    usable: list[tuple[Node, MemoryEstimate]],
    n: int,
    free: Mapping[NodeId, int],
    refusals: dict[NodeId, str],
) -> list[_Candidate]:
    """The usable nodes with room for a layer, fastest first, then the most free memory."""
    candidates = []
    for node, estimate in usable:
        if estimate.n_layers != n:
            continue
        room = free.get(node.node_id, node.memory_free)
        candidate = _Candidate(
            node_id=node.node_id,
            speed=node.hardware.reference_decode_tps,
            free=room,
            estimate=estimate,
            head_layers=_head_layers(estimate, room, n),
            helper_layers=min(
                n, max(0, room - estimate.layer_compute_bytes) // estimate.layer_bytes
            ),
        )
        if candidate.head_layers or candidate.helper_layers:
            candidates.append(candidate)
        else:
            one = estimate.layer_bytes + estimate.layer_compute_bytes
            refusals[node.node_id] = (
                f"has {format_bytes(room)} free, too little for one layer ({format_bytes(one)})"
            )
    # Unmeasured nodes (speed 0) sort last; the node id breaks ties.
    return sorted(candidates, key=lambda c: (-c.speed, -c.free, c.node_id))


def _head_layers(estimate: MemoryEstimate, free: int, n: int) -> int:
    """The most of the n layers a node can hold as the head; 0 when not even one."""
    for held in range(n, 0, -1):
        if estimate.without_layers(n - held).total_bytes <= free:
            return held
    return 0


def _sizes(split_nodes: int, available: int) -> range:
    """The numbers of nodes to try, fewest first."""
    if split_nodes >= 2:
        return range(split_nodes, split_nodes + 1)
    return range(2, min(available, MAX_NODES) + 1)


def _fastest_set(candidates: list[_Candidate], size: int, n: int) -> list[_Candidate]:
    """The fastest `size` candidates that hold all n layers, or [] when no set does.

    Greedy in preference order: a candidate joins when the set can still be completed
    from the candidates after it. So the fastest node that can belong to a working set
    does, then the fastest that can join it, and so on.
    """
    if n < size or _most_layers([], candidates, size) < n:
        return []
    chosen: list[_Candidate] = []
    for i, candidate in enumerate(candidates):
        if len(chosen) == size:
            break
        if _most_layers([*chosen, candidate], candidates[i + 1 :], size) >= n:
            chosen.append(candidate)
    return chosen


def _most_layers(chosen: list[_Candidate], rest: list[_Candidate], size: int) -> int:
    """The most layers a set of `size` holds that contains `chosen` and fills up from
    `rest`, whichever member is the head; 0 when no such set works at all."""
    best = 0
    for head in [*chosen, *rest]:
        fixed = [c for c in chosen if c is not head]
        if head.head_layers < 1 or any(c.helper_layers < 1 for c in fixed):
            continue
        pool = sorted(
            (c.helper_layers for c in rest if c is not head and c.helper_layers >= 1),
            reverse=True,
        )
        missing = size - 1 - len(fixed)
        if missing < 0 or len(pool) < missing:
            continue
        held = head.head_layers + sum(c.helper_layers for c in fixed) + sum(pool[:missing])
        best = max(best, held)
    return best


def _nearest(
    alias: str, candidates: list[_Candidate], fastest: list[_Candidate], n: int, links: SplitLinks
) -> SplitPlan:
    """The better of the fastest set and the nearest set of as many nodes, by estimated
    time per token with the link round trips (the fastest on a tie)."""
    plans = [_assign(alias, fastest, n, links)]
    nearest_first = sorted(
        candidates, key=lambda c: (links.rtt_s.get(c.node_id, 0.0), -c.speed, -c.free, c.node_id)
    )
    nearest = _fastest_set(nearest_first, len(fastest), n)
    if nearest and {m.node_id for m in nearest} != {m.node_id for m in fastest}:
        plans.append(_assign(alias, nearest, n, links))
    return min(plans, key=lambda plan: _token_seconds(plan, candidates, n, links))


def _token_seconds(
    plan: SplitPlan, candidates: list[_Candidate], n: int, links: SplitLinks
) -> float:
    """A token's estimated seconds on `plan`: each member's share of the layers at its
    reference speed (unmeasured: the median of the measured), plus k x RTT per helper."""
    speed = {c.node_id: c.speed for c in candidates}
    weights = _weights([speed[part.node_id] for part in plan.parts])
    compute = sum(part.n_layers / n / w for part, w in zip(plan.parts, weights, strict=True))
    return compute + _link_seconds(plan.head, [p.node_id for p in plan.helpers], links)


def _link_seconds(head: NodeId, helpers: Sequence[NodeId], links: SplitLinks | None) -> float:
    """What the round trips between the head and its helpers add to a token."""
    if links is None:
        return 0.0
    return links.round_trips_per_token * sum(links.between(head, h) for h in helpers)


def _assign(
    alias: str, members: list[_Candidate], n: int, links: SplitLinks | None = None
) -> SplitPlan:
    """Layer counts for a set known to hold all n layers, head first."""
    speeds = _weights([m.speed for m in members])
    weight = {m.node_id: w for m, w in zip(members, speeds, strict=True)}
    layouts = []
    for rank, head in enumerate(members):
        if not _holds(head, members, n):
            continue
        ordered = [head, *(m for m in members if m is not head)]
        caps = [head.head_layers] + [m.helper_layers for m in ordered[1:]]
        counts = _proportional(n, [weight[m.node_id] for m in ordered], caps)
        # A token passes every layer in turn: the head that lets the fast nodes take the
        # most layers gives the quickest token. Ties go to the preferred node. The sum is
        # n x seconds per token, so the round trips count n times (nothing without links).
        token_time = sum(c / weight[m.node_id] for m, c in zip(ordered, counts, strict=True))
        token_time += n * _link_seconds(head.node_id, [m.node_id for m in ordered[1:]], links)
        layouts.append((token_time, rank, ordered, counts))
    _, _, ordered, counts = min(layouts, key=lambda layout: layout[:2])
    parts, first = [], 0
    for i, (member, count) in enumerate(zip(ordered, counts, strict=True)):
        estimate = member.estimate
        if i == 0:
            reserve = estimate.without_layers(n - count).total_bytes
        else:
            reserve = count * estimate.layer_bytes + estimate.layer_compute_bytes
        parts.append(SplitPart(member.node_id, first, count, reserve))
        first += count
    plan = SplitPlan(alias, tuple(parts))
    if links is None or any(m.speed <= 0 for m in members):
        return plan  # no estimate in tokens/s without every member's measured speed
    return SplitPlan(alias, plan.parts, 1.0 / _token_seconds(plan, members, n, links))


def _holds(head: _Candidate, members: list[_Candidate], n: int) -> bool:
    """Whether `members` hold all n layers with `head` as the head."""
    helpers = [m for m in members if m is not head]
    if head.head_layers < 1 or any(m.helper_layers < 1 for m in helpers):
        return False
    return head.head_layers + sum(m.helper_layers for m in helpers) >= n


def _weights(speeds: list[float]) -> list[float]:
    """Speeds with each unmeasured one (0) as the median of the measured, or all equal."""
    known = [s for s in speeds if s > 0]
    fallback = statistics.median(known) if known else 1.0
    return [s if s > 0 else fallback for s in speeds]


def _proportional(n: int, weights: list[float], caps: list[int]) -> list[int]:
    """n layers in proportion to weight, none above its cap, at least one each.

    After the one each, layers go one at a time to the member furthest below its share
    (Sainte-Lague's divisors: the least (count + 0.5) / weight) among those with room,
    which rounds fairly and puts what a full member cannot take on the others.
    """
    counts = [1] * len(weights)
    for _ in range(n - len(weights)):
        open_ = [i for i, count in enumerate(counts) if count < caps[i]]
        pick = min(open_, key=lambda i: ((counts[i] + 0.5) / weights[i], i))
        counts[pick] += 1
    return counts


def _shortfall(split_nodes: int, candidates: list[_Candidate], n: int) -> str:
    """Why no set of candidates holds the model."""
    available = len(candidates)
    if split_nodes >= 2 and available < split_nodes:
        return f"needs {split_nodes} nodes, {available} can take part"
    if split_nodes < 2 and available < 2:
        return f"needs at least 2 nodes, {available} can take part"
    fewest = max(split_nodes, 2)
    if n < fewest:
        return f"{n} {'layer' if n == 1 else 'layers'} cannot be spread over {fewest} nodes"
    size = split_nodes if split_nodes >= 2 else min(available, MAX_NODES)
    first = candidates[0].estimate
    needs = (
        f"needs {n} layers of {format_bytes(first.layer_bytes)} "
        f"(+ {format_bytes(first.layer_compute_bytes)} compute per helper)"
    )
    if not any(c.head_layers for c in candidates):
        least = min(c.estimate.without_layers(n - 1).total_bytes for c in candidates)
        return f"{needs}; no node has room for the head (at least {format_bytes(least)})"
    which = f"the best {size} of the {available}" if size < available else f"the {available}"
    return f"{needs}; {which} eligible nodes hold at most {_most_layers([], candidates, size)}"


def _refusal(summary: str, refusals: Mapping[NodeId, str]) -> str:
    details = "; ".join(f"{node_id}: {reason}" for node_id, reason in sorted(refusals.items()))
    return f"{summary}; {details}" if details else summary
