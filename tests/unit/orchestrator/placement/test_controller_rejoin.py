"""The placement controller's rejoin grace: after it meets a registry (its first snapshot, a
registry that failed to answer, or one whose versions count from zero again), it loads and
unloads nothing until workers have had time to register.

Issue 14: a chaos run saw a placement that had just met a restarted (empty) registry load a
third replica onto the first worker to re-register, then unload one when the others were
back. The clock is the test's; the workers are the stand-ins of test_controller.
"""

from __future__ import annotations

import asyncio
import contextlib

from common.errors import Unavailable
from orchestrator.cluster.types import ClusterSnapshot, Node, PlacementProblem
from orchestrator.placement.controller import PlacementController, Timings, rejoined
from tests.unit.orchestrator.factories import NOW, entry, node, replica
from tests.unit.orchestrator.placement.test_controller import Clock, Workers

GRACE = 2.0
TIMINGS = Timings(rejoin_grace_s=GRACE)


def _snapshot(version: int, *nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(version=version, taken_at=NOW, nodes=nodes)


def _controller(workers: Workers, clock: Clock) -> PlacementController:

    async def publish(problems: tuple[PlacementProblem, ...]) -> None:
        return None

    async def no_snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
        raise AssertionError("these tests drive reconcile themselves")

    return PlacementController(
        [entry("m", replicas=2)], 1.0, no_snapshots, publish, workers, clock=clock,
        timings=TIMINGS,
    )  # fmt: skip


async def _round(controller: PlacementController, snapshot: ClusterSnapshot) -> None:
    await controller.reconcile(snapshot)
    await controller.settle()


def test_rejoined_is_the_grace_period_measured_from_when_the_registry_was_met() -> None:
    assert not rejoined(since=10.0, now=10.0, grace_s=2.0)
    assert not rejoined(since=10.0, now=11.9, grace_s=2.0)
    assert rejoined(since=10.0, now=12.0, grace_s=2.0)
    assert rejoined(since=10.0, now=10.0, grace_s=0.0)


def test_a_fresh_controller_waits_for_workers_to_rejoin_before_loading_anything() -> None:
    # The chaos finding: two replicas on a and b; the registry just (re)started and only a
    # has re-registered yet, c is idle. Acting now would load a third replica onto c.
    workers, clock = Workers(), Clock()
    a, b, c = node("a", replica("m")), node("b", replica("m")), node("c")

    async def scenario() -> None:
        controller = _controller(workers, clock)
        await _round(controller, _snapshot(1, a, c))
        clock.now += GRACE - 0.1
        await _round(controller, _snapshot(2, a, c))
        assert workers.take() == []
        clock.now += 0.1  # b is back within the grace: nothing to do, nothing done
        await _round(controller, _snapshot(3, a, b, c))
        assert workers.actions() == []
        await controller.stop()

    asyncio.run(scenario())


def test_after_the_grace_a_replica_still_missing_is_loaded() -> None:
    workers, clock = Workers(), Clock()
    a, c = node("a", replica("m")), node("c")

    async def scenario() -> None:
        controller = _controller(workers, clock)
        await _round(controller, _snapshot(1, a, c))
        clock.now += GRACE
        await _round(controller, _snapshot(2, a, c))
        assert workers.actions() == ["c: load m"]
        await controller.stop()

    asyncio.run(scenario())


def test_a_registry_whose_versions_restart_from_zero_starts_a_new_grace() -> None:
    workers, clock = Workers(), Clock()
    a, b, c = node("a", replica("m")), node("b", replica("m")), node("c")

    async def scenario() -> None:
        controller = _controller(workers, clock)
        await _round(controller, _snapshot(40, a, b, c))
        clock.now += GRACE
        await _round(controller, _snapshot(41, a, b, c))  # settled: nothing to do
        clock.now += 10
        await _round(controller, _snapshot(1, a, c))  # restarted, b not back yet
        assert workers.actions() == []
        clock.now += GRACE
        await _round(controller, _snapshot(2, a, c))  # b never came back
        assert workers.actions() == ["c: load m"]
        await controller.stop()

    asyncio.run(scenario())


def test_a_registry_that_failed_to_answer_starts_a_new_grace_in_the_run_loop() -> None:
    # A restarted registry need not count below the last version seen: the failed call
    # while it was down is what tells the controller to wait again.
    workers, clock = Workers(), Clock()
    a, b, c = node("a", replica("m")), node("b", replica("m")), node("c")
    script: list[ClusterSnapshot | Exception] = [
        _snapshot(5, a, b, c),
        _snapshot(6, a, b, c),
        Unavailable("the state actor is restarting"),
        _snapshot(9, a, c),  # only a is back
    ]
    served = asyncio.Event()

    async def snapshots(version: int, timeout_s: float) -> ClusterSnapshot:
        clock.now += GRACE  # every round comes a grace period after the one before
        if not script:
            served.set()
            await asyncio.Event().wait()  # the test ends here
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def publish(problems: tuple[PlacementProblem, ...]) -> None:
        return None

    async def scenario() -> None:
        controller = PlacementController(
            [entry("m", replicas=2)], 0.0, snapshots, publish, workers, clock=clock,
            timings=TIMINGS,
        )  # fmt: skip
        task = asyncio.create_task(controller.run())
        await asyncio.wait_for(served.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await controller.stop()
        assert workers.actions() == []

    asyncio.run(scenario())
