"""The snapshot feed: whole snapshots for new readers, deltas for the others, the same
snapshot on both sides; and the registry publishing at most once per interval."""

from __future__ import annotations

import asyncio
import gc
import random
import weakref
from collections.abc import Iterator

import pytest
from grpc import aio

from common.hardware import HardwareInfo
from common.status import NodeStatus
from orchestrator.cluster.feed import (
    CHUNK_NODES,
    SnapshotFeed,
    SnapshotFollower,
    StaleUpdate,
    decode,
    encode,
)
from orchestrator.cluster.registry import WorkerRegistry
from orchestrator.cluster.state import ClusterState
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem
from tests.unit.orchestrator.cluster.test_registry import TOKEN, Stream, metadata, report

KEY = b"digest-of-a-node-key"


def node(node_id: str, at: float = 0.0) -> Node:
    return Node(NodeStatus(node_id, f"{node_id}:50051", HardwareInfo("x86-cpu")), last_report=at)


def reported(state: ClusterState, *node_ids: str, at: float = 0.0) -> None:
    for node_id in node_ids:
        state.report(node(node_id, at), stream=1, credential=KEY)


def followed(feed: SnapshotFeed, follower: SnapshotFollower) -> ClusterSnapshot:
    return follower.take(feed.encoded(*follower.since()))


def same(a: ClusterSnapshot, b: ClusterSnapshot) -> bool:
    return (a.version, a.taken_at, a.nodes, a.problems, a.refusals, a.capacities) == (
        b.version, b.taken_at, b.nodes, b.problems, b.refusals, b.capacities,
    )  # fmt: skip


def test_a_new_reader_gets_the_whole_snapshot() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a", "b")
    state.set_problems((PlacementProblem("m", "no room"),))
    feed = SnapshotFeed()
    feed.publish(state.snapshot(1.0))
    update = feed.update("", -1)
    assert update.base is None and [n.node_id for n in update.nodes] == ["a", "b"]
    assert same(SnapshotFollower().take(encode(update)), state.snapshot(1.0))


def test_a_follower_gets_only_what_changed_and_holds_the_same_snapshot() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a", "b", "c")
    feed, follower = SnapshotFeed(), SnapshotFollower()
    feed.publish(state.snapshot(1.0))
    followed(feed, follower)

    reported(state, "b", at=2.0)  # b reports again, a goes down, d joins
    state.disconnected(NodeId("a"), stream=1, now=2.0, reason="heartbeat stream closed")
    reported(state, "d", at=2.0)
    feed.publish(state.snapshot(2.5))
    update = feed.update(*follower.since())
    assert update.base == 3  # the version the follower held: three reports
    assert [n.node_id for n in update.nodes] == ["a", "b", "d"] and update.removed == ()
    assert same(followed(feed, follower), state.snapshot(2.5))
    assert follower.snapshot is not None
    (down,) = [n for n in follower.snapshot.nodes if not n.up]
    assert down.node_id == "a" and down.down_reason == "heartbeat stream closed"

    state.expire(now=100.0)  # every node is silent: down; then a, down longest, forgotten
    state.expire(now=100.0 + 61)
    feed.publish(state.snapshot(200.0))
    update = feed.update(*follower.since())
    assert update.base is not None and set(update.removed) == {"a", "b", "c", "d"}
    assert same(followed(feed, follower), state.snapshot(200.0))
    assert follower.snapshot is not None and follower.snapshot.nodes == ()


def test_a_reader_too_far_behind_or_of_another_registry_gets_the_whole_snapshot() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    feed, follower = SnapshotFeed(history=2), SnapshotFollower()
    reported(state, "a")
    feed.publish(state.snapshot(0.0))
    followed(feed, follower)
    for at in (1.0, 2.0):
        reported(state, "b", at=at)
        feed.publish(state.snapshot(at))
    assert feed.update(*follower.since()).base is None  # 2 publications later
    assert same(followed(feed, follower), state.snapshot(2.0))

    restarted = SnapshotFeed()  # a restarted registry counts versions from zero again
    fresh = ClusterState(down_after_s=3, forget_after_s=60)
    reported(fresh, "z")
    restarted.publish(fresh.snapshot(0.0))
    assert restarted.update(*follower.since()).base is None
    assert same(followed(restarted, follower), fresh.snapshot(0.0))


def test_a_delta_for_another_version_is_refused_and_the_follower_starts_over() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a")
    feed, follower = SnapshotFeed(), SnapshotFollower()
    feed.publish(state.snapshot(0.0))
    followed(feed, follower)
    reported(state, "b")
    feed.publish(state.snapshot(1.0))
    delta = feed.encoded(*follower.since())
    followed(feed, follower)
    with pytest.raises(StaleUpdate, match="a delta from version 1 reached a reader of version 2"):
        follower.take(delta)
    assert follower.since() == ("", -1)
    assert same(followed(feed, follower), state.snapshot(1.0))
    with pytest.raises(StaleUpdate, match="reached a reader of nothing"):
        SnapshotFollower().take(delta)


def test_an_update_that_changes_nothing_keeps_the_readers_snapshot() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a")
    feed, follower = SnapshotFeed(), SnapshotFollower()
    feed.publish(state.snapshot(0.0))
    first = followed(feed, follower)
    assert followed(feed, follower) is first  # what routing derived from it stays


def test_each_update_is_encoded_once_for_every_reader_at_the_same_version() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a")
    feed = SnapshotFeed()
    feed.publish(state.snapshot(0.0))
    assert feed.encoded("", -1) is feed.encoded("another-epoch", 7)
    version = state.version
    reported(state, "a")
    feed.publish(state.snapshot(1.0))
    assert feed.encoded(feed.epoch, version) is feed.encoded(feed.epoch, version)
    with pytest.raises(ValueError, match="published after"):
        feed.publish(state.snapshot(1.0))


def test_a_follower_on_an_event_loop_holds_the_registrys_snapshot_after_every_update() -> None:
    """Updates of several pieces, followed on an event loop: joins, reports, nodes going
    down and forgotten, a reader missing publications and one falling too far behind, and
    a restarted registry; after each update the follower holds exactly the registry's
    snapshot, as a reader taking every update whole would."""
    rng = random.Random(7)
    fleet = [f"node-{i:04d}" for i in range(3 * CHUNK_NODES)]

    def scenario(state: ClusterState, feed: SnapshotFeed) -> Iterator[ClusterSnapshot]:
        now = 0.0
        for round_ in range(14):
            now += 1.0
            joined = fleet[: CHUNK_NODES * (1 + round_ % 3)]  # the fleet grows and shrinks
            reported(state, *rng.sample(joined, len(joined) // 2), at=now)
            if round_ % 4 == 3:  # silent nodes go down, long silent ones are forgotten
                state.expire(now + 3.5)
                state.expire(now + 61.0)
            feed.publish(state.snapshot(now))
            yield state.snapshot(now)

    async def main() -> None:
        state = ClusterState(down_after_s=3, forget_after_s=60)
        feed = SnapshotFeed(history=4)
        follower, whole = SnapshotFollower(), SnapshotFollower()
        for step, expected in enumerate(scenario(state, feed)):
            if step in (5, 6, 9, 10, 11, 12):  # behind by one, then too far behind
                continue
            assert same(await follower.follow(feed.encoded(*follower.since())), expected)
            assert same(whole.take(feed.encoded("", -1)), expected)
        restarted = SnapshotFeed()  # another registry: its versions start again
        fresh = ClusterState(down_after_s=3, forget_after_s=60)
        reported(fresh, *fleet[:5])
        restarted.publish(fresh.snapshot(0.0))
        taken = await follower.follow(restarted.encoded(*follower.since()))
        assert same(taken, fresh.snapshot(0.0))

    asyncio.run(main())


def test_following_an_update_lets_the_event_loop_run_between_its_pieces() -> None:
    """A request arriving while the gateway takes an update waits for one piece, not for
    the whole update; and the gateway's snapshot changes at once, at the end."""
    state = ClusterState(down_after_s=3, forget_after_s=60)
    fleet = [f"node-{i:04d}" for i in range(4 * CHUNK_NODES)]
    reported(state, *fleet)
    feed, follower = SnapshotFeed(), SnapshotFollower()
    feed.publish(state.snapshot(0.0))
    first = follower.take(feed.encoded(*follower.since()))
    reported(state, *fleet[::2], at=1.0)  # half the fleet reports again
    feed.publish(state.snapshot(1.0))
    assert len(decode(feed.encoded(*follower.since())).nodes) == 2 * CHUNK_NODES

    async def main() -> list[ClusterSnapshot | None]:
        seen: list[ClusterSnapshot | None] = []
        done = False

        async def request() -> None:  # what routing would read meanwhile
            while not done:
                seen.append(follower.snapshot)
                await asyncio.sleep(0)

        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        snapshot = await follower.follow(feed.encoded(*follower.since()))
        done = True
        await task
        assert same(snapshot, state.snapshot(1.0))
        return seen

    seen = asyncio.run(main())
    assert len(seen) > 2  # it ran between the pieces (two of them), not only after
    assert all(s is first for s in seen[:-1])


def test_nodes_an_update_replaced_are_freed_by_the_next_one() -> None:
    state = ClusterState(down_after_s=3, forget_after_s=60)
    reported(state, "a", "b")
    feed, follower = SnapshotFeed(), SnapshotFollower()
    feed.publish(state.snapshot(0.0))
    old = weakref.ref(followed(feed, follower).nodes[0])
    reported(state, "a", at=1.0)
    feed.publish(state.snapshot(1.0))
    followed(feed, follower)
    assert old() is not None  # kept until the next update, so readers never free it at once
    reported(state, "b", at=2.0)
    feed.publish(state.snapshot(2.0))
    followed(feed, follower)
    assert old() is None


@pytest.fixture
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.usefixtures("collector_enabled")
@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    gc.enable() if enabled else gc.disable()
    feed = SnapshotFeed()
    feed.publish(ClusterSnapshot(version=1, nodes=(node("a"),)))
    assert decode(feed.encoded("", -1)).nodes == (node("a"),)
    assert gc.isenabled() is enabled
    with pytest.raises(TypeError, match="not a snapshot update: dict"):
        decode(b"\x80\x05}\x94.")  # pickle of {}
    assert gc.isenabled() is enabled


# ---- the registry's publications ------------------------------------------------------------


def test_the_registry_publishes_at_once_then_at_most_once_per_interval() -> None:
    """On the registry's own clock (a hand-moved one here): a change within the interval
    of the last publication waits for the clock to pass it; a change after a quiet spell
    goes out at once, without the clock moving."""
    interval = 0.3
    now = [100.0]

    async def main() -> None:
        reg = WorkerRegistry(
            1.0, 3.0, 60.0, TOKEN, clock=lambda: now[0], publish_interval_s=interval
        )
        port = await reg.start("127.0.0.1", 0)
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        follower = SnapshotFollower()
        try:
            empty = follower.take(await reg.update_after(*follower.since(), 5.0))
            assert empty.nodes == ()
            worker = Stream(channel, metadata())
            await worker.send(report("worker-a"))
            waiting = asyncio.ensure_future(reg.update_after(*follower.since(), 5.0))
            await asyncio.sleep(2 * interval)
            assert not waiting.done(), "published within the interval of the last one"
            now[0] += interval
            joined = follower.take(await asyncio.wait_for(waiting, 5.0))
            assert [(n.node_id, n.up) for n in joined.nodes] == [("worker-a", True)]

            now[0] += 10 * interval  # a quiet spell
            waiting = asyncio.ensure_future(reg.update_after(*follower.since(), 5.0))
            await asyncio.sleep(0.05)
            assert not waiting.done(), "nothing changed yet"
            await worker.close()
            left = follower.take(await asyncio.wait_for(waiting, 5.0))  # the clock stood still
            assert [(n.node_id, n.up, n.down_reason) for n in left.nodes] == [
                ("worker-a", False, "heartbeat stream closed")
            ]
            # Nothing changes: after the timeout the reader keeps the snapshot it has.
            waiting = asyncio.ensure_future(reg.update_after(*follower.since(), 0.2))
            await asyncio.sleep(0.05)
            now[0] += 0.2
            assert follower.take(await asyncio.wait_for(waiting, 5.0)) is left
        finally:
            await channel.close()
            await reg.stop()

    asyncio.run(main())
