"""The dashboard's document: everything the page shows, as one JSON-ready dict.

A full document (`"full": true`) holds the gateway, the cluster exactly as /v1/cluster
serves it, the layer splits, the node history, the traffic history and summary, and the
recent events. An update (`"full": false`) has the same keys: `cluster`, `splits` and
`traffic_summary` whole; `history.nodes.*`, `traffic` and `events` only what is newer than
what the reader has (its Marks), which it appends. Times are unix seconds; unknown values
are null, never NaN (JSON has none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from orchestrator.cluster.splits import Split
from orchestrator.cluster.view import json_safe
from orchestrator.dashboard.history import EventLog, NodeHistory

SCHEMA_VERSION = 1
SUMMARY_WINDOW_S = 60.0


class TrafficSource(Protocol):
    """What the document reads of the traffic recorder (orchestrator.dashboard.traffic)."""

    def history_json(self, since: float = 0.0) -> dict[str, Any]: ...

    def summary_json(self, window_s: float = 60.0) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GatewayInfo:
    """The `gateway` member: who serves the page and how often it updates."""

    version: str
    started_at: float
    interval_s: float
    api_key_required: bool


@dataclass(frozen=True)
class Marks:
    """How far a reader has been sent each appended part: the newest history point's time,
    the newest traffic bucket's start, the newest event's number."""

    history: float = -math.inf
    traffic: float = 0.0
    events: int = 0


def document(
    *,
    at: float,
    gateway: GatewayInfo,
    cluster: Mapping[str, Any],
    splits: Sequence[Split],
    history: NodeHistory,
    traffic: TrafficSource,
    events: EventLog,
    since: Marks | None = None,
) -> tuple[dict[str, Any], Marks]:
    """The full document (`since` None) or the update after `since`, and the marks of what
    it holds. `cluster` is the /v1/cluster document (orchestrator.cluster.view)."""
    seen = since or Marks()
    traffic_points = traffic.history_json(seen.traffic)
    times = traffic_points.get("t") or []
    body = {
        "schema_version": SCHEMA_VERSION,
        "full": since is None,
        "at": at,
        "gateway": asdict(gateway),
        "cluster": cluster,
        "splits": [splits_json(split) for split in splits],
        "history": history.to_json(seen.history),
        "traffic": json_safe(traffic_points),
        "traffic_summary": json_safe(traffic.summary_json(SUMMARY_WINDOW_S)),
        "events": events.to_json(seen.events),
    }
    marks = Marks(
        history=max(history.latest, seen.history),
        traffic=max(times[-1], seen.traffic) if times else seen.traffic,
        events=events.last_seq,
    )
    return body, marks


def splits_json(split: Split) -> dict[str, Any]:
    return {**asdict(split), "spans": [asdict(span) for span in split.spans]}
