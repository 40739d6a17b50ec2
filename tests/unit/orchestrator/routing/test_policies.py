"""Routing policies: each one's choice rule, fairness, and replay with a seeded generator."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from support.samples_factory import dgpu, jetson_sample, node_sample

from common.telemetry import NodeSample
from orchestrator.routing.candidates import Candidate
from orchestrator.routing.policies import (
    POLICY_NAMES,
    RATE_TOLERANCE,
    LeastExpectedLatency,
    LeastLoaded,
    PowerOfTwoChoices,
    RoundRobin,
    RoutingPolicy,
    SessionAffinity,
    TokensPerJoule,
    make_policy,
    snap_rates,
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


# ---- rates that differ by noise -----------------------------------------------------------

# A rate measured on a node of speed `centre` differs from it by noise: each within this factor
# of `centre`, so any two within 1 + RATE_TOLERANCE of each other.
NOISE = (1 + RATE_TOLERANCE) ** 0.5


def noisy(rng: random.Random, centre: float) -> float:
    return centre * rng.uniform(1 / NOISE, NOISE) * 0.999  # * 0.999: strictly inside


def test_rates_within_the_tolerance_become_their_median_and_others_keep_their_own() -> None:
    assert RATE_TOLERANCE == 0.5  # the figures below
    assert snap_rates([8.0, 10.0, 11.5]) == [10.0, 10.0, 10.0]
    assert snap_rates([10.0, 14.9]) == [10.0, 10.0]
    # A node three times as fast stays three times as fast, twice as fast twice; each kind
    # keeps its own median.
    assert snap_rates([10.0, 11.0, 30.0, 31.0]) == [11.0, 11.0, 30.0, 30.0]
    assert snap_rates([10.0, 20.0]) == [10.0, 20.0]
    # Anchored at the median: an outlier within the tolerance of it does not split the rest,
    # one beyond it keeps its own rate.
    assert snap_rates([10.0, 10.0, 12.0, 14.5]) == [10.0] * 4
    assert snap_rates([10.0, 10.0, 10.0, 16.0]) == [10.0, 10.0, 10.0, 16.0]
    assert snap_rates([]) == []


def test_lel_routes_identical_nodes_with_noisy_rates_as_least_loaded() -> None:
    # Three identical nodes whose measured rates differ by noise, redrawn for every request:
    # the choice is always a least-loaded node, and ties go to each of them alike (before
    # the tolerance, every tie went to whichever node looked fastest).
    rng = random.Random(11)
    policy = LeastExpectedLatency(random.Random(3), wall)
    tied_wins: Counter[str] = Counter()
    for _ in range(600):
        loads = [rng.randrange(3) for _ in "abc"]
        rates = {n: noisy(rng, 10.0) for n in "abc"}
        cands = [
            candidate(n, load=load, slots=2, decode_tps=rates[n])
            for n, load in zip("abc", loads, strict=True)
        ]
        chosen = policy.choose(M, cands)
        assert chosen.load == min(loads)
        if loads.count(min(loads)) == 3:
            tied_wins["fastest" if rates[chosen.node_id] == max(rates.values()) else "other"] += 1
    # Among three tied nodes the fastest-looking one wins a third of the time, not always.
    assert 0.25 < tied_wins["fastest"] / sum(tied_wins.values()) < 0.42


def test_a_node_that_looks_faster_by_noise_takes_no_more_than_its_share() -> None:
    # The same three nodes, one of them measured steadily a little faster: requests arriving
    # while all three hold the same load spread evenly over them.
    policy = SessionAffinity(random.Random(5), wall)  # the default; no session keys here
    rates = {"a": 10.0 * NOISE * 0.99, "b": 10.0, "c": 10.0 / NOISE * 1.01}
    cands = [candidate(n, load=2, slots=2, decode_tps=r) for n, r in rates.items()]
    counts = Counter(picks(policy, cands, 300))
    assert set(counts) == set(rates) and min(counts.values()) > 70, counts


def test_a_clearly_faster_kind_of_node_still_takes_more_with_noisy_rates() -> None:
    # Two AGX-class nodes (30 tok/s) and two Nano-class (10), every rate noisy: the AGXs,
    # three times as fast, take about three times the requests.
    rng = random.Random(8)
    policy = LeastExpectedLatency(random.Random(6), wall)
    speed = {"agx1": AGX_TPS, "agx2": AGX_TPS, "nano1": NANO_TPS, "nano2": NANO_TPS}
    loads = dict.fromkeys(speed, 0)
    for _ in range(80):
        cands = [candidate(n, load=loads[n], decode_tps=noisy(rng, s)) for n, s in speed.items()]
        loads[policy.choose(M, cands).node_id] += 1
    agx, nano = loads["agx1"] + loads["agx2"], loads["nano1"] + loads["nano2"]
    assert 2.5 <= agx / nano <= 3.5, loads


# ---- heat: hot and throttling nodes take less ------------------------------------------------

WALL = 1_764_000_000.0  # the policies' clock, unix time, as the samples' taken_at


def wall() -> float:
    return WALL


def cool_gpu(taken_at: float = WALL) -> NodeSample:
    return node_sample(taken_at=taken_at, gpus=(dgpu(0, throttle_reasons=()),))


def gpu_throttled(reason: str, taken_at: float = WALL) -> NodeSample:
    return node_sample(taken_at=taken_at, gpus=(dgpu(0, throttle_reasons=(reason,)),))


def jetson(*reasons: str) -> NodeSample:
    """An AGX Orin: its integrated GPU with `reasons`, its zones cool, 30.1 W on the board."""
    gpu = dgpu(0, unified=True, throttle_reasons=reasons, power_watts=12.4)
    return node_sample(taken_at=WALL, gpus=(gpu,), jetson=jetson_sample())


def hot(cand: Candidate, sample: NodeSample | None) -> Candidate:
    return dataclasses.replace(cand, telemetry=sample)


def test_lel_choices_are_unchanged_for_cool_nodes_without_sessions() -> None:
    rng = random.Random(9)
    for seed in range(30):
        plain = [
            candidate(f"n{i}", load=rng.randrange(4), decode_tps=rng.choice([0.0, 10.0, 30.0]))
            for i in range(5)
        ]
        samples = [cool_gpu(), jetson(), None, cool_gpu(WALL - 3600), jetson()]
        cool = [hot(c, s) for c, s in zip(plain, samples, strict=True)]
        reference = picks(LeastExpectedLatency(random.Random(seed), wall), plain, 20)
        assert picks(LeastExpectedLatency(random.Random(seed), wall), cool, 20) == reference


def _fill(policy: RoutingPolicy, samples: dict[str, NodeSample | None], n: int) -> dict[str, int]:
    """Routes n requests one by one, each adding to its node's load; equal nodes, 20 tok/s."""
    loads = dict.fromkeys(samples, 0)
    for _ in range(n):
        cands = [
            hot(candidate(name, load=loads[name], decode_tps=20.0), sample)
            for name, sample in samples.items()
        ]
        loads[policy.choose(M, cands).node_id] += 1
    return loads


def test_lel_gives_a_power_capped_node_proportionally_less_work() -> None:
    policy = LeastExpectedLatency(random.Random(2), wall)
    loads = _fill(policy, {"cool": cool_gpu(), "capped": gpu_throttled("sw_power_cap")}, 30)
    # Weight 0.5: the capped node counts as 10 tok/s and takes half the cool one's share.
    assert loads == {"cool": 20, "capped": 10}


def test_heat_still_sheds_among_nodes_whose_rates_differ_by_noise() -> None:
    # Three identical nodes with noisy rates, one of them at its power cap (weight 0.5): it
    # takes about half the others' share, however its rate happens to compare.
    rng = random.Random(4)
    policy = LeastExpectedLatency(random.Random(2), wall)
    samples = {"a": cool_gpu(), "b": cool_gpu(), "capped": gpu_throttled("sw_power_cap")}
    loads = dict.fromkeys(samples, 0)
    for _ in range(50):
        cands = [
            hot(candidate(n, load=loads[n], decode_tps=noisy(rng, 20.0)), sample)
            for n, sample in samples.items()
        ]
        loads[policy.choose(M, cands).node_id] += 1
    assert 8 <= loads["capped"] <= 12 and min(loads["a"], loads["b"]) >= 19, loads


def test_lel_thermal_throttling_takes_sharply_less_and_recovers_when_cleared() -> None:
    policy = LeastExpectedLatency(random.Random(2), wall)
    throttled = _fill(policy, {"cool": jetson(), "hot": jetson("thermal:gpu")}, 30)
    assert throttled == {"cool": 25, "hot": 5}  # weight 0.2: a fifth of the cool one's share
    # The next heartbeat says it cooled down: equal shares again.
    assert _fill(policy, {"cool": jetson(), "hot": jetson()}, 30) == {"cool": 15, "hot": 15}


def test_lel_prefers_a_cool_slow_node_to_a_throttling_fast_one() -> None:
    policy = LeastExpectedLatency(random.Random(0), wall)
    nano = candidate("nano", decode_tps=NANO_TPS)
    agx = candidate("agx", decode_tps=AGX_TPS)
    # AGX at 30 tok/s thermally throttled counts as 6: the idle Nano's 10 is faster.
    assert policy.choose(M, [nano, hot(agx, jetson("hw_thermal_slowdown"))]).node_id == "nano"
    assert policy.choose(M, [nano, hot(agx, jetson())]).node_id == "agx"


def test_lel_ignores_stale_telemetry() -> None:
    policy = LeastExpectedLatency(random.Random(0), wall)
    nano = candidate("nano", decode_tps=NANO_TPS)
    agx = candidate("agx", decode_tps=AGX_TPS)
    stale = gpu_throttled("hw_thermal_slowdown", taken_at=WALL - 120.0)
    assert policy.choose(M, [nano, hot(agx, stale)]).node_id == "agx"


# ---- sessions -------------------------------------------------------------------------------


def session(key: str) -> RouteRequest:
    return RouteRequest("m", session=key)


def test_lel_keeps_a_session_on_its_node_among_equal_ones() -> None:
    policy = LeastExpectedLatency(random.Random(5), wall)
    equal = [candidate(n, decode_tps=10.0) for n in "abcd"]
    assert len({policy.choose(session("s"), equal).node_id for _ in range(30)}) == 1
    # Many sessions still spread over equal nodes (by their keys' hashes).
    counts = Counter(policy.choose(session(f"user-{i}"), equal).node_id for i in range(400))
    assert set(counts) == set("abcd") and min(counts.values()) > 60


def test_lel_never_trades_latency_for_a_session() -> None:
    policy = LeastExpectedLatency(random.Random(5), wall)
    first = policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id
    other = "b" if first == "a" else "a"
    # Its node now holds one request: the idle one is faster, and the session moves there.
    busy = [candidate(first, load=1), candidate(other)]
    assert policy.choose(session("s"), busy).node_id == other
    # ... and stays there once both are equal again.
    assert policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id == other


def test_lel_sessions_do_not_change_requests_without_one() -> None:
    cands = [candidate(n, load=i % 2, decode_tps=10.0) for i, n in enumerate("abcdef")]
    reference = picks(LeastExpectedLatency(random.Random(3), wall), cands, 40)
    mixed = LeastExpectedLatency(random.Random(3), wall)
    got = []
    for i in range(40):
        mixed.choose(session(f"s{i}"), cands)  # draws nothing from the generator
        got.append(mixed.choose(M, cands).node_id)
    assert got == reference


def test_session_affinity_stays_within_twice_the_best_latency() -> None:
    policy = SessionAffinity(random.Random(1), wall)
    first = policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id
    other = "b" if first == "a" else "a"
    # One request ahead on its node: expected 2x the idle node's, within the guard.
    assert policy.choose(session("s"), [candidate(first, load=1), candidate(other)]).node_id == (
        first
    )
    # Two ahead: 3x, so the session moves to the idle node ...
    assert policy.choose(session("s"), [candidate(first, load=2), candidate(other)]).node_id == (
        other
    )
    # ... and now stays there, its new node, while within the guard.
    assert policy.choose(session("s"), [candidate(first), candidate(other, load=1)]).node_id == (
        other
    )


def test_session_affinity_moves_a_session_whose_node_left() -> None:
    policy = SessionAffinity(random.Random(1), wall)
    first = policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id
    other = "b" if first == "a" else "a"
    assert policy.choose(session("s"), [candidate(other, load=3)]).node_id == other
    assert policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id == other


def test_session_affinity_counts_heat_in_its_guard() -> None:
    policy = SessionAffinity(random.Random(1), wall)
    first = policy.choose(session("s"), [candidate("a"), candidate("b")]).node_id
    other = "b" if first == "a" else "a"
    throttled = hot(candidate(first), jetson("thermal:gpu"))  # 5x the idle node's latency
    assert policy.choose(session("s"), [throttled, candidate(other)]).node_id == other


def test_session_affinity_without_a_session_is_the_default() -> None:
    cands = [candidate(n, load=i % 3, decode_tps=10.0 + i) for i, n in enumerate("abcdef")]
    reference = picks(LeastExpectedLatency(random.Random(8), wall), cands, 40)
    assert picks(SessionAffinity(random.Random(8), wall), cands, 40) == reference


# ---- tokens per joule -----------------------------------------------------------------------


def pc(decode_tps: float, load: int = 0) -> Candidate:
    """A PC whose one GPU draws 301.5 W, unthrottled."""
    return hot(candidate("pc", decode_tps=decode_tps, load=load), cool_gpu())


def agx_board(decode_tps: float = AGX_TPS, load: int = 0, slots: int = 1) -> Candidate:
    """An AGX Orin drawing 30.1 W on the board."""
    return hot(candidate("agx", decode_tps=decode_tps, load=load, slots=slots), jetson())


def test_tokens_per_joule_takes_the_efficient_node_within_the_guard() -> None:
    policy = TokensPerJoule(random.Random(0), wall)
    # PC 40 tok/s idle, AGX 30 (within RATE_TOLERANCE: both count as 30) with one of its two
    # slots busy: expected (0.5 + 1) / 30 against the PC's 1 / 30, 1.5x, in the guard. The
    # AGX makes ~1.0 token per joule, the PC ~0.1.
    cands = [pc(40.0), agx_board(load=1, slots=2)]
    assert policy.choose(M, cands).node_id == "agx"
    # The default takes the idle PC.
    assert LeastExpectedLatency(random.Random(0), wall).choose(M, cands).node_id == "pc"


def test_tokens_per_joule_never_queues_beyond_the_guard() -> None:
    policy = TokensPerJoule(random.Random(0), wall)
    # PC at 100 tok/s: the AGX's 1/30 is 3.3x its 1/100, outside the 1.5x guard.
    assert policy.choose(M, [pc(100.0), agx_board()]).node_id == "pc"
    # A loaded AGX falls out of the guard: (1 + 1) / 30 = 0.067 against the PC's 0.025.
    assert policy.choose(M, [pc(40.0), agx_board(load=1)]).node_id == "pc"


def test_tokens_per_joule_without_power_is_the_default() -> None:
    cands = [candidate(n, load=i % 2, decode_tps=10.0 + 5 * i) for i, n in enumerate("abcd")]
    reference = picks(LeastExpectedLatency(random.Random(4), wall), cands, 30)
    assert picks(TokensPerJoule(random.Random(4), wall), cands, 30) == reference
    # Power reported only outside the guard counts for nothing either.
    cpu_box = candidate("cpu", decode_tps=100.0)
    assert TokensPerJoule(random.Random(0), wall).choose(M, [cpu_box, agx_board()]) is cpu_box


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
