"""The placement planner: where catalog models go, what gets unloaded, and why not."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from typing import Any

import pytest

from common.memory import MemoryEstimate
from common.status import ModelState, ModelStatus, StoredFile
from orchestrator.cluster.types import Node, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.leases import StopLease
from orchestrator.placement.planner import (
    SURPLUS,
    Downloads,
    Load,
    LoadSplit,
    Plan,
    Provenance,
    Unload,
    estimates_needed,
    plan,
    store_candidates,
)
from orchestrator.placement.sources import DISK_MARGIN_BYTES, StoreModel
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


def everywhere(
    catalog: Sequence[CatalogEntry], nodes: Sequence[Node], need: int = GiB
) -> dict[tuple[str, NodeId], MemoryEstimate | str]:
    """The same estimate for every (entry, node) pair."""
    return {(e.alias, n.node_id): estimate(need) for e in catalog for n in nodes}


def loads(result: Plan) -> list[tuple[str, str]]:
    return [(load.node_id, load.entry.alias) for load in result.loads]


def unloads(result: Plan) -> list[tuple[str, str]]:
    return [(u.node_id, u.alias) for u in result.unloads]


# ---- Plan ---------------------------------------------------------------------------------


def test_empty_plan() -> None:
    assert Plan().empty
    assert not Plan(problems=(PlacementProblem("m", "x"),)).empty
    assert not Plan(unloads=(Unload(NodeId("a"), "m"),)).empty


def test_satisfied_catalog_plans_nothing() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [node("a", replica("m")), node("b")]
    assert plan(catalog, nodes, everywhere(catalog, nodes)).empty


# ---- placing ------------------------------------------------------------------------------


def test_places_on_the_node_with_the_most_memory_left() -> None:
    catalog = [entry("m")]
    nodes = [node("a", memory_free=4 * GiB), node("b", memory_free=6 * GiB), node("c")]
    result = plan(catalog, nodes, everywhere(catalog, nodes))
    assert result.loads == (Load(NodeId("c"), catalog[0]),)
    assert result.problems == ()


def test_most_left_after_the_load_not_most_free_before() -> None:
    # b has more free memory, but the model is bigger there (a larger context on a GPU
    # node, say): a keeps more after the load.
    catalog = [entry("m")]
    nodes = [node("a", memory_free=5 * GiB), node("b", memory_free=6 * GiB)]
    estimates = {("m", NodeId("a")): estimate(1 * GiB), ("m", NodeId("b")): estimate(3 * GiB)}
    assert loads(plan(catalog, nodes, estimates)) == [("a", "m")]


def test_the_fastest_node_that_fits_comes_first() -> None:
    catalog = [entry("m", replicas=2)]
    nodes = [
        fast_node("roomy", 0.0, memory_free=32 * GiB),  # speed not measured: last
        fast_node("nano", 40.0, memory_free=16 * GiB),
        fast_node("agx", 200.0, memory_free=4 * GiB),
        fast_node("agx-full", 300.0, memory_free=GiB // 2),  # fastest, but it does not fit
    ]
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes))) == [("agx", "m"), ("nano", "m")]


def fast_node(node_id: str, reference_tps: float, memory_free: int) -> Node:
    return node(node_id, reference_tps=reference_tps, memory_free=memory_free)


def test_ties_go_to_the_lower_node_id() -> None:
    catalog = [entry("m", replicas=2)]
    nodes = [node("c"), node("b"), node("a")]
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes))) == [("a", "m"), ("b", "m")]


def test_places_only_the_missing_replicas() -> None:
    catalog = [entry("m", replicas=3)]
    nodes = [node("a", replica("m")), node("b", replica("m", ModelState.LOADING)), node("c")]
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes))) == [("c", "m")]


def test_respects_labels() -> None:
    catalog = [entry("m", labels=("jetson", "gpu"))]
    nodes = [
        node("pc", memory_free=64 * GiB, labels=("gpu",)),
        node("orin", memory_free=4 * GiB, labels=("jetson", "gpu", "orin")),
    ]
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes))) == [("orin", "m")]


def test_memory_short_is_refused_with_the_figures() -> None:
    catalog = [entry("m")]
    nodes = [node("a", memory_free=int(2.4 * GiB))]
    result = plan(catalog, nodes, {("m", NodeId("a")): estimate(int(3.1 * GiB))})
    assert result.loads == ()
    assert result.problems == (
        PlacementProblem("m", "placed 0 of 1 replica; a: needs 3.10 GiB, has 2.40 GiB free"),
    )


def test_a_model_that_exactly_fits_is_placed() -> None:
    catalog = [entry("m")]
    nodes = [node("a", memory_free=GiB)]
    assert loads(plan(catalog, nodes, {("m", NodeId("a")): estimate(GiB)})) == [("a", "m")]


def test_free_memory_is_charged_across_entries_in_one_plan() -> None:
    # Each alone fits on a (the freer node); after big goes there, small fits only on b.
    catalog = [entry("big"), entry("small"), entry("third")]
    nodes = [node("a", memory_free=6 * GiB), node("b", memory_free=2 * GiB)]
    estimates: dict[tuple[str, NodeId], MemoryEstimate | str] = {
        ("big", NodeId("a")): estimate(5 * GiB),
        ("big", NodeId("b")): estimate(5 * GiB),
        ("small", NodeId("a")): estimate(1536 * MiB),
        ("small", NodeId("b")): estimate(1536 * MiB),
        ("third", NodeId("a")): estimate(1 * GiB),
        ("third", NodeId("b")): estimate(1 * GiB),
    }
    result = plan(catalog, nodes, estimates)
    assert loads(result) == [("a", "big"), ("b", "small"), ("a", "third")]
    assert result.problems == ()


def test_charged_memory_shows_in_the_refusal() -> None:
    catalog = [entry("big"), entry("next")]
    nodes = [node("a", memory_free=4 * GiB)]
    estimates: dict[tuple[str, NodeId], MemoryEstimate | str] = {
        ("big", NodeId("a")): estimate(3 * GiB),
        ("next", NodeId("a")): estimate(2 * GiB),
    }
    result = plan(catalog, nodes, estimates)
    assert loads(result) == [("a", "big")]
    assert result.problems == (
        PlacementProblem("next", "placed 0 of 1 replica; a: needs 2.00 GiB, has 1.00 GiB free"),
    )


def test_shortfall_explains_every_node() -> None:
    catalog = [entry("m", replicas=3, labels=("jetson",))]
    nodes = [
        node("node-a", labels=()),
        node("node-b", labels=("jetson",), memory_free=int(2.4 * GiB)),
        node("node-c", labels=("jetson",)),
        node("node-d", replica("m"), labels=("jetson",)),
        node("node-e", labels=("jetson",)),
        node("node-f", replica("m", ModelState.FAILED, error="out of memory"), labels=("jetson",)),
        node("node-g", replica("m", ModelState.UNLOADING), labels=("jetson",)),
        node("node-h", labels=("jetson",)),
    ]
    estimates: dict[tuple[str, NodeId], MemoryEstimate | str] = {
        ("m", NodeId("node-b")): estimate(int(3.1 * GiB)),
        ("m", NodeId("node-c")): "cannot estimate: model file /x.gguf does not exist",
        ("m", NodeId("node-e")): estimate(GiB),
        # node-h: the controller has no estimate for it yet
    }
    result = plan(catalog, nodes, estimates)
    assert loads(result) == [("node-e", "m")]
    assert result.problems == (
        PlacementProblem(
            "m",
            "placed 2 of 3 replicas; node-a: lacks labels jetson; "
            "node-b: needs 3.10 GiB, has 2.40 GiB free; "
            "node-c: cannot estimate: model file /x.gguf does not exist; "
            "node-d: already holds it; node-f: failed there: out of memory; "
            "node-g: still unloading it; node-h: no memory estimate yet",
        ),
    )


def test_lacking_several_labels_lists_them_sorted() -> None:
    catalog = [entry("m", labels=("orin", "gpu", "jetson"))]
    nodes = [node("a", labels=("gpu",))]
    (problem,) = plan(catalog, nodes, {}).problems
    assert problem.reason == "placed 0 of 1 replica; a: lacks labels jetson, orin"


def test_skips_a_node_where_the_model_failed() -> None:
    catalog = [entry("m")]
    nodes = [
        node("a", replica("m", ModelState.FAILED, error="bad magic"), memory_free=64 * GiB),
        node("b"),
    ]
    result = plan(catalog, nodes, everywhere(catalog, nodes))
    assert loads(result) == [("b", "m")]
    assert result.problems == ()


def test_a_failed_replica_does_not_count_as_held() -> None:
    catalog = [entry("m")]
    nodes = [node("a", replica("m", ModelState.FAILED, error="bad magic"))]
    result = plan(catalog, nodes, {})
    assert result.problems == (
        PlacementProblem("m", "placed 0 of 1 replica; a: failed there: bad magic"),
    )


def test_down_nodes_are_ignored() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [
        node("a", replica("m"), up=False, memory_free=64 * GiB),  # its replica does not count
        node("b"),
        node("c", up=False, memory_free=64 * GiB),
    ]
    result = plan(catalog, nodes, everywhere(catalog, nodes))
    assert loads(result) == [("b", "m")]
    assert result.unloads == ()


def test_no_worker_up() -> None:
    catalog = [entry("m", replicas=2)]
    result = plan(catalog, [node("a", up=False)], {})
    assert result.problems == (PlacementProblem("m", "placed 0 of 2 replicas; no worker is up"),)


def test_problems_follow_catalog_order() -> None:
    catalog = [entry("z"), entry("a")]
    result = plan(catalog, [], {})
    assert [p.alias for p in result.problems] == ["z", "a"]


# ---- unloading ----------------------------------------------------------------------------


def test_unloads_extras_least_loaded_first() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [
        node("a", replica("m", queued=2, active=1)),
        node("b", replica("m", active=1)),
        node("c", replica("m", queued=1, active=1)),
    ]
    assert unloads(plan(catalog, nodes, {})) == [("b", "m"), ("c", "m")]


def test_unload_ties_go_to_the_higher_node_id() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [node("a", replica("m")), node("c", replica("m")), node("b", replica("m"))]
    assert unloads(plan(catalog, nodes, {})) == [("c", "m"), ("b", "m")]


def test_a_newcomer_claiming_the_model_ready_is_the_surplus_not_the_placed_replica() -> None:
    # Finding 1 of issue 14: a node announcing a catalog model READY (forged, or an
    # operator's manual load) made the genuine replica surplus. Whatever it claims (busy,
    # fast, a lower node id), the replica the coordinator placed and watched stays.
    catalog = [entry("m", replicas=1)]
    nodes = [
        node("aaa-forged", replica("m", queued=5, active=1), reference_tps=900.0),
        node("worker-1", replica("m")),
    ]
    assert unloads(plan(catalog, nodes, {})) == [("worker-1", "m")]  # reports alone decide
    seen = {("m", NodeId("worker-1")): Provenance(first_seen=100.0, placed=True)}
    assert unloads(plan(catalog, nodes, {}, seen)) == [("aaa-forged", "m")]
    # Seen by the coordinator too, but later and not placed by it: still the one to go.
    seen[("m", NodeId("aaa-forged"))] = Provenance(first_seen=200.0)
    assert unloads(plan(catalog, nodes, {}, seen)) == [("aaa-forged", "m")]


def test_among_replicas_it_did_not_place_the_most_recently_seen_go_first() -> None:
    # After a coordinator restart nothing is "placed": arrival order still protects the
    # replicas that were there first, whatever their reported load.
    catalog = [entry("m", replicas=1)]
    nodes = [node("a", replica("m", queued=3)), node("b", replica("m")), node("c", replica("m"))]
    seen = {
        ("m", NodeId("a")): Provenance(first_seen=100.0),
        ("m", NodeId("b")): Provenance(first_seen=150.0),
        ("m", NodeId("c")): Provenance(first_seen=120.0),
    }
    assert unloads(plan(catalog, nodes, {}, seen)) == [("b", "m"), ("c", "m")]


def test_a_replica_it_placed_outlasts_an_older_one_it_did_not() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [node("a", replica("m", active=1)), node("b", replica("m"))]
    seen = {
        ("m", NodeId("a")): Provenance(first_seen=200.0, placed=True),
        ("m", NodeId("b")): Provenance(first_seen=50.0),
    }
    assert unloads(plan(catalog, nodes, {}, seen)) == [("b", "m")]


def test_replicas_seen_alike_go_least_loaded_first() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [node("a", replica("m")), node("b", replica("m", active=1))]
    same = Provenance(first_seen=100.0, placed=True)
    seen = {("m", NodeId("a")): same, ("m", NodeId("b")): same}
    assert unloads(plan(catalog, nodes, {}, seen)) == [("a", "m")]


def test_never_unloads_a_loading_replica() -> None:
    catalog = [entry("m", replicas=0)]
    nodes = [node("a", replica("m", ModelState.LOADING)), node("b", replica("m"))]
    assert unloads(plan(catalog, nodes, {})) == [("b", "m")]


def test_a_loading_replica_does_not_push_out_a_ready_one() -> None:
    # One wanted, one serving, one still loading: keep the serving one until the other is
    # ready (it may fail), then drop the less loaded of the two.
    catalog = [entry("m", replicas=1)]
    loading = [node("a", replica("m", active=1)), node("b", replica("m", ModelState.LOADING))]
    assert plan(catalog, loading, {}).empty
    ready = [node("a", replica("m", active=1)), node("b", replica("m"))]
    assert unloads(plan(catalog, ready, {})) == [("b", "m")]


def test_replicas_zero_unloads_all_ready_replicas() -> None:
    catalog = [entry("m", replicas=0)]
    nodes = [node("a", replica("m")), node("b", replica("m", active=1)), node("c")]
    result = plan(catalog, nodes, {})
    assert unloads(result) == [("a", "m"), ("b", "m")]
    assert result.loads == ()
    assert result.problems == ()


def test_never_touches_models_outside_the_catalog() -> None:
    catalog = [entry("m", replicas=1)]
    nodes = [
        node("a", replica("m"), replica("operator-model"), replica("x", ModelState.FAILED)),
        node("b", replica("operator-model")),
    ]
    result = plan(catalog, nodes, everywhere(catalog, nodes))
    assert result.empty


def test_unloads_of_several_entries_follow_catalog_order() -> None:
    catalog = [entry("z", replicas=0), entry("a", replicas=0)]
    nodes = [node("n", replica("a"), replica("z"))]
    assert unloads(plan(catalog, nodes, {})) == [("n", "z"), ("n", "a")]


# ---- determinism and estimates_needed -----------------------------------------------------


def test_same_input_same_plan_whatever_the_node_order() -> None:
    catalog = [entry("m", replicas=2), entry("e", replicas=1), entry("x", replicas=0)]
    nodes = [
        node("c", replica("x")),
        node("a", memory_free=3 * GiB),
        node("b", replica("x"), memory_free=3 * GiB),
        node("d", memory_free=GiB // 2),
    ]
    estimates = everywhere(catalog, nodes)
    first = plan(catalog, nodes, estimates)
    assert plan(catalog, list(reversed(nodes)), estimates) == first
    assert loads(first) == [("c", "m"), ("a", "m"), ("c", "e")]
    assert unloads(first) == [("c", "x"), ("b", "x")]


def test_estimates_needed_only_asks_for_what_plan_reads() -> None:
    catalog = [
        entry("satisfied"),
        entry("short", replicas=2),
        entry("gpu-only", labels=("gpu",)),
        entry("surplus", replicas=0),
    ]
    nodes = [
        node("a", replica("satisfied"), replica("short"), replica("surplus")),
        node("b", replica("short", ModelState.FAILED, error="x"), labels=("gpu",)),
        node("c"),
        node("d", up=False, labels=("gpu",)),
    ]
    needed = [(e.alias, n) for e, n in estimates_needed(catalog, nodes)]
    assert needed == [("short", "c"), ("gpu-only", "b")]


def test_estimates_needed_is_empty_for_a_healthy_cluster() -> None:
    catalog = [entry("m", replicas=2)]
    nodes = [node("a", replica("m")), node("b", replica("m", ModelState.LOADING)), node("c")]
    assert estimates_needed(catalog, nodes) == []


def test_plan_with_just_the_needed_estimates_places_everything_it_can() -> None:
    catalog = [entry("short", replicas=2), entry("gpu-only", labels=("gpu",))]
    nodes = [node("a", replica("short")), node("b", labels=("gpu",)), node("c")]
    estimates = {(e.alias, n): estimate(GiB) for e, n in estimates_needed(catalog, nodes)}
    result = plan(catalog, nodes, estimates)
    assert loads(result) == [("b", "short"), ("b", "gpu-only")]
    assert result.problems == ()


def test_actions_are_loads_then_unloads() -> None:
    catalog = [entry("x", replicas=0), entry("m")]
    nodes = [node("a", replica("x"))]
    result = plan(catalog, nodes, everywhere(catalog, nodes))
    assert result.actions == (Load(NodeId("a"), catalog[1]), Unload(NodeId("a"), "x"))


def test_too_few_workers_is_said_plainly() -> None:
    (problem,) = plan(
        [entry("m", replicas=3)], [node("a")], {("m", NodeId("a")): estimate(GiB)}
    ).problems
    assert problem.reason == "placed 1 of 3 replicas; only 1 worker is up"


# ---- splits -------------------------------------------------------------------------------

# 18 layers of 100 MiB plus 250 MiB for the rest: 2050 MiB on one node; a head with h
# layers needs 250 + 100h MiB, a helper with k layers 20 + 100k MiB.
MODEL = layered_estimate(
    18, 100 * MiB, rest_bytes=200 * MiB, compute_bytes=50 * MiB, layer_compute_bytes=20 * MiB
)


def with_model(
    catalog: Sequence[CatalogEntry], nodes: Sequence[Node]
) -> dict[tuple[str, NodeId], MemoryEstimate | str]:
    return {(e.alias, n.node_id): MODEL for e in catalog for n in nodes}


def splits(result: Plan) -> list[str]:
    return [f"{s.entry.alias}: {s.plan.explanation}" for s in result.splits]


def test_a_model_that_fits_one_node_is_loaded_there_not_split() -> None:
    catalog = [entry("m")]
    nodes = [rpc_node("a", memory_free=3 * GiB), rpc_node("b", memory_free=1200 * MiB)]
    result = plan(catalog, nodes, with_model(catalog, nodes))
    assert loads(result) == [("a", "m")]
    assert result.splits == ()


def test_a_model_that_fits_no_node_is_split() -> None:
    catalog = [entry("m")]
    nodes = [rpc_node("a", memory_free=1200 * MiB), rpc_node("b", memory_free=1200 * MiB)]
    result = plan(catalog, nodes, with_model(catalog, nodes))
    assert result.loads == ()
    assert splits(result) == ["m: layers 0-8 on a (head), 9-17 on b"]
    assert result.problems == ()
    assert result.splits[0].node_id == "a"


def test_split_nodes_splits_a_model_that_fits_one_node() -> None:
    catalog = [entry("m", split_nodes=2)]
    nodes = [rpc_node("a", memory_free=4 * GiB), rpc_node("b", memory_free=4 * GiB)]
    result = plan(catalog, nodes, with_model(catalog, nodes))
    assert result.loads == ()
    assert splits(result) == ["m: layers 0-8 on a (head), 9-17 on b"]


def test_split_nodes_one_never_splits() -> None:
    catalog = [entry("m", split_nodes=1)]
    nodes = [rpc_node("a", memory_free=1200 * MiB), rpc_node("b", memory_free=1200 * MiB)]
    result = plan(catalog, nodes, with_model(catalog, nodes))
    assert result.splits == ()
    assert result.problems == (
        PlacementProblem(
            "m",
            "placed 0 of 1 replica; a: needs 2.00 GiB, has 1.17 GiB free; "
            "b: needs 2.00 GiB, has 1.17 GiB free",
        ),
    )


def test_no_split_when_a_single_node_replica_was_placed() -> None:
    # Two wanted, one fits: the other stays missing rather than split.
    catalog = [entry("m", replicas=2)]
    nodes = [rpc_node("a", memory_free=3 * GiB), rpc_node("b", memory_free=1200 * MiB)]
    result = plan(catalog, nodes, with_model(catalog, nodes))
    assert loads(result) == [("a", "m")]
    assert result.splits == ()
    assert len(result.problems) == 1


def test_a_split_head_holds_the_model() -> None:
    catalog = [entry("m")]
    head = replica("m", rpc_servers=("b:50100",), tensor_split=(9.0,), n_gpu_layers=9)
    nodes = [
        rpc_node("a", head, memory_free=GiB),
        rpc_node("b", memory_free=GiB, leases=(lease("m", "a", "b:50100"),)),
        rpc_node("c", memory_free=4 * GiB),
    ]
    assert plan(catalog, nodes, with_model(catalog, nodes)).empty


def test_a_loading_split_head_holds_the_model_for_a_split_entry() -> None:
    catalog = [entry("m", split_nodes=2)]
    head = replica("m", ModelState.LOADING, rpc_servers=("b:50100",), n_gpu_layers=9)
    nodes = [rpc_node("a", head), rpc_node("b"), rpc_node("c")]
    assert plan(catalog, nodes, with_model(catalog, nodes)).empty


def test_neither_one_node_nor_a_split_explains_both() -> None:
    catalog = [entry("m")]
    nodes = [rpc_node("a", memory_free=800 * MiB), node("b", memory_free=GiB)]
    (problem,) = plan(catalog, nodes, with_model(catalog, nodes)).problems
    assert problem.reason == (
        "placed 0 of 1 replica; a: needs 2.00 GiB, has 800.0 MiB free; "
        "b: needs 2.00 GiB, has 1.00 GiB free; "
        "cannot split: needs at least 2 nodes, 1 can take part; b: lacks the RPC backend"
    )


def test_a_split_entry_that_cannot_split_says_why() -> None:
    catalog = [entry("m", split_nodes=3)]
    nodes = [rpc_node("a"), rpc_node("b")]
    (problem,) = plan(catalog, nodes, with_model(catalog, nodes)).problems
    assert problem == PlacementProblem("m", "cannot split: needs 3 nodes, 2 can take part")


def test_a_split_charges_every_node_it_uses() -> None:
    # After the split takes 1150 MiB of a and 920 MiB of b, the small model fits only on c.
    catalog = [entry("big"), entry("small")]
    nodes = [
        rpc_node("a", memory_free=1200 * MiB),
        rpc_node("b", memory_free=1200 * MiB),
        rpc_node("c", memory_free=600 * MiB),
    ]
    estimates = with_model(catalog[:1], nodes)
    estimates.update({("small", n.node_id): estimate(500 * MiB) for n in nodes})
    result = plan(catalog, nodes, estimates)
    assert splits(result) == ["big: layers 0-8 on a (head), 9-17 on b"]
    assert loads(result) == [("c", "small")]


def test_a_failed_split_is_unloaded_and_its_leases_stopped() -> None:
    catalog = [entry("m")]
    failed = replica(
        "m", ModelState.FAILED, error="rpc server b:50100 gone", rpc_servers=("b:50100",)
    )
    nodes = [
        rpc_node("a", failed),
        rpc_node("b", leases=(lease("m", "a", "b:50100"), lease("other", "a", "b:50101"))),
        rpc_node("c", leases=(lease("m", "a", "c:50100"),)),
    ]
    why = "its split failed: rpc server b:50100 gone"
    result = plan(catalog, nodes, {})
    assert result.unloads == (Unload(NodeId("a"), "m", why),)
    assert result.stops == (
        StopLease(NodeId("b"), "m@a", why),
        StopLease(NodeId("c"), "m@a", why),
    )


def test_a_failed_single_node_replica_is_not_unloaded() -> None:
    catalog = [entry("m")]
    nodes = [rpc_node("a", replica("m", ModelState.FAILED, error="bad magic"))]
    assert plan(catalog, nodes, {}).unloads == ()


def test_actions_are_loads_splits_unloads_then_stops() -> None:
    catalog = [entry("x", replicas=0), entry("m"), entry("s", split_nodes=2), entry("f")]
    failed = replica("f", ModelState.FAILED, rpc_servers=("d:50100",))
    nodes = [
        rpc_node("a", replica("x"), memory_free=8 * GiB),
        rpc_node("b", memory_free=8 * GiB),
        rpc_node("c", failed),
        rpc_node("d", leases=(lease("f", "c", "d:50100"),)),
    ]
    estimates = with_model(catalog, nodes)
    result = plan(catalog, nodes, estimates)
    kinds = [type(action).__name__ for action in result.actions]
    assert kinds == ["Load", "Load", "LoadSplit", "Unload", "Unload", "StopLease"]
    assert isinstance(result.actions[2], LoadSplit)
    assert [a.why for a in result.unloads] == [SURPLUS, "its split failed: no error reported"]


# ---- store models (model: NAME) ----------------------------------------------------------

SHA = "5e" * 32
STORED = StoreModel("llama-q4", SHA, 2 * GiB)


def store_entry(alias: str = "m", replicas: int = 1) -> CatalogEntry:
    return CatalogEntry(alias=alias, model="llama-q4", replicas=replicas)


def store_node(
    node_id: str,
    *replicas: ModelStatus,
    holds: bool = False,
    disk_free: int | None = 100 * GiB,
    **fields: Any,
) -> Node:
    """A node that reports its model disk and, when `holds`, the store model's file."""
    n = node(node_id, *replicas, **fields)
    files = (StoredFile(SHA, STORED.size_bytes, STORED.name),) if holds else ()
    status = dataclasses.replace(n.status, stored_files=files, model_disk_free_bytes=disk_free)
    return dataclasses.replace(n, status=status)


def resolved(**fields: Any) -> Downloads:
    return Downloads(models={"m": STORED}, **fields)


def test_an_unknown_store_name_is_a_problem_that_says_how_to_add_it() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a")]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=Downloads())
    assert result.loads == ()
    assert result.problems == (
        PlacementProblem(
            "m", "model llama-q4 is not in the store: llamaherd models add FILE --name llama-q4"
        ),
    )
    # ...and the controller's reason when the index could not be read, as it said it.
    why = "cannot read the store's index for llama-q4: disk I/O error"
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=Downloads({"m": why}))
    assert result.problems == (PlacementProblem("m", why),)


def test_a_node_without_the_file_is_a_candidate_when_its_disk_has_room() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a")]
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())) == [
        ("a", "m")
    ]


def test_a_node_whose_disk_is_too_small_is_refused_with_the_numbers() -> None:
    catalog = [store_entry()]
    nodes = [store_node("small", disk_free=GiB), store_node("old", disk_free=None)]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert result.loads == ()
    (problem,) = result.problems
    assert problem.reason == (
        "placed 0 of 1 replica; old: does not report its model disk's free space (a worker "
        f"older than the store); small: needs {2 * GiB} bytes of disk for the file "
        f"(+{DISK_MARGIN_BYTES} spare), has {GiB} free"
    )


def test_the_small_disk_node_is_passed_over_for_one_with_room() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a-small", disk_free=GiB, reference_tps=500.0), store_node("b")]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert loads(result) == [("b", "m")] and result.problems == ()


def test_a_node_that_holds_the_file_is_preferred_to_faster_ones_that_lack_it() -> None:
    catalog = [store_entry()]
    nodes = [store_node("fast", reference_tps=300.0), store_node("holder", holds=True)]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert loads(result) == [("holder", "m")]


def test_among_nodes_that_lack_it_the_quickest_download_wins_measured_or_assumed() -> None:
    catalog = [store_entry()]
    nodes = [store_node("agx", reference_tps=300.0), store_node("nano", reference_tps=40.0)]
    estimates = everywhere(catalog, nodes)
    # The nano measured a fast link; the AGX is assumed to be on a slower one.
    downloads = resolved(link_rates={NodeId("nano"): 100 * MiB}, assumed_rate=10 * MiB)
    assert loads(plan(catalog, nodes, estimates, downloads=downloads)) == [("nano", "m")]
    # With nothing measured, speed decides as before.
    assert loads(plan(catalog, nodes, estimates, downloads=resolved())) == [("agx", "m")]


def test_the_disk_is_charged_for_every_fetch_planned() -> None:
    # Two store entries naming the same 2 GiB file on a node with 3 GiB of disk: it can
    # fetch it only once in this plan, so the second goes elsewhere (the peer-to-peer
    # rollout turned off, so that b fetches at once rather than wait for a).
    catalog = [store_entry("m"), CatalogEntry(alias="n", model="llama-q4")]
    nodes = [
        store_node("a", disk_free=3 * GiB),
        store_node("b", disk_free=3 * GiB, memory_free=GiB),
    ]
    downloads = Downloads(models={"m": STORED, "n": STORED}, store_fetches_per_file=0)
    result = plan(catalog, nodes, everywhere(catalog, nodes, need=GiB // 2), downloads=downloads)
    assert loads(result) == [("a", "m"), ("b", "n")]


def test_a_download_in_progress_holds_the_model_no_second_replica_elsewhere() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a", replica("m", state=ModelState.DOWNLOADING)), store_node("b")]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert result.empty
    assert estimates_needed(catalog, nodes, resolved()) == []


def test_an_overdue_download_is_unloaded_and_placed_elsewhere_with_the_reason() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a", replica("m", state=ModelState.DOWNLOADING)), store_node("b")]
    why = "download did not finish in 3600 s (1 of 2 bytes from 10.0.0.1:8002)"
    overdue = {("m", NodeId("a")): why}
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved(overdue=overdue))
    assert result.unloads == (Unload(NodeId("a"), "m", why),)
    assert loads(result) == [("b", "m")]
    # With no other node, the reason is the problem's.
    result = plan(
        catalog, nodes[:1], everywhere(catalog, nodes), downloads=resolved(overdue=overdue)
    )
    assert result.problems == (PlacementProblem("m", f"placed 0 of 1 replica; a: {why}"),)


def test_only_nodes_holding_the_file_are_asked_for_estimates_the_rest_are_sized_here() -> None:
    catalog = [store_entry(replicas=2)]
    nodes = [store_node("a", holds=True), store_node("b"), store_node("c", labels=())]
    assert [(e.alias, n) for e, n in estimates_needed(catalog, nodes, resolved())] == [("m", "a")]
    assert [(e.alias, m.name, n) for e, m, n in store_candidates(catalog, nodes, resolved())] == [
        ("m", "llama-q4", "b"),
        ("m", "llama-q4", "c"),
    ]
    # Unresolved: nobody is asked, nothing is sized.
    assert estimates_needed(catalog, nodes, Downloads()) == []
    assert store_candidates(catalog, nodes, Downloads()) == []


def test_path_entries_plan_as_before_with_downloads_given() -> None:
    catalog = [entry("m")]
    nodes = [node("a", reference_tps=10.0), node("b", reference_tps=20.0)]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert loads(result) == [("b", "m")]


# ---- a first rollout goes peer to peer ---------------------------------------------------


def waiting_for(fetchers: str, *nodes: str) -> str:
    why = f"waiting for {fetchers} to finish fetching llama-q4 (peer-to-peer rollout)"
    return "; ".join(f"{n}: {why}" for n in nodes)


def test_a_first_rollout_fetches_once_from_the_store_and_the_other_replicas_wait() -> None:
    catalog = [store_entry(replicas=3)]
    empty = [store_node("a"), store_node("b"), store_node("c")]
    first = plan(catalog, empty, everywhere(catalog, empty), downloads=resolved())
    assert loads(first) == [("a", "m")]  # one store fetch, not three
    assert first.problems == (
        PlacementProblem("m", "placed 1 of 3 replicas; " + waiting_for("a", "b", "c")),
    )
    # While a downloads, the others keep waiting (nothing else is split or placed).
    fetching = [store_node("a", replica("m", state=ModelState.DOWNLOADING)), *empty[1:]]
    during = plan(catalog, fetching, everywhere(catalog, fetching), downloads=resolved())
    assert during.actions == ()
    assert during.problems == (
        PlacementProblem(
            "m", "placed 1 of 3 replicas; a: already holds it; " + waiting_for("a", "b", "c")
        ),
    )
    # Once a holds a verified copy, b and c are placed together: they fetch from a.
    held = [store_node("a", replica("m", state=ModelState.LOADING), holds=True), *empty[1:]]
    after = plan(catalog, held, everywhere(catalog, held), downloads=resolved())
    assert loads(after) == [("b", "m"), ("c", "m")] and after.problems == ()


def test_a_single_replica_is_placed_at_once_as_before() -> None:
    catalog = [store_entry()]
    nodes = [store_node("a"), store_node("b")]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert loads(result) == [("a", "m")] and result.problems == ()


def test_a_load_the_controller_started_counts_as_a_fetch_before_the_node_reports_it() -> None:
    # b now ranks first (more memory), but a was sent to fetch a moment ago: b waits for a.
    catalog = [store_entry(replicas=2)]
    nodes = [store_node("a"), store_node("b", memory_free=16 * GiB)]
    pending = frozenset({("m", NodeId("a"))})
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved(pending=pending))
    assert loads(result) == [("a", "m")]  # the load under way, which the controller skips
    assert result.problems == (
        PlacementProblem("m", "placed 1 of 2 replicas; " + waiting_for("a", "b")),
    )
    # Without it, b would be sent to the store too.
    assert loads(plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())) == [
        ("b", "m")
    ]


def test_another_entry_of_the_same_file_waits_too_and_is_not_split() -> None:
    catalog = [store_entry("m"), CatalogEntry(alias="n", model="llama-q4")]
    # Nodes that could split it: waiting for a peer is no reason to split it instead.
    nodes = [store_node("a", backends=("CPU", "RPC")), store_node("b", backends=("CPU", "RPC"))]
    downloads = Downloads(models={"m": STORED, "n": STORED})
    # a has room for one of them only (5 of its 8 GiB each).
    result = plan(catalog, nodes, everywhere(catalog, nodes, need=5 * GiB), downloads=downloads)
    assert loads(result) == [("a", "m")] and result.splits == ()
    assert result.problems == (
        PlacementProblem("n", "placed 0 of 1 replica; a: needs 5.00 GiB, has 3.00 GiB free; "
                             "b: waiting for a to finish fetching "
                         "llama-q4 (peer-to-peer rollout)"),
    )  # fmt: skip


def test_a_peer_holding_the_file_unloaded_lets_every_replica_fetch_from_it() -> None:
    catalog = [store_entry(replicas=2)]
    nodes = [store_node("a", holds=True, memory_free=0), store_node("b"), store_node("c")]
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved())
    assert loads(result) == [("b", "m"), ("c", "m")] and result.problems == ()


def test_an_overdue_or_failed_download_holds_no_one_back() -> None:
    catalog = [store_entry(replicas=2)]
    stuck = store_node("a", replica("m", state=ModelState.DOWNLOADING))
    nodes = [stuck, store_node("b"), store_node("c", replica("x", state=ModelState.FAILED))]
    overdue = {("m", NodeId("a")): "download did not finish in 3600 s"}
    result = plan(catalog, nodes, everywhere(catalog, nodes), downloads=resolved(overdue=overdue))
    assert unloads(result) == [("a", "m")]
    assert loads(result)[0] == ("b", "m")  # to the store, as before the rule
    # A failed download: FAILED, not DOWNLOADING, so b fetches from the store at once.
    failed = [store_node("a", replica("m", state=ModelState.FAILED, error="sha256 mismatch")),
              store_node("b")]  # fmt: skip
    result = plan(catalog, failed, everywhere(catalog, failed), downloads=resolved())
    assert loads(result) == [("b", "m")]


def test_the_store_may_serve_k_fetches_of_a_file_at_once_or_any_number() -> None:
    catalog = [store_entry(replicas=3)]
    nodes = [store_node("a"), store_node("b"), store_node("c")]
    estimates = everywhere(catalog, nodes)
    two = plan(catalog, nodes, estimates, downloads=resolved(store_fetches_per_file=2))
    assert loads(two) == [("a", "m"), ("b", "m")]
    assert two.problems == (
        PlacementProblem("m", "placed 2 of 3 replicas; " + waiting_for("a, b", "c")),
    )
    off = plan(catalog, nodes, estimates, downloads=resolved(store_fetches_per_file=0))
    assert loads(off) == [("a", "m"), ("b", "m"), ("c", "m")] and off.problems == ()


def test_measured_streams_per_watt_come_before_speed_and_unmeasured_nodes_after() -> None:
    from orchestrator.cluster.capacity import CapacityRecord

    def measured(node_id: str, streams: int, watts: float | None) -> CapacityRecord:
        return CapacityRecord(
            node=node_id, model="m", n_ctx=4096, slo="ttft_p99=2s", max_streams=streams,
            prefill_tps=1.0, decode_tps_stream=1.0, decode_tps_total=1.0, e2e_s=1.0,
            prompt_tokens=1, output_tokens=1, measured_at=0.0, watts=watts,
        )  # fmt: skip

    catalog = [entry("m", replicas=2)]
    nodes = [
        fast_node("agx", 200.0, memory_free=8 * GiB),  # fastest, 8 streams at 60 W
        fast_node("nano", 40.0, memory_free=8 * GiB),  # 3 streams at 10 W: the most per watt
        fast_node("pc", 300.0, memory_free=8 * GiB),  # measured without power: as unmeasured
    ]
    capacities = [measured("agx", 8, 60.0), measured("nano", 3, 10.0), measured("pc", 9, None)]
    estimates = everywhere(catalog, nodes)
    chosen = loads(plan(catalog, nodes, estimates, capacities=capacities))
    assert chosen == [("nano", "m"), ("agx", "m")]
    assert loads(plan(catalog, nodes, estimates)) == [("pc", "m"), ("agx", "m")]  # as before


# ---- the garbage collector ----------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_planning_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    catalog = [entry("m", replicas=2)]
    nodes = [node("a"), node("b", replica("m", ModelState.FAILED))]
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert loads(plan(catalog, nodes, everywhere(catalog, nodes))) == [("a", "m")]
        assert estimates_needed(catalog, nodes) == [(catalog[0], "a")]
        assert store_candidates(catalog, nodes, Downloads()) == []
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
