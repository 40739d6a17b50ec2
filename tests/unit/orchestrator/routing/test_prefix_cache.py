"""The prefix-cache policy: it aims at the node whose slots hold the request's opening,
weighs that against queue and speed, spreads a hot prefix (load guard), and routes as the
default when nothing matches."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from common.prefix import chat_chain
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.routing.affinity import ROUTED_TTL_S, RoutedPrefixes
from orchestrator.routing.candidates import Candidate, route
from orchestrator.routing.policies import (
    EXACT_UP_TO,
    PREFIX_LOAD_GUARD,
    LeastExpectedLatency,
    PrefixCache,
    SessionAffinity,
    expected_prefill_rates,
)
from orchestrator.routing.request import RouteRequest, for_chat
from tests.unit.orchestrator.factories import NOW, candidate, node, replica, snapshot

WALL = 1_000.0
SYSTEM = ("system", "You are the operations assistant of a fleet of Jetson boards. " * 60)
OTHER_SYSTEM = ("system", "You translate German maintenance logs into English. " * 60)


def wall() -> float:
    return WALL


@dataclasses.dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


def by_reports(seed: int) -> PrefixCache:
    """prefix-cache going by the nodes' reports alone: what it sends expires at once (the
    tests that route many requests on one unchanging report)."""
    return PrefixCache(random.Random(seed), wall, routed=RoutedPrefixes(ttl_s=0.0))


def chat(*messages: tuple[str, str], session: str | None = None) -> RouteRequest:
    return for_chat("m", list(messages), session)


def holding(cand: Candidate, *messages: tuple[str, str], prompt_tps: float = 0.0) -> Candidate:
    """`cand` whose slots hold the chain of a chat of `messages`."""
    engine = dataclasses.replace(
        cand.replica.engine,
        prefix_hashes=chat_chain(messages).hashes,
        prompt_tps=prompt_tps or cand.replica.engine.prompt_tps,
    )
    return dataclasses.replace(cand, replica=dataclasses.replace(cand.replica, engine=engine))


def test_a_follow_up_goes_to_the_node_holding_its_conversation() -> None:
    request = chat(SYSTEM, ("user", "Which board runs hottest?"))
    for seed in range(20):
        policy = PrefixCache(random.Random(seed), wall)
        nodes = [candidate("a", decode_tps=10.0), candidate("b", decode_tps=10.0)]
        nodes += [holding(candidate("c", decode_tps=10.0), SYSTEM)]
        assert policy.choose(request, nodes).node_id == "c"


def test_the_deeper_match_wins() -> None:
    turn = ("user", "Which board runs hottest? " * 40)
    request = chat(SYSTEM, turn, ("user", "And the coolest?"))
    shallow = holding(candidate("a", decode_tps=10.0), SYSTEM)
    deep = holding(candidate("b", decode_tps=10.0), SYSTEM, turn)
    for seed in range(10):
        assert PrefixCache(random.Random(seed), wall).choose(request, [shallow, deep]) is deep


def test_a_cached_node_with_a_queue_loses_to_an_idle_one_when_recomputing_is_cheap() -> None:
    # A short prompt on fast prefill (2,000 tokens/s): recomputing it takes ~0.4 s, while the
    # cached node's queue holds two requests of ~128 tokens at 10 tokens/s each.
    request = chat(SYSTEM, ("user", "?"))
    cached = holding(candidate("a", load=2, decode_tps=10.0), SYSTEM, prompt_tps=2000.0)
    idle = holding(candidate("b", decode_tps=10.0), OTHER_SYSTEM, prompt_tps=2000.0)
    assert PrefixCache(random.Random(0), wall).choose(request, [cached, idle]) is idle


def test_no_match_anywhere_routes_exactly_as_the_default() -> None:
    rng = random.Random(7)
    request = chat(SYSTEM, ("user", "hi"))
    ours, default = by_reports(3), LeastExpectedLatency(random.Random(3), wall)
    for _ in range(300):
        nodes = [
            holding(candidate(n, load=rng.randrange(3), decode_tps=rng.choice([5.0, 10.0])),
                    OTHER_SYSTEM)
            for n in "abcd"
        ]  # fmt: skip
        assert ours.choose(request, nodes) is default.choose(request, nodes)


def test_a_request_without_a_chain_routes_exactly_as_the_default() -> None:
    short = chat(("user", "hi"))  # under one block: nothing to match
    assert short.prefix_chain == ()
    nodes = [holding(candidate(n, load=i % 2, decode_tps=10.0), SYSTEM) for i, n in enumerate("ab")]
    ours, default = (
        PrefixCache(random.Random(1), wall),
        LeastExpectedLatency(random.Random(1), wall),
    )
    assert [ours.choose(short, nodes) for _ in range(50)] == [
        default.choose(short, nodes) for _ in range(50)
    ]


def test_the_load_guard_spreads_a_hot_prefix() -> None:
    assert PREFIX_LOAD_GUARD == 1.0
    # A very long shared prompt on slow prefill: without a guard the cached node would look
    # best until its queue were ~30 requests long. Requests arrive and never finish here.
    request = chat(SYSTEM, ("user", "Status report, please."))
    loads = {"a": 0, "b": 0, "c": 0}
    policy = by_reports(0)
    for _ in range(60):
        nodes = [candidate(n, load=loads[n], decode_tps=10.0) for n in loads]
        nodes[0] = holding(nodes[0], SYSTEM, prompt_tps=20.0)
        chosen = policy.choose(request, nodes).node_id
        loads[chosen] += 1
        # the guard (one request per slot) plus the request just placed
        assert max(loads.values()) - min(loads.values()) <= 2
    assert loads["a"] > loads["b"]  # the cached node still takes the larger share


def test_within_the_guard_the_cached_node_takes_a_queued_request() -> None:
    # One request per slot more than the idle node: within the guard, and a long prompt on
    # slow prefill costs more to recompute than the wait.
    request = chat(SYSTEM, ("user", "?"))
    busy_cached = holding(candidate("a", load=1, decode_tps=10.0), SYSTEM, prompt_tps=20.0)
    idle = candidate("b", decode_tps=10.0)
    assert PrefixCache(random.Random(0), wall).choose(request, [busy_cached, idle]) is busy_cached
    beyond = holding(candidate("a", load=2, decode_tps=10.0), SYSTEM, prompt_tps=20.0)
    assert PrefixCache(random.Random(0), wall).choose(request, [beyond, idle]) is idle


def test_a_session_among_equally_cached_nodes_stays_on_its_node() -> None:
    policy = PrefixCache(random.Random(5), wall)
    equal = [holding(candidate(n, decode_tps=10.0), SYSTEM) for n in "abcd"]
    request = chat(SYSTEM, ("user", "hi"), session="alice")
    assert len({policy.choose(request, equal).node_id for _ in range(30)}) == 1
    spread = Counter(
        policy.choose(chat(SYSTEM, ("user", "hi"), session=f"u{i}"), equal).node_id
        for i in range(200)
    )
    assert set(spread) == set("abcd")


def test_prefill_rates_are_measured_or_scaled_from_decode() -> None:
    measured = holding(candidate("a", decode_tps=10.0), SYSTEM, prompt_tps=300.0)
    unmeasured = candidate("b", decode_tps=20.0)
    assert expected_prefill_rates([measured, unmeasured], [10.0, 20.0]) == [300.0, 600.0]
    # Nothing measured: the default ratio.
    assert expected_prefill_rates([unmeasured], [20.0]) == [200.0]


def test_a_new_report_replaces_what_a_node_held() -> None:
    policy = by_reports(0)
    request = chat(SYSTEM, ("user", "?"))
    first = [holding(candidate("a", decode_tps=10.0), SYSTEM), candidate("b", decode_tps=10.0)]
    assert policy.choose(request, first).node_id == "a"
    # The next heartbeats: a's slot went to another conversation, b now holds this one.
    second = [
        holding(candidate("a", decode_tps=10.0), OTHER_SYSTEM),
        holding(candidate("b", decode_tps=10.0), SYSTEM),
    ]
    assert all(policy.choose(request, second).node_id == "b" for _ in range(10))


def test_a_turn_sent_before_the_next_report_goes_where_its_conversation_went() -> None:
    # No report shows any prefix yet (the heartbeat has not come): the next turn of the
    # conversation goes where this gateway sent the turn before, within ROUTED_TTL_S; long
    # after, with still no report of it, the memory has expired and the turn goes anywhere.
    question = ("user", "Which board runs hottest?")
    follow_up = chat(SYSTEM, question, ("assistant", "The AGX in rack 2."), ("user", "Why?"))
    idle = [candidate(n, decode_tps=10.0) for n in "abc"]
    kept_soon = kept_late = 0
    for seed in range(60):
        for wait, late in ((ROUTED_TTL_S / 2, False), (10 * ROUTED_TTL_S, True)):
            clock = Clock(WALL)
            policy = PrefixCache(random.Random(seed), clock)
            first = policy.choose(chat(SYSTEM, question), idle).node_id
            clock.now += wait
            kept = policy.choose(follow_up, idle).node_id == first
            kept_late += kept and late
            kept_soon += kept and not late
    assert kept_soon == 60
    assert 10 < kept_late < 35  # a third of them, by chance


def test_a_session_stays_on_its_node_within_twice_the_best_ttft() -> None:
    # Every node reports the system prompt, so the hashes tell the session's node from the
    # others no better than that (the turns it holds are not reported yet); the session key
    # keeps the conversation where it is while that node is expected within 2x of the best.
    policy = by_reports(1)
    request = chat(SYSTEM, ("user", "Which board runs hottest? " * 40), session="alice")

    def nodes(home_load: int = 0) -> list[Candidate]:
        return [
            holding(candidate(n, load=home_load if n == home else 0, slots=8, decode_tps=10.0),
                    SYSTEM)
            for n in "ab"
        ]  # fmt: skip

    home = "a"
    home = policy.choose(request, nodes()).node_id
    away = "b" if home == "a" else "a"
    # ~260 tokens to compute at 100 tokens/s on either (2.6 s); one request in 8 slots
    # waits 1/8 x 128 / 10 = 1.6 s more: 4.2 s against 2.6, within 2x: it stays ...
    assert policy.choose(request, nodes(home_load=1)).node_id == home
    # ... four in 8 slots wait 6.4 s: 9.0 s against 2.6, beyond it: it moves ...
    assert policy.choose(request, nodes(home_load=4)).node_id == away
    # ... and stays on its new node once the old one is idle again.
    assert policy.choose(request, nodes()).node_id == away


def test_without_a_match_a_session_routes_as_session_affinity() -> None:
    request = chat(SYSTEM, ("user", "hi"), session="bob")
    nodes = [holding(candidate(n, load=i % 2, decode_tps=10.0), OTHER_SYSTEM)
             for i, n in enumerate("abcd")]  # fmt: skip
    ours, default = by_reports(6), SessionAffinity(random.Random(6), wall)
    assert [ours.choose(request, nodes).node_id for _ in range(20)] == [
        default.choose(request, nodes).node_id for _ in range(20)
    ]


# ---- large fleets (choose_among) ---------------------------------------------------------------


def _fleet(size: int, holders: dict[int, tuple[tuple[str, str], ...]]) -> ClusterSnapshot:
    """`size` idle nodes of equal speed; node i holds the chat `holders[i]` if listed."""
    nodes = []
    for i in range(size):
        hashes = chat_chain(holders[i]).hashes if i in holders else ()
        nodes.append(node(f"n{i:04d}", replica("m", decode_tps=10.0, prefix_hashes=hashes)))
    return snapshot(*nodes)


def test_in_a_large_fleet_the_nodes_holding_the_prefix_are_always_scored() -> None:
    fleet = _fleet(EXACT_UP_TO * 4, {137: (SYSTEM,), 200: (OTHER_SYSTEM,)})
    request = chat(SYSTEM, ("user", "hi"))
    for seed in range(10):
        policy = PrefixCache(random.Random(seed), wall)
        assert route(fleet, request, now=NOW, policy=policy).node_id == "n0137"


def test_in_a_large_fleet_without_a_holder_it_routes_as_the_default() -> None:
    fleet = _fleet(EXACT_UP_TO * 4, {200: (OTHER_SYSTEM,)})
    request = chat(SYSTEM, ("user", "hi"))
    ours, default = (
        PrefixCache(random.Random(4), wall),
        LeastExpectedLatency(random.Random(4), wall),
    )
    for _ in range(20):
        mine = route(fleet, request, now=NOW, policy=ours)
        assert mine.node_id == route(fleet, request, now=NOW, policy=default).node_id
