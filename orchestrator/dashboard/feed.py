"""The dashboard's live feed: one per gateway, ticking every `interval_s` on its event loop.

Each tick samples the node history (every history interval), turns the change of the
cluster snapshot since the last tick into events (orchestrator.cluster.events), and, only
when somebody watches, sends each subscriber one update: what is new since what it was last
sent. A subscriber starts with the full document. A subscriber whose bounded queue is full
(a client that stopped reading) is closed: its stream ends, and the page reconnects for a
fresh snapshot. With nobody watching, a tick costs the history sample and the event diff,
nothing more: no document is built, no JSON written.

Events are this gateway's observations: the first snapshot it gets from the registry is the
baseline (a restarted gateway does not report every node as just joined), and every later
change is an event, stamped with the gateway's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from orchestrator.cluster.events import diff
from orchestrator.cluster.splits import cluster_splits
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.dashboard.document import GatewayInfo, Marks, TrafficSource, document
from orchestrator.dashboard.history import EventLog, NodeHistory

log = logging.getLogger(__name__)

QUEUE_SIZE = 8  # updates a subscriber may lag behind before it is dropped


def sse_frame(event: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event: `event: NAME`, `data: JSON` (one line), a blank line."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {text}\n\n".encode()


class Subscription:
    """One watcher's stream of frames: the snapshot, then updates until it is closed."""

    def __init__(self, feed: Feed, first: bytes, marks: Marks, queue_size: int) -> None:
        self._feed = feed
        self._first = first
        self.marks = marks
        self._limit = queue_size
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    async def frames(self) -> AsyncIterator[bytes]:
        """The snapshot frame, then each update frame; ends when the subscription closes."""
        yield self._first
        while (frame := await self._queue.get()) is not None:
            yield frame

    def offer(self, frame: bytes) -> bool:
        """Queues an update; False (and nothing queued) when the watcher lags too far."""
        if self.closed or self._queue.qsize() >= self._limit:
            return False
        self._queue.put_nowait(frame)
        return True

    def close(self) -> None:
        """Ends the stream after nothing more (what is queued is dropped). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._feed.unsubscribe(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)


class Feed:
    """The gateway's dashboard state and its watchers.

    `snapshot` is the gateway's current cluster snapshot; `cluster_json` the /v1/cluster
    document of it (built only when a document is); `clock` the wall clock."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], ClusterSnapshot],
        cluster_json: Callable[[], Mapping[str, Any]],
        traffic: TrafficSource,
        gateway: GatewayInfo,
        max_streams: int = 32,
        queue_size: int = QUEUE_SIZE,
        history: NodeHistory | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._cluster_json = cluster_json
        self._traffic = traffic
        self.gateway = gateway
        self.max_streams = max_streams
        self._queue_size = queue_size
        self._clock = clock
        self.history = history if history is not None else NodeHistory(clock=clock)
        self.events = events if events is not None else EventLog()
        self._subscribers: list[Subscription] = []
        self._seen: ClusterSnapshot | None = None  # the snapshot events were taken up to

    # ---- watchers --------------------------------------------------------------------
    @property
    def watchers(self) -> int:
        return len(self._subscribers)

    def state(self) -> dict[str, Any]:
        """The full document now."""
        body, _ = self._document(None)
        return body

    def subscribe(self) -> Subscription | None:
        """A new watcher, its first frame the full document; None when `max_streams`
        already watch."""
        if len(self._subscribers) >= self.max_streams:
            return None
        body, marks = self._document(None)
        subscription = Subscription(self, sse_frame("snapshot", body), marks, self._queue_size)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscription)

    def close(self) -> None:
        """Ends every stream (the gateway is stopping)."""
        for subscription in list(self._subscribers):
            subscription.close()

    # ---- the tick --------------------------------------------------------------------
    def tick(self) -> None:
        """Samples, records events, and sends each watcher what is new to it."""
        snapshot = self._snapshot()
        self.history.sample(snapshot)
        self._record_events(snapshot)
        if not self._subscribers:
            return
        cluster = self._cluster_json()
        frames: dict[Marks, tuple[bytes, Marks]] = {}  # watchers that saw the same share one
        for subscription in list(self._subscribers):
            if subscription.marks not in frames:
                body, marks = self._document(subscription.marks, snapshot, cluster)
                frames[subscription.marks] = (sse_frame("update", body), marks)
            frame, marks = frames[subscription.marks]
            if subscription.offer(frame):
                subscription.marks = marks
            else:
                log.info("closed a dashboard stream that fell behind by %d updates", QUEUE_SIZE)
                subscription.close()

    async def run(self) -> None:
        """Ticks every `gateway.interval_s` until cancelled."""
        interval = self.gateway.interval_s
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self.tick()
            except Exception:  # a bug here must not end the feed: log it and tick again
                log.exception("the dashboard feed failed a tick")
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    def _record_events(self, snapshot: ClusterSnapshot) -> None:
        if snapshot.taken_at == 0.0 or snapshot is self._seen:
            return  # not heard from the registry yet, or nothing new
        if self._seen is not None:
            self.events.record(diff(self._seen, snapshot), self._clock())
        self._seen = snapshot

    def _document(
        self,
        since: Marks | None,
        snapshot: ClusterSnapshot | None = None,
        cluster: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Marks]:
        snapshot = snapshot if snapshot is not None else self._snapshot()
        return document(
            at=self._clock(),
            gateway=self.gateway,
            cluster=cluster if cluster is not None else self._cluster_json(),
            splits=cluster_splits([n.status for n in snapshot.nodes]),
            history=self.history,
            traffic=self._traffic,
            events=self.events,
            since=since,
        )
