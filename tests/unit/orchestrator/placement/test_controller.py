"""The placement controller against stand-in workers: what it asks of them, in which order,
and what it remembers, with the clock in the test's hands.

The stand-in replaces the workers' RPC surface (remote processes), not our logic: the real
planner decides, the real controller carries the plan out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common.errors import FailedPrecondition, LlamaherdError, NotFound, ResourceExhausted
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.net import split_host_port
from common.status import ModelState
from orchestrator.cluster.types import ClusterSnapshot, Node, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.controller import PlacementController, Timings
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
    snapshot,
)

TIMINGS = Timings(rejoin_grace_s=0.0)  # the rejoin grace has tests of its own below
# 18 layers of 100 MiB: 2 GiB in all, so two 1.2 GiB nodes hold it only as a split.
BIG = layered_estimate(
    18, 100 * MiB, rest_bytes=200 * MiB, compute_bytes=50 * MiB, layer_compute_bytes=20 * MiB
)


@dataclass
class FakeWorker:
    """One worker's RPC surface: answers every call, or refuses the ones in `refusals`
    (call name -> error), and writes what it was asked into the shared `calls` log."""

    name: str
    calls: list[str]
    needs: MemoryEstimate = field(default_factory=lambda: estimate(GiB))
    refusals: dict[str, LlamaherdError] = field(default_factory=dict)
    lends_dead: str = ""  # a StartRpcServer whose server exits at once, with this error
    loading: asyncio.Event | None = None  # a load that takes until this is set
    loaded: list[ModelConfig] = field(default_factory=list)
    timeouts: dict[str, float | None] = field(default_factory=dict)

    def _call(self, verb: str, what: str, timeout: float | None) -> None:
        self.calls.append(f"{self.name}: {verb} {what}")
        self.timeouts[verb] = timeout
        if verb in self.refusals:
            raise self.refusals[verb]

    async def estimate(self, config: ModelConfig, timeout: float | None = None) -> MemoryEstimate:
        self._call("estimate", config.alias, timeout)
        return self.needs

    async def load(self, config: ModelConfig, timeout: float | None = None) -> None:
        over = f" over {','.join(config.rpc_servers)}" if config.rpc_servers else ""
        self._call("load", config.alias + over, timeout)
        if self.loading is not None:
            await self.loading.wait()
        self.loaded.append(config)

    async def unload(self, alias: str, timeout: float | None = None) -> None:
        self._call("unload", alias, timeout)

    async def start_rpc_server(
        self, lease_id: str, head_host: str, reserve_bytes: int, timeout: float | None = None
    ) -> Lease:
        self._call("lend", f"{lease_id} to {head_host}", timeout)
        endpoint = f"{self.name}:50100"
        if self.lends_dead:
            return Lease(lease_id, endpoint, head_host, running=False, error=self.lends_dead)
        return Lease(lease_id, endpoint, head_host, reserved_bytes=reserve_bytes)

    async def stop_rpc_server(self, lease_id: str, timeout: float | None = None) -> None:
        self._call("stop", lease_id, timeout)


class Workers:
    """The client factory: one FakeWorker per address, all writing one call log."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._by_name: dict[str, FakeWorker] = {}

    def __getitem__(self, name: str) -> FakeWorker:
        if name not in self._by_name:
            self._by_name[name] = FakeWorker(name, self.calls)
        return self._by_name[name]

    def __call__(self, address: str) -> FakeWorker:
        return self[split_host_port(address)[0]]  # the factories' nodes are "<id>:50051"

    def take(self) -> list[str]:
        """The calls logged since the last take."""
        taken, self.calls[:] = list(self.calls), []
        return taken

    def actions(self) -> list[str]:
        """The calls logged since the last take, but the estimates."""
        return [c for c in self.take() if c.split()[1] != "estimate"]

    def need(self, estimate: MemoryEstimate, *names: str) -> None:
        for name in names:
            self[name].needs = estimate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    controller: PlacementController
    workers: Workers
    clock: Clock
    published: list[tuple[PlacementProblem, ...]]

    async def round(self, *nodes: Node) -> None:
        """One reconcile on a snapshot of `nodes`, then its actions to their end."""
        await self.controller.reconcile(snapshot(*nodes))
        await self.controller.settle()


def run(
    catalog: list[CatalogEntry],
    scenario: Callable[[Harness], Awaitable[None]],
    workers: Workers | None = None,
    **options: Any,
) -> None:
    """`scenario` against a PlacementController of `catalog` (and `options`, passed on to
    it), on `workers` (a fresh Workers by default) and a hand-moved clock."""
    workers, clock = workers if workers is not None else Workers(), Clock()
    published: list[tuple[PlacementProblem, ...]] = []

    async def publish(problems: tuple[PlacementProblem, ...]) -> None:
        published.append(problems)

    async def no_snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
        raise AssertionError("the tests drive reconcile themselves")

    async def main() -> None:
        options.setdefault("timings", TIMINGS)
        controller = PlacementController(
            catalog, 1.0, no_snapshots, publish, workers, clock=clock, **options
        )
        await scenario(Harness(controller, workers, clock, published))
        await controller.stop()

    asyncio.run(main())


# ---- single-node loads -----------------------------------------------------------------


def test_reconcile_estimates_then_loads_what_the_plan_says() -> None:
    catalog = [entry("m")]

    async def scenario(h: Harness) -> None:
        await h.round(node("a"))
        assert h.workers.take() == ["a: estimate m", "a: load m"]
        (loaded,) = h.workers["a"].loaded
        # Only what the entry sets is sent: the worker applies its own defaults.
        assert loaded == catalog[0].load_settings()
        assert loaded.model_fields_set == {"alias", "path"}
        assert h.workers["a"].timeouts == {
            "estimate": TIMINGS.estimate_timeout_s,
            "load": TIMINGS.load_timeout_s,
        }

    run(catalog, scenario)


def test_a_node_that_holds_the_model_is_asked_nothing() -> None:
    async def scenario(h: Harness) -> None:
        await h.round(node("a", replica("m")))
        assert h.workers.take() == []

    run([entry("m")], scenario)


def test_a_surplus_replica_is_unloaded() -> None:
    async def scenario(h: Harness) -> None:
        await h.round(node("a", replica("m")), node("b", replica("m", active=1)))
        assert h.workers.take() == ["a: unload m"]
        assert h.workers["a"].timeouts == {"unload": TIMINGS.unload_timeout_s}

    run([entry("m", replicas=1)], scenario)


def test_a_node_that_reports_the_model_ready_cannot_get_the_placed_replica_unloaded() -> None:
    # Finding 1 of issue 14, end to end through the controller: worker-1 gets the model
    # from placement and serves; then a node that placement never asked announces it
    # READY, busier and faster, under a lower node id. The surplus unload goes to it.
    async def scenario(h: Harness) -> None:
        await h.round(node("worker-1"))
        assert h.workers.actions() == ["worker-1: load m"]
        await h.round(node("worker-1", replica("m", ModelState.LOADING)))
        h.clock.now += 1
        await h.round(node("worker-1", replica("m")))
        h.clock.now += 60
        forged = node("aaa", replica("m", queued=4, active=1), reference_tps=900.0)
        await h.round(forged, node("worker-1", replica("m")))
        assert h.workers.actions() == ["aaa: unload m"]
        # And it keeps being the one, round after round, while it claims the model.
        h.clock.now += 1
        await h.round(forged, node("worker-1", replica("m")))
        assert h.workers.actions() == ["aaa: unload m"]

    run([entry("m", replicas=1)], scenario)


def test_a_replica_that_leaves_and_returns_is_new_again() -> None:
    # Provenance is forgotten with the replica: one that was unloaded (or whose node was
    # forgotten) and comes back counts from its return, after the one that stayed.
    async def scenario(h: Harness) -> None:
        await h.round(node("a", replica("m")), node("b"))
        h.clock.now += 10
        await h.round(node("a"), node("b", replica("m")))
        h.clock.now += 10
        await h.round(node("a", replica("m")), node("b", replica("m")))
        assert h.workers.actions() == ["a: unload m"]

    run([entry("m", replicas=1)], scenario)


def test_a_failed_load_is_recorded_and_not_retried_before_its_back_off() -> None:
    async def scenario(h: Harness) -> None:
        h.workers["a"].refusals["load"] = ResourceExhausted("needs 2.0 GiB, has 1.0 GiB")
        await h.round(node("a"))
        assert h.workers.actions() == ["a: load m"]

        h.clock.now += TIMINGS.retry_failed_after_s - 1
        await h.round(node("a"))
        assert h.workers.take() == []  # neither estimated nor loaded again
        (problem,) = h.published[-1]
        assert "a: load failed there: needs 2.0 GiB, has 1.0 GiB" in problem.reason

        h.clock.now += 1
        del h.workers["a"].refusals["load"]
        await h.round(node("a"))
        # The estimate was good and the node is the same: only the load is asked again.
        assert h.workers.take() == ["a: load m"]
        assert h.published[-1] == ()

    run([entry("m")], scenario)


def test_a_failed_estimate_is_asked_again_only_after_the_back_off() -> None:
    async def scenario(h: Harness) -> None:
        h.workers["a"].refusals["estimate"] = NotFound("no such file: /models/m.gguf")
        await h.round(node("a"))
        assert h.workers.take() == ["a: estimate m"]
        (problem,) = h.published[-1]
        assert "cannot estimate: no such file: /models/m.gguf" in problem.reason

        h.clock.now += TIMINGS.retry_failed_after_s - 1
        await h.round(node("a"))
        assert h.workers.take() == []

        h.clock.now += 1
        await h.round(node("a"))
        assert h.workers.take() == ["a: estimate m"]

    run([entry("m")], scenario)


def test_problems_are_published_only_when_they_change() -> None:
    async def scenario(h: Harness) -> None:
        h.workers["a"].needs = estimate(16 * GiB)
        await h.round(node("a"))
        await h.round(node("a"))
        assert len(h.published) == 1
        (problem,) = h.published[0]
        assert problem.alias == "m" and "needs 16.00 GiB, has 8.00 GiB free" in problem.reason

        await h.round(node("a", replica("m")))  # loaded by an operator meanwhile
        await h.round(node("a", replica("m")))
        assert h.published == [(problem,), ()]

    run([entry("m")], scenario)


# ---- splits ----------------------------------------------------------------------------


def test_a_split_lends_the_helpers_devices_then_loads_the_head_over_them() -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, "a", "b")
        await h.round(rpc_node("a", memory_free=1200 * MiB), rpc_node("b", memory_free=1200 * MiB))
        assert h.workers.actions() == ["b: lend m@a to a", "a: load m over b:50100"]
        (head,) = h.workers["a"].loaded
        assert head.rpc_servers == ("b:50100",)
        assert (head.n_gpu_layers, head.tensor_split) == (9, (9.0,))  # layers 9-17 on b
        assert {"rpc_servers", "tensor_split", "n_gpu_layers"} <= head.model_fields_set
        assert h.workers["b"].timeouts == {
            "estimate": TIMINGS.estimate_timeout_s,
            "lend": TIMINGS.rpc_server_timeout_s,
        }

    run([entry("m")], scenario)


def test_a_split_whose_head_refuses_stops_the_leases_it_started() -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, "a", "b", "c")
        h.workers["a"].refusals["load"] = FailedPrecondition("cannot reach c:50100")
        await h.round(rpc_node("a"), rpc_node("b"), rpc_node("c"))
        assert h.workers.actions() == [
            "b: lend m@a to a",
            "c: lend m@a to a",
            "a: load m over b:50100,c:50100",
            "b: stop m@a",
            "c: stop m@a",
        ]
        # Recorded against the head, so the next round does not try it again.
        await h.round(rpc_node("a"), rpc_node("b"), rpc_node("c"))
        assert h.workers.take() == []
        (problem,) = h.published[-1]
        assert "a: split load failed there: cannot reach c:50100" in problem.reason

    run([entry("m", split_nodes=3)], scenario)


def test_a_helper_whose_server_exits_ends_the_split_before_the_head_loads() -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, "a", "b", "c")
        h.workers["c"].lends_dead = "port 50100 in use"
        await h.round(rpc_node("a"), rpc_node("b"), rpc_node("c"))
        assert h.workers.actions() == [
            "b: lend m@a to a",
            "c: lend m@a to a",
            "b: stop m@a",
            "c: stop m@a",
        ]
        await h.round(rpc_node("a"), rpc_node("b"), rpc_node("c"))
        (problem,) = h.published[-1]
        assert "c: its RPC server exited: port 50100 in use" in problem.reason

    run([entry("m", split_nodes=3)], scenario)


def test_a_split_that_lost_a_helper_is_unloaded_then_split_over_the_nodes_left() -> None:
    async def scenario(h: Harness) -> None:
        # b died: the head reports its split FAILED; c still lends it a device.
        failed = replica("m", ModelState.FAILED, error="b:50100 gone", rpc_servers=("b:50100",))
        c_lease = lease("m", "a", "c:50100")
        h.workers.need(BIG, "a", "c")
        await h.round(rpc_node("a", failed), rpc_node("c", leases=(c_lease,)))
        assert sorted(h.workers.actions()) == ["a: unload m", "c: stop m@a"]

        await h.round(rpc_node("a"), rpc_node("c"))
        assert h.workers.actions() == ["c: lend m@a to a", "a: load m over c:50100"]

    run([entry("m", split_nodes=2)], scenario)


def test_an_orphan_lease_is_stopped_only_after_its_grace_period() -> None:
    # A lease for a head that holds no split of the model (replicas 0: nothing to place).
    orphan = lease("m", "a", "b:50100")

    async def scenario(h: Harness) -> None:
        await h.round(rpc_node("a"), rpc_node("b", leases=(orphan,)))
        h.clock.now += TIMINGS.orphan_grace_s - 1
        await h.round(rpc_node("a"), rpc_node("b", leases=(orphan,)))
        assert h.workers.take() == []

        h.clock.now += 1
        await h.round(rpc_node("a"), rpc_node("b", leases=(orphan,)))
        assert h.workers.take() == ["b: stop m@a"]
        assert h.workers["b"].timeouts == {"stop": TIMINGS.stop_lease_timeout_s}

    run([entry("m", replicas=0)], scenario)


def test_an_orphan_lease_that_goes_away_restarts_its_grace_period() -> None:
    orphan = lease("m", "a", "b:50100")

    async def scenario(h: Harness) -> None:
        await h.round(rpc_node("a"), rpc_node("b", leases=(orphan,)))
        h.clock.now += TIMINGS.orphan_grace_s
        await h.round(rpc_node("a"), rpc_node("b"))  # gone from b's report
        await h.round(rpc_node("a"), rpc_node("b", leases=(orphan,)))
        assert h.workers.take() == []

    run([entry("m", replicas=0)], scenario)


def test_the_leases_of_a_split_under_way_are_not_orphans_however_long_the_head_loads() -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, "a", "b")
        h.workers["a"].loading = asyncio.Event()
        nodes = (rpc_node("a", memory_free=1200 * MiB), rpc_node("b", memory_free=1200 * MiB))
        await h.controller.reconcile(snapshot(*nodes))
        while "a: load m over b:50100" not in h.workers.calls:
            await asyncio.sleep(0)
        lent = rpc_node("b", memory_free=200 * MiB, leases=(lease("m", "a", "b:50100"),))
        for _ in range(2):
            h.clock.now += TIMINGS.orphan_grace_s
            await h.controller.reconcile(snapshot(nodes[0], lent))
        h.workers["a"].loading.set()
        await h.controller.settle()
        assert h.workers.actions() == ["b: lend m@a to a", "a: load m over b:50100"]

    run([entry("m")], scenario)
