"""The live feed: a watcher gets the full document, then one update per tick with only
what is new; a watcher that stops reading is dropped; the stream cap holds; events start
from the first snapshot the gateway sees; nobody watching costs no document."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.cluster.view import cluster_view, view_to_json
from orchestrator.dashboard.document import GatewayInfo
from orchestrator.dashboard.feed import Feed, Subscription, sse_frame
from orchestrator.dashboard.traffic import Traffic
from tests.unit.orchestrator.dashboard.test_document import GATEWAY
from tests.unit.orchestrator.dashboard.test_history import T0, Clock
from tests.unit.orchestrator.factories import node, replica


class Gateway:
    """What a gateway hands its feed: its current snapshot and the /v1/cluster document."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.snapshot = ClusterSnapshot()  # not heard from the registry yet
        self.documents = 0

    def cluster(self) -> dict[str, Any]:
        self.documents += 1
        return view_to_json(cluster_view(self.snapshot, 0.0, lambda _: 0, "p"))

    def feed(self, gateway: GatewayInfo = GATEWAY, **kwargs: Any) -> Feed:
        return Feed(snapshot=lambda: self.snapshot, cluster_json=self.cluster,
                    traffic=Traffic(self.clock, rng=random.Random(1)), gateway=gateway,
                    clock=self.clock, **kwargs)  # fmt: skip

    def change(self, version: int, *nodes: Any) -> None:
        self.snapshot = ClusterSnapshot(version, 10.0 + version, nodes)


def parse(frame: bytes) -> tuple[str, dict[str, Any]]:
    text = frame.decode()
    assert text.endswith("\n\n") and text.count("\n") == 3, text
    event, data, _, _ = text.split("\n")
    assert event.startswith("event: ") and data.startswith("data: ")
    return event[7:], json.loads(data[6:])


async def next_frame(frames: AsyncIterator[bytes]) -> tuple[str, dict[str, Any]] | None:
    try:
        return parse(await asyncio.wait_for(anext(frames), 1.0))
    except StopAsyncIteration:
        return None


def watch(feed: Feed) -> tuple[Subscription, AsyncIterator[bytes]]:
    subscription = feed.subscribe()
    assert subscription is not None
    return subscription, subscription.frames()


def test_a_watcher_gets_the_snapshot_then_updates_with_what_is_new() -> None:
    async def main() -> None:
        gw = Gateway()
        gw.change(1, node("w1", replica("gemma")))
        feed = gw.feed()
        feed.tick()  # the baseline: what was there before the gateway started is no event
        _, frames = watch(feed)
        first = await next_frame(frames)
        assert first is not None and first[0] == "snapshot" and first[1]["full"] is True
        assert first[1]["events"] == [] and first[1]["history"]["nodes"]["w1"]["up"] == [1]

        gw.clock.now += 1.0
        gw.change(2, node("w1", replica("gemma"), up=False, down_reason="heartbeat stream closed"))
        feed.tick()
        kind, update = await next_frame(frames) or ("", {})
        assert kind == "update" and update["full"] is False
        assert [e["message"] for e in update["events"]] == ["w1 is down: heartbeat stream closed"]
        assert update["events"][0]["t"] == T0 + 1.0
        assert update["history"]["nodes"] == {}, "the next sample is due at T0 + 2"
        assert update["cluster"]["nodes"][0]["up"] is False

        gw.clock.now += 1.0
        feed.tick()
        kind, update = await next_frame(frames) or ("", {})
        assert update["events"] == [], "each event is sent once"
        assert update["history"]["nodes"]["w1"] == {
            "t": [T0 + 2], "up": [0], **{k: [None] for k in
            ("cpu", "mem", "gpu", "gpu_mem", "temp", "power", "tps", "load")}}  # fmt: skip

    asyncio.run(main())


def test_a_watcher_that_stops_reading_is_dropped_and_can_come_back() -> None:
    async def main() -> None:
        gw = Gateway()
        feed = gw.feed(queue_size=2, max_streams=1)
        slow, frames = watch(feed)
        assert feed.subscribe() is None, "one stream at most"
        for _ in range(3):
            gw.clock.now += 1.0
            feed.tick()
        assert slow.closed and feed.watchers == 0
        first = await next_frame(frames)
        assert first is not None and first[0] == "snapshot"
        assert await next_frame(frames) is None, "its backlog is dropped, its stream ends"
        again, frames = watch(feed)  # the page reconnects for a fresh snapshot
        assert (await next_frame(frames) or ("", {}))[0] == "snapshot"
        feed.close()  # the gateway stops: every stream ends
        assert again.closed and await next_frame(frames) is None

    asyncio.run(main())


def test_watchers_that_saw_the_same_share_one_update() -> None:
    async def main() -> None:
        gw = Gateway()
        feed = gw.feed()
        (_, a), (_, b) = watch(feed), watch(feed)
        await next_frame(a), await next_frame(b)
        gw.documents = 0
        feed.tick()
        assert gw.documents == 1
        assert await next_frame(a) == await next_frame(b)

    asyncio.run(main())


def test_nobody_watching_costs_no_document_but_history_and_events_are_kept() -> None:
    gw = Gateway()
    feed = gw.feed()
    feed.tick()  # nothing from the registry yet (taken_at 0): not the baseline
    gw.change(1)
    feed.tick()  # the first snapshot: the baseline
    gw.change(2, node("w1", replica("gemma")))
    gw.clock.now += 2.0
    feed.tick()
    assert gw.documents == 0
    state = feed.state()
    assert [e["kind"] for e in state["events"]] == ["model_ready", "node_joined"]
    assert state["history"]["nodes"]["w1"]["t"] == [T0 + 2.0]


def test_a_frame_is_one_server_sent_event() -> None:
    assert sse_frame("update", {"a": [1, None]}) == b'event: update\ndata: {"a":[1,null]}\n\n'


def test_run_ticks_every_interval_until_cancelled() -> None:
    async def main() -> None:
        gw = Gateway()
        gw.change(1)
        feed = gw.feed(dataclasses.replace(GATEWAY, interval_s=0.01))
        _, frames = watch(feed)
        task = asyncio.create_task(feed.run())
        await next_frame(frames)
        assert (await next_frame(frames) or ("", {}))[0] == "update"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
