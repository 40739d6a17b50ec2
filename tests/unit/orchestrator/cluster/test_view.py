"""The cluster's JSON document: its schema is the one checked in, and it reads back whole."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from common.leases import Lease
from common.memory import MemoryEstimate
from common.status import ModelState
from orchestrator.cluster.types import PlacementProblem
from orchestrator.cluster.view import (
    SCHEMA_VERSION,
    NodeView,
    cluster_view,
    json_schema,
    view_from_json,
    view_to_json,
)
from tests.support.samples_factory import host_sample, jetson_sample, node_sample
from tests.unit.orchestrator.factories import NOW, node, replica, snapshot

SCHEMA_FILE = Path(__file__).parents[4] / "orchestrator" / "cluster" / "cluster.schema.json"


def test_the_checked_in_schema_is_current() -> None:
    # Regenerate with: llamaherd status --json-schema > orchestrator/cluster/cluster.schema.json
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


def _view():
    busy = replica("m", queued=2, active=1, slots_total=4, decode_tps=41.5,
                   estimate=MemoryEstimate(100, 20, 3))  # fmt: skip
    failed = replica("x", ModelState.FAILED, error="file /x.gguf does not exist")
    lease = Lease("big@a", "10.0.0.2:50100", "10.0.0.1", reserved_bytes=7)
    snap = snapshot(
        node("a", busy, failed, labels=("jetson",), reference_tps=212.5, leases=(lease,)),
        node("b", up=False, down_reason="no heartbeat for 3.2 s", last_report=NOW - 4),
    )
    snap = dataclasses.replace(snap, problems=(PlacementProblem("y", "fits nowhere"),))
    return cluster_view(snap, NOW + 1, lambda n: {"a": 3}.get(n, 0), "least-expected-latency")


def test_the_document_names_fields_as_the_status_model_does() -> None:
    document = view_to_json(_view())
    a, b = document["nodes"]
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["routing_policy"] == "least-expected-latency"
    assert document["placement_problems"] == [{"alias": "y", "reason": "fits nowhere"}]
    assert a["gateway_inflight"] == 3 and a["seconds_since_report"] == 1.0
    m = a["status"]["models"][0]
    assert m["state"] == "ready" and m["engine"]["queued"] == 2
    assert m["engine"]["decode_tps"] == 41.5 and m["config"]["max_queue"] == 64
    assert a["status"]["hardware"]["labels"] == ["jetson"]
    assert a["status"]["models"][1]["error"] == "file /x.gguf does not exist"
    assert b["up"] is False and b["down_reason"] == "no heartbeat for 3.2 s"
    json.dumps(document)  # plain JSON all the way down


def test_the_document_reads_back_as_the_same_view() -> None:
    view = _view()
    assert view_from_json(json.loads(json.dumps(view_to_json(view)))) == view


def test_telemetry_survives_the_document() -> None:
    view = _view()
    status = view.nodes[0].status
    sample = node_sample(jetson=jetson_sample())
    with_sample = dataclasses.replace(status, telemetry=sample)
    view = dataclasses.replace(view, nodes=(NodeView(with_sample, up=True),))
    assert view_from_json(view_to_json(view)).nodes[0].status.telemetry == sample


def test_a_reading_sent_as_nan_is_null_and_the_document_stays_json() -> None:
    view = _view()
    status = view.nodes[0].status
    odd = node_sample(host=host_sample(cpu_usage_ratio=math.nan))
    view = dataclasses.replace(
        view, nodes=(NodeView(dataclasses.replace(status, telemetry=odd), up=True),)
    )
    document = view_to_json(view)
    json.dumps(document, allow_nan=False)  # what Starlette's JSONResponse requires
    assert document["nodes"][0]["status"]["telemetry"]["host"]["cpu_usage_ratio"] is None
