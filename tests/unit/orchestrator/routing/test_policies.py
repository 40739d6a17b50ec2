"""Routing policies: each one's choice rule, fairness, and replay with a seeded generator."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from orchestrator.routing.candidates import Candidate
from orchestrator.routing.policies import (
    POLICY_NAMES,
    LeastExpectedLatency,
    LeastLoaded,
    PowerOfTwoChoices,
    RoundRobin,
    RoutingPolicy,
    make_policy,
)
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.factories import candidate

M = RouteRequest("m")  # the policies here route on load and speed, not on the request


def picks(policy: RoutingPolicy, candidates: Sequence[Candidate], n: int) -> list[str]:
    return [policy.choose(M, candidates).node_id for _ in range(n)]


# ---- round robin --------------------------------------------------------------------------


def test_round_robin_cycles_in_node_order_whatever_the_input_order() -> None:
    cands = [candidate("c"), candidate("a"), candidate("b")]
    assert picks(RoundRobin(), cands, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_keeps_a_separate_turn_per_model() -> None:
    policy = RoundRobin()
    cands = [candidate("a"), candidate("b")]
    assert policy.choose(M, cands).node_id == "a"
    assert policy.choose(RouteRequest("other"), cands).node_id == "a"
    assert policy.choose(M, cands).node_id == "b"


def test_round_robin_stays_fair_when_a_node_drops_out_and_returns() -> None:
    policy = RoundRobin()
    a, b, c = candidate("a"), candidate("b"), candidate("c")
    assert picks(policy, [a, b, c], 2) == ["a", "b"]
    # c leaves: the turn carries on from b rather than restarting or repeating b.
    assert picks(policy, [a, b], 4) == ["a", "b", "a", "b"]
    # c returns right after b: it is next, then the cycle goes on as before.
    assert picks(policy, [a, b, c], 4) == ["c", "a", "b", "c"]


def test_round_robin_does_not_serve_the_same_node_twice_when_the_last_one_leaves() -> None:
    policy = RoundRobin()
    a, b, c = candidate("a"), candidate("b"), candidate("c")
    assert picks(policy, [a, b, c], 3) == ["a", "b", "c"]
    counts = Counter(picks(policy, [a, b], 10))
    assert counts == {"a": 5, "b": 5}


# ---- least loaded -------------------------------------------------------------------------


def test_least_loaded_never_picks_a_strictly_more_loaded_node() -> None:
    rng = random.Random(1)
    policy = LeastLoaded(rng)
    for _ in range(200):
        loads = [rng.randrange(5) for _ in range(4)]
        cands = [candidate(f"n{i}", load=load) for i, load in enumerate(loads)]
        assert policy.choose(M, cands).load == min(loads)


def test_least_loaded_compares_load_per_slot() -> None:
    # 6 requests on 4 slots (1.5 each) beat 2 on one slot.
    cands = [candidate("one-slot", load=2), candidate("four-slots", load=6, slots=4)]
    assert LeastLoaded(random.Random(0)).choose(M, cands).node_id == "four-slots"


def test_least_loaded_uses_the_local_inflight_count() -> None:
    cands = [candidate("a", inflight=3), candidate("b", load=1)]
    assert LeastLoaded(random.Random(0)).choose(M, cands).node_id == "b"


def test_least_loaded_spreads_ties_at_random() -> None:
    cands = [candidate("a", load=1), candidate("b", load=1), candidate("c", load=4)]
    counts = Counter(picks(LeastLoaded(random.Random(7)), cands, 400))
    assert set(counts) == {"a", "b"}
    assert min(counts.values()) > 150


# ---- power of two choices -----------------------------------------------------------------


def test_power_of_two_never_picks_the_single_most_loaded() -> None:
    cands = [candidate("a", load=1), candidate("b", load=2), candidate("hot", load=9)]
    counts = Counter(picks(PowerOfTwoChoices(random.Random(3)), cands, 500))
    assert "hot" not in counts
    assert counts["a"] > counts["b"] > 0  # a wins every pair it is in; b only against hot


def test_power_of_two_spreads_among_equals() -> None:
    cands = [candidate(n) for n in "abcd"]
    counts = Counter(picks(PowerOfTwoChoices(random.Random(11)), cands, 800))
    assert set(counts) == set("abcd")
    assert min(counts.values()) > 150


def test_power_of_two_with_one_candidate_returns_it() -> None:
    only = candidate("a", load=50)
    assert PowerOfTwoChoices(random.Random(0)).choose(M, [only]) is only


def test_power_of_two_with_two_candidates_takes_the_lower() -> None:
    cands = [candidate("a", load=3), candidate("b", load=1)]
    assert set(picks(PowerOfTwoChoices(random.Random(0)), cands, 20)) == {"b"}


# ---- least expected latency ---------------------------------------------------------------

AGX_TPS = 30.0
NANO_TPS = 10.0


def test_lel_sends_to_the_faster_idle_node_first() -> None:
    cands = [candidate("nano", decode_tps=NANO_TPS), candidate("agx", decode_tps=AGX_TPS)]
    assert LeastExpectedLatency(random.Random(0)).choose(M, cands).node_id == "agx"


@pytest.mark.parametrize(
    ("agx_load", "expected"),
    [(0, {"agx"}), (1, {"agx"}), (2, {"agx", "nano"}), (3, {"nano"}), (5, {"nano"})],
)
def test_lel_crossover_is_where_expected_seconds_meet(agx_load: int, expected: set[str]) -> None:
    # Idle nano: (0 + 1) / 10 = 0.100 s per token. AGX with L requests: (L + 1) / 30.
    # L = 1: 0.067 (AGX); L = 2: 0.100 (a tie, either); L = 3: 0.133 (nano).
    cands = [
        candidate("nano", decode_tps=NANO_TPS),
        candidate("agx", load=agx_load, decode_tps=AGX_TPS),
    ]
    chosen = set(picks(LeastExpectedLatency(random.Random(5)), cands, 60))
    assert chosen == expected


def test_lel_fills_nodes_in_proportion_to_their_speed() -> None:
    # Route 40 requests one by one, each adding to the chosen node's load: the AGX, three
    # times as fast, ends with three times the requests.
    policy = LeastExpectedLatency(random.Random(2))
    loads = {"agx": 0, "nano": 0}
    for _ in range(40):
        cands = [
            candidate("agx", load=loads["agx"], decode_tps=AGX_TPS),
            candidate("nano", load=loads["nano"], decode_tps=NANO_TPS),
        ]
        loads[policy.choose(M, cands).node_id] += 1
    assert loads == {"agx": 30, "nano": 10}


def test_lel_treats_an_unmeasured_node_as_the_median() -> None:
    policy = LeastExpectedLatency(random.Random(4))
    # Measured: 10, 20, 60 -> median 20. The new node, idle, scores 1/20 = 0.05.
    measured = [
        candidate("slow", decode_tps=10.0),
        candidate("mid", load=1, decode_tps=20.0),  # 2/20 = 0.10
        candidate("fast", load=3, decode_tps=60.0),  # 4/60 = 0.067
    ]
    assert policy.choose(M, [*measured, candidate("new")]).node_id == "new"
    # Loaded with 2 it scores 3/20 = 0.15: worse than the median-speed node, not shunned.
    busy_new = candidate("new", load=2)
    assert policy.choose(M, [*measured, busy_new]).node_id == "fast"
    # With equal loads it ties exactly with a node measured at the median.
    tie = [candidate("new", load=1), candidate("mid", load=1, decode_tps=20.0)]
    assert set(picks(policy, tie, 60)) == {"new", "mid"}


def test_lel_with_nothing_measured_is_least_loaded() -> None:
    cands = [candidate("a", load=2), candidate("b", load=1), candidate("c", load=3)]
    assert set(picks(LeastExpectedLatency(random.Random(0)), cands, 20)) == {"b"}


def test_lel_ranks_unmeasured_nodes_by_their_reference_speed() -> None:
    # Nobody has served the model yet: the node measured 3x faster at start goes first,
    # and takes about 3x the load before the slower one gets a request.
    policy = LeastExpectedLatency(random.Random(1))
    fresh = [candidate("agx", reference_tps=180.0), candidate("nano", reference_tps=60.0)]
    assert policy.choose(M, fresh).node_id == "agx"
    loaded = [candidate("agx", load=3, reference_tps=180.0), candidate("nano", reference_tps=60.0)]
    assert policy.choose(M, loaded).node_id == "nano"  # 4/180 > 1/60


def test_lel_scales_reference_speed_by_what_the_model_runs_at_elsewhere() -> None:
    # The Nano serves this model at 1/3 of its reference speed (20 of 60), so a new AGX
    # (reference 180) is expected at 60 tok/s: with one request it still beats the idle
    # Nano (2/60 < 1/20); with three it does not (4/60 > 1/20).
    policy = LeastExpectedLatency(random.Random(3))
    nano = candidate("nano", decode_tps=20.0, reference_tps=60.0)
    agx_1 = candidate("agx", load=1, reference_tps=180.0)
    agx_3 = candidate("agx", load=3, reference_tps=180.0)
    assert policy.choose(M, [nano, agx_1]).node_id == "agx"
    assert policy.choose(M, [nano, agx_3]).node_id == "nano"


def test_lel_counts_slots() -> None:
    # Same speed per sequence; 3 requests over 4 slots wait less than 1 on one slot.
    cands = [
        candidate("single", load=1, decode_tps=20.0),
        candidate("batched", load=3, slots=4, decode_tps=20.0),
    ]
    assert LeastExpectedLatency(random.Random(0)).choose(M, cands).node_id == "batched"


# ---- replay and construction --------------------------------------------------------------


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seed_same_choices(name: str) -> None:
    cands = [candidate(n, load=i % 2, decode_tps=10.0) for i, n in enumerate("abcdef")]
    first = picks(make_policy(name, random.Random(42)), cands, 50)
    second = picks(make_policy(name, random.Random(42)), cands, 50)
    assert first == second


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_make_policy_knows_every_configurable_name(name: str) -> None:
    policy = make_policy(name, random.Random(0))
    assert policy.name == name
    only = candidate("a")
    assert policy.choose(M, [only]) is only


def test_make_policy_refuses_an_unknown_name_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        make_policy("fastest", random.Random(0))
    message = str(info.value)
    assert "'fastest'" in message
    for name in POLICY_NAMES:
        assert name in message
