"""The gateway's /metrics: the cluster's node families, plus this gateway's traffic when its
Router records it."""

from __future__ import annotations

import random

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.dashboard.traffic import Traffic
from orchestrator.gateway.metrics import cluster_metrics
from orchestrator.gateway.router import Router
from orchestrator.routing.policies import RoundRobin
from orchestrator.worker_client import WorkerClients
from tests.unit.orchestrator.gateway.relay_support import worker_node


def families(router: Router) -> dict[str, str]:
    text = cluster_metrics(router).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def router_with(traffic: Traffic | None) -> Router:
    router = Router(RoundRobin(), WorkerClients(), retries=1, traffic=traffic)
    router.update(ClusterSnapshot(version=1, taken_at=0.0, nodes=(worker_node("a", "a:1"),)))
    return router


def test_traffic_families_join_the_cluster_ones_when_the_router_records():
    traffic = Traffic(rng=random.Random(0))
    trace = traffic.begin("m")
    trace.chunk("a", 1)
    trace.finish("ok", "a")
    exported = families(router_with(traffic))
    assert exported["llamaherd_node_up"] == "gauge"
    assert exported["llamaherd_model_slots"] == "gauge"
    assert exported["llamaherd_gateway_requests"] == "counter"
    assert exported["llamaherd_gateway_generated_tokens"] == "counter"
    for name in ("time_to_first_token", "inter_token_latency", "request_duration"):
        assert exported[f"llamaherd_gateway_{name}_seconds"] == "histogram"


def test_without_a_recorder_only_the_cluster_is_exported():
    exported = families(router_with(None))
    assert "llamaherd_node_up" in exported and "llamaherd_gateway_requests_inflight" in exported
    assert "llamaherd_gateway_requests" not in exported
    assert "llamaherd_gateway_time_to_first_token_seconds" not in exported
