"""The cluster power budget in placement: the recorded Jetson and NVML boards, read through
the real telemetry sources and driven from idle to loaded, as the nodes of real plans
(planner.plan spending the budget as it plans) and of the real controller."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.recorded_telemetry import RecordedGpuBox, RecordedJetson

from common.telemetry import NodeSample
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.controller import PlacementController
from orchestrator.placement.planner import Estimates, Load, Plan, plan
from orchestrator.placement.power import (
    DGPU_REPLICA_W,
    JETSON_REPLICA_W,
    PowerFigures,
    power_figures,
    telemetry_headroom,
)
from orchestrator.routing.admission import cluster_draw
from orchestrator.routing.heat import MAX_AGE_S
from tests.unit.orchestrator.factories import (
    NOW,
    GiB,
    MiB,
    entry,
    estimate,
    layered_estimate,
    node,
)
from tests.unit.orchestrator.placement.test_controller import TIMINGS, Clock, Workers

# The recorded draws: the AGX Orin's rail sum, the Orin Nano's VDD_IN, the RTX 4090's NVML.
AGX_W, NANO_W, RTX_W = 26.824, 8.5, 418.734


@pytest.fixture
def agx(tmp_path: Path) -> Iterator[RecordedJetson]:
    board = RecordedJetson("agx-orin-64gb", tmp_path / "agx_release")
    yield board
    board.close()


@pytest.fixture
def nano(tmp_path: Path) -> Iterator[RecordedJetson]:
    board = RecordedJetson("orin-nano-8gb", tmp_path / "nano_release")
    yield board
    board.close()


@pytest.fixture
def rtx() -> Iterator[RecordedGpuBox]:
    box = RecordedGpuBox("x86-rtx4090")
    yield box
    box.close()


def reporting(node_id: str, sample: NodeSample | None, **fields: object) -> Node:
    """A node (factories.node) whose last heartbeat carried `sample`."""
    bare = node(node_id, **fields)  # type: ignore[arg-type]
    return dataclasses.replace(bare, status=dataclasses.replace(bare.status, telemetry=sample))


def needs(catalog: list[CatalogEntry], nodes: list[Node], size: int = GiB) -> Estimates:
    return {(e.alias, n.node_id): estimate(size) for e in catalog for n in nodes}


def budgeted(
    catalog: list[CatalogEntry], nodes: list[Node], budget_w: float, **figures: object
) -> tuple[Plan, PowerFigures]:
    """The plan as the controller makes it under `budget_w`."""
    power = power_figures(budget_w, nodes, NOW, **figures)  # type: ignore[arg-type]
    return plan(catalog, nodes, needs(catalog, nodes), power=power), power


def only_problem(result: Plan) -> str:
    (problem,) = result.problems
    return problem.reason


# ---- what the cluster draws, and what a replica adds ------------------------------------


def test_the_draw_sums_the_recorded_boards_and_names_the_nodes_without_power(
    agx: RecordedJetson, nano: RecordedJetson, rtx: RecordedGpuBox
) -> None:
    nodes = [
        reporting("agx", agx.sample(NOW)),
        reporting("nano", nano.sample(NOW)),
        reporting("rtx", rtx.sample(NOW)),
        reporting("cpu", None),  # a CPU-only PC: no power figure
        reporting("stale", rtx.sample(NOW - MAX_AGE_S - 1)),  # its last figure is too old
        reporting("gone", rtx.sample(NOW), up=False),  # down: not in the cluster's draw
    ]
    draw = cluster_draw(nodes, NOW)
    assert draw.watts == pytest.approx(AGX_W + NANO_W + RTX_W)
    assert draw.measured == ("agx", "nano", "rtx")
    assert draw.unmeasured == ("cpu", "stale")
    assert draw.text() == "454 W (2 unmeasured: cpu, stale report no power)"


def test_what_a_replica_adds_comes_from_the_power_mode_the_gpu_limit_or_a_default(
    agx: RecordedJetson, nano: RecordedJetson, rtx: RecordedGpuBox
) -> None:
    # The Nano runs nvpmodel "15W": at most 15 W less its 8.5 W.
    assert telemetry_headroom(nano.sample(NOW), NOW) == (
        pytest.approx(15.0 - NANO_W), "power mode 15W"
    )  # fmt: skip
    # The AGX runs MAXN, which names no budget.
    assert telemetry_headroom(agx.sample(NOW), NOW) == (JETSON_REPLICA_W, "Jetson default")
    # The 4090's enforced limit is 450 W.
    assert telemetry_headroom(rtx.sample(NOW), NOW) == (
        pytest.approx(450.0 - RTX_W), "GPU power limit"
    )  # fmt: skip
    rtx.fake.fixture["devices"][0]["nvmlDeviceGetEnforcedPowerLimit"] = {
        "error": "NVML_ERROR_NOT_SUPPORTED"
    }
    assert telemetry_headroom(rtx.sample(NOW), NOW) == (DGPU_REPLICA_W, "GPU default")
    assert telemetry_headroom(None, NOW) is None


def test_a_measured_draw_serving_the_model_comes_first(nano: RecordedJetson) -> None:
    nodes = [reporting("nano", nano.draw(5.0).sample(NOW))]
    record = CapacityRecord(
        node="nano", model="m", n_ctx=4096, slo="ttft_p99=2s", max_streams=2,
        prefill_tps=100.0, decode_tps_stream=10.0, decode_tps_total=20.0, e2e_s=3.0,
        prompt_tokens=128, output_tokens=64, measured_at=0.0, watts=9.0,
    )  # fmt: skip
    figures = power_figures(100.0, nodes, NOW, [record])
    assert figures.replica_watts("m", NodeId("nano")) == (pytest.approx(4.0), "measured")
    assert figures.replica_watts("other", NodeId("nano")) == (pytest.approx(10.0), "power mode 15W")


# ---- placement under the budget -----------------------------------------------------------


def test_the_node_whose_replica_fits_is_chosen_over_a_faster_one_that_does_not(
    nano: RecordedJetson, rtx: RecordedGpuBox
) -> None:
    catalog = [entry("m")]
    nodes = [
        reporting("nano", nano.sample(NOW), reference_tps=20.0),
        reporting("rtx", rtx.sample(NOW), reference_tps=200.0),
    ]
    # Without a budget the faster node takes it.
    assert plan(catalog, nodes, needs(catalog, nodes)).loads == (Load(NodeId("rtx"), catalog[0]),)
    # 440 W: 427 W now; the 4090 could add 31 W (to its limit), the Nano 6.5 W (to 15 W).
    result, _ = budgeted(catalog, nodes, 440.0)
    assert result.loads == (Load(NodeId("nano"), catalog[0]),)
    assert not result.problems
    # 430 W: neither fits, and the refusal names the budget node by node.
    result, _ = budgeted(catalog, nodes, 430.0)
    assert not result.loads
    reason = only_problem(result)
    assert "placed 0 of 1 replica" in reason
    assert "nano: power budget 430 W: the cluster draws 427 W and a replica here adds about " \
        "6 W (power mode 15W)" in reason  # fmt: skip
    assert "rtx: power budget 430 W: the cluster draws 427 W and a replica here adds about " \
        "31 W (GPU power limit)" in reason  # fmt: skip


def test_the_budget_stops_placement_and_releases_it_as_the_draw_falls(
    agx: RecordedJetson, nano: RecordedJetson
) -> None:
    catalog = [entry("m")]
    budget = 30.0
    placed_at: list[float] = []
    # The AGX from loaded (its recorded 26.8 W) down to idle; the Nano stays at its 8.5 W.
    for agx_watts in (AGX_W, 24.0, 20.0, 16.0, 14.0, 12.0, 8.0):
        nodes = [
            reporting("agx", agx.draw(agx_watts).sample(NOW)),
            reporting("nano", nano.sample(NOW)),
        ]
        result, power = budgeted(catalog, nodes, budget)
        assert power.draw.watts == pytest.approx(agx_watts + NANO_W)
        if result.loads:
            placed_at.append(agx_watts)
            # The Nano adds 6.5 W (its 15W mode); the AGX would add 15 W (MAXN default).
            assert result.loads == (Load(NodeId("nano"), catalog[0]),)
            assert power.draw.watts + 6.5 <= budget
        else:
            assert "power budget 30 W" in only_problem(result)
            assert power.draw.watts + 6.5 > budget
    assert placed_at == [14.0, 12.0, 8.0]  # 22.5 W + 6.5 W: the first within 30 W
    # Loaded again: refused again.
    nodes = [reporting("agx", agx.draw(AGX_W).sample(NOW)), reporting("nano", nano.sample(NOW))]
    result, _ = budgeted(catalog, nodes, budget)
    assert not result.loads
    assert "the cluster draws 35 W" in only_problem(result)


def test_several_replicas_are_charged_one_after_the_other(
    agx: RecordedJetson, nano: RecordedJetson
) -> None:
    # 8 + 8.5 = 16.5 W now; the AGX adds 15 W, the Nano 6.5 W: each fits 35 W alone,
    # not both together.
    catalog = [entry("m", replicas=2)]
    nodes = [reporting("agx", agx.draw(8.0).sample(NOW)), reporting("nano", nano.sample(NOW))]
    result, _ = budgeted(catalog, nodes, 35.0)
    assert [load.node_id for load in result.loads] == ["agx"]
    reason = only_problem(result)
    assert reason == (
        "placed 1 of 2 replicas; nano: power budget 35 W: the cluster draws 16 W (+15 W "
        "planned this round) and a replica here adds about 6 W (power mode 15W)"
    )
    # With room for both, both are placed.
    result, _ = budgeted(catalog, nodes, 40.0)
    assert {load.node_id for load in result.loads} == {"agx", "nano"}
    assert not result.problems


def test_a_later_entry_goes_where_its_replica_still_fits_after_the_earlier_ones(
    agx: RecordedJetson, nano: RecordedJetson
) -> None:
    # 16.5 W now. m takes the faster AGX (+15 W: 31.5 W); n would rank the AGX first too,
    # but there it would reach 46.5 W, past 40 W: the Nano (+6.5 W: 38 W) takes it.
    catalog = [entry("m"), entry("n")]
    nodes = [
        reporting("agx", agx.draw(8.0).sample(NOW), reference_tps=50.0, memory_free=8 * GiB),
        reporting("nano", nano.sample(NOW), reference_tps=20.0, memory_free=8 * GiB),
    ]
    unbudgeted = plan(catalog, nodes, needs(catalog, nodes))
    assert [(ld.entry.alias, ld.node_id) for ld in unbudgeted.loads] == [("m", "agx"), ("n", "agx")]
    result, _ = budgeted(catalog, nodes, 40.0)
    assert [(ld.entry.alias, ld.node_id) for ld in result.loads] == [("m", "agx"), ("n", "nano")]
    assert not result.problems


def test_a_node_without_power_takes_a_replica_only_while_the_draw_is_within_the_budget(
    agx: RecordedJetson,
) -> None:
    catalog = [entry("m")]
    measured = reporting("agx", agx.sample(NOW), memory_free=GiB // 2)  # too small for m
    nodes = [measured, reporting("cpu", None)]
    result, power = budgeted(catalog, nodes, 30.0)
    assert power.draw.unmeasured == ("cpu",)
    assert result.loads == (Load(NodeId("cpu"), catalog[0]),)  # 26.8 W: within 30 W
    result, _ = budgeted(catalog, nodes, 25.0)  # over it: every node is refused alike
    assert not result.loads
    assert "cpu: power budget 25 W: the cluster draws 27 W (1 unmeasured: cpu reports no " \
        "power)" in only_problem(result)  # fmt: skip


def test_without_telemetry_or_with_room_the_plan_is_unchanged(agx: RecordedJetson) -> None:
    catalog = [entry("m", replicas=2), entry("n")]
    nodes = [reporting("a", None), reporting("b", agx.draw(5.0).sample(NOW))]
    result, _ = budgeted(catalog, nodes, 1000.0)
    assert result == plan(catalog, nodes, needs(catalog, nodes))


# ---- through the controller ---------------------------------------------------------------


def test_the_controller_starts_no_replica_over_the_budget_and_publishes_why(
    agx: RecordedJetson, nano: RecordedJetson
) -> None:
    workers, clock = Workers(), Clock()
    published: list[tuple[PlacementProblem, ...]] = []

    async def publish(problems: tuple[PlacementProblem, ...]) -> None:
        published.append(problems)

    async def no_snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
        raise AssertionError("the test drives reconcile itself")

    def cluster(agx_watts: float) -> ClusterSnapshot:
        nodes = (
            reporting("agx", agx.draw(agx_watts).sample(NOW)),
            reporting("nano", nano.sample(NOW)),
        )
        # The registry's clock is monotonic; the samples' is unix time (wall_clock).
        return ClusterSnapshot(version=1, taken_at=NOW - 900.0, nodes=nodes)

    async def main() -> None:
        controller = PlacementController(
            [entry("m")], 1.0, no_snapshots, publish, workers,
            clock=clock, timings=TIMINGS, power_budget_w=30.0, wall_clock=lambda: NOW,
        )  # fmt: skip
        await controller.reconcile(cluster(AGX_W))
        await controller.settle()
        assert workers.actions() == []
        ((problem,),) = published
        assert "power budget 30 W" in problem.reason
        await controller.reconcile(cluster(8.0))  # the AGX idles: 16.5 W + 6.5 W fits
        await controller.settle()
        assert workers.actions() == ["nano: load m"]
        await controller.stop()

    asyncio.run(main())


def test_a_split_is_charged_for_every_node_it_spans(
    agx: RecordedJetson, nano: RecordedJetson
) -> None:
    # 18 layers of 100 MiB: neither 1.2 GiB node holds it alone, so plan() splits it over
    # both. Each node's replica fits 35 W alone (16.5 W now, +15 W or +6.5 W); the split
    # adds both.
    big = layered_estimate(18, 100 * MiB, rest_bytes=200 * MiB, compute_bytes=50 * MiB,
                           layer_compute_bytes=20 * MiB)  # fmt: skip
    catalog = [entry("big")]
    nodes = [
        _rpc(reporting("agx", agx.draw(8.0).sample(NOW), memory_free=1200 * MiB)),
        _rpc(reporting("nano", nano.sample(NOW), memory_free=1200 * MiB)),
    ]
    estimates = {("big", n.node_id): big for n in nodes}
    assert len(plan(catalog, nodes, estimates).splits) == 1
    for budget, kept in ((40.0, 1), (35.0, 0)):
        power = power_figures(budget, nodes, NOW)
        result = plan(catalog, nodes, estimates, power=power)
        assert len(result.splits) == kept
    assert only_problem(result).endswith(
        "; cannot split: agx, nano: power budget 35 W: the cluster draws 16 W and a replica "
        "here adds about 22 W (Jetson default, power mode 15W)"
    )


def _rpc(node: Node) -> Node:
    """`node`, able to lend and use devices over RPC (layer splits)."""
    hardware = dataclasses.replace(node.status.hardware, backends=("CPU", "RPC"))
    return dataclasses.replace(node, status=dataclasses.replace(node.status, hardware=hardware))
