"""Routing policies: given one request and the eligible candidates for it, pick one.

A policy sees the RouteRequest (alias, task, estimated prompt size, prefix fingerprint,
session key) and only candidates (orchestrator.routing.candidates has already dropped the
nodes that cannot serve), and never does I/O; randomness comes in as an injected
random.Random so a seeded generator replays the same choices.

POLICIES is the one registry of policies by name: configuration validates against it and
make_policy builds from it, so a new policy is one class plus one line there.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.routing.candidates import Candidate
from orchestrator.routing.request import RouteRequest

# Scores within this relative distance are ties: float rounding must not decide a route.
TIE_REL_TOL = 1e-9


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


class LeastExpectedLatency:
    """The candidate expected to start streaming this request's tokens soonest (default).

    Model: a replica with `slots_total` slots decodes each sequence at `decode_tps`
    tokens/s, and holds `load` requests. A new request of T tokens waits for about
    load/slots requests ahead of it in its slot, each taking about T/rate, then runs for
    T/rate itself:

        expected seconds ~ (load_per_slot + 1) * T / rate

    T is the same on every node, so the score is (load_per_slot + 1) / rate. This is how
    hardware capability enters routing: a Jetson Orin AGX that reports 3x the tokens/s of
    a Nano takes about 3x the load before the Nano gets a request (an idle Nano scores
    1/r, the AGX with load L scores (L + 1)/3r: the AGX wins while L < 2, ties at 2).

    A replica that has not measured its rate yet (decode_tps 0) is estimated from its node's
    reference speed (the same small model measured on every node at start): scaled by how
    this model's measured rates compare with their nodes' reference speeds elsewhere, or, if
    no candidate has measured it, by the reference speeds alone. A replica with neither
    gets the median of the others, or 1.0, so a new node neither attracts all traffic nor
    starves before it has served anything. Ties go at random.
    """

    name = "least-expected-latency"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        rates = expected_rates(candidates)
        by_node = {c.node_id: rate for c, rate in zip(candidates, rates, strict=True)}
        return _lowest(candidates, lambda c: (c.load_per_slot + 1) / by_node[c.node_id], self._rng)


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


def _lowest(
    candidates: Sequence[Candidate], score: Callable[[Candidate], float], rng: random.Random
) -> Candidate:
    """The candidate with the lowest score; among (nearly) equal ones, one at random."""
    scored = [(score(c), c) for c in candidates]
    best = min(s for s, _ in scored)
    tied = [c for s, c in scored if math.isclose(s, best, rel_tol=TIE_REL_TOL)]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


PolicyFactory = Callable[[random.Random], RoutingPolicy]

# The registry: every policy a configuration may name, the default first.
POLICIES: dict[str, PolicyFactory] = {
    LeastExpectedLatency.name: LeastExpectedLatency,
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
