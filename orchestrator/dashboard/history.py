"""The gateway's memory of the recent past, so that a fresh dashboard is not empty: one
sample of each node's key figures every `interval_s` over `window_s` (columnar ring
buffers), and the latest cluster events, numbered.

Pure bookkeeping: the wall clock is injected, readings come from the cluster snapshot the
gateway already holds, nothing here does I/O.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from common.status import ModelState
from common.telemetry import NodeSample
from orchestrator.cluster.events import ClusterEvent
from orchestrator.cluster.types import ClusterSnapshot, Node

# The series each node keeps, in the order of the document's members (besides "t").
SERIES = ("up", "cpu", "mem", "gpu", "gpu_mem", "temp", "power", "tps", "load")
Value = float | int | None


def node_figures(node: Node) -> dict[str, Value]:
    """A node's figures now: `cpu`, `mem`, `gpu` (the busiest GPU), `gpu_mem` (the fullest
    GPU's memory) as ratios 0..1, `temp` the hottest sensor (°C), `power` the board's watts
    (a Jetson's total, else the GPUs' sum), `tps` the tokens/s its models decode now,
    `load` their running + queued requests, `up` 1/0. None where the node reports nothing,
    and for everything but `up` while it is down (its last report is stale)."""
    if not node.up:
        return {name: 0 if name == "up" else None for name in SERIES}
    figures: dict[str, Value] = {"up": 1}
    figures.update(_telemetry(node.telemetry))
    ready = [m for m in node.replicas if m.state is ModelState.READY]
    # decode_tps is each sequence's recent rate: the node decodes that times its running ones.
    figures["tps"] = _finite(sum(m.engine.decode_tps * m.engine.active for m in ready))
    figures["load"] = sum(m.engine.load for m in node.replicas)
    return figures


def _telemetry(sample: NodeSample | None) -> dict[str, Value]:
    figures: dict[str, Value] = dict.fromkeys(("cpu", "mem", "gpu", "gpu_mem", "temp", "power"))
    if sample is None:
        return figures
    host = sample.host
    if host is not None:
        figures["cpu"] = _finite(host.cpu_usage_ratio)
        if host.memory_total_bytes > 0:
            figures["mem"] = _finite(host.memory_used_bytes / host.memory_total_bytes)
    busy = [g.utilization_ratio for g in sample.gpus if g.utilization_ratio is not None]
    figures["gpu"] = _finite(max(busy)) if busy else None
    full = [g.memory_used_bytes / g.memory_total_bytes for g in sample.gpus
            if g.memory_total_bytes > 0]  # fmt: skip
    figures["gpu_mem"] = _finite(max(full)) if full else None
    temps = [t.celsius for t in host.temperatures] if host is not None else []
    if sample.jetson is not None:
        temps += [t.celsius for t in sample.jetson.temperatures]
    temps += [g.temperature_celsius for g in sample.gpus if g.temperature_celsius is not None]
    figures["temp"] = _finite(max(temps)) if temps else None
    gpu_watts = [g.power_watts for g in sample.gpus if g.power_watts is not None]
    if sample.jetson is not None and sample.jetson.power_total_watts is not None:
        figures["power"] = _finite(sample.jetson.power_total_watts)
    elif gpu_watts:
        figures["power"] = _finite(sum(gpu_watts))
    return figures


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: an unusable reading is unknown (None)."""
    return value if math.isfinite(value) else None


class _Series:
    """One node's columns: aligned deques of at most `capacity` points."""

    def __init__(self, capacity: int) -> None:
        self.t: collections.deque[float] = collections.deque(maxlen=capacity)
        self.columns = {name: collections.deque[Value](maxlen=capacity) for name in SERIES}

    def append(self, t: float, figures: dict[str, Value]) -> None:
        self.t.append(t)
        for name, column in self.columns.items():
            value = figures[name]
            # Three decimals are more than a chart shows, and keep the document small.
            column.append(round(value, 3) if isinstance(value, float) else value)

    def drop_before(self, oldest: float) -> None:
        while self.t and self.t[0] < oldest:
            self.t.popleft()
            for column in self.columns.values():
                column.popleft()

    def since(self, t: float) -> dict[str, list[Value]] | None:
        """The points after `t` (scanned from the newest: a delta holds one or two)."""
        count = 0
        for when in reversed(self.t):
            if when <= t:
                break
            count += 1
        if not count:
            return None
        start = len(self.t) - count
        points: dict[str, list[Any]] = {"t": _tail(self.t, start)}
        points.update((name, _tail(column, start)) for name, column in self.columns.items())
        return points


def _tail(column: Sequence[Any], start: int) -> list[Any]:
    return [column[i] for i in range(start, len(column))]


class NodeHistory:
    """Per-node ring buffers sampled from cluster snapshots.

    `sample(snapshot)` records one point per node once `interval_s` has passed since the
    last one (a caller ticking faster is fine); points older than `window_s` are dropped,
    and so is a node the cluster has forgotten once its last point is."""

    def __init__(
        self,
        interval_s: float = 2.0,
        window_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._capacity = math.ceil(window_s / interval_s) + 1
        self._nodes: dict[str, _Series] = {}
        self._last: float | None = None
        self.latest = 0.0  # the time of the newest point (0: none yet)

    def sample(self, snapshot: ClusterSnapshot) -> bool:
        """Records the snapshot's nodes now, if a sample is due; True when it did. A tick
        up to 10 % early counts as on time, so a caller ticking every interval_s / k
        samples every k-th tick."""
        # Rounded once, here: the newest point's time is also the mark an update is cut at,
        # so the two must be the same number (or the point would be sent twice).
        now = round(self._clock(), 3)
        if self._last is not None and now - self._last < self.interval_s * 0.9:
            return False
        self._last = self.latest = now
        for node in snapshot.nodes:
            series = self._nodes.get(node.node_id)
            if series is None:
                series = self._nodes[node.node_id] = _Series(self._capacity)
            series.append(now, node_figures(node))
        oldest = now - self.window_s
        for node_id, series in list(self._nodes.items()):
            series.drop_before(oldest)
            if not series.t:  # forgotten by the cluster a window ago
                del self._nodes[node_id]
        return True

    def to_json(self, since: float = -math.inf) -> dict[str, Any]:
        """The document's `history` member: the points after `since`, by node (only the
        nodes that have some)."""
        nodes = {}
        for node_id in sorted(self._nodes):
            points = self._nodes[node_id].since(since)
            if points is not None:
                nodes[node_id] = points
        return {"interval_s": self.interval_s, "window_s": self.window_s, "nodes": nodes}


@dataclass(frozen=True)
class StampedEvent:
    """A cluster event as the gateway saw it: numbered and timed (wall clock)."""

    seq: int
    t: float
    event: ClusterEvent

    def to_json(self) -> dict[str, Any]:
        e = self.event
        return {"seq": self.seq, "t": self.t, "kind": e.kind, "level": e.level,
                "node": e.node, "model": e.model, "message": e.message}  # fmt: skip


class EventLog:
    """The latest `capacity` events, numbered from 1 in the order they happened."""

    def __init__(self, capacity: int = 200) -> None:
        self._events: collections.deque[StampedEvent] = collections.deque(maxlen=capacity)
        self.last_seq = 0

    def record(self, events: Iterable[ClusterEvent], t: float) -> None:
        for event in events:
            self.last_seq += 1
            self._events.append(StampedEvent(self.last_seq, t, event))

    def to_json(self, after_seq: int = 0) -> list[dict[str, Any]]:
        """The events numbered above `after_seq`, newest first."""
        newer = []
        for stamped in reversed(self._events):
            if stamped.seq <= after_seq:
                break
            newer.append(stamped.to_json())
        return newer
