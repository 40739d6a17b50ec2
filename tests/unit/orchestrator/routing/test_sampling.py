"""Routing on large fleets: each model's replicas prepared once per snapshot (ReplicaTable),
the per-request checks on a CandidatePool, and policies that score a random sample above
EXACT_UP_TO ready replicas, exactly as before at or below it."""

from __future__ import annotations

import dataclasses
import pickle
import random
from collections import Counter

import pytest
from support.samples_factory import dgpu, node_sample

from common.telemetry import NodeSample
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.routing.candidates import (
    ALREADY_FAILED,
    Candidate,
    CandidatePool,
    NoCandidate,
    candidates_for,
    replica_table,
    route,
)
from orchestrator.routing.policies import (
    EXACT_UP_TO,
    POLICIES,
    LeastExpectedLatency,
    PowerOfTwoChoices,
    RoundRobin,
    RoutingPolicy,
    SessionAffinity,
    TokensPerJoule,
)
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.factories import NOW, node, replica

WALL = 1_764_000_000.0  # the policies' clock, as the samples' taken_at
M = RouteRequest("m")


def wall() -> float:
    return WALL


def telemetry(rng: random.Random) -> NodeSample | None:
    """None, a stale sample, or a fresh one, cool or throttling (heat weights 1, 0.5, 0.2)."""
    reasons = rng.choice([(), (), ("sw_power_cap",), ("hw_thermal_slowdown",)])
    taken_at = rng.choice([WALL, WALL, WALL - 3600])
    return rng.choice(
        [None, node_sample(taken_at=taken_at, gpus=(dgpu(0, throttle_reasons=reasons),))]
    )


def with_telemetry(n: Node, sample: NodeSample | None) -> Node:
    return dataclasses.replace(n, status=dataclasses.replace(n.status, telemetry=sample))


def ready_node(node_id: str, rng: random.Random, **fields: object) -> Node:
    """A node holding "m" READY with a random load, speed (measured or not) and heat."""
    slots = rng.choice([1, 2, 4])
    active = rng.randint(0, slots)
    rep = replica(
        slots_total=slots, active=active, queued=rng.randint(0, 1) if active == slots else 0,
        decode_tps=rng.choice([0.0, 10.0, 20.0, 40.0]), max_queue=4, **fields,
    )  # fmt: skip
    n = node(node_id, rep, reference_tps=rng.choice([0.0, 10.0, 25.0]))
    return with_telemetry(n, telemetry(rng))


def fleet(count: int, seed: int, *, mixed: bool = False) -> ClusterSnapshot:
    """`count` nodes holding "m" READY; `mixed`: a third of them more that cannot serve
    (down, loading, embeddings only, queue full on their report)."""
    rng = random.Random(seed)
    nodes = [ready_node(f"n{i:04d}", rng) for i in range(count)]
    if mixed:
        for i in range(count // 3):
            nodes.append(
                rng.choice([
                    node(f"x{i:04d}-down", replica(), up=False, down_reason="gone"),
                    node(f"x{i:04d}-loading", replica(state=replica().state.LOADING)),
                    node(f"x{i:04d}-embed", replica(embedding=True)),
                    node(f"x{i:04d}-full", replica(active=1, queued=2, max_queue=2)),
                ])
            )  # fmt: skip
    rng.shuffle(nodes)
    return ClusterSnapshot(version=1, taken_at=NOW, nodes=tuple(nodes))


def local_counts(snap: ClusterSnapshot, rng: random.Random) -> Counter[tuple[NodeId, str]]:
    """This gateway's in-flight counts on a random tenth of the nodes (some fill a queue)."""
    return Counter({(n.node_id, "m"): rng.randint(1, 8) for n in snap.nodes if rng.random() < 0.1})


Sampling = LeastExpectedLatency | TokensPerJoule


def sampled(policy: type[Sampling], seed: int, **fields: int) -> Sampling:
    return policy(random.Random(seed), wall, exact_up_to=0, **fields)


# ---- the pool against candidates_for ------------------------------------------------------


@pytest.mark.parametrize("task", [None, "generate", "embed"])
def test_the_pool_offers_exactly_candidates_for_s_candidates(task: str | None) -> None:
    for seed in range(8):
        snap = fleet(60, seed, mixed=True)
        rng = random.Random(seed)
        inflight = local_counts(snap, rng)
        exclude = {n.node_id for n in snap.nodes if rng.random() < 0.1}
        pool = CandidatePool(snap, "m", task, now=NOW, inflight=inflight, exclude=exclude)  # type: ignore[arg-type]
        expected, _ = candidates_for(
            snap,
            "m",
            now=NOW,
            inflight=inflight,
            exclude=exclude,
            task=task,  # type: ignore[arg-type]
        )
        assert pool.eligible() == expected


def test_each_model_s_table_is_built_once_per_snapshot_and_never_pickled() -> None:
    snap = fleet(10, 1)
    table = replica_table(snap, "m", "generate")
    assert replica_table(snap, "m", "generate") is table
    assert replica_table(snap, "m", None) is not table  # per task
    copy = pickle.loads(pickle.dumps(snap))
    assert copy.memo == {}
    assert copy == snap
    assert replica_table(copy, "m", "generate").candidates == table.candidates


# ---- at or below the threshold: exactly as before -----------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
def test_at_or_below_the_threshold_every_policy_routes_as_over_every_candidate(name: str) -> None:
    snap = fleet(EXACT_UP_TO * 3 // 4, 3, mixed=True)  # the full ones are in the table
    assert EXACT_UP_TO * 3 // 4 < len(replica_table(snap, "m", "generate")) <= EXACT_UP_TO
    routed, chosen = POLICIES[name](random.Random(4)), POLICIES[name](random.Random(4))
    rng = random.Random(5)
    for i in range(40):
        request = RouteRequest("m", session=rng.choice([None, f"s{i % 3}"]))
        inflight = local_counts(snap, rng)
        expected, _ = candidates_for(snap, "m", now=NOW, inflight=inflight, task="generate")
        got = route(snap, request, now=NOW, policy=routed, inflight=inflight)
        assert got == chosen.choose(request, expected)


def test_above_the_threshold_the_default_draws_a_sample() -> None:
    """Scoring every candidate draws nothing from the generator (no ties here); a sample is
    drawn from it."""
    for count, draws in ((EXACT_UP_TO, False), (EXACT_UP_TO + 1, True)):
        rng = random.Random(1)
        policy = LeastExpectedLatency(rng, wall)
        # Each rate twice the one before: beyond RATE_TOLERANCE, no two compare as equal.
        nodes = [node(f"n{i:03d}", replica(decode_tps=10.0 * 2.0**i)) for i in range(count)]
        snap = ClusterSnapshot(version=1, taken_at=NOW, nodes=tuple(nodes))  # no ties
        before = rng.getstate()
        route(snap, M, now=NOW, policy=policy)
        assert (rng.getstate() != before) is draws


# ---- above it: a sample -------------------------------------------------------------------


def test_a_sampled_choice_replays_with_the_same_seed() -> None:
    snap = fleet(300, 6)

    def choices(seed: int) -> list[str]:
        policy = sampled(LeastExpectedLatency, seed)
        return [route(snap, M, now=NOW, policy=policy).node_id for _ in range(50)]

    assert choices(7) == choices(7)
    assert choices(7) != choices(8)


@pytest.mark.parametrize("kind", [LeastExpectedLatency, SessionAffinity, TokensPerJoule])
def test_a_full_draw_chooses_exactly_as_scoring_every_candidate(
    kind: type[Sampling],
) -> None:
    """With a sample as large as the fleet, the sampled path's scores (prepared per table)
    are expected_seconds' own: the same choices, ties and heat included."""
    for seed in range(6):
        snap = fleet(120, seed)
        rng = random.Random(seed)
        whole = sampled(kind, seed, sample_size=10_000)
        exact = kind(random.Random(seed), wall)
        for i in range(25):
            request = RouteRequest("m", session=rng.choice([None, f"s{i % 4}"]))
            inflight = Counter({k: min(v, 3) for k, v in local_counts(snap, rng).items()})
            every, _ = candidates_for(snap, "m", now=NOW, inflight=inflight)
            if len(every) < len(snap.nodes):
                continue  # a local count filled a queue: the table's rates are not every's
            got = route(snap, request, now=NOW, policy=whole, inflight=inflight)
            assert got == exact.choose(request, every)


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: sampled(LeastExpectedLatency, seed, sample_size=4),
        lambda seed: sampled(SessionAffinity, seed, sample_size=4),
        lambda seed: sampled(TokensPerJoule, seed, sample_size=4),
        lambda seed: PowerOfTwoChoices(random.Random(seed)),
    ],
    ids=["least-expected-latency", "session-affinity", "tokens-per-joule", "power-of-two"],
)
def test_a_sample_never_holds_a_node_that_cannot_serve(make: object) -> None:
    snap = fleet(3 * EXACT_UP_TO, 11, mixed=True)
    rng = random.Random(12)
    policy: RoutingPolicy = make(13)  # type: ignore[operator]
    for i in range(150):
        inflight = local_counts(snap, rng)
        exclude = {n.node_id for n in snap.nodes if rng.random() < 0.5}
        request = RouteRequest("m", session=f"s{i % 5}" if i % 2 else None)
        every, _ = candidates_for(
            snap, "m", now=NOW, inflight=inflight, exclude=exclude, task="generate"
        )
        try:
            got = route(snap, request, now=NOW, policy=policy, inflight=inflight, exclude=exclude)
        except NoCandidate:
            assert every == []
            continue
        assert got in every  # the very candidate, local count included


def test_a_draw_that_finds_no_candidate_falls_back_to_those_that_can_serve() -> None:
    snap = fleet(200, 14)
    exclude = {n.node_id for n in snap.nodes} - {NodeId("n0123")}
    for seed in range(10):
        policy = sampled(LeastExpectedLatency, seed, sample_size=2)
        assert route(snap, M, now=NOW, policy=policy, exclude=exclude).node_id == "n0123"


def test_a_sampled_pool_with_no_candidate_explains_every_node() -> None:
    snap = fleet(200, 15)
    every = {n.node_id for n in snap.nodes}
    with pytest.raises(NoCandidate) as caught:
        route(snap, M, now=NOW, policy=sampled(LeastExpectedLatency, 1), exclude=every)
    assert {r.node_id for r in caught.value.rejections} == every
    assert {r.reason for r in caught.value.rejections} == {ALREADY_FAILED}


def test_a_session_s_node_joins_every_sample() -> None:
    """One node drawn at random out of 300 would rarely be the session's: it is added."""
    nodes = [node(f"n{i:03d}", replica(decode_tps=20.0)) for i in range(300)]
    snap = ClusterSnapshot(version=1, taken_at=NOW, nodes=tuple(nodes))
    policy = sampled(SessionAffinity, 3, sample_size=1)
    chat = RouteRequest("m", session="chat")
    first = route(snap, chat, now=NOW, policy=policy).node_id
    assert {route(snap, chat, now=NOW, policy=policy).node_id for _ in range(30)} == {first}
    # Requests without a session spread over the fleet.
    spread = {route(snap, M, now=NOW, policy=policy).node_id for _ in range(30)}
    assert len(spread) > 20


def test_the_sampled_default_takes_the_best_of_its_sample() -> None:
    """Half the nodes are idle and fast, half busy and slow: a sample of 8 nearly always
    holds a fast one, and a fast one is then chosen."""
    fast = [node(f"f{i:03d}", replica(decode_tps=40.0)) for i in range(100)]
    slow = [
        node(f"s{i:03d}", replica(decode_tps=10.0, active=1, queued=3, max_queue=8))
        for i in range(100)
    ]
    snap = ClusterSnapshot(version=1, taken_at=NOW, nodes=tuple(fast + slow))
    policy = sampled(LeastExpectedLatency, 4, sample_size=8)
    chosen = Counter(route(snap, M, now=NOW, policy=policy).node_id[0] for _ in range(200))
    assert chosen["s"] <= 3  # (1/2)^8 of samples hold no fast node: ~1 in 200
    assert chosen["f"] >= 197


def test_candidate_figures_are_computed_once() -> None:
    cand = Candidate(NodeId("a"), "a:1", node("a").hardware, replica(active=1, slots_total=2), 3)
    assert cand.load == 3
    assert cand.load_per_slot == 1.5
    assert "load_per_slot" in vars(cand)  # cached on the frozen candidate


def test_round_robin_turns_over_a_large_pool_exactly_as_over_every_candidate() -> None:
    snap = fleet(3 * EXACT_UP_TO, 21, mixed=True)
    rng = random.Random(22)
    routed, chosen = RoundRobin(), RoundRobin()
    for _ in range(150):
        inflight = local_counts(snap, rng)
        exclude = {n.node_id for n in snap.nodes if rng.random() < 0.3}
        every, _ = candidates_for(
            snap, "m", now=NOW, inflight=inflight, exclude=exclude, task="generate"
        )
        got = route(snap, M, now=NOW, policy=routed, inflight=inflight, exclude=exclude)
        assert got == chosen.choose(M, every)
