"""Routing policies: given one request and the eligible candidates for it, pick one.

A policy sees the RouteRequest (alias, task, estimated prompt size, prefix fingerprint,
session key) and only candidates (orchestrator.routing.candidates has already dropped the
nodes that cannot serve), and never does I/O; randomness comes in as an injected
random.Random so a seeded generator replays the same choices.

POLICIES is the one registry of policies by name: configuration validates against it and
make_policy builds from it, so a new policy is one class plus one line there.

Large fleets: a policy that also has `choose_among(request, pool)` is handed the request's
CandidatePool by route() instead of every candidate. The latency-scored policies
(least-expected-latency, session-affinity, tokens-per-joule) and power-of-two use it to
score a random sample of SAMPLE_SIZE candidates (power of d choices) when more than
EXACT_UP_TO replicas are ready, plus the session's node; at or below that, they score
every candidate exactly as choose() does. A sample's decode rates are estimated against
the whole table (CandidatePool.table_rates with comparable_rates), as if it were scored in
full. A new policy that scores candidates with expected_seconds can do the same: in
choose_among, take pool.eligible() below the threshold, else pool.sample(...) with the
nodes it wants (say, those holding the request's prefix) in `include`, and pass
pool.table_rates(sample, comparable_rates) to expected_seconds.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from common.prefix import matched_chars
from orchestrator.cluster.types import NodeId
from orchestrator.routing.affinity import RoutedPrefixes, SessionMemory, rendezvous
from orchestrator.routing.candidates import Candidate, CandidatePool, ReplicaTable
from orchestrator.routing.heat import MAX_AGE_S, WeightCache, heat_weight, node_watts
from orchestrator.routing.request import CHARS_PER_TOKEN, RouteRequest

# Scores within this relative distance are ties: float rounding must not decide a route.
TIE_REL_TOL = 1e-9
# session-affinity: a session stays on its node while that node's expected latency is at
# most this many times the best candidate's.
AFFINITY_GUARD = 2.0
# tokens-per-joule: only candidates expected within this factor of the best latency compete
# on efficiency, so saving energy never queues a request far behind a free node.
ENERGY_GUARD = 1.5
# Large fleets: above EXACT_UP_TO ready replicas of a model, the latency-scored policies
# score SAMPLE_SIZE of them drawn at random (plus a session's node) instead of all; the
# fleet simulator (tests/bench/simulate_fleet.py) measured the choice and its cost.
EXACT_UP_TO = 64
SAMPLE_SIZE = 16
# Measured decode rates within a factor (1 + RATE_TOLERANCE) of a group's median compare as
# equal (comparable_rates). On the routing benchmark's identical hosts one node's reported
# per-sequence rate ranged 1.3-2x between its 10th and 90th percentile within a minute, and
# three nodes' rates at one moment were 1.28-1.55x apart (median): 1.5 holds 87% of those
# moments in one group, while a Nano against an AGX (3x) or an Orin NX (about 2x) stays apart.
RATE_TOLERANCE = 0.5

# The clock of telemetry samples' taken_at: unix time.
WallClock = Callable[[], float]


class RoutingPolicy(Protocol):
    """Chooses the candidate for one request. `candidates` is never empty, and every one
    of them can serve `request` (right model, right task, not down, not overloaded).

    A policy may keep small state of its own (a round-robin cursor, say); the gateway
    calls it from one event loop, so it needs no lock.
    """

    name: str

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate: ...


class RoundRobin:
    """Takes the candidates in turn, in node id order, separately for each model.

    The cursor is the node served last rather than an index, so when a node drops out
    or joins, the rotation carries on from where it was: each remaining node still gets
    its turn, and none gets two in a row because the list shifted under an index.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._last: dict[str, str] = {}  # alias -> node id chosen last

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.node_id)
        last = self._last.get(request.alias)
        chosen = next((c for c in ordered if last is None or c.node_id > last), ordered[0])
        self._last[request.alias] = chosen.node_id
        return chosen

    def choose_among(self, request: RouteRequest, pool: CandidatePool) -> Candidate:
        """choose(), without sorting every candidate of a large pool (in node id order)."""
        if len(pool) <= EXACT_UP_TO:
            return self.choose(request, pool.eligible())
        chosen = pool.following(self._last.get(request.alias))
        self._last[request.alias] = chosen.node_id
        return chosen


class LeastLoaded:
    """The candidate with the fewest requests per slot; ties are broken at random."""

    name = "least-loaded"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        return _lowest(candidates, lambda c: c.load_per_slot, self._rng)


class PowerOfTwoChoices:
    """Two distinct candidates at random, and the less loaded (per slot) of the pair.

    Nearly as good as least-loaded with fresh figures, and better with stale ones: many
    gateways reading the same heartbeat do not all pile onto the one node that looked
    idle. The most loaded candidate of three or more is never chosen, since any pair
    that holds it holds a less loaded one too.
    """

    name = "power-of-two"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        pair = self._rng.sample(list(candidates), 2)
        return _lowest(pair, lambda c: c.load_per_slot, self._rng)

    def choose_among(self, request: RouteRequest, pool: CandidatePool) -> Candidate:
        """choose() for a large pool: the pair is drawn from the table, not every candidate."""
        if len(pool) <= EXACT_UP_TO:
            return self.choose(request, pool.eligible())
        return _lowest(pool.sample(self._rng, 2), lambda c: c.load_per_slot, self._rng)


class _LatencyScored:
    """What the latency-scored policies share: their random generator and clock, the heat
    weights they have worked out, and how they score a large pool (a sample of
    `sample_size` above `exact_up_to` ready replicas; see choose_among)."""

    def __init__(
        self,
        rng: random.Random,
        clock: WallClock = time.time,
        *,
        sample_size: int = SAMPLE_SIZE,
        exact_up_to: int = EXACT_UP_TO,
    ) -> None:
        if sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, got {sample_size}")
        self._rng = rng
        self._clock = clock
        self._heat = WeightCache()
        self._sample_size = sample_size
        self._exact_up_to = exact_up_to


class LeastExpectedLatency(_LatencyScored):
    """The candidate expected to start streaming this request's tokens soonest.

    Model: a replica with `slots_total` slots decodes each sequence at `decode_tps`
    tokens/s, and holds `load` requests. A new request of T tokens waits for about
    load/slots requests ahead of it in its slot, each taking about T/rate, then runs for
    T/rate itself:

        expected seconds ~ (load_per_slot + 1) * T / rate

    T is the same on every node, so the score is (load_per_slot + 1) / rate. This is how
    hardware capability enters routing: a Jetson Orin AGX that reports 3x the tokens/s of
    a Nano takes about 3x the load before the Nano gets a request (an idle Nano scores
    1/r, the AGX with load L scores (L + 1)/3r: the AGX wins while L < 2, ties at 2).

    Rates are compared with a tolerance (comparable_rates): rates within RATE_TOLERANCE
    (1.5x) of their group's median count as that median, since one node's measured rate
    varies that much from minute to minute. So identical nodes compare on load alone, as
    least-loaded does, while a node clearly faster (2x, 3x) keeps its larger share.

    A replica that has not measured its rate yet (decode_tps 0) is estimated from its node's
    reference speed (the same small model measured on every node at start): scaled by how
    this model's measured rates compare with their nodes' reference speeds elsewhere, or, if
    no candidate has measured it, by the reference speeds alone. A replica with neither
    gets the median of the others, or 1.0, so a new node neither attracts all traffic nor
    starves before it has served anything.

    Heat: the rate is multiplied by the node's heat weight (orchestrator.routing.heat), 1
    for a cool node and for one without fresh telemetry, lower as its hottest zone nears
    its limit and sharply lower while it reports thermal or power throttling: a hot node
    takes proportionally less new work and its share comes back as it cools.

    Ties go at random, except for a request with a session key: among tied candidates it
    goes back to the node that served the session last, else to the one its key hashes to
    (affinity.rendezvous, the same on every gateway). Only ties: a session never waits
    longer for its node than any other request would, so this cannot lose on the score.
    `clock` reads unix time, to judge how old a telemetry sample is.

    Above `exact_up_to` ready replicas (choose_among), it scores `sample_size` of them drawn
    at random, plus the session's last node: the best of a sample, not of the fleet.
    """

    name = "least-expected-latency"

    def __init__(
        self,
        rng: random.Random,
        clock: WallClock = time.time,
        sessions: SessionMemory | None = None,
        *,
        sample_size: int = SAMPLE_SIZE,
        exact_up_to: int = EXACT_UP_TO,
    ) -> None:
        super().__init__(rng, clock, sample_size=sample_size, exact_up_to=exact_up_to)
        self._sessions = sessions if sessions is not None else SessionMemory()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        return self._pick(request, candidates, comparable_rates(candidates))

    def choose_among(self, request: RouteRequest, pool: CandidatePool) -> Candidate:
        """choose() over every candidate of a small pool, over a sample of a large one."""
        if len(pool) <= self._exact_up_to:
            every = pool.eligible()
            return self._pick(request, every, _rates_of_every(pool, every))
        session = request.session
        if session is None:
            return self._sampled(pool)
        last = self._sessions.last(request.alias, session)
        include = (NodeId(last),) if last is not None else ()
        sample = pool.sample(self._rng, self._sample_size, include)
        return self._pick(request, sample, pool.table_rates(sample, comparable_rates))

    def _sampled(self, pool: CandidatePool) -> Candidate:
        """_pick() on a sample of `pool` for a request without a session, scored from the
        figures prepared once per table (idle_seconds): what a request adds is its local
        in-flight counts and the heat weights now."""
        indexes, changed = pool.draw(self._rng, self._sample_size)
        idle = pool.table_figures(idle_seconds)
        rates = pool.table_figures(comparable_rates)
        taken = pool.table_figures(_sample_times)
        heat = pool.table_figures(_unknown_heat)  # filled in below on first use
        table = pool.table.candidates
        now = self._clock()
        scored: list[tuple[float, Candidate]] = []
        for i in indexes:
            # heat.fresh() and WeightCache.weight() inline: a call costs more than this.
            weight = 1.0
            if abs(now - taken[i]) <= MAX_AGE_S:
                weight = heat[i]
                if weight != weight:  # NaN: not worked out yet
                    weight = heat[i] = heat_weight(table[i].telemetry, taken[i])
            cand = changed.get(i)
            if cand is None:  # the table's own: the reported load
                scored.append((idle[i] / weight, table[i]))
            else:
                scored.append(((cand.load_per_slot + 1) / (rates[i] * weight), cand))
        return _lowest_scored(scored, self._rng)

    def _pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], rates: Sequence[float]
    ) -> Candidate:
        """The choice among `candidates`, whose per-sequence decode rates are `rates`."""
        scores = expected_seconds(candidates, self._clock(), self._heat, rates)
        if request.session is None:
            return _lowest_scored(list(zip(scores, candidates, strict=True)), self._rng)
        best = min(scores)
        tied = [c for s, c in zip(scores, candidates, strict=True) if _close(s, best)]
        return _stick(self._sessions, request, tied, request.session)


class SessionAffinity(LeastExpectedLatency):
    """least-expected-latency, but a request with a session key returns to the node that
    served its session last while that node is a candidate and its expected latency is at
    most AFFINITY_GUARD (2x) the best candidate's; otherwise the usual choice, and the
    session moves there.

    Worth it for multi-turn chats with long histories: the node that served the last turn
    holds the conversation in its KV cache and skips recomputing it, a saving the latency
    score does not see. The guard keeps one busy session's node from queueing it far
    behind a free one. Requests without a session key route exactly as
    least-expected-latency. The default policy (see POLICIES).
    """

    name = "session-affinity"

    def _pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], rates: Sequence[float]
    ) -> Candidate:
        session = request.session
        if session is None:
            return super()._pick(request, candidates, rates)
        scores = expected_seconds(candidates, self._clock(), self._heat, rates)
        return _sticky(self._sessions, request, zip(scores, candidates, strict=True), session)


class TokensPerJoule(_LatencyScored):
    """Among the candidates expected within ENERGY_GUARD (1.5x) of the best latency (the
    least-expected-latency's heat-weighted score), the one that makes the most tokens per
    joule; where no such candidate reports its power, least-expected-latency's choice.

    Tokens per joule is the node's token rate for the model now (its per-sequence rate
    times the sequences it decodes, at least one) over what the node draws now
    (heat.node_watts: a Jetson's board power, a PC's discrete GPUs' draw). An idle node
    draws its idle power, so it looks efficient and fills first; once loaded, the figure
    reflects the work it does. Jetson and PC figures measure different boundaries (board
    against GPU only), so mixed fleets compare them only roughly. Ties go at random.
    """

    name = "tokens-per-joule"

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        return self._pick(candidates, comparable_rates(candidates))

    def choose_among(self, request: RouteRequest, pool: CandidatePool) -> Candidate:
        """choose() over every candidate of a small pool, over a sample of a large one."""
        if len(pool) <= self._exact_up_to:
            every = pool.eligible()
            return self._pick(every, _rates_of_every(pool, every))
        sample = pool.sample(self._rng, self._sample_size)
        return self._pick(sample, pool.table_rates(sample, comparable_rates))

    def _pick(self, candidates: Sequence[Candidate], rates: Sequence[float]) -> Candidate:
        now = self._clock()
        scores = expected_seconds(candidates, now, self._heat, rates)
        best = min(scores)
        efficiency: list[tuple[float, Candidate]] = []
        for score, rate, cand in zip(scores, rates, candidates, strict=True):
            watts = node_watts(cand.telemetry, now)
            if watts is None or score > ENERGY_GUARD * best * (1 + TIE_REL_TOL):
                continue
            tokens_per_s = rate * max(cand.replica.engine.active, 1)
            efficiency.append((-tokens_per_s / watts, cand))  # lowest = most tokens per joule
        if efficiency:
            return _lowest_scored(efficiency, self._rng)
        return _lowest_scored(list(zip(scores, candidates, strict=True)), self._rng)


# prefix-cache: a candidate's cached prefix counts only while its load per slot is within
# this margin of the least loaded candidate's (Ray Serve's prefix router has the same kind
# of imbalance threshold), so a hot prefix cannot pile every request onto one node.
PREFIX_LOAD_GUARD = 1.0
# prefix-cache: the reply length it assumes for the requests a candidate already holds,
# to turn its load into a wait (the gateway does not know their max_tokens).
TYPICAL_REPLY_TOKENS = 128
# prefix-cache: prefill over decode rate assumed when no candidate has measured its prefill
# (prompts are processed many tokens per step; llama.cpp on a CPU runs about 10x).
PREFILL_PER_DECODE = 10.0
# prefix-cache: the most replicas whose hash sets it keeps (a 10,000-node fleet of a few
# models each fits; past it the cache starts again).
MAX_HELD_SETS = 65_536


class PrefixCache:
    """The candidate expected to send this request's first token soonest, counting the
    prompt it would not recompute because its slots' caches hold the request's opening.

    Each worker reports the prefix hashes of what its slots hold (common.prefix); the
    request carries its own chain (RouteRequest.prefix_chain). A candidate's cached part is
    the deepest of the request's hashes it holds, in estimated tokens, at most the request's
    prompt. For each candidate:

        expected TTFT ~ load_per_slot * TYPICAL_REPLY_TOKENS / decode rate
                        + (prompt tokens - cached tokens) / prefill rate

    both rates as the default estimates them (expected_rates; prefill from prompt_tps, the
    same way) and times the node's heat weight. Load guard: the cached part counts only for
    candidates within PREFIX_LOAD_GUARD (1) requests per slot of the least loaded one.
    Where no candidate within the guard holds any of the request's opening (no chain, no
    match), it routes exactly as the default (session-affinity).

    What a node holds is what its last report says plus what this gateway sent it in the
    last few seconds (affinity.RoutedPrefixes): a conversation's next turn often comes
    before the heartbeat that reports its node's slot holding the reply. A request with a
    session key returns to its session's node while that node's expected TTFT is within
    AFFINITY_GUARD (2x) of the best, as session-affinity does: the node holds the whole
    conversation, replies included, where another holding only the same system prompt
    matches as deep in the hashes. Other ties go to a session's node, else at random.
    Decode rates are compared as the default compares them (comparable_rates; a sample's
    against its whole table).
    """

    name = "prefix-cache"

    def __init__(
        self,
        rng: random.Random,
        clock: WallClock = time.time,
        sessions: SessionMemory | None = None,
        routed: RoutedPrefixes | None = None,
    ) -> None:
        self._rng = rng
        self._clock = clock
        self._sessions = sessions if sessions is not None else SessionMemory()
        self._routed = routed if routed is not None else RoutedPrefixes()
        self._heat = WeightCache()
        self._default = SessionAffinity(rng, clock, self._sessions)
        # (node, alias) -> (the reported hashes, as a set): one set per report, not per
        # request; a snapshot keeps the same tuple object until the node reports again.
        self._held: dict[tuple[str, str], tuple[tuple[int, ...], frozenset[int]]] = {}
        # alias -> (the snapshot's table of its replicas, hash -> the nodes reporting it):
        # built once per snapshot, for pools too large to score whole (choose_among).
        self._indexes: dict[str, tuple[ReplicaTable, dict[int, list[NodeId]]]] = {}

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        return self._choose(request, candidates, comparable_rates(candidates))

    def choose_among(self, request: RouteRequest, pool: CandidatePool) -> Candidate:
        """choose() over every candidate of a small pool. Over a large one (more than
        EXACT_UP_TO), choose() over the nodes that hold the request's deepest hashes (at
        most SAMPLE_SIZE, found in an index of the snapshot) plus SAMPLE_SIZE drawn at
        random; where no node holds any, the default's choice."""
        if len(pool) <= EXACT_UP_TO:
            every = pool.eligible()
            return self._choose(request, every, _rates_of_every(pool, every))
        holders = self._holders(request, pool.table)
        if not holders:
            return self._remembered(request, self._default.choose_among(request, pool))
        sample = pool.sample(self._rng, SAMPLE_SIZE, holders)
        return self._choose(request, sample, pool.table_rates(sample, comparable_rates))

    def _choose(
        self, request: RouteRequest, candidates: Sequence[Candidate], rates: Sequence[float]
    ) -> Candidate:
        """The choice among `candidates`, whose comparable decode rates are `rates`."""
        now = self._clock()
        cached = self._cached_chars(request, candidates, now)
        if not any(cached):
            return self._remembered(request, self._default._pick(request, candidates, rates))
        prefill = expected_prefill_rates(candidates, rates)
        prompt = request.prompt_tokens
        scored: list[tuple[float, Candidate]] = []
        for cand, rate, fill, chars in zip(candidates, rates, prefill, cached, strict=True):
            weight = self._heat.weight(cand.node_id, cand.telemetry, now)
            wait = cand.load_per_slot * TYPICAL_REPLY_TOKENS / (rate * weight)
            compute = prompt - min(chars // CHARS_PER_TOKEN, prompt)
            scored.append((wait + compute / (fill * weight), cand))
        session = request.session
        if session is None:
            return self._remembered(request, _lowest_scored(scored, self._rng))
        return self._remembered(request, _sticky(self._sessions, request, scored, session))

    def _remembered(self, request: RouteRequest, chosen: Candidate) -> Candidate:
        """`chosen`, with the request's prefix recorded as sent there (RoutedPrefixes)."""
        if request.prefix_chain:
            self._routed.record(request.alias, chosen.node_id, request.prefix_chain, self._clock())
        return chosen

    def _holders(self, request: RouteRequest, table: ReplicaTable) -> list[NodeId]:
        """Up to SAMPLE_SIZE nodes of `table` reporting the request's hashes, the deepest
        hash's first (at random among more than fit)."""
        if not request.prefix_chain:
            return []
        known = self._indexes.get(table.alias)
        if known is None or known[0] is not table:
            index: dict[int, list[NodeId]] = {}
            for cand in table.candidates:
                for value in cand.replica.engine.prefix_hashes:
                    index.setdefault(value, []).append(cand.node_id)
            known = self._indexes[table.alias] = (table, index)
        found: dict[NodeId, None] = {}  # insertion-ordered set
        for value in reversed(request.prefix_chain):
            nodes = known[1].get(value, ())
            room = SAMPLE_SIZE - len(found)
            fresh = [n for n in nodes if n not in found]
            for node in fresh if len(fresh) <= room else self._rng.sample(fresh, room):
                found[node] = None
            if len(found) >= SAMPLE_SIZE:
                break
        return list(found)

    def _cached_chars(
        self, request: RouteRequest, candidates: Sequence[Candidate], now: float
    ) -> list[int]:
        """Each candidate's cached characters of the request's opening, 0 beyond the guard:
        by its report, or by what this gateway sent it lately."""
        chain = request.prefix_chain
        if not chain or len(candidates) < 2:
            return [0] * len(candidates)
        loads = [c.load_per_slot for c in candidates]
        limit = min(loads) + PREFIX_LOAD_GUARD
        cached: list[int] = []
        for cand, load in zip(candidates, loads, strict=True):
            if load > limit:
                cached.append(0)
                continue
            hashes = cand.replica.engine.prefix_hashes
            held = matched_chars(chain, self._held_set(cand, hashes)) if hashes else 0
            for sent in self._routed.recent(request.alias, cand.node_id, now):
                held = max(held, matched_chars(chain, sent))
            cached.append(held)
        return cached

    def _held_set(self, cand: Candidate, hashes: tuple[int, ...]) -> frozenset[int]:
        key = (cand.node_id, cand.replica.alias)
        known = self._held.get(key)
        if known is not None and known[0] is hashes:
            return known[1]
        if len(self._held) >= MAX_HELD_SETS:
            self._held.clear()
        held = frozenset(hashes)
        self._held[key] = (hashes, held)
        return held


def expected_prefill_rates(
    candidates: Sequence[Candidate], decode_rates: Sequence[float]
) -> list[float]:
    """Each candidate's prefill rate for the model (tokens/s): measured (prompt_tps), else
    its expected decode rate (`decode_rates`) times the median prefill-to-decode ratio of
    the candidates that measured both, or PREFILL_PER_DECODE when none has."""
    measured = [c.replica.engine.prompt_tps for c in candidates]
    ratios = [m / d for m, d in zip(measured, decode_rates, strict=True) if m > 0 and d > 0]
    scale = statistics.median(ratios) if ratios else PREFILL_PER_DECODE
    return [m if m > 0 else d * scale for m, d in zip(measured, decode_rates, strict=True)]


def expected_seconds(
    candidates: Sequence[Candidate],
    now: float,
    heat: WeightCache | None = None,
    rates: Sequence[float] | None = None,
) -> list[float]:
    """Each candidate's least-expected-latency score: (load per slot + 1) over its expected
    rate times its heat weight at `now` (unix time; heat.heat_weight, through `heat`).
    `rates`: the candidates' rates when already known (a sample's, estimated against its
    whole pool); None: comparable_rates(candidates)."""
    weights = heat if heat is not None else WeightCache()
    if rates is None:
        rates = comparable_rates(candidates)
    return [
        (c.load_per_slot + 1) / (rate * weights.weight(c.node_id, c.telemetry, now))
        for c, rate in zip(candidates, rates, strict=True)
    ]


def idle_seconds(candidates: Sequence[Candidate]) -> list[float]:
    """expected_seconds() with every heat weight 1: each candidate's (load per slot + 1)
    over its comparable rate. Dividing by a candidate's heat weight gives its score."""
    return [
        (c.load_per_slot + 1) / rate
        for c, rate in zip(candidates, comparable_rates(candidates), strict=True)
    ]


def _sample_times(candidates: Sequence[Candidate]) -> list[float]:
    """When each candidate's telemetry sample was taken (-inf: it has none)."""
    return [c.telemetry.taken_at if c.telemetry is not None else -math.inf for c in candidates]


def _unknown_heat(candidates: Sequence[Candidate]) -> list[float]:
    """A heat weight per candidate, each NaN until worked out (heat_weight of its sample at
    its own time: the weight whenever the sample is fresh, as heat() reads `now` only
    to judge that)."""
    return [math.nan] * len(candidates)


def expected_rates(candidates: Sequence[Candidate]) -> list[float]:
    """Each candidate's per-sequence decode rate for the model: measured, else estimated."""
    measured = [c.replica.engine.decode_tps for c in candidates]
    reference = [c.hardware.reference_decode_tps for c in candidates]
    ratios = [m / r for m, r in zip(measured, reference, strict=True) if m > 0 and r > 0]
    if ratios:
        scale: float | None = statistics.median(ratios)
    else:
        # With no measured rate at all, reference speeds compare nodes on their own; with
        # measured rates but no reference to relate them to, they cannot be mixed.
        scale = None if any(m > 0 for m in measured) else 1.0
    rates: list[float | None] = []
    for m, r in zip(measured, reference, strict=True):
        if m > 0:
            rates.append(m)
        elif r > 0 and scale is not None:
            rates.append(r * scale)
        else:
            rates.append(None)
    known = [r for r in rates if r is not None]
    fallback = statistics.median(known) if known else 1.0
    return [r if r is not None else fallback for r in rates]


def comparable_rates(candidates: Sequence[Candidate]) -> list[float]:
    """expected_rates(), with rates that differ by no more than noise made equal
    (snap_rates with RATE_TOLERANCE): what the latency-scored policies compare.

    A per-sequence decode rate is measured over a node's last few generations, so it moves
    with how many sequences the node happened to batch meanwhile and with whatever else
    held its CPU: identical nodes report rates 30-50% apart that change from one heartbeat
    to the next. Compared as they are, those differences decide every choice between
    equally loaded nodes, always for the one that looked fastest, so it takes more than
    its share and queues while another has a free slot. Made equal, identical nodes
    compare on load alone (ties at random), exactly as least-loaded; a node really faster
    (beyond the tolerance: a Jetson AGX against a Nano, 3x) keeps its own rate and its
    larger share, and heat weights still multiply the result. Worked out once per
    snapshot's table on large pools (CandidatePool.table_figures)."""
    return snap_rates(expected_rates(candidates))


def snap_rates(rates: Sequence[float], tolerance: float = RATE_TOLERANCE) -> list[float]:
    """`rates` with each group of rates close to each other replaced by one rate.

    The group: every rate within a factor (1 + tolerance) of the median rate (the lower
    median, a rate some node reports); they all take that median. The rates above the group
    and those below it are grouped the same way on their own, and so on, so that a fleet of
    a few kinds of hardware keeps one rate per kind. Anchored at a median rather than at the
    fastest or slowest rate, one outlier (the node that ran alone for a while) does not
    split identical nodes apart; any rates whose ratios are all within the factor end in
    one group."""
    snapped = list(rates)
    factor = 1 + tolerance
    pending = [list(range(len(snapped)))]
    while pending:
        group = pending.pop()
        if not group:
            continue
        centre = statistics.median_low(snapped[i] for i in group)
        low, high = centre / factor, centre * factor
        below = [i for i in group if snapped[i] < low]
        above = [i for i in group if snapped[i] > high]
        for i in group:
            if low <= snapped[i] <= high:
                snapped[i] = centre
        pending += [below, above]
    return snapped


def _rates_of_every(pool: CandidatePool, every: Sequence[Candidate]) -> list[float]:
    """comparable_rates(every) for all of `pool`'s candidates: when they are the whole table
    (nothing excluded or full, the common case), the table's, worked out once."""
    if len(every) == len(pool):
        return pool.table_rates(every, comparable_rates)
    return comparable_rates(every)


def _lowest(
    candidates: Sequence[Candidate], score: Callable[[Candidate], float], rng: random.Random
) -> Candidate:
    """The candidate with the lowest score; among (nearly) equal ones, one at random."""
    return _lowest_scored([(score(c), c) for c in candidates], rng)


def _lowest_scored(scored: Sequence[tuple[float, Candidate]], rng: random.Random) -> Candidate:
    """The candidate of the lowest score in (score, candidate) pairs; ties at random."""
    best = min(s for s, _ in scored)
    # Only a score within 2 x TIE_REL_TOL of the best can be close to it: skip the rest
    # without a call.
    near = best + 2 * TIE_REL_TOL * abs(best)
    tied = [c for s, c in scored if s <= near and _close(s, best)]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def _close(score: float, best: float) -> bool:
    return math.isclose(score, best, rel_tol=TIE_REL_TOL)


def _sticky(
    sessions: SessionMemory,
    request: RouteRequest,
    scored: Iterable[tuple[float, Candidate]],
    session: str,
) -> Candidate:
    """session-affinity's choice among (score, candidate) pairs, lower scores better: the
    session's last node while its score is within AFFINITY_GUARD of the best, else the best
    (ties as _stick); remembered as the session's node."""
    pairs = list(scored)
    best = min(score for score, _ in pairs)
    last = sessions.last(request.alias, session)
    for score, cand in pairs:
        if cand.node_id == last and score <= AFFINITY_GUARD * best * (1 + TIE_REL_TOL):
            sessions.remember(request.alias, session, cand.node_id)
            return cand
    return _stick(sessions, request, [c for s, c in pairs if _close(s, best)], session)


def _stick(
    sessions: SessionMemory, request: RouteRequest, tied: Sequence[Candidate], session: str
) -> Candidate:
    """Among equally good `tied` candidates, the session's last node if it is one of them,
    else the one the session key hashes to; remembered as the session's node."""
    last = sessions.last(request.alias, session)
    chosen = next((c for c in tied if c.node_id == last), None)
    if chosen is None:
        node_id = rendezvous(session, (c.node_id for c in tied))
        chosen = next(c for c in tied if c.node_id == node_id)
    sessions.remember(request.alias, session, chosen.node_id)
    return chosen


PolicyFactory = Callable[[random.Random], RoutingPolicy]

# The registry: every policy a configuration may name, the default first.
POLICIES: dict[str, PolicyFactory] = {
    # session-affinity is least-expected-latency plus sticky sessions; it is the default
    # because on multi-turn chats it alone met the routing benchmark's goal (TTFT p50
    # 0.24x round-robin's: BENCHMARKS.md, "Routing by caches"), and without a session key
    # it routes exactly as least-expected-latency.
    SessionAffinity.name: SessionAffinity,
    LeastExpectedLatency.name: LeastExpectedLatency,
    TokensPerJoule.name: TokensPerJoule,
    PrefixCache.name: PrefixCache,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
    LeastLoaded.name: LeastLoaded,
    RoundRobin.name: lambda _rng: RoundRobin(),
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)
DEFAULT_POLICY = POLICY_NAMES[0]


def make_policy(name: str, rng: random.Random) -> RoutingPolicy:
    """The policy called `name`, drawing its random choices from `rng`."""
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICIES)}")
    return factory(rng)
