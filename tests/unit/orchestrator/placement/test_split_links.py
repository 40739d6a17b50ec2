"""Split planning with link round trips: nearer nodes, the nearest head, a speed floor."""

from __future__ import annotations

import pytest

from orchestrator.cluster.types import Node, NodeId
from orchestrator.placement.split import (
    ROUND_TRIPS_PER_TOKEN,
    SplitLinks,
    SplitPlan,
    plan_split,
    split_links,
)
from tests.unit.orchestrator.factories import GiB, MiB, entry, rpc_node
from tests.unit.orchestrator.placement.test_split import layout, same_estimate, split

MS = 1e-3
# Each node of 1200 MiB holds half the model (see test_split.MODEL): a split takes two.
HALF = 1200 * MiB


def rtts(**ms: float) -> dict[NodeId, float]:
    return {NodeId(node_id): value * MS for node_id, value in ms.items()}


def far_fast_and_near_slow() -> list[Node]:
    """a and b decode the model at 100 tokens/s each, c and d at 60."""
    return [
        rpc_node("a", reference_tps=100, memory_free=HALF),
        rpc_node("b", reference_tps=100, memory_free=HALF),
        rpc_node("c", reference_tps=60, memory_free=HALF),
        rpc_node("d", reference_tps=60, memory_free=HALF),
    ]


# ---- no round trips, or equal ones: the plans of test_split ---------------------------------

LAYOUTS = {
    "two of four": (far_fast_and_near_slow(), 0),
    "speeds and an unmeasured node": (
        [
            rpc_node("a", reference_tps=300, memory_free=4 * GiB),
            rpc_node("b", memory_free=4 * GiB),
            rpc_node("c", reference_tps=100, memory_free=4 * GiB),
        ],
        3,
    ),
    "memory caps": (
        [
            rpc_node("a", reference_tps=100, memory_free=700 * MiB),
            rpc_node("b", reference_tps=100, memory_free=4 * GiB),
            rpc_node("c", reference_tps=50, memory_free=1 * GiB),
        ],
        3,
    ),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("rtt_ms", [None, 0.0, 0.3, 5.0])
def test_without_round_trips_or_with_equal_ones_the_plan_is_unchanged(
    name: str, rtt_ms: float | None
) -> None:
    nodes, split_nodes = LAYOUTS[name]
    expected = plan_split(entry(split_nodes=split_nodes), nodes, same_estimate(nodes))
    links = None
    if rtt_ms is not None:
        links = SplitLinks({n.node_id: rtt_ms * MS for n in nodes})
    result = plan_split(entry(split_nodes=split_nodes), nodes, same_estimate(nodes), links=links)
    assert layout(result) == layout(expected)


def test_equal_round_trips_still_estimate_the_speed() -> None:
    nodes = far_fast_and_near_slow()
    links = SplitLinks(rtts(a=0.5, b=0.5, c=0.5, d=0.5))
    plan = split(plan_split(entry(), nodes, same_estimate(nodes), links=links))
    # 9 layers at 100 tokens/s each side: 10 ms of compute, plus one 1 ms round trip.
    assert plan.tokens_per_second == pytest.approx(1 / 0.011)
    assert plan.explanation.endswith("(about 90.9 tokens/s with its link round trips)")


# ---- nearer nodes --------------------------------------------------------------------------


def test_a_far_fast_pair_gives_way_to_a_near_slower_one() -> None:
    nodes = far_fast_and_near_slow()
    # a and b on Wi-Fi (10 ms each): 10 ms of compute + 20 ms of round trip per token;
    # c and d wired: 16.7 ms + 0.2 ms.
    links = SplitLinks(rtts(a=10, b=10, c=0.1, d=0.1))
    plan = split(plan_split(entry(), nodes, same_estimate(nodes), links=links))
    assert layout(plan) == [("c", 9), ("d", 9)]
    assert plan.tokens_per_second == pytest.approx(1 / (1 / 60 + 0.0002))


def test_a_short_round_trip_keeps_the_fastest_pair() -> None:
    nodes = far_fast_and_near_slow()
    links = SplitLinks(rtts(a=1, b=1, c=0.1, d=0.1))  # 10 + 2 ms beats 16.7 + 0.2 ms
    assert layout(plan_split(entry(), nodes, same_estimate(nodes), links=links)) == [
        ("a", 9),
        ("b", 9),
    ]


def test_more_round_trips_per_token_tip_the_balance() -> None:
    nodes = far_fast_and_near_slow()
    rtt = rtts(a=1, b=1, c=0.1, d=0.1)
    links = SplitLinks(rtt, round_trips_per_token=4)  # 10 + 8 ms against 16.7 + 0.8 ms
    assert layout(plan_split(entry(), nodes, same_estimate(nodes), links=links))[0][0] == "c"


def test_the_head_is_the_nearest_member_among_equals() -> None:
    nodes = [rpc_node(x, reference_tps=100, memory_free=4 * GiB) for x in "abc"]
    without = layout(plan_split(entry(split_nodes=3), nodes, same_estimate(nodes)))
    assert without == [("a", 6), ("b", 6), ("c", 6)]
    # a on Wi-Fi: as the head it would make both round trips over its own link.
    links = SplitLinks(rtts(a=5, b=0.2, c=0.2))
    result = plan_split(entry(split_nodes=3), nodes, same_estimate(nodes), links=links)
    assert layout(result) == [("b", 6), ("a", 6), ("c", 6)]


def test_a_node_missing_from_the_round_trips_counts_as_near() -> None:
    nodes = far_fast_and_near_slow()
    links = SplitLinks(rtts(a=10, b=10))  # c and d unknown: taken as 0
    assert layout(plan_split(entry(), nodes, same_estimate(nodes), links=links)) == [
        ("c", 9),
        ("d", 9),
    ]


# ---- the floor -----------------------------------------------------------------------------


def test_a_split_estimated_below_the_floor_is_not_made() -> None:
    nodes = far_fast_and_near_slow()[:2]
    links = SplitLinks(rtts(a=30, b=30), min_tokens_per_second=20)  # 10 + 60 ms: 14 tok/s
    result = plan_split(entry(), nodes, same_estimate(nodes), links=links)
    assert result == (
        "the best split (layers 0-8 on a (head), 9-17 on b (about 14.3 tokens/s with its "
        "link round trips)) is below the 20 tokens/s a split must reach"
    )


def test_a_split_above_the_floor_is_made() -> None:
    nodes = far_fast_and_near_slow()[:2]
    links = SplitLinks(rtts(a=30, b=30), min_tokens_per_second=14)
    assert layout(plan_split(entry(), nodes, same_estimate(nodes), links=links)) == [
        ("a", 9),
        ("b", 9),
    ]


def test_the_floor_needs_measured_speeds() -> None:
    nodes = [rpc_node(x, memory_free=HALF) for x in "ab"]  # no reference speed
    links = SplitLinks(rtts(a=30, b=30), min_tokens_per_second=20)
    plan = split(plan_split(entry(), nodes, same_estimate(nodes), links=links))
    assert plan.tokens_per_second is None
    assert layout(plan) == [("a", 9), ("b", 9)]


def test_the_estimate_is_no_part_of_a_plans_identity() -> None:
    plan = SplitPlan("m", ())
    assert SplitPlan("m", (), tokens_per_second=12.0) == plan


def test_the_round_trip_between_two_nodes_is_the_sum_of_theirs() -> None:
    links = SplitLinks(rtts(a=2, b=0.5))
    assert links.between(NodeId("a"), NodeId("b")) == pytest.approx(2.5 * MS)
    assert links.between(NodeId("a"), NodeId("z")) == pytest.approx(2 * MS)


def test_configured_round_trips_name_nodes_or_labels_and_the_largest_wins() -> None:
    nodes = [
        rpc_node("jetson-1", labels=("wifi",)),
        rpc_node("jetson-2", labels=("wifi", "far")),
        rpc_node("pc", labels=("wired",)),
        rpc_node("other"),
    ]
    links = split_links(nodes, {"wifi": 4.0, "far": 9.0, "pc": 0.3}, min_tokens_per_second=5)
    assert links.rtt_s == pytest.approx(rtts(**{"jetson-1": 4, "jetson-2": 9, "pc": 0.3}))
    assert links.min_tokens_per_second == 5
    assert links.round_trips_per_token == ROUND_TRIPS_PER_TOKEN
