"""The dashboard's full and update documents: their keys, the cluster exactly as
/v1/cluster serves it, the split spans, only new points in updates, never NaN."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any

from common.memory import MemoryEstimate
from common.telemetry import NodeSample
from orchestrator.cluster.events import ClusterEvent
from orchestrator.cluster.splits import cluster_splits
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.cluster.view import cluster_view, view_to_json
from orchestrator.dashboard.document import GatewayInfo, Marks, document
from orchestrator.dashboard.history import EventLog, NodeHistory
from orchestrator.dashboard.traffic import Traffic
from tests.unit.orchestrator.dashboard.test_history import T0, Clock, host, with_sample
from tests.unit.orchestrator.factories import lease, node, replica, rpc_node

KEYS = {"schema_version", "full", "at", "gateway", "cluster", "splits", "history", "traffic",
        "traffic_summary", "events"}  # fmt: skip
GATEWAY = GatewayInfo(version="0.1.0", started_at=T0 - 100, interval_s=1.0, api_key_required=False)


def split_snapshot() -> ClusterSnapshot:
    head = replica("gemma-split", rpc_servers=("10.0.0.3:50070",), tensor_split=(1.0,),
                   n_gpu_layers=9, estimate=MemoryEstimate(0, 0, 0, n_layers=18))  # fmt: skip
    nan = NodeSample(T0, dataclasses.replace(host(), cpu_usage_ratio=math.nan))
    return ClusterSnapshot(
        3, 50.0,
        (with_sample(rpc_node("host0", head), nan),
         rpc_node("host1", leases=(lease("gemma-split", "host0", "10.0.0.3:50070"),)),
         node("w1", replica("gemma", active=1, decode_tps=30.0))),
    )  # fmt: skip


class Parts:
    """A gateway's dashboard state, driven by hand."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.snapshot = split_snapshot()
        self.history = NodeHistory(interval_s=2.0, window_s=900.0, clock=self.clock)
        self.traffic = Traffic(self.clock, rng=random.Random(1))
        self.events = EventLog()

    def cluster(self) -> dict[str, Any]:
        return view_to_json(
            cluster_view(self.snapshot, 51.0, lambda _: 0, "least-expected-latency")
        )

    def build(self, since: Marks | None = None) -> tuple[dict[str, Any], Marks]:
        return document(
            at=self.clock(), gateway=GATEWAY, cluster=self.cluster(),
            splits=cluster_splits([n.status for n in self.snapshot.nodes]),
            history=self.history, traffic=self.traffic, events=self.events, since=since,
        )  # fmt: skip


def request(parts: Parts, model: str, node_id: str) -> None:
    trace = parts.traffic.begin(model)
    parts.clock.now += 0.2
    trace.chunk(node_id, 4)
    trace.finish("ok", node_id)


def test_the_full_document() -> None:
    parts = Parts()
    parts.history.sample(parts.snapshot)
    parts.events.record([ClusterEvent("node_joined", "info", "w1", None, "w1 joined")], T0)
    body, _ = parts.build()
    assert set(body) == KEYS and body["full"] is True and body["schema_version"] == 1
    assert body["gateway"] == {"version": "0.1.0", "started_at": T0 - 100, "interval_s": 1.0,
                               "api_key_required": False}  # fmt: skip
    expected = parts.cluster()
    expected["nodes"][0]["status"]["telemetry"]["host"]["cpu_usage_ratio"] = None  # was NaN
    assert body["cluster"] == expected
    assert body["splits"] == [
        {"model": "gemma-split", "head": "host0", "n_layers": 18, "spans": [
            {"node": "host0", "role": "head", "endpoint": "", "first": 0, "count": 9},
            {"node": "host1", "role": "rpc", "endpoint": "10.0.0.3:50070", "first": 9, "count": 9},
        ]}
    ]  # fmt: skip
    history = body["history"]
    assert (history["interval_s"], history["window_s"]) == (2.0, 900.0)
    assert set(history["nodes"]) == {"host0", "host1", "w1"}
    assert history["nodes"]["w1"]["tps"] == [30.0] and history["nodes"]["host0"]["cpu"] == [None]
    assert [e["message"] for e in body["events"]] == ["w1 joined"]
    assert body["traffic"]["bucket_s"] == 5.0 and "requests" in body["traffic_summary"]
    json.dumps(body, allow_nan=False)


def test_an_update_holds_only_what_is_new_and_the_same_keys() -> None:
    parts = Parts()
    parts.history.sample(parts.snapshot)
    request(parts, "gemma", "w1")
    parts.clock.now = T0 + 5  # the first bucket is complete
    parts.events.record([ClusterEvent("node_joined", "info", "w1", None, "w1 joined")], T0)
    full, marks = parts.build()
    assert full["traffic"]["t"] == [T0] and full["traffic"]["requests"] == [1]

    unchanged, same = parts.build(since=marks)
    assert set(unchanged) == KEYS and unchanged["full"] is False and same == marks
    assert unchanged["history"]["nodes"] == {} and unchanged["events"] == []
    assert unchanged["traffic"]["t"] == [] and unchanged["cluster"] == full["cluster"]

    parts.clock.now = T0 + 10
    parts.history.sample(parts.snapshot)
    parts.events.record(
        [ClusterEvent("node_down", "warning", "w1", None, "w1 is down: x")], T0 + 10
    )
    update, later = parts.build(since=marks)
    assert update["history"]["nodes"]["w1"]["t"] == [T0 + 10]
    assert update["traffic"]["t"] == [T0 + 5] and update["traffic"]["requests"] == [0]
    assert [e["seq"] for e in update["events"]] == [2]
    assert later == Marks(history=T0 + 10, traffic=T0 + 5, events=2)
    json.dumps(update, allow_nan=False)
