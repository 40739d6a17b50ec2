"""Split planning: which nodes share a model's layers, how many each, and why not."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from common.memory import MemoryEstimate
from common.status import ModelState
from orchestrator.cluster.types import Node, NodeId
from orchestrator.placement.split import SplitPart, SplitPlan, plan_split
from tests.unit.orchestrator.factories import (
    GiB,
    MiB,
    entry,
    estimate,
    layered_estimate,
    lease,
    node,
    replica,
    rpc_node,
)

# 18 layers of 100 MiB, 200 MiB of embeddings and output, a 50 MiB compute buffer on the
# head and 20 MiB on each helper: the whole model needs 2050 MiB on one node, a head with
# h layers 250 + 100h MiB, a helper with k layers 20 + 100k MiB.
MODEL = layered_estimate(
    18, 100 * MiB, rest_bytes=200 * MiB, compute_bytes=50 * MiB, layer_compute_bytes=20 * MiB
)


def same_estimate(
    nodes: Sequence[Node], value: MemoryEstimate | str = MODEL
) -> dict[NodeId, MemoryEstimate | str]:
    return {n.node_id: value for n in nodes}


def split(result: SplitPlan | str) -> SplitPlan:
    assert isinstance(result, SplitPlan), result
    return result


def layout(result: SplitPlan | str) -> list[tuple[str, int]]:
    """(node, layers) in layer order."""
    return [(part.node_id, part.n_layers) for part in split(result).parts]


# ---- when a split is needed ---------------------------------------------------------------


def test_a_model_that_fits_on_one_node_is_not_split() -> None:
    nodes = [rpc_node("a", memory_free=4 * GiB), rpc_node("b", memory_free=GiB)]
    assert plan_split(entry(), nodes, same_estimate(nodes)) == "fits on a alone; no split needed"


def test_split_nodes_one_never_splits() -> None:
    nodes = [rpc_node("a", memory_free=GiB), rpc_node("b", memory_free=GiB)]
    result = plan_split(entry(split_nodes=1), nodes, same_estimate(nodes))
    assert result == "split_nodes is 1: never split"


def test_split_nodes_splits_even_a_model_that_fits_on_one_node() -> None:
    nodes = [rpc_node(x, memory_free=4 * GiB) for x in "abc"]
    assert layout(plan_split(entry(split_nodes=3), nodes, same_estimate(nodes))) == [
        ("a", 6),
        ("b", 6),
        ("c", 6),
    ]


# ---- two and three nodes ------------------------------------------------------------------


def test_two_node_split_with_the_head_first() -> None:
    nodes = [rpc_node("a", memory_free=1200 * MiB), rpc_node("b", memory_free=1200 * MiB)]
    plan = split(plan_split(entry(), nodes, same_estimate(nodes)))
    assert plan == SplitPlan(
        "m",
        (
            SplitPart(NodeId("a"), 0, 9, 1150 * MiB),  # 200 + 50 + 9 x 100 MiB
            SplitPart(NodeId("b"), 9, 9, 920 * MiB),  # 9 x 100 + 20 MiB
        ),
    )
    assert plan.head == "a"
    assert plan.n_gpu_layers == 9
    assert plan.tensor_split == (9.0,)
    assert plan.explanation == "layers 0-8 on a (head), 9-17 on b"


def test_three_node_split_when_two_cannot_hold_it() -> None:
    # A head holds at most 5 layers in 800 MiB, a helper 7: two nodes hold 12 of 18.
    nodes = [rpc_node(x, memory_free=800 * MiB) for x in "abc"]
    plan = split(plan_split(entry(), nodes, same_estimate(nodes)))
    assert layout(plan) == [("a", 5), ("b", 7), ("c", 6)]
    assert plan.explanation == "layers 0-4 on a (head), 5-11 on b, 12-17 on c"
    assert plan.n_gpu_layers == 13
    assert plan.tensor_split == (7.0, 6.0)
    assert [p.reserve_bytes for p in plan.parts] == [750 * MiB, 720 * MiB, 620 * MiB]


def test_a_single_layer_span_names_one_layer() -> None:
    plan = SplitPlan("m", (SplitPart(NodeId("a"), 0, 3, 0), SplitPart(NodeId("b"), 3, 1, 0)))
    assert plan.explanation == "layers 0-2 on a (head), 3 on b"


# ---- speed ----------------------------------------------------------------------------------


def test_layers_follow_speed() -> None:
    nodes = [
        rpc_node("slow", reference_tps=100, memory_free=4 * GiB),
        rpc_node("fast", reference_tps=200, memory_free=4 * GiB),
    ]
    plan = split(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes)))
    assert layout(plan) == [("fast", 12), ("slow", 6)]


def test_an_unmeasured_node_counts_as_the_median_of_the_measured() -> None:
    nodes = [
        rpc_node("a", reference_tps=300, memory_free=4 * GiB),
        rpc_node("b", memory_free=4 * GiB),  # not measured: taken as 200 for its share
        rpc_node("c", reference_tps=100, memory_free=4 * GiB),
    ]
    plan = split(plan_split(entry(split_nodes=3), nodes, same_estimate(nodes)))
    assert layout(plan) == [("a", 9), ("c", 3), ("b", 6)]  # unmeasured nodes come last


def test_with_no_speed_measured_layers_are_shared_equally() -> None:
    nodes = [rpc_node(x, memory_free=4 * GiB) for x in "ab"]
    assert layout(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes))) == [
        ("a", 9),
        ("b", 9),
    ]


def test_the_fastest_set_is_chosen() -> None:
    nodes = [
        rpc_node("a", reference_tps=100, memory_free=4 * GiB),
        rpc_node("b", reference_tps=300, memory_free=4 * GiB),
        rpc_node("c", reference_tps=200, memory_free=4 * GiB),
    ]
    assert layout(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes))) == [
        ("b", 11),
        ("c", 7),
    ]


def test_among_equally_fast_nodes_the_most_free_memory_wins() -> None:
    nodes = [
        rpc_node("a", memory_free=3 * GiB),
        rpc_node("b", memory_free=5 * GiB),
        rpc_node("c", memory_free=4 * GiB),
    ]
    assert [
        p for p, _ in layout(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes)))
    ] == [
        "b",
        "c",
    ]


# ---- memory ---------------------------------------------------------------------------------


def test_memory_caps_a_fast_node_and_the_rest_goes_to_others() -> None:
    nodes = [
        rpc_node("fast", reference_tps=300, memory_free=800 * MiB),  # 5 as head, 7 as helper
        rpc_node("slow", reference_tps=100, memory_free=4 * GiB),
    ]
    plan = split(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes)))
    # Speed alone would give fast 13.5 layers; as a helper it takes its 7, the most it can,
    # which beats 5 as the head: the slow node heads.
    assert layout(plan) == [("slow", 11), ("fast", 7)]
    assert plan.parts[1].reserve_bytes == 720 * MiB


def test_a_node_too_small_for_the_head_can_still_help() -> None:
    nodes = [
        rpc_node("small", reference_tps=300, memory_free=300 * MiB),  # head: 0, helper: 2
        rpc_node("big", reference_tps=100, memory_free=4 * GiB),
    ]
    plan = split(plan_split(entry(split_nodes=2), nodes, same_estimate(nodes)))
    assert plan.explanation == "layers 0-15 on big (head), 16-17 on small"


def test_fewest_nodes_before_the_fastest() -> None:
    # The two fast nodes would need a third; the slow big node makes two enough.
    nodes = [
        rpc_node("fast-1", reference_tps=300, memory_free=800 * MiB),
        rpc_node("fast-2", reference_tps=300, memory_free=800 * MiB),
        rpc_node("big", reference_tps=50, memory_free=1536 * MiB),
    ]
    plan = split(plan_split(entry(), nodes, same_estimate(nodes)))
    assert plan.explanation == "layers 0-10 on big (head), 11-17 on fast-1"


def test_free_memory_given_by_the_caller_overrides_the_report() -> None:
    nodes = [rpc_node("a", memory_free=4 * GiB), rpc_node("b", memory_free=4 * GiB)]
    charged = {NodeId("a"): 800 * MiB, NodeId("b"): 1536 * MiB}  # a: 7 as a helper
    plan = split(plan_split(entry(), nodes, same_estimate(nodes), charged))
    assert layout(plan) == [("b", 11), ("a", 7)]
    assert plan.parts[1].reserve_bytes == 720 * MiB


# ---- who takes part -------------------------------------------------------------------------


def test_only_nodes_with_the_labels_take_part() -> None:
    nodes = [
        rpc_node("a", memory_free=4 * GiB),
        rpc_node("b", memory_free=1200 * MiB, labels=("gpu",)),
        rpc_node("c", memory_free=1200 * MiB, labels=("gpu", "orin")),
    ]
    plan = split(plan_split(entry(labels=("gpu",)), nodes, same_estimate(nodes)))
    assert [p for p, _ in layout(plan)] == ["b", "c"]


def test_nodes_without_the_rpc_backend_are_left_out() -> None:
    nodes = [
        node("a", memory_free=4 * GiB),
        rpc_node("b", memory_free=1200 * MiB),
        rpc_node("c", memory_free=1200 * MiB),
    ]
    assert [p for p, _ in layout(plan_split(entry(), nodes, same_estimate(nodes)))] == ["b", "c"]


def test_down_nodes_are_left_out() -> None:
    nodes = [
        rpc_node("a", memory_free=4 * GiB, up=False),
        rpc_node("b", memory_free=1200 * MiB),
        rpc_node("c", memory_free=1200 * MiB),
    ]
    assert [p for p, _ in layout(plan_split(entry(), nodes, same_estimate(nodes)))] == ["b", "c"]


def test_every_refusal_is_explained() -> None:
    nodes = [
        rpc_node("a", replica("m", ModelState.FAILED, error="helper gone"), memory_free=GiB),
        rpc_node("b", replica("m", ModelState.UNLOADING), memory_free=GiB),
        rpc_node("c", memory_free=GiB, leases=(lease("m", "x", "c:50100"),)),
        rpc_node("d", memory_free=GiB),
        rpc_node("e", memory_free=GiB),
        rpc_node("f", memory_free=GiB),
        rpc_node("g", memory_free=GiB, labels=()),
        node("h", memory_free=GiB),
        rpc_node("i", memory_free=10 * MiB),
        rpc_node("j", memory_free=GiB),
    ]
    estimates = same_estimate(nodes)
    estimates[NodeId("d")] = "cannot estimate: model file /m.gguf does not exist"
    estimates[NodeId("e")] = estimate(2 * GiB)  # an older worker: no layer figures
    estimates[NodeId("f")] = layered_estimate(12, 100 * MiB)
    del estimates[NodeId("j")]
    result = plan_split(entry(split_nodes=3), nodes, estimates)
    assert result == (
        "needs 3 nodes, 1 can take part; a: failed there: helper gone; b: still unloading it; "
        "c: already lends to it; d: cannot estimate: model file /m.gguf does not exist; "
        "e: its estimate has no per-layer figures (an older worker?); "
        "f: its file has 12 layers, not 18; h: lacks the RPC backend; "
        "i: has 10.0 MiB free, too little for one layer (120.0 MiB); j: no memory estimate yet"
    )


def test_lacking_labels_is_a_refusal() -> None:
    nodes = [rpc_node("a", memory_free=GiB)]
    result = plan_split(entry(labels=("gpu",)), nodes, same_estimate(nodes))
    assert result == "no node can take part; a: lacks labels gpu"


def test_no_rpc_backend_anywhere() -> None:
    nodes = [node("a"), node("b")]
    assert plan_split(entry(), nodes, same_estimate(nodes)) == (
        "no node can take part; a: lacks the RPC backend; b: lacks the RPC backend"
    )


def test_too_little_memory_in_all_says_how_much_they_hold() -> None:
    nodes = [rpc_node(x, memory_free=500 * MiB) for x in "abc"] + [node("d")]
    assert plan_split(entry(), nodes, same_estimate(nodes)) == (
        "needs 18 layers of 100.0 MiB (+ 20.0 MiB compute per helper); "
        "the 3 eligible nodes hold at most 10; d: lacks the RPC backend"
    )


def test_a_fixed_node_count_says_what_its_best_set_holds() -> None:
    nodes = [rpc_node("a", memory_free=800 * MiB), rpc_node("b", memory_free=800 * MiB)]
    nodes.append(rpc_node("c", memory_free=500 * MiB))
    assert plan_split(entry(split_nodes=2), nodes, same_estimate(nodes)) == (
        "needs 18 layers of 100.0 MiB (+ 20.0 MiB compute per helper); "
        "the best 2 of the 3 eligible nodes hold at most 12"
    )


def test_no_room_for_the_head_anywhere() -> None:
    nodes = [rpc_node(x, memory_free=240 * MiB) for x in "abc"]
    assert plan_split(entry(), nodes, same_estimate(nodes)) == (
        "needs 18 layers of 100.0 MiB (+ 20.0 MiB compute per helper); "
        "no node has room for the head (at least 350.0 MiB)"
    )


def test_fewer_layers_than_nodes() -> None:
    nodes = [rpc_node(x, memory_free=GiB) for x in "abc"]
    tiny = layered_estimate(2, MiB)
    result = plan_split(entry(split_nodes=3), nodes, same_estimate(nodes, tiny))
    assert result == "2 layers cannot be spread over 3 nodes"


def test_one_node_is_not_a_split() -> None:
    nodes = [rpc_node("a", memory_free=GiB), node("b")]
    assert plan_split(entry(), nodes, same_estimate(nodes)) == (
        "needs at least 2 nodes, 1 can take part; b: lacks the RPC backend"
    )


# ---- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("split_nodes", [0, 2, 3])
def test_same_input_same_plan_whatever_the_node_order(split_nodes: int) -> None:
    nodes = [
        rpc_node("d", reference_tps=120, memory_free=1200 * MiB),
        rpc_node("a", memory_free=1100 * MiB),
        rpc_node("c", reference_tps=120, memory_free=1200 * MiB),
        rpc_node("b", reference_tps=80, memory_free=1500 * MiB),
        node("e", memory_free=8 * GiB),
    ]
    estimates = same_estimate(nodes)
    first = plan_split(entry(split_nodes=split_nodes), nodes, estimates)
    assert isinstance(first, SplitPlan)
    for order in (list(reversed(nodes)), nodes[2:] + nodes[:2]):
        assert plan_split(entry(split_nodes=split_nodes), order, estimates) == first
    assert sum(p.n_layers for p in first.parts) == 18
    assert [p.first_layer for p in first.parts] == [
        sum(p.n_layers for p in first.parts[:i]) for i in range(len(first.parts))
    ]


def test_a_single_layer_model_cannot_be_split() -> None:
    nodes = [rpc_node(x, memory_free=10 * MiB) for x in "abc"]
    one_layer = layered_estimate(1, MiB, rest_bytes=100 * MiB)
    assert plan_split(entry(), nodes, same_estimate(nodes, one_layer)) == (
        "1 layer cannot be spread over 2 nodes"
    )
